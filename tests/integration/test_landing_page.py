"""GET / in a real headless browser (Debian's chromium).

An agent with --mirror capturing a real source: chromium loads http://<metrics>/ and its
DOM (--dump-dom, after scripts and rendering) shows the version, the captured port and
interface, the mirror's server version and address, the requests seen (25 queries
sent), the readiness status and score — the same as /readiness?format=json says — and
links to /metrics, /readiness, /readiness?format=json and /queries, each of which answers 200. A
screenshot is written (PGSHADOW_SCREENSHOT, default in the test's tmp directory) for the
record. An agent without --mirror shows no readiness.
"""

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import psycopg2

import pg_harness as pgh
from test_mirror import mirror_agent, mirror_agent_bin, pair  # noqa: F401 fixtures

QUERIES = 25
BROWSER_TIMEOUT = 60


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium not found (`make deps` installs it)"
    return path


def browse(url, tmp, *args):
    """chromium --headless on url with args; its stdout."""
    profile = tmp / "chromium-profile"
    r = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args, url],
        capture_output=True, text=True, timeout=BROWSER_TIMEOUT)
    assert r.returncode == 0, f"chromium exit {r.returncode}:\n{r.stderr[-3000:]}"
    return r.stdout


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.text, self.rows, self._th = [], [], {}, None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links.append(dict(attrs)["href"])

    def handle_data(self, data):
        self.text.append(data)
        if self.lasttag == "th":
            self._th = data
        elif self.lasttag == "td" and self._th:
            self.rows[self._th] = data
            self._th = None


def get(addr, path):
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as r:
        return r.status, r.read().decode()


def test_landing_page_in_a_browser(pair, mirror_agent, tmp_path):  # noqa: F811
    src, mir = pair
    agent = mirror_agent(src, mir)
    conn = psycopg2.connect(src.conninfo("postgres"))
    conn.autocommit = True
    try:
        cur = conn.cursor()
        for i in range(QUERIES):
            cur.execute("SELECT %s", (i,))
    finally:
        conn.close()
    deadline = time.monotonic() + 10
    while pgh.metrics(agent.metrics_addr).requests("postgres") < QUERIES:
        assert time.monotonic() < deadline, "the queries were not counted"
        time.sleep(0.2)

    url = f"http://{agent.metrics_addr}/"
    dom = browse(url, tmp_path, "--dump-dom")
    page = Page()
    page.feed(dom)
    text = re.sub(r"\s+", " ", "".join(page.text))
    version = re.search(r'mirror_build_info\{version="([^"]+)"\}',
                        pgh.scrape(agent.metrics_addr)[0]).group(1)
    assert page.rows.get("Version") == version, page.rows
    assert page.rows.get("Capturing") == f"port {src.port} on lo (tcx)", page.rows
    mversion = mir.scalar("SHOW server_version")
    assert page.rows.get("Mirror") == f"PostgreSQL {mversion} at {mir.host}:{mir.port}", \
        page.rows
    assert int(page.rows.get("Requests seen", -1)) >= QUERIES, page.rows
    report = json.loads(get(agent.metrics_addr, "/readiness?format=json")[1])
    status = "READY" if report["ready"] else "NOT READY"
    assert f"Status: {status}" in text, text
    m = re.search(r"Confidence score: ([\d.]+) / 100", text)
    assert m and abs(float(m.group(1)) - report["confidence_score"]) < 0.051, (text, report["confidence_score"])
    assert page.links == ["/metrics", "/readiness", "/readiness?format=json", "/queries",
                          "/healthz"], \
        page.links
    for href in page.links:
        assert get(agent.metrics_addr, href)[0] == 200, href

    shot = Path(os.environ.get("PGSHADOW_SCREENSHOT", tmp_path / "landing.png"))
    browse(url, tmp_path, f"--screenshot={shot}", "--window-size=1000,720",
           "--hide-scrollbars")
    assert shot.stat().st_size > 5000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", \
        f"no screenshot at {shot}"
    print(f"landing page screenshot: {shot}")


def test_landing_page_observing_only(start_agent, tmp_path, rng):
    import pgshadow_harness as h
    addr = f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',), rng=rng)}"
    agent = start_agent(h.free_port(rng=rng), ["lo"], dump=False,
                        extra=["--metrics-listen", addr])
    status, body = get(addr, "/")
    assert status == 200 and "none (observing only)" in body and "readiness" not in body
    try:
        get(addr, "/nothing-here")
        raise AssertionError("GET /nothing-here answered 200")
    except urllib.error.HTTPError as e:
        assert e.code == 404
