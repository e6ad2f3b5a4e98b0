#!/usr/bin/python3
"""Capture benchmark: 1 GiB of query results streaming through loopback as fast as they
can, without and with the agent (attached to lo, --dump-streams into tmpfs), alternating
three pairs. The traffic is the PostgreSQL protocol, as the agent meets it on a source: a
client sends a StartupMessage, then a Query; the test's server answers AuthenticationOk and
ReadyForQuery, then a RowDescription, 1 GiB of 64 KiB DataRow messages, CommandComplete and
ReadyForQuery (random bytes would measure the decoder hunting for message boundaries
through garbage, which real result traffic never makes it do). Prints each run's
throughput, the median with/without ratio, ring-buffer drops, gaps and the agent's CPU
seconds, and verifies the capture:

- one flow is dumped;
- gaps == 0  => the dumped .s2c is exactly the stream the server sent (sha256), and the
  agent counted the one request;
- ringbuf_drops > 0  => gaps > 0 (a lost record must show up as a gap, never as silently
  joined bytes);
- gaps > 0  => a .gaps file exists, every dumped byte sits at its stream offset (the
  .gaps file's "s2c offset=N missing=M" lines tell where), and dumped + missing bytes
  make the whole stream (a lost tail must be a gap too).

Then, paced: the same transfer held at fixed fractions of the median rate measured
without the agent (PGSHADOW_BENCH_FRACTIONS, default 0.1,0.25,0.5,0.75,1), with the agent at
each ring size of PGSHADOW_BENCH_RING_MB (default 16,64; the agent's --ringbuf-mb) and
without --dump-streams, as deployed (writing the dump into tmpfs costs the agent ~1.4 CPU
seconds per GiB, capturing ~0.08): a gapless run must count the one request, a drop must
show as a gap. Prints, per ring size, the highest fraction (and Gbit/s) with 0
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
import struct
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
             os.environ.get("PGSHADOW_BENCH_FRACTIONS", "0.1,0.25,0.5,0.75,1").split(",") if x]
RING_MB = [int(x) for x in os.environ.get("PGSHADOW_BENCH_RING_MB", "16,64").split(",") if x]
TRANSFER_TIMEOUT = 120           # seconds for one transfer
STOP_TIMEOUT = 120               # seconds for the agent to drain and exit
KEEP_FAILED = os.environ.get("PGSHADOW_BENCH_KEEP") == "1"
DEADLINE = 1200                  # the whole benchmark

ROW = 1 << 16                    # one DataRow message: 64 KiB


def message(kind, body):
    return kind + struct.pack("!I", len(body) + 4) + body


def data_rows(rng, size):
    """size bytes of DataRow messages of ROW bytes, one column of random bytes each."""
    payload = ROW - 1 - 4 - 2 - 4
    return b"".join(message(b"D", struct.pack("!HI", 1, payload) + rng.randbytes(payload))
                    for _ in range(size // ROW))


PATTERN = data_rows(random.Random(20240601), PATTERN_SIZE)  # the body repeats it
# The server's messages around the body: after the StartupMessage, after the Query, and
# after the last row.
HELLO = message(b"R", struct.pack("!I", 0)) + message(b"Z", b"I")
ROW_DESCRIPTION = message(b"T", struct.pack("!H", 1) + b"payload\0"
                          + struct.pack("!IHIhih", 0, 0, 17, -1, -1, 0))
DONE = message(b"C", f"SELECT {TOTAL // ROW}\0".encode()) + message(b"Z", b"I")
STREAM_LEN = len(HELLO) + len(ROW_DESCRIPTION) + TOTAL + len(DONE)
STARTUP = struct.pack("!II", 0, 196608) + b"user\0bench\0database\0bench\0\0"
STARTUP = struct.pack("!I", len(STARTUP)) + STARTUP[4:]
QUERY = message(b"Q", b"SELECT payload FROM rows\0")


def body_blocks():
    """The 1 GiB body as memoryviews of at most BLOCK bytes."""
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
    digest = hashlib.sha256(HELLO + ROW_DESCRIPTION)
    for block in body_blocks():
        digest.update(block)
    digest.update(DONE)
    return digest.hexdigest()


def stream_at(pos, n):
    """n bytes of the server's stream starting at offset pos."""
    head = HELLO + ROW_DESCRIPTION
    out = bytearray()
    while n > 0:
        if pos < len(head):
            piece = head[pos:pos + n]
        elif pos < len(head) + TOTAL:
            off = (pos - len(head)) % PATTERN_SIZE
            piece = PATTERN[off:off + min(n, PATTERN_SIZE - off, len(head) + TOTAL - pos)]
        else:
            piece = DONE[pos - len(head) - TOTAL:][:n]
            if not piece:
                break
        out += piece
        pos += len(piece)
        n -= len(piece)
    return bytes(out)


def check_pieces_against_stream(s2c_path, gaps_path):
    """With gaps: the .gaps file lists "s2c offset=N missing=M" (N: offset in the dump
    file), so the dump is pieces of the stream separated by M missing bytes. Returns two
    checks [(name, ok, detail)]: every dumped byte sits at its stream offset (nothing
    silently joined), and dumped + missing bytes make the whole stream (no tail silently
    cut off)."""
    pieces_name = "gaps > 0 => every dumped byte at its stream offset (nothing joined)"
    total_name = "gaps > 0 => dumped + gap bytes == stream length (no tail lost silently)"
    gaps = []
    for line in gaps_path.read_text().splitlines():
        direction, off, missing = line.split()
        if direction != "s2c":
            continue
        missing = missing.split("=")[1]
        if missing == "unknown":
            return [(pieces_name, False, f"a gap of unknown size at {off}: offsets cannot "
                                          f"be checked")]
        gaps.append((int(off.split("=")[1]), int(missing)))
    size = s2c_path.stat().st_size
    file_pos = stream_pos = 0
    with open(s2c_path, "rb") as f:
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
            (total_name, stream_pos == STREAM_LEN,
             f"{size} dumped + {missing_total} in gaps = {stream_pos}; the stream has "
             f"{STREAM_LEN}" + ("" if stream_pos == STREAM_LEN else
                           f": its last {STREAM_LEN - stream_pos} bytes are neither dumped nor "
                           f"listed as a gap"))]


def recv_exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def transfer(port, rate=None):
    """One session over loopback: the client's StartupMessage and Query, the server's
    answer with TOTAL bytes of rows (at most rate bytes/s of them when given, paced per
    block). Returns seconds from the Query to the client having read the last byte."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    listener.settimeout(TRANSFER_TIMEOUT)
    served = {"error": None}

    def serve():
        try:
            conn, _ = listener.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
            conn.settimeout(TRANSFER_TIMEOUT)
            with conn:
                recv_exactly(conn, len(STARTUP))
                conn.sendall(HELLO)
                recv_exactly(conn, len(QUERY))
                conn.sendall(ROW_DESCRIPTION)
                start, sent = time.monotonic(), 0
                for block in body_blocks():
                    if rate:
                        ahead = start + sent / rate - time.monotonic()
                        if ahead > 0:
                            time.sleep(ahead)
                    conn.sendall(block)
                    sent += len(block)
                conn.sendall(DONE)
        except OSError as e:
            served["error"] = e

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
    client.settimeout(TRANSFER_TIMEOUT)
    got = 0
    with client:
        client.connect(("127.0.0.1", port))
        client.sendall(STARTUP)
        got += len(recv_exactly(client, len(HELLO)))
        start = time.monotonic()
        client.sendall(QUERY)
        buf = bytearray(4 * BLOCK)
        while True:
            n = client.recv_into(buf)
            if n == 0:
                break
            got += n
        end = time.monotonic()
    server.join(TRANSFER_TIMEOUT)
    listener.close()
    if server.is_alive() or served["error"] or got != STREAM_LEN:
        raise RuntimeError(f"transfer failed: received {got} of {STREAM_LEN} bytes, "
                           f"error {served['error']!r}")
    return end - start


def run_plain():
    return {"seconds": transfer(h.free_port(hosts=("127.0.0.1",)))}


def run_with_agent(binary, expected_sha, shm_root, rate=None, ring_mb=None, dump=True):
    """One transfer with a fresh agent. dump: with --dump-streams, and the dump checked
    byte for byte; without, only what the agent counted is checked (the agent as
    deployed: writing the dump costs the agent 18 times what capturing does)."""
    port = h.free_port(hosts=("127.0.0.1",))
    out = {"checks": []}
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=shm_root))
    agent = h.Agent(binary, port, ["lo"], dump_dir=run_dir / "dumps" if dump else None,
                    logdir=run_dir, name="agent",
                    extra=["--ringbuf-mb", str(ring_mb)] if ring_mb else [])
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
        if not dump:
            if s.get("gaps") == 0:
                out["checks"].append(("gaps == 0 => the one request counted",
                                      s.get("requests") == 1,
                                      f"requests {s.get('requests')}"))
            if s.get("ringbuf_drops", 0) > 0:
                out["checks"].append(("ringbuf_drops > 0 => gaps > 0", s.get("gaps", 0) > 0,
                                      f"drops {s.get('ringbuf_drops')}, gaps {s.get('gaps')}"))
            return out
        flows, unexpected = h.read_dumps(agent.dump_dir)
        s2c = [f for f in flows if "s2c" in f.files]
        out["checks"].append(("one flow dumped", len(flows) == 1 and not unexpected,
                              f"{len(flows)} flows, other files {unexpected}"))
        if s.get("gaps") == 0:
            sha = h.sha256_file(s2c[0].files["s2c"]) if s2c else None
            size = s2c[0].files["s2c"].stat().st_size if s2c else None
            out["checks"].append(("gaps == 0 => .s2c equals the stream sent",
                                  sha == expected_sha, f"{size} bytes, sha256 {sha}"))
            out["checks"].append(("gaps == 0 => the one request counted",
                                  s.get("requests") == 1, f"requests {s.get('requests')}"))
        else:
            gap_files = [f.files["gaps"] for f in flows if "gaps" in f.files]
            out["checks"].append(("gaps > 0 => a .gaps file lists them", bool(gap_files),
                                  f"{[p.name for p in gap_files]}"))
            if gap_files and s2c:
                out["checks"] += check_pieces_against_stream(s2c[0].files["s2c"],
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
            w = run_with_agent(binary, expected_sha, shm_root, rate=rate, ring_mb=ring,
                               dump=False)
            s = w["stats"]
            drops = s.get("ringbuf_drops")
            print(f"ring {ring:3d} MiB, {frac:.2f} x: {gbit(w['seconds']):6.2f} Gbit/s, "
                  f"ringbuf_drops={drops} gaps={s.get('gaps')}, agent CPU "
                  f"{w.get('cpu', 0) / (TOTAL / GIB):.2f} s per GiB")
            for name, ok, detail in w["checks"]:
                failures += not ok
                if not ok:
                    print(f"        FAIL: {name} ({detail})")
            if drops == 0 and frac >= best.get(ring, (0, 0))[0]:
                best[ring] = (frac, gbit(w["seconds"]))
    for ring in RING_MB:
        frac, got = best.get(ring, (None, None))
        print(f"ring {ring} MiB: highest fraction with 0 drops: "
              + (f"{frac:.2f} (achieved {got:.2f} Gbit/s = {got / plain_gbit:.0%} of the rate "
                 f"without the agent)" if frac else "none"))
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
    print(f"capture benchmark: {TOTAL / GIB:g} GiB of rows per run over 127.0.0.1, "
          f"{BLOCK >> 20} MiB sendall blocks, {PAIRS} pairs (without, with agent), dumps in {shm_root}")
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
