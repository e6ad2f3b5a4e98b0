#!/usr/bin/python3
"""Contention benchmark: mirroring pgbench's TPC-B (the builtin tpcb-like script) at
scale 1 — one branch row that every transaction updates, ten teller rows — where replay
must keep each transaction whole and in the source's order of row locks, or the mirror
deadlocks, drops and ends with tables that differ from the source's.

For each client count (8 and 16):
1. A source and a mirror PostgreSQL 15 cluster on 127.0.0.1 (log_statement = none: the
   servers, not their logging, are measured; ERROR records, `deadlock detected`
   included, are logged whatever it says), CPU placement as in tests/bench/replay.py
   (split by default: the source cluster, pgbench, the agent and this script on the
   first half of the CPUs, the mirror cluster on the second half).
2. Maximum rate of the source, no agent: `pgbench -n -c N -j 2 -T SECONDS` (5 s) after
   `pgbench -i -s 1`.
3. For 10%, 25% and 50% of that maximum: both databases initialised afresh (`pgbench -i
   -s 1`, identical on both), checkpoint and writeback, then a fresh agent on lo
   mirroring to the mirror (defaults otherwise) while `pgbench -n -c N -j 2 -R RATE -T
   15` runs on the source; the benchmark waits until replay has finished (nothing in
   flight, counters unchanged over two scrapes), stops the agent with SIGINT and
   compares.

Printed per run: the rate asked and reached; mirrored % of the source's requests (7 per
transaction, pgbench's count; the agent's count next to it), drops, mirror errors by
type, `deadlock detected` records in the mirror's log, replay delay p50/p99 (the
mirror_replay_delay_seconds buckets), order waits (mirror_replay_order_waits_total),
whether every pgbench table on the mirror equals the source's as a multiset of rows
(pgbench_history without mtime), and whether TPC-B's invariant holds on the mirror:
sum(abalance) == sum(bbalance) == sum(tbalance) == sum(pgbench_history.delta).

Targets (PASS/FAIL), at 50% of the maximum: >= 99.9% mirrored, 0 drops, 0 deadlocks,
tables equal, replay delay p99 <= 50 ms. Exit status 0 when every target of every 50% run
passes, 1 otherwise. Needs root.

Environment: PGSHADOW_BENCH_CONTENTION_CLIENTS (default "8,16"),
PGSHADOW_BENCH_CONTENTION_FRACTIONS (default "0.10,0.25,0.50"), PGSHADOW_BENCH_SECONDS
(maximum-rate run, default 5), PGSHADOW_BENCH_RATE_SECONDS (mirrored run, default 15),
PGSHADOW_BENCH_MODE (pgbench -M, default simple), PGSHADOW_BENCH_AGENT_ARGS (more agent
flags), PGSHADOW_BENCH_PLACEMENT (split or shared, see replay.py), PGSHADOW_BIN. Takes
about 3 minutes with the defaults.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import replay as rp  # noqa: E402  (CPU placement, pinning, settling; adds the harness path)
import pg_harness as pgh  # noqa: E402
import pgshadow_harness as h  # noqa: E402

CLIENT_COUNTS = [int(x) for x in
                 os.environ.get("PGSHADOW_BENCH_CONTENTION_CLIENTS", "8,16").split(",")]
FRACTIONS = [float(x) for x in
             os.environ.get("PGSHADOW_BENCH_CONTENTION_FRACTIONS", "0.10,0.25,0.50").split(",")]
MAX_SECONDS = int(os.environ.get("PGSHADOW_BENCH_SECONDS", 5))
RATE_SECONDS = int(os.environ.get("PGSHADOW_BENCH_RATE_SECONDS", 15))
MODE = os.environ.get("PGSHADOW_BENCH_MODE", "simple")
AGENT_ARGS = os.environ.get("PGSHADOW_BENCH_AGENT_ARGS", "").split()
JOBS = 2
SCALE = 1
DB = "bench"
REQUESTS_PER_TX = 7      # BEGIN, UPDATE, SELECT, UPDATE, UPDATE, INSERT, END
SETTLE_TIMEOUT = 90

TARGET_FRACTION = 0.50   # the targets apply to the runs at this fraction of the maximum
TARGET_MIRRORED = 0.999
TARGET_DELAY_P99 = 0.050

SERVER_SETTINGS = {"log_statement": "'none'", "max_connections": "60"}

# Every column but pgbench_history.mtime (now() on each side); compared as multisets.
TABLE_COLUMNS = pgh.PGBENCH_COLUMNS
SUMS_SQL = pgh.PGBENCH_SUMS_SQL


def log_mark(pg):
    return pg.raise_log_mark()


def deadlocks_since(pg, since):
    log_mark(pg)  # everything before now is in the file
    return sum(1 for r in pg.log_records(since)
               if pgh.is_error_record(r) and r.database_name == DB and
               (r.sql_state_code == "40P01" or "deadlock detected" in r.message))


def table_digests(pg):
    """{table: (rows, digest of the sorted rows)}: equal digests, equal multisets."""
    out = {}
    for table, cols in TABLE_COLUMNS.items():
        row = pg.query(f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY "
                       f"t::text), '')) FROM (SELECT {cols} FROM {table}) t", DB)[0]
        out[table] = (int(row[0]), row[1])
    return out


def tpcb_sums(pg):
    return [int(v) for v in pg.query(SUMS_SQL, DB)[0][:4]]  # the count is not a sum


def init_both(src, mir):
    for pg in (src, mir):
        pg.pgbench_init(DB, scale=SCALE)
    rp.quiesce(src, mir)


def tpcb_args(clients, seconds, rate=None):
    args = ["-n", "-M", MODE, "-c", clients, "-j", min(JOBS, clients), "-T", seconds]
    if rate:
        args += ["-R", int(rate)]
    return args


def mirrored_run(binary, src, mir, clients, rate):
    """One mirrored run at a fixed rate from freshly initialised tables: its figures."""
    init_both(src, mir)
    msince = log_mark(mir)
    addr = f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',))}"
    conninfo = f"host={mir.host} port={mir.port} user=postgres"
    agent = h.Agent(binary, src.port, ["lo"], logdir=src.dir, name=f"contention-{clients}",
                    extra=["--metrics-listen", addr, "--mirror", conninfo] + AGENT_ARGS)
    settled = True
    try:
        agent.start().wait_ready()
        deadline = time.monotonic() + 10
        while True:
            try:
                pgh.scrape(addr)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"/metrics at {addr} not answering\n{agent.stderr()}")
                time.sleep(0.1)
        run = src.pgbench(tpcb_args(clients, RATE_SECONDS, rate), DB,
                          timeout=RATE_SECONDS + 120)
        t_end = time.monotonic()
        try:
            m = rp.wait_settled(addr, timeout=SETTLE_TIMEOUT)
        except AssertionError as e:
            print(f"  (not settled: {e})")
            settled = False
            m = pgh.metrics(addr)
        settle_s = time.monotonic() - t_end
        result = agent.stop(signal.SIGINT)
    finally:
        agent.kill()
    # The source only now: the agent has stopped (its port is captured).
    src_tables, mir_tables = table_digests(src), table_digests(mir)
    src_sums, mir_sums = tpcb_sums(src), tpcb_sums(mir)
    expected = REQUESTS_PER_TX * run.transactions
    buckets, _, _ = m.histogram("mirror_replay_delay_seconds", database=DB)
    return {
        "rate": rate, "tps": run.tps, "transactions": run.transactions,
        "expected": expected, "agent_requests": m.requests(DB),
        "mirrored": int(m.get("mirror_requests_mirrored")),
        # of the source's requests: pgbench's count, or the agent's where it saw more
        # (a transaction pgbench did not count as processed at the end of -T)
        "mirrored_fraction": (int(m.get("mirror_requests_mirrored")) /
                              max(expected, m.requests(DB), 1)),
        "dropped": int(m.get("mirror_requests_dropped")),
        "errors": {t: int(m.get(f"mirror_errors_{t}"))
                   for t in ("connection", "query", "timeout")},
        "deadlocks": deadlocks_since(mir, msince),
        "p50": pgh.histogram_quantile(0.5, buckets),
        "p99": pgh.histogram_quantile(0.99, buckets),
        "p99_beyond_buckets": beyond_buckets(0.99, buckets),
        "order_waits": int(m.get("mirror_replay_order_waits_total")),
        "tables_equal": src_tables == mir_tables,
        "tables_differing": [t for t in TABLE_COLUMNS if src_tables[t] != mir_tables[t]],
        "history_rows": (src_tables["pgbench_history"][0], mir_tables["pgbench_history"][0]),
        "source_sums": src_sums, "mirror_sums": mir_sums,
        "invariant": len(set(mir_sums)) == 1,
        "settled": settled, "settle_s": settle_s, "exit": result.returncode,
        "stderr_tail": agent.stderr()[-1500:],
    }


def beyond_buckets(q, buckets):
    """True when the q-quantile lies in the +Inf bucket (the estimate is then only the
    largest finite bound)."""
    if not buckets or buckets[-1][1] <= 0 or len(buckets) < 2:
        return False
    return buckets[-2][1] < q * buckets[-1][1]


def delay_text(r, key):
    text = rp.fmt_s(r[key])
    return f"> {text}" if key == "p99" and r["p99_beyond_buckets"] else text


def print_run(clients, fraction, r):
    print(f"  {clients} clients, {fraction:.0%} of max: -R {r['rate']:.0f}, reached "
          f"{r['tps']:.0f} tps ({r['transactions']} transactions in {RATE_SECONDS} s); "
          f"replay finished {r['settle_s']:.1f} s after pgbench"
          f"{'' if r['settled'] else ' (NOT settled)'}; agent exit {r['exit']}")
    print(f"    mirrored {r['mirrored_fraction']:.4%} ({r['mirrored']} of {r['expected']} "
          f"requests; the agent counted {r['agent_requests']}), drops {r['dropped']}, errors "
          f"{r['errors']}, mirror deadlocks {r['deadlocks']}")
    print(f"    replay delay p50 {delay_text(r, 'p50')}, p99 {delay_text(r, 'p99')}; order waits "
          f"{r['order_waits']}")
    diff = f" (differ: {', '.join(r['tables_differing'])})" if r["tables_differing"] else ""
    print(f"    tables equal: {'yes' if r['tables_equal'] else 'NO'}{diff}; history rows "
          f"source {r['history_rows'][0]}, mirror {r['history_rows'][1]}; TPC-B invariant "
          f"on the mirror: {'holds' if r['invariant'] else 'BROKEN'} (sums abalance, "
          f"bbalance, tbalance, delta: mirror {r['mirror_sums']}, source "
          f"{r['source_sums']})")


def target_rows(r):
    p99 = r["p99"]
    return [
        ("mirrored fraction", f"{r['mirrored_fraction']:.4%}", f">= {TARGET_MIRRORED:.1%}",
         r["mirrored_fraction"] >= TARGET_MIRRORED),
        ("drops", str(r["dropped"]), "== 0", r["dropped"] == 0),
        ("mirror deadlocks", str(r["deadlocks"]), "== 0", r["deadlocks"] == 0),
        ("tables equal", "yes" if r["tables_equal"] else "no", "yes", r["tables_equal"]),
        ("replay delay p99", delay_text(r, "p99"), f"<= {TARGET_DELAY_P99 * 1e3:.0f} ms",
         p99 is not None and p99 <= TARGET_DELAY_P99 and not r["p99_beyond_buckets"]),
    ]


def main():
    if os.geteuid() != 0:
        print("contention benchmark: needs root (BPF); skipped", file=sys.stderr)
        return 1
    binary = h.agent_binary()
    helptext = ""
    if binary.is_file():
        res = subprocess.run([str(binary), "--help"], capture_output=True, text=True,
                             timeout=10)
        helptext = res.stdout + res.stderr
    if "--mirror" not in helptext:
        print(f"contention benchmark: {binary} missing or without --mirror; run make",
              file=sys.stderr)
        return 1
    began = time.monotonic()
    cpus = lambda c: ",".join(map(str, sorted(c)))  # noqa: E731
    print(f"contention benchmark: pgbench TPC-B (tpcb-like, -M {MODE}) at scale {SCALE}, "
          f"{'/'.join(map(str, CLIENT_COUNTS))} clients, at "
          f"{', '.join(f'{f:.0%}' for f in FRACTIONS)} of the source's maximum for "
          f"{RATE_SECONDS} s each, mirrored to a local mirror (exposure 1.0)")
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]} on "
          f"{os.cpu_count()} CPUs")
    if rp.PLACEMENT == "split":
        print(f"placement: split — source cluster, pgbench and agent on CPU "
              f"{cpus(rp.SOURCE_CPUS)}; mirror cluster on CPU {cpus(rp.MIRROR_CPUS)}")
    else:
        print(f"placement: shared — everything on CPU {cpus(rp.SOURCE_CPUS)}")

    os.sched_setaffinity(0, rp.SOURCE_CPUS)  # pgbench and the agent start from here
    results = []
    with pgh.pg_server(name="contention-src", settings=SERVER_SETTINGS) as src, \
            pgh.pg_server(name="contention-mir", settings=SERVER_SETTINGS) as mir:
        rp.pin(src, rp.SOURCE_CPUS)
        rp.pin(mir, rp.MIRROR_CPUS)
        for pg in (src, mir):
            pg.createdb(DB)
        for clients in CLIENT_COUNTS:
            init_both(src, mir)
            src.pgbench(tpcb_args(clients, 2), DB)  # warm up
            max_tps = src.pgbench(tpcb_args(clients, MAX_SECONDS), DB).tps
            print(f"\n{clients} clients: maximum {max_tps:.0f} tps without the agent "
                  f"({MAX_SECONDS} s)")
            for fraction in FRACTIONS:
                r = mirrored_run(binary, src, mir, clients, max_tps * fraction)
                r.update(clients=clients, load=fraction, max_tps=max_tps)
                results.append(r)
                print_run(clients, fraction, r)
                if r["exit"] != 0 or not r["settled"]:
                    print(f"    agent stderr (tail):\n{r['stderr_tail']}")

    print("\nsummary (targets at 50% of the maximum)")
    print(f"  {'clients':>7} {'load':>5} {'tps':>6} {'mirrored':>10} {'drops':>7} "
          f"{'deadlk':>6} {'p50':>9} {'p99':>9} {'waits':>7} {'tables':>6} {'invariant':>9}")
    for r in results:
        print(f"  {r['clients']:>7} {r['load']:>5.0%} {r['tps']:>6.0f} "
              f"{r['mirrored_fraction']:>10.4%} "
              f"{r['dropped']:>7} {r['deadlocks']:>6} {delay_text(r, 'p50'):>9} "
              f"{delay_text(r, 'p99'):>9} {r['order_waits']:>7} "
              f"{'equal' if r['tables_equal'] else 'DIFFER':>6} "
              f"{'holds' if r['invariant'] else 'BROKEN':>9}")
    failures = 0
    for r in results:
        if abs(r["load"] - TARGET_FRACTION) > 1e-9:
            continue
        print(f"\ntargets, {r['clients']} clients at {TARGET_FRACTION:.0%} of the maximum "
              f"({r['rate']:.0f} tps)")
        for name, value, target, ok in target_rows(r):
            failures += not ok
            print(f"  {name:<24} {value:>14}   target {target:<10} {'PASS' if ok else 'FAIL'}")
    print(f"\n{'PASS' if failures == 0 else 'FAIL'}: {failures} target(s) missed; "
          f"{time.monotonic() - began:.0f} s")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
