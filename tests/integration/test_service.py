"""pgshadow as a least-privilege service (README "Running as a service").

- test_install_and_unit: `make install DESTDIR=... ` puts the binary (0755), the systemd
  unit with ExecStart at the installed binary (0644) and the example configuration in
  place, never over an existing configuration; `systemd-analyze verify` accepts the unit
  without a single complaint.
- test_runs_with_capabilities_only: the agent as user nobody holding only the unit's
  AmbientCapabilities (read from deploy/systemd/pgshadow.service, as systemd would give
  them) starts, attaches, and counts every query of a real PostgreSQL session; its
  /proc status shows that uid and exactly those effective capabilities. A missing
  capability in the unit makes it refuse to start ("not privileged").
- test_user_drops_privileges: started as root with --user nobody (tcx and tc): every
  thread at uid 65534 with no effective capability once attached, capture and replay
  going on, a clean exit.
"""

import re
import shutil
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest

import pg_harness as pgh
import pgshadow_harness as h
import test_mirror as tm
from test_mirror import mirror_agent, mirror_agent_bin, pair  # noqa: F401 fixtures

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "pgshadow.service"
CAP_BITS = {"CAP_NET_ADMIN": 12, "CAP_SYS_NICE": 23, "CAP_PERFMON": 38, "CAP_BPF": 39}
QUERIES = 20
COUNT_TIMEOUT = 10


def unit_capabilities():
    """The AmbientCapabilities the unit grants (names, as systemd spells them)."""
    m = re.search(r"^AmbientCapabilities=(.+)$", UNIT.read_text(), re.M)
    assert m, f"{UNIT} grants no AmbientCapabilities"
    return m.group(1).split()


def test_install_and_unit(tmp_path):
    dest = tmp_path / "root"
    run = lambda: subprocess.run(  # noqa: E731
        ["make", "-s", "-C", str(ROOT), "install", f"DESTDIR={dest}", "PREFIX=/usr/local"],
        capture_output=True, text=True, timeout=300)
    r = run()
    assert r.returncode == 0, f"make install failed:\n{r.stdout}\n{r.stderr}"
    binary = dest / "usr/local/bin/pgshadow"
    unit = dest / "usr/local/lib/systemd/system/pgshadow.service"
    ini = dest / "etc/pgshadow/pgshadow.ini"
    assert binary.stat().st_mode & 0o777 == 0o755
    assert unit.stat().st_mode & 0o777 == 0o644
    assert ini.read_text() == (ROOT / "deploy/pgshadow.ini").read_text()
    text = unit.read_text()
    assert "@BINDIR@" not in text
    assert re.search(r"^ExecStart=/usr/local/bin/pgshadow --config /etc/pgshadow/pgshadow.ini$",
                     text, re.M), text
    assert re.search(r"^DynamicUser=yes$", text, re.M) and "User=root" not in text
    # an operator's configuration is never replaced
    ini.write_text("[general]\nport = 5432\n")
    r = run()
    assert r.returncode == 0, r.stderr
    assert ini.read_text() == "[general]\nport = 5432\n"

    # systemd's own check, with ExecStart at the binary just installed
    check = tmp_path / "pgshadow.service"
    check.write_text(text.replace("/usr/local/bin/pgshadow", str(binary)))
    r = subprocess.run(["systemd-analyze", "verify", str(check)], capture_output=True,
                       text=True, timeout=60)
    complaints = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert r.returncode == 0 and not complaints, \
        f"systemd-analyze verify (exit {r.returncode}):\n" + "\n".join(complaints)


@pytest.fixture
def pg():
    with pgh.pg_server(name="service") as server:
        yield server


def capability_prefix(caps):
    names = ",".join("+" + c.lower().removeprefix("cap_") for c in caps)
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            f"--inh-caps={names}", f"--ambient-caps={names}", "--"]


def proc_status(pid):
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return fields


def test_runs_with_capabilities_only(pg, agent_bin, tmp_path, rng):
    caps = unit_capabilities()
    assert set(caps) <= CAP_BITS.keys(), f"unknown capability in the unit: {caps}"
    # copied where nobody may execute it (the build tree may be in a private home)
    binary = tmp_path / "pgshadow"
    shutil.copy(agent_bin, binary)
    binary.chmod(0o755)
    tmp_path.chmod(0o755)

    # one capability short: refused, saying which
    short = [c for c in caps if c != "CAP_BPF"]
    rc, _, err = h.run_agent_to_exit(
        shutil.which("setpriv"), capability_prefix(short)[1:] +
        [str(binary), "--port", pg.port, "--interface", "lo", "--admin-socket-dir", "",
         "--metrics-listen", f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',), rng=rng)}"])
    assert rc == 2 and "not privileged" in err and "CAP_BPF" in err, f"exit {rc}: {err}"

    db = "svc"
    pg.createdb(db)
    agent = h.Agent(binary, pg.port, ["lo"], logdir=tmp_path, name="nobody",
                    extra=["--admin-socket-dir", ""])
    agent.argv = capability_prefix(caps) + agent.argv
    try:
        agent.start()
        agent.wait_ready()
        status = proc_status(agent.pid)
        assert status["Uid"][1] == "65534", f"effective uid {status['Uid']}"
        want = sum(1 << CAP_BITS[c] for c in caps)
        assert int(status["CapEff"][0], 16) == want, \
            f"CapEff {status['CapEff'][0]}, expected {want:016x} ({caps})"
        conn = psycopg2.connect(pg.conninfo(db))
        conn.autocommit = True
        try:
            cur = conn.cursor()
            for i in range(QUERIES):
                cur.execute("SELECT %s", (i,))
        finally:
            conn.close()
        deadline = time.monotonic() + COUNT_TIMEOUT
        while True:
            m = pgh.metrics(agent.metrics_addr)
            if m.requests(db) >= QUERIES or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert m.requests(db) == QUERIES, \
            f"{m.requests(db)} requests counted of {QUERIES}\n{agent.stderr()}"
    finally:
        agent.kill()


@pytest.mark.parametrize("attach", ["tcx", "tc"])
def test_user_drops_privileges(pair, mirror_agent, attach, request):  # noqa: F811
    """Started as root with --user nobody: once attached, every thread of the agent runs
    as uid/gid 65534 with no effective capability (tc: CAP_NET_ADMIN permitted only, for
    its clean-up at exit), the replay thread keeps its nice value, and capture and replay
    go on: 30 INSERTs counted and mirrored, the tables equal. SIGINT: exit 0, and (tc) no
    filter of ours left on lo."""
    if attach == "tc":
        request.getfixturevalue("lo_tc_cleanup")
    src, mir = pair
    db = "dropped"
    for pg in pair:
        pg.createdb(db)
        pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)", db=db)
    agent = mirror_agent(src, mir, extra=["--user", "nobody", "--attach", attach])
    assert re.search(r"^pgshadow: running as nobody \(uid 65534\), no capabilities",
                     agent.stderr(), re.M), agent.stderr()
    tasks = sorted(Path(f"/proc/{agent.pid}/task").iterdir())
    for task in tasks:
        status = proc_status(task.name)
        assert status["Uid"] == ["65534"] * 4 and status["Gid"] == ["65534"] * 4, \
            f"thread {task.name} ({(task / 'comm').read_text().strip()}): Uid {status['Uid']} " \
            f"Gid {status['Gid']}"
        assert int(status["CapEff"][0], 16) == 0, \
            f"thread {task.name}: effective capabilities {status['CapEff'][0]}"
    main = proc_status(agent.pid)
    permitted = int(main["CapPrm"][0], 16)
    assert permitted == (1 << CAP_BITS["CAP_NET_ADMIN"] if attach == "tc" else 0), \
        f"permitted capabilities {main['CapPrm'][0]} with --attach {attach}"
    assert tm_nice(agent.pid) == -10, "the replay thread lost its nice value"

    conn = psycopg2.connect(src.conninfo(db))
    conn.autocommit = True
    try:
        cur = conn.cursor()
        for i in range(QUERIES + 10):
            cur.execute("INSERT INTO t VALUES (%s, %s)", (i, f"v{i}"))
    finally:
        conn.close()
    m, result = tm.finish(agent)
    assert m.requests(db) == QUERIES + 10, f"{m.requests(db)} requests counted"
    # mirrored per database: mirror_latency_seconds_count (one per mirrored request)
    mirrored = int(sum(v for _, v in m.select("mirror_latency_seconds_count", database=db)))
    assert mirrored == QUERIES + 10, f"{mirrored} mirrored\n{result.stderr}"
    rows = "SELECT id, v FROM t ORDER BY id"
    assert src.psql(rows, db=db).stdout == mir.psql(rows, db=db).stdout
    if attach == "tc":
        assert not h.tc_filters_ours("lo"), "a tc filter of ours was left on lo"


def tm_nice(pid):
    from test_pool import thread_nice
    return thread_nice(pid, "pgshadow-replay")
