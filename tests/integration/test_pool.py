"""Integration tests of the pooled mirror: transaction-mode pooling of mirror connections.

Same setup as test_mirror.py (whose fixtures and helpers this module uses): a real source
and a real mirror PostgreSQL 15 cluster per test, the real agent on lo mirroring to the
mirror, traffic on the source only (through the captured port), /metrics settled and the
agent stopped before the source's log and tables are read.

The interface under test:
- `--mirror-max-connections N` bounds the mirror connections of all pools together. A
  source session borrows a pooled connection for a transaction (or a run of autocommit
  statements) and gives it back when its queue is empty, or between transactions when
  others wait; sessions are never skipped as connection_cap.
- `--mirror-pool-wait-ms N` (default 5000): the longest a transaction waits for a free
  connection; then its requests are dropped (mirror_dropped_requests_total{reason=
  "pool_wait"}, mirror_units_aborted_total{reason="pool_wait"}).
- Pools are keyed by the session's startup identity (database, user, options,
  client_encoding, application_name); psycopg2 and psycopg 3 send the same startup
  packet for the same conninfo, so their sessions share one pool.
- Gauges mirror_pool_connections{state="in_use"|"idle"|"pinned"|"connecting"},
  mirror_pool_waiting, mirror_pool_connections_peak; the admin console's SHOW MIRROR
  POOLS.
- Session state follows the session: session-level SET is re-applied on a connection
  whose settings differ, named prepared statements are prepared again on each connection
  that needs them, and a temp table, a session-level advisory lock, a WITH HOLD cursor,
  LISTEN or SQL PREPARE pins the session's connection until the session ends.

Ground truth, as in test_clients.py: the source's csvlog (every request counted and
mirrored), the tables on both clusters, the mirror's csvlog (errors and warnings there;
which mirror backend ran which request), and the mirror's pg_stat_activity, sampled every
50 ms by a connection of the test's own (excluded by pid) to bound the connections the
agent really held.

What each test proves, and how it fails if pooling were broken:
- test_many_sessions_small_pool: 300 sessions through a pool of 10. Without pooling
  290 sessions are skipped (connection_cap) or the mirror sees more than 10 replay
  connections.
- test_session_state_follows: 2 connections for 6+ sessions. A SET not re-applied (or a
  SET LOCAL, a rolled-back SET or a script DISCARD ALL reset taken for session state)
  puts another tag in `tagged`; a named
  statement not prepared again fails with 26000 (query errors); a temp table or an
  advisory lock whose connection is not pinned makes `keep`/`unlocked` differ (relation
  "tmp" does not exist, pg_advisory_unlock false with a WARNING).
- test_pool_wait_timeout: 1 connection held 2 s by an open transaction: another
  session's transactions are dropped as pool_wait after 300 ms, nothing else fails, and
  its later transactions are mirrored once the connection is free; the mirror never
  holds a row the source does not.

Needs root (conftest.py skips everything otherwise) and an agent with the pooled mirror.
"""

import asyncio
import collections
import contextlib
import random
import re
import threading
import time
from pathlib import Path

import psycopg2
import pytest

import pg_harness as pgh
from test_clients import compare_tables
from test_mirror import (  # noqa: F401 - pytest fixtures are used by name
    UNTHROTTLED_QUEUE, check_all_mirrored, check_invariant, check_source_clean, connect,
    finish, mark, mirror_agent, mirror_agent_bin, mirror_error_messages, mirror_errors,
    guarded, outcomes, pair, run_threads, scrape, wait_settled)
from test_readiness import console_table

APP = "pgshadow-pool"          # application_name of every traffic session (one pool)
CHECKER_APP = "pgshadow-checker"  # the test's own connections to the mirror (not counted)
POOLS_COLUMNS = ["database", "user", "application_name", "cl_active", "cl_waiting",
                 "sv_active", "sv_idle", "sv_login", "sv_pinned", "maxwait_ms", "pool_mode"]
POOL_STATES = ("in_use", "idle", "pinned", "connecting")
SAMPLE_INTERVAL = 0.05         # seconds between pg_stat_activity samples on the mirror
GAUGE_TIMEOUT = 15             # seconds for a pool gauge to reach an expected value
SETTLE_TIMEOUT = 40            # seconds for replay to settle (it takes a few when it works)


# --------------------------------------------------------------------------- helpers

class ActivitySampler:
    """Samples the mirror's pg_stat_activity every SAMPLE_INTERVAL in a thread: the
    client backends of database db other than its own and the test's checkers
    (application_name CHECKER_APP): the agent's replay connections. Their largest count
    and the application_names seen. A context manager."""

    def __init__(self, mirror, db, interval=SAMPLE_INTERVAL):
        self.mirror, self.db, self.interval = mirror, db, interval
        self.max = 0
        self.samples = 0
        self.apps = collections.Counter()
        self.error = None
        self._stop = threading.Event()
        self._thread = None
        self._conn = None

    def __enter__(self):
        # the mirror's port: never captured; database postgres, excluded by pid anyway
        self._conn = psycopg2.connect(self.mirror.conninfo("postgres"))
        self._conn.autocommit = True  # a fresh pg_stat_activity snapshot every query
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        try:
            cur = self._conn.cursor()
            while not self._stop.is_set():
                cur.execute("SELECT coalesce(application_name, '') FROM pg_stat_activity "
                            "WHERE datname = %s AND backend_type = 'client backend' "
                            "AND pid <> pg_backend_pid() AND "
                            "application_name IS DISTINCT FROM %s", (self.db, CHECKER_APP))
                rows = cur.fetchall()
                self.samples += 1
                self.max = max(self.max, len(rows))
                self.apps.update(r[0] for r in rows)
                self._stop.wait(self.interval)
        except Exception as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        assert self.error is None, f"sampling the mirror's pg_stat_activity failed: " \
                                   f"{self.error!r}"
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def __str__(self):
        return f"at most {self.max} replay connections in {self.samples} samples " \
               f"(application_names {dict(self.apps)})"


class TxnGate:
    """A writer-preferring readers/writer lock for the traffic threads: an explicit
    transaction holds it exclusively, an autocommit write shares it. So no session's
    write completes on the source inside another session's explicit transaction, and no
    transaction on the mirror has to wait, holding a pooled connection, for a write of a
    session that is itself waiting for a connection (with fewer mirror connections than
    source transactions, causal order could then only end by pool_wait). Sessions still
    interleave between transactions and their autocommit writes overlap."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def pool_gauges(m):
    """The pool gauges of one scrape, for assertions and messages."""
    out = {s: int(m.get("mirror_pool_connections", -1, state=s)) for s in POOL_STATES}
    out["waiting"] = int(m.get("mirror_pool_waiting", -1))
    out["peak"] = int(m.get("mirror_pool_connections_peak", -1))
    return out


def require_pool_metrics(agent):
    """The agent serves the pool gauges (else it has no pooled mirror: fail clearly)."""
    m = scrape(agent)
    missing = [f"mirror_pool_connections{{state=\"{s}\"}}" for s in POOL_STATES
               if not m.has("mirror_pool_connections", state=s)]
    missing += [n for n in ("mirror_pool_waiting", "mirror_pool_connections_peak")
                if not m.has(n)]
    assert not missing, f"/metrics lacks {missing}: this agent has no pooled mirror\n" \
                        f"stderr:\n{agent.stderr()[-3000:]}"
    return m


def wait_gauges(agent, what, pred, timeout=GAUGE_TIMEOUT, mirror=None, db=None):
    """Scrapes until pred(Metrics) holds; returns that Metrics."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(agent)
        if pred(m):
            return m
        assert time.monotonic() < deadline, \
            f"{what}: not within {timeout}s\n{pool_diagnosis(agent, mirror, db)}\n" \
            f"stderr:\n{agent.stderr()[-3000:]}"
        time.sleep(0.1)


def pool_diagnosis(agent, mirror=None, db=None):
    """What the pool looks like now (for failure messages): gauges, outcomes, drop
    reasons, SHOW MIRROR POOLS, the source sessions by state (and those with a queue),
    the replay connections on the mirror. Never raises."""
    parts = []
    try:
        m = scrape(agent)
        parts.append(f"pool gauges {pool_gauges(m)}; outcomes {outcomes(m)}; drops "
                     f"{reasons(m, 'mirror_dropped_requests_total')}; units aborted "
                     f"{reasons(m, 'mirror_units_aborted_total')}")
    except Exception as e:  # noqa: BLE001 - a diagnosis
        parts.append(f"/metrics: {e!r}")
    try:
        parts.append(f"SHOW MIRROR POOLS: {pool_rows(agent)}")
        cols, rows = console_table(agent, "SHOW MIRROR SESSIONS")
        sessions = [dict(zip(cols, r)) for r in rows]
        queued = [x for x in sessions if x.get("queue_length")]
        parts.append(f"SHOW MIRROR SESSIONS: {len(sessions)} sessions by state "
                     f"{dict(collections.Counter(x.get('state') for x in sessions))}; "
                     f"{len(queued)} with a queue, e.g. {queued[:5]}")
    except Exception as e:  # noqa: BLE001 - a diagnosis
        parts.append(f"console: {e!r}")
    if mirror is not None and db is not None:
        try:
            rows = mirror.query("SELECT pid, state, left(query, 70) FROM pg_stat_activity "
                                f"WHERE datname = '{db}' AND backend_type = 'client backend' "
                                f"AND application_name <> '{CHECKER_APP}'")
            parts.append(f"the mirror's replay connections (pid, state, last query): {rows}")
        except Exception as e:  # noqa: BLE001 - a diagnosis
            parts.append(f"the mirror's pg_stat_activity: {e!r}")
    return "\n".join(parts)


def settle(agent, mirror, db):
    """wait_settled, with the pool's state in the failure message."""
    try:
        return wait_settled(agent, timeout=SETTLE_TIMEOUT)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- pool state:\n{pool_diagnosis(agent, mirror, db)}") \
            from None


def finish_pool(agent, mirror, db):
    """test_mirror.finish (settled /metrics, SIGINT, exit 0), with the pool's state in
    the failure message when replay does not settle."""
    settle(agent, mirror, db)
    return finish(agent)


def pinned(m):
    return m.get("mirror_pool_connections", state="pinned")


def pool_rows(agent):
    """SHOW MIRROR POOLS as a list of {column: value}; checks the columns."""
    cols, rows = console_table(agent, "SHOW MIRROR POOLS")
    assert cols == POOLS_COLUMNS, f"SHOW MIRROR POOLS columns {cols}, expected " \
                                  f"{POOLS_COLUMNS}"
    return [dict(zip(cols, r)) for r in rows]


def pool_row(agent, db):
    """The one SHOW MIRROR POOLS row of database db (every session of a test has the same
    startup identity), numbers as ints."""
    rows = pool_rows(agent)
    found = [r for r in rows if r["database"] == db]
    assert len(found) == 1, \
        f"SHOW MIRROR POOLS: expected one pool of {db!r} (every session has the same " \
        f"startup identity), got {rows}"
    row = dict(found[0])
    for c in POOLS_COLUMNS[3:-1]:
        row[c] = int(float(row[c]))
    return row


def server_connections(row):
    """Connections of a SHOW MIRROR POOLS row: sv_pinned is part of sv_active."""
    return row["sv_active"] + row["sv_idle"] + row["sv_login"]


def open_connections(g):
    """Connections counted by the gauges: pinned and connecting are part of in_use."""
    return g["in_use"] + g["idle"]


def reasons(m, name, **labels):
    return {k: int(v) for k, v in m.by_label(name, "reason", **labels).items() if v}


def mirror_requests(mir, db, since):
    """The mirror's request records of db after since (its log synced first)."""
    mir.sync_log()
    return mir.request_records(db, since)


def check_peak(m, bound, sampler):
    peak = m.get("mirror_pool_connections_peak", -1)
    print(f"mirror_pool_connections_peak {peak}; pg_stat_activity: {sampler}")
    assert 1 <= sampler.max <= bound, \
        f"the mirror's pg_stat_activity showed at most {sampler.max} replay connections " \
        f"of the database (--mirror-max-connections {bound}): {sampler}"
    assert 1 <= peak <= bound, \
        f"mirror_pool_connections_peak {peak} with --mirror-max-connections {bound}"


# --------------------------------------------------------------------------- 1. many sessions

MANY_SESSIONS = 300
MANY_MAX = 10
MANY_ROUNDS = 3
MANY_CONNECT_BATCH = 50


@pytest.fixture
def big_pair():
    """(source, mirror) as `pair`, the source with max_connections = 400."""
    with pgh.pg_server(name="source", settings={"max_connections": "400"}) as source, \
            pgh.pg_server(name="mirror") as mirror:
        yield source, mirror


def thread_nice(pid, name):
    """The nice value of the process's thread called name (/proc/PID/task/TID/stat)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().strip() == name:
            return int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
    raise AssertionError(f"no thread {name!r} in process {pid}")


def test_many_sessions_small_pool(big_pair, mirror_agent, seed):
    """300 asyncpg sessions open at once (one event loop), --mirror-max-connections 10.
    Each runs, interleaved with the others (random sleeps), autocommit statements on its
    own rows of t: an INSERT, then 3 rounds of INSERT, a non-commutative UPDATE and a
    SELECT (an asyncpg named prepared statement): 10 requests, 3000 in all. Every request
    is mirrored (nothing skipped, dropped or failed), t is equal on both, the mirror's
    pg_stat_activity never shows more than 10 replay connections of the database (sampled
    every 50 ms) and mirror_pool_connections_peak <= 10; SHOW MIRROR POOLS shows the
    database's pool (transaction mode, at most 10 server connections) while the sessions
    are open."""
    import asyncpg
    src, mir = big_pair
    db = "poolmany"
    for pg in big_pair:
        pg.createdb(db)
        pg.psql("CREATE TABLE t (session int, k int, v bigint NOT NULL, "
                "PRIMARY KEY (session, k))", db=db)
    since, msince = mark(src), mark(mir)
    agent = mirror_agent(src, mir, extra=["--mirror-max-connections", MANY_MAX])
    require_pool_metrics(agent)
    assert thread_nice(agent.pid, "pgshadow-replay") == -10, \
        "the replay thread runs at mirror_replay_nice (-10 by default)"
    sent = collections.Counter()

    async def session(conn, i):
        r = random.Random(f"{seed}/many/{i}")
        await conn.execute(f"INSERT INTO t VALUES ({i}, 0, {i})")
        sent["insert"] += 1
        for k in range(1, MANY_ROUNDS + 1):
            await asyncio.sleep(r.uniform(0, 0.05))
            await conn.execute(f"INSERT INTO t VALUES ({i}, {k}, {r.randint(1, 1000)})")
            sent["insert"] += 1
            await asyncio.sleep(r.uniform(0, 0.02))
            await conn.execute(f"UPDATE t SET v = (v * 3 + {k}) % 1000003 "
                               f"WHERE session = {i} AND k IN (0, {k})")
            sent["update"] += 1
            total = await conn.fetchval("SELECT sum(v) FROM t WHERE session = $1", i)
            assert total is not None
            sent["select"] += 1

    async def workload():
        conns = []
        try:
            for start in range(0, MANY_SESSIONS, MANY_CONNECT_BATCH):
                n = min(MANY_CONNECT_BATCH, MANY_SESSIONS - start)
                conns += await asyncio.gather(*[
                    asyncpg.connect(host=src.host, port=src.port, user=pgh.PG_DB_USER,
                                    database=db, server_settings={"application_name": APP})
                    for _ in range(n)])
            t0 = time.monotonic()
            await asyncio.gather(*[session(c, i) for i, c in enumerate(conns)])
            print(f"{MANY_SESSIONS} sessions: workload {time.monotonic() - t0:.1f}s, "
                  f"sent {dict(sent)}")
            # replay has caught up; the sessions are still open (idle)
            await asyncio.get_running_loop().run_in_executor(None, settle, agent, mir, db)
            row = pool_row(agent, db)
            gauges = pool_gauges(scrape(agent))
            return row, gauges
        finally:
            await asyncio.gather(*[c.close() for c in conns], return_exceptions=True)

    with ActivitySampler(mir, db) as sampler:
        row, open_gauges = asyncio.run(workload())
        m, _ = finish_pool(agent, mir, db)
    print(f"SHOW MIRROR POOLS with the sessions open: {row}; gauges then {open_gauges}, "
          f"at the end {pool_gauges(m)}")

    expected = check_source_clean(src, m, db, since)
    assert expected == sum(sent.values()), \
        f"the source logged {expected} requests, the sessions sent {dict(sent)} (a test " \
        f"problem: asyncpg sent something else)"
    check_all_mirrored(m, db, expected, src, since)
    merr = mirror_errors(mir, db, msince)
    assert merr == {}, f"the mirror logged errors: {merr}: " \
                       f"{mirror_error_messages(mir, db, msince)}"
    sizes, diffs = compare_tables(src, mir, db, {"t": ("session", "k", "v")})
    assert not diffs, f"mirror differs from source: {diffs}"
    assert sizes["t"] == MANY_SESSIONS * (MANY_ROUNDS + 1), sizes
    check_peak(m, MANY_MAX, sampler)
    assert (row["user"], row["application_name"], row["pool_mode"]) == \
        (pgh.PG_DB_USER, APP, "transaction"), row
    assert 1 <= server_connections(row) <= MANY_MAX and row["sv_pinned"] == 0, \
        f"SHOW MIRROR POOLS: {server_connections(row)} server connections " \
        f"(--mirror-max-connections {MANY_MAX}, nothing pins): {row}"
    assert row["cl_waiting"] == 0 and row["cl_active"] <= MANY_SESSIONS, row
    assert sampler.apps.keys() <= {APP}, \
        f"replay connections with another application_name than the sessions' {APP!r}: " \
        f"{dict(sampler.apps)}"
    end = pool_gauges(m)
    assert end["in_use"] == 0 and end["pinned"] == 0 and end["waiting"] == 0, \
        f"pool gauges after every session ended: {end}"


# --------------------------------------------------------------------------- 2. session state

STATE_MAX = 2
TAG_SESSIONS = 4
TAG_MIN_STEPS = 30
TAG_SET_B_STEP = 8             # the session's second SET
TAG_LOCAL_STEP = 13            # a transaction with SET LOCAL (not session state)
TAG_ROLLBACK_STEP = 17         # a session-level SET in a transaction rolled back
TAG_DISCARD_STEP = 21          # DISCARD ALL: the tag is '' until the next SET
TAG_SET_C_STEP = 26            # the session's third SET
PREP_GROUPS = 25               # groups of 4 executions of a prepared statement
TEMP_TXNS = 8
ADVISORY_KEY = 42
INSERT_TAGGED = ("INSERT INTO tagged (session, seq, tag) "
                 "VALUES (%s, %s, current_setting('pgshadow_test.tag'))")
TAGGED_RE = re.compile(r"INSERT INTO tagged \(session, seq, tag\) VALUES \((\d+), (\d+),")
STATE_SCHEMA = [
    "CREATE TABLE tagged (session int, seq int, tag text, PRIMARY KEY (session, seq))",
    "CREATE TABLE prepped (session int, seq int, note text, PRIMARY KEY (session, seq))",
    "CREATE TABLE counters (session int PRIMARY KEY, n bigint NOT NULL)",
    "INSERT INTO counters VALUES (1, 1)",
    "CREATE TABLE keep (id int PRIMARY KEY, v text)",
    "CREATE TABLE unlocked (who text PRIMARY KEY, ok bool)",
]
STATE_TABLES = {"tagged": ("session", "seq", "tag"), "prepped": ("session", "seq", "note"),
                "counters": ("session", "n"), "keep": ("id", "v"),
                "unlocked": ("who", "ok")}


def test_session_state_follows(pair, mirror_agent, seed):
    """--mirror-max-connections 2; all sessions share one pool (same startup identity).

    Throughout: 4 psycopg2 sessions each SET a custom GUC (pgshadow_test.tag = 'sess-N-a',
    later 'sess-N-b', once a transaction with SET LOCAL, once a session-level SET in a
    transaction rolled back, then DISCARD ALL (the tag reads '' for a few inserts), then
    'sess-N-c') and insert
    current_setting('pgshadow_test.tag') into `tagged`, autocommit or 2 per explicit
    transaction, interleaved. Phase A, alongside: 2 psycopg 3 sessions with
    prepare_threshold=0, both with their first statement named _pg3_0 (different texts:
    an INSERT into prepped, a non-commutative UPDATE of counters) and a prepared SELECT,
    executed 100 times across transactions. Phase B: a session creates a TEMP table,
    fills it in 8 transactions and copies it into `keep`; the pool shows a pinned
    connection meanwhile (gauge and SHOW MIRROR POOLS), none once it ended. Phase C: a
    session takes pg_advisory_lock(42) twice (the mirror's pg_locks shows it), runs
    transactions, unlocks it with SELECT pg_advisory_unlock(42) and with INSERT INTO
    unlocked SELECT pg_advisory_unlock(42); pinned while it holds the lock.

    Every request mirrored with no mismatch and no error (26000 would be a statement not
    prepared again), every table equal (a tag of another session, 'local-N' after its
    transaction, 'rolled-N' after its rollback, 'sess-N-b' after DISCARD ALL, a missing tmp or an unlock that returned false would differ), no
    "you don't own a lock" WARNING in the mirror's log, never more than 2 replay
    connections. The mirror's log shows that sessions did share connections and the
    prepared statements ran on both. Last, the accounting: while a connection is pinned,
    the gauges by state and SHOW MIRROR POOLS's sv_* columns (each connection in one
    state) sum to at most 2."""
    import psycopg
    src, mir = pair
    db = "poolstate"
    for pg in pair:
        pg.createdb(db)
        pg.psql(STATE_SCHEMA, db=db)
    since, msince = mark(src), mark(mir)
    agent = mirror_agent(src, mir, extra=["--mirror-max-connections", STATE_MAX,
                                          "--mirror-queue", UNTHROTTLED_QUEUE])
    require_pool_metrics(agent)
    gate = TxnGate()
    stop = threading.Event()
    expected_tags = {}        # (session, seq) -> tag on the source
    prep_counts = collections.Counter()
    observed = {}

    def tag_worker(i):
        r = random.Random(f"{seed}/tag/{i}")
        conn = connect(src, db, application_name=APP)
        try:
            cur = conn.cursor()
            tag = f"sess-{i}-a"
            cur.execute("SET pgshadow_test.tag = %s", (tag,))
            seq = step = 0

            def insert(value):
                nonlocal seq
                seq += 1
                cur.execute(INSERT_TAGGED, (i, seq))
                expected_tags[(i, seq)] = value

            while step < TAG_MIN_STEPS or not stop.is_set():
                step += 1
                if step == TAG_SET_B_STEP:
                    tag = f"sess-{i}-b"
                    cur.execute("SET pgshadow_test.tag = %s", (tag,))
                if step == TAG_SET_C_STEP:
                    tag = f"sess-{i}-c"
                    cur.execute("SET pgshadow_test.tag = %s", (tag,))
                if step == TAG_ROLLBACK_STEP:
                    with gate.exclusive():
                        conn.autocommit = False
                        cur.execute("SET pgshadow_test.tag = %s", (f"rolled-{i}",))
                        conn.rollback()
                        conn.autocommit = True
                if step == TAG_DISCARD_STEP:
                    with gate.shared():
                        cur.execute("DISCARD ALL")
                    tag = ""
                if step == TAG_LOCAL_STEP:
                    with gate.exclusive():
                        conn.autocommit = False
                        cur.execute("SET LOCAL pgshadow_test.tag = %s", (f"local-{i}",))
                        insert(f"local-{i}")
                        conn.commit()
                        conn.autocommit = True
                elif step % 4 == 0:
                    with gate.exclusive():
                        conn.autocommit = False
                        insert(tag)
                        insert(tag)
                        conn.commit()
                        conn.autocommit = True
                else:
                    with gate.shared():
                        insert(tag)
                time.sleep(r.uniform(0.005, 0.03))
        finally:
            conn.close()

    def prep_worker(kind):
        """kind 'insert': _pg3_0 = INSERT INTO prepped; kind 'update': _pg3_0 = UPDATE
        counters (non-commutative); then a prepared SELECT. Groups of 4 executions,
        every other group one explicit transaction."""
        r = random.Random(f"{seed}/prep/{kind}")
        conn = psycopg.connect(src.conninfo(db, application_name=APP), prepare_threshold=0,
                               autocommit=True)
        try:
            seq = 0
            for g in range(PREP_GROUPS):
                ctx = gate.exclusive() if g % 2 == 0 else contextlib.nullcontext()
                with ctx, (conn.transaction() if g % 2 == 0 else contextlib.nullcontext()):
                    for _ in range(4):
                        seq += 1
                        with (gate.shared() if g % 2 else contextlib.nullcontext()):
                            if kind == "insert":
                                conn.execute("INSERT INTO prepped (session, seq, note) "
                                             "VALUES (%s, %s, %s)", (0, seq, f"note {seq}"))
                            else:
                                conn.execute("UPDATE counters SET n = (n * 2 + %s) %% 1000003 "
                                             "WHERE session = %s", (seq % 7, 1))
                        prep_counts[kind] += 1
                    if kind == "insert":
                        conn.execute("SELECT count(*) FROM prepped WHERE session = %s",
                                     (0,)).fetchone()
                    else:
                        conn.execute("SELECT n FROM counters WHERE session = %s",
                                     (1,)).fetchone()
                    prep_counts[f"{kind}_select"] += 1
                time.sleep(r.uniform(0.005, 0.02))
        finally:
            conn.close()

    errors = []
    tag_threads = [threading.Thread(target=guarded(lambda i=i: tag_worker(i), errors, stop),
                                    daemon=True)
                   for i in range(1, TAG_SESSIONS + 1)]
    with ActivitySampler(mir, db) as sampler:
        for t in tag_threads:
            t.start()
        try:
            # Phase A: two psycopg 3 sessions with colliding statement names.
            run_threads([lambda: prep_worker("insert"), lambda: prep_worker("update")])

            # Phase B: a temp table, which pins its session's connection.
            conn = connect(src, db, application_name=APP)
            try:
                cur = conn.cursor()
                with gate.shared():
                    cur.execute("CREATE TEMP TABLE tmp (id int PRIMARY KEY, v text)")
                m = wait_gauges(agent, "a pinned connection after CREATE TEMP TABLE",
                                lambda m: pinned(m) >= 1, mirror=mir, db=db)
                observed["temp_gauges"] = pool_gauges(m)
                observed["temp_pool"] = pool_row(agent, db)
                for j in range(TEMP_TXNS):
                    with gate.exclusive():
                        conn.autocommit = False
                        cur.execute("INSERT INTO tmp VALUES (%s, %s)", (2 * j, f"tmp {2 * j}"))
                        cur.execute("INSERT INTO tmp VALUES (%s, %s)",
                                    (2 * j + 1, f"tmp {2 * j + 1}"))
                        conn.commit()
                        conn.autocommit = True
                    time.sleep(0.03)
                with gate.shared():
                    cur.execute("INSERT INTO keep SELECT id, v FROM tmp")
            finally:
                conn.close()
            m = wait_gauges(agent, "the temp table's pin released after its session ended",
                            lambda m: pinned(m) == 0, mirror=mir, db=db)

            # Phase C: a session-level advisory lock, which pins too.
            conn = connect(src, db, application_name=APP)
            watcher = psycopg2.connect(mir.conninfo("postgres"))  # the mirror: not captured
            watcher.autocommit = True
            try:
                cur = conn.cursor()
                cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_KEY,))
                m = wait_gauges(agent, "a pinned connection after pg_advisory_lock",
                                lambda m: pinned(m) >= 1, mirror=mir, db=db)
                observed["lock_gauges"] = pool_gauges(m)
                deadline = time.monotonic() + GAUGE_TIMEOUT
                while True:
                    with watcher.cursor() as wcur:
                        wcur.execute("SELECT count(*) FROM pg_locks WHERE locktype = "
                                     "'advisory' AND objid = %s AND granted",
                                     (ADVISORY_KEY,))
                        if wcur.fetchone()[0] == 1:
                            break
                    assert time.monotonic() < deadline, \
                        "the advisory lock never showed in the mirror's pg_locks"
                    time.sleep(0.05)
                cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_KEY,))  # re-entrant
                for j in range(5):
                    with gate.exclusive():
                        conn.autocommit = False
                        cur.execute("INSERT INTO keep VALUES (%s, 'while locked')", (1000 + j,))
                        conn.commit()
                        conn.autocommit = True
                    time.sleep(0.05)
                cur.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_KEY,))
                assert cur.fetchone()[0] is True
                with gate.shared():
                    cur.execute("INSERT INTO unlocked (who, ok) "
                                "SELECT 'advisory', pg_advisory_unlock(%s)", (ADVISORY_KEY,))
            finally:
                conn.close()
            wait_gauges(agent, "the advisory lock's pin released after its session ended",
                        lambda m: pinned(m) == 0, mirror=mir, db=db)
            with watcher.cursor() as wcur:
                wcur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
                observed["advisory_locks_left"] = wcur.fetchone()[0]
            watcher.close()
        finally:
            stop.set()
            for t in tag_threads:
                t.join(60)
        if errors:
            raise errors[0]
        m, _ = finish_pool(agent, mir, db)
    print(f"sessions: {len(expected_tags)} tagged rows, prepared {dict(prep_counts)}; "
          f"while the temp table lived: {observed.get('temp_gauges')}, "
          f"{observed.get('temp_pool')}; while the lock was held: "
          f"{observed.get('lock_gauges')}; at the end {pool_gauges(m)}")

    # The workload did what the test needs (a failure here is the test's, not the agent's).
    src.sync_log()
    records = src.request_records(db, since)
    for text, n in (("INSERT INTO prepped", prep_counts["insert"]),
                    ("UPDATE counters", prep_counts["update"])):
        named = [r for r in records if r.message.startswith(f"execute _pg3_0: {text}")]
        assert len(named) == n, \
            f"the source logged {len(named)} executes of _pg3_0: {text}..., the session " \
            f"ran {n} (psycopg 3 did not name its first statement _pg3_0)"

    expected = check_source_clean(src, m, db, since)
    check_all_mirrored(m, db, expected, src, since)  # no 26000, no mismatch, nothing lost
    merr = mirror_errors(mir, db, msince)
    assert merr == {}, f"the mirror logged errors: {merr}: " \
                       f"{mirror_error_messages(mir, db, msince)}"
    warnings = [f"{r.message} [{r.query}]" for r in mir.log_records(msince)
                if r.error_severity == "WARNING" and "don't own a lock" in r.message]
    assert not warnings, f"the mirror unlocked an advisory lock on another connection " \
                         f"than the one that took it: {warnings}"
    sizes, diffs = compare_tables(src, mir, db, STATE_TABLES)
    assert not diffs, "mirror differs from source:\n  " + "\n  ".join(diffs)
    src_tags = {(int(s), int(q)): tag for s, q, tag in src.query(
        "SELECT session, seq, tag FROM tagged", db)}
    assert src_tags == expected_tags, \
        "the source's tags are not what the sessions set (the test's expectation is wrong)"
    assert src.query("SELECT who, ok FROM unlocked", db) == [["advisory", "t"]]
    assert sizes["keep"] == 2 * TEMP_TXNS + 5, sizes
    assert observed["temp_pool"]["sv_pinned"] >= 1, \
        f"SHOW MIRROR POOLS while the temp table lived: {observed['temp_pool']}"
    assert observed["advisory_locks_left"] == 0, \
        f"{observed['advisory_locks_left']} advisory locks left on the mirror after the " \
        f"session that took and released them ended"
    check_peak(m, STATE_MAX, sampler)

    # The mirror's log: sessions shared connections, prepared statements ran on both.
    mrecords = mirror_requests(mir, db, msince)
    sessions_of_backend = collections.defaultdict(set)
    backends_of_session = collections.defaultdict(set)
    backends_of_prepared = collections.defaultdict(set)
    for r in mrecords:
        mt = TAGGED_RE.search(r.message)
        if mt:
            sessions_of_backend[r.process_id].add(int(mt.group(1)))
            backends_of_session[int(mt.group(1))].add(r.process_id)
        for text in ("INSERT INTO prepped", "UPDATE counters"):
            if text in r.message:
                backends_of_prepared[text].add(r.process_id)
    resets = sum(1 for r in mrecords if re.search(r"(?i)\bRESET ALL\b", r.message))
    per_session = {s: len(b) for s, b in backends_of_session.items()}
    per_backend = {p: sorted(s) for p, s in sessions_of_backend.items()}
    print(f"mirror backends per tag session {per_session}, tag sessions per backend "
          f"{per_backend}, "
          f"backends per prepared statement "
          f"{ {k: len(v) for k, v in backends_of_prepared.items()} }; RESET ALL on the "
          f"mirror {resets}")
    assert any(len(s) >= 2 for s in sessions_of_backend.values()), \
        "no mirror backend ran the inserts of two tag sessions: sessions never shared " \
        "a connection, the settings were never put to the test"
    assert all(len(backends_of_prepared[t]) >= 2
               for t in ("INSERT INTO prepped", "UPDATE counters")), \
        f"a prepared statement ran on one mirror backend only " \
        f"{ {k: len(v) for k, v in backends_of_prepared.items()} }: its session never " \
        f"moved, re-preparing was never put to the test"

    # The pool's accounting (the mirror never had more than 2, see check_peak): in use
    # (pinned and connecting included) plus idle is at most 2, in the gauges and the
    # console, and pinned is part of in use.
    for what in ("temp_gauges", "lock_gauges"):
        g = observed[what]
        assert open_connections(g) <= STATE_MAX and g["pinned"] <= g["in_use"], \
            f"mirror_pool_connections by state sum to more than --mirror-max-connections " \
            f"{STATE_MAX} ({what}): {g}"
    assert server_connections(observed["temp_pool"]) <= STATE_MAX, \
        f"SHOW MIRROR POOLS counts more server connections than --mirror-max-connections " \
        f"{STATE_MAX}: {observed['temp_pool']}"


# --------------------------------------------------------------------------- 3. pool wait

WAIT_MS = 300
HOLD_S = 2.0
B_INTERVAL = 0.02
AFTER_ROWS = 20
STRICT_MARGIN = 0.4            # seconds of slack on top of WAIT_MS for "waited too long"
CATCH_UP_S = 2.0               # slack for replay to catch up once nothing has to wait
CATCH_UP_WAIT_S = 8.0          # how long the test watches for it (then it fails)


def wait_mirror(conn, sql, want, timeout=CATCH_UP_WAIT_S):
    """Seconds until `sql` answers `want` on the mirror connection conn (autocommit),
    polled every 20 ms; None when it did not within timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with conn.cursor() as cur:
            cur.execute(sql)
            if cur.fetchone()[0] == want:
                return time.monotonic() - t0
        time.sleep(0.02)
    return None


def test_pool_wait_timeout(pair, mirror_agent):
    """--mirror-max-connections 1 --mirror-pool-wait-ms 300. Session A opens a
    transaction (BEGIN; UPDATE a) and keeps it open 2 s, holding the only mirror
    connection (the mirror shows it idle in transaction); session B meanwhile inserts
    into b (autocommit) every 20 ms. Then A updates again and commits, and (A still
    open, idle) B inserts 20 more rows.

    B's transactions are dropped as pool_wait (mirror_dropped_requests_total and
    mirror_units_aborted_total, no other reason, no error, no skip): every B row
    inserted more than 300 ms (+ 0.4 s slack) before A's COMMIT is missing on the mirror,
    the rows missing are exactly the dropped requests, every row after A's COMMIT is on
    the mirror, and A's transaction is there whole. The mirror holds no row the source
    does not. While A holds the connection the pool shows 1 connection in use and B
    waiting (gauges, SHOW MIRROR POOLS); the mirror never has more than 1 replay
    connection.

    No transaction waits longer than 300 ms for the connection, so replay catches up
    quickly once A committed: A's second UPDATE comes after B's inserts on the source
    (causal order makes it wait for them on the mirror), and they wait for the
    connection A holds until they are dropped, all of them within 300 ms. So A's COMMIT
    reaches the mirror within 0.3 + 2 s of the source's, and B's rows inserted after it
    within 2 s of the last one (a pool that timed out only the transaction at the head
    of B's queue, one per 300 ms, would take 300 ms per queued transaction)."""
    src, mir = pair
    db = "poolwait"
    for pg in pair:
        pg.createdb(db)
        pg.psql(["CREATE TABLE a (id int PRIMARY KEY, v int NOT NULL)",
                 "INSERT INTO a VALUES (1, 0)",
                 "CREATE TABLE b (id int PRIMARY KEY, phase text NOT NULL)"], db=db)
    since, msince = mark(src), mark(mir)
    agent = mirror_agent(src, mir, extra=["--mirror-max-connections", 1,
                                          "--mirror-pool-wait-ms", WAIT_MS])
    require_pool_metrics(agent)
    inserted_at = {}           # B's row id -> seconds since the hold began
    during_gauges, during_pools = [], []

    with ActivitySampler(mir, db) as sampler:
        a = psycopg2.connect(src.conninfo(db, application_name=APP))  # a transaction
        b = connect(src, db, application_name=APP)                     # autocommit
        # the mirror's port: not captured; excluded from the sampler by application_name
        watcher = psycopg2.connect(mir.conninfo(db, application_name=CHECKER_APP))
        watcher.autocommit = True
        try:
            acur, bcur = a.cursor(), b.cursor()
            acur.execute("UPDATE a SET v = v + 1 WHERE id = 1")        # BEGIN; UPDATE
            deadline = time.monotonic() + 10
            while True:  # A's transaction is open on the mirror: it holds the connection
                with watcher.cursor() as wcur:
                    wcur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                 "AND state = 'idle in transaction'", (db,))
                    if wcur.fetchone()[0] == 1:
                        break
                assert time.monotonic() < deadline, \
                    f"A's transaction never showed open on the mirror; gauges " \
                    f"{pool_gauges(scrape(agent))}\nstderr:\n{agent.stderr()[-3000:]}"
                time.sleep(0.05)
            t0 = time.monotonic()
            n = 0
            next_console = 0.5
            while time.monotonic() - t0 < HOLD_S:
                n += 1
                bcur.execute("INSERT INTO b VALUES (%s, 'during')", (n,))
                inserted_at[n] = time.monotonic() - t0
                if n % 5 == 0:
                    during_gauges.append(pool_gauges(scrape(agent)))
                if time.monotonic() - t0 > next_console:
                    during_pools.append(pool_row(agent, db))
                    next_console += 0.5
                time.sleep(B_INTERVAL)
            acur.execute("UPDATE a SET v = v + 10 WHERE id = 1")
            a.commit()
            commit_at = time.monotonic() - t0
            during_n = n
            a_lag = wait_mirror(watcher, "SELECT v FROM a WHERE id = 1", 11)
            for _ in range(AFTER_ROWS):
                n += 1
                bcur.execute("INSERT INTO b VALUES (%s, 'after')", (n,))
                inserted_at[n] = time.monotonic() - t0
                time.sleep(B_INTERVAL)
            after_lag = wait_mirror(watcher, "SELECT count(*) FROM b WHERE phase = 'after'",
                                    AFTER_ROWS)
        finally:
            for c in (a, b, watcher):
                c.close()
        m, _ = finish_pool(agent, mir, db)

    drops = reasons(m, "mirror_dropped_requests_total", database=db)
    all_drops = reasons(m, "mirror_dropped_requests_total")
    aborted = reasons(m, "mirror_units_aborted_total")
    print(f"B: {during_n} rows while A held the connection (A committed at "
          f"{commit_at:.2f}s; on the mirror {a_lag} s later), {AFTER_ROWS} after (on the "
          f"mirror {after_lag} s after the last); drops {drops}, units aborted {aborted}; "
          f"gauges while held {during_gauges}; SHOW MIRROR POOLS while held {during_pools}")
    expected = check_source_clean(src, m, db, since)
    assert m.requests(db) == expected, \
        f"agent counted {m.requests(db)} source requests, the source logged {expected}"
    o = check_invariant(m)
    assert o["connection"] == o["query"] == o["timeout"] == 0, \
        f"mirror errors besides the pool waits: {o}"
    assert o["skipped"] == 0 and o["not_sampled"] == 0, f"requests not mirrored: {o}"
    assert set(all_drops) == {"pool_wait"} and drops.get("pool_wait", 0) > 0, \
        f"dropped requests by reason {all_drops} (database {db}: {drops}): expected " \
        f"pool_wait only, more than 0"
    assert set(aborted) == {"pool_wait"} and aborted["pool_wait"] > 0, \
        f"mirror_units_aborted_total by reason {aborted}: expected pool_wait only, more " \
        f"than 0"
    assert o["dropped"] == drops["pool_wait"] and o["mirrored"] + o["dropped"] == o["total"], o
    merr = mirror_errors(mir, db, msince)
    assert merr == {}, f"the mirror logged errors: {merr}: " \
                       f"{mirror_error_messages(mir, db, msince)}"

    src_b = {int(i): p for i, p in src.query("SELECT id, phase FROM b", db)}
    mir_b = {int(i): p for i, p in mir.query("SELECT id, phase FROM b", db)}
    assert len(src_b) == n, f"the source has {len(src_b)} rows of b, B inserted {n}"
    extra = {k: v for k, v in mir_b.items() if src_b.get(k) != v}
    assert not extra, f"rows on the mirror the source does not have: {extra}"
    missing = sorted(set(src_b) - set(mir_b))
    assert len(missing) == drops["pool_wait"], \
        f"{len(missing)} of B's rows are missing on the mirror, {drops['pool_wait']} " \
        f"requests were dropped (each of B's inserts is one request): missing {missing}"
    after_missing = [k for k in missing if src_b[k] == "after"]
    assert not after_missing, \
        f"rows B inserted after A committed are missing on the mirror: {after_missing}; " \
        f"outcomes {o}"
    too_long = [k for k in range(1, during_n + 1)
                if inserted_at[k] < commit_at - WAIT_MS / 1000 - STRICT_MARGIN]
    kept = [k for k in too_long if k in mir_b]
    assert too_long and not kept, \
        f"B's rows {kept} (inserted at {[round(inserted_at[k], 2) for k in kept][:10]} s, " \
        f"A committed at {commit_at:.2f} s) waited longer than {WAIT_MS} ms for the " \
        f"connection A held and were still replayed"
    assert src.query("SELECT v FROM a", db) == mir.query("SELECT v FROM a", db) == [["11"]], \
        "A's transaction is not on the mirror whole"

    assert a_lag is not None and a_lag <= WAIT_MS / 1000 + CATCH_UP_S, \
        f"A's COMMIT reached the mirror {a_lag if a_lag is None else round(a_lag, 2)} s " \
        f"after the source's (None: not within {CATCH_UP_WAIT_S} s), more than " \
        f"{WAIT_MS} ms + {CATCH_UP_S} s: B's transactions queued behind the connection A " \
        f"held waited longer than --mirror-pool-wait-ms {WAIT_MS} before being dropped"
    assert after_lag is not None and after_lag <= CATCH_UP_S, \
        f"B's rows inserted after A's COMMIT reached the mirror " \
        f"{after_lag if after_lag is None else round(after_lag, 2)} s after the last " \
        f"(None: not within {CATCH_UP_WAIT_S} s), more than {CATCH_UP_S} s"
    assert during_gauges and max(g["in_use"] for g in during_gauges) == 1 and \
        max(g["waiting"] for g in during_gauges) >= 1, \
        f"while A held the only connection: gauges {during_gauges}"
    assert all(g["in_use"] + g["idle"] + g["pinned"] + g["connecting"] <= 1
               for g in during_gauges), during_gauges
    assert during_pools and all(server_connections(p) <= 1 for p in during_pools) and \
        any(p["sv_active"] == 1 and p["cl_waiting"] >= 1 for p in during_pools), \
        f"SHOW MIRROR POOLS while A held the only connection: {during_pools}"
    check_peak(m, 1, sampler)


def test_deallocate_through_extended_protocol(pair, mirror_agent):
    """psycopg 3 clears its prepared-statement cache when a transaction rolls back and
    sends DEALLOCATE ALL through the extended protocol before its next query. Three source
    sessions, one after the other, on one pooled mirror connection
    (--mirror-max-connections 1), each: a SELECT prepared at once (prepare=True: psycopg's
    first name, _pg3_0, the same text in every session), a rollback, one more query,
    commit. The mirror dropped every name at the DEALLOCATE, so the next session's _pg3_0
    must be prepared again on that connection, not bound to the name prepared for the
    first session (26000 "prepared statement does not exist" on the mirror before
    2026-12-08, found with psycopg 3 sessions deadlocking under load)."""
    try:
        import psycopg
    except ImportError as e:
        pytest.fail(f"psycopg 3 is not installed ({e}): run `make deps` (python3-psycopg)")
    src, mir = pair
    db = "dealloc"
    for pg in pair:
        pg.createdb(db)
        pg.psql(["CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)",
                 "INSERT INTO t SELECT g, g * 10 FROM generate_series(1, 5) g"], db=db)
    since, msince = mark(src), mark(mir)
    agent = mirror_agent(src, mir, extra=["--mirror-max-connections", 1])
    for k in range(3):
        with psycopg.connect(src.conninfo(db, application_name=APP)) as conn:
            assert conn.execute("SELECT v FROM t WHERE id = %s", (k + 1,),
                                prepare=True).fetchone() == ((k + 1) * 10,)
            conn.rollback()
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (5,)
            conn.commit()
    m, _ = finish(agent)
    records = src.request_records(db, since)
    deallocs = [r for r in records if re.search(r"^execute \S+: DEALLOCATE ALL", r.message)]
    named = [r for r in records if re.search(r"^execute _pg3_0: SELECT v FROM t", r.message)]
    assert len(deallocs) == 3 and len(named) == 3, \
        f"the workload is not what the test needs: {len(deallocs)} DEALLOCATE ALL " \
        f"through the extended protocol, {len(named)} executes of _pg3_0 " \
        f"{pgh.request_kinds(records)}"
    o = check_invariant(m)
    assert o["connection"] + o["query"] + o["timeout"] == 0, \
        f"mirror errors: {o}\n{mirror_error_messages(mir, db, msince)}"
    assert o["mirrored"] == len(records), f"{o}; the source logged {len(records)}"
    merr = mirror_errors(mir, db, msince)
    assert merr == {}, f"the mirror logged {merr}: {mirror_error_messages(mir, db, msince)}"
