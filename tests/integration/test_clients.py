"""Client matrix: real PostgreSQL drivers against a real source, the real agent mirroring
(default settings: exposure 1.0, queue 1000, pipeline 16, compare status) to a real mirror.

Drivers and what each exercises (each in its own database on both clusters, created with
the same schema before the agent starts; each test has its own pair of clusters, see the
`pair` fixture of test_mirror.py):

- psycopg2: transactions, a server-side (named) cursor read with fetchmany, executemany,
  failing transactions (a unique violation; an error then a statement in the aborted
  transaction) and a failing autocommit statement — all simple protocol.
- psycopg 3: prepared statements (prepare=True, and prepare_threshold reached), binary
  parameters and results, pipeline mode (one Sync for hundreds of statements),
  executemany (pipelined), a failing transaction and a failing pipeline.
- asyncpg: named prepared statements, binary parameters and results, fetchrow() (an
  Execute with a row limit of 1: PortalSuspended when more rows exist), executemany of
  10,000 rows in one call (one Sync group, which must be mirrored whole with the default
  settings), binary COPY (copy_records_to_table), savepoints, failing transactions.
- node-postgres (tests/integration/clients/node): named queries, a transaction, a
  failing statement and a failing transaction.
- JDBC (tests/integration/clients/java, compiled at test time): server-side prepared
  statements once prepareThreshold is reached, executeBatch of 1,000 INSERTs (must be
  mirrored whole with the default settings), a failing transaction.
- libpq pipeline mode: pgbench with \\startpipeline / \\endpipeline, -M extended and
  -M prepared.

Every driver is checked against ground truth, once replay has settled (nothing in flight,
every mirror_* counter unchanged over two scrapes) and the agent has stopped:
 (a) mirror_source_requests_total{database} == the requests in the source's csvlog
     (log_statement = all; pg_harness.request_records). The workloads fail only while
     executing (unique violations, a division by zero over a column), never in Parse or
     Bind, and send nothing but ROLLBACK in an aborted transaction over the extended
     protocol: the server logs no Execute for a statement whose Parse/Bind failed, so
     such a request would have no record to count;
 (b) the mirror's tables == the source's, as row multisets, volatile columns (timestamps
     set by now()/clock_timestamp()) left out;
 (c) no mirror errors: mirror_errors_connection/query/timeout == 0 and
     mirror_requests_dropped == 0 (and nothing skipped or not sampled);
 (d) no mismatches (mirror_mismatches_total), with mirror_compared_total /
     mirror_requests_mirrored printed and at least 0.5.
All failed checks of a test are reported together, with their numbers. Before that, the
test checks that the driver really did what the test is about (the server's log shows
the named statements, the Sync group, the batch ...): a failure there is the test's, not
the agent's.

The drivers run unthrottled, as applications do (pgbench excepted, see its test), with
the agent's default settings: a request dropped because a session's queue (100) was full
fails (c). For diagnosis, PGSHADOW_CLIENTS_AGENT_ARGS adds agent flags, e.g.
PGSHADOW_CLIENTS_AGENT_ARGS="--mirror-queue 100000" tells drops apart from the rest.

Needs root (conftest.py skips everything otherwise); node-postgres is skipped only when
node or npm is missing (node modules are installed with `npm ci` when absent).
"""

import asyncio
import collections
import datetime
import decimal
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest

import pg_harness as pgh
from test_mirror import (check_invariant, finish, mark, mirror_agent,  # noqa: F401 fixtures
                         mirror_agent_bin, mirror_error_messages, mirror_errors, outcomes,
                         pair)

CLIENTS_DIR = Path(__file__).resolve().parent / "clients"
NODE_DIR = CLIENTS_DIR / "node"
JAVA_DIR = CLIENTS_DIR / "java"
PGJDBC_JAR = Path("/usr/share/java/postgresql.jar")
MIN_COMPARED_FRACTION = 0.5
LOG_MISMATCHES = 20

AGENT_ERROR_COUNTERS = ("mirror_errors_connection", "mirror_errors_query",
                        "mirror_errors_timeout", "mirror_requests_dropped")

# The schema every driver's database starts with (on both clusters, before the agent).
BASE_SCHEMA = [
    "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, "
    "balance numeric(14,2) NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
    "INSERT INTO accounts (id, owner, balance) "
    "SELECT g, 'owner ' || g, 1000 FROM generate_series(1, 10) g",
    "CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, name text NOT NULL, "
    "payload bytea, price numeric(10,2), created_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE ledger (id int PRIMARY KEY, account int NOT NULL, "
    "amount numeric(14,2) NOT NULL, note text, "
    "created_at timestamptz NOT NULL DEFAULT clock_timestamp())",
]
# Compared columns (the volatile timestamps left out).
BASE_TABLES = {
    "accounts": ("id", "owner", "balance"),
    "items": ("id", "grp", "name", "payload", "price"),
    "ledger": ("id", "account", "amount", "note"),
}


# --------------------------------------------------------------------------- helpers

QUEUE_BUDGET = 64 << 20  # --mirror-queue-mb's default


def create_databases(pair, db, schema):
    """Database db with schema (one Query per statement) on both clusters."""
    for pg in pair:
        pg.createdb(db)
        pg.psql(schema, db=db)


def table_multiset(pg, db, table, columns):
    """Counter of the rows of table (only columns, each row as its text form)."""
    conn = psycopg2.connect(pg.conninfo(db))
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT ROW({', '.join(columns)})::text FROM {table}")
            return collections.Counter(r[0] for r in cur.fetchall())
    finally:
        conn.close()


def compare_tables(src, mir, db, tables):
    """({table: source row count}, [differences]) of the tables as row multisets."""
    sizes, diffs = {}, []
    for table, columns in tables.items():
        a = table_multiset(src, db, table, columns)
        b = table_multiset(mir, db, table, columns)
        sizes[table] = sum(a.values())
        if a != b:
            only_src, only_mir = a - b, b - a
            diffs.append(
                f"{table}: source {sum(a.values())} rows, mirror {sum(b.values())}; "
                f"{sum(only_src.values())} only on the source "
                f"{sorted(only_src.elements())[:3]}, {sum(only_mir.values())} only on the "
                f"mirror {sorted(only_mir.elements())[:3]}")
    return sizes, diffs


def source_records(src, db, since):
    """The source's request records of db after since (log synced first)."""
    src.sync_log()
    return src.request_records(db, since)


def execute_records(records, pattern):
    """Request records whose message matches the regular expression pattern."""
    rx = re.compile(pattern, re.S)
    return [r for r in records if rx.search(r.message)]


def capture_troubles(m):
    """The capture and decoding counters that explain requests the agent did not count
    (zero ones left out)."""
    out = {name: int(m.get(name)) for name in (
        "mirror_capture_ringbuf_drops_total", "mirror_capture_truncated_total",
        "mirror_capture_stream_gaps_total", "mirror_capture_resyncs_total",
        "mirror_capture_abandoned_requests_total")}
    for limit, v in m.by_label("mirror_capture_limit_hits_total", "limit").items():
        out[f"limit_hits{{{limit}}}"] = int(v)
    return {k: v for k, v in out.items() if v}


def verify(src, mir, m, db, since, msince, tables, extra_problems=()):
    """The four ground-truth checks (see the module docstring); every failed one is
    reported in one AssertionError with its numbers. Returns a summary dict."""
    records = source_records(src, db, since)
    logged = len(records)
    kinds = pgh.request_kinds(records)
    src_errors = src.count_errors(db, since, sync=False)
    mir_errors = mirror_errors(mir, db, msince)
    counted = m.requests(db)
    o = outcomes(m)
    compared = int(m.get("mirror_compared_total", database=db))
    mirrored = o["mirrored"]
    fraction = compared / mirrored if mirrored else 0.0
    mismatches = {k: int(v) for k, v in
                  m.by_label("mirror_mismatches_total", "kind", database=db).items() if v}
    sizes, table_diffs = compare_tables(src, mir, db, tables)
    agent_errors = {c: int(m.get(c)) for c in AGENT_ERROR_COUNTERS}
    capture = capture_troubles(m)
    version = [lbl.get("version") for lbl, _ in m.select("mirror_build_info")]
    print(f"{db}: agent {version}; source log {logged} requests {kinds}, errors "
          f"{src_errors}; agent counted {counted}; outcomes {o}; compared {compared} / "
          f"mirrored {mirrored} = {fraction:.3f}; mismatches {mismatches}; order waits "
          f"{int(m.get('mirror_replay_order_waits_total'))}, pipelined "
          f"{int(m.get('mirror_replay_pipelined_total'))}; mirror log errors {mir_errors}; "
          f"source tables {sizes}; capture {capture or 'clean'}")

    problems = list(extra_problems)
    if counted != logged:
        problems.append(f"(a) the agent counted {counted} source requests in {db}, the "
                        f"source logged {logged} {kinds}; capture "
                        f"{capture or 'clean (no drops, gaps, limits, abandoned requests)'}")
    for d in table_diffs:
        problems.append(f"(b) mirror table differs: {d}")
    if any(agent_errors.values()):
        drops = {k: int(v) for k, v in
                 m.by_label("mirror_dropped_requests_total", "reason").items() if v}
        aborted = {k: int(v) for k, v in
                   m.by_label("mirror_units_aborted_total", "reason").items() if v}
        problems.append(f"(c) mirror errors {agent_errors}; drop reasons {drops}, "
                        f"transactions rolled back {aborted}; skip reasons "
                        f"{o['skip_reasons']}; mirror's log: {mir_errors} "
                        f"{mirror_error_messages(mir, db, msince, 5)}")
    if o["skipped"] or o["not_sampled"]:
        problems.append(f"(c) requests not mirrored: skipped {o['skipped']} "
                        f"{o['skip_reasons']}, not sampled {o['not_sampled']}")
    if mismatches:
        problems.append(f"(d) mismatches {mismatches} (compared {compared}, mirrored "
                        f"{mirrored})")
    if fraction < MIN_COMPARED_FRACTION:
        problems.append(f"(d) compared fraction {compared}/{mirrored} = {fraction:.3f} < "
                        f"{MIN_COMPARED_FRACTION}")
    try:
        check_invariant(m)
    except AssertionError as e:
        problems.append(f"metrics invariant: {e}")
    assert not problems, f"{db}: {len(problems)} failed checks:\n  " + "\n  ".join(problems)
    return {"logged": logged, "outcomes": o, "tables": sizes}


def run_case(pair, mirror_agent, db, schema, tables, drive, validate=None):
    """Schema on both clusters, the agent with default settings, drive(src, db) -> info
    (the workload, through the captured port), settle and stop the agent, then
    validate(records, info) -> [problems of the test itself] (asserted first: the
    workload did what the test claims) and the ground-truth checks."""
    src, mir = pair
    create_databases(pair, db, schema)
    since, msince = mark(src), mark(mir)
    # Default replay settings; --log-mismatches only logs (the agent's stderr is printed
    # when a test fails). PGSHADOW_CLIENTS_AGENT_ARGS adds flags, for diagnosis only
    # (e.g. "--mirror-queue 100000" tells drops apart from other failures).
    extra = ["--log-mismatches", LOG_MISMATCHES]
    extra += shlex.split(os.environ.get("PGSHADOW_CLIENTS_AGENT_ARGS", ""))
    agent = mirror_agent(src, mir, extra=extra)
    t0 = time.monotonic()
    info = drive(src, db)
    t1 = time.monotonic()
    m, _ = finish(agent)
    print(f"{db}: workload {t1 - t0:.1f}s, replay settled {time.monotonic() - t1:.1f}s "
          f"later; client says {info}")
    if validate is not None:
        records = source_records(src, db, since)
        bad = validate(records, info)
        assert not bad, f"{db}: the workload did not do what the test needs (a test " \
                        f"problem, not the agent's):\n  " + "\n  ".join(bad)
    out = verify(src, mir, m, db, since, msince, tables)
    out["queue_bytes_peak"] = int(m.get("mirror_queue_bytes_peak"))
    print(f"{db}: peak of the replay queue {out['queue_bytes_peak']} bytes "
          f"(budget {QUEUE_BUDGET})")
    return out


def run_cmd(argv, cwd=None, env=None, timeout=120):
    try:
        res = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                             cwd=cwd, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"timed out after {timeout}s: {' '.join(map(str, argv))}")
    assert res.returncode == 0, \
        f"failed (exit {res.returncode}): {' '.join(map(str, argv))}\n" \
        f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    return res


def last_json_line(text):
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("{")]
    assert lines, f"no JSON line in the client's output:\n{text[-2000:]}"
    return json.loads(lines[-1])


def one_transaction(records, what):
    """Problems unless the records all ran in one transaction (one Sync group or one
    explicit transaction: one virtual transaction id, at most one xid)."""
    vxids = {r.virtual_transaction_id for r in records}
    # the first write's record is logged before its xid is assigned (0)
    xids = {r.transaction_id for r in records} - {"0"}
    if len(vxids) != 1 or len(xids) > 1:
        return [f"{what}: {len(records)} executes in {len(vxids)} virtual transactions "
                f"({len(xids)} xids), expected one"]
    return []


# --------------------------------------------------------------------------- psycopg2

PSYCOPG2_ITEMS = 500
PSYCOPG2_TRANSFERS = 40


def test_psycopg2(pair, mirror_agent):
    """psycopg2: executemany of 500 INSERTs in a transaction, 40 transfer transactions
    (two UPDATEs and an INSERT each), a named (server-side) cursor read with fetchmany
    (DECLARE, FETCH FORWARD n ..., CLOSE), failing transactions (a unique violation; a
    division by zero followed by a statement in the aborted transaction, 25P02) and a
    failing autocommit statement."""
    db = "c_psycopg2"
    schema = BASE_SCHEMA + ["CREATE TABLE scans (name text PRIMARY KEY, nrows int, "
                            "idsum bigint, bytes bigint)"]
    tables = dict(BASE_TABLES, scans=("name", "nrows", "idsum", "bytes"))

    def drive(src, db):
        info = collections.Counter()
        conn = psycopg2.connect(src.conninfo(db))
        try:
            cur = conn.cursor()
            cur.executemany(
                "INSERT INTO items (id, grp, name, payload, price) VALUES (%s, %s, %s, %s, %s)",
                [(i, i % 7, f"item {i}", psycopg2.Binary(bytes([i % 256]) * (i % 50)),
                  decimal.Decimal(i) / 4) for i in range(1, PSYCOPG2_ITEMS + 1)])
            conn.commit()
            info["executemany"] = PSYCOPG2_ITEMS
            for k in range(1, PSYCOPG2_TRANSFERS + 1):
                a, b = k % 10 + 1, (k * 3) % 10 + 1
                amount = decimal.Decimal(k) / 4
                cur.execute("UPDATE accounts SET balance = balance - %s, updated_at = now() "
                            "WHERE id = %s", (amount, a))
                cur.execute("UPDATE accounts SET balance = balance + %s, updated_at = now() "
                            "WHERE id = %s", (amount, b))
                cur.execute("INSERT INTO ledger (id, account, amount, note) "
                            "VALUES (%s, %s, %s, 'transfer')", (k, a, amount))
                conn.commit()
                info["transfers"] += 1
            # server-side cursor: DECLARE, FETCH FORWARD 64 (fetchmany) until empty, CLOSE
            for name, grp in (("scan_all", None), ("scan_grp3", 3)):
                with conn.cursor(name=name) as scur:
                    if grp is None:
                        scur.execute("SELECT id, length(payload) FROM items ORDER BY id")
                    else:
                        scur.execute("SELECT id, length(payload) FROM items WHERE grp = %s "
                                     "ORDER BY id", (grp,))
                    nrows = idsum = nbytes = 0
                    while True:
                        rows = scur.fetchmany(64)
                        if not rows:
                            break
                        info["fetchmany"] += 1
                        nrows += len(rows)
                        idsum += sum(r[0] for r in rows)
                        nbytes += sum(r[1] for r in rows)
                cur.execute("INSERT INTO scans VALUES (%s, %s, %s, %s)",
                            (name, nrows, idsum, nbytes))
                conn.commit()
            # a failing transaction: unique violation, rolled back (the update with it)
            cur.execute("UPDATE accounts SET balance = balance + 1000 WHERE id = 1")
            try:
                cur.execute("INSERT INTO ledger (id, account, amount) VALUES (1, 1, 1000)")
                raise AssertionError("the duplicate insert did not fail")
            except psycopg2.errors.UniqueViolation:
                conn.rollback()
                info["failed_tx"] += 1
            # a failing transaction: division by zero, then a statement in the aborted
            # transaction (25P02), then rollback
            cur.execute("INSERT INTO ledger (id, account, amount) VALUES (900, 2, 1)")
            try:
                cur.execute("SELECT 1 / (balance - balance) FROM accounts WHERE id = 2")
                raise AssertionError("the division by zero did not fail")
            except psycopg2.errors.DivisionByZero:
                pass
            try:
                cur.execute("SELECT balance FROM accounts WHERE id = 2")
                raise AssertionError("a statement in an aborted transaction ran")
            except psycopg2.errors.InFailedSqlTransaction:
                conn.rollback()
                info["failed_tx"] += 1
            # a failing autocommit statement, and one that works after it
            conn.autocommit = True
            try:
                cur.execute("INSERT INTO ledger (id, account, amount) VALUES (2, 1, 5)")
                raise AssertionError("the duplicate insert did not fail")
            except psycopg2.errors.UniqueViolation:
                info["failed_autocommit"] += 1
            cur.execute("INSERT INTO ledger (id, account, amount, note) VALUES (901, 3, 7, 'ok')")
        finally:
            conn.close()
        return dict(info)

    def validate(records, info):
        bad = []
        fetches = execute_records(records, r'^statement: FETCH FORWARD 64 FROM "scan_')
        if len(fetches) != info["fetchmany"] + 2:  # the empty FETCH of each cursor
            bad.append(f"{len(fetches)} FETCH FORWARD records, {info['fetchmany']} "
                       f"fetchmany calls returned rows")
        if len(execute_records(records, r'^statement: DECLARE "scan_')) != 2:
            bad.append("no DECLARE of the named cursors in the log")
        inserts = execute_records(records, r"^statement: INSERT INTO items")
        if len(inserts) != PSYCOPG2_ITEMS:
            bad.append(f"{len(inserts)} INSERT INTO items records, executemany of "
                       f"{PSYCOPG2_ITEMS}")
        return bad

    run_case(pair, mirror_agent, db, schema, tables, drive, validate)


# --------------------------------------------------------------------------- psycopg 3

PSYCOPG3_PREPARED = 100
PSYCOPG3_BINARY = 100
PSYCOPG3_PIPELINE = 300
PSYCOPG3_MANY = 100


def test_psycopg3(pair, mirror_agent):
    """psycopg 3: 100 INSERTs with prepare=True (a named statement from the first
    execution), a SELECT run 30 times (prepared once prepare_threshold, 5, is reached),
    100 INSERTs with binary parameters (%b) and SELECTs with binary results
    (cursor(binary=True)), pipeline mode (300 INSERTs and 10 UPDATEs, one Sync),
    executemany of 100 rows (pipelined), a failing transaction (a unique violation, rolled
    back) and a failing pipeline (its third statement a unique violation: the implicit
    transaction of the Sync group rolls back, the fourth never runs)."""
    try:
        import psycopg
    except ImportError as e:
        pytest.fail(f"psycopg 3 is not installed ({e}): run `make deps` "
                    f"(python3-psycopg)")
    db = "c_psycopg3"

    def item(i):
        return (i, i % 7, f"item {i}", bytes([i % 256]) * (i % 40),
                decimal.Decimal(i) / 4)

    def drive(src, db):
        info = collections.Counter()
        conn = psycopg.connect(src.conninfo(db))
        try:
            assert conn.prepare_threshold == 5, conn.prepare_threshold
            cur = conn.cursor()
            for i in range(1, PSYCOPG3_PREPARED + 1):
                cur.execute("INSERT INTO items (id, grp, name, payload, price) "
                            "VALUES (%s, %s, %s, %s, %s)", item(i), prepare=True)
            conn.commit()
            for k in range(30):
                cur.execute("SELECT name, price FROM items WHERE id = %s", (k + 1,))
                assert cur.fetchone() is not None
            conn.commit()
            info["prepared"] = PSYCOPG3_PREPARED + 30

            bcur = conn.cursor(binary=True)
            for i in range(PSYCOPG3_PREPARED + 1, PSYCOPG3_PREPARED + PSYCOPG3_BINARY + 1):
                bcur.execute("INSERT INTO items (id, grp, name, payload, price) "
                             "VALUES (%b, %b, %b, %b, %b)", item(i))
            for g in range(7):
                bcur.execute("SELECT id, grp, name, payload, price FROM items "
                             "WHERE grp = %b ORDER BY id", (g,))
                info["binary_rows"] += len(bcur.fetchall())
            conn.commit()

            conn.autocommit = True
            first = PSYCOPG3_PREPARED + PSYCOPG3_BINARY + 1
            with conn.pipeline():
                for i in range(first, first + PSYCOPG3_PIPELINE):
                    cur.execute("INSERT INTO items (id, grp, name, payload, price) "
                                "VALUES (%s, %s, %s, %s, %s)", item(i))
                for k in range(1, 11):
                    cur.execute("UPDATE accounts SET balance = balance + %s, "
                                "updated_at = now() WHERE id = %s", (k, k))
            info["pipelined"] = PSYCOPG3_PIPELINE + 10

            cur.executemany("INSERT INTO ledger (id, account, amount, note) "
                            "VALUES (%s, %s, %s, %s)",
                            [(k, k % 10 + 1, decimal.Decimal(k) / 8, "many")
                             for k in range(1, PSYCOPG3_MANY + 1)])
            info["executemany"] = PSYCOPG3_MANY

            try:
                with conn.transaction():
                    cur.execute("UPDATE accounts SET balance = balance + 1000 WHERE id = 1")
                    cur.execute("INSERT INTO ledger (id, account, amount) VALUES (1, 1, 1)")
                raise AssertionError("the duplicate insert did not fail")
            except psycopg.errors.UniqueViolation:
                info["failed_tx"] += 1

            try:
                with conn.pipeline():
                    cur.execute("INSERT INTO ledger (id, account, amount) VALUES (%s, 2, 2)",
                                (5001,))
                    cur.execute("UPDATE accounts SET balance = balance - 500 WHERE id = %s",
                                (2,))
                    cur.execute("INSERT INTO ledger (id, account, amount) VALUES (%s, 2, 2)",
                                (1,))
                    cur.execute("INSERT INTO ledger (id, account, amount) VALUES (%s, 2, 2)",
                                (5002,))
                raise AssertionError("the failing pipeline did not fail")
            except psycopg.errors.UniqueViolation:
                info["failed_pipeline"] += 1
            cur.execute("INSERT INTO ledger (id, account, amount, note) "
                        "VALUES (%s, 3, 3, 'after')", (5003,))
        finally:
            conn.close()
        return dict(info)

    def validate(records, info):
        bad = []
        named = execute_records(records, r"^execute _pg3_\d+: ")
        if len(named) < PSYCOPG3_PREPARED + 30 - 4:
            bad.append(f"only {len(named)} executes of named statements (_pg3_n)")
        pipe = execute_records(records, r"^execute \S+: INSERT INTO items")
        pipe = [r for r in pipe if r.virtual_transaction_id == pipe[-1].virtual_transaction_id] \
            if pipe else []
        bad += one_transaction(pipe, "the pipeline") if pipe else ["no pipeline in the log"]
        if len(pipe) != PSYCOPG3_PIPELINE:
            bad.append(f"the pipeline's transaction has {len(pipe)} INSERT executes, "
                       f"{PSYCOPG3_PIPELINE} sent")
        failed = execute_records(records,
                                 r"^execute \S+: INSERT INTO ledger .*VALUES \(\$1, 2, 2\)")
        if len(failed) != 2:  # 5001 and the duplicate; 5002 was skipped by the server
            bad.append(f"{len(failed)} executes of the failing pipeline's inserts, expected 2")
        return bad

    run_case(pair, mirror_agent, db, BASE_SCHEMA, BASE_TABLES, drive, validate)


# --------------------------------------------------------------------------- asyncpg

ASYNCPG_ITEMS = 200
ASYNCPG_FETCHROWS = 100
ASYNCPG_BULK = 10000
ASYNCPG_COPY = 2000
COPY_T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def test_asyncpg(pair, mirror_agent):
    """asyncpg (binary parameters and results throughout): a named prepared INSERT run
    200 times and a prepared SELECT, 100 fetchrow() calls on multi-row results (Execute
    with a row limit of 1, answered PortalSuspended), executemany of 10,000 rows in one
    call (one Sync group: one implicit transaction on the source) which must be mirrored
    whole, a cursor over INSERT ... RETURNING fetched 30 rows at a time with an UPDATE
    between fetches (the mirror runs the INSERT once: a resumption of the suspended portal
    after another statement is not a new execution), a binary COPY of 2,000 records
    (copy_records_to_table), savepoints (one
    released, one rolled back after a unique violation), failing transactions (a unique
    violation inside, rolled back) and a failing autocommit statement."""
    try:
        import asyncpg
    except ImportError as e:
        pytest.fail(f"asyncpg is not installed ({e}): run `make deps` (python3-asyncpg)")
    db = "c_asyncpg"
    schema = BASE_SCHEMA + [
        "CREATE TABLE bulk (id int PRIMARY KEY, k int NOT NULL, v float8, note text, "
        "flag bool)",
        "CREATE TABLE copied (id int PRIMARY KEY, label text, amount numeric(12,3), "
        "at timestamptz, data bytea)",
        "CREATE TABLE fetched (id int PRIMARY KEY, name text)",
    ]
    tables = dict(BASE_TABLES, bulk=("id", "k", "v", "note", "flag"),
                  copied=("id", "label", "amount", "at", "data"), fetched=("id", "name"))

    async def workload(src, db, info):
        conn = await asyncpg.connect(host=src.host, port=src.port, user=pgh.PG_DB_USER,
                                     database=db)
        try:
            ins = await conn.prepare("INSERT INTO items (id, grp, name, payload, price) "
                                     "VALUES ($1, $2, $3, $4, $5)")
            for i in range(1, ASYNCPG_ITEMS + 1):
                await ins.fetch(i, i % 7, f"item {i}", bytes([i % 256]) * (i % 40),
                                decimal.Decimal(i) / 4)
            sel = await conn.prepare("SELECT id, name, payload, price FROM items "
                                     "WHERE grp = $1 ORDER BY id")
            for g in range(7):
                info["selected"] += len(await sel.fetch(g))

            for k in range(ASYNCPG_FETCHROWS):
                if k % 2:
                    row = await sel.fetchrow(k % 7)
                else:
                    row = await conn.fetchrow("SELECT id, name FROM items WHERE id > $1 "
                                              "ORDER BY id", k)
                assert row is not None
                info["fetchrow"] += 1

            # a cursor: Executes with a row limit of 30 on one portal, the source
            # answering PortalSuspended, an UPDATE between some fetches
            async with conn.transaction():
                async for r in conn.cursor("INSERT INTO fetched (id, name) SELECT id, name "
                                           "FROM items RETURNING id", prefetch=30):
                    info["cursor_rows"] += 1
                    if r["id"] % 50 == 0:
                        await conn.execute("UPDATE items SET name = name || '!' "
                                           "WHERE id = $1", r["id"])

            await conn.executemany(
                "INSERT INTO bulk (id, k, v, note, flag) VALUES ($1, $2, $3, $4, $5)",
                [(i, i % 100, i * 1.5, f"bulk {i}", i % 3 == 0)
                 for i in range(1, ASYNCPG_BULK + 1)])
            info["executemany"] = ASYNCPG_BULK

            res = await conn.copy_records_to_table(
                "copied", columns=["id", "label", "amount", "at", "data"],
                records=[(i, f"copied {i}", decimal.Decimal(i) / 1000,
                          COPY_T0 + datetime.timedelta(seconds=i), bytes([i % 256]) * 3)
                         for i in range(1, ASYNCPG_COPY + 1)])
            assert res == f"COPY {ASYNCPG_COPY}", res
            info["copied"] = ASYNCPG_COPY

            # savepoints: one rolled back after an error, one released
            async with conn.transaction():
                await conn.execute("UPDATE accounts SET balance = balance - $1, "
                                   "updated_at = now() WHERE id = $2", 10, 3)
                try:
                    async with conn.transaction():
                        await conn.execute("INSERT INTO ledger (id, account, amount, note) "
                                           "VALUES ($1, $2, $3, $4)", 1, 3, 10, "sp1")
                        await conn.execute("INSERT INTO ledger (id, account, amount, note) "
                                           "VALUES ($1, $2, $3, $4)", 1, 3, 10, "duplicate")
                    raise AssertionError("the duplicate insert did not fail")
                except asyncpg.UniqueViolationError:
                    info["rolled_back_savepoint"] += 1
                async with conn.transaction():
                    await conn.execute("INSERT INTO ledger (id, account, amount, note) "
                                       "VALUES ($1, $2, $3, $4)", 2, 3, 10, "sp2")
                    info["released_savepoint"] += 1

            # failing transactions
            for k in range(5):
                try:
                    async with conn.transaction():
                        await conn.execute("UPDATE accounts SET balance = balance + $1 "
                                           "WHERE id = $2", 1000, k + 1)
                        await conn.execute("INSERT INTO ledger (id, account, amount) "
                                           "VALUES ($1, $2, $3)", 2, k + 1, 1)
                    raise AssertionError("the duplicate insert did not fail")
                except asyncpg.UniqueViolationError:
                    info["failed_tx"] += 1
            try:
                await conn.execute("INSERT INTO ledger (id, account, amount) VALUES ($1, $2, $3)",
                                   2, 1, 1)  # 1 went with the rolled-back savepoint
                raise AssertionError("the duplicate insert did not fail")
            except asyncpg.UniqueViolationError:
                info["failed_autocommit"] += 1
            await conn.execute("INSERT INTO ledger (id, account, amount, note) "
                               "VALUES ($1, $2, $3, $4)", 3, 4, 5, "after")
        finally:
            await conn.close()

    def drive(src, db):
        info = collections.Counter()
        asyncio.run(workload(src, db, info))
        return dict(info)

    def validate(records, info):
        bad = []
        bulk = execute_records(records, r"^execute __asyncpg_stmt_\w+__: INSERT INTO bulk")
        if len(bulk) != ASYNCPG_BULK:
            bad.append(f"{len(bulk)} executes of the executemany, {ASYNCPG_BULK} rows")
        bad += one_transaction(bulk, "executemany")
        fetches = execute_records(records, r"^execute fetch from \S+: INSERT INTO fetched")
        if not fetches:
            bad.append("the cursor's INSERT was never resumed (no 'execute fetch from')")
        if info.get("cursor_rows") != ASYNCPG_ITEMS:
            bad.append(f"the cursor returned {info.get('cursor_rows')} rows")
        if not execute_records(records, r"(?i)^statement: COPY .*copied.*FROM STDIN.*binary"):
            bad.append("no binary COPY ... FROM STDIN in the log")
        if len(execute_records(records, r"^statement: SAVEPOINT ")) != 2:
            bad.append("not two SAVEPOINTs in the log")
        named = execute_records(records, r"^execute __asyncpg_stmt_\w+__: SELECT")
        if len(named) < 7 + ASYNCPG_FETCHROWS:
            bad.append(f"{len(named)} executes of named SELECT statements")
        return bad

    out = run_case(pair, mirror_agent, db, schema, tables, drive, validate)
    assert out["tables"]["bulk"] == ASYNCPG_BULK, out["tables"]
    assert out["tables"]["fetched"] == ASYNCPG_ITEMS, out["tables"]
    # the 10,000-row batch went through the default byte budget, whole
    assert 0 < out["queue_bytes_peak"] <= QUEUE_BUDGET, out["queue_bytes_peak"]


# --------------------------------------------------------------------------- node-postgres

def test_node_postgres(pair, mirror_agent):
    """node-postgres (npm `pg`, tests/integration/clients/node/client.js): 200 executions
    of a named INSERT and 21 of a named SELECT (Parse once per connection), a transaction
    of 60 named statements, a failing statement, a failing transaction, unnamed
    parameterized INSERTs."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"node-postgres needs node and npm (node: {node}, npm: {npm}); "
                    f"`make deps` installs nodejs and npm")
    if not (NODE_DIR / "node_modules" / "pg" / "package.json").is_file():
        run_cmd([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                timeout=300)

    def drive(src, db):
        cfg = {"host": src.host, "port": src.port, "user": pgh.PG_DB_USER, "database": db}
        res = run_cmd([node, NODE_DIR / "client.js", json.dumps(cfg)], cwd=NODE_DIR)
        return last_json_line(res.stdout)

    def validate(records, info):
        bad = []
        if info.get("errors") != ["23505", "23505"] or info.get("items") != 200:
            bad.append(f"the client reported {info}")
        named = execute_records(records, r"^execute (insert-item|items-by-grp|debit|credit|"
                                         r"ledger): ")
        if len(named) != 200 + 21 + 60 + 1 + 1 + 1:
            bad.append(f"{len(named)} executes of named statements, expected 284")
        return bad

    run_case(pair, mirror_agent, "c_node", BASE_SCHEMA, BASE_TABLES, drive, validate)


# --------------------------------------------------------------------------- JDBC

JDBC_BATCH = 1000


def test_jdbc(pair, mirror_agent, tmp_path):
    """pgjdbc (tests/integration/clients/java/Client.java, compiled with javac at test
    time): a PreparedStatement INSERT run 30 times and a SELECT run 20 times (named
    server-side statements once prepareThreshold, 5, is reached), executeBatch of 1,000
    INSERTs in one transaction (must be mirrored whole), a failing transaction."""
    javac, java = shutil.which("javac"), shutil.which("java")
    if javac is None or java is None or not PGJDBC_JAR.is_file():
        pytest.fail(f"JDBC needs javac, java and {PGJDBC_JAR} (javac: {javac}, java: "
                    f"{java}): run `make deps` (default-jdk-headless, "
                    f"libpostgresql-jdbc-java)")
    classes = tmp_path / "java"
    classes.mkdir()
    run_cmd([javac, "-cp", PGJDBC_JAR, "-d", classes, JAVA_DIR / "Client.java"], timeout=120)
    db = "c_jdbc"
    schema = BASE_SCHEMA + ["CREATE TABLE batch (id int PRIMARY KEY, k int NOT NULL, "
                            "note text, created_at timestamptz NOT NULL DEFAULT now())"]
    tables = dict(BASE_TABLES, batch=("id", "k", "note"))

    def drive(src, db):
        url = f"jdbc:postgresql://{src.host}:{src.port}/{db}"
        res = run_cmd([java, "-cp", f"{classes}:{PGJDBC_JAR}", "Client", url], timeout=120)
        return last_json_line(res.stdout)

    def validate(records, info):
        bad = []
        if not info.get("server_prepared") or info.get("batched") != JDBC_BATCH or \
                info.get("failed_sqlstate") != "23505":
            bad.append(f"the client reported {info}")
        batch = execute_records(records, r"^execute \S+: INSERT INTO batch")
        if len(batch) != JDBC_BATCH:
            bad.append(f"{len(batch)} executes of the batch, {JDBC_BATCH} added")
        named = execute_records(records, r"^execute S_\d+: ")
        if len(named) < JDBC_BATCH:
            bad.append(f"only {len(named)} executes of server-side prepared statements (S_n)")
        bad += one_transaction(batch, "executeBatch")
        return bad

    out = run_case(pair, mirror_agent, db, schema, tables, drive, validate)
    assert out["tables"]["batch"] == JDBC_BATCH, out["tables"]
    assert 0 < out["queue_bytes_peak"] <= QUEUE_BUDGET, out["queue_bytes_peak"]


# --------------------------------------------------------------------------- pgbench pipeline

PGB_ACCOUNTS = 100
PGB_CLIENTS = 2
PGB_TRANSACTIONS = 300  # per client
PGB_RATE = 200          # transactions per second, all clients together (see the test)
PGB_SCRIPT = f"""\\set aid random(1, {PGB_ACCOUNTS})
\\set delta random(-500, 500)
\\startpipeline
UPDATE acc SET bal = bal + :delta, mtime = now() WHERE id = :aid;
SELECT bal FROM acc WHERE id = :aid;
INSERT INTO hist (aid, delta, mtime) VALUES (:aid, :delta, now());
\\endpipeline
"""


@pytest.mark.parametrize("mode", ["extended", "prepared"])
def test_pgbench_pipeline(pair, mirror_agent, tmp_path, mode):
    """libpq pipeline mode: pgbench -M extended / prepared, 2 clients x 300 transactions
    of an UPDATE, a SELECT and an INSERT between \\startpipeline and \\endpipeline (three
    Executes, one Sync: one implicit transaction), at 200 transactions/s in all (-R): what
    is tested is the replay of pipelines, not whether a mirror sharing this machine's
    CPUs keeps up with an unthrottled pgbench (the default 100-request queue then drops,
    as test_mirror.py's backpressure test shows). The balances are additive, so the
    mirror's table equals the source's whatever order the two sessions' pipelines
    replay in."""
    db = f"c_pgbench_{mode}"
    schema = [
        "CREATE TABLE acc (id int PRIMARY KEY, bal bigint NOT NULL, mtime timestamptz)",
        f"INSERT INTO acc (id, bal) SELECT g, 0 FROM generate_series(1, {PGB_ACCOUNTS}) g",
        "CREATE TABLE hist (aid int NOT NULL, delta int NOT NULL, mtime timestamptz)",
    ]
    tables = {"acc": ("id", "bal"), "hist": ("aid", "delta")}
    script = tmp_path / "pipeline.sql"
    script.write_text(PGB_SCRIPT)
    script.chmod(0o644)

    def drive(src, db):
        res = src.pgbench(["-n", "-M", mode, "-c", PGB_CLIENTS, "-j", PGB_CLIENTS,
                           "-R", PGB_RATE, "-t", PGB_TRANSACTIONS, "-f", script], db)
        assert res.transactions == PGB_CLIENTS * PGB_TRANSACTIONS, res.stdout
        return {"transactions": res.transactions, "tps": res.tps}

    def validate(records, info):
        want = 3 * PGB_CLIENTS * PGB_TRANSACTIONS
        if len(records) != want:
            return [f"the source logged {len(records)} requests, pgbench sent {want}"]
        per_tx = collections.Counter((r.session_id, r.virtual_transaction_id)
                                     for r in records)
        if set(per_tx.values()) != {3}:
            return [f"pipelines are not one transaction of 3 executes each: "
                    f"{collections.Counter(per_tx.values())}"]
        if mode == "prepared" and len(execute_records(records, r"^execute P_\d+: ")) != want:
            return ["-M prepared did not execute named statements P_n"]
        return []

    run_case(pair, mirror_agent, db, schema, tables, drive, validate)
