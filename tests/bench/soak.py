#!/usr/bin/python3
"""Soak benchmark (issue 15 item 7): a mixed workload mirrored for a long time, watching
the agent for leaks (memory, file descriptors, flows, mirror connections) and for
counts that drift away from the server's.

A source and a mirror PostgreSQL 15 cluster on 127.0.0.1 (log_statement = none on both:
the csvlog then holds little more than the ERROR records, which are counted), `pgbench
-i -s SCALE` and a table `soak_items` on both, pg_stat_statements reset, then one agent
on lo mirroring the source to the mirror (exposure 1.0, defaults otherwise) for the
whole run. The run is cut into cycles of about a minute (PGSHADOW_BENCH_SOAK_MINUTES
rounded to whole cycles, at least one; 3 gives three cycles of 60 s, 2.5 three of 50 s).
Each cycle has a load phase and then a quiet point:

- load (the cycle minus QUIET_S seconds), all at once:
  * `pgbench -n -M simple -c 2 -R TPCB_RATE -T ...`: TPC-B (the default script: BEGIN,
    three UPDATEs, a SELECT, an INSERT, END);
  * `pgbench -n -S -M prepared -c 2 -R SELECT_RATE -T ...`: select-only, prepared
    statements (named statements re-prepared on the pooled mirror connections);
  * WORKERS psycopg2 threads (Debian's python3-psycopg2, autocommit, every statement
    one Query message) that open a session, run 3-10 random operations and close it,
    again and again (a short pause between sessions): point SELECTs, INSERTs and UPDATEs
    of the worker's own rows in soak_items, explicit transactions (BEGIN ... COMMIT),
    statements that fail (division by zero, unknown table, syntax error, duplicate key,
    a failed transaction: error, 25P02 on the next statement, ROLLBACK) and big results
    (SELECT of 50,000 rows of generate_series with an md5 column, about 2.3 MB).
  Every 2 s a sampler reads the agent's /proc/PID/status, /proc/PID/fd and /metrics (the
  largest values of the load phase are printed with the quiet point's).
- quiet point: pgbench has exited and every psycopg2 session is closed, so no client
  session is open on the source; the benchmark waits until replay has settled (nothing
  in flight, mirror counters unchanged over two scrapes, test_mirror.wait_settled) and
  reads, in this order, the agent's fd count (twice, 0.3 s apart, until equal),
  VmRSS and RssAnon from /proc/PID/status, /metrics (flows: mirror_capture_sessions_active;
  the pool gauges mirror_pool_connections{state}; the outcome counters), the mirror's
  pg_stat_activity (client backends in the benchmark database: the agent's pooled
  connections) and the server's count of requests in the benchmark database:
  pg_stat_statements' calls (successful statements: every request here is a single
  statement and pgbench runs -M simple / prepared select-only, see pg_harness.pgss_calls)
  plus the ERROR records of client backends in the source's csvlog (a failed statement
  is a request pg_stat_statements does not count). The log is synced first with a RAISE
  LOG marker. All these monitoring queries use the clusters' Unix sockets, which the agent
  does not capture: nothing the benchmark asks is part of the traffic it measures.

pgbench is started anew in every load phase, at the same fixed rates, so that nothing
is open at the quiet point: an exact comparison of counts needs nothing in flight, and
the "equal session counts" at which fds are compared are then zero source sessions (the
pgbench connections, one per client and run, add to the session churn).

One line per cycle: elapsed minutes, the agent's RSS (MiB) and RssAnon (KiB) at the quiet
point (the load phase's largest RssAnon in parentheses), open fds (load maximum), flows
(load maximum), mirror connections (pool gauges in_use+idle / mirror pg_stat_activity),
requests in the benchmark database counted by the agent and by the server and their
difference, source errors (agent / server log), mirror errors
(connection/query/timeout), drops, and the psycopg2 sessions opened in the cycle.

Targets (PASS/FAIL), as in tests/bench/scale.py's report:
- RssAnon growth <= 1 MiB after the warm-up: the largest RssAnon of the quiet points
  after the warm-up minus the RssAnon of the warm-up's last quiet point (warm-up: the
  first cycle, or the first 10% of the cycles if that is more). Quiet points compare the
  agent in the same state (no session open, nothing in flight); the load phases' largest
  values are printed, not judged.
- fd count the same at equal session counts: the quiet points are grouped by (flows,
  mirror connections of the pool) — every quiet point has no source session open, and
  each pooled mirror connection is a socket of the agent — and in every group the fd
  count must be the same. At least two quiet points must share a group (otherwise
  nothing could be compared and the line fails). fds - mirror connections is printed
  too.
- counts exact: at every quiet point the agent's mirror_source_requests_total for the
  benchmark database == pg_stat_statements calls + ERROR records, and the agent's
  mirror_source_errors_total == the ERROR records.
- 0 mirror errors: mirror_errors_connection + query + timeout == 0 at the end
  (test_mirror.outcomes).
Must hold as well: no flow open at any quiet point (mirror_capture_sessions_active == 0
once every client has disconnected), the outcome invariant (test_mirror.check_invariant),
the workload ran as designed (no unexpected client error, pgbench without failed
transactions) and the agent exits 0 after SIGINT. Also printed: the mirror's ERROR
records next to the source's, mirrored fraction, drops and skips, the agent's CPU. Exit
status 0 when every line passes, 1 otherwise. Needs root.

Environment: PGSHADOW_BENCH_SOAK_MINUTES (length, default 30; fractional values are
accepted, e.g. 3 or 2.5; at least 2 cycles are needed to judge growth),
PGSHADOW_BENCH_SOAK_TPCB_RATE (TPC-B transactions/s, default 20),
PGSHADOW_BENCH_SOAK_SELECT_RATE (select-only transactions/s, default 100),
PGSHADOW_BENCH_SOAK_WORKERS (psycopg2 threads, default 4), PGSHADOW_BENCH_SOAK_SEED
(their random choices, default 15), PGSHADOW_BENCH_SCALE (pgbench -i scale, default 5
here), PGSHADOW_BENCH_AGENT_ARGS (more agent flags), PGSHADOW_BIN. Takes the configured
minutes plus about half a minute of setup. Cleans up (agent, pgbench, clusters) on
failure, Ctrl-C and SIGTERM too.
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import psycopg2  # noqa: E402  (Debian's python3-psycopg2)
import psycopg2.errorcodes  # noqa: E402
import pg_harness as pgh  # noqa: E402
import pgshadow_harness as h  # noqa: E402
import test_mirror as tm  # noqa: E402  (outcomes, invariant, settling)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402  (stop_agent)

MINUTES = float(os.environ.get("PGSHADOW_BENCH_SOAK_MINUTES", 30))
TPCB_RATE = int(os.environ.get("PGSHADOW_BENCH_SOAK_TPCB_RATE", 20))
SELECT_RATE = int(os.environ.get("PGSHADOW_BENCH_SOAK_SELECT_RATE", 100))
WORKERS = int(os.environ.get("PGSHADOW_BENCH_SOAK_WORKERS", 4))
SEED = int(os.environ.get("PGSHADOW_BENCH_SOAK_SEED", 15))
SCALE = int(os.environ.get("PGSHADOW_BENCH_SCALE", 5))
AGENT_ARGS = os.environ.get("PGSHADOW_BENCH_AGENT_ARGS", "").split()
DB = "bench"
APP = "pgshadow-soak"         # application_name of the psycopg2 sessions
PGBENCH_CLIENTS = 2           # per pgbench run
QUIET_S = 8                   # seconds of a cycle left for its quiet point
SAMPLE_S = 2.0                # load-phase sampling interval
SETTLE_TIMEOUT = 90           # seconds for replay to settle at a quiet point
BIG_ROWS = 50000
BIG_SQL = f"SELECT g, md5(g::text) FROM generate_series(1, {BIG_ROWS}) g"
MIB = 1 << 20

TARGET_ANON_GROWTH = 1 * MIB
ERROR_STATES = ("connection", "query", "timeout")

SERVER_SETTINGS = {"log_statement": "'none'", "log_min_error_statement": "error"}
SOAK_SCHEMA = ["CREATE TABLE soak_items (id bigint PRIMARY KEY, worker int NOT NULL, "
               "note text NOT NULL)",
               "CREATE INDEX ON soak_items (worker)"]


# --------------------------------------------------------------------------- agent, /proc

def proc_status(pid):
    """(VmRSS, RssAnon) of pid in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            out[key] = int(value.split()[0]) * 1024
    return out.get("VmRSS", 0), out.get("RssAnon", 0)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def stable_fd_count(pid, tries=10, interval=0.3):
    """The fd count once two readings `interval` apart agree (a scrape's HTTP socket
    or a closing connection can be there for a moment)."""
    prev = fd_count(pid)
    for _ in range(tries):
        time.sleep(interval)
        cur = fd_count(pid)
        if cur == prev:
            return cur
        prev = cur
    return prev


def pool_connections(m):
    """{in_use, idle, pinned, connecting, peak}: the pool gauges of a scrape."""
    out = {s: int(m.get("mirror_pool_connections", -1, state=s))
           for s in ("in_use", "idle", "pinned", "connecting")}
    out["peak"] = int(m.get("mirror_pool_connections_peak", -1))
    return out


def start_agent(src, mir):
    """A fresh agent on lo mirroring src to mir, ready and serving /metrics."""
    agent = h.Agent(h.agent_binary(), src.port, ["lo"], logdir=src.dir, name="soak-agent",
                    extra=["--mirror", f"host={mir.host} port={mir.port} user=postgres",
                           *AGENT_ARGS])
    try:
        agent.start().wait_ready()
        deadline = time.monotonic() + 10
        while True:
            try:
                pgh.scrape(agent.metrics_addr)
                return agent
            except OSError:
                if time.monotonic() > deadline:
                    tm.scrape(agent)  # fails with the agent's stderr
                time.sleep(0.1)
    except BaseException:
        agent.kill()
        raise


# --------------------------------------------------------------------------- the server's count

class Monitor:
    """A connection to a cluster over its Unix socket (never captured: the agent sees
    TCP on the port only), in database postgres: pg_stat_statements, the csvlog's ERROR
    records, pg_stat_activity."""

    def __init__(self, pg):
        self.pg = pg
        self.conn = psycopg2.connect(host=str(pg.socket_dir), port=pg.port, user="postgres",
                                     dbname="postgres", application_name="pgshadow-monitor")
        self.conn.autocommit = True

    def close(self):
        self.conn.close()

    def scalar(self, sql, args=()):
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchone()[0]

    def pgss_calls(self, db):
        return int(self.scalar(
            "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s JOIN pg_database d "
            "ON d.oid = s.dbid WHERE d.datname = %s", (db,)))

    def backends(self, db):
        """Client backends of db other than ours."""
        return int(self.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = "
            "'client backend' AND pid <> pg_backend_pid()", (db,)))

    def sync_log(self, timeout=20):
        """Waits until everything logged so far is in the csvlog (a RAISE LOG marker: it
        is written whatever log_statement says)."""
        token = f"pgshadow-soak-mark-{uuid.uuid4().hex}"
        with self.conn.cursor() as cur:
            cur.execute(f"DO $$ BEGIN RAISE LOG '{token}'; END $$")
        deadline = time.monotonic() + timeout
        while not any(token in r.message for r in self.pg.log_records()):
            if time.monotonic() > deadline:
                raise AssertionError(f"marker {token} not in {self.pg.csvlog_path} after "
                                     f"{timeout}s")
            time.sleep(0.05)

    def errors(self, db, since):
        """ERROR records of client backends in db after log position since."""
        self.sync_log()
        return sum(1 for r in self.pg.log_records(since)
                   if pgh.is_error_record(r) and r.database_name == db)


# --------------------------------------------------------------------------- workload

class Pgbench:
    """One pgbench run in the background (killed by kill())."""

    def __init__(self, src, name, args):
        self.argv = [pgh.pg_tool("pgbench")] + [str(a) for a in args] + [DB]
        self.out_path = src.dir / f"{name}.stdout"
        self.err_path = src.dir / f"{name}.stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=src.client_env(DB),
                                         cwd="/")

    def wait(self, timeout):
        """(transactions, problem or None)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return 0, f"{' '.join(self.argv)}: still running after {timeout} s (killed)"
        out = self.out_path.read_text(errors="replace")
        tx, failed, _ = pgh.parse_pgbench(out)
        if rc != 0 or tx is None or failed:
            err = self.err_path.read_text(errors="replace")
            return tx or 0, (f"{' '.join(self.argv[1:])}: exit {rc}, {tx} transactions, "
                             f"{failed} failed: {(out + err)[-600:]}")
        return tx, None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Workers:
    """The psycopg2 sessions: WORKERS threads, each opening and closing sessions until
    the phase ends. Counters are totals over the run (and per phase for sessions)."""

    OPS = [("select", 8), ("insert", 4), ("update", 2), ("txn", 2), ("div0", 1),
           ("no_table", 1), ("syntax", 0.5), ("duplicate", 0.5), ("failed_txn", 0.5),
           ("big", 0.4)]

    def __init__(self, src, seed):
        self.src = src
        self.rngs = [random.Random(seed * 1000 + i) for i in range(WORKERS)]
        self.next_id = [0] * WORKERS
        self.ids = [[] for _ in range(WORKERS)]
        self.lock = threading.Lock()
        self.sessions = 0
        self.statements = 0
        self.errors_sent = 0      # statements that failed as intended
        self.big_results = 0
        self.unexpected = []      # exceptions the design did not call for
        self.stop = threading.Event()

    def run_phase(self, until):
        """Runs every worker until `until` (monotonic); returns the sessions opened."""
        before = self.sessions
        threads = [threading.Thread(target=self._worker, args=(i, until), daemon=True,
                                    name=f"soak-worker-{i}") for i in range(WORKERS)]
        for t in threads:
            t.start()
        return threads, before

    def join(self, threads, before, timeout):
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            raise AssertionError(f"psycopg2 workers {alive} still running {timeout} s after "
                                 f"the load phase")
        return self.sessions - before

    def _note(self, unexpected=None, **counts):
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)
            if unexpected is not None and len(self.unexpected) < 1000:
                self.unexpected.append(unexpected)

    def _worker(self, i, until):
        rng = self.rngs[i]
        names, weights = zip(*self.OPS)
        while time.monotonic() < until and not self.stop.is_set():
            try:
                conn = psycopg2.connect(self.src.conninfo(DB, application_name=APP,
                                                          connect_timeout=10))
            except psycopg2.Error as e:
                self._note(unexpected=f"worker {i}: connect: {e!r}")
                time.sleep(1)
                continue
            self._note(sessions=1)
            try:
                conn.autocommit = True  # every execute() is one Query message
                cur = conn.cursor()
                for op in rng.choices(names, weights, k=rng.randint(3, 10)):
                    self._op(i, rng, cur, op)
            except Exception as e:  # noqa: BLE001 - reported with the figures
                self._note(unexpected=f"worker {i}: {e!r}")
            finally:
                conn.close()
            time.sleep(rng.uniform(0.1, 0.5))

    def _new_id(self, i):
        self.next_id[i] += 1
        return i * 1_000_000_000 + self.next_id[i]

    def _fail(self, cur, sql, args, codes):
        """Runs a statement that must fail with one of codes."""
        try:
            cur.execute(sql, args)
        except psycopg2.Error as e:
            if e.pgcode in codes:
                self._note(statements=1, errors_sent=1)
                return
            raise
        raise AssertionError(f"{sql!r} did not fail")

    def _op(self, i, rng, cur, op):
        ec = psycopg2.errorcodes
        if op == "select":
            cur.execute("SELECT abalance FROM pgbench_accounts WHERE aid = %s",
                        (rng.randint(1, SCALE * 100000),))
            cur.fetchall()
            self._note(statements=1)
        elif op == "insert":
            k = self._new_id(i)
            cur.execute("INSERT INTO soak_items (id, worker, note) VALUES (%s, %s, md5(%s))",
                        (k, i, str(k)))
            self.ids[i].append(k)
            self._note(statements=1)
        elif op == "update":
            if not self.ids[i]:
                return
            cur.execute("UPDATE soak_items SET note = md5(note) WHERE id = %s",
                        (rng.choice(self.ids[i]),))
            self._note(statements=1)
        elif op == "txn":
            k = self._new_id(i)
            cur.execute("BEGIN")
            cur.execute("INSERT INTO soak_items (id, worker, note) VALUES (%s, %s, 'txn')",
                        (k, i))
            cur.execute("UPDATE soak_items SET note = note || '+' WHERE id = %s", (k,))
            cur.execute("SELECT count(*) FROM soak_items WHERE worker = %s", (i,))
            cur.fetchall()
            cur.execute("COMMIT")
            self.ids[i].append(k)
            self._note(statements=5)
        elif op == "div0":
            self._fail(cur, "SELECT %s / 0", (rng.randint(1, 100),), {ec.DIVISION_BY_ZERO})
        elif op == "no_table":
            self._fail(cur, "SELECT * FROM soak_no_such_table WHERE id = %s",
                       (rng.randint(1, 100),), {ec.UNDEFINED_TABLE})
        elif op == "syntax":
            self._fail(cur, "SELEC 1", (), {ec.SYNTAX_ERROR})
        elif op == "duplicate":
            if not self.ids[i]:
                return
            self._fail(cur, "INSERT INTO soak_items (id, worker, note) VALUES (%s, %s, 'dup')",
                       (rng.choice(self.ids[i]), i), {ec.UNIQUE_VIOLATION})
        elif op == "failed_txn":
            cur.execute("BEGIN")
            cur.execute("INSERT INTO soak_items (id, worker, note) VALUES (%s, %s, 'gone')",
                        (self._new_id(i), i))
            self._note(statements=2)
            self._fail(cur, "SELECT 1 / 0", (), {ec.DIVISION_BY_ZERO})
            self._fail(cur, "SELECT 1", (), {ec.IN_FAILED_SQL_TRANSACTION})
            cur.execute("ROLLBACK")
            self._note(statements=1)
        elif op == "big":
            cur.execute(BIG_SQL)
            n = len(cur.fetchall())
            if n != BIG_ROWS:
                raise AssertionError(f"big result: {n} rows, expected {BIG_ROWS}")
            self._note(statements=1, big_results=1)


# --------------------------------------------------------------------------- sampling

class LoadSampler:
    """Every SAMPLE_S during a load phase: the agent's RSS, RssAnon, fds, flows and
    pooled mirror connections; the largest of each."""

    def __init__(self, agent):
        self.agent = agent
        self.largest = {}
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="soak-sampler")
        self._thread.start()

    def _run(self):
        while not self._stop.wait(SAMPLE_S):
            try:
                rss, anon = proc_status(self.agent.pid)
                fds = fd_count(self.agent.pid)
                m = pgh.metrics(self.agent.metrics_addr)
                pool = pool_connections(m)
                cur = {"rss": rss, "anon": anon, "fds": fds,
                       "flows": int(m.get("mirror_capture_sessions_active")),
                       "mirror_conns": pool["in_use"] + pool["idle"]}
            except OSError as e:
                self.error = repr(e)
                continue
            for k, v in cur.items():
                self.largest[k] = max(self.largest.get(k, v), v)

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        return self.largest


def quiet_point(agent, src_mon, mir_mon, src_since, mir_since):
    """The agent settled with no client session open: its figures and the servers'."""
    m = tm.wait_settled(agent, SETTLE_TIMEOUT)
    time.sleep(0.5)  # sessions that ended with the last requests: let the agent see FINs
    fds = stable_fd_count(agent.pid)
    rss, anon = proc_status(agent.pid)
    m = tm.scrape(agent)
    pool = pool_connections(m)
    o = tm.outcomes(m)
    server_calls = src_mon.pgss_calls(DB)
    server_errors = src_mon.errors(DB, src_since)
    return {
        "fds": fds, "rss": rss, "anon": anon,
        "flows": int(m.get("mirror_capture_sessions_active")),
        "pool": pool, "mirror_conns": pool["in_use"] + pool["idle"],
        "mirror_backends": mir_mon.backends(DB),
        "agent_n": m.requests(DB), "agent_errors": sum(m.errors(DB).values()),
        "server_calls": server_calls, "server_errors": server_errors,
        "server_n": server_calls + server_errors,
        "mirror_log_errors": mir_mon.errors(DB, mir_since),
        "outcomes": o, "mirrored": int(m.get("mirror_latency_seconds_count", database=DB)),
        "databases": m.databases(), "metrics": m,
        "cpu_s": agent.cpu_seconds(),
    }


def mib(v):
    return f"{v / MIB:.1f}"


def kib(v):
    return f"{v / 1024:.0f}"


# one line per cycle: these columns, each value right-aligned under its title
COLUMNS = [("min", 5), ("RSS MiB", 7), ("RssAnon KiB (load max)", 22), ("fds (max)", 9),
           ("flows (max)", 11), ("mirror conns pool/pg", 20),
           ("requests agent/server (diff)", 30), ("errors agent/server", 19),
           ("mirror err c/q/t", 16), ("dropped", 7), ("sessions", 8)]
HEADER = "  " + "  ".join(f"{title:>{width}}" for title, width in COLUMNS)


def print_line(minutes, q, load, sessions):
    o = q["outcomes"]
    values = [
        f"{minutes:.1f}", mib(q["rss"]), f"{kib(q['anon'])} ({kib(load.get('anon', 0))})",
        f"{q['fds']} ({load.get('fds', 0)})", f"{q['flows']} ({load.get('flows', 0)})",
        f"{q['mirror_conns']}/{q['mirror_backends']}",
        f"{q['agent_n']}/{q['server_n']} ({q['agent_n'] - q['server_n']:+d})",
        f"{q['agent_errors']}/{q['server_errors']}",
        f"{o['connection']}/{o['query']}/{o['timeout']}", str(o["dropped"]), str(sessions)]
    print("  " + "  ".join(f"{v:>{w}}" for v, (_, w) in zip(values, COLUMNS)), flush=True)


# --------------------------------------------------------------------------- targets

def report(rows):
    """PASS/FAIL per row (as tests/bench/scale.py); the number of failures."""
    print("  targets")
    failures = 0
    for name, value, target, ok in rows:
        failures += not ok
        print(f"    {name:<44} {value:>22}   target {target:<12} {'PASS' if ok else 'FAIL'}")
    return failures


def fd_groups(points):
    """{(flows, mirror connections): [fds of each quiet point]}."""
    groups = {}
    for q in points:
        groups.setdefault((q["flows"], q["mirror_conns"]), []).append(q["fds"])
    return groups


def target_rows(points, warmup, invariant_error, workload_problems, exit_code):
    rows = []
    # RssAnon after the warm-up
    if len(points) > warmup:
        base = points[warmup - 1]["anon"]
        later = [q["anon"] for q in points[warmup:]]
        growth = max(later) - base
        rows.append((f"RssAnon growth after warm-up ({warmup} cycle(s))",
                     f"{growth / 1024:+.0f} KiB", "<= 1 MiB", growth <= TARGET_ANON_GROWTH))
    else:
        rows.append((f"RssAnon growth after warm-up ({warmup} cycle(s))",
                     "no cycle after it", "<= 1 MiB", False))
    # fds at equal session counts
    groups = fd_groups(points)
    comparable = {k: v for k, v in groups.items() if len(v) >= 2}
    same = all(len(set(v)) == 1 for v in groups.values())
    no_flows = all(q["flows"] == 0 for q in points)
    shown = "; ".join(f"{'='.join(map(str, v))}" for v in comparable.values()) or "-"
    rows.append(("fds equal at equal sessions (quiet points)", shown,
                 "all equal", bool(comparable) and same))
    rows.append(("flows open at quiet points", ",".join(str(q["flows"]) for q in points),
                 "== 0", bool(points) and no_flows))
    # counts
    exact = all(q["agent_n"] == q["server_n"] and q["agent_errors"] == q["server_errors"]
                for q in points)
    last = points[-1] if points else None
    rows.append(("requests agent == server (every quiet point)",
                 f"{last['agent_n']}/{last['server_n']}" if last else "-", "exact",
                 bool(points) and exact and last["agent_n"] > 0))
    errors = sum(last["outcomes"][e] for e in ERROR_STATES) if last else -1
    rows.append(("mirror errors (connection/query/timeout)", str(errors), "== 0",
                 errors == 0))
    rows.append(("outcome invariant", "yes" if not invariant_error else "no", "must hold",
                 not invariant_error))
    rows.append(("workload as designed (clients, pgbench)",
                 "yes" if not workload_problems else f"{len(workload_problems)} problem(s)",
                 "must hold", not workload_problems))
    rows.append(("agent exit 0 after SIGINT", str(exit_code), "must hold", exit_code == 0))
    return rows


# --------------------------------------------------------------------------- main

def unable():
    """Why the benchmark cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (BPF)"
    binary = h.agent_binary()
    try:
        res = h.run([binary, "--help"], check=False, timeout=10)
    except (OSError, AssertionError):
        res = None
    if res is None or "--mirror" not in res.stdout + res.stderr:
        return f"{binary} missing or without --mirror; run make"
    return None


def on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def cycle_plan():
    """(number of cycles, seconds per cycle)."""
    total = max(MINUTES * 60, 20.0)
    n = max(1, int(total / 60 + 0.5))
    return n, total / n


def run_cycles(src, mir, agent, workers, marks, points, problems):
    """The load phases and quiet points; fills points, problems. marks: the csvlog
    positions (source, mirror) from before the agent started."""
    n, length = cycle_plan()
    src_mon, mir_mon = Monitor(src), Monitor(mir)
    pgbenches = []
    src_since, mir_since = marks
    try:
        began = time.monotonic()
        q0 = {"rss": proc_status(agent.pid), "fds": fd_count(agent.pid)}
        print(f"  agent at start: RSS {mib(q0['rss'][0])} MiB, RssAnon {mib(q0['rss'][1])} "
              f"MiB, {q0['fds']} fds")
        print(HEADER)
        for c in range(1, n + 1):
            cycle_end = began + c * length
            load_s = int(cycle_end - QUIET_S - time.monotonic())
            if load_s < 5:
                load_s = 5  # behind schedule (a slow quiet point): still a load phase
            load_end = time.monotonic() + load_s
            pgbenches = [
                Pgbench(src, f"soak-tpcb-{c}", ["-n", "-M", "simple", "-c", PGBENCH_CLIENTS,
                                                "-j", 1, "-R", TPCB_RATE, "-T", load_s]),
                Pgbench(src, f"soak-select-{c}", ["-n", "-S", "-M", "prepared", "-c",
                                                  PGBENCH_CLIENTS, "-j", 1, "-R",
                                                  SELECT_RATE, "-T", load_s]),
            ]
            sampler = LoadSampler(agent)
            threads, before = workers.run_phase(load_end)
            try:
                sessions = workers.join(threads, before, load_s + 120)
                for p in pgbenches:
                    _, problem = p.wait(load_s + 120)
                    if problem:
                        problems.append(f"cycle {c}: {problem}")
            finally:
                load = sampler.stop()
            if not agent.running():
                raise AssertionError(f"the agent exited ({agent.proc.returncode}) during "
                                     f"cycle {c}\nstderr:\n{agent.stderr()[-3000:]}")
            q = quiet_point(agent, src_mon, mir_mon, src_since, mir_since)
            q.update(load=load, sessions=sessions, minutes=(time.monotonic() - began) / 60)
            points.append(q)
            print_line(q["minutes"], q, load, sessions)
            if sampler.error:
                print(f"    (load sampler: {sampler.error})")
            rest = cycle_end - time.monotonic()
            if rest > 0 and c < n:
                time.sleep(rest)
    finally:
        for p in pgbenches:
            p.kill()
        workers.stop.set()
        src_mon.close()
        mir_mon.close()


def summary(points, warmup, result, workers, problems, cpu_start):
    last = points[-1]
    m = last["metrics"]
    o = last["outcomes"]
    try:
        tm.check_invariant(m)
        invariant_error = None
    except AssertionError as e:
        invariant_error = str(e)
    print()
    print("summary")
    base = points[warmup - 1] if len(points) >= warmup else points[0]
    print(f"  RssAnon at quiet points (KiB): {', '.join(kib(q['anon']) for q in points)}; "
          f"baseline after warm-up {kib(base['anon'])}; largest under load "
          f"{kib(max(q['load'].get('anon', 0) for q in points))}")
    print(f"  RSS at quiet points (MiB): {', '.join(mib(q['rss']) for q in points)}")
    print(f"  fds at quiet points: {', '.join(str(q['fds']) for q in points)}; fds - mirror "
          f"connections: {', '.join(str(q['fds'] - q['mirror_conns']) for q in points)}; "
          f"groups (flows, mirror connections): "
          f"{ {k: v for k, v in fd_groups(points).items()} }")
    conns = ", ".join(f"{q['mirror_conns']}/{q['mirror_backends']}" for q in points)
    print(f"  flows at quiet points: {', '.join(str(q['flows']) for q in points)}; mirror "
          f"connections (pool / mirror pg_stat_activity): {conns}; pool gauges at the end "
          f"{last['pool']}")
    print(f"  requests in {DB}: agent {last['agent_n']}, server {last['server_n']} "
          f"(pg_stat_statements {last['server_calls']} + ERROR records "
          f"{last['server_errors']}); source errors: agent {last['agent_errors']}, source log "
          f"{last['server_errors']}, mirror log {last['mirror_log_errors']}, failed as "
          f"designed by the psycopg2 sessions {workers.errors_sent}")
    o = dict(o)
    skips = o.pop("skip_reasons")
    drops = {k: int(v) for k, v in
             m.by_label("mirror_dropped_requests_total", "reason").items() if v}
    print(f"  mirrored in {DB}: {last['mirrored']} "
          f"({last['mirrored'] / max(last['agent_n'], 1):.4%}); outcomes {o}, skipped by "
          f"reason {skips}; dropped by reason {drops}; databases seen {last['databases']}")
    print(f"  psycopg2: {workers.sessions} sessions, {workers.statements} statements, "
          f"{workers.big_results} results of {BIG_ROWS} rows; agent CPU "
          f"{last['cpu_s'] - cpu_start:.1f} s "
          f"({(last['cpu_s'] - cpu_start) * 1e6 / max(last['agent_n'], 1):.1f} µs per "
          f"request)")
    if invariant_error:
        print(f"  metrics inconsistent: {invariant_error.splitlines()[0]}")
    for p in problems[:10]:
        print(f"  workload problem: {p}")
    for u in workers.unexpected[:10]:
        print(f"  unexpected client error: {u}")
    problems = problems + workers.unexpected
    rows = target_rows(points, warmup, invariant_error, problems, result.returncode)
    failures = report(rows)
    if failures:
        print(f"  agent stderr (tail):\n{result.stderr[-1500:]}")
    return failures


def main():
    why = unable()
    if why:
        print(f"soak benchmark: {why}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, on_sigterm)
    began = time.monotonic()
    n, length = cycle_plan()
    warmup = max(1, -(-n // 10))
    print(f"soak benchmark: {MINUTES:g} min as {n} cycle(s) of {length:.0f} s (load, then a "
          f"quiet point; warm-up {warmup} cycle(s)); pgbench TPC-B -R {TPCB_RATE} and "
          f"select-only -R {SELECT_RATE} (-c {PGBENCH_CLIENTS} each), {WORKERS} psycopg2 "
          f"session workers, scale {SCALE}; load average "
          f"{Path('/proc/loadavg').read_text().split()[:3]} on {os.cpu_count()} CPUs",
          flush=True)
    points, problems = [], []
    workers = None
    failures = 1
    with pgh.pg_server(name="soak-src", settings=SERVER_SETTINGS) as src, \
            pgh.pg_server(name="soak-mir", settings=SERVER_SETTINGS) as mir:
        for pg in (src, mir):
            pg.createdb(DB)
            pg.pgbench_init(DB, scale=SCALE)
            pg.psql(SOAK_SCHEMA, db=DB)
            pg.psql("VACUUM ANALYZE", db=DB)
            pg.psql("CHECKPOINT")
        src.pgss_reset()  # before the agent: the harness's own statements are not counted
        marks = (src.raise_log_mark(), mir.raise_log_mark())
        workers = Workers(src, SEED)
        agent = start_agent(src, mir)
        try:
            cpu_start = agent.cpu_seconds()
            version = [lbl.get("version") for lbl, _ in
                       tm.scrape(agent).select("mirror_build_info")]
            print(f"  agent {agent.argv[0]} version {', '.join(map(str, version)) or '?'}, "
                  f"pid {agent.pid}", flush=True)
            try:
                run_cycles(src, mir, agent, workers, marks, points, problems)
            except AssertionError as e:
                problems.append(f"run stopped: {e}")
                print(f"  run stopped: {e}", flush=True)
            result = scale.stop_agent(agent, timeout=30)
        finally:
            if workers is not None:
                workers.stop.set()
            agent.kill()
        if points:
            failures = summary(points, warmup, result, workers, problems, cpu_start)
        else:
            print(f"  no quiet point reached: FAIL\n  agent stderr (tail):\n"
                  f"{result.stderr[-1500:]}")
    print(f"\n{'PASS' if failures == 0 else 'FAIL'}: {failures} line(s) failed; "
          f"{time.monotonic() - began:.0f} s")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: everything is stopped by now
        print(f"\nsoak benchmark interrupted ({e or 'Ctrl-C'}); agent, pgbench and clusters "
              f"stopped: FAIL", file=sys.stderr)
        sys.exit(1)
