#!/usr/bin/python3
"""Writes the seed corpora of tests/fuzz/ (committed; `make fuzz` grows them).

Each seed is a real conversation in the harness's input format: a session with a
startup, authentication, simple and extended queries, an error and COPY; the same
conversation as TCP segments (with a handshake, a retransmission and a FIN); console
sessions; the example configuration; the parsers' well-formed inputs.
"""

import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def msg(t, body=b""):
    return t + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


STARTUP = struct.pack("!II", 0, 196608) + cstr("user") + cstr("app") + cstr("database") + \
    cstr("shop") + b"\0"
STARTUP = struct.pack("!I", len(STARTUP)) + STARTUP[4:]
CLIENT = [STARTUP, msg(b"p", cstr("secret")),
          msg(b"Q", cstr("SELECT 1")),
          msg(b"P", cstr("s1") + cstr("SELECT $1::int") + struct.pack("!H", 0)) +
          msg(b"B", cstr("") + cstr("s1") + struct.pack("!HHIBHH", 0, 1, 1, ord("7"), 1, 0)) +
          msg(b"E", cstr("") + struct.pack("!I", 0)) + msg(b"S"),
          msg(b"Q", cstr("SELECT * FROM missing")),
          msg(b"Q", cstr("COPY t FROM STDIN")), msg(b"d", b"1\tx\n") + msg(b"c"),
          msg(b"X")]
RFQ = msg(b"Z", b"I")
ROW = msg(b"T", struct.pack("!H", 1) + cstr("x") + struct.pack("!IHIhih", 0, 0, 23, 4, -1, 0))
SERVER = [msg(b"R", struct.pack("!I", 3)),
          msg(b"R", struct.pack("!I", 0)) + msg(b"S", cstr("server_version") + cstr("15.4")) +
          msg(b"K", struct.pack("!II", 1, 2)) + RFQ,
          ROW + msg(b"D", struct.pack("!HI", 1, 1) + b"1") + msg(b"C", cstr("SELECT 1")) + RFQ,
          msg(b"1") + msg(b"2") + msg(b"D", struct.pack("!HI", 1, 1) + b"7") +
          msg(b"C", cstr("SELECT 1")) + RFQ,
          msg(b"E", b"SERROR\0C42P01\0Mrelation does not exist\0\0") + RFQ,
          msg(b"G", b"\0" + struct.pack("!HH", 1, 0)),
          msg(b"C", cstr("COPY 1")) + RFQ]


def conversation():
    """[(server?, bytes)] in the order they go."""
    out = []
    for i, c in enumerate(CLIENT):
        out.append((False, c))
        if i < len(SERVER):
            out.append((True, SERVER[i]))
    return out


def wire_seed(from_start):
    data = bytearray([1 if from_start else 0])
    conv = conversation() if from_start else conversation()[4:]
    for server, b in conv:
        for k in range(0, len(b), 100):
            piece = b[k:k + 100]
            data.append((0x80 if server else 0) | len(piece))
            data += piece
    return bytes(data)


def stream_seed(syn):
    data = bytearray()
    off = {False: 0, True: 0}

    def seg(server, flags, payload=b"", seq=None, dt=1):
        s = off[server] if seq is None else seq
        data.extend([(0x80 if server else 0) | flags, 0, (s >> 8) & 0xff, s & 0xff,
                     len(payload), dt])
        data.extend(payload)

    if syn:
        seg(False, 0x02, seq=0)
        seg(True, 0x12, seq=0)
        off[False] = off[True] = 1
    for server, b in conversation():
        for k in range(0, len(b), 200):
            piece = b[k:k + 200]
            seg(server, 0x10, piece)
            off[server] += len(piece)
    seg(False, 0x10, CLIENT[2], seq=off[False] - len(CLIENT[-1]) - 20)  # a stale resend
    seg(False, 0x11)
    seg(True, 0x11)
    return bytes(data)


def admin_seed(queries):
    start = struct.pack("!I", 196608) + cstr("user") + cstr("admin") + cstr("database") + \
        cstr("pgshadow") + b"\0"
    data = struct.pack("!I", len(start) + 4) + start
    for q in queries:
        data += msg(b"Q", cstr(q))
    data += msg(b"X")
    out = bytearray([0])
    for k in range(0, len(data), 40):
        piece = data[k:k + 40]
        out.append(len(piece) - 1)
        out += piece[:]
    return bytes(out)


def write(target, name, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    write("fuzz_wire", "session-from-start", wire_seed(True))
    write("fuzz_wire", "session-midstream", wire_seed(False))
    write("fuzz_stream", "handshake-and-session", stream_seed(True))
    write("fuzz_stream", "midstream", stream_seed(False))
    ssl = struct.pack("!II", 8, 80877103)
    write("fuzz_admin", "commands",
          admin_seed(["SHOW VERSION", "SHOW HELP", "SHOW MIRROR READINESS",
                      "SHOW MIRROR STATS; SHOW MIRRORS", "SHOW DATABASES",
                      "SHOW MIRROR SESSIONS", "SHOW MIRROR POOLS", "RESET MIRROR STATS",
                      "SELECT 1", ""]))
    write("fuzz_admin", "ssl-request", bytes([0, len(ssl) - 1]) + ssl)
    write("fuzz_config", "example.ini", (ROOT / "deploy" / "pgshadow.ini").read_bytes())
    write("fuzz_config", "databases.ini",
          b"[general]\nport = 5432\nmirror_of = host=m\nmirror_exposure = 0.5\n"
          b"[databases]\napp = dbname=app_v2 exposure=0.25\nother = exposure=1\n")
    write("fuzz_parsers", "readiness-json",
          b"\x00" + b'{"ready":false,"confidence_score":40,"recommendation":"Low",'
          b'"action":"x","metrics":{"error_rate":0,"success_rate":1,"runtime_hours":1,'
          b'"uptime_hours":1,"total_requests":10,"selected_requests":10,'
          b'"attempted_requests":10,"mirrored":10,"errors_connection":0,"errors_query":0,'
          b'"errors_timeout":0,"dropped":0,"compared":10,"mismatched":0},"criteria":[]}')
    write("fuzz_parsers", "prometheus-vector",
          b"\x01" + b'{"status":"success","data":{"resultType":"vector","result":'
          b'[{"metric":{"instance":"db1:9930"},"value":[1.5,"1"]}]}}')
    write("fuzz_parsers", "state-file", b"\x02pgshadow-state 1\nversion v\nmirror "
          b"0000000000000001\nruntime_ns 5\n")
    write("fuzz_parsers", "users", b"\x03alice:$2b$04$abcdefghijklmnopqrstuuLZYjhNQAOdpbzt4Wx"
          b"WlUHjv1wsyH5DG\n")
    write("fuzz_parsers", "redact", b"\x04postgresql://u:pa%zz@h/db invalid \"pa%zz\"")
    write("fuzz_parsers", "listen", b"\x05[::1]:9930")
    write("fuzz_parsers", "authblank", b"\x0e" + STARTUP + CLIENT[1] + CLIENT[2])


if __name__ == "__main__":
    main()
