"""README.md stays true: every flag `pgshadow --help` lists and every metric a running
agent serves (with --mirror and --source-dsn, so that every family exists) is documented
there. The flag check needs no root; the metric check runs a real agent on a real
source/mirror pair."""

import re
import subprocess
from pathlib import Path

import pytest

import pg_harness as pgh
from test_grafana_dashboard import readme_metrics
from test_mirror import mirror_agent, mirror_agent_bin, pair  # noqa: F401 fixtures

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def help_flags(agent_bin):
    out = subprocess.run([str(agent_bin), "--help"], capture_output=True, text=True,
                         timeout=10).stdout
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", out))
    assert len(flags) > 40, f"too few flags in --help: {sorted(flags)}"
    return flags


@pytest.mark.no_root
def test_every_flag_in_readme(agent_bin):
    text = README.read_text(encoding="utf-8")
    missing = sorted(f for f in help_flags(agent_bin)
                     if not re.search(re.escape(f) + r"(?![a-z0-9-])", text))
    assert not missing, f"flags of --help that README.md never mentions: {missing}"


def test_every_metric_in_readme(pair, mirror_agent):  # noqa: F811
    src, mir = pair
    agent = mirror_agent(src, mir, extra=["--source-dsn", src.conninfo("postgres")])
    import psycopg2
    conn = psycopg2.connect(src.conninfo("postgres"))
    conn.autocommit = True
    for _ in range(5):  # one text five times: one classification, four cache hits
        conn.cursor().execute("SELECT 1")
    conn.close()
    import test_mirror as tm
    tm.wait_settled(agent)
    text = pgh.scrape(agent.metrics_addr)[0]
    assert 'mirror_fingerprint_cache_total{result="hit"} 4' in text or \
        re.search(r'mirror_fingerprint_cache_total\{result="hit"\} ([4-9]|\d\d+)', text), text
    assert re.search(r"^mirror_resolver_queries_total \d+$", text, re.M), text
    served = set(re.findall(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*)", text, re.M))
    assert len(served) > 40, f"too few metric families served: {sorted(served)}"
    documented = readme_metrics()
    missing = sorted(n for n in served if n not in documented and
                     not any(p.endswith("*") and n.startswith(p[:-1]) for p in documented))
    assert not missing, f"metrics the agent serves that README.md's Metrics section lacks: " \
                        f"{missing}"
