"""state_file: the readiness window survives a restart (README "Migration readiness").

One source/mirror pair, agents run one after another with the same --state-file:
1. 40 INSERTs, SIGINT: the file exists, mode 0600, a pgshadow state file;
2. a new agent says it restored the window and its /readiness?format=json continues it:
   total and mirrored include the 40 (then 10 more make 50), runtime_hours at least the
   first run's;
3. RESET MIRROR STATS on the console, SIGINT: the next agent restores an empty window;
4. a damaged file is set aside as FILE.refused-<time> with the reason said, and the
   window starts empty; so is the file of another mirror (another conninfo);
5. --state-file without --mirror is refused at start (exit 2).
"""

import re
import signal
import time

import psycopg2

import pgshadow_harness as h
import test_mirror as tm
from test_mirror import mirror_agent, mirror_agent_bin, pair  # noqa: F401 fixtures
from test_readiness import console_psql, readiness_json

DB = "kept"


def inserts(src, first, n):
    conn = psycopg2.connect(src.conninfo(DB))
    conn.autocommit = True
    try:
        cur = conn.cursor()
        for i in range(first, first + n):
            cur.execute("INSERT INTO t VALUES (%s)", (i,))
    finally:
        conn.close()


def stop(agent):
    tm.wait_settled(agent)
    result = agent.stop(signal.SIGINT)
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_state_file(pair, mirror_agent, agent_bin, tmp_path):  # noqa: F811
    src, mir = pair
    for pg in pair:
        pg.createdb(DB)
        pg.psql("CREATE TABLE t (id int PRIMARY KEY)", db=DB)
    state = tmp_path / "state"
    flags = ["--state-file", state]

    a1 = mirror_agent(src, mir, extra=flags)
    inserts(src, 0, 40)
    tm.wait_settled(a1)
    first = readiness_json(a1)["metrics"]
    assert first["total_requests"] == 40 and first["mirrored"] == 40, first
    stop(a1)
    assert state.stat().st_mode & 0o777 == 0o600
    assert state.read_text().startswith("pgshadow-state 1\nversion ")

    a2 = mirror_agent(src, mir, extra=flags)
    assert re.search(rf"readiness window restored from {re.escape(str(state))}: \d+ s "
                     r"observed, 40 requests, 40 mirrored", a2.stderr()), a2.stderr()
    inserts(src, 40, 10)
    tm.wait_settled(a2)
    again = readiness_json(a2)["metrics"]
    assert again["total_requests"] == 50 and again["mirrored"] == 50, again
    assert again["runtime_hours"] >= first["runtime_hours"], (first, again)
    assert again["uptime_hours"] < again["runtime_hours"], \
        "uptime is this run's, runtime the window's"

    res = console_psql(a2, "RESET MIRROR STATS")
    assert res.returncode == 0, res.stderr
    stop(a2)
    a3 = mirror_agent(src, mir, extra=flags)
    assert re.search(r"restored from .*: \d+ s observed, 0 requests, 0 mirrored", a3.stderr()), \
        a3.stderr()
    stop(a3)

    damaged = state.read_text().replace("total 0", "total 7")  # the checksum breaks
    state.write_text(damaged)
    a4 = mirror_agent(src, mir, extra=flags)
    m = re.search(r"state_file (\S+): checksum mismatch .*; set aside as (\S+), a new "
                  r"readiness window starts", a4.stderr())
    assert m, a4.stderr()
    aside = list(tmp_path.glob("state.refused-*"))
    assert [p.read_text() for p in aside] == [damaged] and m.group(2) == str(aside[0]), \
        f"set aside: {aside}"
    assert readiness_json(a4)["metrics"]["total_requests"] == 0
    stop(a4)

    # the same file, another mirror conninfo: set aside too
    other = mirror_agent(src, mir, extra=flags, mirror_host="localhost")
    assert re.search(r"it judged another mirror .*; set aside as", other.stderr()), \
        other.stderr()
    stop(other)

    rc, _, err = h.run_agent_to_exit(agent_bin, ["--port", src.port, "--interface", "lo",
                                                 "--state-file", state,
                                                 "--admin-socket-dir", "",
                                                 "--metrics-listen", "127.0.0.1:1"])
    assert rc == 2 and "needs --mirror" in err, f"exit {rc}: {err}"
