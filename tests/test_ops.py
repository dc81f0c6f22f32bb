"""Operations files (ops/): the Prometheus alert rules pass their ``promtool test rules`` unit tests (each alert
firing and not firing), and every metric and label that the alert rules and the Grafana dashboard query is one a
running sidecar exports (scraped from ``/metrics`` of real ``monmouth`` subprocesses), so that they cannot drift
apart silently."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.anvil import free_port
from tests.test_cli import long_history

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "ops" / "prometheus" / "monmouth.rules.yml"
RULE_TESTS = ROOT / "ops" / "prometheus" / "monmouth.rules.test.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "monmouth.json"
MONMOUTH = [sys.executable, "-m", "monmouth"]
#: Labels Prometheus adds to every scraped series (target labels), and the histogram bucket label.
TARGET_LABELS = {"instance", "job", "le"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: apt-get install prometheus (Debian's package; .ci/run installs it)")
    return found


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    check = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 12 rules found" in check.stdout, check.stdout
    run = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    # Every alert has a test where it fires (exp_alerts non-empty) and one where it does not.
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    fired, quiet = set(), set()
    for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for a in t["alert_rule_test"]:
            (fired if a["exp_alerts"] else quiet).add(a["alertname"])
    assert quiet == alerts, alerts ^ quiet
    assert fired == alerts, alerts ^ fired


# ---------------------------------------------------------------------------------------------------- drift


def queries() -> list[tuple[str, str]]:
    """(where, PromQL expression) of every alert rule and dashboard target."""
    out = [(f"rule {r['alert']}", r["expr"]) for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text())
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r}", t["expr"]))
    for v in dash["templating"]["list"]:
        out.append((f"variable {v['name']}", v["query"]["query"]))
    return out


SELECTOR = re.compile(r"(?P<name>\b[a-zA-Z_:][a-zA-Z0-9_:]*)?\{(?P<matchers>[^{}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(=~|!~|!=|=)\s*\"((?:[^\"\\]|\\.)*)\"")
BARE = re.compile(r"\b(monmouth_[a-z0-9_]+)\b")
STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"")
GROUPING = re.compile(r"\b(?:by|without|ignoring|on)\s*\(([^)]*)\)")


def used(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """The selectors of ``expr`` as (metric name or ``re:<regex>``, label names matched) and its grouping labels."""
    sels = []
    for m in SELECTOR.finditer(expr):
        matchers = {k: v for k, _, v in MATCHER.findall(m["matchers"])}
        name = m["name"]
        if name is None and "__name__" in matchers:
            name = "re:" + matchers.pop("__name__")
        if name is None or not name.startswith(("monmouth_", "re:")):  # `up` is Prometheus' own
            continue
        sels.append((name, set(matchers)))
    rest = STRING.sub('""', SELECTOR.sub(" ", expr))  # names outside selectors, not inside strings
    sels += [(name, set()) for name in BARE.findall(rest)]
    groups = {lbl.strip() for g in GROUPING.findall(expr) for lbl in g.split(",") if lbl.strip()}
    return sels, groups


def scrape_exports(text: str, into: dict[str, set[str]]) -> None:
    """Add ``{sample name: label names}`` from an exposition; families without samples yet get their names."""
    for fam in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_count", "_sum", "_created"]}
        for s in suffixes.get(fam.type, [""]):
            into.setdefault(fam.name + s, set())
        for s in fam.samples:
            into.setdefault(s.name, set()).update(s.labels)


def sidecar(tmp_path: Path, name: str, source: str, port: int, args: list[str]) -> tuple[subprocess.Popen, Path]:
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(f"""
[source]
{source}

[storage]
path = "{name}.sqlite"
synchronous = "NORMAL"

[http]
port = {port}

[plugins.rag]
enabled = true

[plugins.memory]
enabled = true

[plugins.eigenda]
enabled = true
url = "http://127.0.0.1:{free_port()}"
""")
    proc = subprocess.Popen([*MONMOUTH, *args, "--config", str(cfg)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc, cfg


def wait_metrics(proc: subprocess.Popen, port: int, cond=lambda text: True, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stderr.read()
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            if r.status_code == 200 and cond(r.text):
                return r.text
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "timed out waiting for /metrics"
        time.sleep(0.2)


def test_every_metric_and_label_the_dashboard_and_alerts_query_is_exported(tmp_path):
    long_history(tmp_path / "history.mnr")  # 120 notifications, reorgs every 15
    exported: dict[str, set[str]] = {}
    # 1. A replay with reorgs (paced, so the sidecar is still up when scraped), RAG, memory and an integration.
    port = free_port()
    proc, cfg = sidecar(tmp_path, "replay", 'kind = "replay"', port, ["replay", "history.mnr", "--rate", "3", "--http"])
    try:
        wait_metrics(proc, port, lambda t: re.search(r"^monmouth_reorg_depth_blocks_count [1-9]", t, re.M) is not None)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/status", timeout=30).status_code == 200
        assert httpx.post(f"{base}/rag/search", json={"query": "transfer", "k": 2}, timeout=60).status_code == 200
        assert httpx.get(f"{base}/nope", timeout=30).status_code == 404
        cfg.write_text(cfg.read_text() + "\n[engine]\nno_such_key = 1\n")  # a rejected reload: an error counted
        scrape_exports(wait_metrics(proc, port, lambda t: 'monmouth_errors_total{kind="config"}' in t), exported)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    # 2. The exex source (the bridge's metrics); no bridge is listening.
    port = free_port()
    proc, _ = sidecar(tmp_path, "exex", f'kind = "exex"\nurl = "tcp://127.0.0.1:{free_port()}"', port, ["run"])
    try:
        scrape_exports(wait_metrics(proc, port), exported)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)

    problems = []
    for where, expr in queries():
        sels, groups = used(expr)
        labels_here: set[str] = set(TARGET_LABELS)
        for name, labels in sels:
            if name.startswith("re:"):
                names = [n for n in exported if re.fullmatch(name[3:], n)]
                if not names:
                    problems.append(f"{where}: no exported metric matches {name[3:]!r}")
                    continue
            elif name not in exported:
                problems.append(f"{where}: {name} is not exported")
                continue
            else:
                names = [name]
            have = set().union(*(exported[n] for n in names))
            labels_here |= have
            for lbl in labels - TARGET_LABELS:
                if lbl not in have:
                    problems.append(f"{where}: {names[0]} has no label {lbl!r} (it has {sorted(have)})")
        for lbl in groups - labels_here - {"integration"}:  # `integration` is made by the rule's label_replace
            problems.append(f"{where}: groups by {lbl!r}, which none of its metrics has")
    assert not problems, "\n".join(problems)
    assert len(queries()) > 30


# ---------------------------------------------------------------------------------------------------- systemd


def _verify_units(tmp_path: Path, units: dict[str, str]) -> subprocess.CompletedProcess:
    """``systemd-analyze verify`` of ``units`` (name -> text), their binaries replaced by /bin/true (verify
    requires the executables to exist; the units name where they are installed)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (.ci/run installs it)")
    for name, text in units.items():
        text = text.replace("/opt/monmouth/bin/monmouth", "/bin/true").replace("/usr/local/bin/monmouth-reth",
                                                                               "/bin/true")
        (tmp_path / name).write_text(text)
    return subprocess.run([tool, "verify", *(f"./{n}" for n in units)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def test_systemd_units_verify_cleanly_and_order_the_sidecar_after_the_node(tmp_path):
    units = {p.name: p.read_text() for p in (ROOT / "ops" / "systemd").glob("*.service")}
    assert set(units) == {"monmouth.service", "monmouth-reth.service"}
    r = _verify_units(tmp_path, units)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    sidecar_unit = units["monmouth.service"]
    assert "After=network-online.target monmouth-reth.service" in sidecar_unit
    for key in ("NoNewPrivileges=yes", "ProtectSystem=strict", "Restart=on-failure", "StateDirectory=monmouth"):
        assert key in sidecar_unit and key.split("=")[0] in units["monmouth-reth.service"], key
    # Readiness and liveness over sd_notify (sidecar/sdnotify.py, tests/test_sdnotify.py).
    for key in ("Type=notify", "NotifyAccess=main", "WatchdogSec=60", "TimeoutStartSec=infinity"):
        assert re.search(rf"^{key}$", sidecar_unit, re.M), key
    # The stop timeout leaves the sidecar its own graceful shutdown (engine.shutdown_timeout, 20 s by default).
    assert int(re.search(r"^TimeoutStopSec=(\d+)$", sidecar_unit, re.M)[1]) > 20
    # The check has teeth: a misspelt key or a bad value is reported (systemd only warns, so stderr is what counts).
    bad = sidecar_unit.replace("Restart=on-failure", "Restart=sometimes").replace("ProtectHome=", "ProtectHom=")
    (tmp_path / "bad").mkdir()
    r = _verify_units(tmp_path / "bad", {"monmouth.service": bad})
    assert "restart specifier" in r.stderr and "Unknown key 'ProtectHom'" in r.stderr, r.stderr
