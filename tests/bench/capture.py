#!/usr/bin/python3
"""Capture benchmark: one TCP connection streaming 1 GiB through loopback as fast as it
can, without and with the agent (attached to lo, --dump-streams into tmpfs), alternating
three pairs. Prints each run's throughput, the median with/without ratio, ring-buffer
drops, gaps and the agent's CPU seconds, and verifies the capture:

- one flow is dumped;
- gaps == 0  => the dumped .c2s is exactly the stream sent (sha256);
- ringbuf_drops > 0  => gaps > 0 (a lost record must show up as a gap, never as silently
  joined bytes);
- gaps > 0  => a .gaps file exists, every dumped byte sits at its stream offset (the
  .gaps file's "c2s offset=N missing=M" lines tell where), and dumped + missing bytes
  make the whole stream (a lost tail must be a gap too).

Then, paced: the same transfer held at fixed fractions of the median rate measured
without the agent (PGSHADOW_BENCH_FRACTIONS, default 0.1,0.25,0.5,0.75), with the agent at
each ring size of PGSHADOW_BENCH_RING_MB (default 16,64; the agent's --ringbuf-mb), the
same checks each time. Prints, per ring size, the highest fraction (and Gbit/s) with 0
ring-buffer drops and the agent's CPU seconds per GiB at each fraction.

Exit status 0 when every check passed, 1 otherwise. Needs root. Figures, not a timed
test: run it with `make bench` (or /usr/bin/python3 tests/bench/capture.py).
Environment: PGSHADOW_BENCH_BYTES (default 1 GiB), PGSHADOW_BENCH_PAIRS (default 3),
PGSHADOW_BIN (default build/pgshadow), PGSHADOW_BENCH_KEEP=1 keeps the dumps of a run
whose checks failed (in /dev/shm/pgshadow-bench-failed-*; delete them yourself).
"""

import hashlib
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import pgshadow_harness as h  # noqa: E402

GIB = 1 << 30
BLOCK = 1 << 20                  # sendall() size
PATTERN_SIZE = 16 * BLOCK        # the stream repeats this pseudo-random buffer
SOCK_BUF = 8 << 20               # SO_SNDBUF / SO_RCVBUF asked for
TOTAL = int(os.environ.get("PGSHADOW_BENCH_BYTES", GIB))
PAIRS = int(os.environ.get("PGSHADOW_BENCH_PAIRS", 3))
FRACTIONS = [float(x) for x in
             os.environ.get("PGSHADOW_BENCH_FRACTIONS", "0.1,0.25,0.5,0.75").split(",") if x]
RING_MB = [int(x) for x in os.environ.get("PGSHADOW_BENCH_RING_MB", "16,64").split(",") if x]
TRANSFER_TIMEOUT = 120           # seconds for one transfer
STOP_TIMEOUT = 120               # seconds for the agent to drain and exit
KEEP_FAILED = os.environ.get("PGSHADOW_BENCH_KEEP") == "1"
DEADLINE = 1200                  # the whole benchmark

PATTERN = random.Random(20240601).randbytes(PATTERN_SIZE)


def stream_blocks():
    """The stream as memoryviews of BLOCK bytes (the last one may be shorter)."""
    view = memoryview(PATTERN)
    sent = 0
    while sent < TOTAL:
        off = sent % PATTERN_SIZE
        n = min(BLOCK, TOTAL - sent, PATTERN_SIZE - off)
        yield view[off:off + n]
        sent += n


def stream_sha256():
    # The stream is deterministic, so its digest is computed once, outside the timed
    # transfers (hashing while sending would slow the sender being measured).
    digest = hashlib.sha256()
    for block in stream_blocks():
        digest.update(block)
    return digest.hexdigest()


def stream_at(pos, n):
    """n bytes of the stream starting at offset pos."""
    out = bytearray()
    while n > 0:
        off = pos % PATTERN_SIZE
        take = min(n, PATTERN_SIZE - off)
        out += PATTERN[off:off + take]
        pos += take
        n -= take
    return bytes(out)


def check_pieces_against_stream(c2s_path, gaps_path):
    """With gaps: the .gaps file lists "c2s offset=N missing=M" (N: offset in the dump
    file), so the dump is pieces of the stream separated by M missing bytes. Returns two
    checks [(name, ok, detail)]: every dumped byte sits at its stream offset (nothing
    silently joined), and dumped + missing bytes make the whole stream (no tail silently
    cut off)."""
    pieces_name = "gaps > 0 => every dumped byte at its stream offset (nothing joined)"
    total_name = "gaps > 0 => dumped + gap bytes == stream length (no tail lost silently)"
    gaps = []
    for line in gaps_path.read_text().splitlines():
        direction, off, missing = line.split()
        if direction != "c2s":
            continue
        missing = missing.split("=")[1]
        if missing == "unknown":
            return [(pieces_name, False, f"a gap of unknown size at {off}: offsets cannot "
                                          f"be checked")]
        gaps.append((int(off.split("=")[1]), int(missing)))
    size = c2s_path.stat().st_size
    file_pos = stream_pos = 0
    with open(c2s_path, "rb") as f:
        for off, missing in gaps + [(size, 0)]:
            while file_pos < off:
                n = min(4 * BLOCK, off - file_pos)
                if f.read(n) != stream_at(stream_pos, n):
                    return [(pieces_name, False, f"dump bytes at file offset {file_pos} are "
                                                 f"not the stream at offset {stream_pos}")]
                file_pos += n
                stream_pos += n
            stream_pos += missing
    missing_total = stream_pos - size
    return [(pieces_name, True, f"{size} bytes in {len(gaps) + 1} pieces"),
            (total_name, stream_pos == TOTAL,
             f"{size} dumped + {missing_total} in gaps = {stream_pos}; the stream has "
             f"{TOTAL}" + ("" if stream_pos == TOTAL else
                           f": its last {TOTAL - stream_pos} bytes are neither dumped nor "
                           f"listed as a gap"))]


def transfer(port, rate=None):
    """Send TOTAL bytes over one loopback connection (at most rate bytes/s when given,
    paced per block); returns seconds from connect to the receiver having read the last
    byte."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    listener.settimeout(TRANSFER_TIMEOUT)
    got = {"bytes": 0, "end": None, "error": None}

    def receive():
        try:
            conn, _ = listener.accept()
            conn.settimeout(TRANSFER_TIMEOUT)
            buf = bytearray(4 * BLOCK)
            with conn:
                while True:
                    n = conn.recv_into(buf)
                    if n == 0:
                        break
                    got["bytes"] += n
            got["end"] = time.monotonic()
        except OSError as e:
            got["error"] = e

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    sender = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
    sender.settimeout(TRANSFER_TIMEOUT)
    start = time.monotonic()
    with sender:
        sender.connect(("127.0.0.1", port))
        sent = 0
        for block in stream_blocks():
            if rate:
                ahead = start + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            sender.sendall(block)
            sent += len(block)
        sender.shutdown(socket.SHUT_WR)
        receiver.join(TRANSFER_TIMEOUT)
    listener.close()
    if receiver.is_alive() or got["error"] or got["bytes"] != TOTAL:
        raise RuntimeError(f"transfer failed: received {got['bytes']} of {TOTAL} bytes, "
                           f"error {got['error']!r}")
    return got["end"] - start


def run_plain():
    return {"seconds": transfer(h.free_port(hosts=("127.0.0.1",)))}


def run_with_agent(binary, expected_sha, shm_root, rate=None, ring_mb=None):
    port = h.free_port(hosts=("127.0.0.1",))
    out = {"checks": []}
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=shm_root))
    agent = h.Agent(binary, port, ["lo"], dump_dir=run_dir / "dumps", logdir=run_dir,
                    name="agent", extra=["--ringbuf-mb", str(ring_mb)] if ring_mb else [])
    try:
        agent.start().wait_ready()
        seconds = transfer(port, rate)
        cpu = agent.cpu_seconds()
        result = agent.stop(timeout=STOP_TIMEOUT)
        out = {"seconds": seconds, "cpu": cpu, "rc": result.returncode,
               "stats": result.stats or {}, "checks": []}
        if result.returncode != 0 or not result.stats:
            out["checks"].append(("agent exited 0 with a stats line", False,
                                  f"exit {result.returncode}: {result.stderr[-2000:]}"))
            return out
        s = result.stats
        flows, unexpected = h.read_dumps(agent.dump_dir)
        c2s = [f for f in flows if "c2s" in f.files]
        out["checks"].append(("one flow dumped", len(flows) == 1 and not unexpected,
                              f"{len(flows)} flows, other files {unexpected}"))
        if s.get("gaps") == 0:
            sha = h.sha256_file(c2s[0].files["c2s"]) if c2s else None
            size = c2s[0].files["c2s"].stat().st_size if c2s else None
            out["checks"].append(("gaps == 0 => .c2s equals the stream sent",
                                  sha == expected_sha, f"{size} bytes, sha256 {sha}"))
        else:
            gap_files = [f.files["gaps"] for f in flows if "gaps" in f.files]
            out["checks"].append(("gaps > 0 => a .gaps file lists them", bool(gap_files),
                                  f"{[p.name for p in gap_files]}"))
            if gap_files and c2s:
                out["checks"] += check_pieces_against_stream(c2s[0].files["c2s"],
                                                             gap_files[0])
        if s.get("ringbuf_drops", 0) > 0:
            out["checks"].append(("ringbuf_drops > 0 => gaps > 0", s.get("gaps", 0) > 0,
                                  f"drops {s.get('ringbuf_drops')}, gaps {s.get('gaps')}"))
        return out
    finally:
        agent.kill()
        if KEEP_FAILED and any(not ok for _, ok, _ in out["checks"]):
            kept = Path(tempfile.mkdtemp(prefix="pgshadow-bench-failed-", dir="/dev/shm"))
            shutil.move(str(run_dir), str(kept))
            out["kept"] = kept
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def gbit(seconds):
    return TOTAL * 8 / seconds / 1e9


def paced(binary, expected_sha, shm_root, plain_gbit, began):
    """The paced runs (see the module docstring); returns the number of failed checks."""
    failures, best = 0, {}
    print(f"paced: fractions {FRACTIONS} of {plain_gbit:.2f} Gbit/s, ring sizes {RING_MB} MiB")
    for ring in RING_MB:
        for frac in FRACTIONS:
            if time.monotonic() - began > DEADLINE:
                print(f"stopping early: past the {DEADLINE}s budget")
                return failures
            rate = plain_gbit * frac * 1e9 / 8
            w = run_with_agent(binary, expected_sha, shm_root, rate=rate, ring_mb=ring)
            s = w["stats"]
            drops = s.get("ringbuf_drops")
            print(f"ring {ring:3d} MiB, {frac:.2f} x: {gbit(w['seconds']):6.2f} Gbit/s, "
                  f"ringbuf_drops={drops} gaps={s.get('gaps')}, agent CPU "
                  f"{w.get('cpu', 0) / (TOTAL / GIB):.2f} s per GiB")
            for name, ok, detail in w["checks"]:
                failures += not ok
                if not ok:
                    print(f"        FAIL: {name} ({detail})")
            if drops == 0:
                best[ring] = max(best.get(ring, 0), frac)
    for ring in RING_MB:
        frac = best.get(ring)
        print(f"ring {ring} MiB: highest fraction with 0 drops: "
              + (f"{frac:.2f} ({frac * plain_gbit:.2f} Gbit/s)" if frac else "none"))
    return failures


def main():
    if os.geteuid() != 0:
        print("capture benchmark: needs root (BPF); skipped", file=sys.stderr)
        return 1
    binary = h.agent_binary()
    if not binary.is_file():
        print(f"capture benchmark: {binary} missing, run make first", file=sys.stderr)
        return 1
    began = time.monotonic()
    expected_sha = stream_sha256()
    shm_root = tempfile.mkdtemp(prefix="pgshadow-bench-", dir="/dev/shm")
    print(f"capture benchmark: {TOTAL / GIB:g} GiB per run over 127.0.0.1, {BLOCK >> 20} MiB "
          f"sendall blocks, {PAIRS} pairs (without, with agent), dumps in {shm_root}")
    print(f"stream sha256 {expected_sha}")
    ratios, plain, captured, failures = [], [], [], 0
    try:
        for i in range(PAIRS):
            if time.monotonic() - began > DEADLINE:
                print(f"stopping early: past the {DEADLINE}s budget")
                break
            p = run_plain()
            plain.append(gbit(p["seconds"]))
            print(f"pair {i + 1}: without agent {gbit(p['seconds']):7.2f} Gbit/s "
                  f"({p['seconds']:.2f} s)")
            w = run_with_agent(binary, expected_sha, shm_root)
            captured.append(gbit(w["seconds"]))
            ratios.append(p["seconds"] / w["seconds"])
            s = w["stats"]
            print(f"pair {i + 1}: with agent    {gbit(w['seconds']):7.2f} Gbit/s "
                  f"({w['seconds']:.2f} s)  ratio {ratios[-1]:.3f}  agent cpu {w['cpu']:.2f} s"
                  f"\n        packets={s.get('packets')} records={s.get('records')} "
                  f"ringbuf_drops={s.get('ringbuf_drops')} truncated={s.get('truncated')} "
                  f"flows={s.get('flows')} gaps={s.get('gaps')} gap_bytes={s.get('gap_bytes')}")
            for name, ok, detail in w["checks"]:
                failures += not ok
                print(f"        {'PASS' if ok else 'FAIL'}: {name} ({detail})")
            if w.get("kept"):
                print(f"        kept this run's dumps and logs in {w['kept']}")
        if plain:
            failures += paced(binary, expected_sha, shm_root, statistics.median(plain), began)
    finally:
        shutil.rmtree(shm_root, ignore_errors=True)
    if ratios:
        print(f"throughput without agent: median {statistics.median(plain):.2f} Gbit/s; with "
              f"agent: median {statistics.median(captured):.2f} Gbit/s")
        print(f"median ratio with/without: {statistics.median(ratios):.3f}")
    print(f"{'PASS' if failures == 0 else 'FAIL'}: {failures} failed checks; "
          f"{time.monotonic() - began:.0f} s")
    return 0 if failures == 0 and ratios else 1


if __name__ == "__main__":
    sys.exit(main())
