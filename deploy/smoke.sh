#!/usr/bin/env bash
# Smoke test of the niff-serve image: run it on a model repository, wait until it reports ready,
# classify one image over REST, check the answer, then stop it and check that it shut down cleanly.
#
#   niff-export ckpt.pt --size 224 --out ./models      # a model repository (docs/model-repository.md)
#   make image                                         # the image to test
#   deploy/smoke.sh [IMAGE]                            # default IMAGE: niff-serve:<version>-cuda
#
# Needs docker or podman (with network access to pull the base images when building), curl and
# python3 on the host. Settings, all optional, from the environment:
#   MODEL_REPOSITORY  host folder mounted read-only at /models (default: ./models)
#   MODEL             model to classify with (default: the first one the server lists)
#   IMAGE_FILE        image to send (default: a small built-in PNG)
#   CONTAINER_ENGINE  docker or podman (default: the first that answers)
#   GPU               auto | yes | no: pass the host's GPUs through (auto: yes when nvidia-smi works)
#   HOST_PORT         loopback port to publish the server on (default: 18000)
#   READY_TIMEOUT     seconds to wait for readiness (default: 600; large models warm up slowly)
#   SMOKE_API_KEY     sent as "Authorization: Bearer ..." when the server has an API key
#   SMOKE_URL         test a server that is already running (e.g. `kubectl port-forward` to the
#                     Service) instead of starting a container; IMAGE is then not used
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../pyproject.toml")"
image="${1:-niff-serve:${version}-cuda}"
repository="${MODEL_REPOSITORY:-./models}"
gpu="${GPU:-auto}"
host_port="${HOST_PORT:-18000}"
ready_timeout="${READY_TIMEOUT:-600}"
engine=""
container=""
workdir="$(mktemp -d)"

log() { printf 'smoke: %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

cleanup() {
    local status=$?
    if [[ -n "$container" ]]; then
        if [[ $status -ne 0 ]]; then
            log "container logs:"
            "$engine" logs "$container" >&2 2>&1 || true
        fi
        "$engine" rm -f "$container" >/dev/null 2>&1 || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT

auth=()
if [[ -n "${SMOKE_API_KEY:-}" ]]; then
    auth=(-H "Authorization: Bearer ${SMOKE_API_KEY}")
fi

command -v curl >/dev/null || fail "curl is needed"
command -v python3 >/dev/null || fail "python3 is needed (it checks the JSON answers)"

pick_engine() {
    if [[ -n "${CONTAINER_ENGINE:-}" ]]; then
        engine="$CONTAINER_ENGINE"
    elif docker info >/dev/null 2>&1; then
        engine=docker
    elif command -v podman >/dev/null 2>&1; then
        engine=podman
    else
        fail "no working container engine (docker daemon or podman); set SMOKE_URL to test a running server"
    fi
}

gpu_flags() {
    if [[ "$gpu" == auto ]]; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then gpu=yes; else gpu=no; fi
    fi
    if [[ "$gpu" == yes ]]; then
        # docker: the NVIDIA Container Toolkit's --gpus; podman: the toolkit's CDI devices.
        if [[ "$engine" == podman ]]; then echo "--device nvidia.com/gpu=all"; else echo "--gpus all"; fi
    else
        # Without a GPU, the CUDA image serves from the CPU (onnxruntime-gpu includes the CPU provider);
        # auto would choose it too, the explicit setting documents the intent.
        echo "-e NIFF_DEVICE=cpu"
    fi
}

start_container() {
    [[ -d "$repository" ]] || fail "model repository '$repository' not found (niff-export ckpt.pt --size 224 --out $repository)"
    local mount
    mount="$(cd "$repository" && pwd)"
    local -a flags
    read -r -a flags <<<"$(gpu_flags)"
    container="niff-smoke-$$"
    log "starting $image with $engine (GPU: $gpu), models from $mount"
    # Run it the way Kubernetes does: read-only root, /tmp writable, no capabilities, no privilege
    # escalation, the image's own unprivileged user.
    "$engine" run -d --name "$container" \
        -p "127.0.0.1:${host_port}:8000" \
        -v "${mount}:/models:ro" \
        --read-only --tmpfs /tmp:rw,size=1g \
        --cap-drop ALL --security-opt no-new-privileges \
        -e NIFF_LOG_LEVEL=info \
        "${flags[@]}" "$image" >/dev/null
}

wait_ready() {
    local deadline=$((SECONDS + ready_timeout))
    log "waiting up to ${ready_timeout}s for $url/v2/health/ready"
    until curl -fsS -o /dev/null "$url/v2/health/ready" 2>/dev/null; do
        if [[ -n "$container" ]] && [[ "$("$engine" inspect -f '{{.State.Running}}' "$container")" != true ]]; then
            fail "the container exited before it was ready"
        fi
        ((SECONDS < deadline)) || fail "not ready after ${ready_timeout}s"
        sleep 2
    done
    log "ready"
}

# "NAME CLASSES" of the model to use: $MODEL, or the first one the server lists.
pick_model() {
    curl -fsS "${auth[@]}" "$url/v1/models" >"$workdir/models.json" || fail "GET /v1/models"
    python3 - "$workdir/models.json" "${MODEL:-}" <<'PY'
import json, sys
models = json.load(open(sys.argv[1]))["models"]
wanted = sys.argv[2]
found = [m for m in models if m["name"] == wanted] if wanted else models[:1]
if not found:
    sys.exit(f"smoke: model {wanted!r} is not served; the server has {[m['name'] for m in models]}")
print(found[0]["name"], found[0]["num_classes"])
PY
}

classify() {
    local model="$1" top_k="$2" image_file="${IMAGE_FILE:-}"
    if [[ -z "$image_file" ]]; then
        # 32x32 RGB gradient; the server resizes it to the model's input size.
        image_file="$workdir/smoke.png"
        base64 -d >"$image_file" <<'PNG'
iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAALUlEQVR42u3NsQ0AIAzAsCAx9GxO5wnYHGX3qjP17930NQAAAAAAAAAAAPCqC4UeAu65Hn1TAAAAAElFTkSuQmCC
PNG
    fi
    log "classifying $image_file with model $model"
    curl -fsS "${auth[@]}" -X POST -H "Content-Type: application/octet-stream" \
        --data-binary "@$image_file" "$url/v1/models/${model}:classify?top_k=${top_k}" >"$workdir/answer.json" \
        || fail "POST /v1/models/${model}:classify"
    python3 - "$workdir/answer.json" "$model" "$top_k" <<'PY'
import json, math, sys
answer = json.load(open(sys.argv[1]))
model, top_k = sys.argv[2], int(sys.argv[3])
assert answer["model"] == model, f"answer is for model {answer['model']!r}, not {model!r}"
assert len(answer["predictions"]) == 1, f"{len(answer['predictions'])} predictions for one image"
top = answer["predictions"][0]["top_k"]
assert len(top) == top_k, f"top_k={top_k} gave {len(top)} classes"
probabilities = [c["probability"] for c in top]
assert all(0.0 <= p <= 1.0 and math.isfinite(p) for p in probabilities), probabilities
assert probabilities == sorted(probabilities, reverse=True), "classes are not best first"
assert all(isinstance(c["label"], str) and isinstance(c["index"], int) for c in top), top
best = top[0]
print(f"smoke: top-1 {best['label']!r} (class {best['index']}) p={best['probability']:.4f}, "
      f"{answer['timing']['total_ms']:.1f} ms", file=sys.stderr)
PY
}

stop_container() {
    log "stopping (SIGTERM, drain)"
    "$engine" stop -t 60 "$container" >/dev/null
    local code
    code="$("$engine" inspect -f '{{.State.ExitCode}}' "$container")"
    # 0, or 143 (128 + SIGTERM: uvicorn re-raises the signal once it has shut down cleanly). 137 means
    # the engine had to SIGKILL it: the drain did not finish within the stop timeout.
    [[ "$code" == 0 || "$code" == 143 ]] || fail "exit code $code after SIGTERM (expected a clean drain)"
}

if [[ -n "${SMOKE_URL:-}" ]]; then
    url="${SMOKE_URL%/}"
else
    pick_engine
    url="http://127.0.0.1:${host_port}"
    start_container
fi
wait_ready
read -r model classes <<<"$(pick_model)"
[[ -n "$model" ]] || fail "no model to classify with"
classify "$model" "$((classes < 3 ? classes : 3))"
if [[ -n "$container" ]]; then
    stop_container
fi
log "passed"
