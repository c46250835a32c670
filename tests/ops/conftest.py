"""Shared fixtures of the operations checks (run by scripts/check-ops).

The tools (helm, kubernetes-validate, docker-compose, hadolint, promtool, the npm packages of
monitoring/grafana) are installed and put on PATH by scripts/lib/ops-tools.sh before pytest
starts; the petmesh binaries are taken from PETMESH_BIN_DIR (default target/debug).
"""

import os
import pathlib
import subprocess

import pytest

import live

REPO = pathlib.Path(__file__).resolve().parents[2]


def run(args, *, check=True, env=None, cwd=None, input=None):
    """Runs a command, capturing output; with check=True a failure shows both streams."""
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        input=input,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="session")
def repo():
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def bin_dir():
    """Where petmesh-node, petmesh-balancer and petmesh-dev are."""
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    path = pathlib.Path(os.environ.get("PETMESH_BIN_DIR", os.path.join(target, "debug")))
    for name in ("petmesh-node", "petmesh-balancer"):
        assert (path / name).is_file(), f"{path / name} missing: run cargo build --workspace --bins"
    return path


@pytest.fixture(scope="session")
def cluster(bin_dir, tmp_path_factory):
    """A running 3-node cluster with its balancer (`petmesh-dev cluster`), shared by every
    check that needs one: {"entry", "admin", "nodes"} URLs."""
    yield from live.start_cluster(bin_dir, tmp_path_factory.mktemp("cluster"))


@pytest.fixture(scope="session")
def exported_metrics(cluster):
    """{metric family: type} that a real node and balancer export from start-up: what rules
    and dashboards may read."""
    return live.exported_families([f"{cluster['nodes'][0]}/metrics", f"{cluster['admin']}/metrics"])
