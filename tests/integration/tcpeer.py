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
                     [--sequential [--pause-ms N] --local-port L]
        connects all clients at once (a barrier), or one after the other with
        --sequential; --local-port binds every connection to port L (the same 4-tuple
        reused: the client then half-closes only after the server's EOF, so the server,
        not the client, keeps the old tuple in TIME_WAIT and accepts the next SYN);
        --pause-ms waits between sequential connections.
        Prints one JSON line:
        [{index, local_host, local_port, sent_len, sent_sha256, recv_len,
        recv_sha256}, ...]

Exit status 0 when every connection completed, 1 otherwise (reasons on stderr).
"""

import argparse
import errno
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


def _send_all(sock, data, shutdown, errors):
    try:
        view = memoryview(data)
        for off in range(0, len(view), BLOCK):
            sock.sendall(view[off:off + BLOCK])
        if shutdown:
            sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        errors.append(f"send: {e!r}")


def _exchange(sock, data, shutdown_last=False):
    """Send data then SHUT_WR while reading the peer to EOF; with shutdown_last, SHUT_WR
    only once the peer's EOF was read. Returns (bytes read, their sha256, errors)."""
    errors = []
    sender = threading.Thread(target=_send_all, args=(sock, data, not shutdown_last, errors))
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
    if shutdown_last:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(f"shutdown: {e!r}")
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


def _connect_from(sock, args):
    """Connect from args.local_port, retrying while the previous connection of the same
    tuple is still finishing (EADDRNOTAVAIL/EADDRINUSE for a moment after close)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::" if _family(args.host) == socket.AF_INET6 else "0.0.0.0", args.local_port))
    deadline = time.monotonic() + 5
    while True:
        try:
            sock.connect((args.host, args.port))
            return
        except OSError as e:
            if e.errno not in (errno.EADDRNOTAVAIL, errno.EADDRINUSE) or \
                    time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def run_client(args, spec):
    items = spec["client"]
    results, errors = [None] * len(items), []
    barrier = threading.Barrier(1 if args.sequential else len(items), timeout=args.timeout)

    def one(index):
        data = payload(*items[index])
        sock = socket.socket(_family(args.host), socket.SOCK_STREAM)
        sock.settimeout(args.timeout)
        try:
            barrier.wait()
            if args.local_port:
                _connect_from(sock, args)
            else:
                sock.connect((args.host, args.port))
        except (OSError, threading.BrokenBarrierError) as e:
            errors.append(f"client {index}: connect: {e!r}")
            sock.close()
            return
        local = sock.getsockname()
        received, sha, errs = _exchange(sock, data, shutdown_last=bool(args.local_port))
        sock.close()
        results[index] = _record(index, data, received, sha, "local", local[0], local[1])
        errors.extend(f"client {index} (local port {local[1]}): {e}" for e in errs)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(items))]
    deadline = time.monotonic() + args.timeout
    for t in threads:
        t.start()
        if args.sequential:
            t.join(max(0.1, deadline - time.monotonic()))
            time.sleep(args.pause_ms / 1000)
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
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--local-port", type=int, default=0)
    parser.add_argument("--pause-ms", type=float, default=0)
    args = parser.parse_args()
    with open(args.spec) as f:
        spec = json.load(f)
    errors = run_server(args, spec) if args.role == "server" else run_client(args, spec)
    for e in errors:
        print(f"tcpeer {args.role}: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
