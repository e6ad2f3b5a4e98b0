#!/usr/bin/python3
"""Traffic peer for the capture tests: a TCP server or a set of concurrent clients.

Run as a separate process so it can be started inside a network namespace with
`ip netns exec NS /usr/bin/python3 tcpeer.py ...`. Standard library only.

Both sides send a deterministic pseudo-random payload (payload(size, seed)) while
concurrently reading the peer's payload to EOF, then half-close with shutdown(SHUT_WR).
The spec file (JSON) lists the payloads: {"client": [[size, seed], ...],
"server": [[size, seed], ...]}; client connection i sends client[i], and the server
sends server[j] on the j-th connection it accepts.

    tcpeer.py server --host H --port P --spec FILE [--timeout S]
        prints "READY <port>" once listening, then, when every connection of the spec
        is done, one JSON line: [{index, peer_host, peer_port, sent_len, sent_sha256,
        recv_len, recv_sha256}, ...]
    tcpeer.py client --host H --port P --spec FILE [--timeout S]
        connects all clients at once (a barrier), prints one JSON line:
        [{index, local_host, local_port, sent_len, sent_sha256, recv_len,
        recv_sha256}, ...]

Exit status 0 when every connection completed, 1 otherwise (reasons on stderr).
"""

import argparse
import hashlib
import json
import random
import socket
import sys
import threading
import time

BLOCK = 256 * 1024


def payload(size, seed):
    """The bytes one side sends: deterministic, so the test can rebuild them."""
    return random.Random(seed).randbytes(size)


def _family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _send_all_then_shutdown(sock, data, errors):
    try:
        view = memoryview(data)
        for off in range(0, len(view), BLOCK):
            sock.sendall(view[off:off + BLOCK])
        sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        errors.append(f"send: {e!r}")


def _exchange(sock, data):
    """Send data (then SHUT_WR) while reading the peer to EOF. Returns (n, sha, errs)."""
    errors = []
    sender = threading.Thread(target=_send_all_then_shutdown, args=(sock, data, errors))
    sender.start()
    digest = hashlib.sha256()
    received = 0
    buf = bytearray(BLOCK)
    try:
        while True:
            n = sock.recv_into(buf)
            if n == 0:
                break
            digest.update(memoryview(buf)[:n])
            received += n
    except OSError as e:
        errors.append(f"recv: {e!r}")
    sender.join()
    return received, digest.hexdigest(), errors


def _record(index, data, received, recv_sha, side, host, port):
    """One connection's result; side is "peer" (server) or "local" (client)."""
    return {
        "index": index,
        f"{side}_host": host,
        f"{side}_port": port,
        "sent_len": len(data),
        "sent_sha256": hashlib.sha256(data).hexdigest(),
        "recv_len": received,
        "recv_sha256": recv_sha,
    }


def run_server(args, spec):
    items = spec["server"]
    listener = socket.socket(_family(args.host), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(max(128, len(items)))
    listener.settimeout(args.timeout)
    print("READY", listener.getsockname()[1], flush=True)

    results, errors, threads = [None] * len(items), [], []

    def handle(index, conn, peer):
        conn.settimeout(args.timeout)
        data = payload(*items[index])
        received, sha, errs = _exchange(conn, data)
        conn.close()
        results[index] = _record(index, data, received, sha, "peer", peer[0], peer[1])
        errors.extend(f"server conn {index} from {peer[0]}:{peer[1]}: {e}" for e in errs)

    deadline = time.monotonic() + args.timeout
    try:
        for index in range(len(items)):
            listener.settimeout(max(0.1, deadline - time.monotonic()))
            conn, peer = listener.accept()
            t = threading.Thread(target=handle, args=(index, conn, peer), daemon=True)
            t.start()
            threads.append(t)
    except OSError as e:
        errors.append(f"accept {len(threads)}/{len(items)}: {e!r}")
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
        if t.is_alive():
            errors.append("a server connection did not finish in time")
    listener.close()
    print(json.dumps([r for r in results if r is not None]), flush=True)
    return errors


def run_client(args, spec):
    items = spec["client"]
    results, errors = [None] * len(items), []
    barrier = threading.Barrier(len(items), timeout=args.timeout)

    def one(index):
        data = payload(*items[index])
        sock = socket.socket(_family(args.host), socket.SOCK_STREAM)
        sock.settimeout(args.timeout)
        try:
            barrier.wait()
            sock.connect((args.host, args.port))
        except (OSError, threading.BrokenBarrierError) as e:
            errors.append(f"client {index}: connect: {e!r}")
            sock.close()
            return
        local = sock.getsockname()
        received, sha, errs = _exchange(sock, data)
        sock.close()
        results[index] = _record(index, data, received, sha, "local", local[0], local[1])
        errors.extend(f"client {index} (local port {local[1]}): {e}" for e in errs)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(items))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + args.timeout
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
        if t.is_alive():
            errors.append("a client connection did not finish in time")
    print(json.dumps([r for r in results if r is not None]), flush=True)
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    with open(args.spec) as f:
        spec = json.load(f)
    errors = run_server(args, spec) if args.role == "server" else run_client(args, spec)
    for e in errors:
        print(f"tcpeer {args.role}: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
