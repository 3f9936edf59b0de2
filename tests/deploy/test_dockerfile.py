"""The Dockerfile: hadolint, its targets (serve-onnx, serve, export) and how they are built (one pinned
base, locked dependencies in their own layer, no compilers, no package manager, non-root), and that
their entry points, port, health check, settings, labels and build context match the project."""

from __future__ import annotations

import importlib.util
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
    export_script_name,
    load_target,
    script_target,
    serve_script_name,
    settings_class,
    settings_env_names,
)
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


def lock_module():
    """deploy/image/lock.py: the image targets, their extras and variants."""
    spec = importlib.util.spec_from_file_location("image_lock", ROOT / "deploy" / "image" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TARGETS = lock_module().TARGETS
SERVING = [t for t in TARGETS if t != "export"]


def test_all_targets_start_from_one_pinned_debian_base(dockerfile):
    """One base for every stage (the venv built in `builder` links to the runtime's python3), pinned to
    a Debian point release, fully qualified (podman resolves no short names without a prompt)."""
    base = dockerfile.resolve("${BASE_IMAGE}")
    assert re.fullmatch(r"docker\.io/library/debian:12\.\d+-slim", base), f"not a pinned Debian 12 tag: {base}"
    names = [s.name for s in dockerfile.stages]
    for stage in dockerfile.stages:
        assert stage.base in ("${BASE_IMAGE}", "scratch") or stage.base in names[: names.index(stage.name)], stage
    roots = {dockerfile.target(name).base for name in ("runtime", "builder", *TARGETS)}
    assert roots == {"${BASE_IMAGE}"}, roots


def test_targets_are_the_locked_ones_and_serve_onnx_is_the_default(dockerfile):
    names = [s.name for s in dockerfile.stages]
    assert set(TARGETS) <= set(names)
    assert names[-1] == "serve-onnx", "the last stage is what a plain `docker build` makes: the ONNX server"
    for target, (_, variants) in TARGETS.items():
        for variant in variants:
            assert (ROOT / "deploy" / "image" / "locks" / f"{target}-{variant}.txt").is_file(), (target, variant)


@pytest.mark.parametrize("target", list(TARGETS))
def test_a_target_installs_its_lock_then_the_project(dockerfile, target):
    """The dependencies come in one layer that only the target's lock (and the prune rules) decide; the
    project follows as its own small layer."""
    image = dockerfile.target(target)
    copies = [c.value.split() for c in image.all("COPY") if c.value.startswith("--from=")]
    assert [c[0] for c in copies] == [f"--from={target}-venv", "--from=project"], copies
    assert copies[0][1:] == ["/opt/venv", "/opt/venv"]
    venv = dockerfile.stage(f"{target}-venv")
    assert venv.base == "builder"
    assert [i.keyword for i in venv.instructions if i.keyword != "ARG"] == ["COPY", "RUN"]
    (copy,) = venv.all("COPY")
    source, destination = copy.value.split()
    assert source.startswith(f"deploy/image/locks/{target}-"), source
    run = venv.last("RUN").value
    assert f"-r {destination}" in run and "prune.py /opt/venv" in run
    pip = dockerfile.stage("builder").env()
    assert (pip["PIP_REQUIRE_HASHES"], pip["PIP_NO_DEPS"], pip["PIP_ONLY_BINARY"]) == ("1", "1", ":all:")
    assert pip["PIP_PYTHON"] == "/opt/venv/bin/python"


def test_project_stage_builds_the_wheel_with_the_locked_build_backend(dockerfile):
    project = dockerfile.stage("project")
    runs = [r.value for r in project.all("RUN")]
    assert "-r /tmp/build-requirements.txt" in runs[0]
    assert "--no-build-isolation" in runs[-1] and "--no-index" in runs[-1] and "--root /staging" in runs[-1]
    sources = [c.value.split()[0] for c in project.all("COPY")]
    assert sources[0] == "deploy/image/locks/build.txt", "the build backend's lock comes before the sources"


def test_builder_copies_every_package_the_project_ships(dockerfile, pyproject):
    copied = set()
    for copy in dockerfile.stage("project").all("COPY"):
        parts = [p for p in copy.value.split() if not p.startswith("--")]
        copied.update(Path(p).as_posix().rstrip("/") for p in parts[:-1])
    setuptools = pyproject["tool"]["setuptools"]
    folders = setuptools["package-dir"]
    shipped = {folders.get(p, p) for p in setuptools["packages"] if "." not in p}
    assert shipped, "no packages found"
    assert shipped <= copied, f"packages not copied into the build: {shipped - copied}"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied


@pytest.mark.parametrize("target", list(TARGETS))
def test_images_install_no_compiler_and_run_no_pip(dockerfile, target):
    for run in dockerfile.target(target).all("RUN"):
        for command in re.split(r"&&|;", run.value):
            words = command.split()
            if "install" in words and ("apt-get" in words or "apt" in words):
                packages = [w for w in words[words.index("install") + 1 :] if not w.startswith("-")]
                assert packages, command
                bad = [p for p in packages if COMPILERS.match(p)]
                assert not bad, f"the {target} image installs build tools: {bad}"
            assert not ({"pip", "pip3"} & set(words)), f"pip in the {target} image: {command}"


def test_runtime_removes_the_package_manager_and_setuid_bits(dockerfile):
    (run,) = dockerfile.stage("runtime").all("RUN")
    assert re.search(r"find / -xdev -type f -perm /6000 -exec chmod ug-s", run.value)
    purge = re.search(r"dpkg --purge ([\w .-]+?) *(&&|$)", run.value)
    assert purge and "apt" in purge.group(1).split(), "apt is not removed"
    assert "--force-remove-essential --force-depends dpkg" in run.value
    assert run.value.index("apt-get install") < purge.start()


@pytest.mark.parametrize("target", list(TARGETS))
def test_runtime_user_is_numeric_and_not_root(dockerfile, target):
    image = dockerfile.target(target)
    user = image.last("USER")
    assert user is not None, "no USER: the process would run as root"
    uid, _, gid = user.value.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) > 0, user.value
    assert not gid or (gid.isdigit() and int(gid) > 0), user.value
    assert image.instructions.index(user) > max(image.instructions.index(r) for r in image.all("RUN")), (
        "USER must come after the last RUN"
    )


@pytest.mark.parametrize("target", list(TARGETS))
def test_entrypoint_is_the_console_script(dockerfile, pyproject, target):
    name = serve_script_name(pyproject) if target in SERVING else export_script_name(pyproject)
    entrypoint = dockerfile.target(target).last("ENTRYPOINT")
    assert entrypoint is not None
    assert exec_form(entrypoint) == [name], f"ENTRYPOINT must be the {name} console script alone (exec form)"
    assert callable(load_target(script_target(pyproject, name)))
    assert dockerfile.target(target).last("CMD") is None, "a CMD would pass arguments"


def test_env_names_are_settings_and_the_container_is_reachable(dockerfile):
    env = dockerfile.final.env()
    known = settings_env_names()
    prefix = settings_class().model_config["env_prefix"]
    unknown = {k for k in env if k.startswith(prefix)} - known
    assert not unknown, f"ENV names no setting: {unknown}"
    host = env.get(f"{prefix}HOST", settings_class().model_fields["host"].default)
    assert host in ("0.0.0.0", "::"), f"the server binds {host}: unreachable from outside the container"


def test_model_repository_is_models_and_no_volume_is_declared(dockerfile):
    """A VOLUME would leave an anonymous volume behind wherever /models is not mounted (KServe mounts
    /mnt/models); whoever runs the image mounts the repository."""
    env = dockerfile.final.env()
    prefix = settings_class().model_config["env_prefix"]
    assert env.get(f"{prefix}MODEL_REPOSITORY") == "/models"
    assert not [s.name for s in dockerfile.stages if s.all("VOLUME")]


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
        "deploy/image/lock.py",
        "deploy/image/ci.sh",
        "build/image/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
    ],
)
def test_dockerignore_keeps_the_rest_out(path):
    assert ignored(path), f"{path} would be sent to the build context"


@pytest.mark.parametrize("target", list(TARGETS))
def test_labels_come_last_from_build_arguments(dockerfile, pyproject, target):
    """OCI labels: version, revision, creation time and source from the build (`make image` passes them),
    declared after the last layer so that their changing values never invalidate a cached layer."""
    stage = dockerfile.stage(target)
    label = stage.last("LABEL")
    assert stage.instructions[-1] is label
    labels = dict(item.split("=", 1) for item in shlex.split(label.value))
    prefix = "org.opencontainers.image."
    for key, arg in (("version", "VERSION"), ("revision", "REVISION"), ("created", "CREATED"), ("source", "SOURCE")):
        assert labels[prefix + key] == "${" + arg + "}", key
        assert any(a.value.partition("=")[0] == arg for a in stage.all("ARG")), f"{target} declares no ARG {arg}"
    assert labels[prefix + "licenses"] == pyproject["project"]["license"]
    assert labels[prefix + "title"] == f"niff-{target}"
    last_layer = max(stage.instructions.index(i) for i in stage.all("COPY"))
    assert all(stage.instructions.index(a) > last_layer for a in stage.all("ARG"))
