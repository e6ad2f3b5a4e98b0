"""Helpers shared by the integration tests and the benchmark (standard library only).

- Agent: runs build/pgshadow (optionally in a network namespace or as another user),
  waits for its ready line, stops it and parses its final stats line.
- NetworkLab: network namespaces, veth pairs, routes, per-namespace sysctls and nftables
  tables, all undone by teardown().
- run_traffic: drives tcpeer.py (server and concurrent clients, each possibly in a
  namespace) and returns what every connection sent each way.
- check_dumps: compares the agent's --dump-streams files with what was sent.
- BPF/tc inspection: which of our programs, links and tc filters exist.

Failures are raised as AssertionError (pytest reports them as test failures); nothing here
imports pytest, so tests/bench/capture.py can use it too.
"""

import collections
import dataclasses
import hashlib
import ipaddress
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import tcpeer

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parents[1]
PYTHON = "/usr/bin/python3"
TCPEER = TESTS_DIR / "tcpeer.py"
MIB = 1 << 20

# Names of our BPF programs (bpf/capture.bpf.c); BPF object names are cut at 15 chars.
# The tls_ ones are loaded with --tls on only,
TLS_PROGS = ("tls_sock_recv", "tls_sock_send", "tls_read_enter", "tls_read_exit",
             "tls_read_ex_ent", "tls_read_ex_exi", "tls_write_enter", "tls_write_exit",
             "tls_write_ex_en", "tls_write_ex_ex")
# mirror_rx (a socket filter on the agent's own mirror connections) with --mirror only.
OUR_PROGS = ("capture_ingress", "capture_egress", "mirror_rx") + TLS_PROGS

READY_RE = re.compile(r"pgshadow: capturing port (\d+) on (\S+) \((\w+)\)")
STATS_RE = re.compile(r"^.*pgshadow: stats (.*)$", re.M)


def agent_binary():
    return Path(os.environ.get("PGSHADOW_BIN", REPO / "build" / "pgshadow"))


def run(argv, check=True, timeout=30, input=None):
    """Run a command, capture its output as text; raise AssertionError if check and it fails."""
    try:
        res = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                             timeout=timeout, input=input)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"command timed out after {timeout}s: {' '.join(map(str, argv))}")
    if check and res.returncode != 0:
        raise AssertionError(f"command failed (exit {res.returncode}): "
                             f"{' '.join(map(str, argv))}\n{res.stderr.strip()}")
    return res


def netns_prefix(netns):
    return ["ip", "netns", "exec", netns] if netns else []


# --------------------------------------------------------------------------- ports

def _local_port_range():
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(hosts=("127.0.0.1", "::1"), rng=random):
    """A TCP port outside the ephemeral range that nothing is bound to on `hosts`.

    Outside the ephemeral range so that no client connection on this host (ours or
    anyone's) can have it as its local port and be mistaken for the server side."""
    eph_lo, eph_hi = _local_port_range()
    lo, hi = (10000, eph_lo - 1) if eph_lo > 11000 else (eph_hi + 1, 65535)
    for _ in range(500):
        port = rng.randint(lo, hi)
        try:
            for host in hosts:
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                with socket.socket(fam, socket.SOCK_STREAM) as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise AssertionError(f"no free TCP port found in {lo}-{hi}")


# --------------------------------------------------------------------------- agent

def parse_stats(stderr_text):
    """The last `pgshadow: stats k=v ...` line of the agent's stderr as a dict (ints where
    the value is an integer), or None if there is none."""
    matches = STATS_RE.findall(stderr_text)
    if not matches:
        return None
    stats = {}
    for pair in matches[-1].split():
        key, sep, value = pair.partition("=")
        if sep:
            try:
                stats[key] = int(value)
            except ValueError:
                stats[key] = value
    return stats


@dataclasses.dataclass
class AgentResult:
    returncode: int
    stderr: str
    stats: dict  # None if the agent printed no stats line


class Agent:
    """One run of the agent. start() then wait_ready(); stop() or kill(); always kill()
    in a finalizer (a no-op once it has exited)."""

    def __init__(self, binary, port, interfaces=(), dump_dir=None, attach=None,
                 netns=None, extra=(), logdir=None, name="agent"):
        self.port = port
        self.interfaces = list(interfaces)
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.attach = attach
        self.netns = netns
        argv = [str(binary), "--port", str(port)]
        for ifname in self.interfaces:
            argv += ["--interface", ifname]
        if self.dump_dir:
            argv += ["--dump-streams", str(self.dump_dir)]
        if attach:
            argv += ["--attach", attach]
        # Every agent gets its own metrics port unless the caller chose one: two agents
        # (or a test and a person's agent) must never fight over the default 9930.
        self.metrics_addr = None
        extra = list(extra)
        if "--metrics-listen" in extra:
            self.metrics_addr = extra[extra.index("--metrics-listen") + 1]
        else:
            self.metrics_addr = f"127.0.0.1:{free_port(hosts=('127.0.0.1',))}"
            argv += ["--metrics-listen", self.metrics_addr]
        logdir = Path(logdir or "/tmp")
        # ... and its own admin console socket (default /run/pgshadow/.s.PGSQL.6433, which
        # a second agent, or an operator's agent on this host, would refuse to share).
        self.admin_dir = self.admin_port = None
        if "--admin-socket-dir" in extra:
            self.admin_dir = extra[extra.index("--admin-socket-dir") + 1]
        else:
            self.admin_dir = str(admin_socket_dir(logdir, name))
            argv += ["--admin-socket-dir", self.admin_dir]
        if "--admin-port" in extra:
            self.admin_port = int(extra[extra.index("--admin-port") + 1])
        else:
            self.admin_port = free_port(hosts=("127.0.0.1",))
            argv += ["--admin-port", str(self.admin_port)]
        self.argv = netns_prefix(netns) + argv + extra
        self.stderr_path = logdir / f"{name}.stderr"
        self.stdout_path = logdir / f"{name}.stdout"
        self.proc = None
        self.ready_port = self.ready_interfaces = self.ready_mode = None
        self.result = None

    @property
    def pid(self):
        return self.proc.pid

    def start(self):
        if self.dump_dir:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err)
        return self

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout=30):
        """Wait for the ready line; fail with the agent's stderr if it exits first."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.stderr()
            m = READY_RE.search(text)
            if m:
                self.ready_port = int(m.group(1))
                self.ready_interfaces = m.group(2).split(",")
                self.ready_mode = m.group(3)
                return self
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(f"agent exited with {rc} before it was ready\n"
                                     f"argv: {' '.join(self.argv)}\nstderr:\n{text}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"agent not ready after {timeout}s\n"
                                     f"argv: {' '.join(self.argv)}\nstderr:\n{self.stderr()}")
            time.sleep(0.05)

    def cpu_seconds(self):
        """CPU time of the running agent: the sum over its threads of the scheduler's run
        time (/proc/PID/task/TID/schedstat, nanoseconds). utime+stime of /proc/PID/stat
        count in ticks of 10 ms, a tenth of what an observing agent spends in a 10 s
        benchmark run. Every thread of the agent lives as long as it does; without
        schedstat (CONFIG_SCHED_INFO) it falls back to the ticks."""
        total, tasks = 0, Path(f"/proc/{self.pid}/task")
        try:
            for task in tasks.iterdir():
                total += int((task / "schedstat").read_text().split()[0])
            return total / 1e9
        except (OSError, ValueError, IndexError):
            st = proc_stat(self.pid)
            return (st.utime + st.stime) / os.sysconf("SC_CLK_TCK")

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Send sig, wait for the exit, return AgentResult. Fails if it does not exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.wait(timeout)
        if rc is None:
            self.kill()
            raise AssertionError(f"agent did not exit within {timeout}s of "
                                 f"{signal.Signals(sig).name}\nstderr:\n{self.stderr()}")
        text = self.stderr()
        self.result = AgentResult(rc, text, parse_stats(text))
        return self.result

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


ProcStat = collections.namedtuple("ProcStat", "ppid utime stime cutime cstime")


def proc_stat(pid):
    """ppid and CPU clock ticks (utime, stime; cutime, cstime: of its reaped children)
    from /proc/PID/stat. Raises OSError when the process is gone."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rindex(")") + 2:].split()  # f[0] is field 3 (state)
    return ProcStat(int(f[1]), int(f[11]), int(f[12]), int(f[13]), int(f[14]))


def admin_socket_dir(logdir, name):
    """A directory for one agent's admin console socket: under logdir, or a new one under
    /tmp when that path would be too long for a Unix socket (108 bytes with the name)."""
    path = Path(logdir) / f"{name}.admin"
    if len(str(path)) + len("/.s.PGSQL.65535") >= 100:
        return Path(tempfile.mkdtemp(prefix="pgshadow-admin-"))
    return path


def run_agent_to_exit(binary, args, user=None, timeout=15):
    """Run the agent with args, expecting it to exit on its own. Returns
    (returncode, stdout, stderr). Fails if it is still running after timeout."""
    prefix = []
    if user:
        prefix = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", "--"]
    argv = prefix + [str(Path(binary).resolve())] + [str(a) for a in args]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"agent still running after {timeout}s (it should have refused "
                             f"to start)\nargv: {' '.join(argv)}\nstderr:\n{err}")
    return proc.returncode, out, err


def assert_clean_stop(result, min_bytes=0):
    """A graceful stop: exit 0, a stats line, no ring-buffer drops, no gaps."""
    assert result.returncode == 0, \
        f"agent exited with {result.returncode}, expected 0\nstderr:\n{result.stderr}"
    s = result.stats
    assert s is not None, f"no 'pgshadow: stats' line on stderr:\n{result.stderr}"
    for key in ("packets", "bytes", "records", "ringbuf_drops", "truncated", "flows",
                "gaps", "gap_bytes"):
        assert key in s, f"stats line lacks {key}=: {s}"
    assert s["ringbuf_drops"] == 0, f"ring-buffer drops: {s}"
    assert s["gaps"] == 0 and s["gap_bytes"] == 0, f"stream gaps: {s}"
    assert s["bytes"] >= min_bytes, \
        f"agent counted {s['bytes']} payload bytes, at least {min_bytes} were sent: {s}"
    return s


# --------------------------------------------------------------------------- processes

class ProcessTracker:
    """Every helper process a test starts; kill_all() in a finalizer."""

    def __init__(self):
        self.procs = []

    def popen(self, argv, **kw):
        proc = subprocess.Popen([str(a) for a in argv], **kw)
        self.procs.append(proc)
        return proc

    def kill_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


# --------------------------------------------------------------------------- namespaces

class NetworkLab:
    """Network namespaces and what lives in them, torn down in reverse order.

    Names are unique per run: namespaces `pgt-<id>-<role>`, interfaces `pg<id><tag>`
    (at most 15 characters)."""

    def __init__(self):
        self.run_id = f"{os.getpid() % 0x10000:04x}{random.randrange(0x100):02x}"
        self._undo = []  # (description, argv) run in reverse order by teardown()
        self.namespaces = []

    def netns(self, role):
        name = f"pgt-{self.run_id}-{role}"
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self._undo.append((f"delete netns {name}", ["ip", "netns", "delete", name]))
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def ifname(self, tag):
        name = f"pg{self.run_id}{tag}"
        assert len(name) <= 15, name
        return name

    def veth(self, ns_a, tag_a, cidr_a, ns_b, tag_b, cidr_b):
        """A veth pair between two namespaces, addressed and up. Returns the two names."""
        a, b = self.ifname(tag_a), self.ifname(tag_b)
        run(["ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b,
             "netns", ns_b])
        self._undo.append((f"delete veth {a}", ["ip", "-n", ns_a, "link", "del", a]))
        for ns, dev, cidr in ((ns_a, a, cidr_a), (ns_b, b, cidr_b)):
            run(["ip", "-n", ns, "addr", "add", cidr, "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        for ns, dev in ((ns_a, a), (ns_b, b)):
            self._wait_up(ns, dev)
        return a, b

    def ip(self, ns, *args):
        return run(["ip", "-n", ns, *args])

    def sysctl(self, ns, key, value):
        """Set a sysctl inside ns; the old value is restored by teardown()."""
        old = run(netns_prefix(ns) + ["sysctl", "-n", key]).stdout.strip()
        run(netns_prefix(ns) + ["sysctl", "-q", "-w", f"{key}={value}"])
        self._undo.append((f"restore {key}={old} in {ns}",
                           netns_prefix(ns) + ["sysctl", "-q", "-w", f"{key}={old}"]))

    def nft_table(self, ns, family, table, body):
        """Create an nftables table in ns from `body` (the text inside `table ... { }`).
        Returns the CompletedProcess of nft (check returncode: no exception)."""
        script = f"table {family} {table} {{\n{body}\n}}\n"
        res = run(netns_prefix(ns) + ["nft", "-f", "-"], check=False, input=script)
        if res.returncode == 0:
            self._undo.append((f"delete nft table {family} {table}",
                               netns_prefix(ns) + ["nft", "delete", "table", family, table]))
        return res

    def _wait_up(self, ns, dev, timeout=10):
        """Wait until dev in ns is operationally up (a new veth needs a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            info = json.loads(run(["ip", "-n", ns, "-j", "link", "show", "dev", dev]).stdout)
            if info and info[0].get("operstate") == "UP":
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{dev} in {ns} not up after {timeout}s: {info}")
            time.sleep(0.05)

    def teardown(self):
        errors = []
        while self._undo:
            what, argv = self._undo.pop()
            res = run(argv, check=False)
            # A veth is gone once its peer's namespace is; that is not an error.
            if res.returncode != 0 and not what.startswith("delete veth"):
                errors.append(f"{what}: {res.stderr.strip()}")
        left = [ns for ns in self.namespaces
                if ns in run(["ip", "netns", "list"], check=False).stdout.split()]
        if left:
            errors.append(f"namespaces still present: {left}")
        if errors:
            raise AssertionError("network teardown failed:\n" + "\n".join(errors))


# --------------------------------------------------------------------------- traffic

@dataclasses.dataclass
class Conn:
    """One connection the peers completed; c2s/s2c are (size, seed) of tcpeer.payload."""
    index: int
    client_host: str
    client_port: int
    c2s: tuple
    s2c: tuple

    def c2s_bytes(self):
        return tcpeer.payload(*self.c2s)

    def s2c_bytes(self):
        return tcpeer.payload(*self.s2c)


def make_spec(count, rng, max_size=MIB):
    """Payload sizes and seeds for `count` connections: sizes random in 1..max_size, with
    1 and max_size always present in each direction."""
    def sizes():
        s = [1, max_size] + [rng.randint(1, max_size) for _ in range(count - 2)]
        rng.shuffle(s)
        return s[:count]
    return {
        "client": [[size, rng.getrandbits(64)] for size in sizes()],
        "server": [[size, rng.getrandbits(64)] for size in sizes()],
    }


def spec_bytes(spec):
    return sum(size for size, _ in spec["client"]) + sum(size for size, _ in spec["server"])


def _read_line(proc, deadline):
    """Read stdout of proc up to the first newline, without blocking past deadline."""
    buf = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buf += chunk
    return buf.decode(errors="replace")


def _norm_ip(addr):
    return str(ipaddress.ip_address(addr.strip("[]").split("%")[0]))


def run_traffic(tracker, spec, host, port, workdir, server_netns=None, client_netns=None,
                server_bind=None, client_args=(), timeout=120):
    """Run a tcpeer server (bound to server_bind or host) and the spec's clients against
    host:port, each in its namespace if given. Checks that every connection completed and
    that each side received exactly what the other sent. client_args: more tcpeer client
    options. Returns [Conn] in connection order."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / f"spec-{port}.json"
    spec_path.write_text(json.dumps(spec))
    common = ["--port", port, "--spec", spec_path, "--timeout", timeout]
    server = tracker.popen(netns_prefix(server_netns) + [PYTHON, TCPEER, "server", "--host",
                                                         server_bind or host] + common,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = _read_line(server, time.monotonic() + 30)
    if not line or not line.startswith("READY"):
        server.kill()
        _, err = server.communicate()
        raise AssertionError(f"tcpeer server did not start: {line!r}\n{err.decode()}")

    client = tracker.popen(netns_prefix(client_netns) + [PYTHON, TCPEER, "client", "--host",
                                                         host] + common + list(client_args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        c_out, c_err = client.communicate(timeout=timeout + 30)
        s_out, s_err = server.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        client.kill()
        server.kill()
        raise AssertionError("tcpeer did not finish in time")
    if client.returncode != 0 or server.returncode != 0:
        raise AssertionError(f"traffic failed: client exit {client.returncode}, server exit "
                             f"{server.returncode}\nclient stderr:\n{c_err.decode()}\n"
                             f"server stderr:\n{s_err.decode()}")
    clients = json.loads(c_out.decode().strip().splitlines()[-1])
    servers = json.loads(s_out.decode().strip().splitlines()[-1])
    n = len(spec["client"])
    assert len(clients) == n and len(servers) == n, \
        f"{len(clients)} client and {len(servers)} server records for {n} connections"

    # Match by client port; a port used several times (tuple reuse) in connection order.
    by_port = {}
    for rec in sorted(servers, key=lambda r: r["index"]):
        by_port.setdefault(rec["peer_port"], []).append(rec)
    conns = []
    for rec in sorted(clients, key=lambda r: r["index"]):
        pending = by_port.get(rec["local_port"])
        assert pending, f"server never saw client port {rec['local_port']}"
        srv = pending.pop(0)
        # The peers themselves must agree before the agent's dumps are judged.
        assert _norm_ip(srv["peer_host"]) == _norm_ip(rec["local_host"]), (srv, rec)
        assert (srv["recv_len"], srv["recv_sha256"]) == (rec["sent_len"], rec["sent_sha256"]), \
            f"server did not receive what client {rec['index']} sent: {srv} {rec}"
        assert (rec["recv_len"], rec["recv_sha256"]) == (srv["sent_len"], srv["sent_sha256"]), \
            f"client {rec['index']} did not receive what the server sent: {rec} {srv}"
        conns.append(Conn(rec["index"], _norm_ip(rec["local_host"]), rec["local_port"],
                          tuple(spec["client"][rec["index"]]),
                          tuple(spec["server"][srv["index"]])))
    return conns


# --------------------------------------------------------------------------- dumps

_ENDPOINT = r"(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]):(\d{1,5})"
DUMP_NAME_RE = re.compile(rf"^{_ENDPOINT}-{_ENDPOINT}(?:\.(\d+))?\.(c2s|s2c|gaps)$")


@dataclasses.dataclass
class DumpFlow:
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    ordinal: int  # 1 for the first flow of a tuple, 2 for `.2`, ...
    files: dict   # "c2s" / "s2c" / "gaps" -> Path

    def name(self):
        return next(iter(self.files.values())).name


def read_dumps(dump_dir):
    """Parse the file names in dump_dir. Returns ([DumpFlow], [unexpected file names])."""
    flows, unexpected = {}, []
    for path in sorted(Path(dump_dir).iterdir()):
        m = DUMP_NAME_RE.match(path.name)
        if not m or not path.is_file():
            unexpected.append(path.name)
            continue
        cip, cport, sip, sport, ordinal, ext = m.groups()
        key = (_norm_ip(cip), int(cport), _norm_ip(sip), int(sport), int(ordinal or 1))
        flow = flows.setdefault(key, DumpFlow(*key, files={}))
        flow.files[ext] = path
    return list(flows.values()), unexpected


def first_difference(a, b):
    """Offset of the first differing byte of a and b (or the shorter length)."""
    step = 1 << 16
    for off in range(0, min(len(a), len(b)), step):
        if a[off:off + step] != b[off:off + step]:
            for i in range(off, min(off + step, len(a), len(b))):
                if a[i] != b[i]:
                    return i
    return min(len(a), len(b))


def compare_bytes(label, expected, actual):
    """None if equal, else a one-line description of the first difference."""
    if expected == actual:
        return None
    off = first_difference(expected, actual)
    return (f"{label}: expected {len(expected)} bytes, dump has {len(actual)}; first "
            f"difference at offset {off} (expected {expected[off:off + 8].hex() or '<end>'}"
            f", got {actual[off:off + 8].hex() or '<end>'})")


def check_dumps(dump_dir, conns, server_port, client_ip=None, server_ips=None):
    """Every connection dumped exactly once (a reused tuple's later connections as .2, .3
    ... in order), both directions byte-for-byte equal to what was sent, every file mode
    0600, no .gaps file, nothing else in the directory. server_ips: the server addresses a dump name may
    carry (None: any)."""
    flows, unexpected = read_dumps(dump_dir)
    problems = []
    if unexpected:
        problems.append(f"unexpected files in the dump directory: {unexpected[:10]}")
    for f in flows:
        for p in f.files.values():  # every byte of a session, passwords included
            if p.stat().st_mode & 0o777 != 0o600:
                problems.append(f"{p.name}: mode {p.stat().st_mode & 0o777:o}, expected 600")
        if "gaps" in f.files:
            problems.append(f"{f.files['gaps'].name}: "
                            f"{f.files['gaps'].read_text(errors='replace')[:500]!r}")
        missing = {"c2s", "s2c"} - set(f.files)
        if missing:
            problems.append(f"{f.name()}: no {'/'.join(sorted(missing))} file")
        if f.server_port != server_port:
            problems.append(f"{f.name()}: server port {f.server_port}, expected {server_port}")
        if server_ips is not None and f.server_ip not in server_ips:
            problems.append(f"{f.name()}: server address {f.server_ip}, expected one of "
                            f"{sorted(server_ips)}")
    if len(flows) != len(conns):
        problems.append(f"{len(flows)} flows dumped for {len(conns)} connections")

    # Match by client port; a reused tuple's flows (.2, .3 ...) in connection order.
    flows_by_port, conns_by_port = {}, {}
    for f in sorted(flows, key=lambda f: f.ordinal):
        flows_by_port.setdefault(f.client_port, []).append(f)
    for c in sorted(conns, key=lambda c: c.index):
        conns_by_port.setdefault(c.client_port, []).append(c)
    for port, mine in conns_by_port.items():
        dumped = flows_by_port.get(port, [])
        if len(dumped) != len(mine) or [f.ordinal for f in dumped] != \
                list(range(1, len(mine) + 1)):
            problems.append(f"client port {port}: {len(mine)} connection(s), dumped flows "
                            f"{[f.name() for f in dumped]}")
            continue
        for c, f in zip(mine, dumped):
            if client_ip is not None and f.client_ip != _norm_ip(client_ip):
                problems.append(f"{f.name()}: client address {f.client_ip}, expected "
                                f"{client_ip}")
            for ext, expected in (("c2s", c.c2s_bytes()), ("s2c", c.s2c_bytes())):
                if ext in f.files:
                    diff = compare_bytes(f.files[ext].name, expected,
                                         f.files[ext].read_bytes())
                    if diff:
                        problems.append(diff)
    if problems:
        shown = "\n  ".join(problems[:25])
        more = f"\n  ... and {len(problems) - 25} more" if len(problems) > 25 else ""
        raise AssertionError(f"dumps in {dump_dir} do not match the traffic "
                             f"({len(problems)} problems):\n  {shown}{more}")
    return flows


# --------------------------------------------------------------------------- BPF and tc

def bpftool_json(*args):
    res = run(["bpftool", "-j", *args])
    return json.loads(res.stdout) if res.stdout.strip() else []


def our_progs():
    """Loaded BPF programs named like ours: {id: prog json}."""
    return {p["id"]: p for p in bpftool_json("prog", "show") if p.get("name") in OUR_PROGS}


def links_of(prog_ids):
    return [link for link in bpftool_json("link", "show") if link.get("prog_id") in prog_ids]


def prog_holders():
    """{prog_id: {pid, ...}}: the processes holding a BPF program (or a link to it) open,
    from /proc/PID/fdinfo (this bpftool shows no pids)."""
    holders = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target not in ("anon_inode:bpf-prog", "anon_inode:bpf_link"):
                    continue
                info = (proc / "fdinfo" / fd.name).read_text()
                m = re.search(r"^prog_id:\s*(\d+)", info, re.M)
                if m:
                    holders.setdefault(int(m.group(1)), set()).add(int(proc.name))
        except OSError:  # the process or fd went away, or is not ours to read
            continue
    return holders


def tc_filters_ours(dev="lo", parents=("ingress", "egress"), netns=None):
    """Lines of `tc filter show dev DEV PARENT` that name one of our programs."""
    lines = []
    for parent in parents:
        res = run(netns_prefix(netns) + ["tc", "filter", "show", "dev", dev, parent],
                  check=False)
        lines += [f"{parent}: {ln.strip()}" for ln in res.stdout.splitlines()
                  if any(name in ln for name in OUR_PROGS)]
    return lines


def residue(baseline_ids, agent_pid, tc_devs=("lo",)):
    """What of ours is still there: programs named like ours that were not loaded before
    the agent started (ignoring those held by another live process, e.g. someone else's
    agent), links to them, and tc filters naming them on tc_devs."""
    progs = {pid: p for pid, p in our_progs().items() if pid not in baseline_ids}
    if progs:
        holders = prog_holders()
        progs = {pid: p for pid, p in progs.items()
                 if not holders.get(pid, set()) - {agent_pid}}
    found = {}
    if progs:
        found["progs"] = [f"id {p['id']} {p.get('name')}" for p in progs.values()]
        links = links_of(set(progs))
        if links:
            found["links"] = links
    for dev in tc_devs:
        tc = tc_filters_ours(dev)
        if tc:
            found[f"tc filters on {dev}"] = tc
    return found


def wait_no_residue(baseline_ids, agent_pid, timeout=5.0, tc_devs=("lo",)):
    """Poll residue() until it is empty or timeout passes (a killed agent's programs go
    away once the kernel has released its file descriptors). Returns the last residue."""
    deadline = time.monotonic() + timeout
    while True:
        found = residue(baseline_ids, agent_pid, tc_devs)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def remove_our_tc_filters(dev="lo", netns=None):
    """Delete every tc filter naming one of our programs on dev (test cleanup)."""
    for parent in ("ingress", "egress"):
        res = run(netns_prefix(netns) + ["tc", "filter", "show", "dev", dev, parent],
                  check=False)
        for ln in res.stdout.splitlines():
            if not any(name in ln for name in OUR_PROGS):
                continue
            proto = re.search(r"protocol (\S+)", ln)
            pref = re.search(r"pref (\d+)", ln)
            handle = re.search(r"handle (0x[0-9a-fA-F]+)", ln)
            if not (proto and pref and handle):
                continue
            run(netns_prefix(netns) + ["tc", "filter", "del", "dev", dev, parent, "protocol",
                                       proto.group(1), "pref", pref.group(1), "handle",
                                       handle.group(1), "bpf"], check=False)


def has_clsact(dev="lo"):
    return "clsact" in run(["tc", "qdisc", "show", "dev", dev], check=False).stdout


def sha256_file(path, block=4 * MIB):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(block)
            if not b:
                return h.hexdigest()
            h.update(b)
