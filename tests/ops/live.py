"""A real cluster for the operations checks: `petmesh-dev cluster` (PostgreSQL, Redis, nodes
and a balancer as real processes on free loopback ports), plain HTTP helpers, and waiting on
conditions with a generous deadline (two shared cores)."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

#: Generous: the machine has two shared cores and the cluster builds nothing, but starts
#: PostgreSQL, Redis, three nodes and a balancer.
PATIENCE = float(os.environ.get("PETMESH_TEST_PATIENCE_SECS", "120"))
ADMIN_PASSWORD = "ops-check-admin-password"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, data=None, headers=None):
    """GET (or POST `data` as JSON) → (status, parsed JSON body or text)."""
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers=headers or {})
    if body is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def wait_for(what, check, patience=PATIENCE):
    """Polls `check` until it returns a true value (returned), failing after `patience`."""
    deadline = time.monotonic() + patience
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as err:
            last = err
        time.sleep(0.25)
    pytest.fail(f"not true after {patience} s: {what} (last: {last!r})")


class Process:
    """A child process whose output goes to a file, stopped with SIGTERM at the end."""

    def __init__(self, args, log, env=None):
        self.log = log
        self.proc = subprocess.Popen(
            [str(a) for a in args],
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def text(self):
        return pathlib.Path(self.log).read_text()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_cluster(bin_dir, work, nodes=3):
    """`petmesh-dev cluster --nodes N` in `work`, yielding its entry URL, admin URL and node
    URLs once ready; stopped (SIGTERM) when the generator closes."""
    # Rate limits off: the checks send many requests from one address.
    env = dict(
        os.environ,
        PETMESH_ADMIN_PASSWORD=ADMIN_PASSWORD,
        PETMESH_NODE__LOG__LEVEL="warn",
        PETMESH_NODE__RATE_LIMIT__ENABLED="false",
    )
    # Port 0: the balancer and its admin API take free ports (printed in the banner).
    process = Process(
        [bin_dir / "petmesh-dev", "cluster", "--nodes", str(nodes), "--port", 0], work / "cluster.log", env
    )

    def ready():
        if process.proc.poll() is not None:
            pytest.fail(f"the cluster exited:\n{process.text()}")
        return "\nready\n" in process.text()

    try:
        wait_for("the cluster is ready", ready)
        text = process.text()
        yield {
            "entry": re.search(r"petmesh is up: (http://\S+)", text)[1],
            "admin": re.search(r"admin +(http://\S+)", text)[1],
            "nodes": re.findall(r"node-\d +(http://\S+)", text),
        }
    finally:
        process.stop()


def exported_families(urls):
    """{metric family: type} of the `/metrics` bodies at `urls` (from their `# TYPE` lines)."""
    families = {}
    for url in urls:
        status, text = get(url)
        assert status == 200, (url, status)
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                families[name] = kind
    return families
