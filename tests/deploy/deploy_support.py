"""Readers shared by the deployment checks: the Dockerfile, the manifests, pyproject and the service.

Everything the tests compare against comes from the code (``niff_serve.core.settings.Settings``,
``niff_serve.process.serving.create_app``, ``niff_serve.process.cli``) or from pyproject.toml, never from copied values.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KSERVE = DEPLOY / "kserve"
VENV_BIN = Path(sys.executable).parent

# Kubernetes releases the manifests must be valid for: the oldest we support (docs/deploy.md) and the
# newest whose schemas kubernetes-validate bundles (looked up at run time).
MIN_KUBERNETES = "1.29.0"


# --------------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    value: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV values set in this stage (later ones win), in the `ENV K=V K2=V2` form."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for item in shlex.split(instruction.value):
                key, sep, value = item.partition("=")
                assert sep, f"line {instruction.line}: use the ENV KEY=VALUE form, not {item!r}"
                values[key] = value
        return values


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]
    comments: list[tuple[int, str]]

    @property
    def final(self) -> Stage:
        """The default target (the last stage), with what it inherits from earlier stages."""
        return self.target(self.stages[-1].name)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def target(self, name: str) -> Stage:
        """Stage ``name`` as an image: the instructions of the stages it is built FROM, then its own;
        ``base`` is the image the chain starts from."""
        stage = self.stage(name)
        names = {s.name for s in self.stages}
        if stage.base not in names:
            return stage
        parent = self.target(stage.base)
        return Stage(parent.base, name, parent.instructions + stage.instructions)

    def resolve(self, text: str) -> str:
        """Substitute the global ARG defaults into a FROM reference."""
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.global_args.get(m.group(1), m.group(0)), text)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Logical instructions (continuations joined, comment lines dropped), split into stages."""
    logical: list[Instruction] = []
    comments: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            comments.append((number, stripped))
            continue
        if not stripped and not pending:
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1] if continued else stripped)
        if not continued:
            text = " ".join(part for part in pending if part)
            keyword, _, value = text.partition(" ")
            logical.append(Instruction(keyword.upper(), value.strip(), start))
            pending = []
    assert not pending, "the Dockerfile ends inside a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in logical:
        if instruction.keyword == "FROM":
            parts = instruction.value.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert instruction.keyword == "ARG", f"line {instruction.line}: only ARG may precede the first FROM"
            key, _, default = instruction.value.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args, stages, comments)


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT/CMD (shell form is not accepted)."""
    value = json.loads(instruction.value)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), instruction.value
    return value


# --------------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Doc:
    path: Path
    index: int
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}#{self.index}:{self.kind}/{self.name}"


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


def load_docs(paths: list[Path] | None = None) -> list[Doc]:
    docs = []
    for path in paths if paths is not None else manifest_files():
        for index, body in enumerate(yaml.safe_load_all(path.read_text())):
            if body is not None:
                docs.append(Doc(path, index, body))
    return docs


def core_docs() -> list[Doc]:
    """What `kubectl apply -f deploy/k8s/...` would send: core Kubernetes kinds only."""
    return load_docs([p for p in manifest_files() if K8S in p.parents])


def variant_docs(variant: str) -> list[Doc]:
    return load_docs(sorted((K8S / variant).glob("*.yaml")))


def one(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d.kind == kind]
    assert len(found) == 1, f"expected one {kind}, found {[d.id for d in found]}"
    return found[0]


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def env_literals(container: dict[str, Any]) -> dict[str, str]:
    """A container's env entries that carry a literal value."""
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def env_names(container: dict[str, Any]) -> list[str]:
    return [e["name"] for e in container.get("env", [])]


@dataclass(frozen=True)
class Workload:
    """One serving container as the cluster would run it, with its pod and where it came from."""

    label: str
    pod: dict[str, Any]
    container: dict[str, Any]


def kserve_container() -> dict[str, Any]:
    """The ServingRuntime's container with the InferenceService's model overrides merged in by name,
    as KServe does (env by name, resources replaced)."""
    docs = load_docs(sorted(KSERVE.glob("*.yaml")))
    runtime = one(docs, "ServingRuntime").body
    model = one(docs, "InferenceService").body["spec"]["predictor"]["model"]
    container = json.loads(json.dumps(runtime["spec"]["containers"][0]))
    merged = {e["name"]: e for e in container.get("env", [])}
    merged.update({e["name"]: e for e in model.get("env", [])})
    container["env"] = list(merged.values())
    if "resources" in model:
        container["resources"] = model["resources"]
    return container


def serving_workloads() -> list[Workload]:
    workloads = []
    for variant in ("gpu", "cpu"):
        deployment = one(variant_docs(variant), "Deployment")
        pod = deployment.body["spec"]["template"]["spec"]
        for container in pod["containers"]:
            workloads.append(Workload(f"k8s/{variant}:{container['name']}", pod, container))
    runtime = one(load_docs(sorted(KSERVE.glob("*.yaml"))), "ServingRuntime").body["spec"]
    workloads.append(Workload("kserve:kserve-container", runtime, kserve_container()))
    return workloads


# --------------------------------------------------------------------------------------------------
# The service, read from its code
# --------------------------------------------------------------------------------------------------
def settings_class() -> type:
    from niff_serve.core.settings import Settings

    return Settings


def settings_env_names() -> set[str]:
    """Every environment variable niff-serve reads: the env prefix plus each Settings field."""
    settings = settings_class()
    prefix = settings.model_config.get("env_prefix", "")
    assert prefix, "Settings has no env_prefix"
    return {f"{prefix}{name}".upper() for name in settings.model_fields}


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Settings as niff-serve would build them in a container with exactly ``env`` (NIFF_* only)."""
    prefix = settings_class().model_config["env_prefix"].upper()
    for key in list(os.environ):
        if key.upper().startswith(prefix):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return settings_class()()


def script_target(pyproject: dict[str, Any], script: str) -> str:
    scripts = pyproject["project"]["scripts"]
    assert script in scripts, f"pyproject.toml declares no console script {script!r}: {sorted(scripts)}"
    return scripts[script]


def load_target(target: str) -> Any:
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def serve_script_name(pyproject: dict[str, Any]) -> str:
    """The console script whose target lives in the service package (niff-serve)."""
    names = [n for n, t in pyproject["project"]["scripts"].items() if t.startswith("niff_serve.")]
    assert len(names) == 1, f"expected one console script into service/, got {names}"
    return names[0]


def export_script_name(pyproject: dict[str, Any]) -> str:
    """The console script of the export CLI (niff-export; export/ also holds niff-report)."""
    names = [n for n, t in pyproject["project"]["scripts"].items() if t.partition(":")[0] == "niff_export.cli"]
    assert len(names) == 1, f"expected one console script into export/cli.py, got {names}"
    return names[0]


# --------------------------------------------------------------------------------------------------
# make
# --------------------------------------------------------------------------------------------------


def make_dry_run(*args: str) -> str:
    """What `make` would run, without running it (the container engine is named, so none is probed)."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", *args, "CONTAINER_ENGINE=docker"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def documented_image_commands() -> list[list[str]]:
    """The `make image ...` lines docs/deploy.md gives (arguments after `make`)."""
    commands = []
    text = (ROOT / "docs" / "deploy.md").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip().startswith("make image"):
            commands.append(shlex.split(line.strip().split("#")[0])[1:])
    assert commands, "docs/deploy.md shows no `make image` line"
    return commands


def make_image_tag(*args: str) -> str:
    """The name:tag `make image ARGS` builds."""
    build = next(line for line in make_dry_run("image", *args).splitlines() if " build " in line)
    words = shlex.split(build)
    return words[words.index("-t") + 1]
