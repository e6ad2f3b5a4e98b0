"""Integration tests of the self-check (user/selfcheck.c): a --mirror that reaches the
source cluster itself is refused at start (exit 2, one line saying what was found), since
replay would apply every write twice there; every other mirror starts normally.

- the source itself, through the address the agent captures and through other ones
  (::1, localhost, its Unix socket): exit 2 with the system identifier and the
  postmaster's pid and data directory, checked against the server's own answers;
- the same when the mirror's user may not run pg_control_system(): the mirror's backend
  pid is a child of the source's postmaster and its address is local;
- two clusters on the captured port (127.0.0.1 and 127.0.0.2, as in test_mirror's
  self-exclusion test): the mirror on the other one starts (logging that which one is
  the source cannot be told without --source-dsn, and nothing with it); the source
  itself is refused when --source-dsn names it;
- another cluster on another port starts and says nothing; a physical standby of the
  source (the source's system identifier, another server) starts and says so;
- an unreachable mirror (nothing listening; a listener that never answers) starts and
  logs that the check could not be made, with libpq's reason and never the password.

Each test starts its own PostgreSQL 15 clusters (pg_harness). Needs root (conftest.py).
"""

import contextlib
import re
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

import pg_harness as pgh
import pgshadow_harness as h
from test_mirror import (  # noqa: F401 - pytest fixtures are used by name
    PgServerAt, mirror_agent, mirror_agent_bin)

REFUSED_RE = re.compile(
    r"^pgshadow: --mirror reaches the source cluster itself \(system identifier (\d+) on "
    r"both, postmaster pid (\d+), data directory (.+)\): refusing to replay every write "
    r"twice$")
UNCHECKED = "pgshadow: could not check whether --mirror is the source cluster: "
CHECK_TIMEOUT = 5       # seconds the agent gives the mirror to connect and answer
EXIT_TIMEOUT = 20       # seconds for a refused agent to exit


def one_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{text}"
    return lines[0]


def refused(agent_bin, port, mirror, extra=()):
    """Runs the agent on lo for port with --mirror mirror, expecting it to refuse to
    start: returns its one stderr line (exit status 2 asserted)."""
    args = ["--port", port, "-i", "lo", "--admin-socket-dir", "",
            "--metrics-listen", f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',))}",
            "--mirror", mirror, *extra]
    rc, _, err = h.run_agent_to_exit(agent_bin, args, timeout=EXIT_TIMEOUT)
    assert rc == 2, f"exit {rc}, expected 2 (--mirror {mirror!r} is the source)\n{err}"
    return one_line(err)


def check_names_source(line, src):
    """The refusal names the source's system identifier, postmaster and data directory."""
    m = REFUSED_RE.match(line)
    assert m, f"not the refusal line: {line!r}"
    sysid = src.scalar("SELECT system_identifier FROM pg_control_system()")
    postmaster = int((src.data_dir / "postmaster.pid").read_text().split()[0])
    assert m.group(1) == sysid, f"system identifier {m.group(1)}, the source's is {sysid}"
    assert int(m.group(2)) == postmaster, f"postmaster pid {m.group(2)}, it is {postmaster}"
    assert Path(m.group(3)).resolve() == src.data_dir.resolve(), line


def selfcheck_lines(agent):
    return [line for line in agent.stderr().splitlines()
            if "--mirror" in line and ("source" in line)]


# --------------------------------------------------------------------------- 1. refused

@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "unix"])
def test_source_itself_refused(agent_bin, host):
    """The source on 127.0.0.1 and ::1, the agent capturing its port, --mirror at it
    through each of its addresses and its Unix socket: exit 2, one line, the source's
    system identifier, postmaster pid and data directory."""
    with pgh.pg_server(name="source", ipv6=True) as src:
        target = src.socket_dir if host == "unix" else host
        line = refused(agent_bin, src.port, f"host={target} port={src.port} user=postgres")
        check_names_source(line, src)


def test_source_itself_refused_without_pg_control_system(agent_bin):
    """The mirror's user may not run pg_control_system(): its backend is a child of the
    source's postmaster and 127.0.0.1 is local, which is the source too."""
    with pgh.pg_server(name="source") as src:
        src.psql("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC; "
                 "CREATE ROLE app LOGIN")
        line = refused(agent_bin, src.port,
                       f"host=127.0.0.1 port={src.port} user=app dbname=postgres")
        postmaster = int((src.data_dir / "postmaster.pid").read_text().split()[0])
        m = re.match(r"^pgshadow: --mirror reaches the source cluster itself \(the mirror's "
                     r"backend pid (\d+) is a child of the source's postmaster pid (\d+), "
                     r"data directory (.+), at local address 127\.0\.0\.1\): refusing to "
                     r"replay every write twice$", line)
        assert m, f"not the refusal line: {line!r}"
        assert int(m.group(2)) == postmaster
        assert Path(m.group(3)).resolve() == src.data_dir.resolve()


# --------------------------------------------------------------------------- 2. the same port

@contextlib.contextmanager
def two_on_one_port():
    """(source on 127.0.0.1:P, another cluster on 127.0.0.2:P)."""
    port = h.free_port(hosts=("127.0.0.1", "127.0.0.2", "::1"))
    with pgh.pg_server(name="source", port=port) as src, \
            PgServerAt("127.0.0.2", name="other", port=port) as other:
        assert other.scalar("SELECT inet_server_addr()") == "127.0.0.2"
        yield src, other


def test_other_cluster_same_port_other_address_starts(mirror_agent):
    """Two clusters on the captured port: the one at 127.0.0.2 is a legitimate mirror.
    Without --source-dsn the agent cannot tell which one is the source: it says so (one
    line) and starts; with --source-dsn it knows, says nothing and starts."""
    with two_on_one_port() as (src, other):
        agent = mirror_agent(src, other)
        lines = selfcheck_lines(agent)
        assert len(lines) == 1 and lines[0].startswith(UNCHECKED), agent.stderr()
        assert f"2 PostgreSQL servers listen on port {src.port} here" in lines[0]
        assert "set --source-dsn to name the source" in lines[0]
        assert agent.stop(signal.SIGINT).returncode == 0

        agent = mirror_agent(src, other, extra=["--source-dsn", src.conninfo()])
        assert selfcheck_lines(agent) == [], agent.stderr()
        assert agent.stop(signal.SIGINT).returncode == 0


def test_source_named_by_source_dsn_refused(agent_bin):
    """Two clusters on the captured port, --source-dsn naming the one at 127.0.0.1 and
    --mirror reaching that same one: refused."""
    with two_on_one_port() as (src, other):
        line = refused(agent_bin, src.port, f"host=127.0.0.1 port={src.port} user=postgres",
                       extra=["--source-dsn", src.conninfo()])
        check_names_source(line, src)
        assert other.scalar("SELECT 1") == "1"


def test_other_cluster_other_port_starts_silently(mirror_agent):
    """The usual setup (test_mirror's pair): nothing to say but what the mirror is."""
    with pgh.pg_server(name="source") as src, pgh.pg_server(name="mirror") as mir:
        agent = mirror_agent(src, mir)
        assert selfcheck_lines(agent) == [], agent.stderr()
        version = mir.scalar("SHOW server_version")
        assert f"pgshadow: mirror: PostgreSQL {version} at {mir.host}:{mir.port}" in \
            agent.stderr().splitlines(), agent.stderr()
        assert agent.stop(signal.SIGINT).returncode == 0


@contextlib.contextmanager
def standby_of(src):
    """A physical standby of src (pg_basebackup -R) on another port of 127.0.0.1: the
    source's system identifier, another server. Yields its port."""
    parent = Path(tempfile.mkdtemp(prefix="pgshadow-standby-"))
    pgh._chown_postgres(parent)
    parent.chmod(0o700)
    data, port = parent / "data", h.free_port(hosts=("127.0.0.1", "::1"))
    pg_ctl = pgh.pg_tool("pg_ctl")
    try:
        h.run(pgh.as_postgres([pgh.pg_tool("pg_basebackup"), "-h", "127.0.0.1", "-p",
                               src.port, "-U", "postgres", "-D", data, "-R", "-X",
                               "stream"]), timeout=120)
        h.run(pgh.as_postgres([pg_ctl, "start", "-w", "-t", "60", "-D", data, "-l",
                               parent / "pg_ctl.log", "-o",
                               f"-p {port} -k {parent} -c listen_addresses=127.0.0.1 "
                               f"-c log_directory={parent}"]), timeout=90)
        yield port
    finally:
        h.run(pgh.as_postgres([pg_ctl, "stop", "-w", "-m", "immediate", "-D", data]),
              check=False, timeout=60)
        shutil.rmtree(parent, ignore_errors=True)


def test_standby_of_the_source_starts(start_agent, mirror_agent_bin):
    """A standby has the source's system identifier but is another server (it cannot
    apply a write twice): the agent says so and starts."""
    with pgh.pg_server(name="source") as src, standby_of(src) as port:
        agent = start_agent(src.port, ["lo"], dump=False,
                            extra=["--mirror", f"host=127.0.0.1 port={port} user=postgres"])
        sysid = src.scalar("SELECT system_identifier FROM pg_control_system()")
        assert selfcheck_lines(agent) == [
            f"pgshadow: --mirror has the source's system identifier {sysid} but is another "
            f"server (a standby or a copy of the source): replaying to it"], agent.stderr()
        assert agent.stop(signal.SIGINT).returncode == 0


# --------------------------------------------------------------------------- 3. unreachable

def test_unreachable_mirror_starts(start_agent, mirror_agent_bin):
    """Nothing listens where the mirror should be: the check could not be made (libpq's
    reason, the password never shown), the agent starts and replay retries as always."""
    with pgh.pg_server(name="source") as src:
        port = h.free_port(hosts=("127.0.0.1",))
        agent = start_agent(src.port, ["lo"], dump=False,
                            extra=["--mirror", f"host=127.0.0.1 port={port} user=postgres "
                                               f"password=Sekr1tPw"])
        lines = selfcheck_lines(agent)
        assert lines == [f'{UNCHECKED}the mirror: connection to server at "127.0.0.1", '
                         f'port {port} failed: Connection refused; going on'], agent.stderr()
        assert "Sekr1tPw" not in agent.stderr()
        assert "mirror: PostgreSQL" not in agent.stderr()
        assert agent.stop(signal.SIGINT).returncode == 0


def test_silent_mirror_starts_after_the_timeout(start_agent, mirror_agent_bin):
    """A mirror that accepts the connection and never answers: given up after 5 s."""
    with pgh.pg_server(name="source") as src, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshakes; nobody ever reads
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        agent = start_agent(src.port, ["lo"], dump=False,
                            extra=["--mirror", f"host=127.0.0.1 port={port} user=postgres"])
        took = time.monotonic() - t0
        assert selfcheck_lines(agent) == [
            f"{UNCHECKED}the mirror: no answer within {CHECK_TIMEOUT} s; going on"], \
            agent.stderr()
        assert CHECK_TIMEOUT <= took < CHECK_TIMEOUT + 10, f"ready after {took:.1f} s"
        assert agent.stop(signal.SIGINT).returncode == 0


@pytest.mark.parametrize("flag", ["--mirror", "--source-dsn"])
def test_conninfo_secret_never_quoted(agent_bin, flag):
    """libpq quotes the token it cannot parse: of a URI whose password is badly
    percent-encoded, the password. The agent refuses to start (exit 2) and says why
    without it."""
    secret = "Sekr1t%zzPw"
    rc, _, err = h.run_agent_to_exit(
        agent_bin, ["--port", h.free_port(), "--interface", "lo", "--admin-socket-dir", "",
                    "--metrics-listen", f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',))}",
                    flag, f"postgresql://u:{secret}@127.0.0.1:1/db"])
    assert rc == 2, f"exit {rc}: {err}"
    assert "invalid percent-encoded token" in err and "(withheld)" in err, err
    assert "Sekr1t" not in err and "zzPw" not in err, err
