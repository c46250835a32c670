"""PromQL of the monitoring artefacts: the expressions of the Prometheus rules file and of the
Grafana dashboards, made parseable, and the metric names they read.

Used by test_rules.py and test_dashboards.py, and by the live check that evaluates every
expression against a real Prometheus scraping a real cluster.
"""

import json
import pathlib
import re

import promql_parser
import yaml

# Grafana's interval variables, replaced by a duration Prometheus accepts.
INTERVAL_VARIABLES = ("__rate_interval", "__interval", "__range")
DEFAULT_INTERVAL = "5m"
# What any other variable becomes: inside a regex matcher (`node=~"$node"`) it matches everything.
DEFAULT_VALUE = ".*"

# $name, ${name}, ${name:format}, [[name]]
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")

# Suffixes of the series a histogram exports.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def substitute(expr, variables=None, interval=DEFAULT_INTERVAL):
    """`expr` with Grafana variables replaced: interval variables by `interval`, the others by
    `variables[name]` when given, else by `.*`."""
    variables = variables or {}

    def replace(match):
        name = match.group(1) or match.group(2) or match.group(3)
        if name in INTERVAL_VARIABLES:
            return interval
        return variables.get(name, DEFAULT_VALUE)

    return _VARIABLE.sub(replace, expr)


def variables_used(expr):
    """Names of the Grafana variables `expr` refers to."""
    return {m.group(1) or m.group(2) or m.group(3) for m in _VARIABLE.finditer(expr)}


def load_rules(path):
    """The rules of a Prometheus rules file, each a dict with its group name under "group"."""
    doc = yaml.safe_load(pathlib.Path(path).read_text())
    rules = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            rules.append({**rule, "group": group["name"]})
    return rules


def expressions_of_rules(path):
    """The PromQL expression of every rule (recording and alerting) of a rules file."""
    return [rule["expr"].strip() for rule in load_rules(path)]


def recorded_names(path):
    """Names of the recording rules of a rules file."""
    return {rule["record"] for rule in load_rules(path) if "record" in rule}


def panels_of(dashboard):
    """Every panel of a dashboard (a parsed JSON object), rows' nested panels included; rows
    themselves are left out."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panels_of(panel)
        else:
            yield panel


def raw_expressions_of_dashboard(path):
    """Every target expression of a dashboard file, as written (variables not replaced)."""
    dashboard = json.loads(pathlib.Path(path).read_text())
    return [
        target["expr"]
        for panel in panels_of(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def expressions_of_dashboard(path, variables=None, interval=DEFAULT_INTERVAL):
    """Every target expression of a dashboard file, with Grafana variables replaced so that
    Prometheus (and promql_parser) can parse them: `$__rate_interval` and the other interval
    variables become `interval`, other variables `variables[name]` or `.*`."""
    return [substitute(e, variables, interval) for e in raw_expressions_of_dashboard(path)]


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*$", re.S)


def variable_selectors(path):
    """The series selectors of the dashboard's `label_values(selector, label)` variables, as
    (variable name, selector, label) tuples."""
    dashboard = json.loads(pathlib.Path(path).read_text())
    found = []
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        if variable.get("type") == "query" and isinstance(query, str):
            match = _LABEL_VALUES.match(query)
            if match:
                found.append((variable["name"], match.group(1), match.group(2)))
    return found


def parse(expr):
    """Parses `expr`; a syntax error names the expression."""
    try:
        return promql_parser.parse(expr)
    except ValueError as err:
        raise ValueError(f"cannot parse {expr!r}: {err}") from err


def selectors(expr):
    """Every vector selector of `expr` (those inside range selectors and subqueries too), as
    (metric name or None, [(label, op, value), ...])."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [(m.name, str(m.op).rsplit(".", 1)[-1], m.value) for m in node.matchers.matchers]
            name = node.name
            if name is None:
                name = next((v for (n, op, v) in matchers if n == "__name__" and op == "Equal"), None)
            found.append((name, matchers))

    promql_parser.walk(parse(expr), visit)
    return found


def metric_names(expr):
    """Names of the metrics `expr` reads (a selector without a fixed name is reported as None)."""
    return {name for name, _ in selectors(expr)}


def base_metric(name, histograms):
    """The histogram a `_bucket`/`_sum`/`_count` series belongs to, if it is one of
    `histograms`; else `name`."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name
