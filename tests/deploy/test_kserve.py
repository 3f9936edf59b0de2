"""deploy/kserve: KServe's ServingRuntime and InferenceService are custom resources, so the Kubernetes
schemas do not cover them (and checkov has no checks for them). What can be checked is checked here:
their structure and cross-references, and the parts that are core Kubernetes types (the runtime's
containers, volumes and pod settings; the predictor's resources) are validated strictly by wrapping
them in a Pod. The service-facing parts (env names, port, probes) are in test_service_contract.py."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
from deploy_support import KSERVE, MIN_KUBERNETES, kserve_container, load_docs, one, settings_class, variant_docs
from fastapi.testclient import TestClient
from starlette.routing import Match

LATEST_KUBERNETES = kubernetes_validate.utils.latest_version()
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def docs():
    return load_docs(sorted(KSERVE.glob("*.yaml")))


def runtime() -> dict:
    return one(docs(), "ServingRuntime").body


def service() -> dict:
    return one(docs(), "InferenceService").body


def test_api_versions_and_kinds():
    assert runtime()["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert service()["apiVersion"] == "serving.kserve.io/v1beta1"
    assert {d.kind for d in docs()} == {"ServingRuntime", "InferenceService"}


def test_inference_service_uses_our_runtime_with_the_v2_protocol():
    model = service()["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime()["metadata"]["name"]
    assert "v2" in runtime()["spec"]["protocolVersions"]
    formats = {(f["name"], f.get("version")) for f in runtime()["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert re.match(r"^(pvc|s3|gs|https?|hdfs|webhdfs|oci)://", model["storageUri"]), model["storageUri"]
    # KServe names the predictor's Service after the InferenceService: a DNS-1035 label.
    name = service()["metadata"]["name"]
    assert DNS_1035.fullmatch(name) and len(name) <= 45, name
    assert service()["metadata"]["namespace"] == runtime()["metadata"]["namespace"]


def test_runtime_speaks_v2_over_http_and_grpc():
    """KServe routes its Service's port 80 to the first container port (HTTP); gRPC is the port named h2c."""
    ports = kserve_container()["ports"]
    assert ports[0].get("name") != "h2c"
    assert [p["name"] for p in ports[1:]] == ["h2c"]
    assert {"v2", "grpc-v2"} <= set(runtime()["spec"]["protocolVersions"])


def test_runtime_image_is_the_serving_image_of_the_gpu_deployment():
    deployment = one(variant_docs("gpu"), "Deployment").body
    assert (
        runtime()["spec"]["containers"][0]["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    )


def test_predictor_holds_one_gpu_on_gpu_nodes():
    predictor = service()["spec"]["predictor"]
    resources = predictor["model"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"].get("nvidia.com/gpu", 1) == 1
    assert predictor["nodeSelector"].get("nvidia.com/gpu.present") == "true"
    assert any(t["key"] == "nvidia.com/gpu" for t in predictor["tolerations"])
    prefix = settings_class().model_config["env_prefix"]
    env = {e["name"]: e.get("value") for e in kserve_container()["env"]}
    assert env[f"{prefix}DEVICE"] == "cuda"


def test_predictor_scales_out():
    predictor = service()["spec"]["predictor"]
    assert 2 <= predictor["minReplicas"] < predictor["maxReplicas"]
    annotations = service()["metadata"]["annotations"]
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    assert 0 < int(annotations["serving.kserve.io/targetUtilizationPercentage"]) <= 100


def embedded_pod() -> dict:
    """The core-Kubernetes parts of both resources as one Pod, as KServe will assemble them."""
    spec = runtime()["spec"]
    predictor = service()["spec"]["predictor"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-embedded-parts"},
        "spec": {
            "containers": [kserve_container()],
            "volumes": spec.get("volumes", []),
            "securityContext": spec["securityContext"],
            "nodeSelector": predictor["nodeSelector"],
            "tolerations": predictor["tolerations"],
            "serviceAccountName": predictor["serviceAccountName"],
        },
    }


@pytest.mark.parametrize("version", [MIN_KUBERNETES, LATEST_KUBERNETES])
def test_embedded_kubernetes_parts_are_valid_strict(version: str):
    kubernetes_validate.validate(embedded_pod(), version, strict=True)


def test_runtime_container_is_least_privilege():
    pod = embedded_pod()["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    context = pod["containers"][0]["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and "emptyDir" in volumes[tmp[0]["name"]]


def test_prometheus_annotations_point_at_the_server(app):
    annotations = runtime()["spec"]["annotations"]
    port = kserve_container()["ports"][0]["containerPort"]
    assert int(annotations["prometheus.kserve.io/port"]) == port
    path = annotations["prometheus.kserve.io/path"]
    scope = {"type": "http", "path": path, "method": "GET", "root_path": ""}
    assert any(route.matches(scope)[0] == Match.FULL for route in app.routes), f"{path} is not a route"
    assert TestClient(app).get(path).status_code == 200, "the metrics path must be open to scrapers"


# deploy/kserve/transformer: niff-serve as KServe's transformer in front of Triton.
TRANSFORMER = KSERVE / "transformer" / "inferenceservice.yaml"


def transformer_service() -> dict:
    return one(load_docs([TRANSFORMER]), "InferenceService").body


def transformer_container() -> dict:
    [container] = transformer_service()["spec"]["transformer"]["containers"]
    return container


def test_transformer_example_fronts_triton_over_grpc():
    spec = transformer_service()["spec"]
    predictor = spec["predictor"]["model"]
    assert (predictor["runtime"], predictor["modelFormat"]["name"]) == ("kserve-tritonserver", "onnx")
    assert predictor["protocolVersion"] == "grpc-v2"
    assert [p["name"] for p in predictor["ports"]] == ["h2c"], "port 80 of the predictor's Service must be gRPC"
    env = {e["name"]: e["value"] for e in transformer_container()["env"]}
    # Both read one repository: Triton its model.onnx files, niff-serve their niff.json and labels.
    assert env["STORAGE_URI"] == predictor["storageUri"]
    assert env["NIFF_MODEL_REPOSITORY"] == "/mnt/models"
    assert "/niff-serve-onnx:" in transformer_container()["image"] and transformer_container()["image"].endswith("-cpu")
    assert "nvidia.com/gpu" not in transformer_container()["resources"]["limits"]
    assert spec["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_niff_serve_takes_the_arguments_kserve_appends_to_a_transformer(monkeypatch, tmp_path):
    """KServe adds --model_name, --predictor_host <name>-predictor.<namespace> and --http_port 8080 to a custom
    transformer's arguments: niff-serve must start from them, calling the predictor's Service over gRPC."""
    from niff_serve.process.cli import load_settings

    service = transformer_service()
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    for variable in transformer_container()["env"]:
        monkeypatch.setenv(variable["name"], variable["value"])
    monkeypatch.setenv("NIFF_MODEL_REPOSITORY", str(tmp_path))
    appended = ["--model_name", name, "--predictor_host", f"{name}-predictor.{namespace}", "--http_port", "8080"]
    settings = load_settings([*transformer_container().get("args", []), *appended])
    assert settings.predictor == f"grpc://{name}-predictor.{namespace}:80"
    assert settings.port == transformer_container()["ports"][0]["containerPort"] == 8080
    assert settings.grpc_port == 0


@pytest.mark.parametrize("version", [MIN_KUBERNETES, LATEST_KUBERNETES])
def test_transformer_pod_parts_are_valid_strict(version: str):
    transformer = transformer_service()["spec"]["transformer"]
    pod_keys = ("containers", "volumes", "securityContext", "serviceAccountName")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-transformer-parts"},
        "spec": {key: transformer[key] for key in pod_keys},
    }
    kubernetes_validate.validate(pod, version, strict=True)
    context = transformer_container()["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["capabilities"]["drop"] == ["ALL"]
