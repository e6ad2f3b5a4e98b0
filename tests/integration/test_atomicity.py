"""Integration tests: the mirror keeps transactions atomic under every fault, and hot rows
do not deadlock on it.

pgbench's TPC-B (the builtin tpcb-like script, scale 1: one branch row, ten teller rows,
so every transaction updates the same branch row) on the source only, 8 clients at a
fixed rate, mirrored by the real agent on lo to a second cluster. Each transaction is

    BEGIN; UPDATE pgbench_accounts (+delta); SELECT abalance; UPDATE pgbench_tellers
    (+delta); UPDATE pgbench_branches (+delta); INSERT INTO pgbench_history (delta); END

so on a database where every transaction ran whole (or not at all), starting from
`pgbench -i` (every balance 0, no history),

    sum(abalance) == sum(bbalance) == sum(tbalance) == sum(pgbench_history.delta)

(TPC-B's consistency condition). A mirror that ran part of a transaction — an UPDATE
without its INSERT, a BEGIN lost so that the statements after it committed one by one, a
COMMIT lost so that the next transaction joined the open one — breaks it (or holds a
history row the source does not have).

- test_hot_rows_tpcb: the load that used to collapse replay (8 clients at 200 tps: 27%
  mirrored, 9,249 buffer_full drops, 10 `deadlock detected` in the mirror's log, tables
  that differed), -M simple and -M prepared. Once replay has caught up: no deadlock in
  the mirror's log (nor any other error there), no drop, no mirror error, >= 99.9%
  mirrored, every pgbench table on the mirror equal to the source's as a multiset of
  rows (history without mtime, which is now() of each side), and the invariant on the
  mirror.
- Faults, each in the middle of the same load (8 clients, 200 tps). Each test checks
  that its fault really happened, then that afterwards the invariant holds on the
  mirror and every pgbench_history row on the mirror is one the source has (multiset
  subset, without mtime) — the mirror holds no row of a transaction it did not run
  whole — and that transactions committed on the mirror again after the fault (a
  mirror that kept nothing would pass the atomicity checks vacuously):
  * test_slow_mirror_queue_overflow: --mirror-queue 5 and an ACCESS EXCLUSIVE lock on
    pgbench_branches taken on the mirror (granted within 5 s) and held for 3 s: the
    sessions block mid-transaction and their queues overflow (drops while it is held);
  * test_mirror_restarted_mid_transaction: `pg_ctl restart -m immediate` of the mirror
    while transactions are open on it (connection errors > 0);
  * test_capture_gap_mid_transaction: --ringbuf-mb 1 and sessions streaming large
    COPY results through the captured port for 5 s in parallel with TPC-B (in a
    database with exposure 0, so only their bytes matter): the ring buffer overflows
    (ring-buffer drops or stream gaps > 0) and TPC-B's sessions lose requests to it.

Both clusters run with log_statement = 'none' (the servers, not their logging, take the
load; ERROR records — `deadlock detected` is 40P01 — are logged whatever it says). The
source's own requests are counted by pgbench (7 per transaction, -n: no VACUUM or
TRUNCATE before the run). The source's tables are read only after the agent has
stopped (its port is captured); the mirror's port is never captured.

Every test gathers all its figures first and asserts at the end, so a failure reports
drops, deadlocks, mirrored fraction and the sums on both sides together.

Needs root (conftest.py skips everything otherwise) and an agent built with --mirror.
"""

import collections
import signal
import threading
import time

import psycopg2
import pytest

import pg_harness as pgh
import pgshadow_harness as h
import test_mirror as tm
# Fixtures of the mirror tests (agent on lo with --mirror, /metrics on a free port).
from test_mirror import mirror_agent, mirror_agent_bin  # noqa: F401

DB = "bench"
STREAM_DB = "stream"     # the gap test's streaming sessions (exposure 0)
CLIENTS = 8
JOBS = 2
RATE = 200               # tps: the load
RUN_SECONDS = 12         # hot-rows runs
FAULT_SECONDS = 10       # fault runs
SETTLE_TIMEOUT = 25      # seconds for replay to catch up after pgbench ends
REQUESTS_PER_TX = 7      # BEGIN, UPDATE, SELECT, UPDATE, UPDATE, INSERT, END
TARGET_MIRRORED = 0.999
SLOW_QUEUE = 5
LOCK_AFTER_S = 2.0       # slow mirror: the lock is taken this long after pgbench started
LOCK_FOR_S = 3.0         # ... and held this long
LOCK_TIMEOUT_S = 5       # ... once granted within this
RESTART_AFTER_S = 3.0    # the mirror is restarted this long after pgbench started
GAP_RUN_SECONDS = 12     # gap test: TPC-B run
STREAM_AFTER_S = 1.5     # ... streaming starts this long after pgbench
STREAM_FOR_S = 5.0       # ... and lasts at least this long
STREAM_MAX_S = 8.5       # ... or until a gap cut a TPC-B transaction, at most this long
STREAMERS = 3            # ... in this many concurrent sessions
STREAM_SQL = ("COPY (SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 200000) g) "
              "TO STDOUT")

SERVER_SETTINGS = {"log_statement": "'none'", "max_connections": "50"}

# Every column but pgbench_history.mtime (now() on each side).
TABLE_COLUMNS = pgh.PGBENCH_COLUMNS
SUMS_SQL = pgh.PGBENCH_SUMS_SQL


# --------------------------------------------------------------------------- fixtures

@pytest.fixture
def tpcb_pair():
    """(source, mirror): two fresh clusters (log_statement none), each with database
    `bench` initialised by `pgbench -i -s 1` (identical on both); stopped and removed at
    teardown, also when the test fails."""
    with pgh.pg_server(name="source", settings=SERVER_SETTINGS) as src, \
            pgh.pg_server(name="mirror", settings=SERVER_SETTINGS) as mir:
        for pg in (src, mir):
            pg.createdb(DB)
            pg.pgbench_init(DB, scale=1)
        yield src, mir


# --------------------------------------------------------------------------- helpers

def log_mark(pg):
    return pg.raise_log_mark()


def mirror_log_errors(mir, since):
    """(deadlock records, {sqlstate: count}, a few messages) of the ERROR records the
    mirror's client backends logged in DB since the mark."""
    mir.raise_log_mark()
    errors = [r for r in mir.log_records(since)
              if pgh.is_error_record(r) and r.database_name == DB]
    deadlocks = [r for r in errors
                 if r.sql_state_code == "40P01" or "deadlock detected" in r.message]
    by_state = dict(collections.Counter(r.sql_state_code or "unknown" for r in errors))
    samples = [f"{r.sql_state_code} {r.message} [{r.query}] {r.detail[:200]}"
               for r in errors[:5]]
    return deadlocks, by_state, samples


def table_rows(pg, table):
    """The rows of a pgbench table (TABLE_COLUMNS) as a multiset."""
    conn = psycopg2.connect(pg.conninfo(DB))
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {TABLE_COLUMNS[table]} FROM {table}")
            return collections.Counter(cur.fetchall())
    finally:
        conn.close()


def tpcb_sums(pg):
    """{accounts, branches, tellers, history, history_rows} of pg's bench database."""
    row = pg.query(SUMS_SQL, DB)[0]
    return dict(zip(("accounts", "branches", "tellers", "history", "history_rows"),
                    (int(v) for v in row)))


def invariant_holds(s):
    return s["accounts"] == s["branches"] == s["tellers"] == s["history"]


def multiset_diff(a, b, limit=3):
    """(rows in a not in b, rows in b not in a) as counts and a few examples (blank
    padding of char columns stripped)."""
    only_a, only_b = a - b, b - a

    def examples(c):
        return [tuple(v.rstrip() if isinstance(v, str) else v for v in row) +
                ((f"x{n}",) if n > 1 else ()) for row, n in list(c.items())[:limit]]

    return sum(only_a.values()), sum(only_b.values()), examples(only_a), examples(only_b)


class Background:
    """fn() in a daemon thread; join() returns its result or re-raises its exception."""

    def __init__(self, fn):
        self.result = self.error = None

        def run():
            try:
                self.result = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised by join()
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout=120):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"background work still running after {timeout}s"
        if self.error is not None:
            raise self.error
        return self.result


def pgbench_tpcb(src, mode, seconds, rate=RATE, clients=CLIENTS):
    """The builtin tpcb-like script on the source at a fixed rate (-n: no VACUUM or
    TRUNCATE before it, those would be mirrored too)."""
    return src.pgbench(["-n", "-M", mode, "-c", clients, "-j", JOBS, "-R", rate,
                        "-T", seconds], DB, timeout=seconds + 120)


def settle(agent, timeout=SETTLE_TIMEOUT):
    """(Metrics, None) once replay has caught up — nothing in flight, counters unchanged
    over two scrapes — or (the last Metrics, why not) after timeout."""
    try:
        return tm.wait_settled(agent, timeout=timeout), None
    except AssertionError as e:
        return tm.scrape(agent), str(e).split("\nstderr:")[0]


def stop_agent(agent, failures):
    result = agent.stop(signal.SIGINT)
    if result.returncode != 0:
        failures.append(f"agent exited with {result.returncode} after SIGINT")
    return result


def figures(m, tx, extra=None):
    """The run's numbers (for messages and the report)."""
    o = tm.outcomes(m)
    expected = REQUESTS_PER_TX * tx
    delay = m.histogram("mirror_replay_delay_seconds", database=DB)[0]
    p50, p99 = (pgh.histogram_quantile(q, delay) for q in (0.5, 0.99))
    out = {
        "transactions": tx,
        "source_requests": {"pgbench": expected, "agent": m.requests(DB)},
        "mirrored": o["mirrored"],
        # of the source's requests: pgbench's count, or the agent's where it saw more (a
        # transaction pgbench did not count as processed at the end of -T)
        "mirrored_fraction": round(o["mirrored"] / max(expected, m.requests(DB), 1), 6),
        "dropped": o["dropped"],
        "errors": {t: o[t] for t in ("connection", "query", "timeout")},
        "skipped": o["skip_reasons"],
        "in_flight": o["in_flight"],
        "order_waits": int(m.get("mirror_replay_order_waits_total")),
        "replay_delay_ms": {"p50": None if p50 is None else round(p50 * 1e3, 2),
                            "p99": None if p99 is None else round(p99 * 1e3, 2)},
        "ringbuf_drops": int(m.get("mirror_capture_ringbuf_drops_total")),
        "stream_gaps": int(m.get("mirror_capture_stream_gaps_total")),
    }
    out.update(extra or {})
    return out


def report(name, figs, failures):
    lines = [f"{name}:"] + [f"  {k}: {v}" for k, v in figs.items()]
    text = "\n".join(lines)
    print(text)
    if failures:
        pytest.fail("\n".join(failures) + "\n" + text, pytrace=False)


def check_atomic(src, mir, figs, failures):
    """The fault paths' condition: TPC-B's invariant on the mirror, and every history row
    on the mirror is on the source (multiset subset, without mtime)."""
    s_src, s_mir = tpcb_sums(src), tpcb_sums(mir)
    figs["sums_source"] = s_src
    figs["sums_mirror"] = s_mir
    if not invariant_holds(s_src):
        failures.append(f"TPC-B invariant broken on the SOURCE (test setup?): {s_src}")
    if not invariant_holds(s_mir):
        failures.append(f"TPC-B invariant broken on the mirror: sum(abalance) "
                        f"{s_mir['accounts']}, sum(bbalance) {s_mir['branches']}, "
                        f"sum(tbalance) {s_mir['tellers']}, sum(history.delta) "
                        f"{s_mir['history']}: it ran part of a transaction")
    hist_src, hist_mir = table_rows(src, "pgbench_history"), table_rows(mir, "pgbench_history")
    n_src, n_mir, ex_src, ex_mir = multiset_diff(hist_src, hist_mir)
    figs["history_rows"] = {"source": sum(hist_src.values()), "mirror": sum(hist_mir.values()),
                            "mirror_only": n_mir, "source_only": n_src}
    if n_mir:
        failures.append(f"{n_mir} pgbench_history rows on the mirror that the source does "
                        f"not have (a transaction the source did not commit, or one "
                        f"replayed twice): e.g. {ex_mir}")


def run_faulted(src, mir, agent, mode, fault, seconds=FAULT_SECONDS):
    """TPC-B on the source for `seconds` while fault() runs (from pgbench's start); then
    waits for replay to settle and stops the agent. Returns (Metrics, settle problem or
    None, pgbench result, failures)."""
    failures = []
    bench = Background(lambda: pgbench_tpcb(src, mode, seconds))
    try:
        fault()
    finally:
        res = bench.join(seconds + 120)
    m, unsettled = settle(agent)
    if unsettled:
        failures.append(f"replay did not settle within {SETTLE_TIMEOUT}s after pgbench "
                        f"ended: {unsettled}")
    stop_agent(agent, failures)
    return m, unsettled, res, failures


# --------------------------------------------------------------------------- hot rows

@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_hot_rows_tpcb(tpcb_pair, mirror_agent, mode):
    """8 clients, 200 tps of TPC-B on one branch row for 12 s, default queue and
    pipeline: once replay has caught up, no deadlock and no error in the mirror's log,
    no drop, no mirror error (connection, query, timeout), >= 99.9% of the source's
    requests mirrored, the four pgbench tables equal as row multisets (history without
    mtime) and TPC-B's invariant on the mirror."""
    src, mir = tpcb_pair
    msince = log_mark(mir)
    agent = mirror_agent(src, mir)
    res = pgbench_tpcb(src, mode, RUN_SECONDS)
    failures = []
    m, unsettled = settle(agent)
    if unsettled:
        failures.append(f"replay did not catch up within {SETTLE_TIMEOUT}s after pgbench "
                        f"ended: {unsettled}")
    stop_agent(agent, failures)
    assert res.transactions and res.transactions >= RATE * RUN_SECONDS * 0.8, \
        f"pgbench reached only {res.transactions} transactions at -R {RATE} for " \
        f"{RUN_SECONDS} s: the machine is too busy for this test\n{res.stdout}"

    figs = figures(m, res.transactions, {"pgbench_tps": res.tps})
    deadlocks, merr, samples = mirror_log_errors(mir, msince)
    figs["mirror_log_deadlocks"] = len(deadlocks)
    figs["mirror_log_errors"] = merr

    if deadlocks:
        failures.append(f"{len(deadlocks)} `deadlock detected` in the mirror's log: "
                        f"{samples}")
    elif merr:
        failures.append(f"the mirror logged errors {merr}: {samples}")
    if figs["dropped"]:
        failures.append(f"{figs['dropped']} requests dropped (buffer_full)")
    if any(figs["errors"].values()):
        failures.append(f"mirror errors {figs['errors']}")
    if figs["source_requests"]["agent"] < figs["source_requests"]["pgbench"]:
        failures.append(f"the agent counted {figs['source_requests']['agent']} source "
                        f"requests in {DB}, pgbench ran {figs['source_requests']['pgbench']}")
    if figs["mirrored_fraction"] < TARGET_MIRRORED:
        failures.append(f"mirrored {figs['mirrored_fraction']:.4%} of the source's "
                        f"requests (target >= {TARGET_MIRRORED:.1%})")

    # The source only now: the agent has stopped.
    diffs = {}
    for table in TABLE_COLUMNS:
        a, b = table_rows(src, table), table_rows(mir, table)
        n_src, n_mir, ex_src, ex_mir = multiset_diff(a, b)
        if n_src or n_mir:
            diffs[table] = (n_src, n_mir)
            failures.append(f"{table}: {n_src} rows only on the source (e.g. {ex_src}), "
                            f"{n_mir} only on the mirror (e.g. {ex_mir})")
    figs["tables_equal"] = not diffs
    figs["table_differences (source_only, mirror_only)"] = diffs
    s_src, s_mir = tpcb_sums(src), tpcb_sums(mir)
    figs["sums_source"], figs["sums_mirror"] = s_src, s_mir
    assert invariant_holds(s_src), f"TPC-B invariant broken on the source: {s_src}"
    if not invariant_holds(s_mir):
        failures.append(f"TPC-B invariant broken on the mirror: {s_mir}")
    report(f"hot rows tpcb -M {mode}", figs, failures)


# --------------------------------------------------------------------------- faults

def mirror_history_rows(mir):
    return int(mir.scalar("SELECT count(*) FROM pgbench_history", DB))


def mirror_activity(mir):
    """The mirror's sessions in DB: [(state, wait_event_type, count, oldest transaction
    age)], for messages."""
    return mir.query("SELECT state, coalesce(wait_event_type, '-'), count(*), "
                     "coalesce(max(now() - xact_start)::text, '-') FROM pg_stat_activity "
                     f"WHERE datname = '{DB}' AND pid <> pg_backend_pid() GROUP BY 1, 2 "
                     "ORDER BY 1, 2", "postgres")


def open_transactions(mir):
    """Transactions open on the mirror in DB right now."""
    return int(mir.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                          f"'{DB}' AND xact_start IS NOT NULL AND "
                          "pid <> pg_backend_pid()", "postgres"))


def check_resumed(mir, after_fault, figs, failures):
    """Replay went on after the fault: transactions committed on the mirror since (else
    a mirror holding nothing would pass the atomicity checks)."""
    final = mirror_history_rows(mir)
    figs["mirror_history_rows_after_fault_then_final"] = (after_fault, final)
    if after_fault is not None and final <= after_fault:
        failures.append(f"no transaction committed on the mirror after the fault ended "
                        f"({after_fault} pgbench_history rows then, {final} at the end, "
                        f"while TPC-B ran on for seconds): replay did not resume")


def test_slow_mirror_queue_overflow(tpcb_pair, mirror_agent):
    """--mirror-queue 5; 2 s into a 10 s TPC-B run an ACCESS EXCLUSIVE lock on
    pgbench_branches is taken on the mirror (an open transaction of a connection to the
    mirror's port, lock_timeout 5 s) and held for 3 s: every mirror session blocks at its
    UPDATE of the branch, mid-transaction, and its queue overflows. Drops must be counted
    while the lock is held (the fault happened), transactions must commit on the mirror
    again after the release, and afterwards the mirror holds whole transactions only:
    TPC-B's invariant holds there and its history is a subset of the source's."""
    src, mir = tpcb_pair
    msince = log_mark(mir)
    agent = mirror_agent(src, mir, extra=["--mirror-queue", SLOW_QUEUE])
    state = {}

    def fault():
        time.sleep(LOCK_AFTER_S)
        locker = psycopg2.connect(mir.conninfo(DB))  # the mirror's port: never captured
        try:
            with locker.cursor() as cur:  # not autocommit: held until the rollback
                cur.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
                t0 = time.monotonic()
                try:
                    cur.execute("LOCK TABLE pgbench_branches IN ACCESS EXCLUSIVE MODE")
                except psycopg2.errors.LockNotAvailable:
                    locker.rollback()
                    state["lock_failed"] = mirror_activity(mir)
                    return
            state["lock_wait_s"] = round(time.monotonic() - t0, 3)
            state["at"] = tm.scrape(agent)
            time.sleep(LOCK_FOR_S)
            state["before_release"] = tm.scrape(agent)
            locker.rollback()
            state["history_after"] = mirror_history_rows(mir)
        finally:
            locker.close()

    m, _, res, failures = run_faulted(src, mir, agent, "simple", fault)
    figs = figures(m, res.transactions, {"pgbench_tps": res.tps})
    if "lock_failed" in state:
        failures.append(f"the lock on the mirror's pgbench_branches was not granted within "
                        f"{LOCK_TIMEOUT_S}s, {LOCK_AFTER_S}s into the run: mirror sessions "
                        f"kept transactions open that long; the mirror's sessions (state, "
                        f"wait, count, oldest transaction): {state['lock_failed']}")
    else:
        figs["lock_wait_s"] = state["lock_wait_s"]
        figs["dropped_while_locked"] = int(state["before_release"].get(
            "mirror_requests_dropped") - state["at"].get("mirror_requests_dropped"))
        if figs["dropped_while_locked"] == 0:
            failures.append(f"no drops while the mirror was blocked for {LOCK_FOR_S}s with "
                            f"--mirror-queue {SLOW_QUEUE}: the fault did not happen")
    if figs["dropped"] == 0:
        failures.append(f"no drops with --mirror-queue {SLOW_QUEUE} and a blocked mirror: "
                        f"the fault did not happen")
    deadlocks, merr, _ = mirror_log_errors(mir, msince)
    figs["mirror_log_deadlocks"], figs["mirror_log_errors"] = len(deadlocks), merr
    check_resumed(mir, state.get("history_after"), figs, failures)
    check_atomic(src, mir, figs, failures)
    report("slow mirror, queue overflow", figs, failures)


def test_mirror_restarted_mid_transaction(tpcb_pair, mirror_agent):
    """3 s into a 10 s TPC-B run, as soon as a transaction is open on the mirror (polled
    for up to 2 s), the mirror cluster is restarted with `pg_ctl restart -m immediate`:
    the transactions open on it are lost, its sessions reconnect (backoff) while the
    source's sessions are in the middle of theirs. Connection errors must be
    counted, transactions must commit on the mirror again after the restart, and
    afterwards the mirror holds whole transactions only: TPC-B's invariant holds there
    and its history is a subset of the source's."""
    src, mir = tpcb_pair
    msince = log_mark(mir)
    agent = mirror_agent(src, mir)
    state = {}

    def fault():
        time.sleep(RESTART_AFTER_S)
        # Restart while a transaction is open on the mirror, if one shows up within 2 s.
        deadline = time.monotonic() + 2
        while True:
            state["open_before"] = open_transactions(mir)
            if state["open_before"] or time.monotonic() > deadline:
                break
        t0 = time.monotonic()
        r = h.run(pgh.as_postgres([pgh.pg_tool("pg_ctl"), "restart", "-w", "-t", "60",
                                   "-m", "immediate", "-D", mir.data_dir,
                                   "-l", mir.dir / "pg_ctl.log"]),
                  check=False, timeout=90)
        assert r.returncode == 0, f"pg_ctl restart of the mirror failed: {r.stderr}\n" \
                                  f"{mir._startup_log()}"
        state["restart_s"] = round(time.monotonic() - t0, 2)
        state["history_after"] = mirror_history_rows(mir)

    m, _, res, failures = run_faulted(src, mir, agent, "simple", fault)
    figs = figures(m, res.transactions, {"pgbench_tps": res.tps,
                                         "restart_s": state.get("restart_s"),
                                         "mirror_transactions_open_at_restart":
                                             state.get("open_before")})
    if figs["errors"]["connection"] == 0:
        failures.append("no mirror connection errors although the mirror was restarted "
                        "under traffic: the fault did not happen")
    deadlocks, merr, _ = mirror_log_errors(mir, msince)
    figs["mirror_log_deadlocks"], figs["mirror_log_errors"] = len(deadlocks), merr
    check_resumed(mir, state.get("history_after"), figs, failures)
    check_atomic(src, mir, figs, failures)
    report("mirror restarted mid-transaction", figs, failures)


def cut_by_gap(m):
    """How many signs that a capture gap cut a transaction of database bench: its requests
    dropped as unit_aborted or partial_unit, units aborted for capture_gap (the streaming
    database is not replayed: these are TPC-B's)."""
    dropped = m.by_label("mirror_dropped_requests_total", "reason", database=DB)
    aborted = m.by_label("mirror_units_aborted_total", "reason")
    return int(dropped.get("unit_aborted", 0) + dropped.get("partial_unit", 0) +
               aborted.get("capture_gap", 0))


def test_capture_gap_mid_transaction(tpcb_pair, mirror_agent, tmp_path):
    """--ringbuf-mb 1 (the smallest ring); during a 12 s TPC-B run, from 1.5 s for 5 s,
    3 sessions stream large COPY results again and again through the captured port
    (database `stream`, exposure 0 in a [databases] line: not replayed, only their
    bytes load the ring), so the ring buffer overflows and records of TPC-B's sessions
    are lost too: their streams have gaps, in the middle of transactions. Which records
    the full ring loses is chance (a CI run once lost 4,049, none of TPC-B's), so the
    streaming goes on, up to 8.5 s in all, until the agent shows a TPC-B transaction cut
    by a gap (requests of database bench dropped as unit_aborted or partial_unit, or a
    unit aborted for capture_gap); the test fails if none was. The gap must be
    counted (ring-buffer drops or stream gaps > 0), transactions must commit on the
    mirror again after the streaming stopped, and afterwards the mirror holds whole
    transactions only: TPC-B's invariant holds there and its history is a subset of the
    source's."""
    src, mir = tpcb_pair
    src.createdb(STREAM_DB)
    config = tmp_path / "gap.ini"
    config.write_text(f"[databases]\n{STREAM_DB} = exposure=0\n")
    msince = log_mark(mir)
    agent = mirror_agent(src, mir, extra=["--ringbuf-mb", 1, "--config", config])
    stop = threading.Event()
    streamed = collections.Counter()
    state = {}

    def streamer(i):
        conn = psycopg2.connect(src.conninfo(STREAM_DB))
        conn.autocommit = True

        class Sink:
            def write(self, data):
                streamed[i] += len(data)

        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.copy_expert(STREAM_SQL, Sink())
        finally:
            conn.close()

    def fault():
        time.sleep(STREAM_AFTER_S)  # TPC-B's sessions have started
        state["before"] = tm.scrape(agent)
        streamers = [Background(lambda i=i: streamer(i)) for i in range(STREAMERS)]
        began = time.monotonic()
        try:
            time.sleep(STREAM_FOR_S)
            while time.monotonic() - began < STREAM_MAX_S and not cut_by_gap(
                    tm.scrape(agent)):
                time.sleep(0.25)
        finally:
            stop.set()
            for s in streamers:
                s.join(60)
        state["after"] = tm.scrape(agent)
        state["history_after"] = mirror_history_rows(mir)

    try:
        m, _, res, failures = run_faulted(src, mir, agent, "simple", fault,
                                          seconds=GAP_RUN_SECONDS)
    finally:
        stop.set()
    before, after = state["before"], state["after"]
    figs = figures(m, res.transactions, {
        "pgbench_tps": res.tps,
        "streamed_mb": round(sum(streamed.values()) / 1e6),
        "ringbuf_drops_while_streaming": int(
            after.get("mirror_capture_ringbuf_drops_total")
            - before.get("mirror_capture_ringbuf_drops_total")),
        "resyncs": int(m.get("mirror_capture_resyncs_total")),
        "abandoned_requests": int(m.get("mirror_capture_abandoned_requests_total")),
        "tpcb_requests_not_decoded": REQUESTS_PER_TX * res.transactions - m.requests(DB),
    })
    figs["tpcb_cut_by_gap"] = cut_by_gap(m)
    if figs["ringbuf_drops"] == 0 and figs["stream_gaps"] == 0:
        failures.append("no ring-buffer drops and no stream gaps with a 1 MiB ring under "
                        "streaming load: the fault did not happen")
    elif not figs["tpcb_cut_by_gap"]:
        failures.append(f"the gaps cut no TPC-B transaction in {STREAM_MAX_S} s of "
                        f"streaming (the agent decoded {m.requests(DB)} of their "
                        f"{REQUESTS_PER_TX * res.transactions} requests): the fault did not "
                        f"happen mid-transaction")
    deadlocks, merr, _ = mirror_log_errors(mir, msince)
    figs["mirror_log_deadlocks"], figs["mirror_log_errors"] = len(deadlocks), merr
    check_resumed(mir, state.get("history_after"), figs, failures)
    check_atomic(src, mir, figs, failures)
    report("capture gap mid-transaction", figs, failures)
