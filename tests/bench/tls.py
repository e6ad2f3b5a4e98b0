#!/usr/bin/python3
"""TLS benchmark: what the TLS probes (--tls on) cost, measured side by side in one run.

A source PostgreSQL 15 cluster with ssl = on (a self-signed certificate), pgbench -i -s 10;
`pgbench -n -S -M prepared -c 4 -j 2` over TLS (sslmode=require) against it. The agent runs
in every measured run (attached to lo), with the probes off (--tls off: the TLS sessions
are counted, not decoded) or on (--tls on: uprobes on the server's libssl), so the
difference is the probes alone.

1. Maximum rate: PAIRS pairs of SECONDS-long runs, off then on (the order alternates);
   each run's TPS and the median of the on/off ratios.
2. Fixed rate: RATE_ROUNDS pairs at half the median maximum TPS with the probes on (so
   that both runs of a pair serve the same rate; order alternating). Per run: the host's CPU time per request (non-idle jiffies of
   /proc/stat over the run / requests the server executed), the cluster's (the postmaster's
   utime+stime+cutime+cstime), the agent's; with the probes on also the BPF time of the
   tls_ programs per request (kernel.bpf_stats_enabled). The median of the host on/off
   ratios and their spread.
3. Another libssl user on the host: a TLS ping-pong (Python's ssl module, which calls the
   same libssl.so.3, between two processes over loopback, outside PostgreSQL: the probes
   trap in it before their filter drops it) for PINGPONG_SECONDS with the probes off and
   on, PAIRS times; round trips per second and the on/off ratio (median).

Must hold (checked, exit 1 otherwise): with the probes on, every request decoded (the
agent's mirror_source_requests_total of the database equals pg_stat_statements' calls,
pgbench's transactions + 2), no ring-buffer drops, no unmapped calls; with them off,
nothing decoded in that database. Figures are reported, not judged.

Needs root. Environment: PGSHADOW_BENCH_PAIRS (default 3), PGSHADOW_BENCH_SECONDS (10),
PGSHADOW_BENCH_RATE_ROUNDS (3), PGSHADOW_BENCH_PINGPONG_SECONDS (5), PGSHADOW_BIN. About
3 minutes with the defaults.
"""

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import pg_harness as pgh  # noqa: E402
import pgshadow_harness as h  # noqa: E402
import overhead  # noqa: E402

PAIRS = int(os.environ.get("PGSHADOW_BENCH_PAIRS", 3))
SECONDS = int(os.environ.get("PGSHADOW_BENCH_SECONDS", 10))
RATE_ROUNDS = int(os.environ.get("PGSHADOW_BENCH_RATE_ROUNDS", 3))
PINGPONG_SECONDS = float(os.environ.get("PGSHADOW_BENCH_PINGPONG_SECONDS", 5))
DB = "bench"
EXTRA_QUERIES = overhead.PGBENCH_EXTRA_QUERIES


def pgbench_args(seconds, rate=None):
    args = ["-n", "-S", "-M", "prepared", "-c", 4, "-j", 2, "-T", seconds]
    return args + (["-R", int(rate)] if rate else [])


class Run(overhead.AgentRun):
    """An agent on lo with the probes on or off."""

    def __init__(self, binary, pg, logdir, tls, name):
        super().__init__(binary, pg, logdir, name, extra=["--tls", "on" if tls else "off"])


def tls_bpf(pid):
    """(run_time_ns, run_cnt) summed over the agent's tls_ programs."""
    stats = overhead.bpf_prog_stats(pid)
    return (sum(s[1] for s in stats.values() if s[0].startswith("tls_")),
            sum(s[2] for s in stats.values() if s[0].startswith("tls_")))


def measured(pg, binary, logdir, tls, rate, seconds, name, checks):
    tick = os.sysconf("SC_CLK_TCK")
    pm = overhead.postmaster_pid(pg)
    with Run(binary, pg, logdir, tls, name) as run:
        pg.pgss_reset()
        base = overhead.children(pm) - 1
        overhead.wait_children(pm, base)
        cpu0, bpf0 = run.agent.cpu_seconds(), tls_bpf(run.agent.pid)
        host0, cl0 = overhead.host_busy_ticks(), overhead.cluster_ticks(pm)
        res = pg.pgbench(pgbench_args(seconds, rate), DB, sslmode="require")
        overhead.wait_children(pm, base)
        host1, cl1 = overhead.host_busy_ticks(), overhead.cluster_ticks(pm)
        m = pgh.wait_metrics_stable(run.addr, timeout=60)
        cpu1, bpf1 = run.agent.cpu_seconds(), tls_bpf(run.agent.pid)
        server = pg.pgss_calls(DB)
    agent_n, drops = m.requests(DB), int(m.get("mirror_capture_ringbuf_drops_total"))
    unmapped = int(m.get("mirror_capture_tls_unmapped_calls_total"))
    if tls:
        checks.append((f"{name}: every request decoded (agent {agent_n} == server {server})",
                       agent_n == server and server == res.transactions + EXTRA_QUERIES))
        checks.append((f"{name}: 0 drops, 0 unmapped calls ({drops}, {unmapped})",
                       drops == 0 and unmapped == 0))
    else:
        checks.append((f"{name}: probes off, nothing decoded (agent {agent_n})", agent_n == 0))
    f = {"tps": res.tps, "requests": server,
         "host_us": (host1 - host0) / tick * 1e6 / server,
         "cluster_us": (cl1 - cl0) / tick * 1e6 / server,
         "agent_us": (cpu1 - cpu0) * 1e6 / server,
         "bpf_us": (bpf1[0] - bpf0[0]) / 1e3 / server, "bpf_runs": bpf1[1] - bpf0[1]}
    line = (f"{name}: {res.tps:6.0f} tps, host CPU {f['host_us']:6.1f} µs/request, cluster "
            f"{f['cluster_us']:6.1f}, agent {f['agent_us']:5.2f}")
    if tls:
        line += (f", tls BPF {f['bpf_us']:.2f} µs/request ({f['bpf_runs']} runs), decoded "
                 f"{agent_n}/{server}")
    print(line, flush=True)
    return f


# ---------------------------------------------------------------- another libssl user

PINGPONG = r"""
import socket, ssl, sys, time
cert, key, mode, port, seconds = sys.argv[1:6]
if mode == "server":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", int(port))); ls.listen(1); print("ready", flush=True)
    c = ctx.wrap_socket(ls.accept()[0], server_side=True)
    while True:
        b = c.recv(64)
        if not b: break
        c.sendall(b)
else:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))))
    n, end = 0, time.monotonic() + float(seconds)
    while time.monotonic() < end:
        c.sendall(b"x" * 32); c.recv(64); n += 1
    print(n / float(seconds), flush=True)
"""


def pingpong(cert, key):
    port = h.free_port(hosts=("127.0.0.1",))
    py = "/usr/bin/python3"
    server = subprocess.Popen([py, "-c", PINGPONG, cert, key, "server", str(port), "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        out = subprocess.run([py, "-c", PINGPONG, cert, key, "client", str(port),
                              str(PINGPONG_SECONDS)], capture_output=True, text=True,
                             timeout=PINGPONG_SECONDS + 30, check=True).stdout
        return float(out.strip())
    finally:
        server.kill()
        server.wait()


def main():
    if os.geteuid() != 0:
        print("tls benchmark: needs root (BPF); skipped", file=sys.stderr)
        return 1
    binary = h.agent_binary()
    checks = []
    logdir = Path(tempfile.mkdtemp(prefix="pgshadow-bench-tls-"))
    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    stats_before = stats_path.read_text().strip()
    stats_path.write_text("1")
    try:
        with pgh.pg_server(name="tlsbench", ssl=True,
                           settings={"log_statement": "'none'",
                                     "max_connections": "50"}) as pg:
            pg.createdb(DB)
            pg.pgbench_init(DB, scale=10)
            ratios, on_tps = [], []
            for i in range(PAIRS):
                order = (False, True) if i % 2 == 0 else (True, False)
                r = {tls: measured(pg, binary, logdir, tls, None, SECONDS,
                                   f"max {i + 1} tls={'on' if tls else 'off'}", checks)
                     for tls in order}
                ratios.append(r[True]["tps"] / r[False]["tps"])
                on_tps.append(r[True]["tps"])
            rate = statistics.median(on_tps) / 2
            host, on_f, off_f = [], [], []
            for i in range(RATE_ROUNDS):
                order = (False, True) if i % 2 == 0 else (True, False)
                r = {tls: measured(pg, binary, logdir, tls, rate, SECONDS,
                                   f"rate {rate:.0f} {i + 1} tls={'on' if tls else 'off'}",
                                   checks)
                     for tls in order}
                host.append(r[True]["host_us"] / r[False]["host_us"])
                on_f.append(r[True])
                off_f.append(r[False])
            cert, key = str(pg.data_dir / "server.crt"), str(pg.data_dir / "server.key")
            pp = []
            for i in range(PAIRS):
                with Run(binary, pg, logdir, False, f"pp off {i}"):
                    off = pingpong(cert, key)
                with Run(binary, pg, logdir, True, f"pp on {i}"):
                    on = pingpong(cert, key)
                print(f"TLS ping-pong outside PostgreSQL: {off:.0f} round trips/s with the "
                      f"probes off, {on:.0f} on", flush=True)
                pp.append(on / off)
    finally:
        stats_path.write_text(stats_before)

    print("\n== TLS probes (--tls on vs --tls off, same run)")
    print(f"max TPS over TLS, on/off: median {statistics.median(ratios):.3f} "
          f"(pairs {', '.join(f'{x:.3f}' for x in ratios)})")
    print(f"host CPU per request at {rate:.0f}/s, on/off: median "
          f"{statistics.median(host):.3f} (rounds {', '.join(f'{x:.3f}' for x in host)}); "
          f"on {statistics.median(f['host_us'] for f in on_f):.1f} µs, off "
          f"{statistics.median(f['host_us'] for f in off_f):.1f} µs")
    print(f"cluster CPU per request: on {statistics.median(f['cluster_us'] for f in on_f):.1f}"
          f" µs, off {statistics.median(f['cluster_us'] for f in off_f):.1f} µs; agent on "
          f"{statistics.median(f['agent_us'] for f in on_f):.2f} µs, off "
          f"{statistics.median(f['agent_us'] for f in off_f):.2f} µs; tls BPF "
          f"{statistics.median(f['bpf_us'] for f in on_f):.2f} µs/request")
    print(f"another libssl user (TLS ping-pong), on/off: median {statistics.median(pp):.3f} "
          f"(pairs {', '.join(f'{x:.3f}' for x in pp)})")
    ok = True
    for what, passed in checks:
        ok &= passed
        if not passed:
            print(f"FAILED: {what}")
    print(f"must-hold checks: {sum(p for _, p in checks)}/{len(checks)} passed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
