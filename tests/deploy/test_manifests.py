"""The Kubernetes manifests: strict schema validation, and the properties the deployment relies on
(selectors, autoscaling, disruption budget, least privilege, GPU scheduling, graceful rollout)."""

from __future__ import annotations

import kubernetes_validate
import pytest
from deploy_support import (
    DEPLOY,
    K8S,
    KSERVE,
    MIN_KUBERNETES,
    ROOT,
    Doc,
    core_docs,
    cpu_cores,
    env_literals,
    load_docs,
    make_image_tag,
    manifest_files,
    one,
    settings_class,
    variant_docs,
)

VARIANTS = ("gpu", "cpu")
CRD_GROUPS = ("serving.kserve.io/",)
LATEST_KUBERNETES = kubernetes_validate.utils.latest_version()


def test_every_manifest_file_is_checked():
    """Every YAML file under deploy/ is either schema-validated here (deploy/k8s) or a KServe custom
    resource checked in test_kserve.py; nothing is left out, and nothing is empty."""
    files = manifest_files()
    assert files, "no manifests"
    for path in files:
        docs = load_docs([path])
        assert docs, f"{path.relative_to(ROOT)} holds no resource"
        for doc in docs:
            if K8S in path.parents:
                assert not doc.body["apiVersion"].startswith(CRD_GROUPS), f"{doc.id}: a CRD outside deploy/kserve"
            else:
                assert KSERVE in path.parents, f"{path.relative_to(ROOT)}: not under deploy/k8s or deploy/kserve"
                assert doc.body["apiVersion"].startswith(CRD_GROUPS), doc.id
    assert {p.parent.name for p in files if K8S in p.parents} == {"common", *VARIANTS}


def test_schemas_are_bundled_offline():
    """kubernetes-validate carries the schemas in the package: no network needed."""
    from importlib import resources

    bundled = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    versions = {p.name for p in bundled.iterdir()}
    assert f"v{MIN_KUBERNETES}-local-strict" in versions
    assert f"v{LATEST_KUBERNETES}-local-strict" in versions


@pytest.mark.parametrize("version", [MIN_KUBERNETES, LATEST_KUBERNETES])
@pytest.mark.parametrize("doc", core_docs(), ids=lambda d: d.id)
def test_manifest_is_valid_kubernetes_strict(doc: Doc, version: str):
    kubernetes_validate.validate(doc.body, version, strict=True)


def test_strict_validation_rejects_a_misspelled_field():
    """Guards the check itself: a typo in a probe must fail, not pass as an unknown field."""
    deployment = one(variant_docs("gpu"), "Deployment").body
    broken = {**deployment, "spec": {**deployment["spec"], "template": {**deployment["spec"]["template"]}}}
    pod = dict(broken["spec"]["template"]["spec"])
    container = dict(pod["containers"][0])
    container["readinessProbe"] = {**container["readinessProbe"], "periodSecond": 5}
    pod["containers"] = [container]
    broken["spec"]["template"] = {**broken["spec"]["template"], "spec": pod}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, LATEST_KUBERNETES, strict=True)


# --------------------------------------------------------------------------------------------------
# Names, namespaces, selectors
# --------------------------------------------------------------------------------------------------
def namespace() -> str:
    return one(load_docs(sorted((K8S / "common").glob("*.yaml"))), "Namespace").name


@pytest.mark.parametrize("doc", [d for d in core_docs() if d.kind != "Namespace"], ids=lambda d: d.id)
def test_everything_lives_in_the_shipped_namespace(doc: Doc):
    assert doc.body["metadata"].get("namespace") == namespace()


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("variant", VARIANTS)
def test_selectors_match_the_pods(variant: str):
    docs = variant_docs(variant)
    deployment = one(docs, "Deployment").body
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert selects(one(docs, "Service").body["spec"]["selector"], labels)
    assert selects(one(docs, "PodDisruptionBudget").body["spec"]["selector"]["matchLabels"], labels)
    assert selects(one(docs, "NetworkPolicy").body["spec"]["podSelector"]["matchLabels"], labels)
    for constraint in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        assert selects(constraint["labelSelector"]["matchLabels"], labels)
    target = one(docs, "HorizontalPodAutoscaler").body["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        one(docs, "Deployment").name,
    )


def test_variants_do_not_select_each_others_pods():
    """Both variants may run in one namespace: a Service or PDB of one must not cover the other's pods."""
    gpu, cpu = (variant_docs(v) for v in VARIANTS)
    for mine, theirs in ((gpu, cpu), (cpu, gpu)):
        other_pods = one(theirs, "Deployment").body["spec"]["template"]["metadata"]["labels"]
        assert not selects(one(mine, "Service").body["spec"]["selector"], other_pods)
        assert not selects(one(mine, "PodDisruptionBudget").body["spec"]["selector"]["matchLabels"], other_pods)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"):
        assert one(gpu, kind).name != one(cpu, kind).name, kind


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_use_the_shipped_service_account_without_a_token(variant: str):
    account = one(load_docs(sorted((K8S / "common").glob("*.yaml"))), "ServiceAccount").body
    assert account["automountServiceAccountToken"] is False
    pod = one(variant_docs(variant), "Deployment").body["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False


# --------------------------------------------------------------------------------------------------
# Scaling and disruption
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_hpa_owns_the_replica_count(variant: str):
    docs = variant_docs(variant)
    hpa = one(docs, "HorizontalPodAutoscaler").body
    assert hpa["apiVersion"] == "autoscaling/v2"
    deployment = one(docs, "Deployment").body
    assert "replicas" not in deployment["spec"], "with an HPA, `kubectl apply` must not reset the replica count"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"], "at least two pods for availability"
    # Utilization targets are relative to requests: every container must request what is measured.
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Resource":
            resource = metric["resource"]["name"]
            for container in deployment["spec"]["template"]["spec"]["containers"]:
                assert resource in container["resources"]["requests"], (container["name"], resource)
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_disruption_budget_allows_drains_but_keeps_capacity(variant: str):
    docs = variant_docs(variant)
    pdb = one(docs, "PodDisruptionBudget").body["spec"]
    minimum = one(docs, "HorizontalPodAutoscaler").body["spec"]["minReplicas"]
    assert "maxUnavailable" in pdb or "minAvailable" in pdb
    if "maxUnavailable" in pdb:
        assert 1 <= int(pdb["maxUnavailable"]) < minimum
    else:
        assert 1 <= int(pdb["minAvailable"]) < minimum, "minAvailable == minReplicas would block every drain"


@pytest.mark.parametrize("variant", VARIANTS)
def test_rollout_keeps_capacity(variant: str):
    spec = one(variant_docs(variant), "Deployment").body["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["minReadySeconds"] > 0


# --------------------------------------------------------------------------------------------------
# Least privilege
# --------------------------------------------------------------------------------------------------
def all_containers(variant: str) -> list[dict]:
    pod = one(variant_docs(variant), "Deployment").body["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod["containers"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_pod_security(variant: str, dockerfile):
    pod = one(variant_docs(variant), "Deployment").body["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    uid, _, gid = dockerfile.final.last("USER").value.partition(":")
    assert security["runAsUser"] == int(uid), "the pod's user must be the image's"
    assert security.get("runAsGroup", int(gid or uid)) == int(gid or uid)
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key), key
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert not any("hostPath" in v for v in volumes.values())
    for container in all_containers(variant):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context.get("privileged", False) is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert not context["capabilities"].get("add"), container["name"]
        # A read-only root needs a writable /tmp: an emptyDir.
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{container['name']}: no emptyDir at /tmp"


@pytest.mark.parametrize("variant", VARIANTS)
def test_network_policy_allows_only_the_serving_ports_in_and_nothing_out(variant: str):
    docs = variant_docs(variant)
    policy = one(docs, "NetworkPolicy").body["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["egress"] == []
    container = one(docs, "Deployment").body["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    allowed = [p["port"] for rule in policy["ingress"] for p in rule["ports"]]
    assert sorted(ports.get(p, p) for p in allowed) == sorted(ports.values()), (allowed, ports)


@pytest.mark.parametrize("variant", VARIANTS)
def test_resources_are_bounded_and_threads_fit_the_cpu_limit(variant: str, monkeypatch):
    prefix = settings_class().model_config["env_prefix"]
    for container in all_containers(variant):
        resources = container["resources"]
        for key in ("cpu", "memory"):
            assert key in resources["requests"] and key in resources["limits"], (container["name"], key)
    serving = one(variant_docs(variant), "Deployment").body["spec"]["template"]["spec"]["containers"][0]
    limit = cpu_cores(serving["resources"]["limits"]["cpu"])
    env = env_literals(serving)
    # Every worker process runs its own inference threads: together they fit the limit.
    workers, threads = (int(env[f"{prefix}{name}"]) for name in ("WORKERS", "BACKEND_THREADS"))
    assert 1 <= workers * threads <= limit, f"{workers} workers x {threads} threads with a CPU limit of {limit}"
    preprocess = int(env[f"{prefix}PREPROCESS_WORKERS"])
    assert 1 <= preprocess <= limit, f"{preprocess} preprocessing threads with a CPU limit of {limit}"


# --------------------------------------------------------------------------------------------------
# GPU and CPU variants
# --------------------------------------------------------------------------------------------------
def test_gpu_variant_requests_one_gpu_and_targets_gpu_nodes():
    pod = one(variant_docs("gpu"), "Deployment").body["spec"]["template"]["spec"]
    serving = pod["containers"][0]
    assert serving["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert serving["resources"]["requests"].get("nvidia.com/gpu", 1) == 1, "GPU requests must equal limits"
    assert pod["nodeSelector"].get("nvidia.com/gpu.present") == "true"
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    # Only the server holds the GPU; the export init container works on the CPU.
    for init in pod.get("initContainers", []):
        assert "nvidia.com/gpu" not in init["resources"].get("limits", {})
    prefix = settings_class().model_config["env_prefix"]
    assert env_literals(serving)[f"{prefix}DEVICE"] == "cuda"


def test_cpu_variant_uses_no_gpu():
    pod = one(variant_docs("cpu"), "Deployment").body["spec"]["template"]["spec"]
    text = str(pod)
    assert "nvidia.com/gpu" not in text
    prefix = settings_class().model_config["env_prefix"]
    assert env_literals(pod["containers"][0])[f"{prefix}DEVICE"] == "cpu"


@pytest.mark.parametrize("variant", VARIANTS)
def test_images_are_the_tags_make_image_builds(variant: str):
    """Servers run the serve-onnx image of their variant (CUDA on GPU nodes), init containers the CPU
    export image: the names and tags `make image` gives them for this version, from one registry."""
    pod = one(variant_docs(variant), "Deployment").body["spec"]["template"]["spec"]
    wanted = {
        "initContainers": make_image_tag("TARGET=export"),
        "containers": make_image_tag("TARGET=serve-onnx", f"VARIANT={'cuda' if variant == 'gpu' else 'cpu'}"),
    }
    registries = set()
    for key, expected in wanted.items():
        for container in pod[key]:
            registry, _, name = container["image"].rpartition("/")
            assert name == expected, container["image"]
            assert container["imagePullPolicy"] == "Always"
            registries.add(registry)
    assert len(registries) == 1, registries


def test_deploy_folder_has_no_stray_files():
    """Everything under deploy/ is a checked manifest, the smoke test, the checks' requirements, or the
    image build's support (scripts, locks) in deploy/image."""
    image = DEPLOY / "image"
    known = set(manifest_files()) | {DEPLOY / "smoke.sh", DEPLOY / "checks-requirements.txt"}
    known |= {image / n for n in ("base.sh", "ci.sh", "lock.py", "prune.py", "sizes.py")}
    known |= set((image / "locks").glob("*.txt"))
    stray = [p for p in DEPLOY.rglob("*") if p.is_file() and p not in known and "__pycache__" not in p.parts]
    assert not stray, stray
