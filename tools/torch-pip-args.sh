#!/bin/sh
# The pip arguments that install torch for this project: one pinned build, the CPU one unless asked otherwise.
#
#   tools/torch-pip-args.sh PYTHON [VERSION] [VARIANT]
#
# VARIANT is a PyTorch build tag (cpu, cu130, ...; default cpu); PyTorch's index for it is
# https://download.pytorch.org/whl/VARIANT. On PyPI a plain `torch==VERSION` is a CUDA build
# for Linux (several GB of nvidia-* packages), so the build tag is always pinned: `torch==VERSION+VARIANT`.
# When pip's own configured sources (find-links: a local wheel store) already hold that wheel, it comes
# from there and no index is added; otherwise the PyTorch index is added as an extra index. The check asks
# PYTHON's pip with --no-index, so it never touches the network. macOS wheels carry no build tag (PyPI's
# are CPU builds there), so on macOS the version alone is pinned.
set -eu

python=${1:?usage: tools/torch-pip-args.sh PYTHON [VERSION] [VARIANT]}
version=${2:-2.13.0}
variant=${3:-cpu}
index=https://download.pytorch.org/whl/$variant

if [ "$(uname -s)" = Darwin ]; then
    spec="torch==$version"
else
    spec="torch==$version+$variant"
fi

probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
if "$python" -m pip download --quiet --no-index --no-deps --only-binary=:all: --dest "$probe" "$spec" \
    >/dev/null 2>&1; then
    echo "$spec"
else
    echo "$spec --extra-index-url $index"
fi
