"""Integration tests of the mirror (issue 4): a real source, a real mirror, the real agent
attached to lo with --mirror, replaying every completed source request (exposure 1.0).

Each test starts its own source and mirror PostgreSQL 15 clusters (pg_harness.PgServer,
stopped and removed even when the test fails), creates the same databases and tables on
both *before* the agent starts (the agent replays into the mirror database of the same
name), then drives traffic on the source only, through the captured port. Everything the
test asks the source afterwards (its csvlog, its tables) is asked after the agent has
stopped, so the harness's own queries are never part of the traffic under test; queries
to the mirror go to another port (or, in the self-exclusion test, only after the agent
stopped) and are never captured.

Ground truth:
- the source's csvlog (log_statement = 'all': one record per Query / Execute /
  FunctionCall, see pg_harness.py) for what the source served, which must equal the
  agent's mirror_source_requests_total for the database;
- the mirror's tables, compared with the source's, for what the replay did;
- the mirror's own csvlog for what reached the mirror (errors there, the replayed
  requests in the self-exclusion test).

Replay finishes after the source's requests do: before asserting, every test waits until
/metrics has settled — mirror_requests_in_flight == 0 and every counter and histogram
sample unchanged over two scrapes (gauges such as mirror_last_success_seconds_ago move
with the clock and are ignored) — then stops the agent with SIGINT (exit 0 required).

Every test checks the outcome invariant at the end:
  not_sampled + skipped + dropped + mirrored + errors(connection + query + timeout)
  + in_flight == mirror_requests_total
with mirror_requests_dropped == mirror_errors_buffer_full, mirror_errors_total{error_type}
equal to the per-type counters, mirror_requests_total == the sum of
mirror_database_requests{database} == the sum of mirror_source_requests_total (every
completed request of a mirrored database is counted once), and the sum of
mirror_latency_seconds_count == mirror_requests_mirrored.

Needs root (conftest.py skips everything otherwise) and an agent built with --mirror.
"""

import collections
import contextlib
import io
import random
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg2
import pytest

import pg_harness as pgh
import pgshadow_harness as h

SETTLE_TIMEOUT = 90        # seconds for replay to finish and /metrics to settle
SETTLE_INTERVAL = 0.5      # seconds between the scrapes that must agree
METRICS_UP_TIMEOUT = 10    # seconds for /metrics to answer after the ready line
RSS_BOUND = 64 << 20       # the agent's resident memory under a slow mirror, above its
                           # start (an idle agent holds ~136 MiB, mostly its 64 MiB ring
                           # buffer; the sanitizer build ~165 MiB)
RSS_GROWTH_BOUND = 32 << 20  # ... and its growth during that test, plus, in the sanitizer
# build (make test SAN=1), AddressSanitizer's quarantine of freed memory (16 MiB there)
if "ASAN_OPTIONS" in os.environ:
    RSS_GROWTH_BOUND += 16 << 20
# --mirror-queue for tests that drive unthrottled traffic and check that *everything* is
# replayed: the source then runs as fast as this machine allows while the mirror shares
# its CPUs and replays in causal order, so it lags; a queue larger than any session's
# request count keeps that lag from turning into drops. Backpressure (the default queue,
# drops) has its own test, and the rate-limited pgbench run uses the defaults.
UNTHROTTLED_QUEUE = 10000

ERROR_COUNTERS = ("mirror_errors_connection", "mirror_errors_query", "mirror_errors_timeout",
                  "mirror_errors_buffer_full")
ERROR_TYPES = ("connection", "query", "timeout", "buffer_full")


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def mirror_agent_bin(agent_bin):
    res = subprocess.run([str(agent_bin), "--help"], capture_output=True, text=True,
                         timeout=10)
    text = res.stdout + res.stderr
    if not re.search(r"--mirror\b", text):
        pytest.fail(f"{agent_bin} --help does not list --mirror: this agent cannot replay "
                    f"yet (issue 4), rebuild with `make`")
    return agent_bin


@pytest.fixture
def pair():
    """(source, mirror): two fresh PostgreSQL 15 clusters on 127.0.0.1, stopped and
    removed at teardown."""
    with pgh.pg_server(name="source") as source, pgh.pg_server(name="mirror") as mirror:
        yield source, mirror


@pytest.fixture
def mirror_agent(start_agent, mirror_agent_bin, rng):
    """mirror_agent(source, mirror, extra=()) -> an agent on lo for source's port,
    mirroring to mirror (--mirror 'host=... port=... user=postgres'), /metrics on a free
    port (agent.metrics_addr) answering and showing the mirror metrics."""

    def start(source, mirror, extra=(), mirror_host=None):
        addr = f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',), rng=rng)}"
        conninfo = f"host={mirror_host or mirror.host} port={mirror.port} user=postgres"
        agent = start_agent(source.port, ["lo"], dump=False,
                            extra=["--metrics-listen", addr, "--mirror", conninfo,
                                   *[str(x) for x in extra]])
        agent.metrics_addr = addr
        agent.mirror_conninfo = conninfo
        deadline = time.monotonic() + METRICS_UP_TIMEOUT
        while True:
            try:
                m = pgh.metrics(addr)
                break
            except OSError as e:
                if not agent.running() or time.monotonic() > deadline:
                    raise AssertionError(f"/metrics at {addr} not answering ({e})\n"
                                         f"stderr:\n{agent.stderr()}")
                time.sleep(0.1)
        assert m.has("mirror_requests_total"), \
            f"the agent runs with --mirror but /metrics has no mirror_requests_total\n" \
            f"stderr:\n{agent.stderr()}"
        return agent

    return start


# --------------------------------------------------------------------------- helpers

def mark(pg):
    """Log position after everything so far (call before starting the agent)."""
    pg.sync_log()
    return pg.log_mark()


def settled_view(m):
    """The samples that must stop changing once replay is over: every mirror_* counter
    and histogram sample, and the in-flight gauge (other gauges follow the clock)."""
    out = {}
    for (name, labels), value in m.samples.items():
        if not name.startswith("mirror_"):
            continue
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and m.types.get(name[:-len(suffix)]) == "histogram":
                family = name[:-len(suffix)]
        if m.types.get(family) in ("counter", "histogram") or \
                name == "mirror_requests_in_flight":
            out[(name, labels)] = value
    return out


def scrape(agent):
    try:
        return pgh.metrics(agent.metrics_addr)
    except OSError as e:
        raise AssertionError(f"/metrics at {agent.metrics_addr} failed ({e}); agent "
                             f"running: {agent.running()}\nstderr:\n{agent.stderr()[-4000:]}")


def wait_settled(agent, timeout=SETTLE_TIMEOUT, interval=SETTLE_INTERVAL):
    """Scrapes until nothing is in flight and two scrapes `interval` apart agree on every
    counter and histogram; returns that Metrics."""
    deadline = time.monotonic() + timeout
    prev = scrape(agent)
    while True:
        time.sleep(interval)
        if not agent.running():
            raise AssertionError(f"the agent exited ({agent.proc.returncode}) while replay "
                                 f"was finishing\nstderr:\n{agent.stderr()[-4000:]}")
        cur = scrape(agent)
        a, b = settled_view(prev), settled_view(cur)
        if a == b and cur.get("mirror_requests_in_flight") == 0:
            return cur
        if time.monotonic() > deadline:
            changed = sorted(str(k) for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise AssertionError(
                f"replay not settled after {timeout}s: in_flight "
                f"{cur.get('mirror_requests_in_flight')}, still changing {changed[:10]}\n"
                f"outcomes {outcomes(cur)}\nstderr:\n{agent.stderr()[-4000:]}")
        prev = cur


def finish(agent):
    """Settled /metrics, then SIGINT: (Metrics, AgentResult); exit 0 required."""
    m = wait_settled(agent)
    result = agent.stop(signal.SIGINT)
    assert result.returncode == 0, \
        f"agent exited with {result.returncode} after SIGINT\nstderr:\n{result.stderr}"
    return m, result


def skipped_by_reason(m):
    return {k: int(v) for k, v in m.by_label("mirror_requests_skipped_total", "reason").items()
            if v}


def outcomes(m):
    """The outcome counters (global) as ints, for assertions and messages."""
    return {
        "total": int(m.get("mirror_requests_total")),
        "not_sampled": int(sum(v for _, v in m.select("mirror_requests_not_sampled_total"))),
        "skipped": int(sum(v for _, v in m.select("mirror_requests_skipped_total"))),
        "dropped": int(m.get("mirror_requests_dropped")),
        "mirrored": int(m.get("mirror_requests_mirrored")),
        "connection": int(m.get("mirror_errors_connection")),
        "query": int(m.get("mirror_errors_query")),
        "timeout": int(m.get("mirror_errors_timeout")),
        "buffer_full": int(m.get("mirror_errors_buffer_full")),
        "in_flight": int(m.get("mirror_requests_in_flight")),
        "skip_reasons": skipped_by_reason(m),
    }


def check_invariant(m):
    """The outcome invariant and the consistency of the metrics that restate it."""
    o = outcomes(m)
    parts = ("not_sampled", "skipped", "dropped", "mirrored", "connection", "query",
             "timeout", "in_flight")
    done = sum(o[p] for p in parts)
    assert done == o["total"], \
        f"outcome invariant broken: not_sampled + skipped + dropped + mirrored + " \
        f"errors(connection + query + timeout) + in_flight = {done} != " \
        f"mirror_requests_total {o['total']}: {o}"
    assert o["dropped"] == o["buffer_full"], \
        f"mirror_requests_dropped {o['dropped']} != mirror_errors_buffer_full " \
        f"{o['buffer_full']}"
    for t in ERROR_TYPES:
        labelled = int(m.get("mirror_errors_total", -1, error_type=t))
        assert labelled == o[t], \
            f"mirror_errors_total{{error_type=\"{t}\"}} = {labelled}, mirror_errors_{t} = {o[t]}"
    per_db = int(sum(v for _, v in m.select("mirror_database_requests")))
    assert per_db == o["total"], \
        f"sum of mirror_database_requests{{database}} {per_db} != mirror_requests_total " \
        f"{o['total']}"
    db_errors = int(sum(v for _, v in m.select("mirror_database_errors")))
    all_errors = sum(o[t] for t in ERROR_TYPES)
    assert db_errors == all_errors, \
        f"sum of mirror_database_errors {db_errors} != connection + query + timeout + " \
        f"buffer_full {all_errors}"
    source_total = int(sum(v for _, v in m.select("mirror_source_requests_total")))
    assert o["total"] == source_total, \
        f"mirror_requests_total {o['total']} != sum of mirror_source_requests_total " \
        f"{source_total}: every completed request of a mirrored database is counted once " \
        f"(by database: source { {d: m.requests(d) for d in m.databases()} }, mirror " \
        f"{m.by_label('mirror_database_requests', 'database')})"
    latency_n = int(sum(v for _, v in m.select("mirror_latency_seconds_count")))
    assert latency_n == o["mirrored"], \
        f"sum of mirror_latency_seconds_count {latency_n} != mirror_requests_mirrored " \
        f"{o['mirrored']}"
    return o


def check_all_mirrored(m, db, expected, pg=None, since=None):
    """Every one of the `expected` requests the source served in db (only db had traffic)
    was mirrored: no skip, no drop, no error of any type."""
    kinds = pgh.request_kinds(pg.request_records(db, since)) if pg is not None else ""
    assert m.requests(db) == expected, \
        f"{db}: agent counted {m.requests(db)} source requests, the source logged " \
        f"{expected} {kinds}; by database { {d: m.requests(d) for d in m.databases()} }"
    o = check_invariant(m)
    print(f"{db}: source {expected} requests {kinds}; outcomes {o}; order waits "
          f"{int(m.get('mirror_replay_order_waits_total'))}")
    errors = {c: int(m.get(c)) for c in ERROR_COUNTERS}
    assert not any(errors.values()), f"{db}: mirror errors {errors}; outcomes {o}"
    assert o["skipped"] == 0 and o["dropped"] == 0 and o["not_sampled"] == 0, \
        f"{db}: requests not mirrored: {o}"
    assert o["mirrored"] == expected, \
        f"{db}: mirror_requests_mirrored {o['mirrored']}, the source served {expected}: {o}"
    assert int(m.get("mirror_database_requests", database=db)) == expected, \
        f"mirror_database_requests{{database={db!r}}} " \
        f"{m.get('mirror_database_requests', database=db)} != {expected}"
    assert int(m.get("mirror_latency_seconds_count", database=db)) == expected
    assert int(m.get("mirror_database_errors", database=db)) == 0
    if "mirror_mismatches_total" in m.types:
        mism = {k: v for k, v in m.by_label("mirror_mismatches_total", "kind").items() if v}
        assert not mism, f"{db}: mismatches {mism}"
    return o


def check_source_clean(src, m, db, since):
    """The source saw no errors in db (server log and agent agree); returns its request
    count from the log."""
    logged = src.count_requests(db, since)
    errors = src.count_errors(db, since, sync=False)
    assert errors == {}, f"the source logged errors in {db}: {errors}"
    assert m.errors(db) == {}, f"the agent counted source errors in {db}: {m.errors(db)}"
    return logged


def mirror_errors(mir, db, since):
    mir.sync_log()
    return mir.count_errors(db, since, sync=False)


def mirror_error_messages(mir, db, since, limit=10):
    return [f"{r.sql_state_code} {r.message} [{r.query or r.internal_query}]"
            for r in mir.log_records(since)
            if pgh.is_error_record(r) and r.database_name == db][:limit]


def compare_queries(src, mir, db, queries):
    """Each query's rows on the source and on the mirror are equal; returns the source's."""
    out = {}
    diffs = []
    for name, sql in queries.items():
        a, b = src.query(sql, db), mir.query(sql, db)
        out[name] = a
        if a != b:
            diffs.append(f"{name}: source {a[:20]}{' ...' if len(a) > 20 else ''}\n"
                         f"{' ' * len(name)}  mirror {b[:20]}{' ...' if len(b) > 20 else ''}")
    assert not diffs, f"{db}: mirror differs from source:\n" + "\n".join(diffs)
    return out


PGBENCH_TABLE_QUERIES = {
    "accounts": "SELECT count(*), sum(abalance), md5(string_agg(aid || ':' || abalance, ',' "
                "ORDER BY aid)) FROM pgbench_accounts",
    "branches": "SELECT count(*), sum(bbalance), md5(string_agg(bid || ':' || bbalance, ',' "
                "ORDER BY bid)) FROM pgbench_branches",
    "tellers": "SELECT count(*), sum(tbalance), md5(string_agg(tid || ':' || tbalance, ',' "
               "ORDER BY tid)) FROM pgbench_tellers",
    "history": "SELECT count(*), coalesce(sum(delta), 0), md5(coalesce(string_agg("
               "concat_ws(':', tid, bid, aid, delta), ',' ORDER BY tid, bid, aid, delta), "
               "'')) FROM pgbench_history",
}


def restart_server(pg, timeout=60):
    """Starts a PgServer again after pg.stop() (same data directory and port)."""
    pg.running = True  # from here on cleanup() must stop it, even if the start fails
    res = h.run(pgh.as_postgres([pgh.pg_tool("pg_ctl"), "start", "-w", "-t", str(timeout),
                                 "-D", pg.data_dir, "-l", pg.dir / "pg_ctl.log"]),
                check=False, timeout=timeout + 30)
    assert res.returncode == 0, f"pg_ctl start of {pg.name} failed: {res.stderr}\n" \
                                f"{pg._startup_log()}"


def guarded(fn, errors, stop):
    """fn for a thread: an exception it raises is kept in errors (to be re-raised by the
    test) and sets stop, so that the other threads end too."""
    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by the caller
            errors.append(e)
            stop.set()
    return run


def run_threads(targets):
    """Runs callables in threads, joins them, re-raises the first exception."""
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
        assert not t.is_alive(), "a traffic thread did not finish within 300 s"
    if errors:
        raise errors[0]


def connect(pg, db, **kw):
    conn = psycopg2.connect(pg.conninfo(db, **kw))
    conn.autocommit = True
    return conn


# --------------------------------------------------------------------------- 1. pgbench

PGBENCH_CASES = [("simple", None), ("extended", None), ("prepared", None), ("prepared", 200)]


@pytest.mark.parametrize("mode,rate", PGBENCH_CASES,
                         ids=["simple", "extended", "prepared", "rate_limited"])
def test_pgbench_tpcb_mirrored(pair, mirror_agent, mode, rate):
    """pgbench -i on both, then TPC-B-like writes on the source (-M mode, -c 4; -t 200
    with --mirror-queue 10000, or -R 200 -T 5 with the defaults): the mirror's pgbench
    tables equal the source's (counts, sums and a digest of every balance; history's
    count, sum(delta) and rows without mtime), mirror_requests_mirrored == the requests
    the source served, no mirror errors."""
    src, mir = pair
    db = "bench"
    for pg in (src, mir):
        pg.createdb(db)
        pg.pgbench_init(db)
    since, msince = mark(src), mark(mir)
    # Unthrottled, the source runs as fast as this machine allows while the mirror shares
    # its CPUs: a queue that holds the whole run keeps transient lag from turning into
    # drops (backpressure has its own test). The rate-limited run uses the defaults.
    agent = mirror_agent(src, mir, extra=[] if rate else ["--mirror-queue", UNTHROTTLED_QUEUE])

    args = ["-M", mode, "-c", 4, "-j", 2]
    args += ["-R", rate, "-T", 5] if rate else ["-t", 200]
    res = src.pgbench(args, db)
    assert res.transactions and res.transactions >= (800 if not rate else 400), res.stdout

    m, _ = finish(agent)
    expected = check_source_clean(src, m, db, since)
    assert expected >= 7 * res.transactions, \
        f"the source logged {expected} requests for {res.transactions} transactions"
    check_all_mirrored(m, db, expected, src, since)
    merr = mirror_errors(mir, db, msince)
    assert merr == {}, f"the mirror logged errors in {db}: {merr}: " \
                       f"{mirror_error_messages(mir, db, msince)}"
    tables = compare_queries(src, mir, db, PGBENCH_TABLE_QUERIES)
    assert int(tables["history"][0][0]) == res.transactions, \
        f"pgbench_history has {tables['history'][0][0]} rows for {res.transactions} " \
        f"transactions"


# --------------------------------------------------------------------------- 2. order

ORDER_ROWS = 4
ORDER_SESSIONS = 4
ORDER_ROUNDS = 200
ORDER_MOD = 1000003
OBSERVE_TAG = "pgshadow-observe"
OBSERVE_RE = re.compile(rf"^{OBSERVE_TAG} (\d+) (\d+) (-?\d+)$")


def observed(records):
    """{(session, seq): value} of the observe() LOG records (what each read saw)."""
    out = {}
    for r in records:
        mt = OBSERVE_RE.match(r.message) if r.error_severity == "LOG" else None
        if mt:
            out[(int(mt.group(1)), int(mt.group(2)))] = int(mt.group(3))
    return out


@pytest.mark.parametrize("txn", [False, True], ids=["autocommit", "transactions"])
def test_causal_order_non_commutative(pair, mirror_agent, rng, txn):
    """4 sessions (psycopg2) over 4 hot rows: `v = (v * 2 + d) % p` updates
    (non-commutative), reads recorded in a table (INSERT INTO reads SELECT ... v), plain
    reads whose results the server logs (SELECT observe(session, seq, v): a plpgsql
    function doing RAISE LOG, so the mirror's log shows what each replayed read saw),
    unchecked plain reads and short pg_sleeps (which make one session's replay lag behind
    the others'); each statement on its own (autocommit) or each in an explicit
    transaction (BEGIN, the statement, sometimes a pg_sleep inside, COMMIT). Statements
    (transactions) touching the same row, reads included, never overlap on the source (a
    client-side lock per row), so causal order fixes the order of every row's updates and
    reads: the mirror ends with the same t and the same recorded reads as the source, and
    every observed read saw the same value on the mirror as on the source."""
    src, mir = pair
    db = "orderdb"
    setup = ["CREATE TABLE t (id int PRIMARY KEY, v bigint NOT NULL)",
             f"INSERT INTO t SELECT g, g FROM generate_series(1, {ORDER_ROWS}) g",
             "CREATE TABLE reads (session int, seq int, id int, v bigint, "
             "PRIMARY KEY (session, seq))",
             "CREATE FUNCTION observe(s int, q int, v bigint) RETURNS bigint "
             "LANGUAGE plpgsql VOLATILE AS $$ BEGIN "
             f"RAISE LOG '{OBSERVE_TAG} % % %', s, q, v; RETURN v; END $$"]
    for pg in (src, mir):
        pg.createdb(db)
        pg.psql(setup, db=db)
    since, msince = mark(src), mark(mir)
    agent = mirror_agent(src, mir, extra=["--mirror-queue", UNTHROTTLED_QUEUE])

    locks = {k: threading.Lock() for k in range(1, ORDER_ROWS + 1)}
    seeds = [rng.getrandbits(32) for _ in range(ORDER_SESSIONS)]
    per_session = [collections.Counter() for _ in range(ORDER_SESSIONS)]

    def worker(i):
        r = random.Random(seeds[i])
        counts = per_session[i]
        conn = connect(src, db)
        conn.autocommit = not txn
        try:
            cur = conn.cursor()

            def run(kind, sql, args, lock=None):
                """One statement (in txn mode: BEGIN, it, maybe a sleep, COMMIT), the
                row's lock held throughout; counts the requests sent."""
                with lock or contextlib.nullcontext():
                    cur.execute(sql, args)
                    counts[kind] += 1
                    if txn:
                        counts["begin"] += 1  # psycopg2 sent BEGIN before it
                        if kind == "update" and r.random() < 0.2:
                            cur.execute("SELECT pg_sleep(0.01)")
                            counts["sleep_in_txn"] += 1
                        conn.commit()
                        counts["commit"] += 1

            for seq in range(ORDER_ROUNDS):
                k = r.randint(1, ORDER_ROWS)
                x = r.random()
                if x < 0.55:
                    run("update", "UPDATE t SET v = (v * 2 + %s) %% " + str(ORDER_MOD) +
                        " WHERE id = %s", (r.randint(0, 9), k), locks[k])
                elif x < 0.75:
                    run("recorded_read", "INSERT INTO reads (session, seq, id, v) "
                        "SELECT %s, %s, id, v FROM t WHERE id = %s", (i, seq, k), locks[k])
                elif x < 0.85:
                    if r.random() < 0.5:  # the read's replay lags behind its successors'
                        run("sleep", "SELECT pg_sleep(%s)", (0.02,))
                    run("observed_read", "SELECT observe(%s, %s, v) FROM t WHERE id = %s",
                        (i, seq, k), locks[k])
                elif x < 0.93:
                    run("read", "SELECT v FROM t WHERE id = %s", (k,))
                else:
                    run("sleep", "SELECT pg_sleep(%s)", (r.choice((0.01, 0.03, 0.05)),))
        finally:
            conn.close()

    run_threads([lambda i=i: worker(i) for i in range(ORDER_SESSIONS)])
    counts = sum(per_session, collections.Counter())
    print(f"workload: {dict(counts)}")

    m, _ = finish(agent)
    expected = check_source_clean(src, m, db, since)
    assert expected == sum(counts.values()), \
        f"the source logged {expected} requests, the sessions sent {sum(counts.values())}"
    check_all_mirrored(m, db, expected, src, since)
    merr = mirror_errors(mir, db, msince)
    assert merr == {}, f"the mirror logged errors: {merr}: " \
                       f"{mirror_error_messages(mir, db, msince)}"
    rows = compare_queries(src, mir, db, {
        "t": "SELECT id, v FROM t ORDER BY id",
        "reads": "SELECT session, seq, id, v FROM reads ORDER BY session, seq"})
    assert any(int(v) != int(k) for k, v in rows["t"]), \
        f"the workload changed no row: {rows['t']}"
    seen_src, seen_mir = observed(src.log_records(since)), observed(mir.log_records(msince))
    assert len(seen_src) == counts["observed_read"], \
        f"the source logged {len(seen_src)} observed reads, the sessions ran " \
        f"{counts['observed_read']}"
    wrong = sorted((key, seen_src.get(key), seen_mir.get(key))
                   for key in set(seen_src) | set(seen_mir)
                   if seen_src.get(key) != seen_mir.get(key))
    assert not wrong, \
        f"{len(wrong)} of {len(seen_src)} reads saw another value on the mirror than on " \
        f"the source ((session, seq), source, mirror): {wrong[:10]}"
    print(f"t on both: {rows['t']}; {len(rows['reads'])} recorded reads and {len(seen_src)} "
          f"observed reads equal; order waits "
          f"{int(m.get('mirror_replay_order_waits_total'))}")


def test_source_concurrency_errors_raised(pair, mirror_agent):
    """Errors the source's concurrency caused are raised on the mirror, not run there.
    psycopg2, twice: two sessions update rows 1 and 2, then each the other's row; the
    source's deadlock detector aborts one (40P01) and the other commits. Then a session
    holding row 3 and another asking for it with FOR UPDATE NOWAIT (55P03). Run on the
    mirror, the victim's statement waited for its peer's lock (held back by the ordering)
    until statement_timeout, or deadlocked there with the other session as the victim.
    The mirror ends with the source's rows, logs exactly the source's three errors (the
    raised ones), and nothing is counted as a mirror error or a mismatch."""
    src, mir = pair
    db = "raisedb"
    for pg in (src, mir):
        pg.createdb(db)
        pg.psql(["CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL)",
                 "INSERT INTO t SELECT g, 0 FROM generate_series(1, 4) g"], db=db)
    since, msince = mark(src), mark(mir)
    agent = mirror_agent(src, mir)
    outcome = collections.Counter()

    def txn(conn, *statements):
        """The statements in one transaction: 'commit', or the SQLSTATE that ended it."""
        try:
            with conn.cursor() as cur:
                for sql in statements:
                    cur.execute(sql)
            conn.commit()
            return "commit"
        except psycopg2.Error as e:
            conn.rollback()
            return e.pgcode

    a, b = psycopg2.connect(src.conninfo(db)), psycopg2.connect(src.conninfo(db))
    try:
        for k in range(2):
            with a.cursor() as cur:
                cur.execute("UPDATE t SET n = n + 1 WHERE id = 1")
            with b.cursor() as cur:
                cur.execute("UPDATE t SET n = n + 10 WHERE id = 2")
            ends = {}
            waiter = threading.Thread(target=lambda: ends.__setitem__(
                "a", txn(a, "UPDATE t SET n = n + 1 WHERE id = 2")))
            waiter.start()
            time.sleep(0.3)  # a waits for b's row
            ends["b"] = txn(b, "UPDATE t SET n = n + 10 WHERE id = 1")
            waiter.join(30)
            assert sorted(ends.values()) == ["40P01", "commit"], \
                f"round {k}: the sessions ended {ends}, not one deadlock victim"
            outcome.update(ends.values())
        with a.cursor() as cur:
            cur.execute("UPDATE t SET n = n + 100 WHERE id = 3")  # a holds row 3
        outcome[txn(b, "SELECT n FROM t WHERE id = 3 FOR UPDATE NOWAIT")] += 1
        a.commit()
        outcome[txn(b, "UPDATE t SET n = n + 1000 WHERE id = 4")] += 1
    finally:
        a.close()
        b.close()
    assert outcome == {"commit": 3, "40P01": 2, "55P03": 1}, outcome

    m, _ = finish(agent)
    o = check_invariant(m)
    source_errors = src.count_errors(db, since)
    assert source_errors == {"40": 2, "55": 1}, f"the source logged {source_errors}"
    assert m.requests(db) == src.count_requests(db, since), \
        f"agent counted {m.requests(db)}, the source logged {src.count_requests(db, since)}"
    assert o["connection"] + o["query"] + o["timeout"] == 0, \
        f"mirror errors: {o}\n{mirror_error_messages(mir, db, msince)}"
    assert o["skipped"] == 0 and o["dropped"] == 0 and o["mirrored"] == m.requests(db), o
    assert int(m.get("mirror_replay_raised_total")) == 3, \
        m.get("mirror_replay_raised_total")
    mism = {k: v for k, v in m.by_label("mirror_mismatches_total", "kind").items() if v}
    assert not mism, f"mismatches {mism}"
    merr = mirror_errors(mir, db, msince)
    assert merr == source_errors, \
        f"the mirror logged {merr}: {mirror_error_messages(mir, db, msince)}"
    rows = compare_queries(src, mir, db, {"t": "SELECT id, n FROM t ORDER BY id"})
    print(f"t on both: {rows['t']}; outcomes {o}")


ADVISORY_SESSIONS = 4
ADVISORY_ROUNDS = 25


@pytest.mark.parametrize("scope", ["xact", "session"])
def test_advisory_lock_order(pair, mirror_agent, scope):
    """4 psycopg2 sessions serialize a read-modify-write with an advisory lock, 25 times
    each: pg_advisory_xact_lock(42) in a transaction (xact), or pg_advisory_lock(42) ...
    pg_advisory_unlock(42) in autocommit (session); under the lock, read the counter, set
    it to the value read + 1 (computed by the client) and record it in hist. The lock
    calls are writes for the replay's ordering (the unlock a release point, as a COMMIT):
    the mirror grants the lock in the source's order, so it ends with the source's
    counter and history, and no ordering wait is given up at its bound. Ordered as reads,
    sessions took the lock in another order on the mirror and waited for each other, one
    behind the lock, the other behind the ordering: order waits given up 278 and 673
    times in two runs, the mirror's p99 430x the source's (2026-12-08)."""
    src, mir = pair
    db = f"advisory_{scope}"
    for pg in (src, mir):
        pg.createdb(db)
        pg.psql(["CREATE TABLE ctr (id int PRIMARY KEY, n int NOT NULL)",
                 "INSERT INTO ctr VALUES (1, 0)",
                 "CREATE TABLE hist (n int PRIMARY KEY, who text NOT NULL)"], db=db)
    since, msince = mark(src), mark(mir)
    agent = mirror_agent(src, mir)

    def worker(k):
        conn = psycopg2.connect(src.conninfo(db))
        conn.autocommit = scope == "session"
        try:
            cur = conn.cursor()
            for j in range(ADVISORY_ROUNDS):
                cur.execute("SELECT pg_advisory_xact_lock(42)" if scope == "xact"
                            else "SELECT pg_advisory_lock(42)")
                cur.execute("SELECT n FROM ctr WHERE id = 1")
                n = cur.fetchone()[0] + 1
                cur.execute("UPDATE ctr SET n = %s WHERE id = 1", (n,))
                cur.execute("INSERT INTO hist VALUES (%s, %s)", (n, f"{k}-{j}"))
                if scope == "xact":
                    conn.commit()
                else:
                    cur.execute("SELECT pg_advisory_unlock(42)")
        finally:
            conn.close()

    run_threads([lambda k=k: worker(k) for k in range(ADVISORY_SESSIONS)])
    m, _ = finish(agent)
    expected = check_source_clean(src, m, db, since)
    check_all_mirrored(m, db, expected, src, since)
    merr = mirror_errors(mir, db, msince)
    assert merr == {}, f"the mirror logged {merr}: {mirror_error_messages(mir, db, msince)}"
    timeouts = int(m.get("mirror_replay_order_timeouts_total"))
    assert timeouts == 0, f"{timeouts} ordering waits given up at their bound"
    rows = compare_queries(src, mir, db, {
        "ctr": "SELECT n FROM ctr", "hist": "SELECT n, who FROM hist ORDER BY n"})
    assert rows["ctr"] == [[str(ADVISORY_SESSIONS * ADVISORY_ROUNDS)]], rows["ctr"]
    print(f"{scope}: counter and {len(rows['hist'])} history rows equal; order waits "
          f"{int(m.get('mirror_replay_order_waits_total'))}, lock waits "
          f"{int(m.get('mirror_replay_lock_waits_total'))}")


# --------------------------------------------------------------------------- 3. mirror down

DOWN_BEFORE_S = 2.0      # traffic before the mirror stops
DOWN_FOR_S = 3.0         # the mirror is down this long while traffic continues
RESUME_TIMEOUT_S = 75.0  # replay must resume within this after the restart (backoff cap 30 s)
FINAL_ROWS = 20


def test_mirror_stopped_mid_run(pair, mirror_agent):
    """Steady inserts (a persistent session every 10 ms, a new session every 0.5 s); the
    mirror is stopped (pg_ctl stop -m fast) for a few seconds and started again:
    connection errors are counted, every source request is still counted exactly, the
    source sees no error, and replay resumes: mirror_requests_mirrored grows after the
    restart and rows inserted after it (by the persistent session and by a new one) are
    on the mirror."""
    src, mir = pair
    db = "downdb"
    setup = ["CREATE TABLE t (id int PRIMARY KEY, phase text NOT NULL, who text NOT NULL)"]
    for pg in (src, mir):
        pg.createdb(db)
        pg.psql(setup, db=db)
    since = mark(src)
    agent = mirror_agent(src, mir)

    phase = ["before"]
    stop = threading.Event()
    next_id = iter(range(1, 10 ** 9))
    id_lock = threading.Lock()
    sent = collections.Counter()

    def new_id():
        with id_lock:
            return next(next_id)

    persistent = connect(src, db)
    try:
        pcur = persistent.cursor()

        def steady():
            while not stop.is_set():
                pcur.execute("INSERT INTO t VALUES (%s, %s, 'persistent')",
                             (new_id(), phase[0]))
                with id_lock:
                    sent[phase[0]] += 1
                time.sleep(0.01)

        def fresh():
            while not stop.is_set():
                conn = connect(src, db)
                try:
                    conn.cursor().execute("INSERT INTO t VALUES (%s, %s, 'fresh')",
                                          (new_id(), phase[0]))
                    with id_lock:
                        sent[phase[0]] += 1
                finally:
                    conn.close()
                stop.wait(0.5)

        errors = []
        threads = [threading.Thread(target=guarded(f, errors, stop), daemon=True)
                   for f in (steady, fresh)]
        for t in threads:
            t.start()
        try:
            time.sleep(DOWN_BEFORE_S)
            before = scrape(agent)
            assert before.get("mirror_requests_mirrored") > 0, \
                f"nothing mirrored before the mirror was stopped: {outcomes(before)}\n" \
                f"stderr:\n{agent.stderr()[-3000:]}"
            phase[0] = "down"
            mir.stop("fast")
            time.sleep(DOWN_FOR_S)
            down = scrape(agent)
            phase[0] = "after"
            restart_server(mir)
            at_restart = scrape(agent)
            # Traffic continues until the persistent session's rows reach the mirror again.
            deadline = time.monotonic() + RESUME_TIMEOUT_S
            while True:
                assert not errors, f"traffic failed: {errors[0]!r}"
                n = int(mir.scalar("SELECT count(*) FROM t WHERE phase = 'after' AND "
                                   "who = 'persistent'", db=db))
                if n > 0:
                    break
                assert time.monotonic() < deadline, \
                    f"replay did not resume within {RESUME_TIMEOUT_S}s of the mirror's " \
                    f"restart: outcomes {outcomes(scrape(agent))}\n" \
                    f"stderr:\n{agent.stderr()[-3000:]}"
                time.sleep(0.5)
            resumed = scrape(agent)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        if errors:
            raise errors[0]

        # A final batch after replay resumed: all of it must reach the mirror.
        for _ in range(FINAL_ROWS // 2):
            pcur.execute("INSERT INTO t VALUES (%s, 'final', 'persistent')", (new_id(),))
        conn = connect(src, db)
        try:
            for _ in range(FINAL_ROWS - FINAL_ROWS // 2):
                conn.cursor().execute("INSERT INTO t VALUES (%s, 'final', 'fresh')",
                                      (new_id(),))
        finally:
            conn.close()
    finally:
        persistent.close()

    m, res = finish(agent)
    # The operator is told why, once per reason (not once per request), and when it is over.
    warns = [ln for ln in res.stderr.splitlines() if ln.startswith("pgshadow: WARN: mirror: ")]
    assert any(re.search(r"cannot connect \(database \w+\): connection to server .*failed", w)
               for w in warns), f"libpq's reason not logged:\n{res.stderr[-3000:]}"
    assert len(warns) <= 10, f"{len(warns)} failure lines: not once per reason:\n" + \
        "\n".join(warns)
    assert re.search(r"^pgshadow: INFO: mirror: connected again \(database \w+\) after \d+ "
                     r"failures?$", res.stderr, re.M), \
        f"the recovery was not logged:\n{res.stderr[-3000:]}"
    print(f"sent by phase {dict(sent)}; outcomes before stop {outcomes(before)}, while down "
          f"{outcomes(down)}, at restart {outcomes(at_restart)}, resumed "
          f"{outcomes(resumed)}, final {outcomes(m)}")
    logged = check_source_clean(src, m, db, since)
    assert m.requests(db) == logged, \
        f"agent counted {m.requests(db)} source requests, the source logged {logged}"
    o = check_invariant(m)
    assert o["connection"] > 0, f"no connection errors although the mirror was down for " \
                                f"{DOWN_FOR_S}s under traffic: {o}"
    assert down.get("mirror_errors_connection") > 0, \
        f"no connection error counted while the mirror was down: {outcomes(down)}"
    assert o["mirrored"] > at_restart.get("mirror_requests_mirrored"), \
        f"mirror_requests_mirrored did not grow after the restart: at restart " \
        f"{outcomes(at_restart)}, final {o}"
    final_src = src.query("SELECT id, who FROM t WHERE phase = 'final' ORDER BY id", db)
    final_mir = mir.query("SELECT id, who FROM t WHERE phase = 'final' ORDER BY id", db)
    assert len(final_src) == FINAL_ROWS
    assert final_mir == final_src, \
        f"rows inserted after replay resumed missing on the mirror: source {final_src}, " \
        f"mirror {final_mir}; outcomes {o}"
    # Nothing the mirror has was not on the source.
    extra = mir.scalar("SELECT count(*) FROM t", db)
    assert int(extra) <= int(src.scalar("SELECT count(*) FROM t", db))
    assert o["query"] == 0, \
        f"{o['query']} query errors: a mirror going down is a connection fault; outcomes " \
        f"{o}"


# --------------------------------------------------------------------------- 4. slow mirror

SLOW_SESSIONS = 4
SLOW_SECONDS = 4.0
SLOW_TIMEOUT_MS = 500
SLOW_QUEUE = 5
PAYLOAD = "x" * 500


def rss_anon(pid):
    """The process's anonymous resident memory in bytes (/proc/PID/status RssAnon)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no RssAnon for pid {pid}")


SHUTDOWN_ROUNDS = 3


def test_scraped_while_stopping(pair, mirror_agent):
    """/metrics, /queries and /readiness scraped without pause while the agent stops
    (SIGINT), three times, with per-statement figures to render: the agent exits 0 and
    its stderr has no sanitizer report. The HTTP server reads the replay engine's
    per-statement table, so it must stop before that table is freed (under ASan a scrape
    in between was a heap-use-after-free, found in CI by a test sampling /metrics during
    its shutdown)."""
    src, mir = pair
    db = "stopping"
    for pg in (src, mir):
        pg.createdb(db)
        pg.psql("CREATE TABLE t (id int PRIMARY KEY, v int)", db=db)
    for rnd in range(SHUTDOWN_ROUNDS):
        agent = mirror_agent(src, mir)
        conn = connect(src, db)
        try:
            cur = conn.cursor()
            for n in range(100):
                cur.execute("INSERT INTO t VALUES (%s, %s)", (rnd * 1000 + n, n))
                cur.execute("SELECT v FROM t WHERE id = %s", (rnd * 1000 + n,))
                cur.execute("SELECT count(*) FROM t WHERE v < %s", (n,))
        finally:
            conn.close()
        wait_settled(agent)
        stop = threading.Event()
        served = collections.Counter()

        def scraper(path):
            while not stop.is_set():
                try:
                    pgh.scrape(agent.metrics_addr, path, timeout=2)
                    served[path] += 1
                except OSError:
                    if not agent.running():
                        return
        threads = [threading.Thread(target=scraper, args=(path,), daemon=True)
                   for path in ("/metrics", "/queries", "/readiness", "/metrics")]
        for t in threads:
            t.start()
        time.sleep(0.3)
        try:
            result = agent.stop(signal.SIGINT)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert served["/metrics"] > 0 and served["/queries"] > 0, \
            f"round {rnd}: the scrapers were served {dict(served)} before the stop"
        assert result.returncode == 0 and "Sanitizer" not in result.stderr, \
            f"round {rnd}: agent exited with {result.returncode} while being scraped " \
            f"({dict(served)} answers)\nstderr:\n{result.stderr[-6000:]}"


def test_slow_mirror_timeouts_and_drops(pair, mirror_agent):
    """A lock held on the mirror only (ACCESS EXCLUSIVE on t, in an open transaction of a
    separate connection), --mirror-timeout-ms 500, --mirror-queue 5, 4 source sessions
    inserting into t as fast as they can for 4 s: mirror timeouts (== the mirror's 57014
    errors) and drops are both counted, the invariant holds, the agent's RSS stays below
    200 MiB and its anonymous memory grows by less than 32 MiB (its RSS also grows with the
    ring buffer pages the traffic touches), the source counts every request and sees no
    error; once the lock is gone, new inserts are mirrored again."""
    src, mir = pair
    db = "slowdb"
    setup = ["CREATE TABLE t (id int PRIMARY KEY, session int, payload text)"]
    for pg in (src, mir):
        pg.createdb(db)
        pg.psql(setup, db=db)
    since, msince = mark(src), mark(mir)
    agent = mirror_agent(src, mir, extra=["--mirror-timeout-ms", SLOW_TIMEOUT_MS,
                                          "--mirror-queue", SLOW_QUEUE])
    rss_start = scrape(agent).get("process_resident_memory_bytes")
    anon_start = rss_anon(agent.pid)

    samples = []
    anon = []
    sampling = threading.Event()

    def sampler():
        while not sampling.is_set():
            try:
                samples.append(pgh.metrics(agent.metrics_addr))
                anon.append(rss_anon(agent.pid))
            except OSError:
                pass
            sampling.wait(0.2)

    locker = psycopg2.connect(mir.conninfo(db))
    sampler_thread = threading.Thread(target=sampler, daemon=True)
    try:
        lcur = locker.cursor()  # not autocommit: the lock lives until rollback
        lcur.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        sampler_thread.start()
        end = time.monotonic() + SLOW_SECONDS
        sent = collections.Counter()

        def inserter(i):
            conn = connect(src, db)
            try:
                cur = conn.cursor()
                n = 0
                while time.monotonic() < end:
                    cur.execute("INSERT INTO t VALUES (%s, %s, %s)",
                                (i * 1000000 + n, i, PAYLOAD))
                    n += 1
                sent[i] = n
            finally:
                conn.close()

        run_threads([lambda i=i: inserter(i) for i in range(SLOW_SESSIONS)])
        time.sleep(2 * SLOW_TIMEOUT_MS / 1000)
        during = scrape(agent)
        locker.rollback()
    finally:
        locker.close()

    # The lock is gone: a new session's inserts must be mirrored (paced, so that its
    # queue of 5 never overflows).
    conn = connect(src, db)
    try:
        for n in range(FINAL_ROWS):
            conn.cursor().execute("INSERT INTO t VALUES (%s, 99, 'after')", (9000000 + n,))
            time.sleep(0.05)
    finally:
        conn.close()
    try:
        m, _ = finish(agent)
    finally:
        sampling.set()
        sampler_thread.join(10)

    rss = [s.get("process_resident_memory_bytes") for s in samples + [m]]
    util = [s.get("mirror_buffer_utilization") for s in samples]
    print(f"sent {dict(sent)} ({sum(sent.values())}); outcomes during {outcomes(during)}, "
          f"final {outcomes(m)}; max buffer utilization {max(util, default=None)}; RSS "
          f"{rss_start / 2 ** 20:.1f} MiB at start, largest {max(rss) / 2 ** 20:.1f} MiB over "
          f"{len(rss)} samples")
    logged = check_source_clean(src, m, db, since)
    assert m.requests(db) == logged, \
        f"agent counted {m.requests(db)} source requests, the source logged {logged}"
    assert logged == sum(sent.values()) + FINAL_ROWS
    o = check_invariant(m)
    assert o["timeout"] > 0, f"no mirror timeouts with a lock held on the mirror: {o}"
    assert o["dropped"] > 0, f"no drops with --mirror-queue {SLOW_QUEUE} and a blocked " \
                             f"mirror: {o}"
    assert o["query"] == 0 and o["connection"] == 0, f"unexpected error types: {o}"
    assert max(rss) > 0 and max(rss) < rss_start + RSS_BOUND, \
        f"agent RSS reached {max(rss) / 2 ** 20:.1f} MiB (bound: {RSS_BOUND >> 20} MiB above " \
        f"the {rss_start / 2 ** 20:.1f} MiB at start)"
    # the agent's own memory: RssAnon (the ring buffer's pages, shared with the kernel and
    # touched as traffic flows through it, are not anonymous memory)
    assert max(anon) - anon_start < RSS_GROWTH_BOUND, \
        f"agent anonymous memory grew by {(max(anon) - anon_start) / 2 ** 20:.1f} MiB under " \
        f"a blocked mirror with --mirror-queue {SLOW_QUEUE} (bound " \
        f"{RSS_GROWTH_BOUND >> 20} MiB; RSS grew by {(max(rss) - rss_start) / 2 ** 20:.1f} MiB)"
    assert max(util, default=0) > 0, \
        f"mirror_buffer_utilization never above 0 while queues overflowed: {util}"
    merr = mirror_errors(mir, db, msince)
    assert merr.get("57", 0) == o["timeout"] and set(merr) <= {"57"}, \
        f"the mirror logged errors {merr}, the agent counted {o['timeout']} timeouts: " \
        f"{mirror_error_messages(mir, db, msince)}"
    after = mir.scalar("SELECT count(*) FROM t WHERE session = 99", db)
    assert int(after) == FINAL_ROWS, \
        f"{after} of {FINAL_ROWS} rows inserted after the lock was released reached the " \
        f"mirror; outcomes {o}"
    assert m.get("mirror_consecutive_errors") == 0, \
        f"mirror_consecutive_errors {m.get('mirror_consecutive_errors')} after successes"


# --------------------------------------------------------------------------- 5. session features

COPY_ROWS = 500
PGBENCH_SCRIPT = """\\set k random(1, 100000000)
INSERT INTO p (k, note) VALUES (:k, 'pgbench ' || :k);
SELECT count(*) FROM p WHERE k = :k;
"""
SETTINGS_INSERT = ("INSERT INTO dates (tag, datestyle, timezone, appname, d, ts) "
                   "SELECT %s, current_setting('DateStyle'), current_setting('TimeZone'), "
                   "current_setting('application_name'), '2024-03-05'::date::text, "
                   "'2024-03-05 12:34:56+00'::timestamptz::text")


def _copy_text(start, n):
    """COPY text-format rows (tabs, backslashes, NULLs, non-ASCII, escapes)."""
    out = []
    for i in range(start, start + n):
        v = "\\N" if i % 50 == 0 else f"row {i} caf\u00e9 \\\\ tab\\there"
        out.append(f"{i}\t{v}\t{i / 7:.6f}\n")
    return "".join(out)


def psql_with_env(pg, db, sql, **env_vars):
    """psql -c sql as a client with extra libpq environment variables."""
    env = pg.client_env(db)
    env.update(env_vars)
    res = subprocess.run([pgh.pg_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
                          sql], env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert res.returncode == 0, f"psql {sql!r} with {env_vars} failed: {res.stderr}"


def test_copy_prepared_and_session_settings(pair, mirror_agent, tmp_path):
    """COPY FROM STDIN (psql, psycopg2 copy_from and copy_expert CSV); named prepared
    statements (SQL-level PREPARE/EXECUTE from psycopg2, protocol-level from
    pgbench -M prepared with a parameterized script); DateStyle/TimeZone from SET,
    from the startup packet's options (-c DateStyle=..., psycopg2 and psql) and from
    startup parameters (PGDATESTYLE/PGTZ/PGAPPNAME): each session renders a fixed date
    and timestamptz into a table, and every table is equal on both; every request
    mirrored, no errors."""
    src, mir = pair
    db = "featdb"
    setup = ["CREATE TABLE c (id int PRIMARY KEY, v text, n numeric)",
             "CREATE TABLE p (k int NOT NULL, note text)",
             "CREATE TABLE dates (tag text PRIMARY KEY, datestyle text, timezone text, "
             "appname text, d text, ts text)"]
    for pg in (src, mir):
        pg.createdb(db)
        pg.psql(setup, db=db)
    since, msince = mark(src), mark(mir)
    agent = mirror_agent(src, mir, extra=["--mirror-queue", UNTHROTTLED_QUEUE])

    # COPY FROM STDIN through psql (a script: the data follows its COPY) ...
    src.psql(db=db, input=f"COPY c FROM STDIN;\n{_copy_text(1, COPY_ROWS)}\\.\n")
    conn = connect(src, db)
    try:
        cur = conn.cursor()
        # ... psycopg2's copy_from and copy_expert (CSV) ...
        cur.copy_from(io.StringIO(_copy_text(10001, COPY_ROWS)), "c", columns=("id", "v", "n"))
        csv_rows = "".join(f'{i},"csv ""{i}"", with comma",{i}.5\n'
                           for i in range(20001, 20001 + COPY_ROWS))
        cur.copy_expert("COPY c (id, v, n) FROM STDIN WITH (FORMAT csv)", io.StringIO(csv_rows))
        # ... SQL-level named prepared statements ...
        cur.execute("PREPARE ins_p (int, text) AS INSERT INTO p (k, note) VALUES ($1, $2)")
        for i in range(50):
            cur.execute("EXECUTE ins_p (%s, %s)", (i, f"prepared {i}"))
        cur.execute("DEALLOCATE ins_p")
        # ... and settings changed with SET in the session.
        cur.execute("SET DateStyle = 'German'")
        cur.execute("SET TimeZone = 'Asia/Kolkata'")
        cur.execute(SETTINGS_INSERT, ("set",))
    finally:
        conn.close()

    # Settings from the startup packet's options. psycopg2 answers a DateStyle that is
    # not ISO with its own `SET DATESTYLE TO 'ISO'` (a request too), which keeps the
    # field order: 'ISO, DMY' here, 'ISO, MDY' had the options been lost.
    conn = connect(src, db, options="'-c DateStyle=German -c TimeZone=America/New_York'",
                   application_name="pgshadow-options")
    try:
        conn.cursor().execute(SETTINGS_INSERT, ("options",))
    finally:
        conn.close()
    # The same options from psql (PGOPTIONS): German stays.
    psql_with_env(src, db, SETTINGS_INSERT.replace("%s", "'pgoptions'"),
                  PGOPTIONS="-c DateStyle=German -c TimeZone=America/New_York")
    # Settings as startup parameters (libpq sends PGDATESTYLE, PGTZ, PGAPPNAME).
    psql_with_env(src, db, SETTINGS_INSERT.replace("%s", "'env'"), PGDATESTYLE="SQL, DMY",
                  PGTZ="Pacific/Auckland", PGAPPNAME="pgshadow-env")

    # Protocol-level named prepared statements with parameters.
    script = tmp_path / "prepared.sql"
    script.write_text(PGBENCH_SCRIPT)
    script.chmod(0o644)
    bench = src.pgbench(["-n", "-M", "prepared", "-f", script, "-t", 100, "-c", 2], db)
    assert bench.transactions == 200, bench.stdout

    m, _ = finish(agent)
    expected = check_source_clean(src, m, db, since)
    check_all_mirrored(m, db, expected, src, since)
    merr = mirror_errors(mir, db, msince)
    assert merr == {}, f"the mirror logged errors: {merr}: " \
                       f"{mirror_error_messages(mir, db, msince)}"
    rows = compare_queries(src, mir, db, {
        "c": "SELECT count(*), md5(string_agg(concat_ws('|', id, coalesce(v, '<null>'), n), "
             "',' ORDER BY id)) FROM c",
        "p": "SELECT count(*), md5(string_agg(k || ':' || note, ',' ORDER BY k, note)) FROM p",
        "dates": "SELECT tag, datestyle, timezone, appname, d, ts FROM dates ORDER BY tag",
    })
    assert rows["c"][0][0] == str(3 * COPY_ROWS), rows["c"]
    assert rows["p"][0][0] == str(50 + 200), rows["p"]
    dates = {r[0]: r[1:] for r in rows["dates"]}
    assert dates == {
        "set": ["German, DMY", "Asia/Kolkata", "", "05.03.2024",
                "05.03.2024 18:04:56 IST"],
        "options": ["ISO, DMY", "America/New_York", "pgshadow-options", "2024-03-05",
                    "2024-03-05 07:34:56-05"],
        "pgoptions": ["German, DMY", "America/New_York", "psql", "05.03.2024",
                      "05.03.2024 07:34:56 EST"],
        "env": ["SQL, DMY", "Pacific/Auckland", "pgshadow-env", "05/03/2024",
                "06/03/2024 01:34:56 NZDT"],
    }, f"the source rendered {dates} (the test's own expectation is wrong)"


# --------------------------------------------------------------------------- 6. self-exclusion

class PgServerAt(pgh.PgServer):
    """A PgServer listening on one given loopback address only (clients use it too)."""

    def __init__(self, address, **kw):
        super().__init__(**kw)
        self.host = address

    @property
    def hosts(self):
        return (self.host,)


def _normalized(records):
    """Request records as comparable texts: `execute <name>: X` and `statement: X` -> X."""
    out = collections.Counter()
    for r in records:
        msg = re.sub(r"^(statement: |execute (fetch from )?.*?: |fastpath function call: )",
                     "", r.message, flags=re.S)
        out[re.sub(r"\s+", " ", msg).strip()] += 1
    return out


def test_self_exclusion_same_port_other_address(mirror_agent):
    """The source on 127.0.0.1:P, the mirror on 127.0.0.2:P (same port), the agent
    capturing port P on lo and mirroring to 127.0.0.2:P: its own mirror connections are
    not captured as source traffic — mirror_source_requests_total == the source's log,
    nothing under another database or `unknown`, and the mirror's log holds exactly
    mirror_requests_mirrored requests (no feedback loop)."""
    port = h.free_port(hosts=("127.0.0.1", "127.0.0.2", "::1"))
    db = "selfdb"
    with pgh.pg_server(name="source", port=port) as src, \
            PgServerAt("127.0.0.2", name="mirror", port=port) as mir:
        assert mir.scalar("SELECT inet_server_addr()") == "127.0.0.2"
        assert src.scalar("SELECT inet_server_addr()") == "127.0.0.1"
        for pg in (src, mir):
            pg.createdb(db)
            pg.pgbench_init(db)
            pg.psql("CREATE TABLE s (id int PRIMARY KEY, v text)", db=db)
        since, msince = mark(src), mark(mir)
        agent = mirror_agent(src, mir, extra=["--mirror-queue", UNTHROTTLED_QUEUE])
        assert "host=127.0.0.2" in agent.mirror_conninfo

        res = src.pgbench(["-M", "extended", "-t", 100, "-c", 2, "-j", 2], db)
        src.psql([f"INSERT INTO s VALUES ({i}, 'v{i}')" for i in range(20)], db=db)
        src.psql("SELECT count(*) FROM s; SELECT 1", db=db)
        # Let replay settle and stay settled for a while: a feedback loop would keep the
        # counters moving.
        wait_settled(agent)
        time.sleep(2)
        m, _ = finish(agent)
        # Only now (the agent is gone) may the mirror be queried: its port is captured.
        expected = check_source_clean(src, m, db, since)
        assert expected >= 7 * res.transactions
        by_db = {d: m.requests(d) for d in m.databases() if m.requests(d)}
        assert by_db == {db: expected}, \
            f"source requests by database {by_db}, the source logged {expected} in {db} " \
            f"and nothing else ran: the agent's own mirror traffic was counted as source " \
            f"traffic"
        check_all_mirrored(m, db, expected, src, since)
        mir.sync_log()
        mirror_records = mir.request_records(db, msince)
        src_records = src.request_records(db, since)
        diff_extra = _normalized(mirror_records) - _normalized(src_records)
        diff_missing = _normalized(src_records) - _normalized(mirror_records)
        assert len(mirror_records) == m.get("mirror_requests_mirrored"), \
            f"the mirror logged {len(mirror_records)} requests in {db}, the agent says it " \
            f"mirrored {int(m.get('mirror_requests_mirrored'))}; on the mirror but not the " \
            f"source: {list(diff_extra.items())[:10]}; on the source but not the mirror: " \
            f"{list(diff_missing.items())[:10]}"
        merr = mir.count_errors(db, msince, sync=False)
        assert merr == {}, f"the mirror logged errors: {merr}"
        compare_queries(src, mir, db, dict(PGBENCH_TABLE_QUERIES, s="SELECT * FROM s ORDER BY id"))


# --------------------------------------------------------------------------- 7. pipelining

PIPE_ROWS = 50
PIPE_TRANSACTIONS = 1500
PIPE_SCRIPT = f"""\\set k random(1, {PIPE_ROWS})
\\set d random(1, 9)
UPDATE pipe SET v = (v * 2 + :d) % 1000003 WHERE id = :k;
SELECT v FROM pipe WHERE id = :k;
SELECT id, v FROM pipe WHERE id <= :k ORDER BY id;
"""


def create_pipe_db(pgs, db):
    """Database db on each server with table pipe (id, v = id) of PIPE_ROWS rows."""
    for pg in pgs:
        pg.createdb(db)
        pg.psql(f"CREATE TABLE pipe (id int PRIMARY KEY, v bigint NOT NULL); "
                f"INSERT INTO pipe SELECT g, g FROM generate_series(1, {PIPE_ROWS}) g", db=db)


def script_file(tmp_path, name, text):
    """A pgbench script readable by the client."""
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("mode,depth", [("simple", 16), ("prepared", 16), ("simple", 1)],
                         ids=["simple", "prepared", "off"])
def test_backlog_pipelining(pair, mirror_agent, tmp_path, mode, depth):
    """One unthrottled pgbench client (-M mode) runs a non-commutative UPDATE of a random
    row and two reads of what it just wrote, 1500 times, faster than a one-at-a-time
    replay can follow, so its session has a backlog: with --mirror-pipeline 16 the reads
    and the updates are pipelined behind what is in flight; with 1 nothing is. Ground truth, whatever the depth: every request mirrored once (the mirror's
    pg_stat_statements calls equal the source's, statement by statement), the mirror's
    table equals the source's (the updates ran in source order), and with
    --mirror-compare rows every read returned on the mirror exactly the rows it returned
    on the source (no read overtook the update before it). The counters say what was
    pipelined: > 0 at depth 16 (simple queries converted to the extended protocol only in
    -M simple: every pipelined one, and the first of each pipeline), 0 at depth 1."""
    src, mir = pair
    db = "pipe"
    create_pipe_db(pair, db)
    for pg in pair:
        pg.pgss_reset()
    since = mark(src)
    script = script_file(tmp_path, "pipe.sql", PIPE_SCRIPT)
    agent = mirror_agent(src, mir, extra=["--mirror-queue", UNTHROTTLED_QUEUE,
                                          "--mirror-pipeline", depth,
                                          "--mirror-compare", "rows"])
    res = src.pgbench(["-n", "-M", mode, "-c", 1, "-t", PIPE_TRANSACTIONS, "-f", script], db)
    assert res.transactions == PIPE_TRANSACTIONS, res.stdout

    m, _ = finish(agent)
    expected = check_source_clean(src, m, db, since)
    assert expected == 3 * PIPE_TRANSACTIONS, f"the source logged {expected} requests"
    o = check_all_mirrored(m, db, expected, src, since)
    compared = int(m.get("mirror_compared_total", database=db))
    assert compared == o["mirrored"], \
        f"mirror_compared_total {compared} != mirrored {o['mirrored']}"
    src_calls = {q: c for c, q in src.pgss_statements(db) if q.lstrip().upper().startswith(
        ("UPDATE PIPE", "SELECT V", "SELECT ID"))}
    mir_calls = {q: c for c, q in mir.pgss_statements(db) if q.lstrip().upper().startswith(
        ("UPDATE PIPE", "SELECT V", "SELECT ID"))}
    assert len(src_calls) == 3 and sum(src_calls.values()) == expected, src_calls
    assert mir_calls == src_calls, \
        f"pg_stat_statements calls differ: source {src_calls}, mirror {mir_calls}"
    compare_queries(src, mir, db, {"pipe": "SELECT id, v FROM pipe ORDER BY id"})

    pipelined = int(m.get("mirror_replay_pipelined_total"))
    converted = int(m.get("mirror_replay_converted_total"))
    print(f"{mode} depth {depth}: {expected} requests, pipelined {pipelined}, converted "
          f"{converted}, order waits {int(m.get('mirror_replay_order_waits_total'))}")
    if depth == 1:
        assert pipelined == 0 and converted == 0, (pipelined, converted)
    elif mode == "simple":
        # every pipelined simple query is converted; the first of each pipeline is
        # converted without being behind another
        assert 0 < pipelined < converted <= 3 * PIPE_TRANSACTIONS, \
            f"pipelined {pipelined}, converted {converted}: every pipelined simple query " \
            f"is converted"
    else:
        assert pipelined > 0 and converted == 0, (pipelined, converted)


ERR_TRANSACTIONS = 1000
ERR_SCRIPT = f"""\\set k random(1, {PIPE_ROWS})
SELECT v FROM pipe WHERE id = :k;
SELECT v FROM only_source WHERE id = :k;
SELECT id, v FROM pipe WHERE id <= :k ORDER BY id;
"""


def test_pipelined_error_ends_only_its_request(pair, mirror_agent, tmp_path):
    """A pipelined read that fails only on the mirror (its table exists only on the
    source) ends only its own Sync segment: one unthrottled pgbench -M simple client, 1000
    x (read, read of the missing table, read), pipelined behind each other. Exactly the
    1000 reads of the missing table are query errors (the mirror's csvlog has 1000
    42P01 errors, the agent 1000 sqlstate mismatches), the 2000 others are mirrored and
    return the source's rows; nothing else fails."""
    src, mir = pair
    db = "pipe"
    create_pipe_db(pair, db)
    src.psql("CREATE TABLE only_source (id int PRIMARY KEY, v int)", db=db)
    since, msince = mark(src), mark(mir)
    script = script_file(tmp_path, "err.sql", ERR_SCRIPT)
    agent = mirror_agent(src, mir, extra=["--mirror-queue", UNTHROTTLED_QUEUE,
                                          "--mirror-compare", "rows"])
    res = src.pgbench(["-n", "-M", "simple", "-c", 1, "-t", ERR_TRANSACTIONS, "-f", script],
                      db)
    assert res.transactions == ERR_TRANSACTIONS, res.stdout

    m, _ = finish(agent)
    expected = check_source_clean(src, m, db, since)
    assert expected == 3 * ERR_TRANSACTIONS
    o = check_invariant(m)
    pipelined = int(m.get("mirror_replay_pipelined_total"))
    print(f"outcomes {o}; pipelined {pipelined}")
    assert pipelined > 0, "nothing was pipelined: the test did not test pipelining"
    assert o["query"] == ERR_TRANSACTIONS and o["mirrored"] == 2 * ERR_TRANSACTIONS, o
    assert o["connection"] == o["timeout"] == o["dropped"] == o["skipped"] == 0, o
    mism = {k: int(v) for k, v in m.by_label("mirror_mismatches_total", "kind").items() if v}
    assert mism == {"sqlstate": ERR_TRANSACTIONS}, mism
    merr = mirror_errors(mir, db, msince)
    assert merr == {"42": ERR_TRANSACTIONS}, \
        f"the mirror logged {merr}: {mirror_error_messages(mir, db, msince)}"


CAUSAL_PIPE_ROUNDS = 3


def test_pipelining_keeps_causal_order(pair, mirror_agent, tmp_path):
    """A session's pipelined write must still wait for another session's earlier write.
    Two pgbench -M extended clients (unnamed statements: pipelinable), one transaction
    each, per round on its own row: A runs `SELECT pg_sleep(0.3)`, `SELECT 1`, sleeps
    200 ms on the client and doubles the row; B sleeps 400 ms and adds 1 to it, so on the
    source A's SELECT 1 completes before B's update starts, which completes before A's
    update starts: (v + 1) * 2. On the mirror A's SELECT 1 and update queue up behind the
    replayed sleep and go into one pipeline; the update may not be sent before B's update
    has completed there, or the mirror computes v * 2 + 1."""
    src, mir = pair
    db = "cpipe"
    for pg in (src, mir):
        pg.createdb(db)
        pg.psql("CREATE TABLE t (id int PRIMARY KEY, v bigint NOT NULL); "
                f"INSERT INTO t SELECT g, 1 FROM generate_series(1, {CAUSAL_PIPE_ROUNDS}) g",
                db=db)
    since = mark(src)
    agent = mirror_agent(src, mir)
    for k in range(1, CAUSAL_PIPE_ROUNDS + 1):
        a = script_file(tmp_path, f"a{k}.sql",
                        f"SELECT pg_sleep(0.3);\nSELECT 1;\n\\sleep 200 ms\n"
                        f"UPDATE t SET v = v * 2 WHERE id = {k};\n")
        b = script_file(tmp_path, f"b{k}.sql",
                        f"\\sleep 400 ms\nUPDATE t SET v = v + 1 WHERE id = {k};\n")
        run_threads([lambda f=f: src.pgbench(["-n", "-M", "extended", "-c", 1, "-t", 1,
                                               "-f", f], db) for f in (a, b)])

    m, _ = finish(agent)
    expected = check_source_clean(src, m, db, since)
    assert expected == 4 * CAUSAL_PIPE_ROUNDS, f"the source logged {expected} requests"
    check_all_mirrored(m, db, expected, src, since)
    rows = compare_queries(src, mir, db, {"t": "SELECT id, v FROM t ORDER BY id"})
    assert all(v == "4" for _, v in rows["t"]), \
        f"the source did not run (1 + 1) * 2 on every row: {rows['t']}"


CORK_READS = 60


def mirror_data_segments(agent, mirror):
    """{local port: data_segs_out} of the agent's established TCP connections to the
    mirror, from the kernel (ss -tinp): segments that carried data, the connection's
    startup included."""
    res = h.run(["ss", "-tinpH", "state", "established", "dst", f"{mirror.host}",
                 "dport", f"= :{mirror.port}"])
    out, lines = {}, res.stdout.splitlines()
    for i, line in enumerate(lines[:-1]):
        if f"pid={agent.pid}," in line:
            segs = re.search(r"\bdata_segs_out:(\d+)", lines[i + 1])
            out[line.split()[2]] = int(segs.group(1)) if segs else 0
    return out


def test_pipelined_backlog_leaves_in_one_segment(pair, mirror_agent):
    """The requests the replay loop pipelines in one pass leave in one TCP segment
    (TCP_CORK around the pass; libpq 15 flushes at every PQpipelineSync). A session's
    first read blocks on the mirror behind an ACCESS EXCLUSIVE lock held there; the
    source answers CORK_READS - 1 more reads meanwhile, which queue up behind it. When
    the lock goes, they are pipelined in one pass. The kernel's count of data segments
    on the agent's mirror connection (ss data_segs_out) grows by a handful, not by one
    per request — it would be CORK_READS - 1 without the cork. All reads are mirrored
    and return the source's rows."""
    src, mir = pair
    db = "cork"
    create_pipe_db(pair, db)
    agent = mirror_agent(src, mir, extra=["--mirror-queue", UNTHROTTLED_QUEUE,
                                          "--mirror-pipeline", 1000,
                                          "--mirror-compare", "rows"])
    locker = psycopg2.connect(mir.conninfo(db))  # the mirror's port: never captured
    watcher = connect(mir, db)
    client = connect(src, db)
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE pipe IN ACCESS EXCLUSIVE MODE")  # until rollback
        with client.cursor() as cur:
            cur.execute("SELECT v FROM pipe WHERE id = 1")
            deadline = time.monotonic() + 10
            while True:  # the first read waiting for the lock on the mirror
                with watcher.cursor() as lcur:  # autocommit: a fresh view each time
                    lcur.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                 "wait_event_type = 'Lock' AND query LIKE 'SELECT v FROM pipe%%'")
                    waiting = lcur.fetchone()[0]
                if waiting == 1:
                    break
                assert time.monotonic() < deadline, "the first read never reached the mirror"
                time.sleep(0.05)
            segs = mirror_data_segments(agent, mir)
            assert len(segs) == 1, f"the agent's connections to the mirror: {segs}"
            (port, before), = segs.items()
            for k in range(2, CORK_READS + 1):
                cur.execute("SELECT v FROM pipe WHERE id = %s", ((k - 1) % PIPE_ROWS + 1,))
            deadline = time.monotonic() + 10
            while scrape(agent).get("mirror_requests_in_flight") != CORK_READS:
                assert time.monotonic() < deadline, "the reads did not all queue up"
                time.sleep(0.05)
            assert mirror_data_segments(agent, mir) == {port: before}, \
                "something was sent behind the blocked read"
            locker.rollback()
            m = wait_settled(agent)
            after = mirror_data_segments(agent, mir)
    finally:
        for conn in (locker, watcher, client):
            conn.close()
    sent = after[port] - before
    pipelined = int(m.get("mirror_replay_pipelined_total"))
    print(f"{CORK_READS - 1} queued reads: pipelined {pipelined}, data segments {sent}")
    assert pipelined == CORK_READS - 2, \
        f"pipelined {pipelined}: the first of the pipeline and the {CORK_READS - 2} " \
        f"behind it expected"
    assert sent <= 4, \
        f"{CORK_READS - 1} pipelined reads left in {sent} segments: not batched"
    m, _ = finish(agent)
    o = check_all_mirrored(m, db, CORK_READS)  # mismatches included: none
    assert int(m.get("mirror_compared_total", database=db)) == o["mirrored"]
