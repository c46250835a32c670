"""The Grafana dashboards (monitoring/grafana): the committed JSON is exactly what the TypeScript
generator writes, generator and JSON type-check against @grafana/schema (and a hand edit with a
misspelt key or a wrong type does not), and every panel reads valid PromQL from `$datasource`
naming only exported metrics or recording rules.
"""

import difflib
import json
import shutil

import pytest

import promql
from conftest import REPO, run
from test_rules import JOBS, RULES, known_metric

GRAFANA = REPO / "monitoring/grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# File -> uid. Uids must not change: links and bookmarks use them.
UIDS = {
    "petmesh-overview.json": "petmesh-overview",
    "petmesh-node.json": "petmesh-node",
    "petmesh-balancer.json": "petmesh-balancer",
    "petmesh-jobs.json": "petmesh-jobs",
}
# Variables a dashboard must have beyond `datasource`: name -> query.
REQUIRED_VARIABLES = {
    "petmesh-node.json": {"node": "label_values(petmesh_node_info, node)"},
}


def dashboard_files():
    return sorted(DASHBOARDS.glob("*.json"))


def load(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def built():
    """The generator compiled (build/js), with its npm packages installed."""
    assert (GRAFANA / "node_modules").is_dir(), (
        "monitoring/grafana/node_modules missing: run `source scripts/lib/deps.sh; "
        "source scripts/lib/ops-tools.sh; ensure_ops_tools` (npm ci)"
    )
    run(["npm", "run", "--silent", "build"], cwd=GRAFANA)
    return GRAFANA / "build/js"


def check_json(built, *paths):
    return run(["node", built / "check-json.js", *paths], check=False, cwd=GRAFANA)


def test_dashboards_are_committed():
    assert {p.name for p in dashboard_files()} == set(UIDS)


def test_regenerating_gives_the_committed_files(built, tmp_path):
    run(["npm", "run", "--silent", "generate", "--", "--out", tmp_path], cwd=GRAFANA)
    generated = {p.name for p in tmp_path.glob("*.json")}
    committed = {p.name for p in dashboard_files()}
    assert generated == committed, f"generated {sorted(generated)}, committed {sorted(committed)}"
    for name in sorted(generated):
        new = (tmp_path / name).read_text()
        old = (DASHBOARDS / name).read_text()
        if new != old:
            diff = "".join(
                list(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"committed/{name}", f"generated/{name}"))[:60]
            )
            pytest.fail(f"{name} differs from the generator's output: run `npm run generate` in monitoring/grafana\n{diff}")


def test_npm_check_passes(built):
    result = run(["npm", "run", "check"], cwd=GRAFANA)
    assert f"{len(UIDS)} dashboard file(s) type-check" in result.stdout, result.stdout


def test_json_check_accepts_an_unmodified_copy(built, tmp_path):
    copy = tmp_path / "petmesh-node.json"
    shutil.copy(DASHBOARDS / "petmesh-node.json", copy)
    result = check_json(built, copy)
    assert result.returncode == 0, result.stdout + result.stderr


# (what is broken, text replaced, replacement, what the error must mention)
BREAKAGES = [
    ("misspelt key", '"gridPos": {', '"gridPoss": {', "gridPoss"),
    ("wrong type", '"title": "petmesh / Node"', '"title": 5', "not assignable to type 'string'"),
    ("unknown enum value", '"displayMode": "list"', '"displayMode": "lst"', '"lst"'),
    ("misspelt option", '"showLegend": true', '"showLegnd": true', "showLegnd"),
    ("other datasource", '"uid": "${datasource}"', '"uid": "prometheus"', '"prometheus"'),
    ("missing required field", '"h": 1,', "", "Property 'h' is missing"),
]


@pytest.mark.parametrize("what,old,new,mentioned", BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_json_check_rejects_a_hand_edit(built, tmp_path, what, old, new, mentioned):
    text = (DASHBOARDS / "petmesh-node.json").read_text()
    assert old in text, f"nothing to break ({old!r} not found)"
    broken = tmp_path / "petmesh-node.json"
    broken.write_text(text.replace(old, new, 1))
    result = check_json(built, broken)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{what} accepted:\n{output}"
    assert f"{broken}:" in output, f"the error does not point into the JSON file:\n{output}"
    assert mentioned in output, f"the error does not mention {mentioned!r}:\n{output}"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_json_is_canonical(path):
    """Sorted keys, two-space indent, final newline: what the generator writes."""
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_uids_are_stable_and_unique():
    uids = {path.name: load(path)["uid"] for path in dashboard_files()}
    assert uids == UIDS
    assert len(set(uids.values())) == len(uids)


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_variables(path, exported_metrics):
    dashboard = load(path)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus", "no prometheus `datasource` variable"
    for name, query in REQUIRED_VARIABLES.get(path.name, {}).items():
        assert name in variables, f"variable {name} missing"
        assert variables[name]["query"] == query
    for name, variable in variables.items():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, f"variable {name} does not query $datasource"
    recorded = promql.recorded_names(RULES)
    for name, selector, _label in promql.variable_selectors(path):
        for metric in promql.metric_names(selector):
            assert known_metric(metric, recorded, exported_metrics), f"variable {name} reads unknown {metric}"
    used = set()
    for expr in promql.raw_expressions_of_dashboard(path):
        used |= promql.variables_used(expr)
    undefined = used - set(variables) - set(promql.INTERVAL_VARIABLES)
    assert not undefined, f"expressions use undefined variables {sorted(undefined)}"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_panels(path):
    dashboard = load(path)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    taken = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, f"{panel['title']}: {pos}"
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
    for panel in promql.panels_of(dashboard):
        title = panel["title"]
        assert panel.get("description", "").strip(), f"{title}: no description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"
        assert panel["datasource"] == DATASOURCE, f"{title}: datasource {panel['datasource']}"
        assert panel["targets"], f"{title}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, f"{title}: a query not on $datasource"
            assert target["expr"].strip(), f"{title}: empty query"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_expressions_parse_and_read_known_metrics(path, exported_metrics):
    recorded = promql.recorded_names(RULES)
    exprs = promql.expressions_of_dashboard(path)
    assert exprs
    for expr in exprs:
        for name, matchers in promql.selectors(expr):
            assert name is not None, f"a selector without a metric name in {expr}"
            assert known_metric(name, recorded, exported_metrics), f"{name} is neither exported nor recorded ({expr})"
            for prefix, job in JOBS.items():
                if name.startswith(prefix):
                    assert ("job", "Equal", job) in matchers, f"{name} without job=\"{job}\" in {expr}"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboards_prefer_recording_rules(path):
    """Histograms that recording rules already aggregate are read through those rules."""
    rules = [r for r in promql.load_rules(RULES) if "record" in r]
    covered = {n for r in rules for n in promql.metric_names(r["expr"]) if n.endswith("_bucket") and ":" not in n}
    assert covered
    for expr in promql.expressions_of_dashboard(path):
        used = promql.metric_names(expr) & covered
        assert not used, f"{sorted(used)} read directly; use the recording rules built from it: {expr}"


def test_expressions_are_valid_for_the_prometheus_in_use(tmp_path):
    """promtool (Prometheus 2.42 here) parses every dashboard expression: catches PromQL newer
    than the server that will run it."""
    rules = []
    for path in dashboard_files():
        for i, expr in enumerate(promql.expressions_of_dashboard(path)):
            name = f"dashboard_check:{path.stem.replace('-', '_')}:{i}"
            rules.append({"record": name, "expr": expr})
    rules_file = tmp_path / "dashboards.rules.yml"
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run(["promtool", "check", "rules", rules_file])
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout


def test_exported_metrics_used_somewhere(exported_metrics):
    """Every exported metric is shown on a dashboard or used by a rule."""
    histograms = {n for n, kind in exported_metrics.items() if kind == "histogram"}
    used = set()
    for expr in promql.expressions_of_rules(RULES):
        used |= promql.metric_names(expr)
    for path in dashboard_files():
        for expr in promql.expressions_of_dashboard(path):
            used |= promql.metric_names(expr)
        for _name, selector, _label in promql.variable_selectors(path):
            used |= promql.metric_names(selector)
    used = {promql.base_metric(n, histograms) for n in used}
    unused = set(exported_metrics) - used
    assert not unused, f"exported but shown nowhere: {sorted(unused)}"
