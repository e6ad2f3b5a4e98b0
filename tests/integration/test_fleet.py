"""A fleet: three source clusters, an agent on each (three "hosts"), one mirror cluster,
one Prometheus scraping the three agents with deploy/'s configuration and rules.

Readiness thresholds are lowered (runtime 0 h, 20 requests, a streak of 20) so that a
few seconds of traffic make each host READY. Then:
- the fleet recording rules: fleet:mirror_readiness_ready:min is 1, 3 hosts of 3 READY,
  the per-host and fleet-wide mirrored fractions are 1;
- `pgshadow readiness --prometheus URL --hosts H1,H2,H3` prints one READY line per host
  and "Fleet: READY (3 of 3 hosts READY)", exit 0;
- one host more in --hosts than Prometheus knows: NOT READY (absent), exit 1;
- one agent stopped: once Prometheus's scrape fails, that host is NOT READY (down or
  absent), exit 1; the rules now count 2 hosts READY;
- Prometheus stopped: exit 2 (cannot tell).
"""

import subprocess
import threading
import time

import psycopg2

import pg_harness as pgh
import pgshadow_harness as h
from test_mirror import mirror_agent, mirror_agent_bin  # noqa: F401 fixtures
from test_prometheus_live import Prometheus, write_config

HOSTS = 3
READY_FLAGS = ["--mirror-min-runtime-hours", "0", "--mirror-min-requests", "20",
               "--mirror-consecutive-success", "20"]
READY_TIMEOUT = 60


def readiness_cli(agent_bin, *args):
    r = subprocess.run([str(agent_bin), "readiness", *map(str, args)], capture_output=True,
                       text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def scalar(prom, expr):
    r = prom.query(expr)["data"]["result"]
    return float(r[0]["value"][1]) if r else None


def traffic(src, db, stop):
    conn = psycopg2.connect(src.conninfo(db))
    conn.autocommit = True
    cur = conn.cursor()
    i = 0
    while not stop.is_set():
        i += 1
        cur.execute("INSERT INTO t VALUES (%s)", (i,))
        cur.execute("SELECT count(*) FROM t")
        time.sleep(0.02)
    conn.close()


def test_fleet(mirror_agent, agent_bin, tmp_path, rng):  # noqa: F811
    with pgh.pg_server(name="mirror") as mir, pgh.pg_server(name="db1") as s1, \
            pgh.pg_server(name="db2") as s2, pgh.pg_server(name="db3") as s3:
        sources = [s1, s2, s3]
        agents = []
        for n, src in enumerate(sources, 1):
            db = f"app{n}"
            for pg in (src, mir):
                pg.createdb(db)
                pg.psql("CREATE TABLE t (id int PRIMARY KEY)", db=db)
            agents.append(mirror_agent(src, mir, extra=READY_FLAGS))
        hosts = [a.metrics_addr for a in agents]
        stop = threading.Event()
        workers = [threading.Thread(target=traffic, args=(src, f"app{n}", stop), daemon=True)
                   for n, src in enumerate(sources, 1)]
        for w in workers:
            w.start()
        prom = Prometheus(write_config(tmp_path, hosts), tmp_path,
                          h.free_port(hosts=("127.0.0.1",), rng=rng))
        url = f"http://{prom.addr}"
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                rc, out, err = readiness_cli(agent_bin, "--prometheus", url,
                                             "--hosts", ",".join(hosts))
                if rc == 0 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert rc == 0, f"exit {rc}\n{out}{err}"
            for host in hosts:
                assert f"{host}  READY\n" in out, out
            assert out.endswith(f"Fleet: READY ({HOSTS} of {HOSTS} hosts READY)\n"), out

            time.sleep(3)  # the rules' next evaluations
            assert scalar(prom, "fleet:mirror_readiness_ready:min") == 1
            assert scalar(prom, "fleet:mirror_readiness_hosts_ready:count") == HOSTS
            assert scalar(prom, "fleet:mirror_readiness_hosts:count") == HOSTS
            assert scalar(prom, "fleet:mirror_requests_mirrored:ratio_rate5m") == 1
            per_host = prom.query("instance:mirror_requests_mirrored:ratio_rate5m")
            assert sorted(r["metric"]["instance"] for r in per_host["data"]["result"]) == \
                sorted(hosts) and all(float(r["value"][1]) == 1
                                      for r in per_host["data"]["result"]), per_host

            missing = "127.0.0.1:1"
            rc, out, err = readiness_cli(agent_bin, "--prometheus", url,
                                         "--hosts", ",".join(hosts + [missing]))
            assert rc == 1 and f"{missing}  NOT READY (absent" in out and \
                f"Fleet: NOT READY ({HOSTS} of {HOSTS + 1} hosts READY)" in out, \
                f"exit {rc}\n{out}{err}"

            agents[2].kill()
            deadline = time.monotonic() + 20
            while True:
                rc, out, err = readiness_cli(agent_bin, "--prometheus", url,
                                             "--hosts", ",".join(hosts))
                if rc == 1 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert rc == 1 and f"{hosts[2]}  NOT READY (" in out, f"exit {rc}\n{out}{err}"
            assert f"Fleet: NOT READY ({HOSTS - 1} of {HOSTS} hosts READY)" in out, out
            time.sleep(3)
            assert scalar(prom, "fleet:mirror_readiness_hosts_ready:count") == HOSTS - 1
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=10)
            prom.stop()
        rc, out, err = readiness_cli(agent_bin, "--prometheus", url, "--hosts", hosts[0])
        assert rc == 2 and "cannot reach Prometheus" in err, f"exit {rc}\n{out}{err}"
