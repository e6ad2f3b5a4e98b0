"""Mirror answers are timed when they reach the host, not when the replay reads them.

A replay thread that wakes late (a CPU held by the source's backends, a stopped or
descheduled agent) must not make the mirror look slower: the socket filter on each mirror
connection (mirror_rx) stores the kernel's receive time of the answer, and the mirror's
latency ends there. Real clusters, the real agent, stopped with SIGSTOP while its
mirror's answer arrives.
"""

import os
import signal
import time

import psycopg2

import pgshadow_harness as h
import test_mirror as tm
from test_mirror import (  # noqa: F401 - pytest fixtures are used by name
    mirror_agent, mirror_agent_bin, pair)

SLEEP_S = 0.3  # what the replayed statement takes on the mirror
STOP_S = 1.5  # how long the agent stays stopped after the mirror began it


def mirror_running(mir, db, text):
    """True while a backend of the mirror (other than ours) runs a query containing text."""
    conn = psycopg2.connect(mir.conninfo(db))
    try:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                    "AND query LIKE %s AND pid <> pg_backend_pid()", (f"%{text}%",))
        return cur.fetchone()[0] > 0
    finally:
        conn.close()


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_answer_timed_by_the_kernel_while_the_agent_is_stopped(pair, mirror_agent):
    """The mirror runs pg_sleep(0.3); the agent is stopped (every thread) from before the
    mirror answers until 1.5 s later. The mirror's latency for that statement is ~0.3 s
    (the kernel's receive time), not the ~1.5 s after which the replay read the answer;
    the answers are counted as kernel-timed. Killed, the agent leaves no filter behind."""
    src, mir = pair
    db = "app"
    for pg in (src, mir):
        pg.createdb(db)
    baseline = set(h.our_progs())
    agent = mirror_agent(src, mir)
    assert any(p.get("name") == "mirror_rx" for i, p in h.our_progs().items()
               if i not in baseline), "no mirror_rx program loaded by a mirroring agent"
    marker = "pgshadow_clock_marker"
    conn = psycopg2.connect(src.conninfo(db))
    conn.autocommit = True
    try:
        conn.cursor().execute(f"SELECT pg_sleep({SLEEP_S}) AS {marker}")
        # the replay starts it on the mirror once the source has answered
        wait_until(lambda: mirror_running(mir, db, marker), 15, "the mirror to run it")
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            # the mirror answers while the agent cannot read
            wait_until(lambda: not mirror_running(mir, db, marker), 10, "the mirror's answer")
            time.sleep(max(0.0, STOP_S - (time.monotonic() - stopped)))
        finally:
            os.kill(agent.pid, signal.SIGCONT)
    finally:
        conn.close()
    m = tm.wait_settled(agent)
    _, total, count = m.histogram("mirror_latency_seconds", database=db)
    assert count == 1, f"one statement mirrored in {db}, metrics say {count}"
    assert SLEEP_S * 0.9 < total < SLEEP_S + 0.4, (
        f"the mirror's latency for pg_sleep({SLEEP_S}) is {total:.3f}s with the agent "
        f"stopped for {STOP_S}s while the answer arrived: it must be the kernel's receive "
        f"time, not the replay's read")
    kernel = m.get("mirror_replay_answers_timed_total", clock="kernel")
    read = m.get("mirror_replay_answers_timed_total", clock="read")
    assert kernel >= 1 and read == 0, f"answers timed: kernel {kernel}, read {read}"
    agent.kill()
    left = h.wait_no_residue(baseline, -1, timeout=10)
    assert not left, f"a killed agent left BPF programs behind: {left}"
