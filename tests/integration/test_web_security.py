"""TLS and basic authentication on the HTTP endpoints (web_tls_cert_file,
web_tls_key_file, web_basic_auth_file), node_exporter's conventions.

A self-signed certificate for 127.0.0.1 (openssl) and a users file with a bcrypt hash:
- GET /metrics over HTTPS with the right user and password: 200 and the exposition;
  without credentials, or with a wrong password or an unknown user: 401 with
  `WWW-Authenticate: Basic realm="pgshadow"`; plain HTTP to the port gets no answer;
- a real Prometheus scrapes it (scheme https, tls_config ca_file, basic_auth): up == 1;
- a certificate without its key, a users file that is not bcrypt, and `pgshadow
  readiness --url https://...` are refused with one line saying what is wrong (exit 2).
"""

import base64
import crypt  # noqa: deprecated in 3.11, still there; bcrypt through libxcrypt
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import yaml

import pgshadow_harness as h
from test_prometheus_live import Prometheus

USER, PASSWORD = "scraper", "c0rrect horse"
UP_TIMEOUT = 30


@pytest.fixture
def tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    users = tmp_path / "users"
    users.write_text(f"# scrapers\n{USER}:{crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5))}\n")
    return cert, key, users


def get(url, cafile, user=None, password=None):
    ctx = ssl.create_default_context(cafile=str(cafile))
    req = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_tls_and_basic_auth(start_agent, agent_bin, tls, tmp_path, rng):
    cert, key, users = tls
    addr = f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',), rng=rng)}"
    start_agent(h.free_port(rng=rng), ["lo"], dump=False,
                extra=["--metrics-listen", addr, "--web-tls-cert-file", str(cert),
                       "--web-tls-key-file", str(key), "--web-basic-auth-file", str(users)])
    url = f"https://{addr}/metrics"
    status, _, body = get(url, cert, USER, PASSWORD)
    assert status == 200 and "mirror_build_info" in body, (status, body[:200])
    for creds in [(None, None), (USER, "wrong"), ("nobody", PASSWORD)]:
        status, headers, _ = get(url, cert, *creds)
        assert status == 401, (creds, status)
        assert headers.get("WWW-Authenticate") == 'Basic realm="pgshadow"', headers
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read()

    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "pgshadow", "scheme": "https",
                            "tls_config": {"ca_file": str(cert)},
                            "basic_auth": {"username": USER, "password": PASSWORD},
                            "static_configs": [{"targets": [addr]}]}]}))
    prom = Prometheus(config, tmp_path, h.free_port(hosts=("127.0.0.1",), rng=rng))
    try:
        deadline = time.monotonic() + UP_TIMEOUT
        while True:
            try:
                r = prom.query("up")["data"]["result"]
            except OSError:
                r = []
            if r and r[0]["value"][1] == "1":
                break
            assert time.monotonic() < deadline and prom.proc.poll() is None, \
                f"Prometheus never scraped the agent over HTTPS with basic auth: {r}\n" \
                f"{(tmp_path / 'prometheus.log').read_text()}"
            time.sleep(0.5)
    finally:
        prom.stop()


def test_refused_settings(agent_bin, tls, tmp_path, rng):
    cert, key, users = tls
    base = ["--port", h.free_port(rng=rng), "--interface", "lo", "--admin-socket-dir", "",
            "--metrics-listen", f"127.0.0.1:{h.free_port(hosts=('127.0.0.1',), rng=rng)}"]
    rc, _, err = h.run_agent_to_exit(agent_bin, base + ["--web-tls-cert-file", cert])
    assert rc == 2 and "web_tls_cert_file and web_tls_key_file go together" in err, err
    bad = tmp_path / "bad-users"
    bad.write_text("scraper:plaintext\n")
    rc, _, err = h.run_agent_to_exit(agent_bin, base + ["--web-basic-auth-file", bad])
    assert rc == 2 and f"web_basic_auth_file {bad}: line 1: user scraper: not a bcrypt " \
        "hash" in err, err
    rc, _, err = h.run_agent_to_exit(agent_bin, ["readiness", "--url",
                                                 "https://127.0.0.1:9/readiness"])
    assert rc == 2 and "https is not spoken by this client" in err, err
