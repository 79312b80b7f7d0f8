"""The Prometheus alert rules (deploy/compose/prometheus-rules.yml): loaded by the compose
Prometheus, actionable, and written against metrics that exist."""

from __future__ import annotations

import ast
import fnmatch
import re
import shutil
import subprocess

import pytest
import yaml

RULES = "deploy/compose/prometheus-rules.yml"
RULES_TESTS = "deploy/compose/prometheus-rules.test.yml"
SEVERITIES = {"critical", "warning", "info"}
# Series that come from outside lineloop's code: Prometheus's own scrape health, and the
# kafka-exporter's lag (test_series_from_outside_the_code_have_their_source_in_compose).
EXTERNAL_METRICS = {"up", "kafka_consumergroup_lag"}
_PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                    "group_left", "group_right", "inf", "nan"}


def _metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects (not functions, labels, keywords or durations)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set(re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return names - _PROMQL_KEYWORDS


@pytest.fixture(scope="module")
def rules(repo) -> list[dict]:
    groups = yaml.safe_load((repo / RULES).read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"]]
    assert alerts, "no rules"
    return alerts


def _cli_commands(repo) -> set[tuple[str, str]]:
    """(group, command) pairs of the `lineloop` CLI, read from its source."""
    cli = repo / "libs/cli/src/lineloop/cli"
    groups = re.findall(r"add_typer\((\w+)\.app, name=\"([\w-]+)\"", (cli / "main.py").read_text())
    assert groups, "found no command group in the CLI"
    commands = set()
    for module, group in groups:
        for node in ast.walk(ast.parse((cli / f"{module}.py").read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
                        and decorator.func.attr == "command" and getattr(decorator.func.value, "id", "") == "app"):
                    name = decorator.args[0].value if decorator.args else node.name.rstrip("_").replace("_", "-")
                    commands.add((group, name))
    return commands


def test_metric_name_extraction_sees_series_and_only_series():
    expr = 'sum by (service, topic) (rate(a_total{job="x", le="0.5"}[5m:1m])) > 0 and on (topic) b_lag or up == 0'
    assert _metric_names(expr) == {"a_total", "b_lag", "up"}


def test_every_alert_has_a_duration_a_severity_and_says_what_to_do(rules, repo):
    commands = _cli_commands(repo)
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Lineloop[A-Z]\w+", name), name
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no `for:`"
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        description = rule["annotations"]["description"]
        mentioned = set(re.findall(r"`lineloop ([a-z-]+) ([a-z-]+)", description + rule["annotations"]["summary"]))
        assert mentioned, f"{name}: the description names no `lineloop` command to run"
        assert mentioned <= commands, f"{name}: no such CLI command {sorted(mentioned - commands)}"


def test_alerts_query_only_metrics_that_exist(rules, exported_metrics):
    used = set()
    for rule in rules:
        names = _metric_names(rule["expr"])
        assert names, f"{rule['alert']}: expression selects no series"
        unknown = names - exported_metrics - EXTERNAL_METRICS
        assert not unknown, f"{rule['alert']}: no instrument or exporter gives {sorted(unknown)}"
        used |= names
    # The four subjects, at least: drift, scoring outages, the DLQ, consumer lag.
    for metric in ("lineloop_events_published_total", "lineloop_monitor_scoring_outage",
                   "lineloop_events_dead_lettered_total", "kafka_consumergroup_lag", "up"):
        assert metric in used, f"no alert on {metric}"


def test_series_from_outside_the_code_have_their_source_in_compose(compose, repo):
    config = yaml.safe_load((repo / "deploy/compose/prometheus.yml").read_text())
    jobs = {job["job_name"]: [t for s in job["static_configs"] for t in s["targets"]] for job in config["scrape_configs"]}
    exporter = next(name for name, d in compose["services"].items() if d.get("image", "").startswith("danielqsj/kafka-exporter:"))
    assert any(t.split(":")[0] == exporter for targets in jobs.values() for t in targets), "kafka_consumergroup_lag is not scraped"
    # LineloopServiceDown selects job="lineloop": that job must be the six services.
    assert "lineloop" in jobs


def test_thresholds_copied_from_monitor_settings_match_their_defaults(rules, repo):
    tree = ast.parse((repo / "services/monitor/src/lineloop/monitor/settings.py").read_text())
    defaults = {node.target.id: node.value.value for node in ast.walk(tree)
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(node.value, ast.Constant)}
    [accuracy] = [rule for rule in rules if "lineloop_monitor_live_accuracy" in rule["expr"]]
    threshold = float(re.search(r"<\s*([0-9.]+)", accuracy["expr"]).group(1))
    assert threshold == defaults["min_live_accuracy"]
    assert str(defaults["min_live_accuracy"]) in accuracy["annotations"]["description"]


def test_compose_prometheus_loads_the_rules_file(compose, repo):
    config = yaml.safe_load((repo / "deploy/compose/prometheus.yml").read_text())
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["prometheus"]["volumes"])
    loaded = {source for source, target in mounts.items()
              for pattern in config.get("rule_files", []) if fnmatch.fnmatch(target, pattern)}
    assert f"./{RULES}" in loaded, f"prometheus.yml's rule_files {config.get('rule_files')} do not match the mount of {RULES}"


def test_operations_doc_lists_every_alert(rules, repo):
    doc = (repo / "docs/operations.md").read_text()
    documented = set(re.findall(r"`(Lineloop[A-Z]\w+)`", doc))
    assert documented == {rule["alert"] for rule in rules}


def test_promtool_accepts_the_rules(repo):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install -y prometheus); the structure is checked above")
    result = subprocess.run([promtool, "check", "rules", str(repo / RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_fire_on_their_series_and_not_on_a_blip(repo):
    """deploy/compose/prometheus-rules.test.yml: promtool evaluates the rules over given series."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install -y prometheus)")
    result = subprocess.run([promtool, "test", "rules", str(repo / RULES_TESTS)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
