"""Integration tests of the configuration file (--config) and SIGHUP, against the real
agent on lo.

- A bad file (bad value, unknown key or section, bad [databases] line, unreadable file)
  or a bad flag on top of a good file stops the agent with exit 2 and exactly one line
  naming the file, line, key and what is allowed, and leaves no BPF program, link or tc
  filter of ours behind (checked with bpftool and tc, as test_capture.py does).
- A good file's values take effect: the port and interface it names are captured, its
  metrics_listen serves /metrics; a flag overrides the file whatever its position.
- SIGHUP re-reads the file: one log line per changed key, "applied" for the reloadable
  ones and "needs a restart (ignored)" for the others; a bad file changes nothing and
  the agent keeps running; without --config it says there is nothing to reload.
- `pgshadow --print-config` is deploy/pgshadow.ini, and --help lists every key's flag.

The effect of an exposure change on sampling is tested with the mirror (test_mirror.py).
Needs root (conftest.py skips everything otherwise).
"""

import re
import signal
import subprocess
import time

import pytest

import pg_harness as pgh
import pgshadow_harness as h

LOG_TIMEOUT = 10  # seconds for a log line to appear after SIGHUP
METRICS_UP_TIMEOUT = 10


@pytest.fixture
def agents(agent_bin, tmp_path):
    """agents(argv_tail) -> a started h.Agent running `pgshadow argv_tail...` exactly (no
    --port/--metrics-listen added). Killed at teardown, stderr printed."""
    started = []

    def start(args, ready=True):
        # h.Agent builds an argv with --port and --metrics-listen; these tests must pass
        # only what the test chose, so the argv is replaced before starting.
        agent = h.Agent(agent_bin, 0, logdir=tmp_path, name=f"agent{len(started)}")
        agent.argv = [str(agent_bin)] + [str(a) for a in args]
        started.append(agent)
        agent.start()
        if ready:
            agent.wait_ready()
        return agent

    yield start
    for agent in started:
        agent.kill()
        print(f"--- {' '.join(agent.argv)} (exit {agent.proc.returncode}) stderr:\n"
              f"{agent.stderr()}")


def write(path, text):
    path.write_text(text)
    return path


def one_line(err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected a one-line message on stderr, got {len(lines)}:\n{err}"
    return lines[0]


def wait_log(agent, pattern, timeout=LOG_TIMEOUT, since=0):
    """Wait until the agent's stderr (from offset since) matches pattern; return the match."""
    rx = re.compile(pattern, re.M)
    deadline = time.monotonic() + timeout
    while True:
        m = rx.search(agent.stderr()[since:])
        if m:
            return m
        if not agent.running():
            raise AssertionError(f"agent exited ({agent.proc.returncode}) before logging "
                                 f"{pattern!r}\nstderr:\n{agent.stderr()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no line matching {pattern!r} within {timeout}s\n"
                                 f"stderr:\n{agent.stderr()}")
        time.sleep(0.05)


def wait_metrics(addr, agent):
    deadline = time.monotonic() + METRICS_UP_TIMEOUT
    while True:
        try:
            return pgh.scrape(addr)[0]
        except OSError as e:
            if not agent.running() or time.monotonic() > deadline:
                raise AssertionError(f"/metrics at {addr} not answering ({e})\n"
                                     f"stderr:\n{agent.stderr()}")
            time.sleep(0.1)


def metrics_addr(rng):
    return f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',), rng=rng)}"


# --------------------------------------------------------------------------- bad files

# (file body after the [general] port/interfaces lines, line of the error, message after
# "<file>:<line>: ")
BAD_FILES = {
    "value_out_of_range": ("mirror_exposure = 1.5\n", 4,
                           "mirror_exposure = 1.5: expected a number from 0.0 to 1.0"),
    "malformed_number": ("max_flows = 10k\n", 4,
                         "max_flows = 10k: expected an integer from 1 to 4000000"),
    "not_power_of_two": ("ringbuf_mb = 48\n", 4,
                         "ringbuf_mb = 48: expected a power of two from 1 to 1024"),
    "bad_enum": ("mirror_mode = everything\n", 4,
                 "mirror_mode = everything: expected all or read_only"),
    "bad_bool": ("mirror_set_role = sometimes\n", 4,
                 "mirror_set_role = sometimes: expected on, off, true, false, yes, no, 1 or 0"),
    "bad_address": ("metrics_listen = localhost\n", 4,
                    "metrics_listen = localhost: expected IPv4:PORT or [IPv6]:PORT with a "
                    "numeric address and a port from 1 to 65535"),
    "unknown_key": ("\nmirror_exposur = 0.5\n", 5,
                    "unknown key 'mirror_exposur' in [general] (did you mean "
                    "mirror_exposure?)"),
    "unknown_section": ("[pgbouncer]\n", 4,
                        "unknown section [pgbouncer]: expected [general] or [databases]"),
    "bad_database_line": ("[databases]\napp = dbname=app_v2 exposure=2\n", 5,
                          "app = dbname=app_v2 exposure=2: exposure=2: expected a number "
                          "from 0.0 to 1.0"),
    "unknown_database_word": ("[databases]\napp = host=elsewhere\n", 5,
                              "app = host=elsewhere: unknown word 'host=elsewhere': expected "
                              "dbname=NAME and/or exposure=0.0-1.0"),
    "syntax": ("this is not ini\n", 4, "expected [section], key = value or a comment"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_config_exits_2_with_file_line_and_nothing_attached(case, agent_bin, tmp_path,
                                                                 rng):
    body, line, msg = BAD_FILES[case]
    port = h.free_port(rng=rng)
    path = write(tmp_path / "bad.ini", f"; bad\n[general]\nport = {port}\n{body}")
    baseline = set(h.our_progs())
    rc, _, err = h.run_agent_to_exit(agent_bin, ["--config", path, "--interface", "lo"])
    assert rc == 2, f"exit {rc}, expected 2\n{err}"
    assert one_line(err) == f"pgshadow: {path}:{line}: {msg}"
    left = h.wait_no_residue(baseline, -1, timeout=5)
    assert not left, f"left behind by a bad configuration: {left}"
    assert not h.tc_filters_ours("lo"), "a tc filter of ours is on lo"


def test_unreadable_config(agent_bin, tmp_path):
    path = tmp_path / "missing.ini"
    rc, _, err = h.run_agent_to_exit(agent_bin, ["--config", path])
    assert rc == 2, f"exit {rc}, expected 2\n{err}"
    assert one_line(err) == f"pgshadow: cannot read {path}: No such file or directory"


def test_bad_flag_over_good_file(agent_bin, tmp_path, rng):
    path = write(tmp_path / "good.ini", f"[general]\nport = {h.free_port(rng=rng)}\n")
    baseline = set(h.our_progs())
    rc, _, err = h.run_agent_to_exit(agent_bin, ["--mirror-exposure", "1.5", "--config", path,
                                                 "--interface", "lo"])
    assert rc == 2, f"exit {rc}, expected 2\n{err}"
    assert one_line(err) == ("pgshadow: invalid value '1.5' for --mirror-exposure: expected "
                             "a number from 0.0 to 1.0")
    assert not h.wait_no_residue(baseline, -1, timeout=5)


def test_config_without_port(agent_bin, tmp_path):
    path = write(tmp_path / "noport.ini", "[general]\ninterfaces = lo\n")
    rc, _, err = h.run_agent_to_exit(agent_bin, ["--config", path])
    assert rc == 2, f"exit {rc}, expected 2\n{err}"
    assert one_line(err) == (f"pgshadow: {path}: port is not set (set it under [general] or "
                             f"pass --port)")


# --------------------------------------------------------------------------- good files

def test_file_values_take_effect(agents, tmp_path, rng):
    port = h.free_port(rng=rng)
    addr = metrics_addr(rng)
    mirror = f"host=127.0.0.1 port={h.free_port(rng=rng)} user=postgres"
    path = write(tmp_path / "pgshadow.ini",
                 f"[general]\nport = {port}\ninterfaces = lo\nmetrics_listen = {addr}\n"
                 f"max_databases = 3 ; inline comment\n"
                 f"mirror_of = {mirror}\nmirror_metrics_enabled = off\n")
    agent = agents(["--config", path])
    assert agent.ready_port == port
    assert agent.ready_interfaces == ["lo"]
    assert agent.ready_mode == "tcx"
    assert f"metrics on http://{addr}/metrics" in agent.stderr()
    text = wait_metrics(addr, agent)
    assert "mirror_capture_packets_total" in text
    # mirroring, but its metrics switched off by the file
    assert "mirror_requests_total" not in text
    res = agent.stop(signal.SIGINT)
    assert res.returncode == 0, res.stderr


def test_flag_overrides_file(agents, tmp_path, rng):
    port = h.free_port(rng=rng)
    file_addr, flag_addr = metrics_addr(rng), metrics_addr(rng)
    while flag_addr == file_addr:
        flag_addr = metrics_addr(rng)
    path = write(tmp_path / "pgshadow.ini",
                 f"[general]\nport = 1\ninterfaces = eth-none\nmetrics_listen = {file_addr}\n")
    # flags before --config still win
    agent = agents(["--metrics-listen", flag_addr, "-i", "lo", "--config", path,
                    "--port", port])
    assert agent.ready_port == port
    assert agent.ready_interfaces == ["lo"]
    wait_metrics(flag_addr, agent)
    with pytest.raises(OSError):
        pgh.scrape(file_addr, timeout=1)
    assert agent.stop(signal.SIGTERM).returncode == 0


# --------------------------------------------------------------------------- SIGHUP

def test_sighup_applies_reloadable_keys_and_reports_restart_ones(agents, tmp_path, rng):
    port = h.free_port(rng=rng)
    addr = metrics_addr(rng)
    # a mirror nobody listens on: nothing is replayed (no traffic), but the replay engine
    # runs, so the exposure changes go through replay_set_exposure
    mirror = f"host=127.0.0.1 port={h.free_port(rng=rng)} user=postgres"
    head = f"[general]\nport = {port}\ninterfaces = lo\nmetrics_listen = {addr}\n" \
           f"mirror_of = {mirror}\n"
    path = write(tmp_path / "pgshadow.ini",
                 head + "mirror_exposure = 1.0\nmirror_queue = 100\n"
                        "[databases]\napp = dbname=app_v2 exposure=0.25\n")
    agent = agents(["--config", path, "--mirror-max-error-rate", "0.05"])
    assert "mirror_requests_total" in wait_metrics(addr, agent)

    other = port + 1 if port < 65535 else port - 1
    write(path, head.replace(f"port = {port}", f"port = {other}") +
          "mirror_exposure = 0.5\nmirror_queue = 5\nmirror_min_requests = 500\n"
          "mirror_max_error_rate = 0.5\n"
          "[databases]\napp = dbname=app_v3 exposure=0.75\nnew = exposure=0.1\n")
    mark = len(agent.stderr())
    agent.proc.send_signal(signal.SIGHUP)
    expected = [
        f"pgshadow: reload: port {port} -> {other} needs a restart (ignored)",
        "pgshadow: reload: mirror_exposure 1 -> 0.5 applied",
        "pgshadow: reload: mirror_queue 100 -> 5 needs a restart (ignored)",
        "pgshadow: reload: mirror_min_requests 100000 -> 500 applied",
        "pgshadow: reload: [databases] app exposure 0.25 -> 0.75 applied",
        "pgshadow: reload: [databases] app dbname app_v2 -> app_v3 needs a restart (ignored)",
        "pgshadow: reload: [databases] new exposure (mirror_exposure) -> 0.1 needs a restart "
        "(ignored)",
    ]
    wait_log(agent, re.escape(expected[-1]), since=mark)
    lines = [ln for ln in agent.stderr()[mark:].splitlines() if "reload" in ln]
    assert lines == expected, "\n".join(lines)
    # mirror_max_error_rate is set by a flag: the file's new value does not apply
    assert "mirror_max_error_rate" not in agent.stderr()[mark:]
    # still capturing the old port, still serving
    wait_metrics(addr, agent)

    # a bad file changes nothing, and says why
    write(path, head + "mirror_exposure = 2\n")
    mark = len(agent.stderr())
    agent.proc.send_signal(signal.SIGHUP)
    m = wait_log(agent, r"^pgshadow: reload failed.*$", since=mark)
    assert m.group(0) == (f"pgshadow: reload failed, nothing changed: {path}:6: "
                          f"mirror_exposure = 2: expected a number from 0.0 to 1.0")
    assert agent.running()

    # the same changes again: only the restart ones are reported (the others hold)
    write(path, head + "mirror_exposure = 0.5\nmirror_queue = 100\n"
                       "mirror_min_requests = 500\n"
                       "[databases]\napp = dbname=app_v2 exposure=0.75\n")
    mark = len(agent.stderr())
    agent.proc.send_signal(signal.SIGHUP)
    wait_log(agent, r"^pgshadow: reload: \S+: no changes$", since=mark)
    res = agent.stop(signal.SIGINT)
    assert res.returncode == 0, res.stderr


def test_sighup_without_config_file(agents, rng):
    port = h.free_port(rng=rng)
    agent = agents(["--port", port, "--interface", "lo", "--metrics-listen", metrics_addr(rng)])
    agent.proc.send_signal(signal.SIGHUP)
    wait_log(agent, r"^pgshadow: reload: no configuration file \(--config\), nothing to "
                    r"reload$")
    assert agent.running()
    assert agent.stop(signal.SIGTERM).returncode == 0


# --------------------------------------------------------------------------- generated text

def test_print_config_is_the_example_file(agent_bin):
    res = subprocess.run([str(agent_bin), "--print-config"], capture_output=True, text=True,
                         timeout=10)
    assert res.returncode == 0, res.stderr
    assert res.stdout == (h.REPO / "deploy" / "pgshadow.ini").read_text(), \
        "deploy/pgshadow.ini differs from `pgshadow --print-config`: run `make config-example`"


def test_help_lists_every_key(agent_bin):
    keys = re.findall(r"^;?(\w+) =", (h.REPO / "deploy" / "pgshadow.ini").read_text(), re.M)
    keys = [k for k in keys if k != "app"]  # the [databases] example
    assert len(keys) > 40, keys
    res = subprocess.run([str(agent_bin), "--help"], capture_output=True, text=True,
                         timeout=10)
    assert res.returncode == 0
    missing = [k for k in keys if f"--{k.replace('_', '-')}" not in res.stdout]
    assert not missing, f"--help does not list: {missing}"


def test_dump_streams_directory_created_private(agents, tmp_path, rng):
    """--dump-streams DIR that does not exist yet is created, mode 0700 (it will hold
    every byte of every session); one whose parent is missing is refused with the
    reason, exit 2."""
    port = h.free_port(rng=rng)
    target = tmp_path / "streams"
    agent = agents(["--port", port, "-i", "lo", "--metrics-listen", metrics_addr(rng),
                    "--admin-socket-dir", "", "--dump-streams", target])
    assert target.is_dir()
    assert (target.stat().st_mode & 0o777) == 0o700, oct(target.stat().st_mode)
    res = agent.stop(signal.SIGINT)
    assert res.returncode == 0, res.stderr

    bad = agents(["--port", port, "-i", "lo", "--metrics-listen", metrics_addr(rng),
                  "--admin-socket-dir", "", "--dump-streams", tmp_path / "no" / "streams"],
                 ready=False)
    rc = bad.wait(20)
    assert rc == 2, bad.stderr()
    assert f"--dump-streams {tmp_path / 'no' / 'streams'}: cannot create it: No such file " \
           f"or directory" in bad.stderr(), bad.stderr()
