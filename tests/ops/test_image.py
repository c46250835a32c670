"""The container image: the Dockerfile is linted (hadolint), its structure checked (non-root,
small Debian runtime matching the builder's glibc, a HEALTHCHECK on a binary the image holds),
its build context checked against .dockerignore, and its builder stage replayed for real on
this machine (no Docker engine here): the COPY instructions from the build context as filtered
by .dockerignore, and the RUN instructions with `cargo check` in place of `cargo build` (the
same manifests, lockfile, stubs, sources, build scripts and macros; no code generation, which
would take minutes with the release profile's fat LTO)."""

import os
import pathlib
import re
import shutil
import tomllib

import pytest

from conftest import REPO, run
import dockerfile

DOCKERFILE = REPO / "Dockerfile"


@pytest.fixture(scope="module")
def stages():
    return dockerfile.parse(DOCKERFILE)


def binaries():
    """The [[bin]] targets of the node and balancer crates."""
    names = []
    for crate in ("node", "balancer"):
        manifest = tomllib.loads((REPO / crate / "Cargo.toml").read_text())
        names += [b["name"] for b in manifest.get("bin", [])]
    return names


def test_hadolint_passes():
    run(["hadolint", DOCKERFILE])


def test_hadolint_rejects_a_root_runtime(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("USER 10001:10001", "USER root"))
    result = run(["hadolint", broken], check=False)
    assert result.returncode != 0
    assert "DL3002" in result.stdout, result.stdout


def test_runtime_is_a_small_non_root_debian_with_both_binaries(stages):
    builder = dockerfile.stage(stages, "builder")
    runtime = dockerfile.stage(stages, "runtime")
    assert stages[-1] is runtime
    assert runtime.base.endswith("-slim") and runtime.base.startswith("debian:"), runtime.base
    # The binaries link against the builder's glibc: same Debian release on both sides.
    release = runtime.base.split(":")[1].removesuffix("-slim")
    assert builder.base.endswith(f"-slim-{release}"), (builder.base, release)

    users = runtime.all("USER")
    uid = users[-1].args.split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000, users[-1].args

    copied = []
    for instruction in runtime.all("COPY"):
        assert instruction.flags.get("from") == "builder", instruction
        sources, destination = dockerfile.copy_sources(instruction)
        assert destination == "/usr/local/bin/"
        copied += sources
    assert sorted(pathlib.PurePath(s).name for s in copied) == sorted(binaries())
    assert all(s.startswith("/build/target/release/") for s in copied), copied

    (healthcheck,) = runtime.all("HEALTHCHECK")
    command = re.search(r"CMD (\[.*\])", healthcheck.args).group(1)
    assert command == '["petmesh-node", "healthcheck"]', command
    (cmd,) = runtime.all("CMD")
    assert cmd.args == '["petmesh-node", "serve"]'


def test_rust_version_is_at_least_the_workspace_minimum(stages):
    workspace = tomllib.loads((REPO / "Cargo.toml").read_text())
    minimum = tuple(int(p) for p in workspace["workspace"]["package"]["rust-version"].split("."))
    version = re.search(r"rust:(\d+)\.(\d+)", dockerfile.stage(stages, "builder").base)
    assert (int(version[1]), int(version[2])) >= minimum[:2]


def test_build_context_holds_the_sources_and_nothing_else():
    rules = dockerfile.read_ignore(REPO / ".dockerignore")
    files = dockerfile.context_files(REPO, rules)
    assert "node/src/main.rs" in files and "migrations" in {f.split("/")[0] for f in files}
    for outside in ("target/debug/petmesh-node", ".git/HEAD", "tests/src/lib.rs", "README.md", ".env"):
        assert dockerfile.ignored(rules, outside), outside
    assert not any(f.startswith(("target/", "tests/src/", "helm/")) for f in files)


def test_builder_stage_replays_on_this_machine(stages, tmp_path):
    root = tmp_path / "image"
    env = dict(os.environ)
    # Share the workspace's target directory: the dependencies' check artefacts are reused.
    env["CARGO_TARGET_DIR"] = env.get("CARGO_TARGET_DIR", str(REPO / "target"))

    def check_instead_of_build(command):
        assert "cargo build --release --locked" in command or "cargo" not in command, command
        return command.replace("cargo build", "cargo check")

    ran = dockerfile.replay(
        dockerfile.stage(stages, "builder"), REPO, root, check_instead_of_build, env
    )
    assert sum("cargo check" in c for c in ran) == 2, ran
    # The real sources replaced every stub.
    for crate in ("node", "balancer", "shared"):
        copied = root / "build" / crate / "src" / "lib.rs"
        assert copied.read_text() == (REPO / crate / "src" / "lib.rs").read_text()


def test_replay_fails_when_the_context_lacks_a_source(stages, tmp_path):
    # A .dockerignore that drops the migrations (which sqlx::migrate! embeds) breaks the build:
    # the replay must notice.
    context = tmp_path / "context"
    for relative in dockerfile.context_files(REPO, dockerfile.read_ignore(REPO / ".dockerignore")):
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, context / relative)
    (context / ".dockerignore").write_text(
        (REPO / ".dockerignore").read_text().replace("!migrations\n", "")
    )
    with pytest.raises(AssertionError, match="COPY migrations: nothing of it is in the build context"):
        dockerfile.replay(dockerfile.stage(stages, "builder"), context, tmp_path / "image")
