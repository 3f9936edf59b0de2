#!/usr/bin/env bash
# Smoke test of a niff-serve image: run it on a model repository, wait until it reports ready,
# classify one image over REST, check the answer, run the image's HEALTHCHECK command, then drain:
# SIGTERM with a request in flight, which must still be answered, and a clean exit.
#
#   niff-export ckpt.pt --size 224 --out ./models      # a model repository (docs/model-repository.md)
#   make image                                         # the image to test
#   deploy/smoke.sh [IMAGE]                            # default IMAGE: niff-serve-onnx:<version>-cuda
#
# Needs docker or podman, curl and python3 on the host. Settings, all optional, from the environment:
#   MODEL_REPOSITORY    host folder mounted read-only at /models (default: ./models)
#   MODEL               model to classify with (default: the first one the server lists)
#   IMAGE_FILE          image to send (default: a small built-in PNG)
#   CONTAINER_ENGINE    docker or podman (default: the first that answers)
#   CONTAINER_RUN_FLAGS more flags for `run`, e.g. podman on a host where crun cannot set rlimits:
#                       "--runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768"
#   GPU                 auto | yes | no: pass the host's GPUs through (auto: yes when nvidia-smi works)
#   HOST_PORT           loopback port to publish the server on (default: 18000)
#   READY_TIMEOUT       seconds to wait for readiness (default: 600; large models warm up slowly)
#   SMOKE_API_KEY       sent as "Authorization: Bearer ..." when the server has an API key
#   SMOKE_URL           test a server that is already running (e.g. `kubectl port-forward` to the
#                       Service) instead of starting a container; IMAGE is then not used
#   SMOKE_DRAIN_PID     with SMOKE_URL: the server's process id on this host, to drain it too
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../pyproject.toml")"
image="${1:-niff-serve-onnx:${version}-cuda}"
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
            log "container state: $("$engine" inspect -f 'status={{.State.Status}} exit={{.State.ExitCode}} error={{.State.Error}}' "$container" 2>&1)"
            log "container log:"
            "$engine" logs "$container" >&2 2>&1 || log "(no log: $engine logs failed)"
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
    local -a flags extra
    read -r -a flags <<<"$(gpu_flags)"
    read -r -a extra <<<"${CONTAINER_RUN_FLAGS:-}"
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
        "${flags[@]}" "${extra[@]}" "$image" >/dev/null
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

# The image to send: IMAGE_FILE, or a built-in 32x32 RGB gradient (the server resizes it to the model's
# input size).
image_file() {
    if [[ -n "${IMAGE_FILE:-}" ]]; then
        echo "$IMAGE_FILE"
        return
    fi
    base64 -d >"$workdir/smoke.png" <<'PNG'
iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAALUlEQVR42u3NsQ0AIAzAsCAx9GxO5wnYHGX3qjP17930NQAAAAAAAAAAAPCqC4UeAu65Hn1TAAAAAElFTkSuQmCC
PNG
    echo "$workdir/smoke.png"
}

classify() {
    local model="$1" top_k="$2" image_file
    image_file="$(image_file)"
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

# The image's HEALTHCHECK command, run inside the container: it must pass on a ready server.
check_healthcheck() {
    local -a command
    mapfile -d '' -t command < <("$engine" image inspect -f '{{json .Config.Healthcheck.Test}}' "$image" | python3 -c '
import json, sys
test = json.load(sys.stdin)
if not test or test[0] != "CMD":
    sys.exit(f"smoke: the image has no exec-form HEALTHCHECK: {test}")
sys.stdout.write("\0".join(test[1:]))
')
    ((${#command[@]})) || fail "the image has no HEALTHCHECK"
    "$engine" exec "$container" "${command[@]}" || fail "the image's HEALTHCHECK command fails on a ready server"
    log "health check passes"
}

# SIGTERM with a request in flight (headers and half the body sent): the server must stop reporting
# ready, yet answer that request. The signal comes from `$engine stop` (container) or, for a server
# on this host, from kill(SMOKE_DRAIN_PID), after which new connections must be refused as well.
drain() {
    local model="$1"
    local -a stop
    if [[ -n "$container" ]]; then
        stop=("$engine" stop -t 60 "$container")
    else
        stop=(--pid "$SMOKE_DRAIN_PID")
    fi
    log "SIGTERM with a request in flight"
    python3 - "$url" "/v1/models/${model}:classify?top_k=1" "$(image_file)" "${stop[@]}" <<'PY' || fail "drain"
import json, os, signal, socket, subprocess, sys, time, urllib.error, urllib.request
url, path, image_file, *stop = sys.argv[1:]
host, port = url.removeprefix("http://").split(":")
body = open(image_file, "rb").read()
half = len(body) // 2

def ready():
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5):
            return True
    except (urllib.error.URLError, OSError):
        return False

def wait_for(condition, what, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"smoke: {what} within {seconds} s of SIGTERM")
        time.sleep(0.2)

def refused():
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        return False
    except OSError:
        return True

connection = socket.create_connection((host, int(port)), timeout=60)
connection.sendall(
    f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body[:half]
)
if stop[0] == "--pid":
    os.kill(int(stop[1]), signal.SIGTERM)
    stopper = None
else:
    stopper = subprocess.Popen(stop, stdout=subprocess.DEVNULL)
wait_for(lambda: not ready(), "still ready")
if stopper is None:
    wait_for(refused, "still accepting connections")
connection.sendall(body[half:])
chunks = []
while chunk := connection.recv(65536):
    chunks.append(chunk)
head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
status = int(head.split()[1]) if head else 0
if status != 200:
    sys.exit(f"smoke: the request in flight got {status or 'no answer'}: {payload[:300]!r}")
if not json.loads(payload)["predictions"][0]["top_k"]:
    sys.exit("smoke: the request in flight got no predictions")
if stopper is not None and stopper.wait(timeout=120) != 0:
    sys.exit(f"smoke: {' '.join(stop)} failed")
print("smoke: drained: the request in flight was answered after SIGTERM", file=sys.stderr)
PY
    if [[ -n "$container" ]]; then
        local code
        code="$("$engine" inspect -f '{{.State.ExitCode}}' "$container")"
        # 0, or 143 (128 + SIGTERM: uvicorn re-raises the signal once it has shut down cleanly). 137
        # means the engine had to SIGKILL it: the drain did not finish within the stop timeout.
        [[ "$code" == 0 || "$code" == 143 ]] || fail "exit code $code after SIGTERM (expected a clean drain)"
    fi
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
    check_healthcheck
fi
if [[ -n "$container" || -n "${SMOKE_DRAIN_PID:-}" ]]; then
    drain "$model"
fi
log "passed"
