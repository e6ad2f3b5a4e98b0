#!/usr/bin/python3
"""Replay benchmark (issue 4): mirroring a read-only pgbench load at a quarter of the
source's maximum rate, exposure 1.0.

1. A source and a mirror PostgreSQL 15 cluster on 127.0.0.1 (log_statement = none: the
   servers, not their logging, are measured), `pgbench -i -s SCALE` on both, VACUUM
   ANALYZE, a short warm-up run.
2. Maximum rate of the source, no agent: `pgbench -n -S -c 4 -j 2 -T 10`.
3. With the agent attached to lo and mirroring to the mirror (`--mirror 'host=127.0.0.1
   port=M user=postgres'`, defaults otherwise): `pgbench -n -S -c 4 -j 2 -R <25% of the
   maximum> -T 30`; the agent's /metrics is sampled every second (RSS, in-flight, queue
   fill); after the run the benchmark waits until replay has finished (nothing in flight,
   counters unchanged over two scrapes), then stops the agent with SIGINT.

Printed: the maximum TPS, the rate and the TPS reached; the benchmark database's source
requests (agent) next to pg_stat_statements' calls (the server's count: -S is single
statements without errors, -n runs no utility statements), mirrored, dropped, errors by
type, skipped by reason, in flight; p50/p99 of the replay delay (source completion to
mirror completion, from the mirror_replay_delay_seconds buckets), of the mirror latency
and of the source latency; order waits; the agent's RSS (last and largest sample) and CPU
seconds.

Targets (PASS/FAIL each): mirrored >= 99.9% of the source's requests in the benchmark
database, 0 drops; must hold: 100% decoded (agent == pg_stat_statements), no mirror
errors (connection, query, timeout; drops are their own target), the outcome invariant,
agent exit 0 after SIGINT. Exit status 0 when every line passes, 1 otherwise.
Needs root. Environment: PGSHADOW_BENCH_SECONDS (maximum-rate run, default 10),
PGSHADOW_BENCH_RATE_SECONDS (mirrored run, default 30), PGSHADOW_BENCH_SCALE (default 10),
PGSHADOW_BENCH_MODE (pgbench -M, default simple), PGSHADOW_BENCH_AGENT_ARGS (more agent
flags, for experiments), PGSHADOW_BENCH_CLIENTS (pgbench -c, default 4),
PGSHADOW_BENCH_TIMELINE=1 (print the per-second samples: requests, mirrored, dropped, queue
fill, in flight), PGSHADOW_BIN. Takes about a minute.

CPU placement (PGSHADOW_BENCH_PLACEMENT). In production the mirror cluster runs on its
own host; on one machine a local mirror takes its CPU from the source it mirrors. With
`split` (the default on 2 or more CPUs) the first half of the CPUs are the source host
(the source cluster, pgbench, the agent and this script) and the second half the mirror
host (the mirror cluster), set with sched_setaffinity on each cluster's postmaster and
processes (backends inherit it); the maximum is then the source host's. With `shared`
everything runs on every CPU: the mirror competes with the source and pgbench for the
same CPUs, and when pgbench's Poisson arrivals saturate them the mirror's backends get
no more CPU than the source's, so a backlog beyond a session's queue can build up
without any fault of the agent. Both are printed as measured; the targets apply to both.
Before each timed run both clusters checkpoint and the kernel writes back dirty pages
(`pgbench -i` leaves ~300 MB of them), so writeback does not land in the measurement.

Also printed: how much was pipelined (mirror_replay_pipelined_total, and of it the simple
reads sent as extended protocol) and how busy the machine's CPUs were during the mirrored
run: the local mirror shares them with the source, so at 25% of the source's maximum the
machine is far from idle and the mirror's share of it decides whether replay keeps up.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import pg_harness as pgh  # noqa: E402
import pgshadow_harness as h  # noqa: E402

SECONDS = int(os.environ.get("PGSHADOW_BENCH_SECONDS", 10))
RATE_SECONDS = int(os.environ.get("PGSHADOW_BENCH_RATE_SECONDS", 30))
SCALE = int(os.environ.get("PGSHADOW_BENCH_SCALE", 10))
MODE = os.environ.get("PGSHADOW_BENCH_MODE", "simple")
AGENT_ARGS = os.environ.get("PGSHADOW_BENCH_AGENT_ARGS", "").split()
CLIENTS = int(os.environ.get("PGSHADOW_BENCH_CLIENTS", 4))
TIMELINE = os.environ.get("PGSHADOW_BENCH_TIMELINE") == "1"
JOBS = 2
RATE_FRACTION = 0.25
DB = "bench"
SETTLE_TIMEOUT = 120

TARGET_MIRRORED = 0.999
TARGET_DROPS = 0

SERVER_SETTINGS = {"log_statement": "'none'", "max_connections": "50"}

ALL_CPUS = sorted(os.sched_getaffinity(0))
PLACEMENT = os.environ.get("PGSHADOW_BENCH_PLACEMENT",
                           "split" if len(ALL_CPUS) >= 2 else "shared")
if PLACEMENT == "split":
    SOURCE_CPUS = set(ALL_CPUS[:len(ALL_CPUS) // 2])
    MIRROR_CPUS = set(ALL_CPUS[len(ALL_CPUS) // 2:])
elif PLACEMENT == "shared":
    SOURCE_CPUS = MIRROR_CPUS = set(ALL_CPUS)
else:
    sys.exit(f"PGSHADOW_BENCH_PLACEMENT={PLACEMENT!r}: split or shared")


def cpu_times(cpus):
    """(busy, total) jiffies of the CPUs in cpus, from /proc/stat."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().split("\n"):
        name = line.split(" ", 1)[0]
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        fields = [int(x) for x in line.split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        busy += sum(fields) - idle
        total += sum(fields)
    return busy, total


def cluster_pids(pg):
    """The postmaster of pg and its processes."""
    master = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    pids = [master]
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and h.proc_stat(d.name).ppid == master:
                pids.append(int(d.name))
        except OSError:
            continue  # exited meanwhile
    return master, pids


def pin(pg, cpus):
    """Puts a cluster on cpus: its postmaster (backends forked later inherit it) and
    the processes it has."""
    for pid in cluster_pids(pg)[1]:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass  # exited meanwhile


def cluster_cpu_seconds(pg):
    """CPU seconds of a cluster: its live processes and (cutime, cstime) the ones its
    postmaster has reaped."""
    master, pids = cluster_pids(pg)
    total = 0
    for pid in pids:
        try:
            st = h.proc_stat(pid)
        except OSError:
            continue
        total += st.utime + st.stime + (st.cutime + st.cstime if pid == master else 0)
    return total / os.sysconf("SC_CLK_TCK")


def rss_anon_bytes(pid):
    """The agent's anonymous resident memory (heap, stacks): its RSS without the ring
    buffer, whose pages the kernel maps twice (a wrapped record reads contiguously)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def quiesce(*pgs):
    """Checkpoints the clusters and writes back dirty pages before a timed run."""
    for pg in pgs:
        pg.psql("CHECKPOINT")
    os.sync()


def pgbench_args(seconds, rate=None):
    args = ["-n", "-S", "-M", MODE, "-c", CLIENTS, "-j", JOBS, "-T", seconds]
    if rate:
        args += ["-R", int(rate)]
    return args


def settled_view(m):
    """mirror_* counters and histograms, and the in-flight gauge."""
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


def wait_settled(addr, timeout=SETTLE_TIMEOUT, interval=0.5):
    deadline = time.monotonic() + timeout
    prev = pgh.metrics(addr)
    while True:
        time.sleep(interval)
        cur = pgh.metrics(addr)
        if settled_view(cur) == settled_view(prev) and \
                cur.get("mirror_requests_in_flight") == 0:
            return cur
        if time.monotonic() > deadline:
            raise AssertionError(f"replay not settled after {timeout}s: in flight "
                                 f"{cur.get('mirror_requests_in_flight')}")
        prev = cur


def quantiles(m, name, qs=(0.5, 0.99)):
    buckets, _, _ = m.histogram(name, database=DB)
    return [pgh.histogram_quantile(q, buckets) for q in qs]


def fmt_s(v):
    if v is None:
        return "-"
    if v < 1e-3:
        return f"{v * 1e6:.0f} µs"
    if v < 1:
        return f"{v * 1e3:.2f} ms"
    return f"{v:.2f} s"


def main():
    if os.geteuid() != 0:
        print("replay benchmark: needs root (BPF); skipped", file=sys.stderr)
        return 1
    binary = h.agent_binary()
    helptext = ""
    if binary.is_file():
        res = subprocess.run([str(binary), "--help"], capture_output=True, text=True,
                             timeout=10)
        helptext = res.stdout + res.stderr
    if "--mirror" not in helptext:
        print(f"replay benchmark: {binary} missing or without --mirror; run make",
              file=sys.stderr)
        return 1
    began = time.monotonic()
    print(f"replay benchmark: pgbench {' '.join(map(str, pgbench_args(SECONDS)))} (scale "
          f"{SCALE}) without the agent, then -R at {RATE_FRACTION:.0%} of that for "
          f"{RATE_SECONDS} s mirrored to a local mirror (exposure 1.0)")
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]} on "
          f"{os.cpu_count()} CPUs")

    cpus = lambda c: ",".join(map(str, sorted(c)))  # noqa: E731
    if PLACEMENT == "split":
        print(f"placement: split — source cluster, pgbench and agent on CPU "
              f"{cpus(SOURCE_CPUS)}; mirror cluster on CPU {cpus(MIRROR_CPUS)} (as on "
              f"their own hosts; PGSHADOW_BENCH_PLACEMENT=shared to share them)")
    else:
        print(f"placement: shared — source, mirror, pgbench and agent on CPU "
              f"{cpus(SOURCE_CPUS)}")

    os.sched_setaffinity(0, SOURCE_CPUS)  # pgbench and the agent start from here
    with pgh.pg_server(name="bench-src", settings=SERVER_SETTINGS) as src, \
            pgh.pg_server(name="bench-mir", settings=SERVER_SETTINGS) as mir:
        pin(src, SOURCE_CPUS)
        pin(mir, MIRROR_CPUS)
        for pg in (src, mir):
            pg.createdb(DB)
            pg.pgbench_init(DB, scale=SCALE)
            pg.psql("VACUUM ANALYZE", db=DB)
        src.pgbench(pgbench_args(3), DB)  # warm the caches
        mir.pgbench(pgbench_args(3), DB)
        quiesce(src, mir)

        res = src.pgbench(pgbench_args(SECONDS), DB)
        max_tps = res.tps
        rate = max_tps * RATE_FRACTION
        print(f"maximum: {max_tps:.0f} tps without the agent; mirrored run at -R {rate:.0f}")

        addr = f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',))}"
        conninfo = f"host={mir.host} port={mir.port} user=postgres"
        agent = h.Agent(binary, src.port, ["lo"], logdir=src.dir, name="replay-agent",
                        extra=["--metrics-listen", addr, "--mirror", conninfo] + AGENT_ARGS)
        samples = []
        stop_sampling = threading.Event()

        def sampler():
            while not stop_sampling.is_set():
                try:
                    samples.append(pgh.metrics(addr))
                except OSError:
                    pass
                stop_sampling.wait(1.0)

        src.pgss_reset()  # before the agent: nothing of the harness is mirrored
        try:
            agent.start().wait_ready()
            deadline = time.monotonic() + 10
            while True:
                try:
                    pgh.scrape(addr)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"/metrics at {addr} not answering\n"
                                             f"{agent.stderr()}")
                    time.sleep(0.1)
            thread = threading.Thread(target=sampler, daemon=True)
            thread.start()
            quiesce(src, mir)
            cpu_before = agent.cpu_seconds()
            side_before = [cpu_times(SOURCE_CPUS), cpu_times(MIRROR_CPUS)]
            mirror_before = cluster_cpu_seconds(mir)
            source_before = cluster_cpu_seconds(src)
            run = src.pgbench(pgbench_args(RATE_SECONDS, rate), DB)
            side_after = [cpu_times(SOURCE_CPUS), cpu_times(MIRROR_CPUS)]
            t_end = time.monotonic()
            try:
                m = wait_settled(addr)
            finally:
                stop_sampling.set()
                thread.join(10)
            settle_s = time.monotonic() - t_end
            cpu_s = agent.cpu_seconds() - cpu_before
            rss_anon = rss_anon_bytes(agent.pid)
            mirror_cpu_s = cluster_cpu_seconds(mir) - mirror_before
            source_cpu_s = cluster_cpu_seconds(src) - source_before  # pgbench's reaped
            result = agent.stop(signal.SIGINT)
        finally:
            agent.kill()
        server = src.pgss_calls(DB)
        stderr_tail = agent.stderr()[-2000:]

    source_n = m.requests(DB)
    mirrored_db = int(m.get("mirror_latency_seconds_count", database=DB))
    total = int(m.get("mirror_requests_total"))
    mirrored = int(m.get("mirror_requests_mirrored"))
    dropped = int(m.get("mirror_requests_dropped"))
    errors = {t: int(m.get(f"mirror_errors_{t}"))
              for t in ("connection", "query", "timeout", "buffer_full")}
    skipped = {k: int(v) for k, v in
               m.by_label("mirror_requests_skipped_total", "reason").items() if v}
    not_sampled = int(sum(v for _, v in m.select("mirror_requests_not_sampled_total")))
    in_flight = int(m.get("mirror_requests_in_flight"))
    done = (not_sampled + sum(skipped.values()) + dropped + mirrored + errors["connection"] +
            errors["query"] + errors["timeout"] + in_flight)
    failed = errors["connection"] + errors["query"] + errors["timeout"]
    fraction = mirrored_db / source_n if source_n else 0.0
    delay = quantiles(m, "mirror_replay_delay_seconds")
    mlat = quantiles(m, "mirror_latency_seconds")
    slat = quantiles(m, "mirror_source_latency_seconds")
    rss = [s.get("process_resident_memory_bytes") for s in samples + [m]]
    util = [s.get("mirror_buffer_utilization") for s in samples]
    inflight = [s.get("mirror_requests_in_flight") for s in samples]

    print(f"mirrored run: {run.tps:.0f} tps reached (-R {rate:.0f}), {run.transactions} "
          f"transactions in {RATE_SECONDS} s; replay finished {settle_s:.1f} s after "
          f"pgbench")
    print(f"requests in {DB}: agent {source_n}, pg_stat_statements {server}; mirrored "
          f"{mirrored_db} ({fraction:.4%}); global: total {total}, mirrored {mirrored}, "
          f"dropped {dropped}, errors {errors}, skipped {skipped}, not sampled "
          f"{not_sampled}, in flight {in_flight}")
    print(f"replay delay p50 {fmt_s(delay[0])}, p99 {fmt_s(delay[1])}; mirror latency p50 "
          f"{fmt_s(mlat[0])}, p99 {fmt_s(mlat[1])}; source latency p50 {fmt_s(slat[0])}, "
          f"p99 {fmt_s(slat[1])}; order waits {int(m.get('mirror_replay_order_waits_total'))}; "
          f"pipelined {int(m.get('mirror_replay_pipelined_total'))} (simple reads sent as "
          f"extended protocol {int(m.get('mirror_replay_converted_total'))})")
    if TIMELINE:
        prev = None
        for i, s in enumerate(samples):
            cur = (s.get("mirror_requests_total"), s.get("mirror_requests_mirrored"),
                   s.get("mirror_requests_dropped"))
            if prev and None not in cur:
                print(f"  t={i:3d}s requests +{cur[0] - prev[0]:.0f} mirrored "
                      f"+{cur[1] - prev[1]:.0f} dropped +{cur[2] - prev[2]:.0f} queue fill "
                      f"{s.get('mirror_buffer_utilization'):.0f}% in flight "
                      f"{s.get('mirror_requests_in_flight'):.0f}")
            prev = cur
    busy = [a[0] - b[0] for a, b in zip(side_after, side_before)]
    total_j = [a[1] - b[1] for a, b in zip(side_after, side_before)]
    if PLACEMENT == "split":
        print(f"CPUs busy during the mirrored run: source host (CPU {cpus(SOURCE_CPUS)}) "
              f"{busy[0] / max(total_j[0], 1):.0%}, mirror host (CPU {cpus(MIRROR_CPUS)}) "
              f"{busy[1] / max(total_j[1], 1):.0%}")
    else:
        print(f"machine: {busy[0] / max(total_j[0], 1):.0%} of its CPUs busy during the "
              f"mirrored run (source, mirror, pgbench and agent share them)")
    print(f"clusters: source CPU {source_cpu_s:.2f} s "
          f"({source_cpu_s * 1e6 / max(source_n, 1):.1f} µs per request), mirror CPU "
          f"{mirror_cpu_s:.2f} s ({mirror_cpu_s * 1e6 / max(source_n, 1):.1f} µs per request)")
    print(f"agent: RSS {rss[-1] / 2 ** 20:.1f} MiB at the end, {max(rss) / 2 ** 20:.1f} MiB "
          f"largest of {len(rss)} samples (the ring buffer twice, anonymous memory "
          f"{rss_anon / 2 ** 20:.1f} MiB); CPU {cpu_s:.2f} s "
          f"({cpu_s * 1e6 / max(source_n, 1):.1f} µs per request); largest queue fill "
          f"{max(util, default=0):.0f}%, largest in flight {max(inflight, default=0):.0f}")

    rows = [
        ("mirrored fraction", f"{fraction:.4%}", f">= {TARGET_MIRRORED:.1%}",
         fraction >= TARGET_MIRRORED),
        ("drops", str(dropped), f"== {TARGET_DROPS}", dropped == TARGET_DROPS),
        ("100% decoded (agent == server)", f"{source_n}/{server}", "must hold",
         source_n == server and source_n > 0),
        ("no mirror errors (conn/query/timeout)", str(failed), "must hold", failed == 0),
        ("outcome invariant", f"{done}/{total}", "must hold", done == total),
        ("agent exit 0 after SIGINT", str(result.returncode), "must hold",
         result.returncode == 0),
    ]
    print()
    print("summary")
    print(f"  {'p50 replay delay':<38} {fmt_s(delay[0]):>14}")
    print(f"  {'p99 replay delay':<38} {fmt_s(delay[1]):>14}")
    print(f"  {'agent RSS (largest)':<38} {max(rss) / 2 ** 20:>10.1f} MiB")
    failures = 0
    for name, value, target, ok in rows:
        failures += not ok
        print(f"  {name:<38} {value:>14}   target {target:<10} {'PASS' if ok else 'FAIL'}")
    if failures:
        print(f"agent stderr (tail):\n{stderr_tail}")
    print(f"{'PASS' if failures == 0 else 'FAIL'}: {failures} of {len(rows)} failed; "
          f"{time.monotonic() - began:.0f} s")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
