"""The Helm chart helm/petmesh: linted, rendered with default and non-default values and
validated against the Kubernetes 1.28 and 1.31 schemas, its values schema refusing bad values,
its shutdown timing derived from the drain settings, its pods locked down, its migration hook,
its monitoring wired like the setup outside Kubernetes, and — for real — the environment every
petmesh container would get accepted by the binaries' own `check-config`."""

import functools
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile

import pytest
import yaml

import live
from conftest import REPO, run
from helm_k8s import find, find_all, relabel, resolve_env, source_data

CHART = REPO / "helm" / "petmesh"
RULES = REPO / "monitoring" / "prometheus" / "rules" / "petmesh.rules.yml"
DASHBOARDS = REPO / "monitoring" / "grafana" / "dashboards"
RELEASE, NAMESPACE = "shop", "petmesh"
KUBE_VERSIONS = ("1.28", "1.31")
CRD_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
# kubernetes-validate has no schemas for custom resources; it says so, and nothing else may be said.
CRD_WARNING = re.compile(
    rf"^WARN .* Couldn't find schema for kind ({'|'.join(CRD_KINDS)}) with api version monitoring\.coreos\.com/v1 "
)
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's when there: 10x faster

SECRETS = {
    "jwtSecret": "an-hs256-key-of-more-than-32-bytes!",
    "databaseUrl": "postgres://petmesh:pw@db.example:5432/petmesh",
    "redisUrl": "redis://:pw@redis.example:6379/0",
}
# The chart's defaults plus the values it cannot do without.
DEFAULT = {"secrets": SECRETS}
# Everything optional on: autoscaling, bundled databases, existingSecret, PodMonitors,
# PrometheusRule, a LoadBalancer with the admin port on it, extra settings and variables.
FULL = {
    "clusterName": "shop-eu",
    "image": {"repository": "registry.example/petmesh", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "registry"}],
    "secrets": {"existingSecret": "shop-secrets", "keys": {"jwtSecret": "jwt-secret"}},
    "node": {
        "autoscaling": {
            "enabled": True,
            "minReplicas": 3,
            "maxReplicas": 12,
            "targetCPUUtilizationPercentage": 60,
        },
        "drain": {
            "preStopSeconds": 3,
            "drainDelaySeconds": 7,
            "gracePeriodSeconds": 20,
            "jobsMarginSeconds": 11,
        },
        "pdb": {"minAvailable": "50%"},
        "config": {
            # Numbers from a values file reach Helm as floats: they must stay integers.
            "PETMESH_NODE__SERVER__BODY_LIMIT_BYTES": 2097152,
            "PETMESH_NODE__PAYMENTS__SUCCESS_RATE": 0.9,
            "PETMESH_NODE__DATABASE__MIGRATE_ON_START": False,
            "PETMESH_NODE__LOG__LEVEL": "petmesh_node=debug,info",
        },
        "extraEnv": [
            {"name": "PETMESH_NODE__CLUSTER__WEIGHT", "value": "2"},
            {"name": "PETMESH_NODE__REALTIME__ALLOWED_ORIGINS", "value": "https://$(POD_IP).example"},
        ],
        "podAntiAffinity": "hard",
        "topologySpread": {"whenUnsatisfiable": "DoNotSchedule", "maxSkew": 2},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "api", "effect": "NoSchedule"}],
        "priorityClassName": "petmesh-high",
        "podAnnotations": {"example.com/team": "shop"},
    },
    "balancer": {
        "replicas": 3,
        "service": {
            "type": "LoadBalancer",
            "port": 8000,
            "externalTrafficPolicy": "Local",
            "loadBalancerSourceRanges": ["10.0.0.0/8"],
            "admin": {"expose": "same"},
        },
        "config": {
            "PETMESH_BALANCER__STRATEGY__HTTP": "consistent-hash",
            "PETMESH_BALANCER__STRATEGY__HASH_KEY": "jwt-sub",
            "PETMESH_BALANCER__WORKERS": 2,
        },
        "extraEnv": [{"name": "PETMESH_BALANCER__RETRY__MAX_ATTEMPTS", "value": "2"}],
    },
    "metrics": {
        "podMonitor": {
            "enabled": True,
            "labels": {"release": "kube-prometheus-stack"},
            "scrapeTimeout": "10s",
        },
        "prometheusRule": {"enabled": True},
    },
    "redis": {"bundled": {"enabled": True, "persistence": {"enabled": True}}},
    "postgresql": {"bundled": {"enabled": True}},
}
# External databases from your own Secret under other key names; ServiceMonitors; NodePort.
EXISTING = {
    "secrets": {
        "existingSecret": "shop-secrets",
        "keys": {
            "jwtSecret": "jwt",
            "databaseUrl": "db-url",
            "redisUrl": "redis-url",
            "adminPassword": "admin",
        },
    },
    "serviceAccount": {"create": False, "name": "shop"},
    "node": {"replicas": 3, "podAntiAffinity": "none", "topologySpread": {"enabled": False}},
    "balancer": {"service": {"type": "NodePort", "nodePort": 30080}},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "grafana": {"dashboards": {"enabled": False}},
}
CASES = {"default": DEFAULT, "full": FULL, "existing": EXISTING}

# The Secrets users of existingSecret create themselves, keys as in FULL and EXISTING.
USER_SECRETS = {
    "full": {"jwt-secret": SECRETS["jwtSecret"], "PETMESH_ADMIN_PASSWORD": "admin-password"},
    "existing": {
        "jwt": SECRETS["jwtSecret"],
        "db-url": SECRETS["databaseUrl"],
        "redis-url": SECRETS["redisUrl"],
    },
}


@pytest.fixture(scope="module", autouse=True)
def monitoring_files():
    """The chart links to the repository's one rules file and dashboards; helm refuses to load
    a chart holding a dangling link, so without them nothing here can run."""
    for link, target in (
        (CHART / "files" / "petmesh.rules.yml", RULES),
        (CHART / "files" / "dashboards", DASHBOARDS),
    ):
        assert link.is_symlink(), f"{link} must be a symlink to {target}, not a copy"
        if not link.exists():
            pytest.skip(
                f"{target.relative_to(REPO)} does not exist yet: helm cannot load the chart (dangling {link.name})"
            )
        assert link.resolve() == target.resolve(), f"{link} points to {link.resolve()}, not {target}"


def helm_template(values, *sets, kube="1.31"):
    """`helm template` of the chart with `values` (a values file) and `--set`s."""
    return _helm_template(json.dumps(values, sort_keys=True), sets, kube)


@functools.cache
def _helm_template(values_json, sets, kube):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "values.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(json.loads(values_json), f)
        args = template_command(CHART, path, kube)
        for s in sets:
            args += ["--set", s]
        return run(args, check=False)


def template_command(chart, values_file, kube):
    return ["helm", "template", RELEASE, chart, "-n", NAMESPACE, "--kube-version", kube, "-f", values_file]


def render(values, *sets, kube="1.31"):
    """The rendered objects (parsed afresh on every call: tests may change them)."""
    result = helm_template(values, *sets, kube=kube)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.load_all(result.stdout, Loader=LOADER) if d]


def render_case(case, *sets, kube="1.31"):
    """A case's objects, with the Secret its user would have created beside the chart's."""
    docs = render(CASES[case], *sets, kube=kube)
    if case in USER_SECRETS:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "shop-secrets"},
                "stringData": USER_SECRETS[case],
            }
        )
    return docs


def name(component):
    return f"{RELEASE}-petmesh-{component}"


def pod_spec(docs, kind, component):
    return find(docs, kind, name(component))["spec"]["template"]["spec"]


def container(docs, kind, component):
    (c,) = pod_spec(docs, kind, component)["containers"]
    return c


def pod_fields(docs, kind, component, zone="eu-west-1a"):
    """fieldRef values of one simulated pod of a workload; `zone` is the label PodTopologyLabels
    admission copies from the node (None: a cluster without it)."""
    labels = dict(find(docs, kind, name(component))["spec"]["template"]["metadata"]["labels"])
    if zone is not None:
        labels["topology.kubernetes.io/zone"] = zone
    return {
        "metadata.name": f"{name(component)}-7d9f8-abcde",
        "metadata.namespace": NAMESPACE,
        "status.podIP": "10.1.2.3",
        "labels": labels,
    }


# The petmesh workloads: (kind, component, binary).
WORKLOADS = pytest.mark.parametrize(
    "kind, component, binary",
    [
        ("Deployment", "node", "petmesh-node"),
        ("Job", "migrate", "petmesh-node"),
        ("Deployment", "balancer", "petmesh-balancer"),
    ],
    ids=["node", "migrate", "balancer"],
)


def workload_env(docs, kind, component, zone="eu-west-1a"):
    return resolve_env(container(docs, kind, component), docs, pod_fields(docs, kind, component, zone))


def check_config(bin_dir, binary, env):
    """The binary's verdict on exactly this environment (nothing else: no PATH, no HOME)."""
    return subprocess.run([str(bin_dir / binary), "check-config"], env=env, capture_output=True, text=True)


# === helm lint and Kubernetes schemas ===


@pytest.mark.parametrize("case", CASES)
def test_chart_lints_strictly(case, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(CASES[case]))
    result = run(["helm", "lint", "--strict", CHART, "--kube-version", "1.28", "-f", values])
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("case", CASES)
def test_rendered_manifests_are_valid_kubernetes(case, tmp_path):
    for kube in KUBE_VERSIONS:
        result = helm_template(CASES[case], kube=kube)
        assert result.returncode == 0, result.stderr
        manifest = tmp_path / f"{case}-{kube}.yaml"
        manifest.write_text(result.stdout)
        docs = [d for d in yaml.load_all(result.stdout, Loader=LOADER) if d]
        checked = run(["kubernetes-validate", "--strict", "-k", kube, manifest], check=False)
        lines = checked.stdout.splitlines() + checked.stderr.splitlines()
        # Any warning but the custom resources' fails like an error, and every other object passed.
        problems = [line for line in lines if not line.startswith("INFO") and not CRD_WARNING.match(line)]
        assert checked.returncode == 0 and not problems, "\n".join(problems or lines)
        passed = [line for line in lines if line.startswith("INFO") and " passed for resource " in line]
        assert len(passed) == len([d for d in docs if d["kind"] not in CRD_KINDS]), "\n".join(lines)


def test_kubernetes_older_than_1_28_is_refused():
    result = helm_template(DEFAULT, kube="1.27")
    assert result.returncode != 0
    assert "chart requires kubeVersion: >=1.28.0-0" in result.stderr, result.stderr


# === values schema and required values ===


@pytest.mark.parametrize(
    "setting, message",
    ids=[
        "replicas-not-a-number",
        "replicas-negative",
        "unknown-top-level-key",
        "unknown-node-key",
        "unknown-service-type",
        "grace-not-a-number",
        "jwt-secret-too-short",
        "unknown-redis-mode",
    ],
    argvalues=[
        ("node.replicas=three", "node.replicas: Invalid type. Expected: integer, given: string"),
        ("node.replicas=-1", "node.replicas: Must be greater than or equal to 0"),
        ("replicas=3", "(root): Additional property replicas is not allowed"),
        ("node.replica=3", "node: Additional property replica is not allowed"),
        (
            "balancer.service.type=Ingress",
            "balancer.service.type: balancer.service.type must be one of the following",
        ),
        (
            "node.drain.gracePeriodSeconds=ten",
            "node.drain.gracePeriodSeconds: Invalid type. Expected: integer, given: string",
        ),
        ("secrets.jwtSecret=short", "secrets.jwtSecret: String length must be greater than or equal to 32"),
        ("redis.mode=sentinel", "redis.mode: redis.mode must be one of the following"),
    ],
)
def test_schema_rejects_bad_values(setting, message):
    result = helm_template(DEFAULT, setting)
    assert result.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "missing, message",
    ids=["jwtSecret", "databaseUrl", "redisUrl"],
    argvalues=[
        ("jwtSecret", "secrets.jwtSecret is required"),
        ("databaseUrl", "secrets.databaseUrl is required"),
        ("redisUrl", "secrets.redisUrl is required"),
    ],
)
def test_missing_secrets_fail_with_a_clear_message(missing, message):
    secrets = {k: v for k, v in SECRETS.items() if k != missing}
    result = helm_template({"secrets": secrets})
    assert result.returncode != 0, f"rendered without secrets.{missing}"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "values, sets, message",
    ids=[
        "managed-node-setting",
        "managed-balancer-setting",
        "url-and-bundled",
        "cluster-mode-and-bundled",
        "hpa-without-cpu-request",
        "both-monitors",
        "servicemonitor-without-admin-port",
    ],
    argvalues=[
        (
            DEFAULT,
            ["node.config.PETMESH_NODE__SERVER__PORT=9000"],
            "node.config.PETMESH_NODE__SERVER__PORT is set by the chart",
        ),
        (DEFAULT, ["balancer.config.REDIS_URL=redis://x"], "balancer.config.REDIS_URL is set by the chart"),
        (
            DEFAULT,
            ["redis.bundled.enabled=true"],
            "secrets.redisUrl must be empty with redis.bundled.enabled=true",
        ),
        (
            FULL,
            ["redis.mode=cluster"],
            "redis.mode=cluster needs a Redis Cluster, and the bundled Redis is one server",
        ),
        (
            DEFAULT,
            ["node.autoscaling.enabled=true", "node.resources.requests=null"],
            "node.autoscaling.enabled needs node.resources.requests.cpu",
        ),
        (FULL, ["metrics.serviceMonitor.enabled=true"], "metrics.podMonitor and metrics.serviceMonitor"),
        (
            EXISTING,
            ["balancer.service.admin.expose=off"],
            "metrics.serviceMonitor needs a Service with the balancer's admin port",
        ),
    ],
)
def test_contradictory_values_fail_with_a_clear_message(values, sets, message):
    result = helm_template(values, *sets)
    assert result.returncode != 0, f"{sets} rendered"
    assert message in result.stderr, result.stderr


# === workloads ===


def test_node_replicas_are_taken_from_values():
    docs = render(DEFAULT, "node.replicas=3")
    assert find(docs, "Deployment", name("node"))["spec"]["replicas"] == 3
    assert not find_all(docs, "HorizontalPodAutoscaler")


def test_two_balancers_by_default_and_never_both_evicted_at_once():
    """Two balancers share the WebSocket limit per client address through Redis (issue 13)."""
    docs = render(DEFAULT)
    assert find(docs, "Deployment", name("balancer"))["spec"]["replicas"] == 2
    assert find(docs, "PodDisruptionBudget", name("balancer"))["spec"]["maxUnavailable"] == 1
    docs = render(DEFAULT, "balancer.replicas=3")
    assert find(docs, "Deployment", name("balancer"))["spec"]["replicas"] == 3


def test_autoscaler_drives_the_node_deployment_which_leaves_replicas_to_it():
    docs = render_case("full")
    deployment = find(docs, "Deployment", name("node"))
    assert "replicas" not in deployment["spec"]
    (hpa,) = find_all(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}},
        }
    ]


@pytest.mark.parametrize("case", ["default", "full"])
def test_termination_grace_covers_the_whole_node_drain(case):
    values = yaml.safe_load((CHART / "values.yaml").read_text())["node"]["drain"]
    values.update(CASES[case].get("node", {}).get("drain", {}))
    docs = render_case(case)
    spec = pod_spec(docs, "Deployment", "node")
    env = workload_env(docs, "Deployment", "node")
    # The documented formula (values.yaml node.drain), and what the node is told.
    grace = spec["terminationGracePeriodSeconds"]
    assert (
        grace
        == values["preStopSeconds"]
        + values["drainDelaySeconds"]
        + values["gracePeriodSeconds"]
        + values["jobsMarginSeconds"]
    )
    assert grace > values["preStopSeconds"] + values["drainDelaySeconds"] + values["gracePeriodSeconds"]
    assert env["PETMESH_NODE__SERVER__DRAIN_DELAY_MS"] == str(values["drainDelaySeconds"] * 1000)
    assert env["PETMESH_NODE__SERVER__GRACE_PERIOD_SECS"] == str(values["gracePeriodSeconds"])
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop == ["/bin/sleep", str(values["preStopSeconds"])]


def test_termination_grace_covers_the_balancer_shutdown():
    values = yaml.safe_load((CHART / "values.yaml").read_text())["balancer"]["drain"]
    docs = render_case("default")
    spec = pod_spec(docs, "Deployment", "balancer")
    env = workload_env(docs, "Deployment", "balancer")
    assert (
        spec["terminationGracePeriodSeconds"]
        == values["preStopSeconds"] + values["gracePeriodSeconds"] + values["marginSeconds"]
    )
    assert env["PETMESH_BALANCER__SHUTDOWN__GRACE_PERIOD_SECS"] == str(values["gracePeriodSeconds"])
    assert spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == [
        "/bin/sleep",
        str(values["preStopSeconds"]),
    ]


@pytest.mark.parametrize("case", CASES)
@WORKLOADS
def test_petmesh_pods_are_locked_down(case, kind, component, binary):
    docs = render_case(case)
    spec = pod_spec(docs, kind, component)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (10001, 10001, 10001)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"] + spec.get("initContainers", []):
        assert c["command"] == [f"/usr/local/bin/{binary}"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert not sc.get("privileged") and not sc["capabilities"].get("add")


def test_bundled_databases_run_unprivileged():
    docs = render_case("full")
    for component in ("redis", "postgresql"):
        spec = pod_spec(docs, "StatefulSet", component)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 999
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (c,) = spec["containers"]
        sc = c["securityContext"]
        assert (sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"], sc["capabilities"]["drop"]) == (
            True,
            False,
            ["ALL"],
        )


def test_probes_and_ports():
    docs = render_case("default")
    node = container(docs, "Deployment", "node")
    assert {p["name"]: p["containerPort"] for p in node["ports"]} == {"http": 8080}
    assert node["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert node["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    balancer = container(docs, "Deployment", "balancer")
    assert {p["name"]: p["containerPort"] for p in balancer["ports"]} == {"http": 8080, "admin": 8081}
    assert node["startupProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert balancer[probe]["httpGet"] == {"path": "/health", "port": "admin"}
    # The ports the binaries are told are the ones the probes and Services use.
    assert workload_env(docs, "Deployment", "node")["PETMESH_NODE__SERVER__PORT"] == "8080"
    env = workload_env(docs, "Deployment", "balancer")
    assert (env["PETMESH_BALANCER__LISTEN__PORT"], env["PETMESH_BALANCER__ADMIN__PORT"]) == ("8080", "8081")


@pytest.mark.parametrize("zone", ["eu-west-1a", None])
def test_node_identity_comes_from_the_pod(zone):
    docs = render_case("default")
    env = workload_env(docs, "Deployment", "node", zone=zone)
    fields = pod_fields(docs, "Deployment", "node")
    assert env["PETMESH_NODE__NODE_ID"] == fields["metadata.name"]
    assert env["PETMESH_NODE__CLUSTER__ADVERTISE_ADDR"] == "10.1.2.3:8080"
    assert env["PETMESH_NODE__CLUSTER__ZONE"] == (zone or "")
    assert env["PETMESH_NODE__CLUSTER__NAME"] == RELEASE
    assert workload_env(docs, "Deployment", "balancer")["PETMESH_BALANCER__CLUSTER__NAME"] == RELEASE


@pytest.mark.parametrize("case", ["default", "full"])
def test_scheduling_spreads_nodes_over_hosts_and_zones(case):
    docs = render_case(case)
    selector = find(docs, "Deployment", name("node"))["spec"]["selector"]
    spec = pod_spec(docs, "Deployment", "node")
    anti = spec["affinity"]["podAntiAffinity"]
    if case == "default":
        (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        term = term["podAffinityTerm"]
    else:
        (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname" and term["labelSelector"] == selector
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone" and spread["labelSelector"] == selector
    assert spread["whenUnsatisfiable"] == ("ScheduleAnyway" if case == "default" else "DoNotSchedule")


def test_disruption_budgets_select_their_pods():
    for case, expected in (("default", {"maxUnavailable": 1}), ("full", {"minAvailable": "50%"})):
        docs = render_case(case)
        pdb = find(docs, "PodDisruptionBudget", name("node"))
        assert {k: v for k, v in pdb["spec"].items() if k != "selector"} == expected
        assert pdb["spec"]["selector"] == find(docs, "Deployment", name("node"))["spec"]["selector"]
        assert (
            find(docs, "PodDisruptionBudget", name("balancer"))["spec"]["selector"]
            == find(docs, "Deployment", name("balancer"))["spec"]["selector"]
        )


@pytest.mark.parametrize(
    "case, kind, ports, admin_service",
    ids=["default", "full", "existing"],
    argvalues=[
        ("default", "ClusterIP", {"http": (80, "http")}, True),
        ("full", "LoadBalancer", {"http": (8000, "http"), "admin": (8081, "admin")}, False),
        ("existing", "NodePort", {"http": (80, "http")}, True),
    ],
)
def test_balancer_service(case, kind, ports, admin_service):
    docs = render_case(case)
    service = find(docs, "Service", name("balancer"))
    assert service["spec"]["type"] == kind
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == ports
    assert (
        service["spec"]["selector"]
        == find(docs, "Deployment", name("balancer"))["spec"]["selector"]["matchLabels"]
    )
    assert bool(find_all(docs, "Service", name("balancer-admin"))) == admin_service
    if kind == "NodePort":
        assert service["spec"]["ports"][0]["nodePort"] == 30080
    if kind == "LoadBalancer":
        assert (service["spec"]["externalTrafficPolicy"], service["spec"]["loadBalancerSourceRanges"]) == (
            "Local",
            ["10.0.0.0/8"],
        )


# === migration hook ===


@pytest.mark.parametrize(
    "case, events", [("default", "pre-install,pre-upgrade"), ("full", "post-install,pre-upgrade")]
)
def test_migration_is_a_hook_job_running_migrate(case, events):
    docs = render_case(case)
    job = find(docs, "Job", name("migrate"))
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == events
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    c = container(docs, "Job", "migrate")
    assert (c["command"], c["args"]) == (["/usr/local/bin/petmesh-node"], ["migrate"])
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # Everything the Job reads exists before it: hooks with a lower weight, or not the chart's.
    for secret in {ref["name"] for ref in secret_refs(c)} - {"shop-secrets"}:
        owner = find_all(docs, "Secret", secret)
        assert owner, f"the Job reads Secret {secret}, which is not rendered"
        hook = owner[0]["metadata"].get("annotations", {})
        if events.startswith("pre-install"):
            assert hook.get("helm.sh/hook") == events, f"Secret {secret} is created after the pre-install Job"
            assert int(hook["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert "envFrom" not in c, "a ConfigMap of the release does not exist before the hook"


def secret_refs(c):
    return [
        v["valueFrom"]["secretKeyRef"] for v in c.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})
    ]


# === check-config: the binaries judge the environment the chart gives them ===


@pytest.mark.parametrize("case", CASES)
@WORKLOADS
def test_binaries_accept_the_rendered_environment(case, kind, component, binary, bin_dir):
    docs = render_case(case)
    env = workload_env(docs, kind, component)
    result = check_config(bin_dir, binary, env)
    assert result.returncode == 0, f"{binary} check-config with {sorted(env)}:\n{result.stderr}"
    assert result.stdout.strip() == "configuration ok"


def test_rendered_environment_is_the_intended_one():
    docs = render_case("full")
    env = workload_env(docs, "Deployment", "node")
    password = source_data(docs, "Secret", name("postgresql"))["password"]
    redis_password = source_data(docs, "Secret", name("redis"))["password"]
    assert env["DATABASE_URL"] == f"postgres://petmesh:{password}@{name('postgresql')}:5432/petmesh"
    assert env["REDIS_URL"] == f"redis://:{redis_password}@{name('redis')}:6379"
    assert env["PETMESH_NODE__AUTH__JWT_SECRET"] == SECRETS["jwtSecret"]
    assert env["PETMESH_ADMIN_PASSWORD"] == "admin-password"
    assert env["PETMESH_NODE__SERVER__BODY_LIMIT_BYTES"] == "2097152"
    assert env["PETMESH_NODE__PAYMENTS__SUCCESS_RATE"] == "0.9"
    assert env["PETMESH_NODE__REALTIME__ALLOWED_ORIGINS"] == "https://10.1.2.3.example"
    assert workload_env(docs, "Deployment", "balancer")["REDIS_URL"] == env["REDIS_URL"]
    assert workload_env(docs, "Job", "migrate")["DATABASE_URL"] == env["DATABASE_URL"]
    # The balancer gets the Redis URL and nothing else secret.
    assert not {"DATABASE_URL", "PETMESH_NODE__AUTH__JWT_SECRET", "PETMESH_ADMIN_PASSWORD"} & set(
        workload_env(docs, "Deployment", "balancer")
    )


@pytest.mark.parametrize(
    "setting, kind, component, binary",
    ids=["node", "migrate", "balancer"],
    argvalues=[
        ("node.config.PETMESH_NODE__SERVER__PROT=9", "Deployment", "node", "petmesh-node"),
        ("node.config.PETMESH_NODE__SERVER__PROT=9", "Job", "migrate", "petmesh-node"),
        (
            "balancer.config.PETMESH_BALANCER__STRATEGY__HTPP=random",
            "Deployment",
            "balancer",
            "petmesh-balancer",
        ),
    ],
)
def test_binaries_refuse_a_misspelt_setting(setting, kind, component, binary, bin_dir):
    docs = render(DEFAULT, setting)
    result = check_config(bin_dir, binary, workload_env(docs, kind, component))
    variable = re.search(r"\.(PETMESH_\w+)=", setting).group(1)
    assert result.returncode == 64, (result.returncode, result.stdout, result.stderr)
    assert variable in result.stderr and "invalid configuration" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "kind, component, binary",
    ids=["node", "balancer"],
    argvalues=[("Deployment", "node", "petmesh-node"), ("Deployment", "balancer", "petmesh-balancer")],
)
def test_a_redis_cluster_reaches_both_binaries_as_seed_urls(kind, component, binary, bin_dir):
    docs = render(
        DEFAULT,
        "redis.mode=cluster",
        r"secrets.redisUrl=redis://redis-0.redis:6379\,redis://redis-1.redis:6379",
    )
    env = workload_env(docs, kind, component)
    assert env["REDIS_URL"] == "redis://redis-0.redis:6379,redis://redis-1.redis:6379"
    mode_var = "PETMESH_NODE__REDIS__MODE" if component == "node" else "PETMESH_BALANCER__REDIS__MODE"
    assert env[mode_var] == "cluster"
    result = check_config(bin_dir, binary, env)
    assert result.returncode == 0, f"{binary} check-config:\n{result.stderr}"


# === monitoring ===


@pytest.mark.parametrize("case, kind", [("full", "PodMonitor"), ("existing", "ServiceMonitor")])
def test_monitors_label_targets_as_the_balancer_sd_does(case, kind):
    docs = render_case(case)
    cluster = CASES[case].get("clusterName", RELEASE)
    monitors = {m["metadata"]["name"]: m for m in find_all(docs, kind)}
    assert set(monitors) == {name("node"), name("balancer")}
    endpoints_key = "podMetricsEndpoints" if kind == "PodMonitor" else "endpoints"
    for component, job, port in (("node", "petmesh-node", "http"), ("balancer", "petmesh-balancer", "admin")):
        monitor = monitors[name(component)]
        assert (
            monitor["spec"]["selector"]["matchLabels"]
            == find(docs, "Deployment", name(component))["spec"]["selector"]["matchLabels"]
        )
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = monitor["spec"][endpoints_key]
        assert (endpoint["port"], endpoint["path"]) == (port, "/metrics")
        assert port in {p["name"] for p in container(docs, "Deployment", component)["ports"]}
        if kind == "ServiceMonitor":  # a Service it selects (by the Service's labels) has the port
            wanted = monitor["spec"]["selector"]["matchLabels"].items()
            services = [s for s in find_all(docs, "Service") if wanted <= s["metadata"]["labels"].items()]
            assert port in {p["name"] for s in services for p in s["spec"]["ports"]}
        # What the operator makes of a target before these relabelings, then the outcome.
        pod = f"{name(component)}-7d9f8-abcde"
        target = {
            "job": f"{NAMESPACE}/{name(component)}",
            "instance": "10.1.2.3:8080",
            "namespace": NAMESPACE,
            "pod": pod,
            "__meta_kubernetes_pod_name": pod,
        }
        labels = relabel(target, endpoint["relabelings"])
        assert labels["job"] == job and labels["cluster"] == cluster
        if component == "node":
            assert labels["node"] == pod
        else:  # balancer series carry their own `node` label (the upstream node)
            assert "node" not in labels
    if kind == "PodMonitor":
        assert all(m["metadata"]["labels"]["release"] == "kube-prometheus-stack" for m in monitors.values())


def test_monitors_give_nodes_the_labels_of_the_balancer_sd(cluster):
    """A real balancer's /admin/sd labels each node target with `node` (its node id) and
    `cluster`: in Kubernetes the node targets get the same label names, `node` being the pod
    name, which the chart makes the node id, and `cluster` the cluster name the balancers and
    nodes are given."""
    status, groups = live.get(f"{cluster['admin']}/admin/sd")
    _, nodes = live.get(f"{cluster['admin']}/admin/nodes")
    assert status == 200 and groups, groups
    assert {g["labels"]["node"] for g in groups} == {n["id"] for n in nodes}
    sd_labels = {key for g in groups for key in g["labels"]}

    docs = render_case("full")
    (endpoint,) = find(docs, "PodMonitor", name("node"))["spec"]["podMetricsEndpoints"]
    node_env = workload_env(docs, "Deployment", "node")
    pod = pod_fields(docs, "Deployment", "node")["metadata.name"]
    labels = relabel({"job": "x", "__meta_kubernetes_pod_name": pod}, endpoint["relabelings"])
    assert sd_labels <= set(labels), (sd_labels, labels)
    assert labels["node"] == node_env["PETMESH_NODE__NODE_ID"]
    assert labels["cluster"] == node_env["PETMESH_NODE__CLUSTER__NAME"]
    assert (
        labels["cluster"] == workload_env(docs, "Deployment", "balancer")["PETMESH_BALANCER__CLUSTER__NAME"]
    )


def test_chart_package_holds_the_linked_files(tmp_path):
    run(["helm", "package", CHART, "--destination", tmp_path])
    (package,) = tmp_path.glob("petmesh-*.tgz")
    with tarfile.open(package) as tar:
        files = {m.name: m for m in tar.getmembers() if m.name.startswith("petmesh/files/")}
        assert all(m.isfile() for m in files.values()), "the package holds links instead of files"
        read = lambda name: tar.extractfile(files[name]).read().decode()
        assert read("petmesh/files/petmesh.rules.yml") == RULES.read_text()
        for f in DASHBOARDS.glob("*.json"):
            assert read(f"petmesh/files/dashboards/{f.name}") == f.read_text()


def test_prometheus_rule_holds_the_repository_rules():
    docs = render_case("full")
    (rule,) = find_all(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_dashboards_are_configmaps_for_the_grafana_sidecar():
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, f"no dashboards in {DASHBOARDS}"
    docs = render_case("default")
    maps = [d for d in find_all(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    by_file = {key: (m, text) for m in maps for key, text in m["data"].items()}
    assert sorted(by_file) == [f.name for f in files] and len(maps) == len(files)
    for f in files:
        m, text = by_file[f.name]
        assert text == f.read_text(), f"{f.name} differs from the file"
        json.loads(text)
        assert m["metadata"]["annotations"]["grafana_folder"] == "petmesh"
    assert not [
        d
        for d in find_all(render_case("existing"), "ConfigMap")
        if "grafana_dashboard" in d["metadata"]["labels"]
    ]


def test_dashboard_label_and_folder_are_configurable():
    docs = render(
        DEFAULT,
        "grafana.dashboards.label=dashboards",
        "grafana.dashboards.labelValue=petmesh",
        "grafana.dashboards.folder=Shop",
    )
    maps = [d for d in find_all(docs, "ConfigMap") if d["metadata"]["labels"].get("dashboards") == "petmesh"]
    assert len(maps) == len(list(DASHBOARDS.glob("*.json")))
    assert all(m["metadata"]["annotations"]["grafana_folder"] == "Shop" for m in maps)


# === NOTES.txt ===


NOTES_AS_CONFIGMAP = """apiVersion: v1
kind: ConfigMap
metadata: {name: notes}
data:
  notes: {{ tpl (.Files.Get "files/NOTES.txt") . | quote }}
"""


@pytest.mark.parametrize(
    "case, expected",
    ids=["default", "full", "existing"],
    argvalues=[
        (
            "default",
            [
                "port-forward svc/shop-petmesh-balancer 8080:80",
                "port-forward svc/shop-petmesh-balancer-admin 8081:8081",
                "get secret shop-petmesh -o jsonpath='{.data.PETMESH_ADMIN_PASSWORD}'",
            ],
        ),
        (
            "full",
            [
                "status.loadBalancer.ingress",
                ":8000",
                "exposed as widely as the API itself",
                "get secret shop-secrets -o jsonpath='{.data.PETMESH_ADMIN_PASSWORD}'",
                "PodMonitors",
                "shop-petmesh-postgresql",
            ],
        ),
        ("existing", ["nodePort", "get secret shop-secrets -o jsonpath='{.data.admin}'", "ServiceMonitors"]),
    ],
)
def test_notes_tell_how_to_reach_the_release(case, expected, tmp_path):
    # helm prints NOTES.txt only on install (which needs a cluster): here a copy of the chart
    # renders it into a ConfigMap.
    chart = tmp_path / "petmesh"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "files" / "NOTES.txt")
    (chart / "templates" / "notes.yaml").write_text(NOTES_AS_CONFIGMAP)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(CASES[case]))
    result = run(template_command(chart, values, "1.31") + ["--show-only", "templates/notes.yaml"])
    notes = yaml.safe_load(result.stdout)["data"]["notes"]
    for text in expected:
        assert text in notes, notes


# === README ===


def test_readme_documents_every_value_with_its_default():
    """Every value the schema defines has a row in the chart README's values table (a row per
    leaf, or rows below it), every row names a value that exists, and scalar defaults agree."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(node, prefix=""):
        for key, sub in node["properties"].items():
            if "properties" in sub and "$ref" not in sub:
                yield from leaves(sub, f"{prefix}{key}.")
            else:
                yield prefix + key

    readme = (CHART / "README.md").read_text().split("## Values", 1)[1]
    rows = dict(re.findall(r"^\| `([\w.]+)` \| ([^|]*) \|", readme, re.M))
    missing = [
        leaf for leaf in leaves(schema) if not any(r == leaf or r.startswith(leaf + ".") for r in rows)
    ]
    assert not missing, f"values without a README row: {missing}"
    for key, default in rows.items():
        value = defaults
        for part in key.split("."):
            assert (
                isinstance(value, dict) and part in value
            ), f"README row {key}: no such value in values.yaml"
            value = value[part]
        if value is None or isinstance(value, (str, int, float, bool)):
            assert default.strip() == shown(
                value
            ), f"README row {key}: default {default.strip()}, values.yaml {value!r}"


def shown(value):
    """A scalar default as the README writes it."""
    if value is None or isinstance(value, bool):
        return f"`{json.dumps(value)}`"
    return f"`{value}`" if value != "" else '`""`'
