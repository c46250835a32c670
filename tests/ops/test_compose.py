"""docker-compose.cluster.yml: valid for Compose v2 (`docker-compose config`, the official
binary, no engine needed), every petmesh service's environment accepted by the binary's own
`check-config`, start order gated by health, containers locked down, and every file it mounts
present. Its Prometheus configuration runs for real in test_live_prometheus.py."""

import json
import re

import pytest
import yaml

from conftest import REPO, run

COMPOSE = REPO / "docker-compose.cluster.yml"
ENV_EXAMPLE = REPO / ".env.example"
NODES = ["node-1", "node-2", "node-3"]
#: Which binary reads each petmesh service's environment.
PETMESH_SERVICES = {"migrate": "petmesh-node", "balancer": "petmesh-balancer"} | {
    node: "petmesh-node" for node in NODES
}


def config(compose=COMPOSE, env_file=ENV_EXAMPLE, check=True):
    """The resolved configuration (`docker-compose config --format json`)."""
    result = run(
        ["docker-compose", "-f", compose, "--env-file", env_file, "config", "--format", "json"],
        check=check,
        cwd=REPO,
    )
    return json.loads(result.stdout) if result.returncode == 0 else result


@pytest.fixture(scope="module")
def services():
    return config()["services"]


def check_config(bin_dir, binary, environment):
    """Runs `<binary> check-config` with exactly `environment`."""
    env = {k: v for k, v in environment.items() if v is not None}
    return run([bin_dir / binary, "check-config"], check=False, env=env)


def seconds(duration):
    """`20s`, `1m30s` → seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


def test_compose_config_is_valid():
    run(["docker-compose", "-f", COMPOSE, "--env-file", ENV_EXAMPLE, "config", "-q"], cwd=REPO)


def test_a_missing_secret_is_refused_by_name(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "\n".join(l for l in ENV_EXAMPLE.read_text().splitlines() if not l.startswith("PETMESH_JWT_SECRET="))
    )
    result = config(env_file=env_file, check=False)
    assert result.returncode != 0
    assert "PETMESH_JWT_SECRET" in result.stderr, result.stderr


def test_env_example_sets_every_required_variable():
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    documented = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert required and required <= documented, required - documented


def test_the_stack_has_every_part(services):
    assert set(services) == {"redis", "postgres", "migrate", "balancer", "prometheus", "grafana", *NODES}
    assert services["balancer"]["ports"][0]["target"] == 8080
    assert {p["target"] for p in services["balancer"]["ports"]} == {8080, 8081}
    volumes = {m["target"]: m for s in ("redis", "postgres") for m in services[s]["volumes"]}
    assert volumes["/data"]["type"] == volumes["/var/lib/postgresql/data"]["type"] == "volume"


@pytest.mark.parametrize("service", sorted(PETMESH_SERVICES))
def test_check_config_accepts_each_petmesh_service(bin_dir, services, service):
    result = check_config(bin_dir, PETMESH_SERVICES[service], services[service]["environment"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "configuration ok"


def test_check_config_names_a_misspelt_setting(bin_dir, tmp_path):
    broken = tmp_path / "docker-compose.cluster.yml"
    broken.write_text(
        COMPOSE.read_text().replace(
            "PETMESH_NODE__NODE_ID: node-2", "PETMESH_NODE__NODE_ID: node-2\n      PETMESH_NODE__SERVER__PROT: \"9000\""
        )
    )
    environment = config(compose=broken)["services"]["node-2"]["environment"]
    result = check_config(bin_dir, "petmesh-node", environment)
    assert result.returncode == 64, result
    assert "PETMESH_NODE__SERVER__PROT" in result.stderr


def test_start_order_is_gated_by_health(services):
    def gates(service):
        return {dep: spec["condition"] for dep, spec in services[service].get("depends_on", {}).items()}

    assert gates("migrate") == {"postgres": "service_healthy"}
    for node in NODES:
        assert gates(node) == {"migrate": "service_completed_successfully", "redis": "service_healthy"}
    assert gates("balancer") == {"redis": "service_healthy"} | {n: "service_healthy" for n in NODES}
    assert gates("prometheus") == {"balancer": "service_healthy"}
    assert gates("grafana") == {"prometheus": "service_healthy"}
    # Everything gated on with service_healthy has a health check.
    for name, service in services.items():
        for dep, condition in gates(name).items():
            if condition == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), dep
    assert services["balancer"]["healthcheck"]["test"] == ["CMD", "petmesh-balancer", "healthcheck"]
    assert services["migrate"]["restart"] == "no"


def test_petmesh_containers_are_locked_down_and_drain_in_time(services):
    for name in PETMESH_SERVICES:
        service = services[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    for node in NODES:
        env = services[node]["environment"]
        drain = int(env["PETMESH_NODE__SERVER__DRAIN_DELAY_MS"]) / 1000 + int(
            env["PETMESH_NODE__SERVER__GRACE_PERIOD_SECS"]
        )
        # Docker SIGKILLs after stop_grace_period: the drain must fit, with room for jobs.
        assert seconds(services[node]["stop_grace_period"]) >= drain + 5, node


def test_mounted_files_exist_and_grafana_is_provisioned(services):
    for service in services.values():
        for mount in service.get("volumes", []):
            if mount["type"] == "bind":
                assert (REPO / mount["source"]).exists(), mount["source"]
    grafana = services["grafana"]
    mounts = {m["target"]: m["source"] for m in grafana["volumes"] if m["type"] == "bind"}
    provisioning = REPO / mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and datasource["isDefault"]
    (provider,) = yaml.safe_load((provisioning / "dashboards/petmesh.yml").read_text())["providers"]
    dashboards = REPO / mounts[provider["options"]["path"]]
    assert sorted(dashboards.glob("*.json")), dashboards
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / home.rsplit("/", 1)[1]).is_file(), home
    prometheus = {m["target"]: m["source"] for m in services["prometheus"]["volumes"] if m["type"] == "bind"}
    assert sorted((REPO / prometheus["/etc/prometheus/rules"]).glob("*.yml")), "no rules mounted"


def test_nodes_trust_exactly_the_balancers_forwarded_for(services):
    # Login lock-outs (and rate limits) go by client address: only the balancer may name it.
    balancer_ip = services["balancer"]["networks"]["default"]["ipv4_address"]
    for node in NODES:
        trusted = services[node]["environment"]["PETMESH_NODE__RATE_LIMIT__TRUSTED_PROXIES"]
        assert trusted == f"{balancer_ip}/32", node
