"""Integration tests of the capture path: the real agent, real sockets, real interfaces.

The agent must dump every connection of the port, both directions, byte for byte; never
lose a byte silently; leave nothing attached when it is killed; refuse bad input with
exit 2 and one line. Needs root (conftest.py skips everything otherwise).

Namespace tests never touch the root namespace's network: this kind of machine has
192.0.2.0/24 on eth0 with its gateway at 192.0.2.1, so a 192.0.2.1/28 on a root-namespace
veth would hijack the default route. The "host" side of each topology is therefore a
namespace of its own (the server or the forwarding runs there, and the agent runs there
with `ip netns exec`): to the agent it is the host.
"""

import re
import signal
import time

import pytest

import pg_harness as pgh
import pgshadow_harness as h

N_CONNS = 40  # concurrent connections in the byte-exact tests
MIB = h.MIB


def assert_ready(agent, interfaces, mode="tcx"):
    assert agent.ready_port == agent.port, agent.stderr()
    assert sorted(agent.ready_interfaces) == sorted(interfaces), \
        f"ready line names {agent.ready_interfaces}, expected {interfaces}"
    assert agent.ready_mode == mode, f"ready line says ({agent.ready_mode}), expected ({mode})"


def assert_links(baseline, count, what):
    """The agent started after `baseline` holds `count` tcx links to its programs."""
    mine = set(h.our_progs()) - baseline
    links = h.links_of(mine)
    assert len(links) == count, f"expected {count} tcx links ({what}), found {links}"


# --------------------------------------------------------------------------- 1. loopback

@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_loopback_streams_byte_exact(host, start_agent, procs, rng, tmp_path):
    """40 concurrent connections on lo, 1 B..1 MiB each way, dumped byte for byte."""
    port = h.free_port(rng=rng)
    agent = start_agent(port, ["lo"])
    assert_ready(agent, ["lo"])
    spec = h.make_spec(N_CONNS, rng)
    conns = h.run_traffic(procs, spec, host, port, tmp_path / "traffic")

    result = agent.stop()
    h.assert_clean_stop(result, min_bytes=h.spec_bytes(spec))
    h.check_dumps(agent.dump_dir, conns, port, client_ip=host, server_ips={host})


# --------------------------------------------------------------------------- 2. veth

def test_veth_namespace_streams_byte_exact(lab, start_agent, procs, rng, tmp_path):
    """Clients in a namespace reach the server over a veth; the agent, attached only to
    the host-side veth (ingress + egress), dumps every connection byte for byte."""
    host_ns, cli_ns = lab.netns("host"), lab.netns("cli")
    host_if, _ = lab.veth(host_ns, "h", "192.0.2.1/28", cli_ns, "c", "192.0.2.2/28")
    port = h.free_port(rng=rng)

    baseline = set(h.our_progs())
    agent = start_agent(port, [host_if], netns=host_ns)
    assert_ready(agent, [host_if])
    assert_links(baseline, 2, "ingress + egress on the veth")
    spec = h.make_spec(N_CONNS, rng)
    conns = h.run_traffic(procs, spec, "192.0.2.1", port, tmp_path / "traffic",
                          server_netns=host_ns, client_netns=cli_ns)

    result = agent.stop()
    h.assert_clean_stop(result, min_bytes=h.spec_bytes(spec))
    h.check_dumps(agent.dump_dir, conns, port, client_ip="192.0.2.2",
                  server_ips={"192.0.2.1"})


def test_veth_outgoing_connections_not_captured(lab, start_agent, procs, rng, tmp_path):
    """Connections this host opens to a remote server on the port (the agent's own mirror
    or source connections, say) are not captured on a non-loopback interface."""
    host_ns, remote_ns = lab.netns("host"), lab.netns("rem")
    host_if, _ = lab.veth(host_ns, "h", "192.0.2.1/28", remote_ns, "r", "192.0.2.2/28")
    port = h.free_port(rng=rng)

    agent = start_agent(port, [host_if], netns=host_ns)
    assert_ready(agent, [host_if])
    spec = h.make_spec(4, rng, max_size=64 * 1024)
    h.run_traffic(procs, spec, "192.0.2.2", port, tmp_path / "traffic",
                  server_netns=remote_ns, client_netns=host_ns)

    result = agent.stop()
    h.assert_clean_stop(result)
    assert result.stats["flows"] == 0, f"outgoing connections were tracked: {result.stats}"
    # Not vacuous: the program saw them (the counter is not part of the CLI contract).
    if "local_client" in result.stats:
        assert result.stats["local_client"] > 0, f"the packets were never seen: {result.stats}"
    dumped = sorted(p.name for p in agent.dump_dir.iterdir())
    assert not dumped, f"outgoing connections were dumped: {dumped}"


# --------------------------------------------------------------------------- 3. DNAT

def test_dnat_two_interfaces_dumped_once(lab, start_agent, procs, rng, tmp_path):
    """CLI --vethA-- host (DNAT 192.0.2.1 -> 192.0.2.18) --vethB-- SRV. The agent watches
    both host-side veths, so every connection is seen twice under two server addresses,
    yet must be dumped exactly once, byte for byte."""
    host_ns, cli_ns, srv_ns = lab.netns("host"), lab.netns("cli"), lab.netns("srv")
    if_a, _ = lab.veth(host_ns, "ha", "192.0.2.1/28", cli_ns, "ca", "192.0.2.2/28")
    if_b, _ = lab.veth(host_ns, "hb", "192.0.2.17/28", srv_ns, "sb", "192.0.2.18/28")
    lab.ip(cli_ns, "route", "add", "default", "via", "192.0.2.1")
    lab.ip(srv_ns, "route", "add", "default", "via", "192.0.2.17")
    lab.sysctl(host_ns, "net.ipv4.ip_forward", "1")
    port = h.free_port(rng=rng)

    table = f"pgshadow_test_{lab.run_id}"
    res = lab.nft_table(host_ns, "ip", table,
                        "  chain prerouting {\n"
                        "    type nat hook prerouting priority dstnat; policy accept;\n"
                        f"    ip daddr 192.0.2.1 tcp dport {port} dnat to 192.0.2.18\n"
                        "  }")
    if res.returncode != 0:
        pytest.fail(f"nft could not create the nat chain (kernel without nf_tables nat?): "
                    f"{res.stderr.strip()}")

    baseline = set(h.our_progs())
    # The ring holds all of this unpaced traffic seen twice (~85 MB), so that the dump's
    # exactness, the subject here, does not hang on the reader outrunning the senders
    # while it writes dumps (under ASan it once fell 136 records behind a 64 MiB ring);
    # what a ring rides out is tests/bench/capture.py's subject.
    agent = start_agent(port, [if_a, if_b], netns=host_ns, extra=["--ringbuf-mb", "256"])
    assert_ready(agent, [if_a, if_b])
    assert_links(baseline, 4, "ingress + egress on each veth")
    spec = h.make_spec(N_CONNS, rng)
    conns = h.run_traffic(procs, spec, "192.0.2.1", port, tmp_path / "traffic",
                          server_netns=srv_ns, client_netns=cli_ns,
                          server_bind="192.0.2.18")

    result = agent.stop()
    total = h.spec_bytes(spec)
    stats = h.assert_clean_stop(result, min_bytes=total)
    # Without the second view the dedup under test would pass vacuously.
    assert stats["bytes"] >= 2 * total, (
        f"the agent counted {stats['bytes']} payload bytes for {total} sent: the forwarded "
        f"connections were not captured on both {if_a} and {if_b}: {stats}")
    h.check_dumps(agent.dump_dir, conns, port, client_ip="192.0.2.2",
                  server_ips={"192.0.2.1", "192.0.2.18"})


# --------------------------------------------------------------------------- tuple reuse

def _reuse_tuple(start_agent, procs, rng, tmp_path, spec, pause_ms, netns=None):
    """Connections one after the other from one client port (the same 4-tuple) must be
    dumped as <client>-<server>.c2s, .2.c2s, .3.c2s ..., each byte-exact."""
    port = h.free_port(rng=rng)
    client_port = h.free_port(hosts=("127.0.0.1",), rng=rng)
    agent = start_agent(port, ["lo"], netns=netns)
    assert_ready(agent, ["lo"])
    conns = h.run_traffic(procs, spec, "127.0.0.1", port, tmp_path / "traffic",
                          server_netns=netns, client_netns=netns,
                          client_args=["--sequential", "--pause-ms", pause_ms,
                                       "--local-port", client_port])
    assert {c.client_port for c in conns} == {client_port}

    result = agent.stop()
    h.assert_clean_stop(result, min_bytes=h.spec_bytes(spec))
    flows = h.check_dumps(agent.dump_dir, conns, port, client_ip="127.0.0.1",
                          server_ips={"127.0.0.1"})
    assert sorted(f.ordinal for f in flows) == list(range(1, len(conns) + 1))


def test_reused_tuple_dumped_as_numbered_flows(start_agent, procs, rng, tmp_path):
    """Plain tuple reuse: the server holds the old tuple in TIME_WAIT and, TCP timestamps
    being on and 20 ms having passed, accepts the new SYN at once."""
    _reuse_tuple(start_agent, procs, rng, tmp_path, h.make_spec(3, rng, max_size=256 * 1024),
                 pause_ms=20)


def test_reused_tuple_after_time_wait_rst(lab, start_agent, procs, rng, tmp_path):
    """Tuple reuse through TIME_WAIT assassination, as with clients without TCP timestamps
    (Windows' default): the new SYN's ISN is below the old connection's last sequence
    number (1 MiB was sent within a few ms, the ISN clock moves 1 per 64 ns), so the server
    in TIME_WAIT answers it with an ACK of the old connection, the client resets that
    (RST with the old connection's sequence number), and retransmits the same SYN. The RST
    belongs to the old connection: the new one must still be dumped in full.
    Runs on the lo of a namespace of its own, where tcp_timestamps can be off."""
    ns = lab.netns("reuse")
    lab.sysctl(ns, "net.ipv4.tcp_timestamps", "0")
    spec = h.make_spec(3, rng, max_size=64 * 1024)
    spec["client"] = [[MIB, rng.getrandbits(64)] for _ in range(3)]
    _reuse_tuple(start_agent, procs, rng, tmp_path, spec, pause_ms=0, netns=ns)


# --------------------------------------------------------------------------- 4, 5. stop

def _start_and_check_attached(start_agent, rng):
    baseline = set(h.our_progs())
    port = h.free_port(rng=rng)
    agent = start_agent(port, ["lo"], dump=False)
    assert_ready(agent, ["lo"])
    assert set(h.our_progs()) - baseline, \
        f"the agent is ready but no program named {h.OUR_PROGS} is loaded"
    assert_links(baseline, 1, "lo: ingress only")
    return agent, baseline


def test_sigkill_leaves_nothing_attached(start_agent, rng):
    agent, baseline = _start_and_check_attached(start_agent, rng)
    agent.proc.send_signal(signal.SIGKILL)
    assert agent.wait(10) == -signal.SIGKILL
    left = h.wait_no_residue(baseline, agent.pid, timeout=5)
    assert not left, f"still attached 5 s after SIGKILL: {left}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_stop_leaves_nothing_attached(sig, start_agent, rng):
    agent, baseline = _start_and_check_attached(start_agent, rng)
    result = agent.stop(sig, timeout=30)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    assert result.stats is not None, f"no stats line on stderr:\n{result.stderr}"
    left = h.wait_no_residue(baseline, agent.pid, timeout=5)
    assert not left, f"still attached after a graceful stop: {left}"


# --------------------------------------------------------------------------- 6. errors

def _one_line(err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected a one-line message on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("pgshadow:"), f"message does not start with 'pgshadow:': {err}"
    return lines[0]


def test_error_nonexistent_interface(agent_bin, rng):
    ifname = f"pgtnoif{rng.randrange(1 << 24):06x}"
    baseline = set(h.our_progs())
    # its own metrics port and no admin socket: only the interface may be wrong
    metrics = f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',), rng=rng)}"
    rc, _, err = h.run_agent_to_exit(agent_bin, ["--port", h.free_port(rng=rng),
                                                 "--interface", ifname,
                                                 "--metrics-listen", metrics,
                                                 "--admin-socket-dir", ""])
    assert rc == 2, f"exit {rc}, expected 2\n{err}"
    assert ifname in _one_line(err), f"the message does not name {ifname}: {err}"
    left = h.wait_no_residue(baseline, -1, timeout=5)
    assert not left, f"left behind by a failed start: {left}"


def test_error_unprivileged(agent_bin, rng):
    rc, _, err = h.run_agent_to_exit(agent_bin, ["--port", h.free_port(rng=rng),
                                                 "--interface", "lo"], user="nobody")
    assert rc == 2, f"exit {rc} as user nobody, expected 2\n{err}"
    line = _one_line(err)
    # said first, before the admin socket in /run or the program load can fail for it
    assert line.startswith("pgshadow: not privileged:") and "CAP_BPF" in line and \
        "root" in line, f"the message does not say which privileges are missing: {line}"


@pytest.mark.parametrize("port", ["0", "70000", "abc", "-1", ""])
def test_error_bad_port(agent_bin, port):
    rc, _, err = h.run_agent_to_exit(agent_bin, ["--port", port, "--interface", "lo"])
    assert rc == 2, f"--port {port!r}: exit {rc}, expected 2\n{err}"
    _one_line(err)


# --------------------------------------------------------------------------- 7. tc

def test_tc_attach_loopback_bytes(start_agent, procs, rng, tmp_path, lo_tc_cleanup):
    """--attach tc: a small byte-exact loopback run, then no filter of ours is left."""
    baseline = set(h.our_progs())
    port = h.free_port(rng=rng)
    agent = start_agent(port, ["lo"], attach="tc")
    assert_ready(agent, ["lo"], mode="tc")
    assert h.tc_filters_ours("lo"), "the tc agent is ready but lo has no filter of ours"
    spec = h.make_spec(8, rng, max_size=64 * 1024)
    conns = h.run_traffic(procs, spec, "127.0.0.1", port, tmp_path / "traffic")

    result = agent.stop()
    h.assert_clean_stop(result, min_bytes=h.spec_bytes(spec))
    h.check_dumps(agent.dump_dir, conns, port, client_ip="127.0.0.1",
                  server_ips={"127.0.0.1"})
    left = h.wait_no_residue(baseline, agent.pid, timeout=5)
    assert not left, f"left behind by a graceful tc agent: {left}"


def test_tc_attach_stale_filter_cleanup(start_agent, procs, rng, tmp_path, lo_tc_cleanup):
    """A SIGKILLed tc agent leaves its filter; the next tc agent replaces it (one filter of
    ours, its own), captures, and leaves nothing after a graceful exit."""
    baseline = set(h.our_progs())
    port = h.free_port(rng=rng)
    first = start_agent(port, ["lo"], attach="tc", dump=False)
    assert_ready(first, ["lo"], mode="tc")
    first.proc.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    stale = h.tc_filters_ours("lo")
    print(f"after SIGKILL (legacy tc filters outlive the process): {stale}")

    before_second = set(h.our_progs())
    second = start_agent(port, ["lo"], attach="tc")
    assert_ready(second, ["lo"], mode="tc")
    filters = h.tc_filters_ours("lo")
    assert len(filters) == 1, f"expected exactly one filter of ours on lo, found {filters}"
    new_ids = set(h.our_progs()) - before_second
    assert any(f" id {pid} " in filters[0] for pid in new_ids), (
        f"the filter on lo is not the new agent's (its programs: {sorted(new_ids)}): "
        f"{filters}")

    spec = h.make_spec(4, rng, max_size=64 * 1024)
    conns = h.run_traffic(procs, spec, "127.0.0.1", port, tmp_path / "traffic")
    result = second.stop()
    h.assert_clean_stop(result, min_bytes=h.spec_bytes(spec))
    h.check_dumps(second.dump_dir, conns, port, client_ip="127.0.0.1",
                  server_ips={"127.0.0.1"})
    assert not h.tc_filters_ours("lo"), \
        f"filters of ours on lo after a graceful exit: {h.tc_filters_ours('lo')}"
    left = h.wait_no_residue(baseline, second.pid, timeout=5)
    assert not left, f"left behind: {left}"


def test_cap_hit_said_once(start_agent, rng):
    """--max-flows 2 and 6 connections open at once: the refused ones are counted
    (mirror_capture_limit_hits_total{limit="flows"}) and the agent says so in one line,
    once, naming the key to raise."""
    import socket
    port = h.free_port(rng=rng)
    addr = f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',), rng=rng)}"
    agent = start_agent(port, ["lo"], dump=False,
                        extra=["--max-flows", "2", "--metrics-listen", addr])
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", port))
        srv.listen(16)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        peers = [srv.accept()[0] for _ in clients]
        for round_ in range(3):
            for c in clients:
                c.sendall(b"x")
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while True:
            text = pgh.scrape(addr)[0]
            m = re.search(r'mirror_capture_limit_hits_total\{limit="flows"\} (\d+)', text)
            lines = [l for l in agent.stderr().splitlines() if "limit flows reached" in l]
            if (m and int(m.group(1)) >= 4 and lines) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        for s in clients + peers:
            s.close()
    assert m and int(m.group(1)) >= 4, text
    assert len(lines) == 1 and "max_flows" in lines[0] and lines[0].startswith(
        "pgshadow: WARN: limit flows reached:"), agent.stderr()


def test_idle_agent_sleeps_and_wakes_on_the_first_packet(start_agent, rng):
    """No traffic: the agent's reader sleeps instead of polling every 2 ms (CPU over 5 s
    idle, read from /proc/PID/stat, at most 2 ticks of 10 ms: it was 6); after a quiet
    spell the first packet wakes it at once (the BPF program forces a wakeup while the
    reader sleeps idle): three times, a byte sent after 1.5 s of silence shows in
    mirror_capture_bytes_total within 200 ms, where the idle sleep lasts 1 s."""
    import socket
    port = h.free_port(rng=rng)
    addr = f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',), rng=rng)}"
    agent = start_agent(port, ["lo"], dump=False, extra=["--metrics-listen", addr])

    def ticks():
        with open(f"/proc/{agent.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    def captured():
        m = re.search(r"^mirror_capture_bytes_total (\d+)", pgh.scrape(addr)[0], re.M)
        return int(m.group(1))

    time.sleep(1)
    before = ticks()
    time.sleep(5)
    idle_ticks = ticks() - before
    assert idle_ticks <= 2, f"{idle_ticks} CPU ticks in 5 s of silence"
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", port))
        srv.listen(4)
        client = socket.create_connection(("127.0.0.1", port))
        peer = srv.accept()[0]
        delays = []
        for _ in range(3):
            seen = captured()
            time.sleep(1.5)
            sent = time.monotonic()
            client.sendall(b"x")
            while captured() == seen and time.monotonic() - sent < 3:
                time.sleep(0.005)
            delays.append(time.monotonic() - sent)
        client.close()
        peer.close()
    assert max(delays) < 0.2, f"first byte after silence seen after {delays} s"
