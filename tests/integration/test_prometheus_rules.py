"""promtool checks of deploy/prometheus/: the scrape config (its rule_files resolve
relative to it), both rule files, and the rule unit tests in deploy/prometheus/tests/.

Needs no root and no agent: only promtool (`make deps` installs prometheus, which
provides it); skipped with that reason when promtool is absent.
"""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = [PROM / "rules" / "recording.yml", PROM / "rules" / "alerts.yml"]
TESTS = sorted((PROM / "tests").glob("*.yml"))

# These tests need no root (conftest.py skips the others without it).
pytestmark = pytest.mark.no_root


def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found on PATH (`make deps` installs prometheus, "
                    "which provides it)")
    return path


def run(*args):
    proc = subprocess.run([promtool(), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    out = f"$ promtool {' '.join(map(str, args))}\n{proc.stdout}{proc.stderr}"
    assert proc.returncode == 0, f"promtool failed (exit {proc.returncode}):\n{out}"
    return out


def test_check_config():
    out = run("check", "config", PROM / "prometheus.yml")
    for rules in RULES:
        assert str(rules.relative_to(PROM)) in out, \
            f"{rules.name} was not checked through the config's rule_files:\n{out}"


def test_check_rules():
    run("check", "rules", *RULES)


def test_rule_unit_tests():
    assert TESTS, f"no rule unit tests in {PROM / 'tests'}"
    run("test", "rules", *TESTS)
