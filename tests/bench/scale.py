#!/usr/bin/python3
"""Scale benchmark: mirroring at production scale through the pooled mirror.

One source and one mirror PostgreSQL 15 cluster on 127.0.0.1 (log_statement = none,
max_connections = 1100 on both: the source must take 1,000 sessions, and a mirror that
accepts them shows a pool that overshoots its cap instead of hiding it behind refused
connections), `pgbench -i -s SCALE` on both, VACUUM ANALYZE, a short warm-up. CPU
placement as in tests/bench/replay.py (PGSHADOW_BENCH_PLACEMENT, split by default: the
source cluster, pgbench, the agent and this script on the first half of the CPUs, the
mirror cluster on the second half). Every run has a fresh agent on lo mirroring to the
mirror (exposure 1.0); after pgbench the benchmark waits until replay has finished
(nothing in flight, counters unchanged over two scrapes) and stops the agent with SIGINT.

1. Many sessions: `pgbench -n -S -c 1000 -j 2 -R 2000 -t 2*SECONDS` (pgbench 15 polls its
   sockets with ppoll, so 1,000 clients on 2 threads work; -t rather than -T because
   pgbench's -T clock runs while it opens its connections, and on a VM where a fork
   takes tens of milliseconds 1,000 backends take longer than the run: -t 40 at -R 2000
   is 40,000 requests over 20 s once every session is open) with the agent started with
   `--mirror-max-connections 40`. The mirror's pg_stat_activity is sampled every 100 ms
   (client backends of the benchmark database, the sampler's own excluded:
   test_pool.ActivitySampler), the pool gauges and SHOW MIRROR POOLS every second.
   Targets: mirrored >= 99.9% of the source's requests in the database (mirrored there,
   mirror_latency_seconds_count, over the larger of the agent's count and
   pg_stat_statements' calls on the source); the sampled maximum of mirror connections
   <= 40 (mirror_pool_connections_peak printed next to it).
2. Connection per transaction: `pgbench -n -S -C -c 4 -R 200 -T SECONDS` (a new source
   session for every request; where connecting costs tens of milliseconds pgbench
   reaches less than 200/s, and the rate reached is printed). Target: mirrored >= 99.9%,
   as above.
3. Replay cost at 3,000 requests/s: `pgbench -n -S -c 4 -j 2 -R 3000 -T SECONDS`, at both
   placements (split, shared), first without the agent (pgbench's own CPU per request,
   for context), then with it. During the first half of the mirrored run `perf stat -e
   raw_syscalls:sys_enter -p <agent> -- sleep SECONDS/2` counts the agent's system calls
   (every thread), per request mirrored meanwhile. Counting a tracepoint costs the
   agent CPU at every call (15% of its figure: 0.65 against 0.56 of pgbench's, three
   interleaved rounds, 2026-12-08), so the agent's CPU (every thread's schedstat) and
   mirror_requests_mirrored are read again when perf has ended and near pgbench's end,
   and the agent's figure is the second half's; the first half's is printed beside it.
   pgbench's CPU is its own rusage (wait4). Printed beside them: the capture (main) and
   replay threads' CPU and wakeups per mirrored request (/proc/PID/task/TID/schedstat)
   and the share of requests pipelined behind another of their session
   (mirror_replay_pipelined_total), and in both runs the IPIs (rescheduling and
   function-call interrupts, /proc/interrupts) the source host's and the mirror's CPUs
   took per request. Targets: <= 2 system calls per mirrored
   request; agent CPU per mirrored request / pgbench CPU per request <= 0.5.

Every scenario also has two must-hold lines: the metrics are consistent (the outcome
invariant and its restatements, test_mirror.check_invariant) and the agent exits 0 after
SIGINT. Exit status 0 when every line passes, 1 otherwise. Needs root.

Environment: PGSHADOW_BENCH_SCALE_SECONDS (each pgbench run, default 20),
PGSHADOW_BENCH_SCALE_SESSIONS (scenario 1's clients, default 1000; its rate is twice
that), PGSHADOW_BENCH_SCALE_SCENARIOS (which to run, default "1,2,3"),
PGSHADOW_BENCH_SCALE (pgbench -i scale, default 10), PGSHADOW_BENCH_PLACEMENT (scenarios 1
and 2), PGSHADOW_BENCH_AGENT_ARGS (more agent flags), PGSHADOW_BIN. Takes about 4 minutes
with the defaults.
"""

import collections
import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import replay as rp  # noqa: E402  (placement, pinning, quiesce; adds the harness path)
import pg_harness as pgh  # noqa: E402
import pgshadow_harness as h  # noqa: E402
import test_mirror as tm  # noqa: E402  (outcomes, invariant, settling)
import test_pool as tp  # noqa: E402  (pg_stat_activity sampler, pool gauges)
import test_readiness as tr  # noqa: E402  (console queries)

SECONDS = int(os.environ.get("PGSHADOW_BENCH_SCALE_SECONDS", 20))
SESSIONS = int(os.environ.get("PGSHADOW_BENCH_SCALE_SESSIONS", 1000))
SCENARIOS = {s.strip() for s in
             os.environ.get("PGSHADOW_BENCH_SCALE_SCENARIOS", "1,2,3").split(",")}
SESSIONS_RATE = 2 * SESSIONS
POOL_CAP = 40
CHURN_CLIENTS, CHURN_RATE = 4, 200
COST_CLIENTS, COST_RATE = 4, 3000
DB = "bench"
# the system calls counted one by one in scenario 3 (besides their total)
SYSCALLS_SHOWN = ("sendto", "recvfrom", "epoll_wait", "write", "setsockopt", "ppoll",
                  "poll", "clock_nanosleep", "nanosleep", "read")
# the agent's threads whose CPU and wakeups scenario 3 shows: capture (the main thread)
# and replay
AGENT_THREADS = ("capture", "pgshadow-replay")
SETTLE_TIMEOUT = 30  # replay at these rates ends within seconds of pgbench
ACTIVITY_INTERVAL = 0.1

TARGET_MIRRORED = 0.999
TARGET_SYSCALLS = 2.0
TARGET_CPU_RATIO = 0.5

CONN_TIME_RE = re.compile(r"(initial|average) connection time = [\d.]+ ms")
TPS_RE = re.compile(r"tps = ([\d.]+) \((without initial connection|including "
                    r"reconnection) times?\)")

ACTIVITY_STATES_SQL = (f"SELECT state, wait_event, count(*) FROM pg_stat_activity WHERE "
                       f"datname = '{DB}' AND backend_type = 'client backend' AND pid <> "
                       f"pg_backend_pid() GROUP BY 1, 2 ORDER BY 3 DESC")

SERVER_SETTINGS = dict(rp.SERVER_SETTINGS, max_connections="1100")


def cpu_list(cpus):
    return ",".join(map(str, sorted(cpus)))


def placements():
    """{name: (source host CPUs, mirror host CPUs)} for scenario 3."""
    cpus = rp.ALL_CPUS
    out = {}
    if len(cpus) >= 2:
        out["split"] = (set(cpus[:len(cpus) // 2]), set(cpus[len(cpus) // 2:]))
    out["shared"] = (set(cpus), set(cpus))
    return out


def place(src, mir, source_cpus, mirror_cpus):
    os.sched_setaffinity(0, source_cpus)  # pgbench, perf and the agent start from here
    rp.pin(src, source_cpus)
    rp.pin(mir, mirror_cpus)


def start_agent(src, mir, name, extra=()):
    """A fresh agent on lo mirroring src to mir, ready and serving /metrics."""
    agent = h.Agent(h.agent_binary(), src.port, ["lo"], logdir=src.dir, name=name,
                    extra=["--mirror", f"host={mir.host} port={mir.port} user=postgres",
                           *map(str, extra), *rp.AGENT_ARGS])
    try:
        agent.start().wait_ready()
        for _ in range(100):
            try:
                pgh.scrape(agent.metrics_addr)
                return agent
            except OSError:
                time.sleep(0.1)
        tm.scrape(agent)  # fails with the agent's stderr
        return agent
    except BaseException:
        agent.kill()
        raise


def stop_agent(agent, timeout=15):
    """SIGINT: the AgentResult, its returncode a sentence when it did not exit."""
    try:
        return agent.stop(signal.SIGINT, timeout=timeout)
    except AssertionError:
        agent.kill()
        return h.AgentResult(f"no exit {timeout} s after SIGINT (killed)", agent.stderr(),
                             None)


def pgbench_rusage(src, args):
    """pgbench on the source: (PgbenchResult, its own CPU seconds from wait4)."""
    argv = [pgh.pg_tool("pgbench")] + [str(a) for a in args] + [DB]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=src.client_env(DB),
                                cwd="/")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    tx, failed, tps = pgh.parse_pgbench(stdout)
    if proc.returncode != 0 or tx is None or failed:
        raise AssertionError(f"{' '.join(argv)}: exit {proc.returncode}, {tx} transactions, "
                             f"{failed} failed\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return (pgh.PgbenchResult(proc.returncode, stdout, stderr, tx, failed, tps, argv),
            usage.ru_utime + usage.ru_stime)


def perf_count(text, event="raw_syscalls:sys_enter"):
    """The count of `event` in perf stat -x, output (None when perf counted nothing)."""
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] == event:
            return int(fields[0]) if fields[0].isdigit() else None
    return None


class PoolWatch:
    """Per second while a run lasts: the pool gauges' largest values, and the SHOW MIRROR
    POOLS row of the benchmark database with the most clients; `last` and `last_pools`
    are the latest poll's."""

    def __init__(self, agent):
        self.agent = agent
        self.largest = {}
        self.last = self.last_pools = None
        self.pools_row = None
        self.console_error = None
        self.states = []  # per poll: SHOW MIRROR SESSIONS states and their counts
        self.sched = []  # per poll: the replay thread's /proc schedstat (or None)
        self.rss_anon_kib = 0  # the agent's largest RssAnon seen

    def poll(self):
        try:
            status = Path(f"/proc/{self.agent.proc.pid}/status").read_text()
            anon = int(re.search(r"^RssAnon:\s+(\d+) kB", status, re.M).group(1))
            self.rss_anon_kib = max(self.rss_anon_kib, anon)
        except (OSError, AttributeError):
            pass
        self.last = tp.pool_gauges(tm.scrape(self.agent))
        for key, value in self.last.items():
            self.largest[key] = max(self.largest.get(key, value), value)
        try:
            cols, rows = tr.console_table(self.agent, "SHOW MIRROR POOLS")
        except Exception as e:  # noqa: BLE001 - reported with the figures
            self.console_error = repr(e)
            return
        self.last_pools = [dict(zip(cols, r)) for r in rows]
        try:
            cols, rows = tr.console_table(self.agent, "SHOW MIRROR SESSIONS")
            at = cols.index("state")
            self.states.append(collections.Counter(r[at] for r in rows))
        except Exception:  # noqa: BLE001 - a timeline sample, best effort
            pass
        self.sched.append(thread_schedstat(self.agent.proc.pid, "pgshadow-replay"))
        clients = lambda r: int(r["cl_active"]) + int(r["cl_waiting"])  # noqa: E731
        for row in self.last_pools:
            if row["database"] == DB and (self.pools_row is None or
                                          clients(row) >= clients(self.pools_row)):
                self.pools_row = row

    def during(self, fn, interval=1.0):
        """fn() in a thread, polling until it returns; its result."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(fn)
            while not future.done():
                self.poll()
                concurrent.futures.wait([future], timeout=interval)
            return future.result()


def mirrored_run(src, mir, name, args, extra=()):
    """One mirrored pgbench run with the mirror's pg_stat_activity and the pool watched:
    its figures."""
    src.pgss_reset()  # before the agent: the harness's own statements are not counted
    agent = start_agent(src, mir, name, extra)
    try:
        rp.quiesce(src, mir)
        watch = PoolWatch(agent)
        cpu_before = agent.cpu_seconds()
        with tp.ActivitySampler(mir, DB, interval=ACTIVITY_INTERVAL) as activity:
            began = time.monotonic()
            run = watch.during(lambda: src.pgbench(args, DB, timeout=SECONDS + 300))
            ran_s = time.monotonic() - began
            t_end = time.monotonic()
            try:
                m, stuck = tm.wait_settled(agent, SETTLE_TIMEOUT), None
            except AssertionError as e:
                # replay stuck or the agent gone: what the agent and the mirror show now
                stuck = str(e).split("\nstderr:")[0]
                m = tm.scrape(agent)
                watch.poll()
                stuck += (f"\n  then: pool gauges {watch.last}; SHOW MIRROR POOLS "
                          f"{watch.last_pools}; mirror backends of {DB} by state "
                          f"{mir.query(ACTIVITY_STATES_SQL)}")
            settle_s = time.monotonic() - t_end
        cpu_s = agent.cpu_seconds() - cpu_before
        result = stop_agent(agent)
    finally:
        agent.kill()
    fig = figures(m, src.pgss_calls(DB), result)
    fig.update(run=run, ran_s=ran_s, settle_s=settle_s, cpu_s=cpu_s, watch=watch,
               activity=activity, peak=int(m.get("mirror_pool_connections_peak", -1)),
               stuck=stuck)
    return fig


def figures(m, server_calls, result):
    """The mirror's outcome for the benchmark database, and whether the metrics agree."""
    try:
        tm.check_invariant(m)
        inconsistent = None
    except AssertionError as e:
        inconsistent = str(e)
    agent_n = m.requests(DB)
    mirrored = int(m.get("mirror_latency_seconds_count", database=DB))
    return {
        "outcomes": tm.outcomes(m), "agent_n": agent_n, "server": server_calls,
        "mirrored": mirrored, "fraction": mirrored / max(agent_n, server_calls, 1),
        "dropped_by_reason": {k: int(v) for k, v in m.by_label(
            "mirror_dropped_requests_total", "reason", database=DB).items() if v},
        "aborted": {k: int(v) for k, v in m.by_label(
            "mirror_units_aborted_total", "reason").items() if v},
        "inconsistent": inconsistent, "exit": result.returncode,
        "stderr_tail": result.stderr[-1500:],
    }


def print_outcome(f):
    o = dict(f["outcomes"])
    skips = o.pop("skip_reasons")
    print(f"  requests in {DB}: agent {f['agent_n']}, pg_stat_statements {f['server']}; "
          f"mirrored {f['mirrored']} ({f['fraction']:.4%}); dropped by reason "
          f"{f['dropped_by_reason']}, units aborted {f['aborted']}")
    print(f"  global outcomes: {o}, skipped by reason {skips}; agent exit {f['exit']}")
    if f["inconsistent"]:
        print(f"  metrics inconsistent: {f['inconsistent'].splitlines()[0]}")


def must_hold_rows(f):
    return [
        ("metrics consistent (outcome invariant)", "yes" if not f["inconsistent"] else "no",
         "must hold", not f["inconsistent"]),
        ("agent exit 0 after SIGINT", str(f["exit"]), "must hold", f["exit"] == 0),
    ]


def settled_row(f):
    return ("replay finished (settled)", "no" if f["stuck"] else "yes", "must hold",
            not f["stuck"])


def mirrored_row(f):
    return ("mirrored fraction", f"{f['fraction']:.4%}", f">= {TARGET_MIRRORED:.1%}",
            f["fraction"] >= TARGET_MIRRORED)


def report(title, rows, stderr_tail=None):
    """PASS/FAIL per row; the number of failures."""
    print(f"  targets, {title}")
    failures = 0
    for name, value, target, ok in rows:
        failures += not ok
        print(f"    {name:<42} {value:>14}   target {target:<10} {'PASS' if ok else 'FAIL'}")
    if failures and stderr_tail:
        print(f"  agent stderr (tail):\n{stderr_tail}")
    return failures


def print_run(f, rate):
    run = f["run"]
    conn, tps = CONN_TIME_RE.search(run.stdout), TPS_RE.search(run.stdout)
    print(f"  pgbench: {float(tps.group(1)) if tps else 0:.0f} tps reached (-R {rate}, "
          f"{tps.group(2) if tps else '?'} time), {run.transactions} "
          f"transactions in {f['ran_s']:.1f} s, connections included ("
          f"{conn.group(0) if conn else 'connection time not reported'}); replay finished "
          f"{f['settle_s']:.1f} s after pgbench; agent CPU {f['cpu_s']:.2f} s "
          f"({f['cpu_s'] * 1e6 / max(f['mirrored'], 1):.1f} µs per mirrored request)")
    if f["stuck"]:
        print(f"  NOT SETTLED: {f['stuck']}")
    print_outcome(f)
    w = f["watch"]
    print(f"  mirror pg_stat_activity ({ACTIVITY_INTERVAL * 1e3:.0f} ms samples): "
          f"{f['activity']}; mirror_pool_connections_peak {f['peak']}")
    print(f"  pool gauges, largest per-second values: {w.largest}")
    if w.pools_row is not None:
        print(f"  SHOW MIRROR POOLS (row with the most clients): {w.pools_row}")
    if w.console_error:
        print(f"  SHOW MIRROR POOLS failed: {w.console_error}")


def many_sessions(src, mir):
    # -t, not -T: pgbench's -T clock runs while it opens its connections, and 1,000 of
    # them take longer than the run where a fork costs tens of milliseconds (a VM)
    args = ["-n", "-S", "-c", SESSIONS, "-j", 2, "-R", SESSIONS_RATE, "-t",
            max(1, SESSIONS_RATE * SECONDS // SESSIONS)]
    print(f"\n1. many sessions: pgbench {' '.join(map(str, args))}, agent "
          f"--mirror-max-connections {POOL_CAP}")
    f = mirrored_run(src, mir, "scale-sessions", args,
                     ["--mirror-max-connections", POOL_CAP])
    print_run(f, SESSIONS_RATE)
    if os.environ.get("PGSHADOW_BENCH_TIMELINE") == "1":
        sched = f["watch"].sched
        for i, c in enumerate(f["watch"].states):
            print(f"  {i:3d} s: sessions by state {dict(sorted(c.items()))}"
                  f"{sched_delta(sched, i)}")
    most = f["activity"].max
    rows = [mirrored_row(f),
            ("mirror connections (sampled max)", str(most), f"<= {POOL_CAP}",
             most <= POOL_CAP),
            ("mirror_pool_connections_peak", str(f["peak"]), f"<= {POOL_CAP}",
             0 <= f["peak"] <= POOL_CAP),
            ("agent RssAnon (sampled max)", f"{f['watch'].rss_anon_kib / 1024:.1f} MiB",
             "<= 16 MiB", f["watch"].rss_anon_kib <= 16 * 1024),
            settled_row(f)] + must_hold_rows(f)
    return report(f"{SESSIONS} sessions", rows, f["stderr_tail"])


def thread_schedstat(pid, name):
    """(run ns, runqueue wait ns, times scheduled) of the agent's thread called name
    ("capture": the main thread)."""
    try:
        if name == "capture":
            return tuple(int(x) for x in
                         Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split())
        for task in Path(f"/proc/{pid}/task").iterdir():
            if (task / "comm").read_text().strip() == name:
                return tuple(int(x) for x in (task / "schedstat").read_text().split())
    except OSError:
        pass
    return None


def ipis():
    """Rescheduling and function-call interrupts taken so far, per CPU: {cpu: count}.
    On a VM each is an exit; waking a task on another CPU that sleeps costs one."""
    counts = collections.Counter()
    for line in Path("/proc/interrupts").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in ("RES:", "CAL:"):
            for cpu, n in enumerate(f for f in fields[1:] if f.isdigit()):
                counts[cpu] += int(n)
    return counts


def ipi_text(before, after, cpus, n):
    """IPIs per request received by `cpus` between two ipis() readings."""
    return f"{sum(after[c] - before[c] for c in cpus) / max(n, 1):.2f}"


def sched_delta(samples, i):
    """The replay thread's CPU and mean runqueue wait per wakeup over poll i."""
    if i == 0 or i >= len(samples) or not samples[i] or not samples[i - 1]:
        return ""
    run, wait, slices = (b - a for a, b in zip(samples[i - 1], samples[i]))
    return (f"; replay thread {run / 1e6:.0f} ms CPU, {slices} wakeups, "
            f"{wait / max(slices, 1) / 1e3:.0f} us mean runqueue wait")


def churn(src, mir):
    args = ["-n", "-S", "-C", "-c", CHURN_CLIENTS, "-R", CHURN_RATE, "-T", SECONDS]
    print(f"\n2. connection per transaction: pgbench {' '.join(map(str, args))}")
    f = mirrored_run(src, mir, "scale-churn", args)
    print_run(f, CHURN_RATE)
    return report("connection per transaction",
                  [mirrored_row(f), settled_row(f)] + must_hold_rows(f),
                  f["stderr_tail"])


def replay_cost(src, mir, name, source_cpus, mirror_cpus):
    args = ["-n", "-S", "-c", COST_CLIENTS, "-j", 2, "-R", COST_RATE, "-T", SECONDS]
    print(f"\n3. replay cost, placement {name} (source host CPU {cpu_list(source_cpus)}, "
          f"mirror host CPU {cpu_list(mirror_cpus)}): pgbench {' '.join(map(str, args))}")
    place(src, mir, source_cpus, mirror_cpus)
    rp.quiesce(src, mir)
    ipi0 = ipis()
    base, base_cpu = pgbench_rusage(src, args)
    ipi1 = ipis()
    base_us = base_cpu * 1e6 / max(base.transactions, 1)
    print(f"  without the agent: {base.tps:.0f} tps, pgbench CPU {base_cpu:.2f} s "
          f"({base_us:.1f} µs per request); IPIs per request (rescheduling and function "
          f"call) taken by the source host's CPUs "
          f"{ipi_text(ipi0, ipi1, source_cpus, base.transactions)}, the mirror's "
          f"{ipi_text(ipi0, ipi1, mirror_cpus, base.transactions)}")

    src.pgss_reset()
    agent = start_agent(src, mir, f"scale-cost-{name}")
    perf = None
    half = max(SECONDS // 2, 1)
    try:
        rp.quiesce(src, mir)
        events = ",".join(["raw_syscalls:sys_enter"] +
                          [f"syscalls:sys_enter_{c}" for c in SYSCALLS_SHOWN])
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            bench = pool.submit(pgbench_rusage, src, args)
            time.sleep(0.5)  # pgbench has its clients connected
            # first half: perf stat counts the system calls. Counting a tracepoint costs
            # the agent CPU at every call (15% of its figure, measured 2026-12-08), so
            # the agent's CPU is taken over the second half, with nothing attached.
            m0, cpu0 = tm.scrape(agent), agent.cpu_seconds()
            perf = subprocess.Popen(["perf", "stat", "-x,", "-e", events,
                                     "-p", str(agent.pid), "--", "sleep", str(half)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
            _, perf_err = perf.communicate(timeout=half + 60)
            mh, cpuh = tm.scrape(agent), agent.cpu_seconds()
            threads0 = {t: thread_schedstat(agent.pid, t) for t in AGENT_THREADS}
            ipi0 = ipis()
            time.sleep(max(SECONDS - half - 1.5, 1))
            m1, cpu1 = tm.scrape(agent), agent.cpu_seconds()
            threads1 = {t: thread_schedstat(agent.pid, t) for t in AGENT_THREADS}
            ipi1 = ipis()
            run, run_cpu = bench.result()
        m = tm.wait_settled(agent, SETTLE_TIMEOUT)
        result = stop_agent(agent)
    finally:
        if perf is not None and perf.poll() is None:
            perf.kill()
            perf.wait()
        agent.kill()
    f = figures(m, src.pgss_calls(DB), result)
    mirrored = lambda a, b: int(b.get("mirror_requests_mirrored") -  # noqa: E731
                                a.get("mirror_requests_mirrored"))
    counted, window = mirrored(m0, mh), mirrored(mh, m1)
    syscalls = perf_count(perf_err)
    agent_cpu = cpu1 - cpuh
    agent_us = agent_cpu * 1e6 / max(window, 1)
    counted_us = (cpuh - cpu0) * 1e6 / max(counted, 1)
    run_us = run_cpu * 1e6 / max(run.transactions, 1)
    ratio = agent_us / run_us if run_us else float("inf")
    per_req = syscalls / max(counted, 1) if syscalls is not None else None
    print(f"  with the agent: {run.tps:.0f} tps (-R {COST_RATE}), {run.transactions} "
          f"transactions; {counted} requests mirrored while perf counted ({half} s), "
          f"{window} in the CPU window after it")
    print_outcome(f)
    if syscalls is None:
        print(f"  perf stat counted nothing: {perf_err.strip()[-500:]}")
    else:
        print(f"  agent system calls: {syscalls} while perf counted, {per_req:.2f} per "
              f"mirrored request")
        each = {c: perf_count(perf_err, f"syscalls:sys_enter_{c}") for c in SYSCALLS_SHOWN}
        print("  per mirrored request: " + ", ".join(
            f"{c} {n / max(counted, 1):.2f}" for c, n in each.items() if n))
    piped = m1.get("mirror_replay_pipelined_total") - mh.get("mirror_replay_pipelined_total")
    parts = []
    for t in AGENT_THREADS:
        if threads0[t] and threads1[t]:
            run_ns, _, slices = (b - a for a, b in zip(threads0[t], threads1[t]))
            parts.append(f"{t} {run_ns / 1e3 / max(window, 1):.1f} µs and "
                         f"{slices / max(window, 1):.2f} wakeups")
    print(f"  per mirrored request: {'; '.join(parts)}; {piped / max(window, 1):.0%} of the "
          f"requests pipelined behind another of their session (mirror_replay_pipelined_total)")
    print(f"  IPIs per mirrored request taken by the source host's CPUs "
          f"{ipi_text(ipi0, ipi1, source_cpus, window)}, the mirror's "
          f"{ipi_text(ipi0, ipi1, mirror_cpus, window)}")
    print(f"  agent CPU {agent_cpu:.2f} s ({agent_us:.1f} µs per mirrored request; "
          f"{counted_us:.1f} µs while perf counted); pgbench CPU {run_cpu:.2f} s "
          f"({run_us:.1f} µs per request); agent/pgbench {ratio:.2f} "
          f"(agent/pgbench without the agent {agent_us / base_us if base_us else 0:.2f})")
    rows = [("system calls per mirrored request",
             f"{per_req:.2f}" if per_req is not None else "-", f"<= {TARGET_SYSCALLS:g}",
             per_req is not None and per_req <= TARGET_SYSCALLS),
            ("agent CPU / pgbench CPU per request", f"{ratio:.2f}",
             f"<= {TARGET_CPU_RATIO:g}", ratio <= TARGET_CPU_RATIO)] + must_hold_rows(f)
    return report(f"replay cost, {name}", rows, f["stderr_tail"])


def unable():
    """Why the benchmark cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (BPF)"
    binary = h.agent_binary()
    try:
        res = h.run([binary, "--help"], check=False, timeout=10)
    except (OSError, AssertionError):
        res = None
    if res is None or "--mirror-max-connections" not in res.stdout + res.stderr:
        return f"{binary} missing or without the pooled mirror (--mirror-max-connections); " \
               f"run make"
    return None


def main():
    why = unable()
    if why:
        print(f"scale benchmark: {why}", file=sys.stderr)
        return 1
    began = time.monotonic()
    print(f"scale benchmark: scenarios {','.join(sorted(SCENARIOS))}, {SECONDS} s per pgbench "
          f"run, scale {rp.SCALE}; load average "
          f"{Path('/proc/loadavg').read_text().split()[:3]} on {os.cpu_count()} CPUs; "
          f"placement {rp.PLACEMENT} for scenarios 1 and 2 (source host CPU "
          f"{cpu_list(rp.SOURCE_CPUS)}, mirror host CPU {cpu_list(rp.MIRROR_CPUS)})")
    failures = 0
    failed = []
    with pgh.pg_server(name="scale-src", settings=SERVER_SETTINGS) as src, \
            pgh.pg_server(name="scale-mir", settings=SERVER_SETTINGS) as mir:
        place(src, mir, rp.SOURCE_CPUS, rp.MIRROR_CPUS)
        for pg in (src, mir):
            pg.createdb(DB)
            pg.pgbench_init(DB, scale=rp.SCALE)
            pg.psql("VACUUM ANALYZE", db=DB)
            pg.pgbench(["-n", "-S", "-c", 4, "-j", 2, "-T", 3], DB)  # warm the caches
        steps = []
        if "1" in SCENARIOS:
            steps.append(("1 many sessions", lambda: many_sessions(src, mir)))
        if "2" in SCENARIOS:
            steps.append(("2 connection per transaction", lambda: churn(src, mir)))
        if "3" in SCENARIOS:
            for name, (scpu, mcpu) in placements().items():
                steps.append((f"3 replay cost {name}",
                              lambda n=name, s=scpu, c=mcpu: replay_cost(src, mir, n, s, c)))
        for title, step in steps:
            try:
                n = step()
            except AssertionError as e:
                print(f"  scenario {title} could not finish: FAIL\n  {e}")
                n = 1
            failures += n
            if n:
                failed.append(title)
    print(f"\n{'PASS' if failures == 0 else 'FAIL'}: {failures} line(s) failed"
          f"{' (' + '; '.join(failed) + ')' if failed else ''}; "
          f"{time.monotonic() - began:.0f} s")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
