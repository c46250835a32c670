"""What Kubernetes and Prometheus do with the chart's manifests, redone for the chart checks:
the environment a container gets (env with value / valueFrom, envFrom, `$(VAR)` expansion,
as the kubelet builds it) and the labels a target gets from relabelings (as Prometheus applies
them). Anything these functions do not know raises, so a manifest they cannot follow fails the
check instead of passing unnoticed."""

import base64
import re


def find_all(docs, kind, name=None):
    """The rendered objects of `kind` (and `name`, when given)."""
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def find(docs, kind, name):
    """The one rendered object of `kind` named `name`."""
    found = find_all(docs, kind, name)
    names = [d["metadata"]["name"] for d in find_all(docs, kind)]
    assert len(found) == 1, f"{len(found)} {kind} named {name} among {names}"
    return found[0]


def source_data(docs, kind, name):
    """The string data of a ConfigMap or Secret (Secret `data` decoded from base64; `stringData`
    wins over `data`, as the API server merges them), or None when there is no such object."""
    found = find_all(docs, kind, name)
    if not found:
        return None
    obj = found[0]
    if kind == "ConfigMap":
        return dict(obj.get("data") or {})
    data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    data.update(obj.get("stringData") or {})
    return data


def expand(value, env):
    """Kubernetes' $(VAR) expansion: $(NAME) of a variable defined so far becomes its value, an
    unknown one stays as written, $$ is one $ (k8s.io/kubernetes third_party/forked/golang/expansion)."""
    out, cursor, checkpoint = [], 0, 0
    while cursor < len(value):
        if value[cursor] == "$" and cursor + 1 < len(value):
            out.append(value[checkpoint:cursor])
            nxt = value[cursor + 1]
            if nxt == "$":
                out.append("$")
                advance = 1
            elif nxt == "(":
                close = value.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = value[cursor + 2 : close]
                    out.append(env.get(name, f"$({name})"))
                    advance = close - cursor
            else:
                out.append("$" + nxt)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + value[checkpoint:]


ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def resolve_env(container, docs, fields):
    """The environment the kubelet gives `container`: envFrom sources first (later ones win),
    then `env` in order (a later entry wins), each value expanded against what came before.
    `fields` maps fieldRef paths (metadata.name, status.podIP, metadata.labels['k'], ...) to
    the values of the pod being simulated; a label missing from the pod resolves to ""."""
    env = {}
    for source in container.get("envFrom", []):
        ((kind_key, ref),) = [(k, v) for k, v in source.items() if k != "prefix"]
        kind = {"configMapRef": "ConfigMap", "secretRef": "Secret"}[kind_key]
        data = source_data(docs, kind, ref["name"])
        if data is None:
            assert ref.get("optional"), f"envFrom {kind} {ref['name']} is not rendered"
            continue
        for key, value in data.items():
            name = source.get("prefix", "") + key
            if ENV_NAME.match(name):  # the kubelet skips keys that are no variable names
                env[name] = value
    for var in container.get("env", []):
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        ((kind_key, ref),) = var["valueFrom"].items()
        if kind_key == "fieldRef":
            path = ref["fieldPath"]
            label = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
            if label:
                env[name] = fields.get("labels", {}).get(label.group(1), "")
            else:
                assert path in fields, f"{name}: fieldRef {path} is not simulated"
                env[name] = fields[path]
            continue
        kind = {"configMapKeyRef": "ConfigMap", "secretKeyRef": "Secret"}[kind_key]
        data = source_data(docs, kind, ref["name"])
        if data is None or ref["key"] not in data:
            assert ref.get("optional"), f"{name}: {kind} {ref['name']} has no key {ref['key']}"
            continue
        env[name] = data[ref["key"]]
    return env


# === Prometheus relabeling ===

RELABEL_KEYS = {"action", "sourceLabels", "separator", "targetLabel", "regex", "replacement"}


def relabel(labels, relabelings):
    """Applies prometheus-operator relabelings (camelCase fields) to a target's labels as
    Prometheus does; knows the actions replace, keep, drop and labeldrop."""
    labels = dict(labels)
    for rule in relabelings:
        unknown = set(rule) - RELABEL_KEYS
        assert not unknown, f"unknown relabeling fields {unknown} in {rule}"
        action = rule.get("action", "replace").lower()
        regex = re.compile(rule.get("regex", "(.*)"))
        value = rule.get("separator", ";").join(labels.get(s, "") for s in rule.get("sourceLabels", []))
        if action == "replace":
            match = regex.fullmatch(value)
            if match:
                replacement = re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
                result = match.expand(replacement)
                if result:
                    labels[rule["targetLabel"]] = result
                else:
                    labels.pop(rule["targetLabel"], None)
        elif action in ("keep", "drop"):
            if bool(regex.fullmatch(value)) != (action == "keep"):
                return None
        elif action == "labeldrop":
            labels = {k: v for k, v in labels.items() if not regex.fullmatch(k)}
        else:
            raise AssertionError(f"relabel action {action} is not simulated")
    return {k: v for k, v in labels.items() if not k.startswith("__")}
