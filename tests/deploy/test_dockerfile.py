"""The Dockerfile: hadolint, its structure (multi-stage, CUDA base, no compilers, non-root), and that
its entry point, port, health check, settings and build context match the project."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_support import (
    ROOT,
    VENV_BIN,
    exec_form,
    load_target,
    script_target,
    serve_script_name,
    settings_class,
    settings_env_names,
)
from packaging.requirements import Requirement
from starlette.routing import Match

COMPILERS = re.compile(r"^(gcc|g\+\+|cpp|clang|cc|c\+\+|build-essential|make|cmake|gfortran|.*-dev)(=.*)?$")


def tool(name: str) -> str:
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} is not installed: `pip install -e '.[test]'` (it is in the test extra)"
    return found


def test_hadolint_passes():
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_lint_suppression_is_explained(dockerfile):
    """Each `hadolint ignore=` / `checkov:skip=` carries a reason: a comment line above, or the text
    after the check id."""
    comments = dict(dockerfile.comments)
    directives = [(n, c) for n, c in dockerfile.comments if "hadolint ignore=" in c or "checkov:skip=" in c]
    assert directives, "expected the documented suppressions (DL3008, CKV_DOCKER_7)"
    for number, comment in directives:
        if "checkov:skip=" in comment:
            reason = comment.split("checkov:skip=", 1)[1].partition(":")[2].strip()
        else:
            reason = comments.get(number - 1, "").lstrip("#").strip()
        assert len(reason) >= 20, f"Dockerfile line {number}: {comment!r} has no explanation"


def test_multi_stage_on_a_pinned_cuda_runtime_base(dockerfile):
    assert len(dockerfile.stages) >= 2, "expected a builder stage and a runtime stage"
    assert "BASE_IMAGE" in dockerfile.global_args, "the base must be the BASE_IMAGE build argument"
    final = dockerfile.final
    assert final.base in ("${BASE_IMAGE}", "$BASE_IMAGE"), f"the runtime stage is FROM {final.base}"
    base = dockerfile.resolve(final.base)
    image, _, tag = base.rpartition(":")
    assert image == "nvidia/cuda", base
    assert re.fullmatch(r"\d+\.\d+\.\d+-cudnn\d*-runtime-ubuntu\d+\.\d+", tag), (
        f"not a pinned cuDNN runtime tag: {base}"
    )
    # The virtual environment is copied between stages: both must have the same interpreter path.
    bases = {dockerfile.resolve(stage.base) for stage in dockerfile.stages}
    assert bases == {base}, f"stages use different bases: {bases}"


def test_runtime_stage_copies_the_venv_and_installs_no_compiler(dockerfile):
    final = dockerfile.final
    builders = {s.name for s in dockerfile.stages[:-1]}
    copies = [c.value for c in final.all("COPY") if c.value.startswith("--from=")]
    assert any(c.split()[0].removeprefix("--from=") in builders for c in copies), "no COPY --from the builder"
    for run in final.all("RUN"):
        for command in re.split(r"&&|;", run.value):
            words = command.split()
            if "install" in words and ("apt-get" in words or "apt" in words):
                packages = [w for w in words[words.index("install") + 1 :] if not w.startswith("-")]
                assert packages, command
                bad = [p for p in packages if COMPILERS.match(p)]
                assert not bad, f"the runtime stage installs build tools: {bad}"
            assert not ({"pip", "pip3"} & set(words) and "install" in words), (
                f"pip install in the runtime stage: {command}"
            )


def test_builder_installs_cuda_torch_first_then_the_project_with_onnxruntime_gpu(dockerfile, pyproject):
    builder = dockerfile.stages[0]
    args = {i.value.partition("=")[0]: i.value.partition("=")[2] for i in builder.all("ARG")}
    assert args.get("ONNXRUNTIME_PACKAGE") == "onnxruntime-gpu"
    runs = [r.value for r in builder.all("RUN")]
    torch_run = next(i for i, r in enumerate(runs) if "torch==${TORCH_VERSION}" in r)
    assert "--index-url" in runs[torch_run] and "${TORCH_INDEX_URL}" in runs[torch_run]
    project_run = next(i for i, r in enumerate(runs) if re.search(r"/src\[([\w,]+)\]", r))
    assert torch_run < project_run, "torch must be installed before the project (its build decides CUDA or CPU)"
    extras = set(re.search(r"/src\[([\w,]+)\]", runs[project_run]).group(1).split(","))
    assert extras == {"service", "export"}
    assert extras <= set(pyproject["project"]["optional-dependencies"]), "installs an extra pyproject lacks"
    assert "pip uninstall -y onnxruntime" in runs[project_run], "the CPU onnxruntime must give way to the GPU build"

    # The pinned versions satisfy what the project declares.
    declared = pyproject["project"]["optional-dependencies"]
    requirements = [
        Requirement(r) for r in pyproject["project"]["dependencies"] + declared["service"] + declared["torch"]
    ]
    by_name = {r.name: r for r in requirements}
    assert by_name["torch"].specifier.contains(args["TORCH_VERSION"]), (args["TORCH_VERSION"], by_name["torch"])
    assert by_name["onnxruntime"].specifier.contains(args["ONNXRUNTIME_VERSION"])


def test_builder_copies_every_package_the_project_ships(dockerfile, pyproject):
    builder = dockerfile.stages[0]
    copied = set()
    for copy in builder.all("COPY"):
        parts = [p for p in copy.value.split() if not p.startswith("--")]
        copied.update(Path(p).as_posix().rstrip("/") for p in parts[:-1])
    setuptools = pyproject["tool"]["setuptools"]
    folders = setuptools["package-dir"]
    shipped = {folders.get(p, p) for p in setuptools["packages"] if "." not in p}
    assert shipped, "no packages found"
    assert shipped <= copied, f"packages not copied into the build: {shipped - copied}"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied


def test_runtime_user_is_numeric_and_not_root(dockerfile):
    user = dockerfile.final.last("USER")
    assert user is not None, "no USER: the server would run as root"
    uid, _, gid = user.value.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) > 0, user.value
    assert not gid or (gid.isdigit() and int(gid) > 0), user.value
    assert dockerfile.final.instructions.index(user) > max(
        dockerfile.final.instructions.index(r) for r in dockerfile.final.all("RUN")
    ), "USER must come after the last RUN"


def test_entrypoint_is_the_serve_console_script(dockerfile, pyproject):
    name = serve_script_name(pyproject)
    entrypoint = dockerfile.final.last("ENTRYPOINT")
    assert entrypoint is not None
    assert exec_form(entrypoint) == [name], "ENTRYPOINT must be the niff-serve console script alone (exec form)"
    assert callable(load_target(script_target(pyproject, name)))
    assert dockerfile.final.last("CMD") is None, "a CMD would pass arguments; configuration is by NIFF_* env"


def test_export_console_script_is_installed_too(dockerfile, pyproject):
    """Init containers run niff-export from the same image: the export package must be installed."""
    name = next(n for n, t in pyproject["project"]["scripts"].items() if t.startswith("niff_export."))
    runs = " ".join(r.value for r in dockerfile.stages[0].all("RUN"))
    assert "export" in re.search(r"/src\[([\w,]+)\]", runs).group(1), f"{name} needs the export extra"


def test_env_names_are_settings_and_the_container_is_reachable(dockerfile):
    env = dockerfile.final.env()
    known = settings_env_names()
    prefix = settings_class().model_config["env_prefix"]
    unknown = {k for k in env if k.startswith(prefix)} - known
    assert not unknown, f"ENV names no setting: {unknown}"
    host = env.get(f"{prefix}HOST", settings_class().model_fields["host"].default)
    assert host in ("0.0.0.0", "::"), f"the server binds {host}: unreachable from outside the container"


def test_model_repository_is_the_models_volume(dockerfile):
    env = dockerfile.final.env()
    prefix = settings_class().model_config["env_prefix"]
    repository = env.get(f"{prefix}MODEL_REPOSITORY")
    assert repository == "/models"
    volumes = [v for instruction in dockerfile.final.all("VOLUME") for v in exec_form(instruction)]
    assert repository in volumes


def effective_port(dockerfile, field: str = "port") -> int:
    prefix = settings_class().model_config["env_prefix"]
    return int(dockerfile.final.env().get(f"{prefix}{field.upper()}", settings_class().model_fields[field].default))


def test_exposed_ports_are_the_server_ports(dockerfile):
    exposed = [p.split("/")[0] for e in dockerfile.final.all("EXPOSE") for p in e.value.split()]
    assert exposed == [str(effective_port(dockerfile)), str(effective_port(dockerfile, "grpc_port"))]


def test_healthcheck_probes_the_readiness_route(dockerfile, app):
    check = dockerfile.final.last("HEALTHCHECK")
    assert check is not None
    options, _, command = check.value.partition("CMD")
    assert "--start-period=" in options, "loading models takes time: the health check needs a start period"
    code = " ".join(exec_form_text(command.strip()))
    path = re.search(r"http://[^/'\"]*(/[^'\" ]*)", code).group(1)
    assert_route(app, path)
    from fastapi.testclient import TestClient

    # Not started: nothing loaded, so a readiness route answers 503 (and no API key is needed).
    assert TestClient(app).get(path).status_code == 503, f"{path} is not a readiness route"
    var, default = re.search(r"environ\.get\('(\w+)', '(\d+)'\)", code).groups()
    assert var in settings_env_names()
    assert int(default) == settings_class().model_fields["port"].default


def exec_form_text(text: str) -> list[str]:
    import json

    return json.loads(text)


def assert_route(app, path: str) -> None:
    scope = {"type": "http", "path": path, "method": "GET", "root_path": ""}
    matches = [r for r in app.routes if r.matches(scope)[0] == Match.FULL]
    assert matches, f"{path} is not a GET route of niff-serve"


# --------------------------------------------------------------------------------------------------
# .dockerignore
# --------------------------------------------------------------------------------------------------
def ignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        patterns.append((negated, line.lstrip("!").strip("/")))
    return patterns


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
    return re.compile(out + r"\Z")


def ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, pattern in ignore_patterns():
        regex = glob_to_regex(pattern)
        if any(regex.match(c) for c in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_what_the_build_copies(dockerfile):
    sources = []
    for stage in dockerfile.stages:
        for copy in stage.all("COPY"):
            if copy.value.startswith("--from="):
                continue
            sources += [p for p in copy.value.split() if not p.startswith("--")][:-1]
    files = []
    for source in sources:
        path = ROOT / source
        files += (
            [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
    assert len(files) > len(sources), "nothing to check"
    lost = [str(f.relative_to(ROOT)) for f in files if ignored(str(f.relative_to(ROOT)))]
    assert not lost, f".dockerignore drops files the build copies: {lost[:10]}"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/deploy/conftest.py",
        "models/tiny/niff.json",
        "Dockerfile",
        "build/checks-venv/bin/checkov",
        "service/__pycache__/app.cpython-311.pyc",
        "ckpt.pt",
        "deploy/smoke.sh",
    ],
)
def test_dockerignore_keeps_the_rest_out(path):
    assert ignored(path), f"{path} would be sent to the build context"


def test_image_labels_carry_the_project_version(dockerfile, pyproject):
    labels = dict(item.split("=", 1) for label in dockerfile.final.all("LABEL") for item in shlex.split(label.value))
    assert labels["org.opencontainers.image.version"] == pyproject["project"]["version"]
    assert labels["org.opencontainers.image.licenses"] == pyproject["project"]["license"]
