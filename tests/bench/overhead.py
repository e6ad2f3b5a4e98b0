#!/usr/bin/python3
"""Overhead benchmark: what attaching the agent costs a PostgreSQL source.

0. Idle: a fresh agent without traffic, its CPU ticks over 10 s; then five times a query
   after 1.5 s of silence on a session opened before, and the milliseconds until the
   agent decoded it (its request counter, polled every millisecond).
1. Maximum rate: `pgbench -n -S -M prepared -c 4 -j 2 -T 10` against a local source
   (one PostgreSQL 15 cluster on 127.0.0.1, pgbench -i -s 10), without and with the agent
   (attached to lo, a fresh agent per run), alternating PAIRS pairs (which one goes first
   alternates too, so drift cancels out). Prints each run's TPS and the median of the
   with/without ratios.
2. Fixed rate: `-R` at half the median maximum TPS measured without the agent, in
   RATE_ROUNDS interleaved rounds of four runs (their order rotates): nothing attached,
   an empty tcx program attached to lo's ingress and egress (tests/bench/bpf_cost.c
   attach-empty: the floor any tcx program pays), the copy floor on lo's ingress
   (bpf_cost attach-floor ... copy, tests/bench/floor.bpf.c: the port filter and one
   fixed 256-byte record per packet with payload in a 64 MiB ring: what any program
   copying each packet into a ring of the agent's default size pays), and the agent.
   Measured per run, with
   kernel.bpf_stats_enabled=1 (restored afterwards):
   - the host's CPU time per source request: the non-idle jiffies of /proc/stat (user,
     nice, system, irq, softirq, steal) over the run, divided by the requests the server
     executed; the ratio agent/nothing per round, its median and its spread;
   - the source cluster's CPU per request: the postmaster's utime+stime+cutime+cstime
     (its backends are reaped children by the end of the run);
   - the agent's CPU per request (its threads' run time from /proc/PID/task/*/schedstat,
     in nanoseconds: utime+stime count 10 ms ticks, a tenth of what an observing agent
     spends in one run; divided by the requests it counted), and as a share of the cluster's CPU per request;
   - BPF ns per packet of the agent's programs, of the empty program and of the copy
     floor (run_time_ns / run_cnt from the kernel's program statistics), the agent's
     ratio to each, and the agent's BPF time per request.

Must hold in every run with the agent (checked and printed): 100% of requests decoded —
the agent's mirror_source_requests_total for the benchmark database equals the server's
count, which is pg_stat_statements' calls for that database since a reset just before the
run (exact here: single statements, no errors, no utility statements thanks to -n; it is
pgbench's transaction count + 2, the two catalogue queries pgbench's main connection runs
before a builtin script; nothing else runs in that database) — and no ring-buffer drops.
Targets reported (figures, not a timed test): TPS ratio >= 0.97; agent CPU per request
<= 1% of the source cluster's; BPF per packet <= 3x the empty program; host CPU per
request with the agent <= 1.02x without; idle <= 1 CPU tick in 10 s; a query after
silence decoded within 5 ms.

The server logs nothing per statement here (log_statement = none): logging every
statement would make the server, not the agent, the thing measured.

Exit status 0 when the must-hold checks passed (targets missed are reported, not fatal),
1 otherwise. Needs root. Environment: PGSHADOW_BENCH_PAIRS (default 5),
PGSHADOW_BENCH_SECONDS (one max-rate run, default 10), PGSHADOW_BENCH_RATE_SECONDS (one
fixed-rate run, default 10), PGSHADOW_BENCH_RATE_ROUNDS (default 3),
PGSHADOW_BENCH_SCALE (default 10), PGSHADOW_BIN, PGSHADOW_BPF_COST (default
build/bpf_cost). With the defaults the whole benchmark takes about 5 minutes.
"""

import os
import re
import signal
import subprocess
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import pg_harness as pgh  # noqa: E402
import pgshadow_harness as h  # noqa: E402

PAIRS = int(os.environ.get("PGSHADOW_BENCH_PAIRS", 5))
SECONDS = int(os.environ.get("PGSHADOW_BENCH_SECONDS", 10))
RATE_SECONDS = int(os.environ.get("PGSHADOW_BENCH_RATE_SECONDS", 10))
RATE_ROUNDS = int(os.environ.get("PGSHADOW_BENCH_RATE_ROUNDS", 3))
BPF_COST = Path(os.environ.get("PGSHADOW_BPF_COST", h.REPO / "build" / "bpf_cost"))
SCALE = int(os.environ.get("PGSHADOW_BENCH_SCALE", 10))
CLIENTS, JOBS = 4, 2
DB = "bench"
PGBENCH_EXTRA_QUERIES = 2  # select count(*) from pgbench_branches + partition info query

TARGET_TPS_RATIO = 0.97
TARGET_CPU_SHARE = 0.01  # agent CPU per request / source cluster CPU per request
TARGET_BPF_RATIO = 3.0   # BPF ns per packet / the empty program's
TARGET_HOST_RATIO = 1.02  # host CPU per request with the agent / without
TARGET_IDLE_TICKS = 1     # CPU ticks of an idle agent in IDLE_SECONDS
TARGET_WAKE_MS = 5.0      # a query after silence decoded within
IDLE_SECONDS, IDLE_WAKES = 10, 5


def pgbench_args(seconds, rate=None):
    args = ["-n", "-S", "-M", "prepared", "-c", CLIENTS, "-j", JOBS, "-T", seconds]
    if rate:
        args += ["-R", int(rate)]
    return args


class AgentRun:
    """A fresh agent on lo with /metrics on a free port; stop() returns its stats."""

    def __init__(self, binary, pg, logdir, name, extra=()):
        self.addr = f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',))}"
        self.agent = h.Agent(binary, pg.port, ["lo"], logdir=logdir, name=name,
                             extra=["--metrics-listen", self.addr, *extra])

    def __enter__(self):
        self.agent.start().wait_ready()
        deadline = time.monotonic() + 10
        while True:
            try:
                pgh.scrape(self.addr)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"/metrics at {self.addr} not answering\n"
                                         f"{self.agent.stderr()}")
                time.sleep(0.1)

    def __exit__(self, *exc):
        self.agent.kill()
        return False

    def stop(self):
        return self.agent.stop(signal.SIGINT, timeout=60)


def bpf_prog_stats(pid):
    """{prog id: (name, run_time_ns, run_cnt)} of our programs held by process pid."""
    held = {pid_ for pid_, holders in h.prog_holders().items() if pid in holders}
    out = {}
    for prog in h.bpftool_json("prog", "show"):
        if prog.get("id") in held and prog.get("name") in h.OUR_PROGS:
            out[prog["id"]] = (prog["name"], prog.get("run_time_ns", 0), prog.get("run_cnt", 0))
    return out


def checked_run(pg, binary, logdir, name, args, checks):
    """One pgbench run with a fresh agent; appends (description, ok, detail) to checks.
    Returns (pgbench result, figures dict)."""
    figures = {}
    with AgentRun(binary, pg, logdir, name) as run:
        pg.pgss_reset()
        res = pg.pgbench(args, DB)
        m = pgh.wait_metrics_stable(run.addr, timeout=60)
        server = pg.pgss_calls(DB)
        result = run.stop()
    agent_checks(name, m, result, server, res, figures, checks)
    return res, figures


def agent_checks(name, m, result, server, res, figures, checks):
    """The must-hold checks of one run with the agent; its counts into figures."""
    agent_n = m.requests(DB)
    s = result.stats or {}
    drops = int(m.get("mirror_capture_ringbuf_drops_total"))
    figures.update(agent=agent_n, server=server, drops=drops,
                   packets=int(m.get("mirror_capture_packets_total")), stats=s,
                   gaps=s.get("gaps"), resyncs=int(m.get("mirror_capture_resyncs_total")))
    checks.append((f"{name}: 100% decoded (agent {agent_n} == server {server})",
                   agent_n == server, f"pgbench {res.transactions} tx + "
                                      f"{PGBENCH_EXTRA_QUERIES} = "
                                      f"{res.transactions + PGBENCH_EXTRA_QUERIES}"))
    checks.append((f"{name}: 0 ring-buffer drops", drops == 0 and s.get("ringbuf_drops") == 0,
                   f"/metrics {drops}, stats line {s.get('ringbuf_drops')}"))
    checks.append((f"{name}: agent exited 0 after SIGINT", result.returncode == 0,
                   f"exit {result.returncode}"))


# --------------------------------------------------------------------------- idle

def idle_figures(pg, binary, logdir):
    """An agent with no traffic: its CPU ticks over IDLE_SECONDS; then, IDLE_WAKES times,
    a query on a session opened earlier after 1.5 s of silence (the reader sleeps after
    200 ms) and the time until the agent has decoded it (its request counter, polled every
    millisecond; the query's own round trip included)."""
    import psycopg2
    with AgentRun(binary, pg, logdir, "idle") as run:
        conn = psycopg2.connect(pg.conninfo(DB))
        conn.autocommit = True
        try:
            time.sleep(1)
            st0 = h.proc_stat(run.agent.pid)
            time.sleep(IDLE_SECONDS)
            st1 = h.proc_stat(run.agent.pid)
            ticks = st1.utime + st1.stime - st0.utime - st0.stime
            delays = []
            with conn.cursor() as cur:
                for _ in range(IDLE_WAKES):
                    seen = pgh.metrics(run.addr).requests(DB)
                    time.sleep(1.5)
                    sent = time.monotonic()
                    cur.execute("SELECT 1")
                    while (pgh.metrics(run.addr).requests(DB) == seen
                           and time.monotonic() - sent < 5):
                        time.sleep(0.001)
                    delays.append(time.monotonic() - sent)
        finally:
            conn.close()
    print(f"idle: {ticks} CPU ticks in {IDLE_SECONDS} s without traffic; a query after "
          f"1.5 s of silence decoded after {', '.join(f'{d * 1e3:.1f}' for d in delays)} ms",
          flush=True)
    return {"ticks": ticks, "wake_ms": max(delays) * 1e3}


# --------------------------------------------------------------------------- fixed rate

def host_busy_ticks():
    """Non-idle clock ticks of the whole host (/proc/stat: user nice system irq softirq
    steal; idle and iowait left out)."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    return user + nice + system + irq + softirq + steal


def postmaster_pid(pg):
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])


def children(pid):
    """Number of live children of pid."""
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                n += h.proc_stat(int(entry)).ppid == pid
            except (OSError, ValueError, IndexError):
                pass
    return n


def wait_children(pid, count, timeout=20):
    """Waits until pid has count children again (the run's backends exited and were
    reaped, so their CPU time is in the postmaster's cutime/cstime)."""
    deadline = time.monotonic() + timeout
    while children(pid) > count and time.monotonic() < deadline:
        time.sleep(0.05)


def cluster_ticks(pid):
    st = h.proc_stat(pid)
    return st.utime + st.stime + st.cutime + st.cstime


def baseline_program(kind, port, seconds):
    """bpf_cost's empty program (kind "empty") or copy floor ("floor") on lo: started and
    attached; returns the process."""
    argv = ([str(BPF_COST), "attach-empty", "lo", str(seconds)] if kind == "empty" else
            [str(BPF_COST), "attach-floor", "lo", str(port), str(seconds), "copy"])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "attached":
        proc.kill()
        raise AssertionError(f"{' '.join(argv)} failed: {line!r} {proc.stderr.read()}")
    return proc


def baseline_stats(proc):
    """(run_time_ns, run_cnt) of a baseline_program, after SIGINT."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    m = re.search(r"run_cnt=(\d+) run_time_ns=(\d+)", out)
    if not m:
        raise AssertionError(f"{' '.join(proc.args)} printed {out!r} {err!r}")
    return int(m.group(2)), int(m.group(1))


def fixed_run(pg, binary, logdir, kind, rate, checks, name):
    """One fixed-rate pgbench run with nothing, the empty program, the copy floor or the
    agent attached.
    Returns a dict of figures (see the module docstring)."""
    tick = os.sysconf("SC_CLK_TCK")
    pm = postmaster_pid(pg)
    pg.pgss_reset()
    base = children(pm) - 1  # the psql session of pgss_reset may still be exiting
    wait_children(pm, base)
    f, run, empty = {"kind": kind}, None, None
    if kind in ("empty", "floor"):
        empty = baseline_program(kind, pg.port, RATE_SECONDS * 10 + 60)
    elif kind == "agent":
        run = AgentRun(binary, pg, logdir, name).__enter__()
        bpf_before = bpf_prog_stats(run.agent.pid)
        cpu_before = run.agent.cpu_seconds()
    try:
        host0, cl0 = host_busy_ticks(), cluster_ticks(pm)
        res = pg.pgbench(pgbench_args(RATE_SECONDS, rate), DB)
        wait_children(pm, base)
        host1, cl1 = host_busy_ticks(), cluster_ticks(pm)
        if kind == "agent":
            m = pgh.wait_metrics_stable(run.addr, timeout=60)
            f["cpu_s"] = run.agent.cpu_seconds() - cpu_before
            bpf_after = bpf_prog_stats(run.agent.pid)
            f["bpf_ns"] = sum(a[1] - bpf_before.get(i, (None, 0, 0))[1]
                              for i, a in bpf_after.items())
            f["bpf_runs"] = sum(a[2] - bpf_before.get(i, (None, 0, 0))[2]
                                for i, a in bpf_after.items())
        elif kind in ("empty", "floor"):
            f["bpf_ns"], f["bpf_runs"] = baseline_stats(empty)
            empty = None
        server = pg.pgss_calls(DB)
        if kind == "agent":
            agent_checks(name, m, run.stop(), server, res, f, checks)
    finally:
        if run:
            run.__exit__(None, None, None)
        if empty:
            empty.kill()
            empty.wait()
    f.update(tps=res.tps, requests=server,
             host_us=(host1 - host0) / tick * 1e6 / server,
             cluster_us=(cl1 - cl0) / tick * 1e6 / server)
    if "bpf_runs" in f:
        f["bpf_per_packet"] = f["bpf_ns"] / max(f["bpf_runs"], 1)
    if kind == "agent":
        f["agent_us"] = f["cpu_s"] * 1e6 / max(f["agent"], 1)
        f["bpf_per_request"] = f["bpf_ns"] / max(f["agent"], 1)
    line = (f"{name}: {res.tps:6.0f} tps, host CPU {f['host_us']:6.1f} µs/request, "
            f"cluster {f['cluster_us']:6.1f} µs/request")
    if "bpf_runs" in f:
        line += f", BPF {f['bpf_runs']} runs {f['bpf_per_packet']:.0f} ns/packet"
    if kind == "agent":
        line += (f", agent {f['agent_us']:.2f} µs/request, {f['packets']} packets, requests "
                 f"agent {f['agent']} server {f['server']}")
    print(line, flush=True)
    return f


def main():
    if os.geteuid() != 0:
        print("overhead benchmark: needs root (BPF); skipped", file=sys.stderr)
        return 1
    binary = h.agent_binary()
    if not binary.is_file() or not pgh.agent_supports_metrics(binary):
        print(f"overhead benchmark: {binary} missing or without --metrics-listen; run make",
              file=sys.stderr)
        return 1
    began = time.monotonic()
    checks, ratios, plain, with_agent = [], [], [], []
    sysctl = Path("/proc/sys/kernel/bpf_stats_enabled")
    sysctl_before = sysctl.read_text().strip()
    print(f"overhead benchmark: pgbench {' '.join(map(str, pgbench_args(SECONDS)))} "
          f"(scale {SCALE}), {PAIRS} pairs without/with the agent on lo; then -R at half "
          f"the maximum for {RATE_SECONDS} s with the agent")
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]} on "
          f"{os.cpu_count()} CPUs")
    with pgh.pg_server(name="bench", settings={"log_statement": "'none'",
                                               "max_connections": "50"}) as pg:
        pg.createdb(DB)
        pg.pgbench_init(DB, scale=SCALE)
        pg.psql("VACUUM ANALYZE", db=DB)
        logdir = pg.dir
        pg.pgbench(pgbench_args(3), DB)  # warm the caches
        idle = idle_figures(pg, binary, logdir)
        for i in range(PAIRS):
            order = ("without", "with") if i % 2 == 0 else ("with", "without")
            tps = {}
            for which in order:
                if which == "without":
                    res = pg.pgbench(pgbench_args(SECONDS), DB)
                    tps[which] = res.tps
                    print(f"pair {i + 1}: without agent {res.tps:9.0f} tps")
                else:
                    res, f = checked_run(pg, binary, logdir, f"pair {i + 1} with agent",
                                         pgbench_args(SECONDS), checks)
                    tps[which] = res.tps
                    print(f"pair {i + 1}: with agent    {res.tps:9.0f} tps  requests: agent "
                          f"{f['agent']} server {f['server']}  packets {f['packets']}  drops "
                          f"{f['drops']}  gaps {f['gaps']}  resyncs {f['resyncs']}")
            plain.append(tps["without"])
            with_agent.append(tps["with"])
            ratios.append(tps["with"] / tps["without"])
            print(f"pair {i + 1}: ratio {ratios[-1]:.3f}")

        max_tps = statistics.median(plain)
        rate = max_tps / 2
        print(f"fixed rate: -R {rate:.0f} (half of the median {max_tps:.0f} tps without the "
              f"agent), {RATE_ROUNDS} rounds of {RATE_SECONDS} s runs with nothing, the empty "
              f"program, the copy floor and the agent attached, kernel.bpf_stats_enabled=1")
        rounds = []
        try:
            sysctl.write_text("1\n")
            kinds = ["none", "empty", "floor", "agent"]
            for r in range(RATE_ROUNDS):
                order = kinds[r % 4:] + kinds[:r % 4]
                rounds.append({k: fixed_run(pg, binary, logdir, k, rate, checks,
                                            f"round {r + 1} {k}") for k in order})
        finally:
            sysctl.write_text(sysctl_before + "\n")

    ratio = statistics.median(ratios)
    print()
    print(f"median TPS without agent {statistics.median(plain):.0f}, with agent "
          f"{statistics.median(with_agent):.0f}; median ratio with/without {ratio:.3f}")
    print()
    print("summary")
    med = statistics.median

    def col(kind, key):
        return [rd[kind][key] for rd in rounds]

    host_ratio = [rd["agent"]["host_us"] / rd["none"]["host_us"] for rd in rounds]
    empty_host_ratio = [rd["empty"]["host_us"] / rd["none"]["host_us"] for rd in rounds]
    bpf_ratio = [rd["agent"]["bpf_per_packet"] / rd["empty"]["bpf_per_packet"]
                 for rd in rounds]
    floor_ratio = [rd["agent"]["bpf_per_packet"] / rd["floor"]["bpf_per_packet"]
                   for rd in rounds]
    floor_empty = [rd["floor"]["bpf_per_packet"] / rd["empty"]["bpf_per_packet"]
                   for rd in rounds]
    share = [rd["agent"]["agent_us"] / rd["agent"]["cluster_us"] for rd in rounds]
    print(f"  host CPU per request: nothing {med(col('none', 'host_us')):.1f} µs, empty "
          f"program {med(col('empty', 'host_us')):.1f} µs, agent "
          f"{med(col('agent', 'host_us')):.1f} µs; agent/nothing per round "
          f"{', '.join(f'{x:.3f}' for x in host_ratio)}; empty/nothing "
          f"{', '.join(f'{x:.3f}' for x in empty_host_ratio)}")
    print(f"  source cluster CPU per request {med(col('agent', 'cluster_us')):.1f} µs; agent "
          f"{med(col('agent', 'agent_us')):.2f} µs per request = "
          f"{100 * med(share):.2f}% of it (rounds "
          f"{', '.join(f'{100 * x:.2f}%' for x in share)})")
    print(f"  BPF per packet: agent {med(col('agent', 'bpf_per_packet')):.0f} ns, empty "
          f"program {med(col('empty', 'bpf_per_packet')):.0f} ns (ratio per round "
          f"{', '.join(f'{x:.2f}' for x in bpf_ratio)}); BPF per request "
          f"{med(col('agent', 'bpf_per_request')):.0f} ns; packets per request "
          f"{med([rd['agent']['packets'] / max(rd['agent']['agent'], 1) for rd in rounds]):.2f}")
    print(f"  copy floor (a port filter and one record per packet in a 64 MiB ring) "
          f"{med(col('floor', 'bpf_per_packet')):.0f} ns per packet = "
          f"{', '.join(f'{x:.2f}' for x in floor_empty)}x the empty program; the agent's "
          f"program {', '.join(f'{x:.2f}' for x in floor_ratio)}x the floor")
    rows = [("TPS ratio (median of pairs)", f"{ratio:.3f}", f">= {TARGET_TPS_RATIO}",
             ratio >= TARGET_TPS_RATIO),
            ("agent CPU / cluster CPU", f"{100 * med(share):.2f}%",
             f"<= {100 * TARGET_CPU_SHARE:g}%", med(share) <= TARGET_CPU_SHARE),
            ("BPF per packet / empty prog", f"{med(bpf_ratio):.2f}x",
             f"<= {TARGET_BPF_RATIO:g}x", med(bpf_ratio) <= TARGET_BPF_RATIO),
            ("host CPU/request agent/none", f"{med(host_ratio):.3f}",
             f"<= {TARGET_HOST_RATIO:g}", med(host_ratio) <= TARGET_HOST_RATIO),
            (f"idle CPU ticks in {IDLE_SECONDS} s", str(idle["ticks"]),
             f"<= {TARGET_IDLE_TICKS}", idle["ticks"] <= TARGET_IDLE_TICKS),
            ("decoded after silence (max)", f"{idle['wake_ms']:.1f} ms",
             f"<= {TARGET_WAKE_MS:g} ms", idle["wake_ms"] <= TARGET_WAKE_MS)]
    for name, value, target, ok in rows:
        print(f"  {name:<32} {value:>10}   target {target:<10} "
              f"{'met' if ok else 'NOT MET'}")
    failures = 0
    for name, ok, detail in checks:
        failures += not ok
        if not ok:
            print(f"  FAIL (must hold): {name} ({detail})")
    for name, word in (("100% of requests decoded", "decoded"),
                       ("0 ring-buffer drops", "drops")):
        runs = [ok for what, ok, _ in checks if word in what]
        value = f"{sum(runs)}/{len(runs)} runs"
        print(f"  {name:<32} {value:>10}   must hold         "
              f"{'held' if all(runs) else 'FAILED'}")
    print(f"  load average now {Path('/proc/loadavg').read_text().split()[:3]} on "
          f"{os.cpu_count()} CPUs (other work on the machine makes the TPS ratio noisy)")
    print(f"{'PASS' if failures == 0 else 'FAIL'}: {failures} must-hold checks failed; "
          f"{time.monotonic() - began:.0f} s")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
