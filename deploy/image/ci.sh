#!/usr/bin/env bash
# CI step (`make image-test`): build the CPU serve-onnx and export images for real and run them the
# way the CPU Deployment does. The export image turns the embedded digits checkpoint into a model
# repository (the init container's job); the serve-onnx image serves it, and deploy/smoke.sh checks it
# (readiness, a classification, the HEALTHCHECK command, a SIGTERM drain with a request in flight).
# Then each image is checked: exactly its lock's packages (serve-onnx: no torch), no setuid or setgid
# file, no package manager, no VOLUME, the OCI labels, and its size.
#
# Where no container engine can run (not Linux; or none installed and none installable, which needs
# root and apt-get) it says so in one line and succeeds. Optional settings (environment):
#   CONTAINER_ENGINE     docker or podman (default: podman if installed, else docker, else podman via apt)
#   BASE_IMAGE           default: the Dockerfile's; where it cannot be pulled, a debootstrap stand-in
#                        (deploy/image/base.sh, cached in build/image/)
#   CONTAINER_RUN_FLAGS  more flags for `run` (default for podman: runc and explicit rlimits)
# torch's CPU wheel comes from pip's local wheel store (PIP_FIND_LINKS or pip's find-links setting)
# when that holds the file the lock pins, else from the PyTorch CPU index; pip's CA bundle (PIP_CERT
# or pip's cert setting), when set, reaches pip in the build as the ca-certificates secret.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

say() { printf 'image-test: %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
work="$PWD/build/image/test"
declare -A limits=([serve-onnx]=500 [export]=1200) built_s=()

if [[ "$(uname -s)" != Linux ]]; then
    echo "image-test: skipped: containers need a Linux host"
    exit 0
fi
engine="${CONTAINER_ENGINE:-}"
if [[ -z "$engine" ]]; then
    if command -v podman >/dev/null; then
        engine=podman
    elif docker info >/dev/null 2>&1; then
        engine=docker
    elif [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing podman (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc uidmap slirp4netns fuse-overlayfs >/dev/null
        engine=podman
    else
        echo "image-test: skipped: no container engine here, and none can be installed (needs root and apt-get)"
        exit 0
    fi
fi

run_flags="${CONTAINER_RUN_FLAGS-}"
if [[ -z "${CONTAINER_RUN_FLAGS+set}" && "$engine" == podman ]]; then
    # crun cannot set rlimits under some cgroup layouts (hybrid v1); runc can. Without systemd, podman
    # cannot schedule health checks (smoke.sh runs the HEALTHCHECK command itself).
    run_flags="--ulimit nofile=20000:20000 --ulimit nproc=32768:32768 --no-healthcheck"
    if command -v runc >/dev/null; then
        run_flags="--runtime runc $run_flags"
    fi
fi
read -r -a run <<<"$run_flags"

base="${BASE_IMAGE:-}"
if [[ -z "$base" ]]; then
    base="$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)"
    if ! "$engine" image inspect "$base" >/dev/null 2>&1 && ! "$engine" pull -q "$base" >/dev/null 2>&1; then
        say "cannot pull $base: using a debootstrap stand-in"
        if ! command -v debootstrap >/dev/null; then
            if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
                fail "debootstrap is needed for the stand-in base, and cannot be installed here"
            fi
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
        fi
        base=localhost/niff-debootstrap:bookworm
        CONTAINER_ENGINE="$engine" deploy/image/base.sh "$base"
    fi
fi

make_args=(CONTAINER_ENGINE="$engine" BASE_IMAGE="$base" VARIANT=cpu)
wheels="$PWD/build/image/wheels"
rm -rf "$wheels"
mkdir -p "$wheels"
locked="$(sed -n '/^torch==/,/^[^ ]/s/.*--hash=sha256:\([0-9a-f]*\).*/\1/p' deploy/image/locks/export-cpu.txt)"
for store in ${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}; do
    for wheel in "$store"/torch-*.whl; do
        if [[ -f "$wheel" ]] && grep -qx "$(sha256sum "$wheel" | cut -d' ' -f1)" <<<"$locked"; then
            ln -f "$wheel" "$wheels/" 2>/dev/null || cp "$wheel" "$wheels/"
        fi
    done
done
if compgen -G "$wheels/*.whl" >/dev/null; then
    say "torch from the local wheel store: $(cd "$wheels" && echo *.whl)"
    make_args+=(WHEELS="$wheels" TORCH_INDEX_URL=)
fi
ca="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
if [[ -f "$ca" ]]; then
    make_args+=(CA_CERTIFICATES="$ca")
fi

for target in serve-onnx export; do
    say "building niff-$target:$version-cpu on $base"
    started=$SECONDS
    make --no-print-directory image TARGET="$target" "${make_args[@]}" >"build/image/$target.log" 2>&1 \
        || { tail -40 "build/image/$target.log" >&2; fail "building $target (log: build/image/$target.log)"; }
    built_s[$target]=$((SECONDS - started))
done

# The init container's command, as the CPU Deployment runs it (read-only root, no capabilities).
rm -rf "$work"
mkdir -p "$work/checkpoints" "$work/models"
cp niff/assets/digits_resnet.pt "$work/checkpoints/model.pt"
chmod 0777 "$work/models"
say "exporting the digits checkpoint with niff-export:$version-cpu"
"$engine" run --rm "${run[@]}" --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
    -v "$work/checkpoints:/checkpoints:ro" -v "$work/models:/models" \
    "niff-export:$version-cpu" /checkpoints/model.pt --size 32 --out /models --name digits >"$work/export.log" 2>&1 \
    || { cat "$work/export.log" >&2; fail "niff-export in the export image"; }
[[ -f "$work/models/digits/1/model.onnx" ]] || fail "the export image wrote no ONNX model"

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
CONTAINER_ENGINE="$engine" CONTAINER_RUN_FLAGS="$run_flags" MODEL_REPOSITORY="$work/models" GPU=no \
    HOST_PORT="$port" READY_TIMEOUT=300 deploy/smoke.sh "niff-serve-onnx:$version-cpu"

# in_image IMAGE COMMAND...: run COMMAND in IMAGE (as root, to see every file).
in_image() {
    local image="$1"
    shift
    "$engine" run --rm "${run[@]}" --user 0 --entrypoint "$1" "$image" "${@:2}"
}

revision="$(git rev-parse HEAD)"
for target in serve-onnx export; do
    image="niff-$target:$version-cpu"
    # Exactly the lock's packages (and the project itself), whatever the index holds today.
    in_image "$image" python -c '
import importlib.metadata, re
for d in importlib.metadata.distributions():
    print(re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() + "==" + d.version)' | sort >"$work/$target.installed"
    { sed -n 's/^\([a-z0-9][^ =]*==[^ ]*\).*/\1/p' "deploy/image/locks/$target-cpu.txt"; echo "niff-deploy==$version"; } \
        | sort >"$work/$target.locked"
    diff -u "$work/$target.locked" "$work/$target.installed" >&2 || fail "$image: packages differ from its lock"
    setuid="$(in_image "$image" find / -xdev -type f -perm /6000)"
    [[ -z "$setuid" ]] || fail "$image: setuid/setgid files: $setuid"
    managers="$(in_image "$image" sh -c 'command -v apt apt-get dpkg' || true)"
    [[ -z "$managers" ]] || fail "$image: package manager left in: $managers"
    inspect="$("$engine" image inspect -f '{{json .Config.Volumes}} {{.Size}} {{index .Config.Labels "org.opencontainers.image.version"}} {{index .Config.Labels "org.opencontainers.image.revision"}} {{index .Config.Labels "org.opencontainers.image.created"}}' "$image")"
    read -r volumes size label_version label_revision created <<<"$inspect"
    [[ "$volumes" == null || "$volumes" == "{}" ]] || fail "$image: declares volumes $volumes"
    [[ "$label_version" == "$version" && "$label_revision" == "$revision" && "$created" == 20* ]] \
        || fail "$image: labels version=$label_version revision=$label_revision created=$created"
    ((size <= limits[$target] * 1000000)) || fail "$image: $((size / 1000000)) MB, over ${limits[$target]} MB"
    say "$image: $((size / 1000000)) MB (limit ${limits[$target]} MB), built in ${built_s[$target]} s; packages = lock"
done
in_image "niff-serve-onnx:$version-cpu" python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is not None)' \
    || fail "torch is importable in the serve-onnx image"
say "passed"
