"""Real PostgreSQL 15 servers for the integration tests, the demo and the benchmarks, and
the agent's /metrics as numbers (standard library only; nothing here imports pytest).

- PgServer: a throwaway cluster in a fresh temporary directory: initdb and pg_ctl from
  /usr/lib/postgresql/15/bin run as the `postgres` OS user (PostgreSQL refuses to run as
  root), trust authentication for local, 127.0.0.1/32 and ::1/128 (replication too),
  listening on 127.0.0.1 (and ::1 when asked) on a free port, Unix socket in the
  temporary directory, pg_stat_statements preloaded, every statement logged to a csvlog,
  optional SSL with a self-signed certificate. Use it as a context manager (or
  `with pg_server(...) as pg`): the server is always stopped (`pg_ctl stop -m immediate`
  when a fast stop fails or on an exception) and the directory removed.
- Clients run as root over TCP with `-U postgres` (psql -X, pgbench); see PgServer.psql,
  .query, .pgbench, .createdb.
- The server's own record of what it served: csvlog records (PgServer.log_records,
  .log_mark, .sync_log), counted per database (count_requests, count_errors) and
  pg_stat_statements (pgss_reset, pgss_calls).
- The agent's /metrics: scrape(), parse_metrics(), wait_metrics_stable(),
  histogram_quantile().

What counts as a request in the log
-----------------------------------
With `log_statement = 'all'` (and log_duration off, log_min_duration_statement = -1,
log_min_duration_sample = -1, log_replication_commands off for these counts) PostgreSQL 15
writes exactly one LOG record per request a client backend *executes*:

- simple Query ('Q'): one `statement: <text>` record per Query message, however many
  statements the text holds (`SELECT 1; SELECT 2` is one record), also when the query
  fails (the record is written before execution), also for an empty query string, also
  in an aborted transaction (the record, then ERROR 25P02), also for
  `COPY ... FROM STDIN` (the CopyData that follows belongs to it: no more records);
- extended protocol: one `execute <stmt>[/<portal>]: <text>` record per Execute ('E')
  message (`execute fetch from ...` when a suspended portal is resumed); Parse and Bind
  write nothing (they would only with log_duration / log_min_duration_statement, which
  are off). Exceptions where the server writes nothing although the client sent an
  Execute (all verified): an Execute of an empty query string (answered
  EmptyQueryResponse before the log call); Executes the server skips because an earlier
  message of the same pipeline failed (it discards messages until Sync); and an Execute
  whose own Parse or Bind failed (a syntax error, an undefined table, or `SELECT 1/0`,
  which fails while Bind plans the statement) — then the ERROR record has no `execute`
  record before it. The tests therefore cause errors only with the simple protocol
  (psql, psycopg2); pgbench's traffic has none;
- FunctionCall ('F'): one `fastpath function call: "<name>" (OID n)` record (psql's
  \\lo_import uses four of them).

So count_requests(db) counts records with error_severity = LOG, backend_type = `client
backend`, database_name = db and a message starting with `statement: `, `execute ` (an
`execute <name>: ` / `execute fetch from <name>: ` prefix) or `fastpath function call: `.
Walsenders (replication connections, backend_type `walsender`) are excluded: the agent
does not decode them. ERROR records are counted by count_errors(db) per SQLSTATE class
(first two characters of sql_state_code), client backends only (an autovacuum worker's
ERROR is nobody's request). Verified empirically against psql (-c, scripts on stdin,
COPY and \\copy, \\lo_import, errors in transactions), pgbench -M simple/extended/prepared,
psycopg2 and hand-built extended-protocol messages; see tests/integration/test_source.py.

The log is written by the logging collector, asynchronously to the clients: call
sync_log() (it runs a marker query and waits for its record) before counting; records
written before the marker query are then all in the file, since backends write to the
collector's pipe in order and the collector writes the file line-buffered.

Use log_mark() before a phase and pass the mark to count_requests/count_errors to count
only what was logged after it.
"""

import contextlib
import csv
import dataclasses
import io
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pgshadow_harness as h

PG_BIN = Path(os.environ.get("PGSHADOW_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_OS_USER = "postgres"
PG_DB_USER = "postgres"

# PostgreSQL 15's csvlog columns, in order.
CSV_COLUMNS = ("log_time", "user_name", "database_name", "process_id", "connection_from",
               "session_id", "session_line_num", "command_tag", "session_start_time",
               "virtual_transaction_id", "transaction_id", "error_severity",
               "sql_state_code", "message", "detail", "hint", "internal_query",
               "internal_query_pos", "context", "query", "query_pos", "location",
               "application_name", "backend_type", "leader_pid", "query_id")
LogRecord = dataclasses.make_dataclass("LogRecord", CSV_COLUMNS)

# One record per executed request (see the module docstring).
REQUEST_MESSAGE_RE = re.compile(r"^(statement: |execute (fetch from )?.*?: |"
                                r"fastpath function call: )", re.S)

# Settings written to every cluster's postgresql.conf (values are PostgreSQL literals).
BASE_SETTINGS = {
    "shared_preload_libraries": "'pg_stat_statements'",
    "logging_collector": "on",
    "log_destination": "'csvlog'",
    "log_filename": "'postgresql.log'",  # csvlog writes postgresql.csv
    "log_rotation_age": "0",
    "log_rotation_size": "0",
    "log_file_mode": "0644",
    "log_statement": "'all'",
    "log_duration": "off",
    "log_min_duration_statement": "-1",
    "log_min_duration_sample": "-1",
    "log_replication_commands": "off",
    "log_connections": "off",
    "log_disconnections": "off",
    "log_checkpoints": "off",
    "log_autovacuum_min_duration": "-1",
    "max_connections": "100",
    "max_wal_senders": "10",
    "wal_level": "replica",
    # a throwaway cluster: durability is not what is tested
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "pg_stat_statements.track": "top",
    "pg_stat_statements.track_utility": "on",
    "pg_stat_statements.max": "10000",
}


def as_postgres(argv):
    """argv run as the postgres OS user (root cannot run PostgreSQL's server tools)."""
    return ["runuser", "-u", PG_OS_USER, "--"] + [str(a) for a in argv]


def pg_tool(name):
    return str(PG_BIN / name)


def _chown_postgres(path):
    shutil.chown(path, user=PG_OS_USER, group=PG_OS_USER)


@dataclasses.dataclass
class PgbenchResult:
    returncode: int
    stdout: str
    stderr: str
    transactions: int  # "number of transactions actually processed"
    failed: int        # "number of failed transactions" (0 when not printed)
    tps: float         # "tps = N (without initial connection time)"
    argv: list


def parse_pgbench(out):
    """(transactions, failed, tps) from pgbench's report; None where not found."""
    tx = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    return (int(tx.group(1)) if tx else None, int(failed.group(1)) if failed else 0,
            float(tps.group(1)) if tps else None)


class PgServer:
    """One throwaway PostgreSQL 15 cluster. start() / stop() / cleanup(), or a context
    manager that does all three. Not thread-safe.

    ipv6: also listen on ::1. ssl: ssl=on with a self-signed certificate for CN=localhost
    (helper clients then use sslmode=disable so that only the sessions a test opens with
    sslmode=require are encrypted). settings: more postgresql.conf lines {name: literal}. netns, listen:
    the postmaster runs in network namespace netns and listens on address listen only
    (trusting clients from 192.0.2.0/24); the test's own helpers then connect over the
    Unix socket, which a namespace does not hide.
    """

    def __init__(self, name="pg", ipv6=False, ssl=False, port=None, settings=None,
                 parent_dir=None, netns=None, listen=None):
        self.name = name
        self.ipv6 = ipv6
        self.ssl = ssl
        self.port = port
        self.settings = dict(BASE_SETTINGS)
        self.settings.update(settings or {})
        self.parent_dir = parent_dir
        self.dir = None
        self.running = False
        self.host = "127.0.0.1"
        self.netns = netns
        self.listen = listen

    # ------------------------------------------------------------------ paths

    @property
    def data_dir(self):
        return self.dir / "data"

    @property
    def socket_dir(self):
        return self.dir / "sock"

    @property
    def log_dir(self):
        return self.dir / "log"

    @property
    def csvlog_path(self):
        return self.log_dir / "postgresql.csv"

    @property
    def hosts(self):
        if self.listen:
            return (self.listen,)
        return ("127.0.0.1", "::1") if self.ipv6 else ("127.0.0.1",)

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout=60):
        """initdb, configure, pg_ctl start -w; creates pg_stat_statements in `postgres`.
        On failure everything is undone and AssertionError raised with the server's log."""
        assert self.dir is None, "start() called twice"
        self.dir = Path(tempfile.mkdtemp(prefix=f"pgshadow-{self.name}-",
                                         dir=self.parent_dir))
        try:
            self._start(timeout)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _start(self, timeout):
        _chown_postgres(self.dir)
        self.dir.chmod(0o700)
        for sub in (self.socket_dir, self.log_dir):
            sub.mkdir()
            _chown_postgres(sub)
        h.run(as_postgres([pg_tool("initdb"), "-D", self.data_dir, "-U", PG_DB_USER,
                           "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
                           "--no-instructions"]), timeout=120)
        if self.port is None:
            self.port = h.free_port(hosts=("127.0.0.1", "::1"))
        conf = dict(self.settings)
        conf.update({
            "listen_addresses": "'" + ",".join(self.hosts) + "'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "log_directory": f"'{self.log_dir}'",
        })
        if self.ssl:
            self._make_certificate()
            conf.update({"ssl": "on", "ssl_cert_file": "'server.crt'",
                         "ssl_key_file": "'server.key'"})
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write("\n# pgshadow test harness\n")
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")
        (self.data_dir / "pg_hba.conf").write_text(
            "# pgshadow test harness: trust on loopback only\n"
            "local all         all                trust\n"
            "host  all         all  127.0.0.1/32  trust\n"
            "host  all         all  ::1/128       trust\n"
            "local replication all                trust\n"
            "host  replication all  127.0.0.1/32  trust\n"
            "host  replication all  ::1/128       trust\n"
            + ("host  all         all  192.0.2.0/24  trust\n" if self.listen else ""))
        if self.netns:
            self.host = str(self.socket_dir)
        start = as_postgres([pg_tool("pg_ctl"), "start", "-w", "-t", str(timeout), "-D",
                             self.data_dir, "-l", self.dir / "pg_ctl.log"])
        res = h.run(h.netns_prefix(self.netns) + start, check=False, timeout=timeout + 30)
        if res.returncode != 0:
            raise AssertionError(f"pg_ctl start failed (exit {res.returncode}) for "
                                 f"{self.name} on port {self.port}:\n{res.stderr}\n"
                                 f"{self._startup_log()}")
        self.running = True
        self.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def _make_certificate(self):
        crt, key = self.data_dir / "server.crt", self.data_dir / "server.key"
        h.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
               "-subj", "/CN=localhost", "-keyout", key, "-out", crt], timeout=60)
        for path in (crt, key):
            _chown_postgres(path)
            path.chmod(0o600)

    def _startup_log(self):
        parts = []
        for path in (self.dir / "pg_ctl.log", self.csvlog_path):
            try:
                parts.append(f"--- {path.name}:\n{path.read_text(errors='replace')[-4000:]}")
            except OSError:
                pass
        return "\n".join(parts)

    def stop(self, mode="fast", timeout=60):
        """pg_ctl stop -m mode; falls back to -m immediate, then to SIGKILL of the
        postmaster. No-op when not running."""
        if not self.running:
            return
        res = h.run(as_postgres([pg_tool("pg_ctl"), "stop", "-w", "-t", str(timeout), "-m",
                                 mode, "-D", self.data_dir]), check=False,
                    timeout=timeout + 30) if mode != "immediate" else None
        if res is None or res.returncode != 0:
            res = h.run(as_postgres([pg_tool("pg_ctl"), "stop", "-w", "-t", "30", "-m",
                                     "immediate", "-D", self.data_dir]), check=False,
                        timeout=60)
        if res.returncode != 0:
            self._kill_postmaster()
        self.running = False

    def _kill_postmaster(self):
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    def cleanup(self, mode="fast"):
        """Stops the server (if running) and removes its directory."""
        try:
            self.stop(mode)
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        if self.dir is None:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.cleanup("immediate" if exc_type is not None else "fast")
        return False

    # ------------------------------------------------------------------ clients

    def conninfo(self, dbname="postgres", host=None, **extra):
        """A libpq conninfo string for a TCP connection as postgres."""
        parts = {"host": host or self.host, "port": self.port, "user": PG_DB_USER,
                 "dbname": dbname}
        if self.ssl and "sslmode" not in extra:
            parts["sslmode"] = "disable"
        parts.update(extra)
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def client_env(self, dbname="postgres", host=None, sslmode=None):
        """Environment for libpq clients run as root over TCP."""
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("PG"):
                del env[k]
        env.update({"PGHOST": host or self.host, "PGPORT": str(self.port),
                    "PGUSER": PG_DB_USER, "PGDATABASE": dbname, "PGCONNECT_TIMEOUT": "10",
                    "PGGSSENCMODE": "disable"})
        if sslmode or self.ssl:
            env["PGSSLMODE"] = sslmode or "disable"
        return env

    def _client(self, argv, env, input=None, timeout=120, check=True):
        argv = [str(a) for a in argv]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, env=env, input=input,
                                 timeout=timeout, cwd="/")
        except subprocess.TimeoutExpired:
            raise AssertionError(f"timed out after {timeout}s: {' '.join(argv)}")
        if check and res.returncode != 0:
            raise AssertionError(f"failed (exit {res.returncode}): {' '.join(argv)}\n"
                                 f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}")
        return res

    def psql(self, sql=None, db="postgres", input=None, args=(), on_error_stop=True,
             check=True, host=None, sslmode=None, timeout=120):
        """Runs psql -X -q. sql: one -c command (one Query message, however many
        statements it holds) or a list of them (one -c each). input: a script on stdin
        (psql splits it into one Query per statement; COPY data follows its COPY)."""
        argv = [pg_tool("psql"), "-X", "-q", "-v", f"ON_ERROR_STOP={int(on_error_stop)}"]
        for cmd in ([sql] if isinstance(sql, str) else (sql or [])):
            argv += ["-c", cmd]
        argv += list(args)
        return self._client(argv, self.client_env(db, host, sslmode), input=input,
                            timeout=timeout, check=check)

    def query(self, sql, db="postgres"):
        """Rows of one query (text values), through psql -A -t."""
        res = self.psql(sql, db=db, args=["-A", "-t", "-F", "\t"])
        return [line.split("\t") for line in res.stdout.splitlines() if line != ""]

    def scalar(self, sql, db="postgres"):
        rows = self.query(sql, db)
        assert rows and rows[0], f"no value from {sql!r}"
        return rows[0][0]

    def createdb(self, name, template=None):
        extra = f" TEMPLATE {template}" if template else ""
        self.psql(f'CREATE DATABASE "{name}"{extra}')

    def pgbench(self, args, db, check=True, timeout=600, sslmode=None):
        """Runs pgbench (as root over TCP, -U postgres) with args; returns PgbenchResult.
        Fails when check and pgbench exits non-zero or reports failed transactions."""
        argv = [pg_tool("pgbench")] + [str(a) for a in args] + [db]
        res = self._client(argv, self.client_env(db, sslmode=sslmode), timeout=timeout,
                           check=check)
        tx, failed, tps = parse_pgbench(res.stdout)
        out = PgbenchResult(res.returncode, res.stdout, res.stderr, tx, failed, tps, argv)
        if check and "-i" not in args and "--initialize" not in args:
            assert tx is not None and failed == 0, \
                f"pgbench reported {tx} transactions, {failed} failed:\n{res.stdout}\n{res.stderr}"
        return out

    def pgbench_init(self, db, scale=1):
        return self.pgbench(["-i", "-q", "-s", scale], db)

    # ------------------------------------------------------------------ the server's log

    def log_mark(self):
        """A position in the csvlog: records after it are read by log_records(since=mark).
        Call sync_log() first if earlier activity must be before the mark."""
        try:
            return self.csvlog_path.stat().st_size
        except FileNotFoundError:
            return 0

    def raise_log_mark(self, timeout=20):
        """log_mark() after everything logged so far, whatever log_statement says: a RAISE
        LOG marker is written and waited for (sync_log needs log_statement = all)."""
        token = f"pgshadow-mark-{uuid.uuid4().hex}"
        self.psql(f"DO $$ BEGIN RAISE LOG '{token}'; END $$")
        deadline = time.monotonic() + timeout
        while not any(token in r.message for r in self.log_records()):
            assert time.monotonic() < deadline, \
                f"marker {token} not in {self.csvlog_path} after {timeout}s"
            time.sleep(0.05)
        return self.log_mark()

    def log_records(self, since=0):
        """Parsed csvlog records (LogRecord) from byte offset `since`; an incomplete last
        record (being written) is left out."""
        try:
            with open(self.csvlog_path, "rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        text = data[:end + 1].decode("utf-8", errors="replace")
        out = []
        for row in csv.reader(io.StringIO(text, newline="")):
            if len(row) == len(CSV_COLUMNS):
                out.append(LogRecord(*row))
        return out

    def sync_log(self, timeout=20):
        """Waits until everything logged so far is in the csvlog: runs a marker query (in
        database postgres) and waits for its record. Returns the records read."""
        token = f"pgshadow-log-sync-{uuid.uuid4().hex}"
        self.psql(f"SELECT '{token}'")
        deadline = time.monotonic() + timeout
        while True:
            records = self.log_records()
            if any(token in r.message for r in records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"marker {token} not in {self.csvlog_path} after "
                                     f"{timeout}s")
            time.sleep(0.05)

    def request_records(self, db, since=0, records=None):
        """The csvlog records counted as requests of database db (see module docstring)."""
        records = self.log_records(since) if records is None else records
        return [r for r in records if is_request_record(r) and r.database_name == db]

    def count_requests(self, db, since=0, sync=True):
        """Requests executed in database db after log mark `since`, per the server's log."""
        if sync:
            self.sync_log()
        return len(self.request_records(db, since))

    def count_errors(self, db, since=0, sync=True):
        """{sqlstate class: count} of ERROR records of client backends in db."""
        if sync:
            self.sync_log()
        out = {}
        for r in self.log_records(since):
            if is_error_record(r) and r.database_name == db:
                cls = r.sql_state_code[:2] or "unknown"
                out[cls] = out.get(cls, 0) + 1
        return out

    # ------------------------------------------------------------------ pg_stat_statements

    def pgss_reset(self):
        self.psql("SELECT pg_stat_statements_reset()")

    def pgss_calls(self, db):
        """Sum of pg_stat_statements calls for database db since the last pgss_reset().

        Not the request count in general: pg_stat_statements counts each statement of
        a multi-statement Query, skips failed statements, and does not count a utility
        statement (BEGIN, END...) executed again through a prepared statement (pgbench
        -M prepared: BEGIN/END counted once per connection). It equals the log's count
        for pgbench -M simple and -M extended (verified), which the tests use as a
        cross-check of the log."""
        return int(self.scalar(
            "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid "
            f"WHERE d.datname = '{db}'"))

    def pgss_statements(self, db):
        """[(calls, query)] of database db, most called first."""
        rows = self.query(
            "SELECT s.calls, regexp_replace(s.query, '\\s+', ' ', 'g') FROM "
            "pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            f"WHERE d.datname = '{db}' ORDER BY s.calls DESC, s.query")
        return [(int(r[0]), r[1]) for r in rows]


# pgbench's tables without pgbench_history.mtime (now() on each side): what the mirror
# tests compare as multisets.
PGBENCH_COLUMNS = {
    "pgbench_accounts": "aid, bid, abalance, filler",
    "pgbench_tellers": "tid, bid, tbalance, filler",
    "pgbench_branches": "bid, bbalance, filler",
    "pgbench_history": "tid, bid, aid, delta, filler",
}
# TPC-B's invariant: these four sums are equal (and the history's row count).
PGBENCH_SUMS_SQL = ("SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts), "
                    "(SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches), "
                    "(SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers), "
                    "(SELECT coalesce(sum(delta), 0) FROM pgbench_history), "
                    "(SELECT count(*) FROM pgbench_history)")


def add_password_roles(pg, roles, hba_lines, grants=()):
    """Creates roles {name: (method, password)} (md5, scram-sha-256 or password, the
    stored hash to match) and puts hba_lines(role, method) — pg_hba.conf text — before the
    existing lines, then reloads. grants: SQL run for each role, "{role}" replaced."""
    for role, (method, pw) in roles.items():
        enc = "md5" if method == "md5" else "scram-sha-256"
        pg.psql([f"SET password_encryption = '{enc}'",
                 f"CREATE ROLE {role} LOGIN PASSWORD '{pw}'"]
                + [g.format(role=role) for g in grants])
    hba = pg.data_dir / "pg_hba.conf"
    hba.write_text("".join(hba_lines(role, method) for role, (method, _) in roles.items())
                   + hba.read_text())
    pg.psql("SELECT pg_reload_conf()")


def inserts_then_error(cur, n):
    """n INSERTs into table e (id, text) of a psycopg2 cursor in autocommit, a query of a
    missing table (an error), then a count of e checked to be n: n + 2 requests."""
    import psycopg2
    for i in range(n):
        cur.execute("INSERT INTO e VALUES (%s, %s)", (i, f"v{i}"))
    try:
        cur.execute("SELECT * FROM no_such_table_here")
    except psycopg2.Error:
        pass
    cur.execute("SELECT count(*) FROM e WHERE id >= %s", (0,))
    assert cur.fetchone()[0] == n


def is_request_record(r):
    return (r.error_severity == "LOG" and r.backend_type == "client backend"
            and REQUEST_MESSAGE_RE.match(r.message) is not None)


def request_kinds(records):
    """{"statement"|"execute"|"fastpath": count} of request records (for messages)."""
    out = {}
    for r in records:
        kind = r.message.split(" ", 1)[0].rstrip(":")
        out[kind] = out.get(kind, 0) + 1
    return out


def is_error_record(r):
    return r.error_severity == "ERROR" and r.backend_type == "client backend"


@contextlib.contextmanager
def pg_server(**kw):
    """with pg_server(name=..., ssl=..., ipv6=...) as pg: a started PgServer, always
    stopped and removed afterwards."""
    server = PgServer(**kw)
    server.start()
    try:
        yield server
    except BaseException:
        server.cleanup("immediate")
        raise
    server.cleanup("fast")


# --------------------------------------------------------------------------- /metrics

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$')
LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(value):
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse_labels(text):
    labels, pos = {}, 0
    text = text.strip()
    while pos < len(text):
        m = LABEL_RE.match(text, pos)
        if not m:
            raise ValueError(f"bad label set {{{text}}} at {pos}")
        labels[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return labels


class Metrics:
    """A parsed /metrics scrape: samples {(name, frozenset(labels)): value}."""

    def __init__(self, text):
        self.text = text
        self.samples = {}
        self.types = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                parts = line.split()
                if len(parts) >= 4:
                    self.types[parts[2]] = parts[3]
                continue
            if not line.strip() or line.startswith("#"):
                continue
            m = SAMPLE_RE.match(line)
            if not m:
                raise ValueError(f"unparsable metrics line: {line!r}")
            labels = parse_labels(m.group(3) or "")
            value = float(m.group(4).replace("+Inf", "inf").replace("-Inf", "-inf"))
            self.samples[(m.group(1), frozenset(labels.items()))] = value

    def get(self, name, default=0.0, **labels):
        """The sample of name with exactly these labels (default when absent)."""
        return self.samples.get((name, frozenset(labels.items())), default)

    def has(self, name, **labels):
        return (name, frozenset(labels.items())) in self.samples

    def select(self, name, **labels):
        """[(labels dict, value)] of name whose labels include the given ones."""
        want = set(labels.items())
        return [(dict(lbl), v) for (n, lbl), v in self.samples.items()
                if n == name and want <= set(lbl)]

    def by_label(self, name, label, **labels):
        """{value of `label`: sum of samples} for name (filtered by labels)."""
        out = {}
        for lbl, v in self.select(name, **labels):
            key = lbl.get(label)
            out[key] = out.get(key, 0.0) + v
        return out

    def requests(self, db):
        return int(self.get("mirror_source_requests_total", database=db))

    def errors(self, db):
        """{sqlstate_class: count} for database db (zero counts left out)."""
        return {k: int(v) for k, v in
                self.by_label("mirror_source_errors_total", "sqlstate_class",
                              database=db).items() if v}

    def databases(self):
        return sorted(lbl["database"] for lbl, _ in self.select("mirror_source_requests_total")
                      if "database" in lbl)

    def histogram(self, name, **labels):
        """[(upper bound, cumulative count)] sorted, plus (sum, count)."""
        buckets = []
        for lbl, v in self.select(name + "_bucket", **labels):
            if set(lbl) - {"le"} != set(labels):
                continue
            le = lbl["le"]
            buckets.append((math.inf if le in ("+Inf", "inf") else float(le), v))
        buckets.sort()
        return buckets, self.get(name + "_sum", **labels), self.get(name + "_count", **labels)

    def stable_view(self):
        """The samples that must stop changing once traffic is over: every mirror_*
        sample (process_* keep moving with the agent's own CPU and memory)."""
        return {k: v for k, v in self.samples.items() if k[0].startswith("mirror_")
                and k[0] not in MOVING_GAUGES}


# Gauges that move with the clock even when no traffic flows.
MOVING_GAUGES = {"mirror_last_success_seconds_ago"}


def scrape(addr, path="/metrics", timeout=5):
    """GET http://addr/path; returns (body text, Content-Type)."""
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as resp:
        return resp.read().decode("utf-8"), resp.headers.get("Content-Type", "")


def metrics(addr):
    return Metrics(scrape(addr)[0])


def wait_metrics_stable(addr, interval=0.3, timeout=20):
    """Scrapes until two scrapes `interval` apart agree on every mirror_* sample (the
    agent ingests on a poll of up to 100 ms and ends requests on the server's packets), at most
    `timeout` seconds; returns the last Metrics (raises AssertionError if never stable)."""
    deadline = time.monotonic() + timeout
    prev = metrics(addr)
    while True:
        time.sleep(interval)
        cur = metrics(addr)
        if cur.stable_view() == prev.stable_view():
            return cur
        if time.monotonic() > deadline:
            changed = sorted(str(k) for k in set(cur.stable_view()) | set(prev.stable_view())
                             if cur.stable_view().get(k) != prev.stable_view().get(k))
            raise AssertionError(f"/metrics at {addr} still changing after {timeout}s: "
                                 f"{changed[:10]}")
        prev = cur


def histogram_quantile(q, buckets):
    """Prometheus-style quantile estimate from cumulative buckets [(le, count)] (linear
    interpolation inside the bucket; the +Inf bucket answers its lower bound). None when
    there are no observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def agent_supports_metrics(binary):
    """True when the agent's --help lists --metrics-listen (the source-metrics build)."""
    res = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=10)
    return "--metrics-listen" in (res.stdout + res.stderr)
