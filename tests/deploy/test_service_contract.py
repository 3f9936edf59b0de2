"""The manifests against what niff-serve really exposes, read from the code: its settings (env names,
values, default port and host), its routes (probe and metrics paths, which of them need no API key,
which report readiness), its command line (what `niff-serve` binds and how long it drains), and the
console scripts pyproject.toml declares (the init container's niff-export)."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    VENV_BIN,
    Workload,
    env_literals,
    env_names,
    export_script_name,
    load_target,
    one,
    script_target,
    serve_script_name,
    serving_workloads,
    settings_class,
    settings_env_names,
    settings_from_env,
    variant_docs,
)
from fastapi.testclient import TestClient
from starlette.routing import Match

WORKLOADS = serving_workloads()
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
# Kubernetes' usual name for a gRPC port, and KServe's (Knative's) name for an HTTP/2 cleartext one.
GRPC_PORT_NAMES = ("grpc", "h2c")


def prefix() -> str:
    return settings_class().model_config["env_prefix"]


def container_env(workload: Workload, dockerfile) -> dict[str, str]:
    """The NIFF_* environment the server sees: the image's ENV, overridden by the manifest's."""
    env = {k: v for k, v in dockerfile.final.env().items() if k.startswith(prefix())}
    env.update({k: v for k, v in env_literals(workload.container).items() if k.startswith(prefix())})
    return env


def effective(workload: Workload, dockerfile, field: str) -> Any:
    env = container_env(workload, dockerfile)
    return env.get(f"{prefix()}{field.upper()}", settings_class().model_fields[field].default)


def container_port(workload: Workload) -> dict[str, Any]:
    """The HTTP port: the one named http, else the first (KServe routes its Service's port 80 there)."""
    ports = workload.container["ports"]
    return next((p for p in ports if p.get("name") == "http"), ports[0])


def grpc_container_port(workload: Workload) -> dict[str, Any]:
    ports = [p for p in workload.container["ports"] if p.get("name") in GRPC_PORT_NAMES]
    assert len(ports) == 1, f"{workload.label}: expected one port named {' or '.join(GRPC_PORT_NAMES)}, got {ports}"
    return ports[0]


def resolve_port(workload: Workload, port: int | str) -> int:
    if isinstance(port, str):
        named = {p.get("name"): p["containerPort"] for p in workload.container["ports"]}
        assert port in named, f"{workload.label}: port {port!r} names no container port"
        return named[port]
    return port


def is_route(app, path: str) -> bool:
    scope = {"type": "http", "path": path, "method": "GET", "root_path": ""}
    return any(route.matches(scope)[0] == Match.FULL for route in app.routes)


ids = [w.label for w in WORKLOADS]


# --------------------------------------------------------------------------------------------------
# Settings: env names and values
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workload", WORKLOADS, ids=ids)
def test_env_names_are_settings(workload: Workload):
    names = env_names(workload.container)
    assert len(names) == len(set(names)), f"{workload.label}: duplicate env entries"
    ours = [n for n in names if n.startswith(prefix())]
    assert ours, "expected NIFF_* settings"
    unknown = sorted(set(ours) - settings_env_names())
    assert not unknown, f"{workload.label}: no setting reads {unknown}"


@pytest.mark.parametrize("workload", WORKLOADS, ids=ids)
def test_env_values_are_valid_settings(workload: Workload, dockerfile, monkeypatch):
    settings = settings_from_env(container_env(workload, dockerfile), monkeypatch)
    assert str(settings.model_repository) == effective(workload, dockerfile, "model_repository")


@pytest.mark.parametrize("workload", WORKLOADS, ids=ids)
def test_api_key_comes_from_a_secret_if_at_all(workload: Workload):
    key = f"{prefix()}API_KEY"
    for entry in workload.container.get("env", []):
        if entry["name"] == key:
            assert "value" not in entry, "an API key in plain text"
            assert "secretKeyRef" in entry["valueFrom"]


# --------------------------------------------------------------------------------------------------
# Port, host, model repository
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workload", WORKLOADS, ids=ids)
def test_container_ports_are_the_ports_the_server_binds(workload: Workload, dockerfile):
    ports = workload.container["ports"]
    assert len(ports) == 2, f"{workload.label}: expected the HTTP and the gRPC port, got {ports}"
    assert container_port(workload)["containerPort"] == int(effective(workload, dockerfile, "port"))
    assert grpc_container_port(workload)["containerPort"] == int(effective(workload, dockerfile, "grpc_port"))
    assert all(p.get("protocol", "TCP") == "TCP" for p in ports)


@pytest.mark.parametrize("workload", WORKLOADS, ids=ids)
def test_server_binds_all_interfaces(workload: Workload, dockerfile):
    assert effective(workload, dockerfile, "host") in ("0.0.0.0", "::")


@pytest.mark.parametrize("workload", WORKLOADS, ids=ids)
def test_model_repository_is_mounted(workload: Workload, dockerfile):
    repository = effective(workload, dockerfile, "model_repository")
    if workload.label.startswith("kserve"):
        # KServe's storage initializer places the InferenceService's storageUri here.
        assert repository == "/mnt/models"
        return
    mounts = {m["mountPath"]: m for m in workload.container["volumeMounts"]}
    assert repository in mounts, f"{workload.label}: {repository} is not a volume mount"
    assert mounts[repository].get("readOnly") is True, "the server only reads the model repository"


@pytest.mark.parametrize("workload", WORKLOADS, ids=ids)
def test_the_image_entrypoint_runs(workload: Workload, pyproject):
    """No command/args: the image's ENTRYPOINT (niff-serve) runs and reads its NIFF_* environment."""
    command = workload.container.get("command")
    assert command in (None, [serve_script_name(pyproject)]), command
    assert not workload.container.get("args"), "configure niff-serve through NIFF_* env, not arguments"


# --------------------------------------------------------------------------------------------------
# Probes and metrics against the app's routes
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workload", WORKLOADS, ids=ids)
def test_probes_hit_the_health_routes(workload: Workload, dockerfile, app):
    client = TestClient(app)  # not started: nothing loaded, exactly a pod before warm-up
    port = int(effective(workload, dockerfile, "port"))
    found = []
    for kind in PROBES:
        probe = workload.container.get(kind)
        if probe is None:
            continue
        found.append(kind)
        get = probe["httpGet"]
        assert resolve_port(workload, get["port"]) == port, f"{workload.label} {kind}: wrong port"
        assert is_route(app, get["path"]), f"{workload.label} {kind}: {get['path']} is not a route of niff-serve"
        # Probes send no Authorization header: the app has an API key set, and the path must not need it.
        status = client.get(get["path"]).status_code
        if kind == "livenessProbe":
            assert status == 200, f"{get['path']} answers {status} while loading: liveness would kill loading pods"
        else:
            assert status == 503, f"{get['path']} answers {status} before the models load: not a readiness route"
    assert {"readinessProbe", "livenessProbe"} <= set(found)
    if not workload.label.startswith("kserve"):
        assert "startupProbe" in found, "loading and warm-up need a startup probe"


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_service_and_scrape_annotations_reach_the_server(variant: str, dockerfile, app):
    workload = next(w for w in WORKLOADS if w.label.startswith(f"k8s/{variant}"))
    port = int(effective(workload, dockerfile, "port"))
    service = one(variant_docs(variant), "Service").body
    targets = {entry["name"]: resolve_port(workload, entry["targetPort"]) for entry in service["spec"]["ports"]}
    assert targets == {"http": port, "grpc": int(effective(workload, dockerfile, "grpc_port"))}
    [grpc_entry] = [entry for entry in service["spec"]["ports"] if entry["name"] == "grpc"]
    assert grpc_entry["appProtocol"] == "kubernetes.io/h2c", "gRPC is HTTP/2 without TLS"
    annotations = one(variant_docs(variant), "Deployment").body["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    path = annotations["prometheus.io/path"]
    assert is_route(app, path)
    response = TestClient(app).get(path)  # scrapers send no API key either
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")


# --------------------------------------------------------------------------------------------------
# Running niff-serve's real command line with each manifest's environment
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def preserved_logging() -> Iterator[None]:
    """niff-serve replaces the root handlers with its JSON handler; give pytest its own back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers = handlers
        root.setLevel(level)


def gpu_reachable() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.fixture
def run_cli(dockerfile, pyproject, tiny_repository, monkeypatch):
    """Run the `niff-serve` console script's function with a workload's environment until the point
    where uvicorn would start serving (in one process); returns the uvicorn server it built, with
    ``checked_ports``: the (host, HTTP port, gRPC port) that niff-serve checked it can bind before loading.
    Nothing is bound: the deployed ports are the defaults, 8000 and 8001, which `make serve` may hold."""
    import uvicorn

    def run(workload: Workload) -> Any:
        env = container_env(workload, dockerfile)
        env[f"{prefix()}MODEL_REPOSITORY"] = str(tiny_repository)
        if env.get(f"{prefix()}DEVICE") == "cuda" and not gpu_reachable():
            env[f"{prefix()}DEVICE"] = "auto"  # this machine has no GPU; everything else stays as deployed
        settings_from_env(env, monkeypatch)  # sets the environment (and validates it)
        captured: list[Any] = []
        monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: captured.append(self))
        main = load_target(script_target(pyproject, serve_script_name(pyproject)))
        cli = sys.modules[main.__module__]
        # Several workers: each serves the supervisor's socket with the same settings, as this process would.
        monkeypatch.setattr(cli, "supervise", lambda settings, *_, **__: cli.serve(settings))
        checked: list[Any] = []
        monkeypatch.setattr(cli, "check_ports", checked.append)
        with preserved_logging():
            main([])
        assert len(captured) == 1, "niff-serve did not start a uvicorn server"
        assert len(checked) == 1, "niff-serve did not check its ports before loading the models"
        captured[0].checked_ports = (checked[0].host, checked[0].port, checked[0].grpc_port)
        return captured[0]

    return run


@pytest.mark.parametrize("workload", WORKLOADS, ids=ids)
def test_niff_serve_binds_the_container_ports(workload: Workload, run_cli):
    server = run_cli(workload)
    assert server.config.port == container_port(workload)["containerPort"]
    assert server.config.host in ("0.0.0.0", "::")
    # The gRPC server starts with the app (on the same host): the app's settings say where.
    grpc_port = server.config.app.state.service.settings.grpc_port
    assert grpc_port == grpc_container_port(workload)["containerPort"]
    assert server.checked_ports == (server.config.host, server.config.port, grpc_port)


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_grace_period_outlasts_prestop_and_drain(variant: str, run_cli, monkeypatch):
    """Kubernetes kills the pod terminationGracePeriodSeconds after deletion starts; within that time
    come the preStop hook, niff-serve's shutdown delay, and its graceful-shutdown timeout (the drain)."""
    workload = next(w for w in WORKLOADS if w.label.startswith(f"k8s/{variant}"))
    server = run_cli(workload)
    drain = server.config.timeout_graceful_shutdown
    assert drain is not None, "niff-serve sets no graceful-shutdown timeout: a drain could outlast any grace period"
    delay = settings_class()().shutdown_delay_s  # the environment run_cli set up
    pre_stop = workload.container["lifecycle"]["preStop"]
    command = pre_stop["exec"]["command"] if "exec" in pre_stop else ["sleep", str(pre_stop["sleep"]["seconds"])]
    assert Path(command[0]).name == "sleep" and len(command) == 2, command
    sleep = float(command[1])
    assert sleep > 0
    grace = workload.pod["terminationGracePeriodSeconds"]
    needed = sleep + delay + drain
    assert grace > needed, f"grace {grace}s <= preStop {sleep}s + delay {delay}s + drain {drain}s"
    assert grace <= needed + 60, "a grace period far beyond the drain only slows rollouts"


# --------------------------------------------------------------------------------------------------
# The export init container
# --------------------------------------------------------------------------------------------------
def export_help(pyproject) -> str:
    script = VENV_BIN / export_script_name(pyproject)
    assert script.exists(), f"{script} is not installed (pip install -e .)"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_init_container_exports_into_the_served_repository(variant: str, dockerfile, pyproject):
    pod = one(variant_docs(variant), "Deployment").body["spec"]["template"]["spec"]
    inits = pod.get("initContainers", [])
    assert len(inits) == 1, "expected the export init container"
    init = inits[0]
    assert init["command"] == [export_script_name(pyproject)]
    assert callable(load_target(script_target(pyproject, init["command"][0])))
    args = init["args"]
    out = args[args.index("--out") + 1]
    server = pod["containers"][0]
    repository = container_env(Workload(variant, pod, server), dockerfile)[f"{prefix()}MODEL_REPOSITORY"]
    init_mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    server_mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert out in init_mounts and repository in server_mounts
    assert init_mounts[out]["name"] == server_mounts[repository]["name"], "the export lands where the server reads"
    assert not init_mounts[out].get("readOnly")
    checkpoint = Path(args[0])
    source = [m for p, m in init_mounts.items() if checkpoint.is_relative_to(p)]
    assert source and source[0].get("readOnly") is True, f"{checkpoint} is not on a read-only checkpoint volume"


def test_init_container_options_exist(pyproject):
    """The options the init containers pass are options of the real niff-export."""
    text = export_help(pyproject)
    for variant in ("gpu", "cpu"):
        pod = one(variant_docs(variant), "Deployment").body["spec"]["template"]["spec"]
        for arg in pod["initContainers"][0]["args"]:
            if arg.startswith("--"):
                assert arg.split("=")[0] in text, f"niff-export has no option {arg}"
