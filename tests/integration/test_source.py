"""Integration tests of source observation: real PostgreSQL 15 servers, real clients (psql,
pgbench, psycopg2), the real agent attached to lo, its /metrics compared with the
server's own record.

Ground truth is the server's csvlog with log_statement = 'all': one record per simple
Query or extended-protocol Execute (see pg_harness.py for exactly which records are
counted and why). Each test drives its traffic in databases of its own, so the harness's
own queries (in database `postgres`) never mix with the traffic under test; the log is
read from a mark taken (after sync_log) just before the agent started. Error counts must
equal the errors the test caused, which the test also checks against the server's ERROR
records. pg_stat_statements is only a cross-check for pgbench -M simple/extended (it
counts each statement of a multi-statement Query, skips failures, and does not count
utility statements re-run through a prepared statement, e.g. pgbench -M prepared's
BEGIN/END).

Each test starts its own agent (`--metrics-listen` on a free port), waits until /metrics
has stopped changing (two scrapes 300 ms apart agree), then stops the agent with SIGINT
(exit 0 and a stats line required). Servers are stopped and their directories removed
even when a test fails (pg_harness.pg_server), agents are killed by conftest's
start_agent fixture. Needs root (conftest.py skips everything otherwise).
"""

import re
import signal
import subprocess
import threading
import time

import psycopg2
import pytest

import pg_harness as pgh
import pgshadow_harness as h

WAIT_STABLE_TIMEOUT = 30   # seconds for /metrics to settle after traffic
METRICS_UP_TIMEOUT = 10    # seconds for /metrics to answer after the ready line


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def metrics_agent_bin(agent_bin):
    if not pgh.agent_supports_metrics(agent_bin):
        pytest.fail(f"{agent_bin} --help does not list --metrics-listen: this agent has no "
                    f"source metrics yet (issue 3), rebuild with `make`")
    return agent_bin


@pytest.fixture(scope="module")
def pg():
    """One PostgreSQL 15 server (127.0.0.1 and ::1) for the module's tests; each test
    uses databases of its own."""
    with pgh.pg_server(name="source", ipv6=True) as server:
        yield server


@pytest.fixture
def source_agent(start_agent, metrics_agent_bin, rng):
    """source_agent(pg, extra=()) -> an agent on lo for pg's port, serving /metrics on a
    free port (agent.metrics_addr), /metrics answering."""

    def start(server, extra=()):
        addr = f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',), rng=rng)}"
        agent = start_agent(server.port, ["lo"], dump=False,
                            extra=["--metrics-listen", addr, *extra])
        agent.metrics_addr = addr
        deadline = time.monotonic() + METRICS_UP_TIMEOUT
        while True:
            try:
                pgh.scrape(addr)
                return agent
            except OSError as e:
                if not agent.running() or time.monotonic() > deadline:
                    raise AssertionError(f"/metrics at {addr} not answering ({e})\n"
                                         f"stderr:\n{agent.stderr()}")
                time.sleep(0.1)

    return start


# --------------------------------------------------------------------------- helpers

def mark(pg):
    """Log position after everything so far (call before starting the agent)."""
    pg.sync_log()
    return pg.log_mark()


def final_metrics(agent):
    return pgh.wait_metrics_stable(agent.metrics_addr, interval=0.3,
                                   timeout=WAIT_STABLE_TIMEOUT)


def finish(agent):
    """The final /metrics (once stable), then SIGINT: returns (Metrics, AgentResult).
    The agent is stopped before the test asks the server for its counts, because those
    questions (sync_log's marker query) go through the captured port."""
    m = final_metrics(agent)
    return m, agent.stop(signal.SIGINT)


def check_stop(result, metrics, clean=True):
    """Exit 0 after SIGINT with a stats line whose counters agree with the last scrape.
    clean: no ring-buffer drops, no stream gaps, no resyncs, no abandoned requests (every
    test but the one with a connection opened before the agent)."""
    assert result.returncode == 0, \
        f"agent exited with {result.returncode} after SIGINT\nstderr:\n{result.stderr}"
    s = result.stats
    assert s is not None, f"no 'pgshadow: stats' line on stderr:\n{result.stderr}"
    for key in ("packets", "ringbuf_drops", "gaps", "sessions", "requests", "resyncs",
                "encrypted", "replication", "abandoned"):
        assert key in s, f"stats line lacks {key}=: {s}"
    assert s["ringbuf_drops"] == 0 == metrics.get("mirror_capture_ringbuf_drops_total"), \
        f"ring-buffer drops: stats {s}, /metrics " \
        f"{metrics.get('mirror_capture_ringbuf_drops_total')}"
    total = sum(int(v) for _, v in metrics.select("mirror_source_requests_total"))
    for key, name, value in (
            ("requests", "sum of mirror_source_requests_total", total),
            ("resyncs", "mirror_capture_resyncs_total",
             metrics.get("mirror_capture_resyncs_total")),
            ("encrypted", "mirror_capture_encrypted_sessions_total",
             metrics.get("mirror_capture_encrypted_sessions_total")),
            ("replication", "mirror_capture_replication_sessions_total",
             metrics.get("mirror_capture_replication_sessions_total"))):
        assert s[key] == int(value), \
            f"stats line {key}={s[key]} but {name} = {int(value)} on /metrics " \
            f"(nothing ran in between)\nstats: {s}"
    if clean:
        bad = {k: s[k] for k in ("gaps", "resyncs", "abandoned") if s[k] != 0}
        assert not bad, f"a clean capture (every connection seen from its start) has " \
                        f"{bad}; stats: {s}\nstderr:\n{result.stderr[-3000:]}"
    return s


def check_source_metrics(m, db, expected_requests, expected_errors, pg=None, since=None):
    """Requests, errors per class, and the latency histogram of one database. With pg
    and since, a failure message says what kinds of records the server logged."""
    got = m.requests(db)
    kinds = pgh.request_kinds(pg.request_records(db, since)) if pg is not None else ""
    assert got == expected_requests, \
        f"database {db}: agent counted {got} requests, the server logged " \
        f"{expected_requests} {kinds}\nall databases: " \
        f"{ {d: m.requests(d) for d in m.databases()} }"
    errors = m.errors(db)
    print(f"{db}: agent {got} requests, errors {errors}; server {expected_requests} "
          f"{kinds}, errors {expected_errors}")
    assert errors == expected_errors, \
        f"database {db}: agent's errors by SQLSTATE class {errors}, expected " \
        f"{expected_errors}"
    check_histogram(m, db, expected_requests)


def check_histogram(m, db, count):
    buckets, total_s, n = m.histogram("mirror_source_latency_seconds", database=db)
    assert int(n) == count, f"{db}: latency _count {n}, requests {count}"
    if count == 0:
        return
    assert buckets and buckets[-1][0] == float("inf"), f"{db}: no +Inf bucket: {buckets}"
    assert int(buckets[-1][1]) == count, f"{db}: +Inf bucket {buckets[-1][1]} != {count}"
    counts = [c for _, c in buckets]
    assert counts == sorted(counts), f"{db}: buckets not cumulative: {buckets}"
    assert total_s > 0, f"{db}: latency _sum {total_s} for {count} requests"
    # Loopback requests of these tests take well under a second each on average.
    assert total_s / count < 1.0, f"{db}: mean latency {total_s / count:.3f} s"


def assert_no_unknown(m):
    n = m.requests("unknown")
    assert n == 0, f"{n} requests counted under database=\"unknown\" although every " \
                   f"connection was seen from its start"


def server_errors(pg, db, since, expected):
    """The server's ERROR records for db agree with what the test caused."""
    logged = pg.count_errors(db, since)
    assert logged == expected, \
        f"the server logged errors {logged} in {db}, the test caused {expected}"
    return logged


# --------------------------------------------------------------------------- psql

COPY_ROWS = 2000


def test_psql_simple_protocol(pg, source_agent, tmp_path):
    """psql: single and multi-statement Query messages (`SELECT 1; SELECT 2` is ONE
    request), an empty query, errors (23505, 42P01, 22012), errors inside explicit
    transactions (then 25P02), COPY FROM STDIN with data (plain and \\copy, and a
    failing one), COPY TO STDOUT, a large result, \\lo_import (FunctionCall): requests ==
    the server's log lines, errors == the errors caused."""
    db = "psql_simple"
    pg.createdb(db)
    since = mark(pg)
    agent = source_agent(pg)

    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)", db=db)
    pg.psql("SELECT 1; SELECT 2", db=db)                                 # one request
    pg.psql(["SELECT 1", "SELECT 2, 3; SELECT 4; SELECT 'a;b'", ""], db=db)  # three
    pg.psql("INSERT INTO t VALUES (1, 'one'); INSERT INTO t VALUES (2, 'two')", db=db)
    pg.psql(["INSERT INTO t VALUES (1, 'dup')",                          # 23505
             "SELECT * FROM no_such_table",                              # 42P01
             "SELECT 1/0",                                               # 22012
             "SELECT 1; SELECT 1/0; SELECT 3"],                          # 22012, one request
            db=db, on_error_stop=False, check=False)
    # Scripts on stdin: psql sends one Query per statement.
    pg.psql(db=db, on_error_stop=False, check=False, input=(
        "BEGIN;\n"
        "INSERT INTO t VALUES (1, 'dup in tx');\n"                        # 23505
        "SELECT 1;\n"                                                     # 25P02
        "ROLLBACK;\n"
        "BEGIN;\n"
        "INSERT INTO t VALUES (3, 'three');\n"
        "SAVEPOINT s;\n"
        "SELECT * FROM still_no_such_table;\n"                            # 42P01
        "ROLLBACK TO SAVEPOINT s;\n"
        "INSERT INTO t VALUES (4, 'four');\n"
        "COMMIT;\n"))
    rows = "".join(f"{i}\trow {i} {'x' * (i % 97)}\n" for i in range(100, 100 + COPY_ROWS))
    pg.psql(db=db, input=f"COPY t FROM STDIN;\n{rows}\\.\nSELECT count(*) FROM t;\n")
    more = "".join(f"{i}\tcopied {i}\n" for i in range(10000, 10000 + COPY_ROWS))
    pg.psql(db=db, input=f"\\copy t from stdin\n{more}\\.\n")
    pg.psql(db=db, on_error_stop=False, check=False,
            input="COPY t FROM STDIN;\n5\tfive\n1\tduplicate\n\\.\n")    # 23505
    out = pg.psql("COPY t TO STDOUT", db=db).stdout
    assert len(out.splitlines()) == 4 + 2 * COPY_ROWS
    pg.psql("SELECT g, md5(g::text) FROM generate_series(1, 50000) g", db=db)
    pg.psql(db=db, input="SELECT 'a' AS x \\gset\nSELECT :'x';\n")
    # \lo_import: libpq's large-object calls are FunctionCall ('F') messages, requests too.
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 256)
    pg.psql(db=db, input=f"\\lo_import {blob}\n")

    caused = {"23": 3, "42": 2, "22": 2, "25": 1}
    m, result = finish(agent)
    expected = pg.count_requests(db, since)
    fastpath = pgh.request_kinds(pg.request_records(db, since)).get("fastpath", 0)
    assert fastpath >= 4, f"\\lo_import made {fastpath} FunctionCalls"
    server_errors(pg, db, since, caused)
    check_source_metrics(m, db, expected, caused, pg, since)
    assert_no_unknown(m)
    assert m.get("mirror_capture_sessions_active") == 0, \
        f"sessions_active {m.get('mirror_capture_sessions_active')} after every client left"
    check_stop(result, m)


# --------------------------------------------------------------------------- pgbench

@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench(pg, source_agent, mode):
    """pgbench -i then -M mode -t 200 -c 4 in a database of its own, the agent running
    throughout: requests == the server's log lines (Query and Execute), no errors."""
    db = f"bench_{mode}"
    pg.createdb(db)
    since = mark(pg)
    agent = source_agent(pg)

    pg.pgbench_init(db)
    pg.sync_log()
    run_mark = pg.log_mark()
    pg.pgss_reset()
    res = pg.pgbench(["-M", mode, "-t", 200, "-c", 4, "-j", 2], db)
    assert res.transactions == 800, res.stdout

    m, result = finish(agent)
    expected = pg.count_requests(db, since)
    run_requests = pg.count_requests(db, run_mark, sync=False)
    assert run_requests >= 7 * res.transactions, \
        f"the server logged {run_requests} requests for {res.transactions} tpcb-like " \
        f"transactions of 7 statements each"
    if mode != "prepared":
        # Cross-check of the log with pg_stat_statements (single statements, no errors).
        calls = pg.pgss_calls(db)
        assert calls == run_requests, \
            f"pg_stat_statements counted {calls} calls in {db}, the log {run_requests}: " \
            f"{pg.pgss_statements(db)}"
    server_errors(pg, db, since, {})
    check_source_metrics(m, db, expected, {}, pg, since)
    assert_no_unknown(m)
    check_stop(result, m)


def test_latency_is_the_servers(pg, source_agent):
    """A request's latency is the time from its first byte to its answer's last on the
    wire: for pg_sleep(0.15) it is at least the sleep and at most what the client
    measured around the call (a record's time is the packet's own stamp from the
    sending TCP stack, or the program's clock: either way CLOCK_MONOTONIC, so a wrong
    clock base, a missing stamp or a stale one shows here), and a trivial SELECT over
    loopback takes well under the 5 ms bucket."""
    db = "latency"
    pg.createdb(db)
    agent = source_agent(pg)
    sleep_s, sleeps, trivial = 0.15, 4, 50
    conn = psycopg2.connect(pg.conninfo(db))
    conn.autocommit = True
    client_s = 0.0  # every request, timed around the call by the client
    with conn.cursor() as cur:
        for sql in [f"SELECT pg_sleep({sleep_s})"] * sleeps + ["SELECT 1"] * trivial:
            t0 = time.monotonic()
            cur.execute(sql)
            cur.fetchall()
            client_s += time.monotonic() - t0
    conn.close()

    m, result = finish(agent)
    buckets, total_s, n = m.histogram("mirror_source_latency_seconds", database=db)
    assert int(n) == sleeps + trivial, f"{n} requests counted, {sleeps + trivial} sent"
    under_5ms = max((c for le, c in buckets if le <= 0.005), default=0)
    assert int(under_5ms) >= trivial * 0.9, \
        f"only {under_5ms} of {trivial} trivial SELECTs under 5 ms: {buckets}"
    assert sleeps * sleep_s <= total_s <= client_s, \
        f"latency _sum {total_s:.4f} s over {n} requests: the {sleeps} sleeps alone are " \
        f"{sleeps * sleep_s} s, and the client measured {client_s:.4f} s for them all"
    check_stop(result, m)


# --------------------------------------------------------------------------- psycopg2

PY_ROUNDS = 150


def _psycopg2_worker(conninfo, table, errors_to_cause, failures):
    """Parameterized statements (client-side interpolation, simple protocol), implicit
    transactions (BEGIN/COMMIT), executemany, and errors_to_cause failing statements."""
    try:
        conn = psycopg2.connect(conninfo)
        try:
            cur = conn.cursor()
            cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text, n numeric)")
            conn.commit()
            for i in range(PY_ROUNDS):
                cur.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)",
                            (i, f"it's row {i} \\ \"quoted\"", i / 7))
                cur.execute(f"SELECT v, n FROM {table} WHERE id = %s", (i,))
                assert cur.fetchone()[0].startswith("it's row")
                if i % 10 == 9:
                    conn.commit()
            conn.commit()
            cur.executemany(f"UPDATE {table} SET n = n + %(d)s WHERE id = %(id)s",
                            [{"d": 1, "id": i} for i in range(20)])
            conn.commit()
            for kind in errors_to_cause:
                try:
                    if kind == "23":
                        cur.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", (0, "d", 0))
                    elif kind == "42":
                        cur.execute("SELECT * FROM no_such_relation WHERE x = %s", (1,))
                    else:
                        cur.execute("SELECT %s / 0", (1,))
                except psycopg2.Error:
                    conn.rollback()
                else:
                    raise AssertionError(f"statement meant to fail with class {kind} "
                                         f"succeeded")
            conn.autocommit = True
            cur.execute(f"SELECT count(*) FROM {table}")
            assert cur.fetchone()[0] == PY_ROUNDS
        finally:
            conn.close()
    except Exception as e:  # reported by the main thread
        failures.append(f"{conninfo}: {e!r}")


def test_psycopg2_two_databases(pg, source_agent):
    """psycopg2 in two databases at once (one over 127.0.0.1, one over ::1): exact
    per-database request and error counts."""
    dbs = {"py_alpha": ("127.0.0.1", ["23", "42", "23"]),
           "py_beta": ("::1", ["22"])}
    for db in dbs:
        pg.createdb(db)
    since = mark(pg)
    agent = source_agent(pg)

    failures = []
    threads = [threading.Thread(target=_psycopg2_worker,
                                args=(pg.conninfo(db, host=host), f"t_{db}", errs, failures))
               for db, (host, errs) in dbs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "psycopg2 workers did not finish"
    assert not failures, failures

    m, result = finish(agent)
    pg.sync_log()
    for db, (_, errs) in dbs.items():
        caused = {}
        for cls in errs:
            caused[cls] = caused.get(cls, 0) + 1
        expected = pg.count_requests(db, since, sync=False)
        server_errors(pg, db, since, caused)
        check_source_metrics(m, db, expected, caused, pg, since)
    assert_no_unknown(m)
    check_stop(result, m)


# --------------------------------------------------------------------------- replication

def test_replication_connection_counted_not_decoded(pg, source_agent):
    """psql replication=database running IDENTIFY_SYSTEM (and a physical replication
    connection doing the same): counted as replication sessions, no requests decoded;
    an ordinary session in the same database still is."""
    db = "repl_db"
    pg.createdb(db)
    since = mark(pg)
    agent = source_agent(pg)

    for kind in ("database", "true"):
        out = pg.psql("IDENTIFY_SYSTEM", db=db,
                      args=["-A", "-t", "-d", pg.conninfo(db, replication=kind)]).stdout
        fields = out.strip().split("|")
        assert len(fields) == 4 and fields[1] == "1", \
            f"IDENTIFY_SYSTEM over replication={kind} answered {out!r}"
        assert fields[3] == (db if kind == "database" else ""), out
    pg.psql("SELECT 1", db=db)

    m, result = finish(agent)
    assert m.get("mirror_capture_replication_sessions_total") == 2, \
        f"replication sessions {m.get('mirror_capture_replication_sessions_total')}, " \
        f"expected 2"
    expected = pg.count_requests(db, since)
    assert expected == 1, f"the server logged {expected} client-backend requests in {db}"
    check_source_metrics(m, db, 1, {})
    assert_no_unknown(m)
    every = {d: m.requests(d) for d in m.databases() if m.requests(d)}
    assert every == {db: 1}, f"requests by database {every}: only the ordinary session's " \
                             f"SELECT 1 ran while the agent was attached"
    check_stop(result, m)


# --------------------------------------------------------------------------- resync

RESYNC_WARMUP_MAX = 40   # queries sent, one every RESYNC_WARMUP_PAUSE, until resynced
RESYNC_WARMUP_PAUSE = 0.25
RESYNC_QUERIES = 30      # then counted exactly


@pytest.mark.parametrize("with_dsn", [False, True], ids=["unknown", "source_dsn"])
def test_connection_opened_before_agent(pg, source_agent, with_dsn):
    """A psycopg2 connection opened (and used) before the agent started: every query
    after the agent started counts exactly once, its first one included (the decoder
    aligns at it, confirmed by its answer: mirror_capture_resyncs_total >= 1), under database="unknown" without --source-dsn and under the
    real database with it (resolved through pg_stat_activity)."""
    db = "early_dsn" if with_dsn else "early_unknown"
    pg.createdb(db)
    conn = psycopg2.connect(pg.conninfo(db))
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE e (id int, v text)")
        cur.execute("SELECT 1")
        client_port = _local_port(conn)
        since = mark(pg)
        extra = ["--source-dsn", pg.conninfo("postgres")] if with_dsn else []
        agent = source_agent(pg, extra=extra)
        label = db if with_dsn else "unknown"

        # Warm-up: queries until the decoder has found its footing (and, with the DSN,
        # resolved the session's database); these are not counted exactly.
        warmup = 0
        for warmup in range(1, RESYNC_WARMUP_MAX + 1):
            cur.execute("SELECT %s AS warmup", (warmup,))
            time.sleep(RESYNC_WARMUP_PAUSE)
            m = pgh.metrics(agent.metrics_addr)
            if m.get("mirror_capture_resyncs_total") >= 1 and m.requests(label) >= 1:
                break
        else:
            m = pgh.metrics(agent.metrics_addr)
            raise AssertionError(
                f"after {warmup} queries on the connection opened before the agent: "
                f"resyncs {m.get('mirror_capture_resyncs_total')}, requests under "
                f"{label!r} {m.requests(label)}, by database "
                f"{ {d: m.requests(d) for d in m.databases()} }\nstderr:\n{agent.stderr()}")
        before = final_metrics(agent)
        assert before.requests(label) <= warmup, \
            f"{before.requests(label)} requests under {label!r} after {warmup} warm-up " \
            f"queries: more than were sent"
        # the first query of the session (the server had sent nothing since the agent
        # started, its answer decoded from its first byte) is counted too, under some
        # label (unknown until pg_stat_activity names the session)
        counted = sum(before.requests(d) for d in before.databases())
        assert counted == warmup, \
            f"{counted} requests counted of {warmup} warm-up queries, by database " \
            f"{ {d: before.requests(d) for d in before.databases()} }: the session's first " \
            f"query after the agent started must count once"

        pgh.inserts_then_error(cur, RESYNC_QUERIES)
        after, result = finish(agent)
    finally:
        conn.close()

    sent = RESYNC_QUERIES + 2
    pg.sync_log()
    logged = [r for r in pg.request_records(db, since) if _port_of(r) == client_port]
    assert len(logged) == warmup + sent, \
        f"the server logged {len(logged)} requests of the early session, the test sent " \
        f"{warmup + sent}"
    got = after.requests(label) - before.requests(label)
    print(f"early session: {warmup} warm-up queries, {before.requests(label)} of them "
          f"counted under {label!r}; then {got} of {sent} counted; resyncs "
          f"{after.get('mirror_capture_resyncs_total')}")
    assert got == sent, \
        f"after resync the agent counted {got} requests under {label!r} for {sent} " \
        f"queries (before: {before.requests(label)}, after: {after.requests(label)}; by " \
        f"database {dict((d, after.requests(d)) for d in after.databases())})"
    err = after.errors(label).get("42", 0) - before.errors(label).get("42", 0)
    assert err == 1, f"42P01 errors under {label!r}: {err}, expected 1"
    if with_dsn:
        assert after.requests("unknown") == before.requests("unknown"), \
            "requests still counted under unknown after the session was resolved"
    else:
        assert after.requests(db) == 0, \
            f"{after.requests(db)} requests under {db} without --source-dsn: the agent " \
            f"never saw this session's startup"
    assert after.get("mirror_capture_resyncs_total") >= 1
    check_stop(result, after, clean=False)


def _local_port(conn):
    """The client port of a psycopg2 connection (from the server's point of view)."""
    cur = conn.cursor()
    cur.execute("SELECT client_port FROM pg_stat_activity WHERE pid = pg_backend_pid()")
    return cur.fetchone()[0]


def _port_of(record):
    m = re.search(r":(\d+)$", record.connection_from)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------- SSL

def test_ssl_session_counted_encrypted_not_decoded(source_agent):
    """ssl=on with a self-signed certificate: sessions with sslmode=require (psql and
    psycopg2) are counted as encrypted and never decoded; a sslmode=disable session on
    the same server is decoded as usual."""
    with pgh.pg_server(name="ssl", ssl=True) as pg:
        enc_db, plain_db = "ssl_db", "plain_db"
        pg.createdb(enc_db)
        pg.createdb(plain_db)
        since = mark(pg)
        agent = source_agent(pg)

        out = pg.psql(["SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                       "SELECT 2; SELECT 3"], db=enc_db, sslmode="require",
                      args=["-A", "-t"]).stdout
        assert out.splitlines()[0] == "t", f"psql session not encrypted: {out!r}"
        conn = psycopg2.connect(pg.conninfo(enc_db, sslmode="require"))
        try:
            cur = conn.cursor()
            cur.execute("SELECT %s::text", ("encrypted",))
            conn.commit()
        finally:
            conn.close()
        pg.psql(["SELECT 1", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
                db=plain_db, sslmode="disable")

        m, result = finish(agent)
        pg.sync_log()
        enc_logged = pg.count_requests(enc_db, since, sync=False)
        assert enc_logged == 5, f"the server logged {enc_logged} requests over SSL"
        assert m.get("mirror_capture_encrypted_sessions_total") == 2, \
            f"encrypted sessions {m.get('mirror_capture_encrypted_sessions_total')}, " \
            f"expected 2"
        assert m.requests(enc_db) == 0 and not m.errors(enc_db), \
            f"{m.requests(enc_db)} requests decoded from encrypted sessions"
        plain_logged = pg.count_requests(plain_db, since, sync=False)
        check_source_metrics(m, plain_db, plain_logged, {})
        assert_no_unknown(m)
        every = {d: m.requests(d) for d in m.databases() if m.requests(d)}
        assert every == {plain_db: plain_logged}, \
            f"requests by database {every}: only the unencrypted session's requests " \
            f"can be decoded"
        check_stop(result, m)


# --------------------------------------------------------------------------- exposition

OUR_PREFIXES = ("mirror_source_", "mirror_capture_", "process_", "mirror_build_info")


def test_metrics_exposition_promtool_clean(pg, source_agent, tmp_path):
    """After traffic with errors, /metrics (Content-Type text/plain 0.0.4) has the
    source and capture metrics with the right types, and `promtool check metrics` has
    nothing to say about them (and parses the whole exposition)."""
    db = "promtool_db"
    pg.createdb(db)
    agent = source_agent(pg)
    pg.psql(["SELECT 1", "SELECT * FROM nope", "SELECT 1/0"], db=db, on_error_stop=False,
            check=False)
    pg.pgbench_init(db)
    pg.pgbench(["-M", "prepared", "-t", 50, "-c", 2], db)
    m = final_metrics(agent)
    text, ctype = pgh.scrape(agent.metrics_addr)
    (tmp_path / "metrics.txt").write_text(text)
    health, _ = pgh.scrape(agent.metrics_addr, "/healthz")
    result = agent.stop(signal.SIGINT)

    assert re.match(r"text/plain;\s*version=0\.0\.4", ctype), f"Content-Type {ctype!r}"
    assert health.strip() == "ok", f"/healthz answered {health!r}"
    types = {"mirror_source_requests_total": "counter",
             "mirror_source_errors_total": "counter",
             "mirror_source_latency_seconds": "histogram",
             "mirror_capture_resyncs_total": "counter",
             "mirror_capture_encrypted_sessions_total": "counter",
             "mirror_capture_replication_sessions_total": "counter",
             "mirror_capture_ringbuf_drops_total": "counter",
             "mirror_capture_sessions_active": "gauge",
             "mirror_build_info": "gauge"}
    for name, typ in types.items():
        assert m.types.get(name) == typ, f"# TYPE of {name}: {m.types.get(name)}, " \
                                         f"expected {typ}"
    assert any(n.startswith("process_") for n, _ in m.samples), "no process_* metrics"
    info = m.select("mirror_build_info")
    assert len(info) == 1 and info[0][1] == 1 and info[0][0].get("version"), info
    assert m.errors(db) == {"42": 1, "22": 1}, m.errors(db)

    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    lines = (res.stdout + res.stderr).splitlines()
    broken = [ln for ln in lines if "error while linting" in ln or "parsing error" in ln]
    assert not broken, f"promtool could not parse /metrics: {broken}"
    ours = [ln for ln in lines if ln.split(" ", 1)[0].startswith(OUR_PREFIXES)]
    assert not ours, "promtool check metrics complains about our metrics:\n" + \
                     "\n".join(ours)
    check_stop(result, m)
