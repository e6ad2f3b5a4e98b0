"""Fixtures for the pgshadow integration tests (helpers live in pgshadow_harness.py).

Everything a test creates is undone by a finalizer, also when the test fails: agent and
helper processes are killed, namespaces (with their veths, sysctls and nftables tables)
deleted, and tc filters of ours left on lo removed. Teardown order: processes first, then
the network lab (every process fixture depends on `lab`, so it is torn down last).
"""

import os
import random
import shutil

import pytest

import pgshadow_harness as h

REQUIRED_TOOLS = ("ip", "tc", "bpftool", "nft", "setpriv", "sysctl")


def pytest_configure(config):
    config.addinivalue_line("markers", "no_root: runs without root (no BPF, no servers)")


def pytest_collection_modifyitems(config, items):
    """Without root nothing here can run but the no_root tests: report every other test
    as skipped, with the reason."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests need root (BPF, tc, network "
                                   "namespaces); run them as root, e.g. sudo make test")
    for item in items:
        if not item.get_closest_marker("no_root"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def agent_bin():
    path = h.agent_binary()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path} does not exist or is not executable: run `make` first")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"tools the tests need are missing: {', '.join(missing)} "
                    f"(`make deps` installs them)")
    return path


@pytest.fixture(scope="session")
def seed():
    """The run's random seed; set PGSHADOW_TEST_SEED to repeat a run."""
    value = int(os.environ.get("PGSHADOW_TEST_SEED") or random.SystemRandom().getrandbits(32))
    print(f"PGSHADOW_TEST_SEED={value}")
    return value


@pytest.fixture
def rng(seed, request):
    """A per-test random generator derived from the run's seed and the test's name."""
    return random.Random(f"{seed}/{request.node.name}")


@pytest.fixture
def lab():
    """Network namespaces and veths for one test; see pgshadow_harness.NetworkLab."""
    net = h.NetworkLab()
    yield net
    net.teardown()


@pytest.fixture
def procs(lab):
    """Helper processes (tcpeer) of one test, killed at teardown."""
    tracker = h.ProcessTracker()
    yield tracker
    tracker.kill_all()


@pytest.fixture
def start_agent(agent_bin, tmp_path, lab):
    """start_agent(port, interfaces, dump=True, attach=None, netns=None, ready=True) ->
    a running Agent (ready unless ready=False). Every agent is killed at teardown and its
    stderr printed (pytest shows it when the test failed)."""
    agents = []

    def start(port, interfaces=("lo",), dump=True, attach=None, netns=None, ready=True,
              extra=()):
        n = len(agents)
        agent = h.Agent(agent_bin, port, interfaces,
                        dump_dir=tmp_path / f"dumps{n}" if dump else None, attach=attach,
                        netns=netns, extra=extra, logdir=tmp_path, name=f"agent{n}")
        agents.append(agent)
        agent.start()
        if ready:
            agent.wait_ready()
        return agent

    yield start
    for agent in agents:
        agent.kill()
        print(f"--- {' '.join(agent.argv)} (exit {agent.proc.returncode}) stderr:\n"
              f"{agent.stderr()}")


@pytest.fixture
def lo_tc_cleanup():
    """For tests that use --attach tc on lo: remove tc filters of ours left on lo (a
    SIGKILLed tc agent leaves its filter behind), and the clsact qdisc if the test added
    it and nothing else uses it."""
    had_clsact = h.has_clsact("lo")
    yield
    h.remove_our_tc_filters("lo")
    if not had_clsact and h.has_clsact("lo"):
        others = h.run(["tc", "filter", "show", "dev", "lo", "ingress"], check=False).stdout
        others += h.run(["tc", "filter", "show", "dev", "lo", "egress"], check=False).stdout
        if not others.strip():
            h.run(["tc", "qdisc", "del", "dev", "lo", "clsact"], check=False)
