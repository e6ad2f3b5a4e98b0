"""Integration tests of the mirror's policy (issue 5): sampling, write safety, filters,
read_only mode and comparing the mirror's answers with the source's.

Same setup as test_mirror.py (whose fixtures and helpers this module uses): a real source
and a real mirror PostgreSQL 15 cluster per test, the real agent on lo mirroring with the
flags under test, traffic on the source only, /metrics settled before asserting, SIGINT
(exit 0) at the end, and the outcome invariant checked every time.

Ground truth is the mirror's own tables (what it kept) and the source's csvlog (what the
source served); the agent's counters must agree with both.
"""

import math
import random
import re
import subprocess

import psycopg2
import pytest

import pg_harness as pgh
import pgshadow_harness as h
from test_mirror import (  # noqa: F401 - pytest fixtures are used by name
    PGBENCH_TABLE_QUERIES, UNTHROTTLED_QUEUE, check_invariant, check_source_clean, connect,
    finish, mark, mirror_agent, mirror_agent_bin, pair)

DB = "policy"


def mismatches(m):
    return {k: int(v) for k, v in m.by_label("mirror_mismatches_total", "kind").items()}


def compared(m):
    return int(sum(v for _, v in m.select("mirror_compared_total")))


def skipped(m, reason):
    return int(sum(v for labels, v in m.select("mirror_requests_skipped_total")
                   if dict(labels).get("reason") == reason))


def not_sampled(m):
    return int(sum(v for _, v in m.select("mirror_requests_not_sampled_total")))


def run_statements(pg, db, statements, expect_errors=()):
    """Runs each statement in autocommit on its own connection (one Query each); those in
    expect_errors must fail with that SQLSTATE (a dict statement -> code)."""
    conn = connect(pg, db)
    try:
        cur = conn.cursor()
        for sql in statements:
            code = expect_errors.get(sql) if isinstance(expect_errors, dict) else None
            try:
                cur.execute(sql)
                assert code is None, f"{sql!r} succeeded on the source, expected {code}"
            except psycopg2.Error as e:
                assert e.pgcode == code, f"{sql!r} failed with {e.pgcode}, expected {code}"
    finally:
        conn.close()


# --------------------------------------------------------------------------- sampling

def test_exposure_quarter_whole_transactions(pair, mirror_agent):
    """--mirror-exposure 0.25 over 2000 TPC-B transactions (-c 4 -t 500): the fraction of
    transactions that reached the mirror (its pgbench_history rows / the source's) is
    within 4 standard deviations of 0.25, and no transaction was cut in half: on the
    mirror every account's, teller's and branch's balance equals the sum of the deltas of
    the history rows the mirror kept for it (each history row's three UPDATEs happened
    there too, and no UPDATE happened without its history row)."""
    src, mir = pair
    for pg in (src, mir):
        pg.createdb(DB)
        pg.pgbench_init(DB)
    since = mark(src)
    agent = mirror_agent(src, mir, extra=["--mirror-exposure", "0.25",
                                          "--mirror-queue", UNTHROTTLED_QUEUE])
    res = src.pgbench(["-n", "-M", "prepared", "-c", 4, "-j", 2, "-t", 500], DB)
    m, _ = finish(agent)
    served = check_source_clean(src, m, DB, since)
    o = check_invariant(m)
    n = res.transactions
    kept = int(mir.scalar("SELECT count(*) FROM pgbench_history", DB))
    frac = kept / n
    sd = math.sqrt(0.25 * 0.75 / n)
    print(f"exposure 0.25: {kept} of {n} transactions mirrored ({frac:.4f}, sd {sd:.4f}); "
          f"outcomes {o}")
    assert abs(frac - 0.25) <= 4 * sd, \
        f"{kept}/{n} = {frac:.4f} transactions mirrored, expected 0.25 +- {4 * sd:.4f}"
    # 7 requests per transaction: BEGIN, 3 UPDATE, SELECT, INSERT, END; pgbench's own
    # setup connection (scale and partition checks) may be sampled too
    setup = served - 7 * n
    assert 7 * kept <= o["mirrored"] <= 7 * kept + setup, \
        f"mirrored {o['mirrored']} requests for {kept} transactions (7 each, plus at most " \
        f"{setup} of pgbench's setup): {o}"
    assert o["not_sampled"] + o["mirrored"] == served, o
    assert o["skipped"] == 0 and o["dropped"] == 0 and o["query"] == 0, o
    for table, key, col in (("pgbench_accounts", "aid", "abalance"),
                            ("pgbench_tellers", "tid", "tbalance"),
                            ("pgbench_branches", "bid", "bbalance")):
        bad = mir.query(
            f"SELECT t.{key}, t.{col}, coalesce(h.s, 0) FROM {table} t LEFT JOIN "
            f"(SELECT {key}, sum(delta) s FROM pgbench_history GROUP BY {key}) h "
            f"USING ({key}) WHERE t.{col} <> coalesce(h.s, 0) LIMIT 5", DB)
        assert not bad, f"{table} on the mirror disagrees with its history " \
                        f"({key}, balance, sum of deltas): {bad}"


# --------------------------------------------------------------------------- write safety

UNIQUE_SETUP_SOURCE = "CREATE TABLE u (id int PRIMARY KEY, note text)"
UNIQUE_SETUP_MIRROR = "CREATE TABLE u (id int, note text)"  # the constraint is missing


def test_failed_writes_never_kept(pair, mirror_agent, tmp_path):
    """A unique violation that happens on the source but not on the mirror (the mirror
    lacks the constraint) leaves no row on the mirror: as a standalone statement (simple
    and extended protocol: it runs there inside BEGIN ... ROLLBACK) and inside an explicit
    transaction (the COMMIT the source answered with ROLLBACK is replayed as ROLLBACK).
    The rows the source kept are on the mirror; mismatches of kind sqlstate are counted
    (the mirror succeeded where the source failed); no mirror errors."""
    src, mir = pair
    for pg, ddl in ((src, UNIQUE_SETUP_SOURCE), (mir, UNIQUE_SETUP_MIRROR)):
        pg.createdb(DB)
        pg.psql([ddl, "INSERT INTO u VALUES (1, 'seed')"], db=DB)
    since = mark(src)
    agent = mirror_agent(src, mir)
    dup = "INSERT INTO u VALUES (1, 'standalone')"
    run_statements(src, DB, ["INSERT INTO u VALUES (2, 'kept')", dup], {dup: "23505"})
    conn = psycopg2.connect(src.conninfo(DB))  # psycopg2 opens a transaction
    cur = conn.cursor()
    cur.execute("INSERT INTO u VALUES (3, 'in aborted txn')")
    with pytest.raises(psycopg2.Error) as e:
        cur.execute("INSERT INTO u VALUES (1, 'in txn')")
    assert e.value.pgcode == "23505"
    conn.commit()  # the source answers ROLLBACK
    conn.close()
    script = tmp_path / "dup.sql"
    script.write_text("INSERT INTO u VALUES (1, 'extended');\n")
    pgh_res = src.pgbench(["-n", "-M", "extended", "-t", 1, "-f", script], DB, check=False)
    assert "duplicate key" in pgh_res.stderr, pgh_res.stderr
    m, _ = finish(agent)
    o = check_invariant(m)
    rows = mir.query("SELECT id, note FROM u ORDER BY id, note", DB)
    print(f"mirror rows {rows}; outcomes {o}; mismatches {mismatches(m)}")
    assert rows == [["1", "seed"], ["2", "kept"]], \
        f"the mirror kept rows the source did not: {rows}"
    assert src.query("SELECT id, note FROM u ORDER BY id", DB) == rows
    assert o["query"] == 0 and o["connection"] == 0 and o["skipped"] == 0, o
    # the three failed INSERTs (standalone simple, in the transaction, extended) succeeded
    # on the mirror: a difference in SQLSTATE each
    assert mismatches(m)["sqlstate"] == 3, mismatches(m)


def test_aborted_skip(pair, mirror_agent):
    """--mirror-aborted skip: transactions the source rolled back are not replayed at all
    (skipped, reason aborted); committed ones are."""
    src, mir = pair
    for pg, ddl in ((src, UNIQUE_SETUP_SOURCE), (mir, UNIQUE_SETUP_MIRROR)):
        pg.createdb(DB)
        pg.psql(ddl, db=DB)
    agent = mirror_agent(src, mir, extra=["--mirror-aborted", "skip"])
    conn = psycopg2.connect(src.conninfo(DB))
    cur = conn.cursor()
    for i in range(10):
        cur.execute("INSERT INTO u VALUES (%s, 'x')", (100 + i,))
        if i % 2:
            conn.rollback()
        else:
            conn.commit()
    conn.close()
    m, _ = finish(agent)
    o = check_invariant(m)
    rows = [int(r[0]) for r in mir.query("SELECT id FROM u ORDER BY id", DB)]
    print(f"mirror ids {rows}; outcomes {o}")
    assert rows == [100, 102, 104, 106, 108], rows
    # each transaction: BEGIN, INSERT, COMMIT/ROLLBACK
    assert skipped(m, "aborted") == 15, o
    assert o["mirrored"] == 15, o


# --------------------------------------------------------------------------- filters

LEVEL_WORKLOAD = [
    "CREATE TABLE newt (a int)",
    "INSERT INTO d VALUES (1)",
    "ALTER TABLE d ADD COLUMN b int",
    "SET work_mem = '8MB'",
    "SELECT count(*) FROM d",
    "UPDATE d SET a = a + 1",
]


@pytest.mark.parametrize("level", ["ddl", "dml"])
def test_level_filter(pair, mirror_agent, level):
    """--mirror-level ddl replays only CREATE/ALTER (and SET); dml only
    INSERT/SELECT/UPDATE (and SET). The mirror's catalog and rows show which reached it;
    the others are skipped with reason level."""
    src, mir = pair
    for pg in (src, mir):
        pg.createdb(DB)
        pg.psql("CREATE TABLE d (a int)", db=DB)
    agent = mirror_agent(src, mir, extra=["--mirror-level", level])
    run_statements(src, DB, LEVEL_WORKLOAD)
    m, _ = finish(agent)
    o = check_invariant(m)
    has_newt = mir.scalar("SELECT to_regclass('newt') IS NOT NULL", DB) == "t"
    cols = [r[0] for r in mir.query("SELECT attname FROM pg_attribute WHERE attrelid = "
                                    "'d'::regclass AND attnum > 0 ORDER BY attnum", DB)]
    n_rows = int(mir.scalar("SELECT count(*) FROM d", DB))
    print(f"level {level}: newt {has_newt}, d columns {cols}, d rows {n_rows}; {o}")
    if level == "ddl":
        assert has_newt and cols == ["a", "b"] and n_rows == 0
        assert skipped(m, "level") == 3 and o["mirrored"] == 3, o
    else:
        assert not has_newt and cols == ["a"] and n_rows == 1
        assert int(mir.scalar("SELECT max(a) FROM d", DB)) == 2
        assert skipped(m, "level") == 2 and o["mirrored"] == 4, o
    assert o["query"] == 0, o


def test_read_only_mode(pair, mirror_agent):
    """--mirror-mode read_only: TPC-B on the source changes no row on the mirror; the
    UPDATEs and INSERTs are skipped (reason write), the SELECTs (and BEGIN/END) are
    mirrored without error."""
    src, mir = pair
    for pg in (src, mir):
        pg.createdb(DB)
        pg.pgbench_init(DB)
    before = {k: mir.query(q, DB) for k, q in PGBENCH_TABLE_QUERIES.items()}
    agent = mirror_agent(src, mir, extra=["--mirror-mode", "read_only",
                                          "--mirror-queue", UNTHROTTLED_QUEUE])
    res = src.pgbench(["-n", "-c", 2, "-j", 2, "-t", 100], DB)
    m, _ = finish(agent)
    o = check_invariant(m)
    after = {k: mir.query(q, DB) for k, q in PGBENCH_TABLE_QUERIES.items()}
    n = res.transactions
    print(f"read_only: {n} transactions; outcomes {o}")
    assert after == before, "the mirror's pgbench tables changed in read_only mode"
    assert skipped(m, "write") == 4 * n, o   # 3 UPDATE + 1 INSERT per transaction
    # BEGIN, SELECT, END; pgbench's setup connection (its scale check) reads too
    assert 3 * n <= o["mirrored"] <= 3 * n + 2, o
    assert o["query"] == 0 and o["dropped"] == 0, o


# --------------------------------------------------------------------------- compare

COMPARE_ROWS = 100
COMPARE_WORKLOAD = [
    "SELECT v FROM c WHERE id = 50",                     # mirror lacks it: rowcount, rows
    "SELECT count(*) FROM c",                            # one row each, other value: rows
    "SELECT v FROM c WHERE id = 10",                     # equal
    "SELECT id, v FROM c WHERE id BETWEEN 60 AND 90",    # equal, in another order
    "SELECT 1/0",                                        # the same error on both
    "SELECT * FROM no_such_table",                       # the same error on both
]
COMPARE_ERRORS = {"SELECT 1/0": "22012", "SELECT * FROM no_such_table": "42P01"}
REPEAT = 3


def compare_setup(src, mir):
    src.createdb(DB)
    mir.createdb(DB)
    src.psql(["CREATE TABLE c (id int PRIMARY KEY, v text)",
              f"INSERT INTO c SELECT i, md5(i::text) FROM generate_series(1, {COMPARE_ROWS}) i"],
             db=DB)
    ids = [i for i in range(1, COMPARE_ROWS + 1) if i != 50]
    random.Random(7).shuffle(ids)  # another physical order, and no index
    mir.psql(["CREATE TABLE c (id int, v text)",
              "INSERT INTO c SELECT i, md5(i::text) FROM unnest(ARRAY[%s]) i"
              % ",".join(map(str, ids))], db=DB)


@pytest.mark.parametrize("mode,expected", [
    ("rows", {"tag": 0, "rowcount": REPEAT, "sqlstate": 0, "rows": 2 * REPEAT}),
    ("status", {"tag": 0, "rowcount": REPEAT, "sqlstate": 0, "rows": 0}),
    ("none", None),
])
def test_compare_modes(pair, mirror_agent, mode, expected):
    """A mirror with one row fewer and without the index: --mirror-compare rows counts
    exactly the affected SELECTs (the missing row: rowcount and rows; count(*): rows; a
    range returned in another order: equal), status only the row-count ones, none
    compares nothing. Errors the source also returned (division by zero, missing table)
    are mirrored and equal, not mirror errors."""
    src, mir = pair
    compare_setup(src, mir)
    agent = mirror_agent(src, mir, extra=["--mirror-compare", mode])
    run_statements(src, DB, COMPARE_WORKLOAD * REPEAT, COMPARE_ERRORS)
    m, _ = finish(agent)
    o = check_invariant(m)
    mm = mismatches(m)
    print(f"compare {mode}: mismatches {mm}, compared {compared(m)}; outcomes {o}")
    n = len(COMPARE_WORKLOAD) * REPEAT
    assert o["mirrored"] == n and o["query"] == 0, o
    if expected is None:
        assert compared(m) == 0 and not any(mm.values()), mm
    else:
        assert compared(m) == n, compared(m)
        assert mm == expected, f"mismatches {mm}, expected {expected}"


def test_compare_rows_identical_mirror(pair, mirror_agent):
    """Identical mirrors: zero mismatches with --mirror-compare rows over pgbench (TPC-B,
    extended protocol) and a psycopg2 workload of many types, NULLs and empty results."""
    src, mir = pair
    for pg in (src, mir):
        pg.createdb(DB)
        pg.pgbench_init(DB)
        pg.psql("CREATE TABLE types (id int, t text, n numeric, f float8, b bytea, "
                "ts timestamptz, j jsonb, a int[], x bool)", db=DB)
    agent = mirror_agent(src, mir, extra=["--mirror-compare", "rows",
                                          "--mirror-queue", UNTHROTTLED_QUEUE])
    res = src.pgbench(["-M", "extended", "-c", 2, "-j", 2, "-t", 100], DB)
    conn = connect(src, DB)
    cur = conn.cursor()
    for i in range(30):
        cur.execute("INSERT INTO types VALUES (%s, %s, %s, %s, %s, "
                    "'2026-01-02 03:04:05+00', %s, %s, %s)",
                    (i, None if i % 7 == 0 else f"t{i}", i / 3, i * 1.5, bytes([i, 0, 255]),
                     '{"k": %d}' % i, [i, i + 1], i % 2 == 0))
    for q in ("SELECT * FROM types", "SELECT * FROM types WHERE id > 1000",
              "SELECT t, count(*) FROM types GROUP BY t", "SELECT j->>'k' FROM types",
              "SELECT * FROM pgbench_branches"):
        cur.execute(q)
        cur.fetchall()
    conn.close()
    m, _ = finish(agent)
    o = check_invariant(m)
    print(f"identical: {res.transactions} transactions; compared {compared(m)}, "
          f"mismatches {mismatches(m)}; outcomes {o}")
    assert o["query"] == 0 and o["skipped"] == 0 and o["dropped"] == 0, o
    assert compared(m) == o["mirrored"], (compared(m), o)
    assert not any(mismatches(m).values()), mismatches(m)


# Differs between the two clusters (they listen on different ports) and nothing in its
# parse tree says so: only a declaration (--mirror-compare-ignore) keeps it out.
PORT_QUERY = "SELECT current_setting('port') AS p"
# Differ between clusters and between runs; the parse tree says so (fingerprint.h).
NONDETERMINISTIC = ["SELECT now() AS t, id FROM c WHERE id < 3 ORDER BY id",
                    "SELECT clock_timestamp()",
                    "SELECT id FROM c LIMIT 2",
                    "SELECT CURRENT_TIMESTAMP"]


def test_compare_nondeterministic_and_declared(pair, mirror_agent, agent_bin):
    """--mirror-compare rows on identical data: statements whose rows are not deterministic
    (now(), clock_timestamp(), LIMIT without ORDER BY, CURRENT_TIMESTAMP) compare equal
    (tag and row count only); a statement that differs between the clusters without the
    tree showing it (current_setting('port')) is a rows mismatch, logged with its
    fingerprint, and that fingerprint given to --mirror-compare-ignore keeps it out of the
    comparison: 0 mismatches, compared = mirrored - its calls. A bad fingerprint stops the
    agent at start."""
    src, mir = pair
    for pg in (src, mir):
        pg.createdb(DB)
        pg.psql(["CREATE TABLE c (id int PRIMARY KEY, v text)",
                 "INSERT INTO c SELECT i, md5(i::text) FROM generate_series(1, 20) i"], db=DB)
    workload = (NONDETERMINISTIC + [PORT_QUERY]) * 3

    agent = mirror_agent(src, mir, extra=["--mirror-compare", "rows", "--log-mismatches", 10])
    run_statements(src, DB, workload)
    m, res = finish(agent)
    o = check_invariant(m)
    mm = mismatches(m)
    print(f"undeclared: mismatches {mm}, compared {compared(m)}, outcomes {o}")
    assert o["mirrored"] == len(workload), o
    assert mm == {"tag": 0, "rowcount": 0, "sqlstate": 0, "rows": 3}, mm
    assert compared(m) == len(workload)
    fps = set(re.findall(r"mismatch \d+/\d+ database=policy fingerprint=([0-9a-f]{16}) "
                         r"kind=rows", res.stderr))
    assert len(fps) == 1, res.stderr

    agent = mirror_agent(src, mir, extra=["--mirror-compare", "rows",
                                          "--mirror-compare-ignore", fps.pop()])
    run_statements(src, DB, workload)
    m, _ = finish(agent)
    o = check_invariant(m)
    print(f"declared: mismatches {mismatches(m)}, compared {compared(m)}, outcomes {o}")
    assert o["mirrored"] == len(workload), o
    assert not any(mismatches(m).values()), mismatches(m)
    assert compared(m) == len(workload) - 3

    bad = subprocess.run([str(agent_bin), "--port", str(src.port), "--interface", "lo",
                          "--admin-socket-dir", "", "--mirror", agent.mirror_conninfo,
                          "--metrics-listen", f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',))}",
                          "--mirror-compare-ignore", "12ab,nothex"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
    assert "mirror_compare_ignore: 'nothex' is not a fingerprint" in bad.stderr, bad.stderr


# --------------------------------------------------------------------------- Sync groups

GROUP_OK = """\\startpipeline
INSERT INTO u VALUES (10, 'group a');
INSERT INTO u VALUES (11, 'group b');
\\endpipeline
"""
GROUP_FAILS = """\\startpipeline
INSERT INTO u VALUES (20, 'rolled back with its group');
INSERT INTO u VALUES (1, 'duplicate');
\\endpipeline
"""


@pytest.mark.parametrize("mode", ["extended", "prepared"])
def test_sync_group_is_one_transaction(pair, mirror_agent, tmp_path, mode):
    """Several Executes before one Sync (pgbench \\startpipeline, -M extended/prepared)
    are one implicit transaction on the source, and are replayed as one on the mirror:
    a group whose second INSERT fails on the source (unique violation; the mirror lacks
    the constraint) leaves neither row on the mirror; a group that succeeds leaves both."""
    src, mir = pair
    for pg, ddl in ((src, UNIQUE_SETUP_SOURCE), (mir, UNIQUE_SETUP_MIRROR)):
        pg.createdb(DB)
        pg.psql([ddl, "INSERT INTO u VALUES (1, 'seed')"], db=DB)
    agent = mirror_agent(src, mir)
    ok, bad = tmp_path / "ok.sql", tmp_path / "bad.sql"
    ok.write_text(GROUP_OK)
    bad.write_text(GROUP_FAILS)
    src.pgbench(["-n", "-M", mode, "-t", 1, "-f", ok], DB)
    res = src.pgbench(["-n", "-M", mode, "-t", 1, "-f", bad], DB, check=False)
    assert "duplicate key" in res.stderr, res.stderr
    m, _ = finish(agent)
    o = check_invariant(m)
    rows = mir.query("SELECT id, note FROM u ORDER BY id, note", DB)
    print(f"{mode}: mirror rows {rows}; outcomes {o}; mismatches {mismatches(m)}")
    assert src.query("SELECT id, note FROM u ORDER BY id", DB) == \
        [["1", "seed"], ["10", "group a"], ["11", "group b"]]
    assert rows == [["1", "seed"], ["10", "group a"], ["11", "group b"]], \
        f"the mirror's rows differ from what the source kept: {rows}"
    assert o["mirrored"] == 4 and o["query"] == 0 and o["skipped"] == 0, o
    assert mismatches(m)["sqlstate"] == 1, mismatches(m)
