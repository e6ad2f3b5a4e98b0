#!/usr/bin/python3
"""`sudo make demo`: pgshadow watching a live PostgreSQL source, end to end.

Starts a throwaway source and mirror PostgreSQL 15 pair under temporary directories (run
as the postgres OS user), creates two databases on the source (app, reports) with
`pgbench -i`, attaches the agent to the source's port on lo, drives ~20 s of pgbench
traffic (app: -M prepared, reports: -M simple, plus a few deliberate errors), then prints
what the agent observed, read from its /metrics: per-database requests, errors by SQLSTATE
class, p50/p99 latency estimated from the histogram buckets, request rate, next to the
count in the server's own log; and the capture health (packets, ring-buffer drops, gaps,
resyncs), and what the agent replayed to the mirror (mirrored, dropped, errors, replay
delay) with the pgbench tables compared on both sides.

Everything is stopped and removed on exit, on an error and on Ctrl-C / SIGTERM.
Environment: PGSHADOW_DEMO_SECONDS (traffic duration, default 20), PGSHADOW_BIN (the agent,
default build/pgshadow). Needs root (BPF; PostgreSQL itself runs as postgres).
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))
import pg_harness as pgh  # noqa: E402
import pgshadow_harness as h  # noqa: E402

SECONDS = int(os.environ.get("PGSHADOW_DEMO_SECONDS", 20))
DATABASES = ("app", "reports")
SCALE = 2
ERROR_EVERY = 2.0  # seconds between bursts of deliberate errors
ERROR_SQL = {  # database -> statements that fail (one request and one error each)
    "app": ["INSERT INTO pgbench_branches (bid, bbalance) VALUES (1, 0)",  # 23505
            "SELECT * FROM no_such_table",                                  # 42P01
            "SELECT 1 / 0"],                                                # 22012
    "reports": ["SELECT abalance / 0 FROM pgbench_accounts WHERE aid = 1",  # 22012
                "SELECT missing_column FROM pgbench_tellers"],              # 42703
}


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def say(msg=""):
    print(msg, flush=True)


def fmt_seconds(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def error_bursts(source, stop, caused):
    """Every ERROR_EVERY seconds, each failing statement of ERROR_SQL once per database
    (psql -c per statement: one Query, one ErrorResponse each)."""
    while not stop.wait(ERROR_EVERY):
        for db, stmts in ERROR_SQL.items():
            res = source.psql(stmts, db=db, on_error_stop=False, check=False, timeout=30)
            caused[db] = caused.get(db, 0) + res.stderr.count("ERROR:")


# Rate per database (tps): on a 2-core machine an unthrottled pgbench leaves no CPU for
# the mirror, and the demo would only show drops.
RATE = 100


def start_pgbench(source, db, mode, clients, seconds):
    argv = [pgh.pg_tool("pgbench"), "-n", "-M", mode, "-c", str(clients), "-j",
            str(min(clients, 2)), "-T", str(seconds), "-R", str(RATE), db]
    return subprocess.Popen(argv, env=source.client_env(db), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/",
                            start_new_session=True)


def progress(addr, started, seconds, procs):
    """One line every 4 s while pgbench runs: requests so far per database."""
    last = {}
    while any(p.poll() is None for p in procs):
        time.sleep(4)
        try:
            m = pgh.metrics(addr)
        except OSError:
            continue
        t = time.monotonic() - started
        parts = []
        for db in DATABASES:
            n = m.requests(db)
            parts.append(f"{db} {n:>8} requests ({(n - last.get(db, 0)) / 4:>7.0f}/s)")
            last[db] = n
        say(f"  t={min(t, seconds):4.0f}s  " + "   ".join(parts))


def print_report(m, agent, source, since, seconds, caused, stderr_tail):
    say()
    say(f"Per-database source figures, from http://{agent.metrics_addr}/metrics "
        f"(latency: first request byte to completing answer, kernel timestamps; p50/p99 "
        f"estimated from the histogram buckets):")
    header = (f"  {'database':<10} {'requests':>9} {'req/s':>8} {'p50':>10} {'p99':>10} "
              f"{'mean':>10}  {'errors by SQLSTATE class':<26} {'server log':>10}")
    say(header)
    say("  " + "-" * (len(header) - 2))
    source.sync_log()
    records = source.log_records(since)
    for db in sorted(set(m.databases()) | set(DATABASES)):
        n = m.requests(db)
        buckets, total_s, count = m.histogram("mirror_source_latency_seconds", database=db)
        p50 = pgh.histogram_quantile(0.5, buckets)
        p99 = pgh.histogram_quantile(0.99, buckets)
        mean = total_s / count if count else None
        errors = m.errors(db)
        err = " ".join(f"{cls}:{n_}" for cls, n_ in sorted(errors.items())) or "-"
        logged = len(source.request_records(db, records=records)) if db in DATABASES \
            else None
        verdict = "" if logged is None else ("=" if logged == n else "≠")
        say(f"  {db:<10} {n:>9} {n / seconds:>8.0f} {fmt_seconds(p50):>10} "
            f"{fmt_seconds(p99):>10} {fmt_seconds(mean):>10}  {err:<26} "
            f"{'' if logged is None else logged:>10} {verdict}")
    say("  (server log: the source's own csvlog lines for the database with "
        "log_statement=all,\n   one per Query or Execute: '=' when the agent counted "
        "exactly as many)")
    for db in DATABASES:
        got = sum(m.errors(db).values())
        say(f"  deliberate errors in {db}: {caused.get(db, 0)} caused, {got} counted")

    say()
    say("Capture health:")
    for label, name in (("packets", "mirror_capture_packets_total"),
                        ("payload bytes", "mirror_capture_bytes_total"),
                        ("ring-buffer drops", "mirror_capture_ringbuf_drops_total"),
                        ("stream gaps", "mirror_capture_stream_gaps_total"),
                        ("resyncs", "mirror_capture_resyncs_total"),
                        ("sessions active", "mirror_capture_sessions_active"),
                        ("encrypted sessions", "mirror_capture_encrypted_sessions_total"),
                        ("replication sessions",
                         "mirror_capture_replication_sessions_total")):
        say(f"  {label:<21} {int(m.get(name)) if m.has(name) else '-'}")
    abandoned = m.get("mirror_capture_abandoned_requests_total")
    say(f"  {'abandoned requests':<21} {int(abandoned)}")
    cpu = m.get("process_cpu_seconds_total")
    rss = m.get("process_resident_memory_bytes")
    say(f"  agent CPU {cpu:.2f} s, resident memory {rss / 2**20:.1f} MiB")
    if stderr_tail:
        say(f"  agent: {stderr_tail}")


def print_mirror(m, source, mirror):
    """What was replayed, and whether the mirror's pgbench tables equal the source's."""
    say()
    say("Mirror (every request of every database replayed, in causal order):")
    g = m.get
    say(f"  requests {g('mirror_requests_total'):.0f}, mirrored "
        f"{g('mirror_requests_mirrored'):.0f}, dropped {g('mirror_requests_dropped'):.0f}, "
        f"errors connection/query/timeout {g('mirror_errors_connection'):.0f}/"
        f"{g('mirror_errors_query'):.0f}/{g('mirror_errors_timeout'):.0f}, in flight "
        f"{g('mirror_requests_in_flight'):.0f}, order waits "
        f"{g('mirror_replay_order_waits_total'):.0f}")
    kinds = {k: int(v) for k, v in m.by_label("mirror_mismatches_total", "kind").items()}
    compared = sum(v for _, v in m.select("mirror_compared_total"))
    say(f"  answers compared with the source's (tag, row count, SQLSTATE): {compared:.0f}, "
        f"mismatches {sum(kinds.values())} {kinds if any(kinds.values()) else ''}".rstrip())
    for db in DATABASES:
        buckets, _, count = m.histogram("mirror_replay_delay_seconds", database=db)
        if count:
            p50 = pgh.histogram_quantile(0.5, buckets)
            p99 = pgh.histogram_quantile(0.99, buckets)
            say(f"  {db}: replay delay (source completion to mirror completion) p50 "
                f"{p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
        q = ("SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
             "(SELECT count(*) FROM pgbench_history)")
        a, b = source.query(q, db), mirror.query(q, db)
        say(f"  {db}: source sum(abalance), history rows = {a}; mirror = {b} "
            f"{'(equal)' if a == b else '(DIFFERENT)'}")


def main():
    if os.geteuid() != 0:
        say("make demo needs root (it loads a BPF program): run `sudo make demo`")
        return 1
    binary = h.agent_binary()
    if not binary.is_file():
        say(f"{binary} is missing: run `make` first")
        return 1
    if not pgh.agent_supports_metrics(binary):
        say(f"{binary} has no --metrics-listen yet (source metrics, issue 3): rebuild")
        return 1
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    root = Path(tempfile.mkdtemp(prefix="pgshadow-demo-"))
    root.chmod(0o755)  # the postgres user must reach the clusters below it
    source = pgh.PgServer(name="source", parent_dir=root)
    mirror = pgh.PgServer(name="mirror", parent_dir=root)
    agent, procs, stop_errors, err_thread = None, [], threading.Event(), None
    status = 1
    try:
        say(f"pgshadow demo: throwaway PostgreSQL pair under {root}")
        source.start()
        say(f"  source  PostgreSQL 15 on 127.0.0.1:{source.port} (log_statement=all, csvlog)")
        mirror.start()
        say(f"  mirror  PostgreSQL 15 on 127.0.0.1:{mirror.port} (every request is replayed "
            f"to it)")
        for db in DATABASES:
            source.createdb(db)
            source.pgbench_init(db, scale=SCALE)
            mirror.createdb(db)
            mirror.pgbench_init(db, scale=SCALE)
        say(f"  databases {', '.join(DATABASES)} on the source, pgbench -i -s {SCALE} each")

        source.sync_log()
        since = source.log_mark()
        addr = f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',))}"
        agent = h.Agent(binary, source.port, ["lo"], logdir=root, name="agent",
                        extra=["--metrics-listen", addr, "--mirror",
                               f"host=127.0.0.1 port={mirror.port} user=postgres"])
        agent.metrics_addr = addr
        agent.start().wait_ready()
        say(f"  agent   {' '.join(agent.argv)}")
        say("          " + next(ln for ln in agent.stderr().splitlines()
                                   if h.READY_RE.search(ln)).strip())

        say()
        say(f"Traffic for {SECONDS} s: app: pgbench -M prepared -c 4 -j 2; reports: pgbench "
            f"-M simple -c 2 -j 2; deliberate errors every {ERROR_EVERY:g} s "
            f"(23505, 42P01, 22012 in app; 22012, 42703 in reports)")
        caused = {}
        started = time.monotonic()
        procs = [start_pgbench(source, "app", "prepared", 4, SECONDS),
                 start_pgbench(source, "reports", "simple", 2, SECONDS)]
        err_thread = threading.Thread(target=error_bursts, args=(source, stop_errors, caused),
                                      daemon=True)
        err_thread.start()
        progress(addr, started, SECONDS, procs)
        stop_errors.set()
        err_thread.join(60)
        elapsed = time.monotonic() - started
        for p, db in zip(procs, ("app", "reports")):
            out, errout = p.communicate(timeout=60)
            tx, failed, tps = pgh.parse_pgbench(out)
            if p.returncode != 0:
                say(f"  pgbench on {db} failed (exit {p.returncode}): {errout.strip()[-500:]}")
            else:
                say(f"  pgbench on {db}: {tx} transactions, {tps:.0f} tps")

        m = pgh.wait_metrics_stable(addr, timeout=30)
        result = agent.stop(signal.SIGINT)
        stats_line = h.STATS_RE.search(result.stderr)
        print_report(m, agent, source, since, elapsed, caused,
                     stats_line.group(0).strip() if stats_line else
                     f"exit {result.returncode}, no stats line")
        print_mirror(m, source, mirror)
        status = 0 if result.returncode == 0 else 1
    except Interrupted as e:
        say(f"\ninterrupted ({e}): cleaning up")
        status = 130
    except AssertionError as e:
        say(f"\ndemo failed: {e}")
        if agent is not None:
            say(f"agent stderr:\n{agent.stderr()[-3000:]}")
    finally:
        # Cleanup must not be interrupted by a second Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_errors.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if agent is not None and agent.running():
            try:
                agent.stop(signal.SIGINT, timeout=20)
            except AssertionError:
                agent.kill()
        for server in (source, mirror):
            server.cleanup("immediate" if status else "fast")
        shutil.rmtree(root, ignore_errors=True)
        say(f"cleaned up: agent stopped, source and mirror stopped, {root} removed")
    return status


if __name__ == "__main__":
    sys.exit(main())
