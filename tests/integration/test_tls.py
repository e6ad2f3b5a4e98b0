"""TLS sessions decoded through uprobes on the source server's libssl (`--tls on`).

With `--tls on` the agent finds the postmaster listening on --port, the libssl it maps,
and attaches uprobes (SSL_read / SSL_write, programs named `tls_*`) system-wide; the
plaintext of a TLS session is decoded as a plaintext session's bytes would be: the same
per-database request and error counts, the same replay with --mirror. Sessions whose
SSLRequest was accepted keep counting in mirror_capture_encrypted_sessions_total; those
decoded through the probes also in mirror_capture_tls_sessions_total, those that could
not be in mirror_capture_undecoded_sessions_total{reason} (tls_off while --tls is off);
mirror_capture_tls_probed_servers is the number of postmasters whose libssl is probed.

Every source server here runs with ssl=on (pg_harness: a self-signed certificate; the
harness's own clients use sslmode=disable) and log_connections=on, so that its csvlog
says which sessions were encrypted (`connection authorized: ... SSL enabled (...)`):
that, pg_stat_ssl seen from inside the sessions, the request and error records of the
csvlog (log_statement = all, see pg_harness.py) and the tables of source and mirror are
the ground truth. The clients (psql, pgbench, psycopg2) map the same libssl.so.3 as the
server, so exact counts also show that the client side of a session is not decoded a
second time. Each test has servers and databases of its own; servers are stopped and
removed, agents killed, also when a test fails. Needs root (conftest.py) and an agent
whose --help lists --tls.
"""

import json
import re
import signal
import threading
import time
from pathlib import Path

import psycopg2
import pytest

import pg_harness as pgh
import pgshadow_harness as h
import test_mirror as tm
import test_source as ts

METRICS_UP_TIMEOUT = 10   # seconds for /metrics to answer after the ready line
PROBED_TIMEOUT = 10       # ... and for mirror_capture_tls_probed_servers to reach 1
RESIDUE_TIMEOUT = 5       # seconds for a stopped agent's programs, links, probes to go

# log_connections writes one "connection authorized" record per session, saying "SSL
# enabled" for the encrypted ones (no record matches pg_harness's request patterns).
SOURCE_SETTINGS = {"log_connections": "on"}

TLS_SESSIONS = "mirror_capture_tls_sessions_total"
UNDECODED = "mirror_capture_undecoded_sessions_total"
PROBED = "mirror_capture_tls_probed_servers"
ENCRYPTED = "mirror_capture_encrypted_sessions_total"
TLS_PROG_PREFIX = "tls_"

SSL_CHECK = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def tls_agent_bin(agent_bin):
    res = h.run([agent_bin, "--help"], check=False, timeout=10)
    if "--tls" not in re.sub(r"--web-tls-\S+", "", res.stdout + res.stderr):
        pytest.fail(f"{agent_bin} --help does not list --tls: this agent cannot decode "
                    f"TLS sessions yet, rebuild with `make`")
    return agent_bin


@pytest.fixture
def source():
    """A PostgreSQL 15 server with ssl=on and log_connections=on."""
    with pgh.pg_server(name="tls-source", ssl=True, settings=SOURCE_SETTINGS) as pg:
        yield pg


@pytest.fixture
def mirror():
    """A plaintext PostgreSQL 15 server to replay to."""
    with pgh.pg_server(name="tls-mirror") as pg:
        yield pg


@pytest.fixture
def tls_agent(start_agent, tls_agent_bin):
    """tls_agent(source, tls=True, mirror=None, extra=(), dump=False) -> an agent on lo
    for source's port (`--tls on` when tls, `--mirror` when a mirror is given), /metrics
    answering; with tls, ready once mirror_capture_tls_probed_servers is 1."""

    def start(src, tls=True, mirror=None, extra=(), dump=False):
        args = ["--tls", "on"] if tls else []
        if mirror is not None:
            args += ["--mirror", f"host={mirror.host} port={mirror.port} user=postgres"]
        agent = start_agent(src.port, ["lo"], dump=dump,
                            extra=args + [str(x) for x in extra])
        deadline = time.monotonic() + METRICS_UP_TIMEOUT
        while True:
            try:
                m = pgh.metrics(agent.metrics_addr)
                break
            except OSError as e:
                if not agent.running() or time.monotonic() > deadline:
                    raise AssertionError(f"/metrics at {agent.metrics_addr} not answering "
                                         f"({e})\nstderr:\n{agent.stderr()}")
                time.sleep(0.1)
        if tls:
            deadline = time.monotonic() + PROBED_TIMEOUT
            while m.get(PROBED) != 1:
                if not agent.running() or time.monotonic() > deadline:
                    raise AssertionError(
                        f"{PROBED} = {m.get(PROBED, None)} {PROBED_TIMEOUT}s after the "
                        f"agent with --tls on was ready (expected 1: the postmaster on "
                        f"port {src.port}, pid {postmaster_pid(src)})\n"
                        f"stderr:\n{agent.stderr()}")
                time.sleep(0.1)
                m = pgh.metrics(agent.metrics_addr)
        return agent

    return start


# --------------------------------------------------------------------------- helpers

def postmaster_pid(pg):
    try:
        return int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def ssl_sessions(pg, since, db=None, records=None):
    """The csvlog's `connection authorized` records of encrypted sessions after `since`
    (in database db when given)."""
    records = pg.log_records(since) if records is None else records
    return [r for r in records
            if r.error_severity == "LOG" and r.message.startswith("connection authorized:")
            and "SSL enabled" in r.message and (db is None or r.database_name == db)]


def all_sessions(pg, since, db):
    return [r for r in pg.log_records(since)
            if r.error_severity == "LOG" and r.message.startswith("connection authorized:")
            and r.database_name == db]


def undecoded(m):
    """{reason: count} of mirror_capture_undecoded_sessions_total, zeros left out."""
    return {k: int(v) for k, v in m.by_label(UNDECODED, "reason").items() if v}


def tls_view(m):
    return {"tls_sessions": int(m.get(TLS_SESSIONS)), "encrypted": int(m.get(ENCRYPTED)),
            "undecoded": undecoded(m), "probed": m.get(PROBED, None),
            "resyncs": int(m.get("mirror_capture_resyncs_total")),
            "requests": {d: m.requests(d) for d in m.databases() if m.requests(d)}}


def count_classes(classes):
    out = {}
    for cls in classes:
        out[cls] = out.get(cls, 0) + 1
    return out


def check_db(m, pg, db, since, caused):
    """Requests and errors (by class) of db on /metrics == the server's log; the log's
    errors == what the test caused. Returns the log's request count."""
    logged = pg.count_requests(db, since, sync=False)
    ts.server_errors(pg, db, since, caused)
    ts.check_source_metrics(m, db, logged, caused, pg, since)
    return logged


def check_tls_counts(m, n_tls, what):
    """Every one of the n_tls encrypted sessions the server logged was decoded through
    the probes: counted once as TLS, once as encrypted, never as undecoded."""
    v = tls_view(m)
    assert v["tls_sessions"] == n_tls, \
        f"{TLS_SESSIONS} = {v['tls_sessions']}, the server logged {n_tls} TLS sessions " \
        f"({what}); {v}"
    assert v["encrypted"] == n_tls, \
        f"{ENCRYPTED} = {v['encrypted']}, the server logged {n_tls} TLS sessions; {v}"
    assert v["undecoded"] == {}, f"TLS sessions not decoded with --tls on: {v}"
    assert v["probed"] == 1, f"{PROBED} = {v['probed']}, expected 1; {v}"


def connect(pg, db, sslmode):
    conn = psycopg2.connect(pg.conninfo(db, sslmode=sslmode))
    cur = conn.cursor()
    cur.execute(SSL_CHECK)
    ssl = cur.fetchone()[0]
    conn.commit()
    assert ssl is (sslmode == "require"), \
        f"pg_stat_ssl says ssl={ssl} for a psycopg2 session with sslmode={sslmode}"
    return conn


def psql_tls(pg, db, sql):
    """psql -A -t with sslmode=require running [SSL_CHECK] + sql (errors allowed);
    asserts the session was encrypted. Returns stdout."""
    res = pg.psql([SSL_CHECK] + list(sql), db=db, sslmode="require", on_error_stop=False,
                  check=False, args=["-A", "-t"])
    lines = res.stdout.splitlines()
    assert lines and lines[0] == "t", \
        f"psql session with sslmode=require not encrypted: {res.stdout!r} {res.stderr!r}"
    return res.stdout


# --------------------------------------------------------------------------- 1. mirrored

APP, BENCH = "tls_app", "tls_bench"
ITEMS_QUERY = ("SELECT count(*), sum(qty), md5(string_agg(id || ':' || qty || ':' || note, "
               "',' ORDER BY id)) FROM items")
PY_ROWS = 60
COPY_ROWS = 2000
BENCH_CLIENTS, BENCH_TX = 4, 75        # TPC-B-like, -M prepared: 300 transactions
SELECT_CLIENTS, SELECT_TX = 2, 100     # -S -M prepared: 200 transactions


def _psycopg2_app(src):
    conn = connect(src, APP, "require")
    try:
        cur = conn.cursor()
        for i in range(100, 100 + PY_ROWS):
            cur.execute("INSERT INTO items VALUES (%s, %s, %s)", (i, i % 7, f"py {i} it's"))
            if i % 10 == 9:
                conn.commit()
        conn.commit()
        cur.execute("UPDATE items SET qty = qty + %s, note = note || %s WHERE id >= %s",
                    (3, "!", 100 + PY_ROWS // 2))
        cur.execute("SELECT count(*) FROM items WHERE qty > %s", (2,))
        cur.fetchone()
        conn.commit()
        try:
            cur.execute("INSERT INTO items VALUES (%s, %s, %s)", (1, 0, "dup"))  # 23505
        except psycopg2.IntegrityError:
            conn.rollback()
        else:
            raise AssertionError("a duplicate key was accepted")
        cur.execute("DELETE FROM items WHERE id %% %s = 0", (9,))
        conn.commit()
        cur.execute("SELECT count(*) FROM items")
        assert cur.fetchone()[0] > 0
        conn.commit()
    finally:
        conn.close()


def test_tls_sessions_decoded_and_mirrored(source, mirror, tls_agent):
    """psql (an error, COPY FROM STDIN, a 50,000-row answer), psycopg2 (transactions, a
    duplicate key) and pgbench (-S and TPC-B-like, -M prepared) with sslmode=require in
    two databases, --tls on --mirror: requests and errors per database == the source's
    log; every request mirrored, no mismatch, no mirror error but those the source had;
    the mirror's tables == the source's; every TLS session the server logged counted in
    mirror_capture_tls_sessions_total (and encrypted), none undecoded."""
    src, mir = source, mirror
    for pg in (src, mir):
        pg.createdb(APP)
        pg.createdb(BENCH)
        pg.psql("CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, note text)",
                db=APP)
        pg.pgbench_init(BENCH)
    since, msince = tm.mark(src), tm.mark(mir)
    agent = tls_agent(src, mirror=mir, extra=["--mirror-queue", tm.UNTHROTTLED_QUEUE])

    out = psql_tls(src, APP, [
        "INSERT INTO items SELECT g, g % 5, 'psql ' || g FROM generate_series(1, 50) g",
        "UPDATE items SET qty = qty + 1 WHERE id % 5 = 0",
        "SELECT 1/0",                                                   # 22012
        "SELECT count(*), sum(qty) FROM items; SELECT 'two'"])
    assert out.splitlines()[1:] == ["50|110", "two"], out
    # large messages both ways: COPY data in (the server's SSL_read returns it in TLS
    # records of at most 16 KiB), a 50,000-row answer out (many SSL_write calls)
    rows = "".join(f"{i}\t{i % 13}\tcopied {i} {'x' * (i % 61)}\n"
                   for i in range(1000, 1000 + COPY_ROWS))
    out = src.psql(db=APP, sslmode="require", args=["-A", "-t"], input=(
        f"{SSL_CHECK};\nCOPY items FROM STDIN;\n{rows}\\.\n"
        "SELECT g, md5(g::text) FROM generate_series(1, 50000) g;\n")).stdout
    lines = out.splitlines()
    assert lines[0] == "t" and len(lines) == 1 + 50000, (lines[:3], len(lines))
    # -S first: each run starts by vacuuming and truncating pgbench_history (replayed too)
    results = {"select": src.pgbench(["-S", "-M", "prepared", "-c", SELECT_CLIENTS, "-j", 2,
                                      "-t", SELECT_TX], BENCH, sslmode="require")}
    tm.run_threads([
        lambda: _psycopg2_app(src),
        lambda: results.setdefault("tpcb", src.pgbench(
            ["-M", "prepared", "-c", BENCH_CLIENTS, "-j", 2, "-t", BENCH_TX], BENCH,
            sslmode="require")),
    ])
    assert results["tpcb"].transactions == BENCH_CLIENTS * BENCH_TX, results["tpcb"].stdout
    assert results["select"].transactions == SELECT_CLIENTS * SELECT_TX

    m, result = tm.finish(agent)
    src.sync_log()
    records = src.log_records(since)
    # the clients' sessions were encrypted: psql and psycopg2 said so from inside,
    # the server's log says so for each of pgbench's
    tls = ssl_sessions(src, since, records=records)
    by_app = {}
    for r in tls:  # the record's application_name column is empty at this point
        name = re.search(r"application_name=(\S+)", r.message)
        name = name.group(1) if name else "?"
        by_app[name] = by_app.get(name, 0) + 1
    assert by_app.get("pgbench", 0) >= BENCH_CLIENTS + SELECT_CLIENTS, \
        f"TLS sessions by application in the server's log: {by_app}"
    assert len(tls) == len(ssl_sessions(src, since, APP, records)) + \
        len(ssl_sessions(src, since, BENCH, records)), by_app
    plain = [r for r in records if r.message.startswith("connection authorized:")
             and r.database_name in (APP, BENCH) and "SSL enabled" not in r.message]
    assert not plain, f"unencrypted sessions in the test's databases: {plain[:3]}"

    app = check_db(m, src, APP, since, {"22": 1, "23": 1})
    bench = check_db(m, src, BENCH, since, {})
    assert bench >= 7 * BENCH_CLIENTS * BENCH_TX + SELECT_CLIENTS * SELECT_TX, bench
    ts.assert_no_unknown(m)
    every = {d: m.requests(d) for d in m.databases() if m.requests(d)}
    assert every == {APP: app, BENCH: bench}, f"requests by database {every}"
    check_tls_counts(m, len(tls), f"by application {by_app}")
    print(f"TLS: {tls_view(m)}; server: {len(tls)} TLS sessions {by_app}, "
          f"requests {APP} {app}, {BENCH} {bench}")

    # replay: everything mirrored, nothing compared differently
    o = tm.check_invariant(m)
    errors = {c: int(m.get(c)) for c in tm.ERROR_COUNTERS}
    assert not any(errors.values()), f"mirror errors {errors}; outcomes {o}"
    assert o["skipped"] == 0 and o["dropped"] == 0 and o["not_sampled"] == 0, o
    assert o["mirrored"] == app + bench, \
        f"mirror_requests_mirrored {o['mirrored']}, the source served {app + bench}: {o}"
    for db, n in ((APP, app), (BENCH, bench)):
        assert int(m.get("mirror_database_requests", database=db)) == n, \
            f"mirror_database_requests{{database={db!r}}} " \
            f"{m.get('mirror_database_requests', database=db)} != {n}"
        assert int(m.get("mirror_database_errors", database=db)) == 0
    mism = {k: v for k, v in m.by_label("mirror_mismatches_total", "kind").items() if v}
    assert not mism, f"mismatches {mism}"
    compared = m.by_label("mirror_compared_total", "database")
    assert all(compared.get(db, 0) > 0 for db in (APP, BENCH)), \
        f"answers compared by database {compared}: no mismatch because nothing compared"
    assert tm.mirror_errors(mir, APP, msince) == {"22": 1, "23": 1}, \
        tm.mirror_error_messages(mir, APP, msince)
    assert tm.mirror_errors(mir, BENCH, msince) == {}, \
        tm.mirror_error_messages(mir, BENCH, msince)
    tm.compare_queries(src, mir, APP, {"items": ITEMS_QUERY})
    tables = tm.compare_queries(src, mir, BENCH, tm.PGBENCH_TABLE_QUERIES)
    assert int(tables["history"][0][0]) == BENCH_CLIENTS * BENCH_TX, tables["history"]

    types = {TLS_SESSIONS: "counter", UNDECODED: "counter", PROBED: "gauge",
             ENCRYPTED: "counter"}
    for name, typ in types.items():
        assert m.types.get(name) == typ, f"# TYPE of {name}: {m.types.get(name)}, " \
                                         f"expected {typ}"
    ts.check_stop(result, m)


# --------------------------------------------------------------------------- 2. mixed

MIX_TLS, MIX_PLAIN = "mix_tls", "mix_plain"
MIX_CLIENTS, MIX_TX = 2, 120
MIX_PY_ROUNDS = 40


def _interleaved(src, failures):
    """A TLS and a plaintext psycopg2 session, used turn by turn; one error each."""
    try:
        enc, plain = connect(src, MIX_TLS, "require"), connect(src, MIX_PLAIN, "disable")
        try:
            for conn in (enc, plain):
                conn.autocommit = True
                conn.cursor().execute("CREATE TABLE mix (id int PRIMARY KEY, v text)")
            for i in range(MIX_PY_ROUNDS):
                for conn, tag in ((enc, "tls"), (plain, "plain")):
                    cur = conn.cursor()
                    cur.execute("INSERT INTO mix VALUES (%s, %s)", (i, f"{tag} {i}"))
                    cur.execute("SELECT v FROM mix WHERE id = %s", (i,))
                    assert cur.fetchone()[0] == f"{tag} {i}"
            for conn, sql in ((enc, "SELECT 1/0"), (plain, "SELECT * FROM no_such_mix")):
                try:
                    conn.cursor().execute(sql)
                except psycopg2.Error:
                    pass
                else:
                    raise AssertionError(f"{sql} succeeded")
        finally:
            enc.close()
            plain.close()
    except Exception as e:  # noqa: BLE001 - reported by the test
        failures.append(repr(e))


def test_tls_and_plaintext_sessions_at_once(source, tls_agent):
    """pgbench with sslmode=require in one database and sslmode=disable in another at the
    same time, and a TLS and a plaintext psycopg2 session used turn by turn: each
    database's requests and errors == the server's log, TLS sessions counted as such
    (the plaintext ones not)."""
    src = source
    for db in (MIX_TLS, MIX_PLAIN):
        src.createdb(db)
        src.pgbench_init(db)
    since = ts.mark(src)
    agent = tls_agent(src)

    failures, results = [], {}
    threads = [
        threading.Thread(target=lambda: results.setdefault("tls", src.pgbench(
            ["-M", "extended", "-c", MIX_CLIENTS, "-j", MIX_CLIENTS, "-t", MIX_TX], MIX_TLS,
            sslmode="require", check=False))),
        threading.Thread(target=lambda: results.setdefault("plain", src.pgbench(
            ["-M", "simple", "-c", MIX_CLIENTS, "-j", MIX_CLIENTS, "-t", MIX_TX], MIX_PLAIN,
            sslmode="disable", check=False))),
        threading.Thread(target=_interleaved, args=(src, failures)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "traffic threads did not finish"
    assert not failures, failures
    for key, res in results.items():
        assert res.returncode == 0 and res.transactions == MIX_CLIENTS * MIX_TX, \
            f"pgbench ({key}): exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert set(results) == {"tls", "plain"}, results

    m, result = ts.finish(agent)
    src.sync_log()
    n_tls = len(ssl_sessions(src, since))
    tls_in_db = len(ssl_sessions(src, since, MIX_TLS))
    sessions_tls_db = len(all_sessions(src, since, MIX_TLS))
    assert n_tls == tls_in_db == sessions_tls_db >= MIX_CLIENTS + 1, \
        f"TLS sessions in the server's log: {n_tls} in all, {tls_in_db} in {MIX_TLS} " \
        f"(of {sessions_tls_db} sessions there)"
    assert ssl_sessions(src, since, MIX_PLAIN) == []
    n_tls_req = check_db(m, src, MIX_TLS, since, {"22": 1})
    n_plain_req = check_db(m, src, MIX_PLAIN, since, {"42": 1})
    ts.assert_no_unknown(m)
    every = {d: m.requests(d) for d in m.databases() if m.requests(d)}
    assert every == {MIX_TLS: n_tls_req, MIX_PLAIN: n_plain_req}, \
        f"requests by database {every}"
    check_tls_counts(m, n_tls, f"of {n_tls + len(all_sessions(src, since, MIX_PLAIN))} "
                               f"sessions")
    print(f"TLS: {tls_view(m)}; server: {n_tls} TLS sessions, requests {MIX_TLS} "
          f"{n_tls_req}, {MIX_PLAIN} {n_plain_req}")
    ts.check_stop(result, m)


# --------------------------------------------------------------------------- 3. resync

EARLY = "tls_early"
WARMUP_MAX, WARMUP_PAUSE = 40, 0.25
LATER_QUERIES = 30


def test_tls_session_opened_before_agent(source, tls_agent):
    """A psycopg2 session with sslmode=require opened and used before the agent started
    (--tls on, no --source-dsn): as for a plaintext session, the decoder finds its
    footing (mirror_capture_resyncs_total >= 1) on the warm-up queries, all of which are
    counted once, and then counts each of the later queries exactly once (an error
    included), under one label ("unknown", or the session's database); nothing is
    decoded from the session's ciphertext."""
    src = source
    src.createdb(EARLY)
    conn = connect(src, EARLY, "require")
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE e (id int, v text)")
        cur.execute("SELECT 1")
        client_port = ts._local_port(conn)
        since = ts.mark(src)
        agent = tls_agent(src)

        warmup = 0
        for warmup in range(1, WARMUP_MAX + 1):
            cur.execute("SELECT %s AS warmup", (warmup,))
            time.sleep(WARMUP_PAUSE)
            m = pgh.metrics(agent.metrics_addr)
            counted = sum(m.requests(d) for d in m.databases())
            if m.get("mirror_capture_resyncs_total") >= 1 and counted >= 1:
                break
        else:
            m = pgh.metrics(agent.metrics_addr)
            raise AssertionError(
                f"after {warmup} queries on the TLS session opened before the agent: "
                f"{tls_view(m)}\nstderr:\n{agent.stderr()}")
        before = ts.final_metrics(agent)
        labels = {d: before.requests(d) for d in before.databases() if before.requests(d)}
        assert len(labels) == 1 and set(labels) <= {"unknown", EARLY}, \
            f"warm-up queries counted under {labels}: expected one label, 'unknown' " \
            f"(no --source-dsn) or {EARLY!r}"
        label = next(iter(labels))
        assert labels[label] == warmup, \
            f"{labels[label]} requests counted of {warmup} warm-up queries under " \
            f"{label!r}: the session's first query after the agent started must count " \
            f"once; {tls_view(before)}"

        pgh.inserts_then_error(cur, LATER_QUERIES)
        after, result = ts.finish(agent)
    finally:
        conn.close()

    sent = LATER_QUERIES + 2
    src.sync_log()
    logged = [r for r in src.request_records(EARLY, since) if ts._port_of(r) == client_port]
    assert len(logged) == warmup + sent, \
        f"the server logged {len(logged)} requests of the early session, the test sent " \
        f"{warmup + sent}"
    got = after.requests(label) - before.requests(label)
    total = sum(after.requests(d) for d in after.databases())
    print(f"early TLS session: {warmup} warm-up queries counted under {label!r}; then "
          f"{got} of {sent}; {tls_view(after)}")
    assert got == sent, \
        f"after resync the agent counted {got} requests under {label!r} for {sent} " \
        f"queries; {tls_view(after)}"
    assert total == warmup + sent, \
        f"{total} requests counted in all for {warmup + sent} queries: {tls_view(after)}"
    err = after.errors(label).get("42", 0) - before.errors(label).get("42", 0)
    assert err == 1, f"42P01 errors under {label!r}: {err}, expected 1"
    assert {d for d in after.databases() if after.errors(d)} <= {label}, \
        {d: after.errors(d) for d in after.databases()}
    assert after.get("mirror_capture_resyncs_total") >= 1
    assert after.get(TLS_SESSIONS) >= 1, \
        f"the session's requests were decoded, but {TLS_SESSIONS} is " \
        f"{after.get(TLS_SESSIONS)}: {tls_view(after)}"
    ts.check_stop(result, after, clean=False)


# --------------------------------------------------------------------------- 4. residue

def perf_entries(pid):
    """`bpftool -j perf show` entries of process pid; None when bpftool cannot say."""
    res = h.run(["bpftool", "-j", "perf", "show"], check=False)
    if res.returncode != 0:
        print(f"bpftool perf show failed ({res.returncode}): {res.stderr.strip()}")
        return None
    entries = json.loads(res.stdout) if res.stdout.strip() else []
    return [e for e in entries if e.get("pid") == pid]


def legacy_uprobe_events(pid):
    """tracefs uprobe events libbpf's legacy attachment made for process pid."""
    for path in ("/sys/kernel/tracing/uprobe_events",
                 "/sys/kernel/debug/tracing/uprobe_events"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        return [ln for ln in text.splitlines() if f"libbpf_{pid}_" in ln]
    return []


def tls_attachments(prog_ids, pid):
    """What attaches the programs prog_ids: links to them, perf events of pid (uprobes
    attached without a link), legacy tracefs events of pid."""
    found = {}
    links = h.links_of(set(prog_ids))
    if links:
        found["links"] = links
    perf = perf_entries(pid)
    if perf:
        found["perf"] = perf
    events = legacy_uprobe_events(pid)
    if events:
        found["uprobe_events"] = events
    return found


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_stopped_agent_leaves_no_uprobe(source, tls_agent, sig):
    """An agent with --tls on holds tls_* programs attached to the server's libssl (links
    or perf events of its own) and decodes a TLS session; after SIGKILL (or a graceful
    SIGTERM: exit 0 and a stats line) none of its tls_* programs is loaded any more, no
    link or perf event refers to them, no tracefs uprobe event of its pid is left, its
    capture programs are gone too, and TLS sessions on the server still work."""
    src = source
    db = "tls_residue"
    src.createdb(db)
    baseline = set(h.our_progs())
    progs_before = {p["id"] for p in h.bpftool_json("prog", "show")}
    agent = tls_agent(src)
    pid = agent.pid
    holders = h.prog_holders()
    tls_progs = {p["id"]: p.get("name") for p in h.bpftool_json("prog", "show")
                 if p["id"] not in progs_before
                 and str(p.get("name", "")).startswith(TLS_PROG_PREFIX)
                 and pid in holders.get(p["id"], set())}
    assert tls_progs, \
        f"the agent with --tls on is ready but holds no program named {TLS_PROG_PREFIX}*: " \
        f"programs it holds: {sorted(i for i, p in holders.items() if pid in p)}"
    attached = tls_attachments(tls_progs, pid)
    assert attached.get("links") or attached.get("perf") or attached.get("uprobe_events"), \
        f"the agent's programs {tls_progs} are loaded but nothing attaches them: {attached}"
    psql_tls(src, db, ["SELECT 1", "SELECT 2"])
    m = pgh.wait_metrics_stable(agent.metrics_addr, timeout=ts.WAIT_STABLE_TIMEOUT)
    assert m.requests(db) == 3 and m.get(TLS_SESSIONS) == 1, \
        f"the probes did not decode the TLS session: {tls_view(m)}"
    print(f"agent {pid}: programs {tls_progs}; attached by "
          f"{ {k: len(v) for k, v in attached.items()} }")

    if sig == signal.SIGKILL:
        agent.proc.send_signal(signal.SIGKILL)
        assert agent.wait(10) == -signal.SIGKILL
    else:
        result = agent.stop(sig, timeout=30)
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
        assert result.stats is not None, f"no stats line on stderr:\n{result.stderr}"

    deadline = time.monotonic() + RESIDUE_TIMEOUT
    while True:
        loaded = {p["id"]: p.get("name") for p in h.bpftool_json("prog", "show")
                  if p["id"] in tls_progs}
        left = tls_attachments(tls_progs, pid)
        if loaded:
            left["progs"] = loaded
        capture = h.residue(baseline, pid)
        if capture:
            left["capture"] = capture
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"still there {RESIDUE_TIMEOUT}s after {signal.Signals(sig).name}: " \
                     f"{left}"
    out = src.psql(SSL_CHECK, db=db, sslmode="require", args=["-A", "-t"]).stdout
    assert out.strip() == "t", f"TLS session after the agent stopped: {out!r}"


# --------------------------------------------------------------------------- 5. tls off

def test_tls_off_sessions_counted_undecoded(source, tls_agent):
    """Without --tls (off by default): TLS sessions are counted as encrypted and as
    undecoded{reason="tls_off"}, their requests are not counted, nothing is probed, and
    stderr says once that `--tls on` would decode them; a plaintext session beside them
    is counted exactly."""
    src = source
    enc_db, plain_db = "off_tls", "off_plain"
    src.createdb(enc_db)
    src.createdb(plain_db)
    since = ts.mark(src)
    agent = tls_agent(src, tls=False)

    psql_tls(src, enc_db, ["SELECT 1", "SELECT 1/0"])
    psql_tls(src, enc_db, ["SELECT 2; SELECT 3"])
    conn = connect(src, enc_db, "require")
    try:
        conn.cursor().execute("SELECT %s::text", ("encrypted",))
        conn.commit()
    finally:
        conn.close()
    src.psql(["SELECT 1", "SELECT * FROM no_such_plain"], db=plain_db, sslmode="disable",
             on_error_stop=False, check=False)

    m = ts.final_metrics(agent)
    holders = h.prog_holders()
    mine = {i for i, pids in holders.items() if agent.pid in pids}
    tls_mine = {p["id"]: p.get("name") for p in h.bpftool_json("prog", "show")
                if p["id"] in mine and str(p.get("name", "")).startswith(TLS_PROG_PREFIX)}
    attached = tls_attachments(tls_mine, agent.pid)
    result = agent.stop(signal.SIGINT)
    src.sync_log()
    n_tls = len(ssl_sessions(src, since))
    assert n_tls == 3 == len(ssl_sessions(src, since, enc_db)), \
        f"the server logged {n_tls} TLS sessions, the test opened 3"
    enc_logged = src.count_requests(enc_db, since, sync=False)
    # psql: 3 + 2 Queries; psycopg2: BEGIN, SELECT, COMMIT twice
    assert enc_logged == 11, f"the server logged {enc_logged} requests over TLS"
    v = tls_view(m)
    print(f"--tls off: {v}")
    assert v["encrypted"] == n_tls, f"{ENCRYPTED} {v['encrypted']}, expected {n_tls}: {v}"
    assert v["undecoded"] == {"tls_off": n_tls}, \
        f"undecoded sessions by reason {v['undecoded']}, expected {{'tls_off': {n_tls}}}"
    assert v["tls_sessions"] == 0, f"{TLS_SESSIONS} {v['tls_sessions']} with --tls off"
    assert not v["probed"], f"{PROBED} = {v['probed']} with --tls off"
    assert not attached, f"uprobes attached with --tls off: {attached}"
    assert m.requests(enc_db) == 0 and not m.errors(enc_db), \
        f"{m.requests(enc_db)} requests decoded from TLS sessions with --tls off"
    plain_logged = check_db(m, src, plain_db, since, {"42": 1})
    ts.assert_no_unknown(m)
    every = {d: m.requests(d) for d in m.databases() if m.requests(d)}
    assert every == {plain_db: plain_logged}, f"requests by database {every}"
    hints = [ln for ln in result.stderr.splitlines() if "--tls on" in ln]
    assert len(hints) == 1, \
        f"{len(hints)} stderr lines mention --tls on after {n_tls} TLS sessions, " \
        f"expected one (a one-time hint):\n{result.stderr}"
    ts.check_stop(result, m)


# --------------------------------------------------------------------------- 6. secrets

ROLES = {"tlsplain": ("password", "Tls-Plain-Pw-3c9d"),
         "tlsmd5": ("md5", "Tls-Md5-Pw-8e21"),
         "tlsscram": ("scram-sha-256", "Tls-Scram-Pw-b07a")}
SECRET_DB = "tls_secrets"
KEPT = "kept-in-tls-dump"


def _wait_hba_reloaded(src, role, pw, timeout=10):
    """Until the reloaded pg_hba.conf rejects role without TLS (auth happens inside TLS
    only)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(host="127.0.0.1", port=src.port, dbname=SECRET_DB, user=role,
                             password=pw, sslmode="disable").close()
        except psycopg2.OperationalError as e:
            if "no encryption" in str(e) or "rejects connection" in str(e):
                return
            raise
        assert time.monotonic() < deadline, \
            f"{role} still connects without TLS {timeout}s after pg_reload_conf()"
        time.sleep(0.1)


def test_passwords_inside_tls_never_shown(source, tls_agent):
    """Roles authenticating by cleartext password, md5 and SCRAM over TLS only (hostssl
    lines, hostnossl reject), --tls on --dump-streams: each runs a query; the dumps
    contain the query texts and role names sent inside TLS (the plaintext was decoded)
    and the cleartext password message with its body zeroed, but no password anywhere:
    not in a dump file, the agent's stderr or stdout, or /metrics."""
    src = source
    src.createdb(SECRET_DB)
    pgh.add_password_roles(src, ROLES, lambda role, method:
                           f"hostssl   all {role} 127.0.0.1/32 {method}\n"
                           f"hostnossl all {role} 127.0.0.1/32 reject\n")
    for role, (_, pw) in ROLES.items():
        _wait_hba_reloaded(src, role, pw)
    since = ts.mark(src)
    agent = tls_agent(src, dump=True)

    for role, (_, pw) in ROLES.items():
        conn = psycopg2.connect(host="127.0.0.1", port=src.port, dbname=SECRET_DB,
                                user=role, password=pw, sslmode="require")
        try:
            cur = conn.cursor()
            cur.execute(SSL_CHECK)
            assert cur.fetchone()[0] is True, f"{role}'s session is not encrypted"
            cur.execute("SELECT %s", (f"{KEPT}-{role}",))
            conn.commit()
        finally:
            conn.close()
    m = ts.final_metrics(agent)
    metrics_text = pgh.scrape(agent.metrics_addr)[0]
    result = agent.stop(signal.SIGTERM)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    stdout = agent.stdout_path.read_text(errors="replace")
    src.sync_log()
    n_tls = len(ssl_sessions(src, since, SECRET_DB))
    assert n_tls == len(ROLES), f"the server logged {n_tls} TLS sessions"
    logged = src.count_requests(SECRET_DB, since, sync=False)
    assert logged == 4 * len(ROLES), logged  # BEGIN, 2 SELECTs, COMMIT each
    assert m.requests(SECRET_DB) == logged, \
        f"{m.requests(SECRET_DB)} requests counted in {SECRET_DB}, the server logged " \
        f"{logged}: {tls_view(m)}"
    assert int(m.get(TLS_SESSIONS)) == n_tls, tls_view(m)

    files = sorted(p for p in agent.dump_dir.rglob("*") if p.is_file())
    assert files, f"nothing dumped in {agent.dump_dir}"
    contents = {p: p.read_bytes() for p in files}
    everything = b"".join(contents.values())
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o600, f"{p}: mode {p.stat().st_mode & 0o777:o}"
    for role, (_, pw) in ROLES.items():
        for where, text in (("a dump file", everything), ("stderr", result.stderr.encode()),
                            ("stdout", stdout.encode()), ("/metrics", metrics_text.encode())):
            assert pw.encode() not in text, f"{role}'s password is in {where}"
        assert f"{KEPT}-{role}".encode() in everything, \
            f"the query sent inside {role}'s TLS session is not in the dumps " \
            f"({[p.name for p in files]}): the plaintext was not decoded"
        assert role.encode() in everything, \
            f"{role}'s startup packet (inside TLS) is not in the dumps"
    # the cleartext password message: its header kept, its body zeros
    plain = [data for data in contents.values() if b"tlsplain" in data
             and b"p\x00\x00\x00" in data]
    assert plain, "no dump of the cleartext-password session's messages"
    data = plain[0]
    at = data.index(b"p\x00\x00\x00")
    n = int.from_bytes(data[at + 1:at + 5], "big") - 4
    assert n == len(ROLES["tlsplain"][1]) + 1 and data[at + 5:at + 5 + n] == bytes(n), \
        data[at:at + 5 + n]


# --------------------------------------------------------------------------- 7. restart

RESTART_DB = "tls_restart"
REPROBE_TIMEOUT = 20  # the agent checks its postmasters every 5 s


def test_restarted_server_probed_again(source, tls_agent):
    """The source restarts under a running agent with --tls on: the agent notices its
    postmaster exited (checked every 5 s), probes the new one, and a TLS session to the
    restarted server is decoded — its requests equal the server's log."""
    src = source
    src.createdb(RESTART_DB)
    agent = tls_agent(src)
    old = postmaster_pid(src)
    h.run(pgh.as_postgres([pgh.pg_tool("pg_ctl"), "restart", "-w", "-m", "fast", "-D",
                           src.data_dir, "-l", src.dir / "pg_ctl.log"]), timeout=120)
    new = postmaster_pid(src)
    assert new and new != old, f"postmaster pid {old} -> {new} after pg_ctl restart"
    want = f"decoding the TLS sessions of postmaster {new} on port {src.port}"
    deadline = time.monotonic() + REPROBE_TIMEOUT
    while want not in agent.stderr():
        assert time.monotonic() < deadline and agent.running(), \
            f"no {want!r} {REPROBE_TIMEOUT} s after the restart:\n{agent.stderr()}"
        time.sleep(0.2)
    assert f"postmaster {old} exited" in agent.stderr(), agent.stderr()
    since = src.log_mark()
    psql_tls(src, RESTART_DB, ["SELECT 1", "SELECT 2; SELECT 3"])
    m, result = ts.finish(agent)
    logged = src.count_requests(RESTART_DB, since)
    assert logged == 3 and m.requests(RESTART_DB) == logged, \
        f"database {RESTART_DB}: agent {m.requests(RESTART_DB)}, log {logged}; {tls_view(m)}"
    assert m.get(TLS_SESSIONS) >= 1 and undecoded(m) == {}, tls_view(m)
    assert m.get(PROBED) == 1, tls_view(m)
    assert result.returncode == 0, result


# --------------------------------------------------------------------------- 8. own TLS

NAMED_DB, RESOLVER_DB = "tls_named", "tls_resolver"


def test_own_tls_connection_not_decoded(source, tls_agent):
    """--source-dsn over TLS (sslmode=require) with --tls on: the agent's own session on
    the source (its resolver) is excluded from the probes as from the packet capture —
    nothing is counted in its database although the server logged its lookups there —
    while it names a TLS session opened before the agent, whose later queries are
    counted under their real database."""
    src = source
    src.createdb(NAMED_DB)
    src.createdb(RESOLVER_DB)
    conn = connect(src, NAMED_DB, "require")
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE e (id int, v text)")
        since = ts.mark(src)
        dsn = src.conninfo(RESOLVER_DB, sslmode="require")
        agent = tls_agent(src, extra=["--source-dsn", dsn])
        for warmup in range(1, WARMUP_MAX + 1):
            cur.execute("SELECT %s AS warmup", (warmup,))
            time.sleep(WARMUP_PAUSE)
            if pgh.metrics(agent.metrics_addr).requests(NAMED_DB) >= 1:
                break
        else:
            raise AssertionError(f"the early TLS session was never named {NAMED_DB}: "
                                 f"{tls_view(pgh.metrics(agent.metrics_addr))}\n"
                                 f"{agent.stderr()}")
        before = ts.final_metrics(agent)
        pgh.inserts_then_error(cur, LATER_QUERIES)
        after, result = ts.finish(agent)
    finally:
        conn.close()
    got = after.requests(NAMED_DB) - before.requests(NAMED_DB)
    assert got == LATER_QUERIES + 2, f"{got} of {LATER_QUERIES + 2} counted; {tls_view(after)}"
    lookups = src.count_requests(RESOLVER_DB, since)
    assert lookups >= 1, "the resolver ran no query on the source: nothing was tested"
    assert ssl_sessions(src, since, RESOLVER_DB), \
        "the resolver's session was not encrypted: nothing was tested"
    assert after.requests(RESOLVER_DB) == 0, \
        f"the agent's own TLS session decoded: {after.requests(RESOLVER_DB)} requests " \
        f"counted in {RESOLVER_DB} (the server logged {lookups} there)"
    assert result.returncode == 0, result


# --------------------------------------------------------------------------- 9. churn

CHURN_DB = "tls_churn"


def test_connection_per_transaction_over_tls(source, tls_agent):
    """pgbench -C over TLS: a new backend (often a reused pid) and a full handshake per
    transaction. Every session is decoded from its StartupMessage: requests == the
    server's log, TLS sessions == the log's encrypted sessions, no call before its
    backend's connection was known, no resync."""
    src = source
    src.createdb(CHURN_DB)
    src.pgbench_init(CHURN_DB)
    agent = tls_agent(src)
    since = src.log_mark()
    src.pgbench(["-C", "-S", "-M", "extended", "-c", 4, "-j", 2, "-t", 100], CHURN_DB,
                sslmode="require")
    src.pgbench(["-C", "-M", "prepared", "-c", 2, "-j", 2, "-t", 50], CHURN_DB,
                sslmode="require")
    m, result = ts.finish(agent)
    logged = src.count_requests(CHURN_DB, since)
    sessions = len(ssl_sessions(src, since, CHURN_DB))
    assert sessions >= 500, f"{sessions} TLS sessions logged: pgbench -C did not churn"
    assert m.requests(CHURN_DB) == logged, \
        f"{CHURN_DB}: agent {m.requests(CHURN_DB)}, log {logged}; {tls_view(m)}"
    assert m.get(TLS_SESSIONS) == sessions, f"log: {sessions} TLS sessions; {tls_view(m)}"
    assert m.get("mirror_capture_tls_unmapped_calls_total") == 0, tls_view(m)
    assert m.get("mirror_capture_resyncs_total") == 0, tls_view(m)
    assert result.returncode == 0, result
