"""Integration tests of migration readiness, the admin console, the threshold alerts and
SIGHUP's effect on sampling (issue 6): the seed's rspec scenarios against real servers.

Same setup as test_mirror.py (whose fixtures and helpers this module uses): a real source
and a real mirror PostgreSQL 15 cluster per test, the real agent on lo mirroring to the
mirror, traffic on the source only, /metrics settled before asserting. Every agent has
its own admin console socket in a temporary directory and its own port (the harness
passes --admin-socket-dir and --admin-port; never the real /run/pgshadow), reached with
psql (as an operator would) or psycopg2 (to read columns and SQLSTATEs).

Ground truth: the source's csvlog for what it served (read after the agent stopped),
the mirror's own csvlog and tables for what reached it, /metrics for the counters the
console, GET /readiness and `pgshadow readiness` must agree with.

What each test proves, and how it would fail if the feature were broken:
- counting and SHOW MIRRORS: the console's numbers are the metrics' numbers, and both
  equal what the source served and what the mirror failed;
- mirror stopped: connection errors are counted, the consecutive_errors alert fires
  once (one WARN line, mirror_alert_active 1) and clears once after the restart;
- 1000 requests with lowered criteria: SHOW MIRROR READINESS says "Status: READY",
  `pgshadow readiness` exits 0 (as an unprivileged user), GET /readiness answers text
  and JSON whose numbers are /metrics'; RESET MIRROR STATS restarts the window (NOT
  READY, exit 1) while the counters keep counting; SIGHUP raising a criterion applies;
- console commands: STATS, DATABASES, SESSIONS, VERSION, HELP; an unknown command gets
  42601 and the session stays usable; garbage on the socket changes nothing for capture;
- `pgshadow readiness` exits 2 when nothing listens, when the answer is not a report,
  and against an agent without --mirror (whose /readiness is a 404);
- SIGHUP mirror_exposure 1.0 -> 0.0: everything afterwards is not_sampled, nothing more
  reaches the mirror;
- a mirror made slow on purpose (a function that sleeps there only): the latency alert
  fires once and clears once when the mirror is fast again and the window has rolled;
- the console's socket taken by a live agent, or a directory that cannot be created:
  exit 2 at start with one line, nothing attached; a stale socket is replaced.

Needs root (conftest.py skips everything otherwise).
"""

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import psycopg2
import pytest

import pg_harness as pgh
import pgshadow_harness as h
from test_mirror import (  # noqa: F401 - pytest fixtures are used by name
    UNTHROTTLED_QUEUE, check_invariant, connect, finish, mark, mirror_agent, mirror_agent_bin,
    outcomes, pair, restart_server, scrape, wait_settled)

DB = "app"
PSQL = pgh.pg_tool("psql")
LOG_TIMEOUT = 15        # seconds for a log line to appear
TICK = 1.0              # the agent evaluates readiness and alerts once a second
ALERT_TIMEOUT = 20      # seconds for an alert to fire or clear once its cause is there
RESUME_TIMEOUT = 60     # the mirror's reconnect backoff grows to 30 s while it is down

# Criteria a short test can meet (the defaults need 24 hours and 100000 requests). The
# p99 floor is wide: source and mirror share this machine's CPUs, so the mirror's tail is
# this host's scheduling noise, not the mirror; the p99 criterion has unit tests.
LOWERED = ("mirror_min_runtime_hours = 0\n"
           "mirror_min_requests = 500\n"
           "mirror_consecutive_success = 0\n"
           "mirror_latency_floor_ms = 1000\n")

MIRRORS_COLUMNS = ["database", "user", "total_count", "mirrored_count", "dropped_count",
                   "error_count", "queue_length"]
STATS_COLUMNS = ["database", "requests", "mirrored", "not_sampled", "skipped", "dropped",
                 "errors_connection", "errors_query", "errors_timeout", "in_flight",
                 "compared", "mismatches", "source_avg_ms", "source_p99_ms", "mirror_avg_ms",
                 "mirror_p99_ms"]
SESSIONS_COLUMNS = ["client", "database", "user", "state", "queue_length", "mirrored_count",
                    "error_count", "dropped_count"]
COMMANDS = ["SHOW MIRROR READINESS", "SHOW MIRROR STATS", "SHOW MIRRORS",
            "SHOW MIRROR DATABASES", "SHOW MIRROR SESSIONS", "SHOW MIRROR POOLS",
            "SHOW MIRROR QUERIES", "RESET MIRROR STATS", "SHOW VERSION", "SHOW HELP"]


# --------------------------------------------------------------------------- helpers

def write_config(path, general="", databases=""):
    text = "[general]\n" + general
    if databases:
        text += "[databases]\n" + databases
    path.write_text(text)
    return path


def clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def console_psql(agent, *commands, extra=()):
    """psql -h <socket dir> -p <port> pgshadow -c ... (as an operator types it); returns
    the CompletedProcess (stdout, stderr, returncode)."""
    argv = [PSQL, "-X", "-h", agent.admin_dir, "-p", str(agent.admin_port), "-U", "pgshadow",
            "-v", "VERBOSITY=verbose", *extra]
    for c in commands:
        argv += ["-c", c]
    argv.append("pgshadow")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                              env=clean_env())
    except subprocess.TimeoutExpired:
        raise AssertionError(f"psql to the console timed out: {argv}\n"
                             f"stderr:\n{agent.stderr()[-3000:]}")


def console_readiness(agent):
    res = console_psql(agent, "SHOW MIRROR READINESS")
    assert res.returncode == 0, f"SHOW MIRROR READINESS failed: {res.stderr}\n" \
                                f"agent stderr:\n{agent.stderr()[-3000:]}"
    return res.stdout


def console_connect(agent):
    conn = psycopg2.connect(host=agent.admin_dir, port=agent.admin_port, dbname="pgshadow",
                            user="pgshadow", connect_timeout=10)
    conn.autocommit = True
    return conn


def console_table(agent, sql):
    """(column names, rows) of one console command, through psycopg2."""
    conn = console_connect(agent)
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return [d.name for d in cur.description], cur.fetchall()
    finally:
        conn.close()


def row_of(cols, rows, database):
    found = [dict(zip(cols, r)) for r in rows if r[0] == database]
    assert len(found) == 1, f"expected one row for {database!r}, got {rows}"
    return found[0]


def http_get(agent, path, accept=None):
    """(status, Content-Type, body) of GET http://<metrics addr><path>."""
    req = urllib.request.Request(f"http://{agent.metrics_addr}{path}")
    if accept:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def readiness_json(agent, path="/readiness?format=json", accept=None):
    status, ctype, body = http_get(agent, path, accept)
    assert status == 200, f"GET {path}: {status} {body}"
    assert ctype == "application/json", f"GET {path}: Content-Type {ctype!r}"
    return json.loads(body)


def readiness_cli(binary, *args, user=None):
    """`pgshadow readiness ARGS` -> (exit status, stdout, stderr)."""
    return h.run_agent_to_exit(binary, ["readiness", *args], user=user, timeout=30)


def wait_log(agent, pattern, since=0, timeout=LOG_TIMEOUT):
    rx = re.compile(pattern, re.M)
    deadline = time.monotonic() + timeout
    while True:
        m = rx.search(agent.stderr()[since:])
        if m:
            return m
        assert agent.running(), f"agent exited ({agent.proc.returncode}) before logging " \
                                f"{pattern!r}\nstderr:\n{agent.stderr()[-4000:]}"
        assert time.monotonic() < deadline, \
            f"no line matching {pattern!r} within {timeout}s\nstderr:\n{agent.stderr()[-4000:]}"
        time.sleep(0.05)


def count_lines(agent, pattern):
    return len(re.findall(pattern, agent.stderr(), re.M))


def after_tick(agent):
    """Settled /metrics once the agent has evaluated readiness on settled numbers."""
    wait_settled(agent)
    time.sleep(TICK * 1.5)
    return wait_settled(agent)


def run_queries(pg, sql, n, db=DB, conn=None):
    """n simple-protocol queries (one Query message each, autocommit) on one session."""
    own = conn is None
    conn = conn or connect(pg, db)
    try:
        cur = conn.cursor()
        for i in range(n):
            cur.execute(sql, {"i": i})
    finally:
        if own:
            conn.close()


def setup_db(src, mir, src_sql=(), mir_sql=()):
    for pg, extra in ((src, src_sql), (mir, mir_sql)):
        pg.createdb(DB)
        pg.psql(["CREATE TABLE t (id int PRIMARY KEY, v text)", *extra], db=DB)


# --------------------------------------------------------------------------- counting

def test_mirroring_counted_and_show_mirrors(pair, mirror_agent, agent_bin):
    """The seed's "successful mirroring is counted" and "SHOW MIRRORS": 200 inserts and
    100 selects mirror fine, 20 selects of a table the mirror lacks fail there (query
    errors). SHOW MIRRORS (PgDog's columns) and SHOW MIRROR STATS give exactly those
    numbers, equal to /metrics; GET /readiness?format=json agrees with /metrics; with the
    default criteria the verdict is NOT READY and `pgshadow readiness` exits 1."""
    src, mir = pair
    setup_db(src, mir, src_sql=["CREATE TABLE only_src (x int)"])
    since = mark(src)
    agent = mirror_agent(src, mir, extra=["--mirror-queue", UNTHROTTLED_QUEUE])
    conn = connect(src, DB)
    try:
        run_queries(src, "INSERT INTO t VALUES (%(i)s, 'x')", 200, conn=conn)
        run_queries(src, "SELECT v FROM t WHERE id = %(i)s", 100, conn=conn)
        run_queries(src, "SELECT count(*) FROM only_src", 20, conn=conn)
    finally:
        conn.close()
    m = after_tick(agent)
    o = check_invariant(m)
    assert (o["total"], o["mirrored"], o["query"]) == (320, 300, 20), o

    cols, rows = console_table(agent, "SHOW MIRRORS")
    assert cols == MIRRORS_COLUMNS
    row = row_of(cols, rows, DB)
    assert row == {"database": DB, "user": "*", "total_count": 320, "mirrored_count": 300,
                   "dropped_count": 0, "error_count": 20, "queue_length": 0}, row
    assert sum(r[2] for r in rows) == o["total"]
    assert sum(r[3] for r in rows) == o["mirrored"]

    cols, rows = console_table(agent, "SHOW MIRROR STATS")
    assert cols == STATS_COLUMNS
    s = row_of(cols, rows, DB)
    assert {k: s[k] for k in STATS_COLUMNS[1:12]} == {
        "requests": 320, "mirrored": 300, "not_sampled": 0, "skipped": 0, "dropped": 0,
        "errors_connection": 0, "errors_query": 20, "errors_timeout": 0, "in_flight": 0,
        "compared": int(m.get("mirror_compared_total", database=DB)), "mismatches": 20}, s
    for k in ("source_avg_ms", "source_p99_ms", "mirror_avg_ms", "mirror_p99_ms"):
        assert isinstance(s[k], float) and s[k] > 0, s

    # JSON numbers are /metrics' numbers (the window is the agent's life: no reset yet)
    j = readiness_json(agent)
    jm = j["metrics"]
    assert jm["total_requests"] == m.get("mirror_requests_total") == 320
    assert jm["mirrored"] == m.get("mirror_requests_mirrored") == 300
    assert jm["errors_query"] == m.get("mirror_errors_query") == 20
    assert jm["errors_connection"] == m.get("mirror_errors_connection") == 0
    assert jm["dropped"] == m.get("mirror_requests_dropped") == 0
    assert jm["attempted_requests"] == 320
    assert jm["error_rate"] == pytest.approx(20 / 320)
    assert j["ready"] is False and j["status"] == "NOT READY"
    assert m.get("mirror_readiness_ready") == 0
    assert j["confidence_score"] == m.get("mirror_readiness_confidence_score")
    failed = {c["name"] for c in j["criteria"] if c["result"] == "fail"}
    assert {"error_rate", "runtime", "volume", "streak"} <= failed, j["criteria"]

    rc, out, err = readiness_cli(agent_bin, "--url", f"http://{agent.metrics_addr}/readiness")
    assert rc == 1, f"exit {rc}, expected 1 (NOT READY)\nstdout:\n{out}\nstderr:\n{err}"
    assert "Status: NOT READY" in out and "Attempted requests 320 below minimum 100000" in out
    assert err == ""

    m, _ = finish(agent)
    logged = src.count_requests(DB, since)
    assert logged == 320 == m.requests(DB), (logged, m.requests(DB))


def test_mirror_stopped_errors_counted_and_alert(pair, mirror_agent):
    """The seed's "mirror cluster stopped": with the mirror down, the source's requests
    are counted as connection errors, SHOW MIRRORS and the readiness report count them,
    and the consecutive_errors alert (threshold 10) fires once — one WARN line,
    mirror_alert_active{alert="consecutive_errors"} 1 — and clears once (one line, 0)
    when the mirror is back and a request succeeds."""
    src, mir = pair
    setup_db(src, mir)
    agent = mirror_agent(src, mir, extra=["--mirror-error-threshold", 10,
                                          "--mirror-queue", UNTHROTTLED_QUEUE])
    fired = r"^pgshadow: WARN: mirror alert consecutive_errors fired: \d+ consecutive " \
            r"mirror errors \(threshold 10\)$"
    cleared = r"^pgshadow: INFO: mirror alert consecutive_errors cleared"
    conn = connect(src, DB)
    try:
        run_queries(src, "INSERT INTO t VALUES (%(i)s, 'up')", 50, conn=conn)
        up = after_tick(agent)
        assert int(up.get("mirror_requests_mirrored")) == 50, outcomes(up)
        assert up.get("mirror_alert_active", alert="consecutive_errors") == 0

        mir.stop("fast")
        cur = conn.cursor()
        for i in range(40):
            cur.execute("INSERT INTO t VALUES (%s, 'down')", (1000 + i,))
        wait_log(agent, fired, timeout=ALERT_TIMEOUT)
        down = after_tick(agent)
        o = outcomes(down)
        assert o["connection"] == 40 and o["mirrored"] == 50, o
        assert down.get("mirror_consecutive_errors") == 40
        assert down.get("mirror_alert_active", alert="consecutive_errors") == 1
        cols, rows = console_table(agent, "SHOW MIRRORS")
        assert row_of(cols, rows, DB)["error_count"] == 40
        report = console_readiness(agent)
        assert re.search(r"Error Rate: 44\.444%", report), report  # 40 of 90 attempted
        assert "\u2717 Error rate 44.444% exceeds threshold 1.000%" in report, report

        restart_server(mir)
        deadline = time.monotonic() + RESUME_TIMEOUT
        i = 2000
        while not re.search(cleared, agent.stderr(), re.M):
            assert time.monotonic() < deadline, \
                f"the alert did not clear within {RESUME_TIMEOUT}s of the mirror's " \
                f"restart: {outcomes(scrape(agent))}\nstderr:\n{agent.stderr()[-3000:]}"
            cur.execute("INSERT INTO t VALUES (%s, 'after')", (i,))
            i += 1
            time.sleep(0.2)
    finally:
        conn.close()
    m = after_tick(agent)
    assert m.get("mirror_alert_active", alert="consecutive_errors") == 0
    assert m.get("mirror_consecutive_errors") == 0
    assert m.get("mirror_requests_mirrored") > 50
    assert count_lines(agent, fired) == 1, agent.stderr()
    assert count_lines(agent, cleared) == 1, agent.stderr()
    assert count_lines(agent, r"mirror alert latency") == 0, agent.stderr()
    finish(agent)
    check_invariant(m)


# --------------------------------------------------------------------------- readiness

def test_ready_after_1000_requests(pair, mirror_agent, agent_bin, tmp_path):
    """The seed's readiness scenario: criteria lowered by the configuration file, 1000
    requests mirrored, then `psql -h <socket dir> -p <port> pgshadow -c "SHOW MIRROR
    READINESS"` says "Status: READY" with its Error Rate and Success Rate lines;
    `pgshadow readiness` exits 0 as an unprivileged user (and with --config); GET
    /readiness answers text by default and JSON for Accept: application/json or
    ?format=json, with /metrics' numbers. RESET MIRROR STATS restarts the window (NOT
    READY, exit 1, counters unchanged) until 600 more requests make it READY again;
    SIGHUP raising mirror_min_requests makes it NOT READY."""
    src, mir = pair
    setup_db(src, mir)
    path = write_config(tmp_path / "pgshadow.ini", LOWERED)
    agent = mirror_agent(src, mir, extra=["--config", path,
                                          "--mirror-queue", UNTHROTTLED_QUEUE])
    # the file names the agent's metrics address too (its flag wins, with the same
    # value), so that `pgshadow readiness --config FILE` finds the agent
    addr = agent.metrics_addr
    write_config(path, f"metrics_listen = {addr}\n" + LOWERED)
    url = f"http://{addr}/readiness"

    run_queries(src, "SELECT %(i)s::int AS n", 1000)
    m = after_tick(agent)
    assert int(m.get("mirror_requests_mirrored")) == 1000, outcomes(m)

    report = console_readiness(agent)
    assert "Status: READY" in report, report
    assert re.search(r"Error Rate: \d+\.\d+%", report), report
    assert re.search(r"Success Rate: \d+\.\d+%", report), report
    assert "Error Rate: 0.000%" in report and "Success Rate: 100.000%" in report, report
    assert "Total Requests: 1000" in report and "All migration criteria met" in report
    assert m.get("mirror_readiness_ready") == 1
    assert m.get("mirror_readiness_confidence_score") == 100

    rc, out, err = readiness_cli(agent_bin, "--url", url, user="nobody")
    assert rc == 0, f"exit {rc}, expected 0 (READY)\nstdout:\n{out}\nstderr:\n{err}"
    assert "Status: READY" in out and "Confidence Score: 100.0%" in out, out
    rc, out, err = readiness_cli(agent_bin, "--config", path)
    assert rc == 0 and "Status: READY" in out, (rc, out, err)
    rc, out, err = readiness_cli(agent_bin, "--url", f"http://{addr}", "--json")
    assert rc == 0 and json.loads(out)["ready"] is True, (rc, out, err)

    status, ctype, text = http_get(agent, "/readiness")
    assert status == 200 and ctype == "text/plain; charset=utf-8", (status, ctype)
    assert text.startswith("=== Mirror Migration Readiness Report ===\n\nStatus: READY\n")
    assert readiness_json(agent, "/readiness", accept="application/json")["ready"] is True
    status, ctype, text = http_get(agent, "/readiness?format=text", accept="application/json")
    assert status == 200 and ctype.startswith("text/plain") and "Status: READY" in text
    assert http_get(agent, "/readiness?format=xml")[0] == 400
    j = readiness_json(agent)
    assert j["ready"] is True and j["status"] == "READY" and j["confidence_score"] == 100
    assert j["metrics"]["total_requests"] == m.get("mirror_requests_total") == 1000
    assert j["metrics"]["mirrored"] == m.get("mirror_requests_mirrored")
    assert j["metrics"]["consecutive_successes"] == 1000
    assert j["thresholds"]["min_requests"] == 500
    assert j["metrics"]["mirror_avg_latency_ms"] > 0
    assert all(c["result"] in ("pass", "no_data") for c in j["criteria"]), j["criteria"]

    # RESET MIRROR STATS restarts the readiness window; the counters keep counting
    at = len(agent.stderr())
    res = console_psql(agent, "RESET MIRROR STATS")
    assert res.returncode == 0 and res.stderr == "" and "RESET" in res.stdout, res
    wait_log(agent, r"^pgshadow: RESET MIRROR STATS: the readiness window restarts$", since=at)
    report = console_readiness(agent)
    assert "Status: NOT READY" in report and "Total Requests: 0" in report, report
    assert "Attempted requests 0 below minimum 500" in report, report
    rc, out, err = readiness_cli(agent_bin, "--url", url)
    assert rc == 1 and "Status: NOT READY" in out, (rc, out, err)
    after = after_tick(agent)
    assert after.get("mirror_requests_total") == 1000, "RESET MIRROR STATS touched a counter"
    assert after.get("mirror_readiness_ready") == 0

    run_queries(src, "SELECT %(i)s::int AS n", 600)
    m = after_tick(agent)
    j = readiness_json(agent)
    assert j["ready"] is True and j["metrics"]["total_requests"] == 600, j["metrics"]
    assert m.get("mirror_requests_total") == 1600
    rc, out, err = readiness_cli(agent_bin, "--url", url)
    assert rc == 0, (rc, out, err)

    # SIGHUP: a criterion from the file changes at run time
    write_config(path, f"metrics_listen = {addr}\n" +
                 LOWERED.replace("mirror_min_requests = 500", "mirror_min_requests = 100000"))
    mark_at = len(agent.stderr())
    agent.proc.send_signal(signal.SIGHUP)
    wait_log(agent, r"^pgshadow: reload: mirror_min_requests 500 -> 100000 applied$",
             since=mark_at)
    rc, out, err = readiness_cli(agent_bin, "--url", url)
    assert rc == 1 and "Attempted requests 600 below minimum 100000" in out, (rc, out, err)
    m = after_tick(agent)
    assert m.get("mirror_readiness_ready") == 0
    assert m.get("mirror_readiness_confidence_score") == 75
    finish(agent)


def test_readiness_cli_cannot_tell(start_agent, agent_bin, rng):
    """`pgshadow readiness` exits 2, with one line on stderr, when nothing listens, when
    the URL is not http, when the answer is not a readiness report, and against an agent
    running without --mirror (its /readiness answers 404, and its console serves SHOW
    VERSION but not SHOW MIRROR READINESS). It never needs root."""
    free = h.free_port(hosts=("127.0.0.1",), rng=rng)
    rc, out, err = readiness_cli(agent_bin, "--url", f"http://127.0.0.1:{free}/readiness",
                                 user="nobody")
    assert rc == 2 and out == "", (rc, out, err)
    assert err == (f"pgshadow readiness: cannot reach the agent at http://127.0.0.1:{free}/"
                   f"readiness: cannot connect to 127.0.0.1 port {free}: Connection "
                   f"refused\n"), err
    rc, out, err = readiness_cli(agent_bin, "--url", "https://127.0.0.1/readiness")
    assert rc == 2 and len(err.splitlines()) == 1 and "https is not spoken by this client" in err, err
    rc, out, err = readiness_cli(agent_bin, "--bogus")
    assert rc == 2 and "unknown option '--bogus'" in err, err
    rc, out, err = readiness_cli(agent_bin, "--help")
    assert rc == 0 and "Exit status: 0 READY, 1 NOT READY, 2" in out, out
    res = subprocess.run([str(agent_bin), "--help"], capture_output=True, text=True)
    assert "pgshadow readiness [--url URL" in res.stdout

    port = h.free_port(rng=rng)
    agent = start_agent(port, ["lo"], dump=False)
    base = f"http://{agent.metrics_addr}"
    assert http_get(agent, "/readiness")[0] == 404
    rc, out, err = readiness_cli(agent_bin, "--url", f"{base}/readiness", user="nobody")
    assert rc == 2 and out == "", (rc, out, err)
    assert err.startswith(f"pgshadow readiness: {base}/readiness answered HTTP 404: no "
                          f"readiness report: this agent only observes"), err
    rc, out, err = readiness_cli(agent_bin, "--url", f"{base}/metrics")
    assert rc == 2 and out == "" and len(err.splitlines()) == 1, (rc, out, err)
    assert "did not answer a readiness report: not a JSON object" in err, err

    res = console_psql(agent, "SHOW MIRROR READINESS")
    assert "0A000" in res.stderr and "not available" in res.stderr, res
    res = console_psql(agent, "SHOW VERSION", extra=["-A", "-t"])
    assert res.returncode == 0 and res.stdout.startswith("pgshadow "), res
    cols, rows = console_table(agent, "SHOW MIRRORS")
    assert cols == MIRRORS_COLUMNS and rows == [], rows
    assert agent.stop(signal.SIGINT).returncode == 0


# --------------------------------------------------------------------------- console

def test_console_commands(pair, mirror_agent, agent_bin, tmp_path):
    """SHOW MIRROR DATABASES ([databases] lines and the global "*" line with their
    exposures), SHOW MIRROR SESSIONS (an open source session with its counts, gone once
    it closed), SHOW VERSION (= pgshadow --version), SHOW HELP (every command), several
    commands in one Query; an unknown command gets 42601 and the same session answers
    the next one (psql -c 'bogus' -c 'SHOW VERSION'); garbage on the socket is refused
    and capture and replay go on counting."""
    src, mir = pair
    setup_db(src, mir)
    path = write_config(tmp_path / "pgshadow.ini", "mirror_exposure = 1.0\n",
                        f"{DB} = exposure=1.0\nother = dbname=other_v2 exposure=0.5\n")
    agent = mirror_agent(src, mir, extra=["--config", path])

    version = subprocess.run([str(agent_bin), "--version"], capture_output=True,
                             text=True).stdout.strip()
    cols, rows = console_table(agent, "SHOW VERSION")
    assert cols == ["version"] and rows == [(version,)], rows
    cols, rows = console_table(agent, "show   help")
    assert cols == ["command", "description"]
    assert [r[0] for r in rows] == COMMANDS, rows
    cols, rows = console_table(agent, "SHOW MIRROR DATABASES")
    assert cols == ["database", "mirror_database", "exposure"]
    assert sorted(rows) == sorted([(DB, DB, 1.0), ("other", "other_v2", 0.5),
                                   ("*", "*", 1.0)]), rows

    conn = connect(src, DB)
    try:
        run_queries(src, "INSERT INTO t VALUES (%(i)s, 's')", 10, conn=conn)
        wait_settled(agent)
        cols, rows = console_table(agent, "SHOW MIRROR SESSIONS")
        assert cols == SESSIONS_COLUMNS
        assert len(rows) == 1, f"one source session is open, SESSIONS shows {rows}"
        s = dict(zip(cols, rows[0]))
        assert s["client"].isdigit() and s["database"] == DB and s["user"] == "postgres", s
        assert (s["queue_length"], s["mirrored_count"], s["error_count"],
                s["dropped_count"]) == (0, 10, 0, 0), s
        assert s["state"] in ("idle", "ready"), s
    finally:
        conn.close()
    deadline = time.monotonic() + 15
    while console_table(agent, "SHOW MIRROR SESSIONS")[1]:
        assert time.monotonic() < deadline, "the closed session is still listed"
        time.sleep(0.2)

    # an unknown command: 42601, and the session stays usable
    res = console_psql(agent, "bogus", "SHOW VERSION")
    assert "ERROR:  42601: unrecognized command \"bogus\"" in res.stderr, res
    assert version in res.stdout, res
    c = console_connect(agent)
    try:
        cur = c.cursor()
        with pytest.raises(psycopg2.Error) as e:
            cur.execute("SHOW MIRRORZ")
        assert e.value.pgcode == "42601"
        cur.execute("SHOW VERSION")
        assert cur.fetchall() == [(version,)]
        cur.execute("SHOW VERSION; SHOW MIRROR DATABASES")  # psycopg2 keeps the last
        assert len(cur.fetchall()) == 3
    finally:
        c.close()

    # garbage: an SSLRequest gets 'N', nonsense afterwards closes the connection
    sock_path = f"{agent.admin_dir}/.s.PGSQL.{agent.admin_port}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(sock_path)
        s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
        assert s.recv(1) == b"N"
        s.sendall(b"\xff" * 64)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data[:1] in (b"", b"E"), data
    run_queries(src, "INSERT INTO t VALUES (100 + %(i)s, 'after')", 5)
    m, _ = finish(agent)
    o = check_invariant(m)
    assert (o["total"], o["mirrored"]) == (15, 15), o


# --------------------------------------------------------------------------- SIGHUP

def test_sighup_exposure_stops_mirroring(pair, mirror_agent, tmp_path):
    """mirror_exposure 1.0 in the file: 100 requests mirrored. The file says 0.0, SIGHUP:
    the reload line is logged, SHOW MIRROR DATABASES shows exposure 0, and the next 100
    requests (on the open session and on a new one) are all not_sampled — nothing more
    reaches the mirror (its csvlog)."""
    src, mir = pair
    setup_db(src, mir)
    path = write_config(tmp_path / "pgshadow.ini", "mirror_exposure = 1.0\n")
    agent = mirror_agent(src, mir, extra=["--config", path,
                                          "--mirror-queue", UNTHROTTLED_QUEUE])
    conn = connect(src, DB)
    try:
        run_queries(src, "SELECT %(i)s::int", 100, conn=conn)
        m = wait_settled(agent)
        o = outcomes(m)
        assert (o["mirrored"], o["not_sampled"]) == (100, 0), o

        write_config(path, "mirror_exposure = 0.0\n")
        at = len(agent.stderr())
        agent.proc.send_signal(signal.SIGHUP)
        wait_log(agent, r"^pgshadow: reload: mirror_exposure 1 -> 0 applied$", since=at)
        cols, rows = console_table(agent, "SHOW MIRROR DATABASES")
        assert rows == [("*", "*", 0.0)], rows
        msince = mark(mir)
        run_queries(src, "SELECT %(i)s::int", 50, conn=conn)
    finally:
        conn.close()
    run_queries(src, "SELECT %(i)s::int", 50)
    m, _ = finish(agent)
    o = check_invariant(m)
    assert (o["total"], o["mirrored"], o["not_sampled"]) == (200, 100, 100), o
    assert int(m.get("mirror_requests_not_sampled_total", database=DB)) == 100
    assert mir.count_requests(DB, msince) == 0, "requests reached the mirror after " \
                                                "exposure 0 was applied"


# --------------------------------------------------------------------------- latency alert

SLOW_SLEEP_S = 0.2         # the mirror's f() sleeps this long; the source's does not
LATENCY_THRESHOLD_MS = 50  # between the fast (~1 ms) and the slow (>= 200 ms) p99
RESET_INTERVAL_S = 2       # mirror_metrics_reset_interval: the alert's window


def test_latency_alert_fires_once_and_clears_once(pair, mirror_agent):
    """A function f() that sleeps 0.2 s on the mirror only: 15 `SELECT f()` on the
    source make the mirror's p99 over the window exceed 50 ms — one WARN line, gauge 1,
    however many slow requests follow. Then f() is made fast on the mirror; once the
    window (2 s) has rolled, fast requests bring the p99 under the threshold — one line,
    gauge 0 — and it stays clear while fast traffic goes on for two more windows."""
    src, mir = pair
    fast = "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'"
    slow = (f"CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS "
            f"'SELECT 1 FROM pg_sleep({SLOW_SLEEP_S})'")
    setup_db(src, mir, src_sql=[fast], mir_sql=[slow])
    agent = mirror_agent(src, mir, extra=[
        "--mirror-latency-threshold-ms", LATENCY_THRESHOLD_MS,
        "--mirror-metrics-reset-interval", RESET_INTERVAL_S,
        "--mirror-queue", UNTHROTTLED_QUEUE])
    fired = r"^pgshadow: WARN: mirror alert latency fired: mirror p99 latency [\d.]+ms " \
            r"over the current window exceeds 50ms$"
    cleared = r"^pgshadow: INFO: mirror alert latency cleared: mirror p99 latency " \
              r"[\d.]+ms is within 50ms$"
    conn = connect(src, DB)
    try:
        run_queries(src, "SELECT f()", 15, conn=conn)
        wait_log(agent, fired, timeout=ALERT_TIMEOUT)
        m = after_tick(agent)
        assert int(m.get("mirror_requests_mirrored")) == 15, outcomes(m)
        assert m.get("mirror_alert_active", alert="latency") == 1

        mir.psql(fast, db=DB)  # the mirror's own port: not captured
        time.sleep(RESET_INTERVAL_S + 2 * TICK)  # every slow sample's window has rolled
        assert count_lines(agent, cleared) == 0, \
            "the alert cleared with no sample in the window: nothing says it recovered"
        deadline = time.monotonic() + ALERT_TIMEOUT
        while not re.search(cleared, agent.stderr(), re.M):
            assert time.monotonic() < deadline, \
                f"the latency alert did not clear within {ALERT_TIMEOUT}s of fast " \
                f"requests\nstderr:\n{agent.stderr()[-3000:]}"
            run_queries(src, "SELECT f()", 5, conn=conn)
            time.sleep(0.1)
        assert scrape(agent).get("mirror_alert_active", alert="latency") == 0
        end = time.monotonic() + 2 * RESET_INTERVAL_S
        while time.monotonic() < end:
            run_queries(src, "SELECT f()", 5, conn=conn)
            time.sleep(0.1)
    finally:
        conn.close()
    m = after_tick(agent)
    assert m.get("mirror_alert_active", alert="latency") == 0
    assert count_lines(agent, fired) == 1, agent.stderr()
    assert count_lines(agent, cleared) == 1, agent.stderr()
    assert count_lines(agent, r"consecutive_errors") == 0, agent.stderr()
    m, _ = finish(agent)
    o = check_invariant(m)
    assert o["mirrored"] == o["total"], o


# --------------------------------------------------------------------------- start-up

def test_console_socket_taken_or_unusable_is_fatal(start_agent, agent_bin, tmp_path, rng):
    """A second agent asked for a console socket a live agent holds exits 2 at start with
    one line naming the socket, and leaves nothing attached; so does one whose socket
    directory cannot be created. A stale socket (its agent was SIGKILLed) is replaced,
    and a clean stop removes the socket file."""
    first = start_agent(h.free_port(rng=rng), ["lo"], dump=False)
    sock = f"{first.admin_dir}/.s.PGSQL.{first.admin_port}"
    assert os.path.exists(sock)
    assert oct(os.stat(sock).st_mode & 0o777) == "0o660"
    baseline = set(h.our_progs())
    args = ["--port", h.free_port(rng=rng), "--interface", "lo",
            "--metrics-listen", f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',), rng=rng)}",
            "--admin-port", first.admin_port]
    rc, _, err = h.run_agent_to_exit(agent_bin, args + ["--admin-socket-dir", first.admin_dir])
    assert rc == 2, f"exit {rc}, expected 2\n{err}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"pgshadow: admin console: another process (a running pgshadow?) is listening on "
        f"{sock} ("), err
    assert not h.wait_no_residue(baseline, -1, timeout=5)

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc, _, err = h.run_agent_to_exit(agent_bin, args + ["--admin-socket-dir", blocker / "sub"])
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and \
        f"admin console: cannot create directory {blocker / 'sub'}: Not a directory" in err
    assert not h.wait_no_residue(baseline, -1, timeout=5)

    # the first agent's console is untouched
    res = console_psql(first, "SHOW VERSION", extra=["-A", "-t"])
    assert res.returncode == 0 and res.stdout.startswith("pgshadow "), res

    first.proc.send_signal(signal.SIGKILL)
    first.wait(10)
    assert os.path.exists(sock), "a SIGKILLed agent cannot remove its socket"
    second = start_agent(h.free_port(rng=rng), ["lo"], dump=False,
                         extra=["--admin-socket-dir", first.admin_dir,
                                "--admin-port", str(first.admin_port)])
    res = console_psql(second, "SHOW VERSION", extra=["-A", "-t"])
    assert res.returncode == 0 and res.stdout.startswith("pgshadow "), res
    assert second.stop(signal.SIGINT).returncode == 0
    assert not os.path.exists(sock), "a clean stop leaves its socket file"


def test_console_tcp_is_loopback_and_read_only(pair, mirror_agent, agent_bin, rng):  # noqa: F811
    """--admin-listen: a non-loopback address is refused at start (exit 2, why); on
    127.0.0.1 the TCP console reads (SHOW VERSION) but RESET MIRROR STATS is refused with
    42501, while the Unix socket (its permissions are the access control) may RESET."""
    src, mir = pair
    rc, _, err = h.run_agent_to_exit(
        agent_bin, ["--port", src.port, "--interface", "lo", "--admin-socket-dir", "",
                    "--metrics-listen", f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',))}",
                    "--admin-listen", "0.0.0.0:6999"])
    assert rc == 2 and "--admin-listen 0.0.0.0:6999 is not a loopback address" in err, err
    port = h.free_port(hosts=("127.0.0.1",), rng=rng)
    agent = mirror_agent(src, mir, extra=["--admin-listen", f"127.0.0.1:{port}"])
    tcp = [PSQL, "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "pgshadow", "-v",
           "VERBOSITY=verbose", "pgshadow", "-c"]
    r = subprocess.run(tcp + ["SHOW VERSION"], capture_output=True, text=True, timeout=30,
                       env=clean_env())
    assert r.returncode == 0 and "pgshadow" in r.stdout, r.stderr
    r = subprocess.run(tcp + ["RESET MIRROR STATS"], capture_output=True, text=True,
                       timeout=30, env=clean_env())
    assert r.returncode != 0 and "42501" in r.stderr and "Unix socket" in r.stderr, r.stderr
    r = console_psql(agent, "RESET MIRROR STATS")
    assert r.returncode == 0 and "RESET" in r.stdout, r.stderr


def test_console_unix_socket_users(pair, mirror_agent, tmp_path):  # noqa: F811
    """--stats-users nobody: the socket file opens to everyone (0666) and the peer's uid
    decides (SO_PEERCRED): nobody may SHOW but RESET gets 42501; daemon (not listed) is
    refused at connection (FATAL 28000, psql shows its message); root may RESET."""
    import shutil
    import tempfile
    from pathlib import Path
    src, mir = pair
    sockdir = Path(tempfile.mkdtemp(prefix="pgshadow-console-"))
    try:
        sockdir.chmod(0o755)
        agent = mirror_agent(src, mir, extra=["--admin-socket-dir", str(sockdir),
                                               "--stats-users", "nobody"])
        sock = sockdir / f".s.PGSQL.{agent.admin_port}"
        assert sock.stat().st_mode & 0o777 == 0o666

        def as_user(user, sql):
            return subprocess.run(
                ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", "--",
                 PSQL, "-X", "-h", str(sockdir), "-p", str(agent.admin_port), "-U",
                 "pgshadow", "-v", "VERBOSITY=verbose", "pgshadow", "-c", sql],
                capture_output=True, text=True, timeout=30, env=clean_env(), cwd="/")

        r = as_user("nobody", "SHOW VERSION")
        assert r.returncode == 0 and "pgshadow" in r.stdout, r.stderr
        r = as_user("nobody", "RESET MIRROR STATS")
        assert r.returncode != 0 and "42501" in r.stderr, r.stderr
        r = as_user("daemon", "SHOW VERSION")
        assert r.returncode != 0 and "may not use the pgshadow console" in r.stderr, r.stderr
        r = subprocess.run([PSQL, "-X", "-h", str(sockdir), "-p", str(agent.admin_port),
                            "-U", "pgshadow", "pgshadow", "-c", "RESET MIRROR STATS"],
                           capture_output=True, text=True, timeout=30, env=clean_env())
        assert r.returncode == 0 and "RESET" in r.stdout, r.stderr
        agent.stop()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_console_tcp_scram(pair, mirror_agent, agent_bin, tmp_path, rng):  # noqa: F811
    """admin_auth_file: TCP clients authenticate with SCRAM-SHA-256 (psycopg2, libpq)
    against PgBouncer-style lines — a verifier PostgreSQL itself made (pg_authid) and a
    password in clear — then their role decides: admin_users may RESET, stats_users only
    SHOW (42501), another listed user is refused (28000), a wrong password fails (28P01),
    and with the file any address may be listened on (0.0.0.0 here; without it the agent
    refuses to start)."""
    src, mir = pair
    src.psql(["SET password_encryption = 'scram-sha-256'",
              "CREATE ROLE verifier_maker PASSWORD 'Adm-Pw-11aa'"])
    verifier = src.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'verifier_maker'")
    assert verifier.startswith("SCRAM-SHA-256$4096:"), verifier
    auth = tmp_path / "userlist.txt"
    auth.write_text(f'; console users\n"adm" "{verifier}"\n"viewer" "View-Pw-22bb"\n'
                    f'"other" "Other-Pw-33cc"\n')
    auth.chmod(0o600)
    port = h.free_port(hosts=("127.0.0.1",), rng=rng)
    agent = mirror_agent(src, mir, extra=["--admin-listen", f"0.0.0.0:{port}",
                                          "--admin-auth-file", str(auth),
                                          "--admin-users", "adm", "--stats-users", "viewer"])

    def connect(user, password):
        conn = psycopg2.connect(host="127.0.0.1", port=port, dbname="pgshadow", user=user,
                                password=password, connect_timeout=10)
        conn.autocommit = True
        return conn

    conn = connect("adm", "Adm-Pw-11aa")
    conn.cursor().execute("RESET MIRROR STATS")
    conn.close()
    conn = connect("viewer", "View-Pw-22bb")
    cur = conn.cursor()
    cur.execute("SHOW VERSION")
    assert cur.fetchone()[0].startswith("pgshadow ")
    with pytest.raises(psycopg2.Error) as e:
        cur.execute("RESET MIRROR STATS")
    assert e.value.pgcode == "42501"
    conn.close()
    with pytest.raises(psycopg2.OperationalError) as e:
        connect("adm", "wrong")
    assert 'password authentication failed for user "adm"' in str(e.value)
    with pytest.raises(psycopg2.OperationalError) as e:
        connect("nobody-listed", "x")
    assert "password authentication failed" in str(e.value)
    with pytest.raises(psycopg2.OperationalError) as e:
        connect("other", "Other-Pw-33cc")
    assert 'role "other" may not use the pgshadow console' in str(e.value)
    # no secret of the file in what the agent says
    _, result = finish(agent)
    for secret in ("Adm-Pw-11aa", "View-Pw-22bb", "Other-Pw-33cc", verifier.split("$")[2]):
        assert secret not in result.stderr
    # without the file, 0.0.0.0 is refused at start; a bad file is named with its line
    rc, _, err = h.run_agent_to_exit(
        agent_bin, ["--port", src.port, "--interface", "lo", "--admin-socket-dir", "",
                    "--metrics-listen", f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',))}",
                    "--admin-listen", f"0.0.0.0:{port}"])
    assert rc == 2 and "no admin_auth_file is set" in err, err
    auth.write_text('"adm" "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"\n')
    rc, _, err = h.run_agent_to_exit(
        agent_bin, ["--port", src.port, "--interface", "lo", "--admin-socket-dir", "",
                    "--metrics-listen", f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',))}",
                    "--admin-listen", f"127.0.0.1:{port}", "--admin-auth-file", str(auth)])
    assert rc == 2 and f"admin_auth_file {auth}, line 1: an md5 hash" in err, err
