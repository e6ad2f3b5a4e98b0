"""Checks of the Grafana dashboard deploy/grafana/pgshadow.json.

The dashboard must be importable into any Grafana with any Prometheus data source: every
panel and query uses the `datasource` template variable, and no data source uid is
hard-coded. Every query must be valid PromQL (promtool checks them as recording rules),
read only metrics the agent serves (README.md, "Metrics") or the recording rules of
deploy/prometheus/rules/recording.yml, and honour the `host` and `database` selectors.

Needs no root and no agent: only promtool (`make deps` installs prometheus, which
provides it) for the PromQL check, skipped with that reason when promtool is absent.
"""

import json
import pathlib
import re
import subprocess

import pytest
import yaml

from test_prometheus_rules import promtool

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "pgshadow.json"
README = ROOT / "README.md"
RECORDING = ROOT / "deploy" / "prometheus" / "rules" / "recording.yml"

DS_VAR = "${datasource}"
DS_OBJECT = {"type": "prometheus", "uid": DS_VAR}

# Concrete values for Grafana's variables, as Grafana would interpolate them.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${host}": "pg-a:9930|pg-b:9930",
    "$host": "pg-a:9930|pg-b:9930",
    "${database}": "app|reports",
    "$database": "app|reports",
}

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on",
                   "ignoring", "group_left", "group_right", "inf", "nan", "atan2"}

# These tests need no root (conftest.py skips the others without it).
pytestmark = pytest.mark.no_root


# ---------------------------------------------------------------------------- helpers

def load_dashboard():
    with DASHBOARD.open(encoding="utf-8") as f:
        dash = json.load(f)
    return dash.get("dashboard", dash)


def all_panels(dash):
    """Every panel, those nested in (collapsed) rows included."""
    out = []

    def walk(panels):
        for p in panels:
            out.append(p)
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    return out


def data_panels(dash):
    return [p for p in all_panels(dash) if p.get("type") != "row"]


def all_targets(dash):
    return [(p, t) for p in data_panels(dash) for t in p.get("targets", [])]


def variables(dash):
    return {v["name"]: v for v in dash.get("templating", {}).get("list", [])}


def walk_keys(node, path=""):
    """Yields (path, key, value) for every key of every object in a JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k, v
            yield from walk_keys(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_keys(v, f"{path}[{i}]")


def readme_metrics():
    """{name: set of labels} from README.md's "Metrics" tables. Histograms also give
    their _bucket (with le), _sum and _count series; `process_*` is kept as a prefix."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Metrics\n(.*?)^## ", text, re.S | re.M)
    assert m, "README.md has no \"## Metrics\" section"
    metrics = {}
    for line in m.group(1).splitlines():
        row = re.match(r"\|\s*`([a-zA-Z_:][a-zA-Z0-9_:*]*)`\s*\|([^|]*)\|([^|]*)\|", line)
        if not row:
            continue
        name, mtype, labels = row.group(1), row.group(2).strip(), row.group(3)
        labels = {x.strip() for x in labels.split(",") if x.strip()}
        metrics[name] = labels
        if mtype == "histogram":
            metrics[name + "_bucket"] = labels | {"le"}
            metrics[name + "_sum"] = labels
            metrics[name + "_count"] = labels
    assert len(metrics) > 40, f"too few metrics parsed from README.md: {sorted(metrics)}"
    return metrics


def recording_rules():
    """{name: set of labels}; the level prefix says which labels a rule keeps."""
    doc = yaml.safe_load(RECORDING.read_text(encoding="utf-8"))
    rules = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "record" not in rule:
                continue
            name = rule["record"]
            level = name.split(":")[0]
            rules[name] = set(level.split("_")) if level else set()
    assert rules, f"no recording rules in {RECORDING}"
    return rules


def known_metrics():
    """{name: labels or None (labels unknown: process_*)}."""
    known = dict(readme_metrics())
    known.update(recording_rules())
    return known


def metric_labels(name, known):
    if name in known:
        return known[name]
    for pattern in known:
        if pattern.endswith("*") and name.startswith(pattern[:-1]):
            return set()
    return None


def metric_refs(expr):
    """[(metric name, matcher text or None)] of every vector selector of a PromQL
    expression, functions, keywords, label names and durations excluded."""
    braces = []

    def keep_braces(m):
        braces.append(m.group(1))
        return "{#%d}" % (len(braces) - 1)

    s = re.sub(r"\{([^{}]*)\}", keep_braces, expr)
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    refs = []
    for m in re.finditer(r"(?<![\w:.#])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\(|\s*\{#(\d+)\})?", s):
        name, follow, brace = m.group(1), m.group(2), m.group(3)
        if follow and follow.strip() == "(":
            continue                                    # a function or aggregation
        if brace is not None:
            refs.append((name, braces[int(brace)]))
        elif name.lower() not in PROMQL_KEYWORDS:
            refs.append((name, None))
    return refs


def substitute(expr):
    for var, value in SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    return expr


# ---------------------------------------------------------------------------- tests

def test_dashboard_is_grafana_json():
    dash = load_dashboard()
    assert dash.get("title"), "the dashboard has no title"
    assert isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36, \
        f"schemaVersion {dash.get('schemaVersion')!r}: Grafana 9/10 dashboards are >= 36"
    assert dash.get("id") is None, "an importable dashboard has id null"
    panels = all_panels(dash)
    assert data_panels(dash), "the dashboard has no panels"
    ids = [p.get("id") for p in panels]
    assert all(isinstance(i, int) for i in ids), f"panel ids must be integers: {ids}"
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for p in panels:
        g = p.get("gridPos", {})
        assert all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")), \
            f"panel {p.get('title')!r} has no complete gridPos: {g}"
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, \
            f"panel {p.get('title')!r} lies outside the 24-column grid: {g}"


def test_panels_do_not_overlap():
    top = load_dashboard()["panels"]
    boxes = [(p["title"], p["gridPos"]) for p in top]
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                     or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, f"panels {ta!r} {a} and {tb!r} {b} overlap"


def test_datasource_variable():
    var = variables(load_dashboard()).get("datasource")
    assert var is not None, "no `datasource` template variable"
    assert var["type"] == "datasource", var
    assert var["query"] == "prometheus", var


def test_every_datasource_is_the_variable():
    dash = load_dashboard()
    for p in data_panels(dash):
        assert p.get("datasource") in (DS_VAR, DS_OBJECT), \
            f"panel {p.get('title')!r} datasource {p.get('datasource')!r} is not {DS_VAR}"
        assert p.get("targets"), f"panel {p.get('title')!r} has no targets"
        for t in p["targets"]:
            assert t.get("datasource") in (DS_VAR, DS_OBJECT), \
                f"panel {p.get('title')!r} target {t.get('refId')} datasource " \
                f"{t.get('datasource')!r} is not {DS_VAR}"
    for name, var in variables(dash).items():
        if var["type"] == "query":
            assert var.get("datasource") in (DS_VAR, DS_OBJECT), \
                f"variable {name} datasource {var.get('datasource')!r} is not {DS_VAR}"


def test_no_hard_coded_datasource_uid():
    dash = load_dashboard()
    for path, key, value in walk_keys(dash):
        if key == "datasource":
            if isinstance(value, dict):
                assert value.get("uid") == DS_VAR, \
                    f"{path}.datasource has uid {value.get('uid')!r}, not {DS_VAR}"
            else:
                assert value == DS_VAR, f"{path}.datasource is {value!r}, not {DS_VAR}"
        elif key == "uid" and path:
            assert path.endswith(".datasource"), \
                f"{path}.uid = {value!r}: only datasource objects may carry a uid"
    assert "__inputs" not in dash, "__inputs would ask for a data source the variable gives"
    assert "DS_" not in json.dumps(dash), "an exported ${DS_...} data source input is left"


def test_host_and_database_variables():
    dash = load_dashboard()
    known = known_metrics()
    vars_ = variables(dash)
    for name, label in (("host", "instance"), ("database", "database")):
        var = vars_.get(name)
        assert var is not None, f"no `{name}` template variable"
        assert var["type"] == "query", var
        assert var.get("multi") is True and var.get("includeAll") is True, \
            f"`{name}` must be multi-select with All: {var}"
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*,"
                         r"\s*(\w+)\s*\)", query.strip())
        assert m, f"`{name}` query {query!r} is not label_values(<metric>, {label})"
        metric, _, got_label = m.groups()
        assert got_label == label, f"`{name}` reads label {got_label}, not {label}"
        labels = metric_labels(metric, known)
        assert labels is not None, f"`{name}` reads {metric}, which the agent does not serve"
        if label != "instance":
            assert label in labels, f"`{name}` reads {metric}, which has no {label} label"


def test_every_query_filters_by_host_and_database():
    dash = load_dashboard()
    known = known_metrics()
    for p, t in all_targets(dash):
        where = f"panel {p['title']!r} target {t['refId']} ({t['expr']})"
        refs = metric_refs(t["expr"])
        assert refs, f"{where}: no metric found"
        for name, matchers in refs:
            assert matchers is not None, f"{where}: {name} has no label matchers"
            assert re.search(r'\binstance\s*=~\s*"\$host"', matchers), \
                f"{where}: {name} is not filtered by instance=~\"$host\""
            labels = metric_labels(name, known) or set()
            if "database" in labels:
                assert re.search(r'\bdatabase\s*=~\s*"\$database"', matchers), \
                    f"{where}: {name} has a database label but is not filtered by " \
                    f"database=~\"$database\""


def test_every_metric_exists():
    dash = load_dashboard()
    known = known_metrics()
    seen = set()
    for p, t in all_targets(dash):
        for name, _ in metric_refs(t["expr"]):
            seen.add(name)
            assert metric_labels(name, known) is not None, \
                f"panel {p['title']!r}: {name} is neither in README.md's Metrics table " \
                f"nor a recording rule of {RECORDING.name}"
    rules = set(recording_rules())
    assert seen & rules, "no panel uses a recording rule of recording.yml"


def test_every_expr_is_valid_promql(tmp_path):
    dash = load_dashboard()
    rules = []
    for i, (p, t) in enumerate(all_targets(dash)):
        expr = substitute(t["expr"])
        assert "$" not in expr, \
            f"panel {p['title']!r} target {t['refId']}: unsubstituted variable in {expr}"
        rules.append({"record": f"grafana_panel_{p['id']}_{t['refId']}_{i}", "expr": expr})
    for name, var in variables(dash).items():
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            selector = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip()).group(1)
            rules.append({"record": f"grafana_variable_{name}", "expr": substitute(selector)})
    path = tmp_path / "grafana_exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]},
                                   sort_keys=False), encoding="utf-8")
    proc = subprocess.run([promtool(), "check", "rules", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, \
        f"promtool check rules failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
    assert f"{len(rules)} rules found" in proc.stdout, proc.stdout


# (topic, title regex, panel type or None, sets of metrics of which the panel must read
# one each, substrings its expressions must contain)
TOPICS = [
    ("seed: Mirror Success Rate", r"success rate", None,
     [{"mirror_requests_mirrored", "instance:mirror_errors:ratio_rate5m"}], []),
    ("seed: Mirror Latency", r"mirror latency", "timeseries",
     [{"mirror_latency_avg_ms"}], []),
    ("seed: Error Rate by Type / errors by type", r"errors?( rate)? by type", "timeseries",
     [{"mirror_errors_total"}], ["error_type"]),
    ("source vs mirror p50 latency", r"p50.*source.*mirror|source.*mirror.*p50", "timeseries",
     [{"mirror_source_latency_seconds_bucket"}, {"mirror_latency_seconds_bucket"}],
     ["histogram_quantile(0.5,"]),
    ("source vs mirror p99 latency", r"p99.*source.*mirror|source.*mirror.*p99", "timeseries",
     [{"mirror_source_latency_seconds_bucket"}, {"mirror_latency_seconds_bucket"}],
     ["histogram_quantile(0.99,"]),
    ("mirrored fraction", r"mirrored fraction", None,
     [{"instance_database:mirror_requests_mirrored:ratio_rate5m"}], []),
    ("outcomes", r"outcomes", "timeseries",
     [{"mirror_requests_mirrored"},
      {"mirror_requests_dropped", "mirror_dropped_requests_total", "mirror_errors_buffer_full"},
      {"mirror_requests_skipped_total"}, {"mirror_requests_not_sampled_total"},
      {"mirror_errors_total", "mirror_errors_connection"}], ["rate("]),
    ("mismatches by kind", r"mismatch.*kind", "timeseries",
     [{"mirror_mismatches_total"}], ["kind"]),
    ("readiness score", r"readiness.*score", "stat",
     [{"mirror_readiness_confidence_score"}], []),
    ("readiness status", r"readiness.*status", "stat",
     [{"mirror_readiness_ready", "instance:mirror_readiness_ready:max"}], []),
    ("capture: ring-buffer drops", r"ring.?buffer", "timeseries",
     [{"mirror_capture_ringbuf_drops_total"}], ["rate("]),
    ("capture: gaps", r"gaps", "timeseries",
     [{"mirror_capture_stream_gaps_total"}], ["rate("]),
    ("capture: limit hits", r"limit hits", "timeseries",
     [{"mirror_capture_limit_hits_total"}], ["limit"]),
    ("mirror pool connections by state", r"pool connections.*state", "timeseries",
     [{"mirror_pool_connections"}], ["state"]),
    ("mirror pool waiting", r"pool.*waiting", "timeseries", [{"mirror_pool_waiting"}], []),
    ("mirror pool peak", r"pool", "timeseries", [{"mirror_pool_connections_peak"}], []),
    ("queue bytes", r"queue bytes", "timeseries", [{"mirror_queue_bytes"}], []),
]


@pytest.mark.parametrize("topic,title_re,ptype,metric_sets,contains", TOPICS,
                         ids=[t[0] for t in TOPICS])
def test_required_panel(topic, title_re, ptype, metric_sets, contains):
    candidates = [p for p in data_panels(load_dashboard())
                  if re.search(title_re, p.get("title", ""), re.I)]
    assert candidates, f"{topic}: no panel title matches /{title_re}/"
    reasons = []
    for p in candidates:
        exprs = [t["expr"] for t in p.get("targets", [])]
        names = {n for e in exprs for n, _ in metric_refs(e)}
        missing = [sorted(s) for s in metric_sets if not s & names]
        absent = [c for c in contains if not any(c in e for e in exprs)]
        if ptype and p["type"] != ptype:
            reasons.append(f"{p['title']!r} is a {p['type']}, not a {ptype}")
        elif missing or absent:
            reasons.append(f"{p['title']!r} lacks metrics {missing} / text {absent}")
        else:
            return
    pytest.fail(f"{topic}: no suitable panel: " + "; ".join(reasons))


def test_readiness_status_maps_values():
    panel = next(p for p in data_panels(load_dashboard())
                 if re.search(r"readiness.*status", p["title"], re.I))
    text = json.dumps(panel["fieldConfig"]["defaults"].get("mappings", []))
    assert "NOT READY" in text and '"READY"' in text, \
        f"readiness status does not map 1/0 to READY/NOT READY: {text}"
