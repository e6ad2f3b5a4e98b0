"""deploy/'s rules and dashboard evaluated by a real Prometheus scraping real agents.

Two agents (a fleet of two hosts, as Prometheus sees them: two targets) capture one real
source cluster and mirror it to a real mirror cluster. Traffic: reads, writes, a query
error, a transaction rolled back, and a table that differs on the mirror (mismatches).
Debian's prometheus runs on loopback with deploy/prometheus/prometheus.yml — rule files
and scrape target rewritten to this run's paths and agents, intervals shortened to 1 s.
Then, through Prometheus's HTTP API:

- both targets are up;
- every query of the Grafana dashboard (its variables substituted as Grafana would: the
  host variable's values from label_values(mirror_build_info, instance), as its own
  query says), every recording rule and every alert expression is accepted (status
  success);
- every metric any of them reads is served by the agents (its family in /metrics): an
  agent metric renamed, or a rule or panel reading a name the agent never had, fails;
- every one of them returns data, unless a metric it reads has no series at all yet
  because its event never happened in this run (a counter with labels, like
  mirror_units_aborted_total{reason}); those are listed with the reason, and the core
  ones (requests, latency quantiles, mirrored fraction, readiness) are required;
- every recording rule has produced series, and no alert fires (a healthy mirror).
"""

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg2
import pytest
import yaml

import pg_harness as pgh
import pgshadow_harness as h
from test_grafana_dashboard import (all_targets, load_dashboard, metric_refs,
                                    SUBSTITUTIONS)
from test_mirror import mirror_agent, mirror_agent_bin, pair  # noqa: F401 fixtures

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
DB = "app"
UP_TIMEOUT = 30          # seconds for both targets to be up
EVAL_SECONDS = 12        # scrapes and rule evaluations before the queries
QUERY_TIMEOUT = 10
# Series Prometheus itself writes for every target.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# Panels and rules that must return data in this run whatever else is empty.
CORE = ["instance_database:mirror_database_requests:rate5m",
        "instance_database:mirror_requests_mirrored:ratio_rate5m",
        "histogram_quantile(0.99, sum by (le, instance, database) "
        "(rate(mirror_source_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, instance, database) "
        "(rate(mirror_latency_seconds_bucket",
        "mirror_readiness_confidence_score"]


def prometheus_bin():
    path = shutil.which("prometheus")
    assert path, "prometheus not found on PATH (`make deps` installs it)"
    return path


class Prometheus:
    """Debian's prometheus on 127.0.0.1:port with config, data in tmp; stop() kills it."""

    def __init__(self, config, tmp, port):
        self.addr = f"127.0.0.1:{port}"
        self.log = open(tmp / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [prometheus_bin(), f"--config.file={config}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address={self.addr}",
             "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path, **params):
        url = f"http://{self.addr}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=QUERY_TIMEOUT) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:  # 400/422: a bad query, with its error
            return json.load(e)

    def query(self, expr):
        return self.api("query", query=expr)

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


def write_config(tmp, targets):
    """deploy/'s prometheus.yml, rule files absolute, targets this run's, 1 s intervals."""
    doc = yaml.safe_load((PROM / "prometheus.yml").read_text())
    doc["global"]["scrape_interval"] = doc["global"]["evaluation_interval"] = "1s"
    doc["rule_files"] = [str((PROM / f).resolve()) for f in doc["rule_files"]]
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "pgshadow"]
    job["scrape_interval"] = "1s"
    job["static_configs"] = [{"targets": targets}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def rule_exprs():
    """[(kind, name, expr)] of deploy/prometheus/rules/*.yml."""
    out = []
    for f in sorted((PROM / "rules").glob("*.yml")):
        for group in yaml.safe_load(f.read_text())["groups"]:
            for rule in group["rules"]:
                kind = "record" if "record" in rule else "alert"
                out.append((kind, rule.get("record") or rule.get("alert"), rule["expr"]))
    return out


def families(metrics_text):
    """Metric names an agent serves: every # TYPE family and every sample's name."""
    names = set(re.findall(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*)", metrics_text, re.M))
    names |= set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", metrics_text, re.M))
    for n in list(names):
        names |= {n + "_bucket", n + "_sum", n + "_count"}
    return names


def traffic(src, mir, stop, errors):
    """Reads, writes, an error, a rollback and a mismatching read, until stop."""
    try:
        conn = psycopg2.connect(src.conninfo(DB))
        conn.autocommit = True
        cur = conn.cursor()
        i = 0
        while not stop.is_set():
            i += 1
            cur.execute("INSERT INTO t (v) VALUES (%s)", (i,))
            cur.execute("SELECT count(*) FROM t WHERE v <= %s", (i,))
            cur.execute("SELECT count(*) FROM differs")  # 1 on the source, 2 on the mirror
            try:
                cur.execute("SELECT * FROM no_such_table")
            except psycopg2.Error:
                pass
            conn.autocommit = False
            cur.execute("UPDATE t SET v = v WHERE v = %s", (i,))
            conn.rollback()
            conn.autocommit = True
            time.sleep(0.02)
        conn.close()
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(repr(e))


def test_rules_and_dashboard_on_real_prometheus(pair, mirror_agent, tmp_path, rng):  # noqa: F811
    src, mir = pair
    for pg in pair:
        pg.createdb(DB)
        pg.psql(["CREATE TABLE t (id serial PRIMARY KEY, v int)",
                 "CREATE TABLE differs (id int)", "INSERT INTO differs VALUES (1)"], db=DB)
    mir.psql("INSERT INTO differs VALUES (2)", db=DB)
    agents = [mirror_agent(src, mir)]
    # the second host of the fleet: observe and compare reads only (two agents writing
    # would apply every write twice on the one mirror)
    agents.append(mirror_agent(src, mir, extra=["--mirror-mode", "read_only"]))
    targets = [a.metrics_addr for a in agents]

    stop, errors = threading.Event(), []
    worker = threading.Thread(target=traffic, args=(src, mir, stop, errors), daemon=True)
    worker.start()
    prom = Prometheus(write_config(tmp_path, targets), tmp_path,
                      h.free_port(hosts=("127.0.0.1",), rng=rng))
    try:
        deadline = time.monotonic() + UP_TIMEOUT
        while True:
            try:
                up = prom.query("up")
            except OSError:
                up = {"data": {"result": []}}
            healthy = {r["metric"]["instance"] for r in up.get("data", {}).get("result", [])
                       if r["value"][1] == "1"}
            if healthy >= set(targets):
                break
            assert time.monotonic() < deadline and prom.proc.poll() is None, \
                f"targets up: {healthy}, expected {targets}\n" \
                f"{(tmp_path / 'prometheus.log').read_text()}"
            time.sleep(0.5)
        time.sleep(EVAL_SECONDS)

        served = set()
        for a in agents:
            served |= families(pgh.scrape(a.metrics_addr)[0])
        records = {name for kind, name, _ in rule_exprs() if kind == "record"}

        hosts = sorted(v["instance"] for v in prom.api(
            "series", **{"match[]": "mirror_build_info"})["data"])
        assert hosts == sorted(targets), f"label_values(mirror_build_info, instance): {hosts}"
        subs = dict(SUBSTITUTIONS)
        subs.update({"${host}": "|".join(hosts), "$host": "|".join(hosts),
                     "${database}": DB, "$database": DB, "$__rate_interval": "10s"})

        exprs = [("record", name, e) for kind, name, e in rule_exprs() if kind == "record"]
        exprs += [("alert", name, e) for kind, name, e in rule_exprs() if kind == "alert"]
        for panel, target in all_targets(load_dashboard()):
            e = target.get("expr", "")
            for var, value in subs.items():
                e = e.replace(var, value)
            exprs.append(("panel", panel.get("title"), e))
        assert len(exprs) > 40, f"only {len(exprs)} expressions found"

        failures, empty, data = [], [], []
        for kind, name, e in exprs:
            refs = {n for n, _ in metric_refs(e)}
            unknown = sorted(n for n in refs
                             if n not in served and n not in records and n not in SCRAPE_SERIES)
            if unknown:
                failures.append(f"{kind} {name!r} reads {unknown}, which no agent serves")
                continue
            r = prom.query(e)
            if r.get("status") != "success":
                failures.append(f"{kind} {name!r}: {r.get('errorType')}: {r.get('error')}")
                continue
            if r["data"]["result"]:
                data.append(e)
                continue
            if kind == "alert":
                continue  # not firing: checked below
            # empty: only when something it reads has no series (its event did not happen)
            absent = sorted(n for n in refs if n not in records and
                            not prom.query(f"count({{__name__=\"{n}\"}})")["data"]["result"])
            absent_rules = sorted(n for n in refs if n in records and
                                  not prom.query(n)["data"]["result"])
            if not absent and not absent_rules:
                failures.append(f"{kind} {name!r} returns no data although every series it "
                                f"reads exists: {e}")
            else:
                empty.append(f"{kind} {name!r}: no series yet of {absent + absent_rules}")
        print(f"{len(exprs)} expressions: {len(data)} returned data, {len(empty)} empty "
              f"for want of an event:\n  " + "\n  ".join(empty))
        assert not failures, "\n".join(failures)
        for core in CORE:
            assert any(core in e for e in data), f"no data for a core query: {core}"
        for name in records:
            assert prom.query(name)["data"]["result"] or \
                any(f"record {name!r}" in x for x in empty), \
                f"recording rule {name} produced no series"
        firing = [a for a in prom.api("alerts")["data"]["alerts"] if a["state"] == "firing"]
        assert not firing, f"alerts firing on a healthy mirror: {firing}"
        assert not errors, f"traffic failed: {errors}"
    finally:
        stop.set()
        worker.join(timeout=10)
        prom.stop()
