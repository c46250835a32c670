"""The Prometheus rules (monitoring/prometheus/rules/petmesh.rules.yml): promtool accepts them,
their unit tests pass (and a wrong expectation does fail), every alert is tested both firing and
silent, carries its metadata and a runbook section in docs/operations.md, and every expression
parses and reads only metrics the cluster exports (read from a running node and balancer) or
rules the file records.
"""

import pathlib
import re

import pytest
import yaml

import promql
from conftest import REPO, run

RULES = REPO / "monitoring/prometheus/rules/petmesh.rules.yml"
TESTS_DIR = REPO / "monitoring/prometheus/tests"
BROKEN_DIR = TESTS_DIR / "broken"
RUNBOOK = REPO / "docs/operations.md"
RUNBOOK_URL = "https://github.com/petmesh/petmesh/blob/main/docs/operations.md#"
SEVERITIES = {"critical", "warning", "info"}

# Series Prometheus itself writes for every target.
PROMETHEUS_SERIES = {"up"}
# The scrape job of each metric prefix.
JOBS = {"petmesh_node_": "petmesh-node", "petmesh_balancer_": "petmesh-balancer"}


def known_metric(name, recorded, exported):
    """Whether an expression may read `name`: a metric the cluster exports (`exported`: the
    `exported_metrics` fixture, families and types read from a running node and balancer; a
    histogram through its _bucket/_sum/_count series), a series of Prometheus' own, or a
    recording rule."""
    histograms = {n for n, kind in exported.items() if kind == "histogram"}
    base = promql.base_metric(name, histograms)
    if base in histograms:
        return base != name  # a histogram is read through its series, never by its bare name
    return name in exported or name in PROMETHEUS_SERIES or name in recorded


def github_slug(heading):
    """The anchor GitHub gives a Markdown heading."""
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def runbook_sections():
    """The `### ` headings inside the `## Alerts` section of docs/operations.md."""
    headings = []
    in_alerts = False
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("## "):
            in_alerts = line[3:].strip() == "Alerts"
        elif in_alerts and line.startswith("### "):
            headings.append(line[4:].strip())
    return headings


def alerts():
    return [r for r in promql.load_rules(RULES) if "alert" in r]


def unit_test_files():
    return sorted(TESTS_DIR.glob("*.test.yml"))


def alert_cases(files):
    """(alertname, fires) for every alert_rule_test of the unit test files."""
    cases = []
    for path in files:
        doc = yaml.safe_load(path.read_text())
        for test in doc.get("tests", []):
            for case in test.get("alert_rule_test", []) or []:
                cases.append((case["alertname"], bool(case.get("exp_alerts"))))
    return cases


def test_promtool_check_rules():
    result = run(["promtool", "check", "rules", RULES])
    assert "SUCCESS" in result.stdout, result.stdout


def test_promtool_unit_tests_pass():
    files = unit_test_files()
    assert files, f"no unit tests in {TESTS_DIR}"
    result = run(["promtool", "test", "rules", *files])
    assert result.stdout.count("SUCCESS") == len(files), result.stdout


def test_broken_unit_test_fails():
    """A unit test expecting an alert that cannot fire must make promtool fail, naming it:
    proof that the unit tests compare expectations with what the rules produce."""
    files = sorted(BROKEN_DIR.glob("*.test.yml"))
    assert files, f"no broken-on-purpose test in {BROKEN_DIR}"
    for path in files:
        result = run(["promtool", "test", "rules", path], check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"promtool accepted {path}:\n{output}"
        assert "FAILED" in output, output
        for name in {name for name, _ in alert_cases([path])}:
            assert f"alertname: {name}," in output, f"the failure does not name {name}:\n{output}"


def test_every_alert_is_tested_firing_and_silent():
    cases = alert_cases(unit_test_files())
    fired = {name for name, fires in cases if fires}
    silent = {name for name, fires in cases if not fires}
    names = {rule["alert"] for rule in alerts()}
    assert names, "no alert in the rules file"
    assert not names - fired, f"alerts never tested firing: {sorted(names - fired)}"
    assert not names - silent, f"alerts never tested staying silent: {sorted(names - silent)}"
    assert not (fired | silent) - names, f"tests of unknown alerts: {sorted((fired | silent) - names)}"


def test_unit_tests_use_the_rules_file():
    for path in [*unit_test_files(), *BROKEN_DIR.glob("*.test.yml")]:
        doc = yaml.safe_load(path.read_text())
        resolved = [(path.parent / f).resolve() for f in doc["rule_files"]]
        assert resolved == [RULES.resolve()], f"{path}: rule_files {doc['rule_files']}"


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_alert_metadata(rule):
    name = rule["alert"]
    assert re.fullmatch(r"Petmesh[A-Z][A-Za-z]+", name), name
    assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key, "").strip(), f"{name}: annotation {key} missing"
    url = annotations["runbook_url"]
    assert url.startswith(RUNBOOK_URL), f"{name}: runbook_url {url}"
    anchor = url[len(RUNBOOK_URL):]
    slugs = {github_slug(h): h for h in runbook_sections()}
    assert anchor in slugs, f"{name}: no heading with anchor #{anchor} under '## Alerts' of {RUNBOOK}"
    assert slugs[anchor] == name, f"{name}: runbook_url points at '### {slugs[anchor]}'"


def test_every_runbook_section_is_an_alert():
    names = {rule["alert"] for rule in alerts()}
    sections = runbook_sections()
    assert len(sections) == len(set(sections)), "duplicate runbook sections"
    assert set(sections) == names, (
        f"sections without alert: {sorted(set(sections) - names)}; "
        f"alerts without section: {sorted(names - set(sections))}"
    )


def test_rule_names():
    rules = promql.load_rules(RULES)
    alert_names = [r["alert"] for r in rules if "alert" in r]
    assert len(set(alert_names)) == len(alert_names), "two alerts share a name"
    for rule in rules:
        if "record" in rule:
            # level:metric:operations, the metric being an exported one.
            level, metric, operations = rule["record"].split(":")
            assert re.fullmatch(r"[a-z]+(_[a-z]+)*", level), rule["record"]
            assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", operations), rule["record"]
            assert metric.startswith(("petmesh_node_", "petmesh_balancer_")), rule["record"]


@pytest.mark.parametrize("rule", promql.load_rules(RULES), ids=lambda r: r.get("alert") or r.get("record"))
def test_expression_parses_and_reads_known_metrics(rule, exported_metrics):
    recorded = promql.recorded_names(RULES)
    expr = rule["expr"]
    found = promql.selectors(expr)
    for name, matchers in found:
        assert name is not None, f"{expr}: a selector without a metric name"
        assert known_metric(name, recorded, exported_metrics), f"{name} is neither exported nor recorded ({expr})"
        # Raw metrics are read from their own scrape job only.
        for prefix, job in JOBS.items():
            if name.startswith(prefix):
                assert ("job", "Equal", job) in matchers, f"{name} without job=\"{job}\" in {expr}"
        if name == "up":
            assert any(m[0] == "job" for m in matchers), f"up without a job matcher in {expr}"


def test_recording_rules_are_used_after_they_are_defined():
    """Within a group, a rule reading another recording rule of the same group must come after
    it (rules of a group are evaluated in order)."""
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        defined = set()
        group_records = {r["record"] for r in group["rules"] if "record" in r}
        for rule in group["rules"]:
            for name in promql.metric_names(rule["expr"]):
                if name in group_records:
                    assert name in defined, f"{rule.get('record') or rule.get('alert')} reads {name} before it is recorded"
            if "record" in rule:
                defined.add(rule["record"])
