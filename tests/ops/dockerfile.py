"""Reading the Dockerfile and .dockerignore without a Docker engine.

`parse` turns a Dockerfile into stages of instructions (continuations joined, comments
dropped, ARG defaults substituted); `ignored` applies .dockerignore rules the way Docker does
(Go filepath.Match patterns with `**`, the last matching rule wins, `!` re-includes); `replay`
runs a stage's COPY and RUN instructions in a directory, which is how the builder stage is
exercised for real on a machine without Docker.
"""

import os
import pathlib
import re
import shutil
import subprocess
from dataclasses import dataclass, field


@dataclass
class Instruction:
    """One instruction: its keyword (upper case), `--flag=value` options and arguments."""

    keyword: str
    flags: dict
    args: str


@dataclass
class Stage:
    """A `FROM` and what follows it."""

    base: str
    name: str
    instructions: list = field(default_factory=list)

    def all(self, keyword):
        """The instructions of this stage with `keyword`."""
        return [i for i in self.instructions if i.keyword == keyword]


def _logical_lines(text):
    line = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not line and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continuation
        if stripped.endswith("\\"):
            line += stripped[:-1] + " "
            continue
        line += stripped
        yield line
        line = ""
    if line:
        yield line


def _substitute(value, variables):
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)",
        lambda m: variables.get(m.group(1) or m.group(2), m.group(0)),
        value,
    )


def parse(path):
    """The stages of the Dockerfile at `path`; global ARG defaults are substituted in FROM."""
    variables = {}
    stages = []
    for line in _logical_lines(pathlib.Path(path).read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags = {}
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            variables[name] = default
            continue
        if keyword == "FROM":
            base, _, name = _substitute(rest, variables).partition(" AS ")
            stages.append(Stage(base=base.strip(), name=name.strip()))
            continue
        stages[-1].instructions.append(Instruction(keyword, flags, rest))
    return stages


def stage(stages, name):
    """The stage called `name`."""
    matches = [s for s in stages if s.name == name]
    assert matches, f"no stage {name!r} in {[s.name for s in stages]}"
    return matches[0]


def copy_sources(instruction):
    """The sources and the destination of a COPY in shell form."""
    *sources, destination = instruction.args.split()
    return sources, destination


# === .dockerignore ===


def read_ignore(path):
    """The rules of a .dockerignore: (pattern, excluded?) in order."""
    rules = []
    for line in pathlib.Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((pattern, not negated))
    return rules


def _match(pattern, path):
    """Whether `path` (relative, '/'-separated) is `pattern` or lies under what it matches."""
    regex = ""
    for part in re.split(r"(\*\*/?|\*|\?)", pattern):
        if part in ("**", "**/"):
            regex += ".*"
        elif part == "*":
            regex += "[^/]*"
        elif part == "?":
            regex += "[^/]"
        else:
            regex += re.escape(part)
    return re.fullmatch(regex + "(/.*)?", path) is not None


def ignored(rules, path):
    """Whether Docker leaves `path` (relative to the context) out of the build context."""
    excluded = False
    for pattern, excludes in rules:
        if _match(pattern, path):
            excluded = excludes
    return excluded


def context_files(root, rules):
    """Every file of the build context rooted at `root`, relative paths."""
    files = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (".git", "target", "node_modules")]
        for name in names:
            relative = os.path.relpath(os.path.join(directory, name), root)
            if not ignored(rules, relative):
                files.append(relative)
    return sorted(files)


# === replaying a stage ===


def replay(stage_, context, root, rewrite_run=lambda cmd: cmd, env=None):
    """Runs `stage_`'s WORKDIR, COPY (from the build context) and RUN instructions with `root`
    standing for the image's `/`, so paths behave as in the image. `rewrite_run` may adapt a
    RUN command (the caller says how, and why). Returns the commands that were run."""
    rules = read_ignore(pathlib.Path(context) / ".dockerignore")
    included = set(context_files(context, rules))
    workdir = pathlib.Path(root)
    ran = []
    for instruction in stage_.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = pathlib.Path(root) / instruction.args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY" and "from" not in instruction.flags:
            sources, destination = copy_sources(instruction)
            for source in sources:
                _copy(context, included, source, destination, workdir, len(sources) > 1)
        elif instruction.keyword == "RUN":
            command = rewrite_run(instruction.args)
            result = subprocess.run(
                ["sh", "-c", command], cwd=workdir, capture_output=True, text=True, env=env
            )
            assert result.returncode == 0, (
                f"RUN {command}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
            )
            ran.append(command)
    return ran


def _copy(context, included, source, destination, workdir, many):
    """COPY `source` (a file or directory of the context, only its included files) to
    `destination` (relative to `workdir`), as Docker does."""
    matched = [f for f in included if f == source or f.startswith(source.rstrip("/") + "/")]
    assert matched, f"COPY {source}: nothing of it is in the build context (.dockerignore?)"
    target = workdir / destination
    for relative in matched:
        if relative == source:
            into = target / os.path.basename(source) if destination.endswith("/") or many else target
        else:
            into = target / os.path.relpath(relative, source)
        into.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(pathlib.Path(context) / relative, into)

