"""A real 3-node cluster and balancer (`petmesh-dev cluster`), scraped by a real Prometheus
configured with docker-compose's own compose/prometheus.yml (the balancer's address rewritten
to where it runs here, intervals shortened) and loaded with the repository's rules: every
target must be up, every rule must evaluate without error, and every rule and dashboard
expression must evaluate and name only metrics that the cluster exports (or that a recording
rule defines)."""

import json
import urllib.parse

import pytest
import yaml

import promql
from conftest import REPO
from live import ADMIN_PASSWORD, Process, free_port, get, wait_for

RULES = REPO / "monitoring/prometheus/rules/petmesh.rules.yml"
DASHBOARDS = sorted((REPO / "monitoring/grafana/dashboards").glob("*.json"))
COMPOSE_PROMETHEUS = REPO / "compose/prometheus.yml"


@pytest.fixture(scope="module")
def traffic(cluster):
    """Requests of every kind the dashboards show: logins, reads, an order and its payment."""
    entry = cluster["entry"]
    status, tokens = get(f"{entry}/api/v1/auth/login", {"username": "admin", "password": ADMIN_PASSWORD})
    assert status == 200, tokens
    auth = {"authorization": f"Bearer {tokens['accessToken']}"}
    status, pets = get(f"{entry}/api/v1/pets?status=available&limit=5", headers=auth)
    assert status == 200, pets
    for pet in pets["items"]:
        get(f"{entry}/api/v1/pets/{pet['id']}", headers=auth)
    get(f"{entry}/api/v1/pets/999999999", headers=auth)
    status, order = get(
        f"{entry}/api/v1/store/orders", {"petId": pets["items"][0]["id"], "quantity": 1, "paymentToken": "tok_ok"}, auth
    )
    assert status == 201, order
    wait_for(
        "the order is paid",
        lambda: get(f"{entry}/api/v1/store/orders/{order['id']}", headers=auth)[1]["status"] == "approved",
    )
    return auth


def compose_config_for(admin_url):
    """compose/prometheus.yml with the balancer where it runs here, 1 s intervals, and the rules
    loaded from the repository."""
    config = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    admin = urllib.parse.urlsplit(admin_url).netloc
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"], config["rule_files"]
    config["rule_files"] = [str(RULES.parent / "*.yml")]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"petmesh-balancer", "petmesh-node"}
    assert jobs["petmesh-balancer"]["static_configs"] == [{"targets": ["balancer:8081"]}]
    jobs["petmesh-balancer"]["static_configs"] = [{"targets": [admin]}]
    (sd,) = jobs["petmesh-node"]["http_sd_configs"]
    assert sd["url"] == "http://balancer:8081/admin/sd"
    sd["url"] = f"http://{admin}/admin/sd"
    sd["refresh_interval"] = "1s"
    return config


@pytest.fixture(scope="module")
def prometheus(cluster, traffic, tmp_path_factory):
    """A real Prometheus scraping the cluster; its base URL."""
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(yaml.safe_dump(compose_config_for(cluster["admin"])))
    port = free_port()
    process = Process(
        [
            "prometheus",
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        work / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("Prometheus is ready", lambda: get(f"{url}/-/ready")[0] == 200 or process.proc.poll() is not None)
        assert process.proc.poll() is None, process.text()
        yield url
    finally:
        process.stop()


def query(prometheus, expr):
    """An instant query: (ok, result or error)."""
    status, body = get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if status == 200 and body.get("status") == "success":
        return True, body["data"]["result"]
    return False, body.get("error", body) if isinstance(body, dict) else body


@pytest.fixture(scope="module")
def targets(prometheus):
    """The `up` series once all 4 targets (3 nodes through /admin/sd, the balancer) are up,
    by job."""

    def all_up():
        ok, result = query(prometheus, "up")
        by_job = {}
        for series in result if ok else []:
            by_job.setdefault(series["metric"]["job"], []).append(series)
        nodes, balancers = by_job.get("petmesh-node", []), by_job.get("petmesh-balancer", [])
        ready = len(nodes) == 3 and len(balancers) == 1 and all(s["value"][1] == "1" for s in nodes + balancers)
        return ready and by_job

    return wait_for("3 nodes and the balancer are up", all_up)


def test_every_target_is_up_with_the_labels_dashboards_use(targets):
    nodes = targets["petmesh-node"]
    assert sorted(s["metric"]["node"] for s in nodes) == ["node-1", "node-2", "node-3"]
    assert {s["metric"]["cluster"] for s in nodes} == {"local"}


def test_every_rule_evaluates_without_error(prometheus, targets):
    def evaluated():
        status, body = get(f"{prometheus}/api/v1/rules")
        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
        done = rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules)
        return done and rules

    rules = wait_for("every rule has been evaluated", evaluated)
    assert len(rules) == len(promql.expressions_of_rules(RULES))
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, broken


@pytest.fixture(scope="module")
def exported(exported_metrics, targets):
    """Series names the cluster exports (a histogram's `_bucket`, `_sum` and `_count`), those
    the rules record, and those Prometheus writes itself."""
    names = set()
    for family, kind in exported_metrics.items():
        names |= {family + s for s in promql.HISTOGRAM_SUFFIXES} if kind == "histogram" else {family}
    synthetic = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added", "ALERTS"}
    return names | promql.recorded_names(RULES) | synthetic


def unknown_metrics(expressions, exported):
    """{expression: names it uses that nobody exports}, for the expressions that have any."""
    unknown = {}
    for expr in expressions:
        missing = sorted(set(promql.metric_names(expr)) - exported)
        if missing:
            unknown[expr] = missing
    return unknown


def failing(prometheus, expressions):
    """{expression: error} for those Prometheus refuses to evaluate."""
    errors = {}
    for expr in expressions:
        ok, result = query(prometheus, expr)
        if not ok:
            errors[expr] = result
    return errors


def all_expressions():
    expressions = list(promql.expressions_of_rules(RULES))
    for dashboard in DASHBOARDS:
        expressions += promql.expressions_of_dashboard(dashboard)
    return sorted(set(expressions))


def test_every_expression_names_only_exported_metrics(exported):
    assert DASHBOARDS, "no dashboards generated"
    expressions = all_expressions()
    assert len(expressions) > 20
    assert not unknown_metrics(expressions, exported)


def test_every_expression_evaluates(prometheus, exported):
    assert not failing(prometheus, all_expressions())


def test_a_dashboard_naming_a_missing_metric_is_caught(prometheus, exported, tmp_path):
    dashboard = json.loads(DASHBOARDS[0].read_text())
    target = next(
        t for p in promql.panels_of(dashboard) for t in p.get("targets", []) if t.get("expr")
    )
    target["expr"] = 'sum(rate(petmesh_node_no_such_metric_total{node=~"$node"}[$__rate_interval]))'
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(dashboard))
    unknown = unknown_metrics(promql.expressions_of_dashboard(broken), exported)
    assert list(unknown.values()) == [["petmesh_node_no_such_metric_total"]], unknown
    # And an expression Prometheus cannot parse is reported, not skipped.
    assert list(failing(prometheus, ["sum(rate(up[5m])"])) == ["sum(rate(up[5m])"]
