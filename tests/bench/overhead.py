#!/usr/bin/python3
"""Overhead benchmark: what attaching the agent costs a PostgreSQL source.

1. Maximum rate: `pgbench -n -S -M prepared -c 4 -j 2 -T 10` against a local source
   (one PostgreSQL 15 cluster on 127.0.0.1, pgbench -i -s 10), without and with the agent
   (attached to lo, a fresh agent per run), alternating PAIRS pairs (which one goes first
   alternates too, so drift cancels out). Prints each run's TPS and the median of the
   with/without ratios.
2. Fixed rate: the same with `-R` at half the median maximum TPS measured without the
   agent, with the agent: the agent's CPU per request (utime+stime delta from
   /proc/PID/stat over the run, divided by the requests it counted) and the BPF program's
   ns per packet (kernel.bpf_stats_enabled=1 during the run only, run_time_ns/run_cnt
   deltas of the agent's capture_ingress/capture_egress programs from `bpftool -j prog
   show`; the sysctl is restored afterwards).

Must hold in every run with the agent (checked and printed): 100% of requests decoded —
the agent's mirror_source_requests_total for the benchmark database equals the server's
count, which is pg_stat_statements' calls for that database since a reset just before the
run (exact here: single statements, no errors, no utility statements thanks to -n; it is
pgbench's transaction count + 2, the two catalogue queries pgbench's main connection runs
before a builtin script; nothing else runs in that database) — and no ring-buffer drops.
Targets reported (figures, not a timed test): TPS ratio >= 0.97, <= 1 µs agent CPU per
request, <= 250 ns per packet in BPF.

The server logs nothing per statement here (log_statement = none): logging every
statement would make the server, not the agent, the thing measured.

Exit status 0 when the must-hold checks passed (targets missed are reported, not fatal),
1 otherwise. Needs root. Environment: PGSHADOW_BENCH_PAIRS (default 5),
PGSHADOW_BENCH_SECONDS (one max-rate run, default 10), PGSHADOW_BENCH_RATE_SECONDS (the
fixed-rate run, default 10), PGSHADOW_BENCH_SCALE (default 10), PGSHADOW_BIN.
With the defaults the whole benchmark takes about 2.5 minutes.
"""

import os
import signal
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
SCALE = int(os.environ.get("PGSHADOW_BENCH_SCALE", 10))
CLIENTS, JOBS = 4, 2
DB = "bench"
PGBENCH_EXTRA_QUERIES = 2  # select count(*) from pgbench_branches + partition info query

TARGET_TPS_RATIO = 0.97
TARGET_CPU_US = 1.0
TARGET_BPF_NS = 250.0


def pgbench_args(seconds, rate=None):
    args = ["-n", "-S", "-M", "prepared", "-c", CLIENTS, "-j", JOBS, "-T", seconds]
    if rate:
        args += ["-R", int(rate)]
    return args


class AgentRun:
    """A fresh agent on lo with /metrics on a free port; stop() returns its stats."""

    def __init__(self, binary, pg, logdir, name):
        self.addr = f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',))}"
        self.agent = h.Agent(binary, pg.port, ["lo"], logdir=logdir, name=name,
                             extra=["--metrics-listen", self.addr])

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


def checked_run(pg, binary, logdir, name, args, checks, measure=False):
    """One pgbench run with a fresh agent; appends (description, ok, detail) to checks.
    Returns (pgbench result, figures dict)."""
    figures = {}
    with AgentRun(binary, pg, logdir, name) as run:
        pg.pgss_reset()
        if measure:
            bpf_before = bpf_prog_stats(run.agent.pid)
            cpu_before = run.agent.cpu_seconds()
        res = pg.pgbench(args, DB)
        m = pgh.wait_metrics_stable(run.addr, timeout=60)
        if measure:
            cpu_after = run.agent.cpu_seconds()
            bpf_after = bpf_prog_stats(run.agent.pid)
            figures["cpu_s"] = cpu_after - cpu_before
            ns = sum(a[1] - bpf_before.get(i, (None, 0, 0))[1] for i, a in bpf_after.items())
            cnt = sum(a[2] - bpf_before.get(i, (None, 0, 0))[2] for i, a in bpf_after.items())
            figures["bpf_ns"], figures["bpf_runs"] = ns, cnt
            figures["bpf_progs"] = sorted(a[0] for a in bpf_after.values())
        server = pg.pgss_calls(DB)
        result = run.stop()
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
    return res, figures


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
              f"agent) for {RATE_SECONDS} s with the agent, kernel.bpf_stats_enabled=1")
        try:
            sysctl.write_text("1\n")
            res, f = checked_run(pg, binary, logdir, "fixed rate", pgbench_args(RATE_SECONDS,
                                                                                 rate),
                                 checks, measure=True)
        finally:
            sysctl.write_text(sysctl_before + "\n")
        cpu_us = f["cpu_s"] * 1e6 / f["agent"] if f["agent"] else float("nan")
        bpf_ns = f["bpf_ns"] / f["bpf_runs"] if f["bpf_runs"] else float("nan")
        print(f"fixed rate: {res.tps:.0f} tps, requests: agent {f['agent']} server "
              f"{f['server']}, {f['packets']} packets ({f['packets'] / max(f['agent'], 1):.2f} "
              f"per request), agent CPU {f['cpu_s']:.2f} s = {cpu_us:.2f} µs per request; "
              f"BPF {f['bpf_progs']}: {f['bpf_runs']} runs, {f['bpf_ns']} ns = "
              f"{bpf_ns:.0f} ns per packet")

    ratio = statistics.median(ratios)
    print()
    print(f"median TPS without agent {statistics.median(plain):.0f}, with agent "
          f"{statistics.median(with_agent):.0f}; median ratio with/without {ratio:.3f}")
    print()
    print("summary")
    rows = [("TPS ratio (median of pairs)", f"{ratio:.3f}", f">= {TARGET_TPS_RATIO}",
             ratio >= TARGET_TPS_RATIO),
            ("agent CPU per request", f"{cpu_us:.2f} µs", f"<= {TARGET_CPU_US:g} µs",
             cpu_us <= TARGET_CPU_US),
            ("BPF program per packet", f"{bpf_ns:.0f} ns", f"<= {TARGET_BPF_NS:g} ns",
             bpf_ns <= TARGET_BPF_NS)]
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
