#!/usr/bin/env bash
# Build mmcv (full, with its compiled CPU ops) from the registry's source distribution
# against the torch of the given Python, once per machine, and install it.
#
# The wheel is kept in a cache keyed by the torch and Python versions
# ($MMREPVGG_WHEEL_CACHE, default ~/.cache/mmrepvgg/wheels), so later installs take seconds.
# Why a patch: torch >= 2.10 headers require C++20, while mmcv 2.1.0's setup.py passes
# -std=c++17; we raise that flag to C++20 and change nothing else.
#
# Usage: tools/build_mmcv.sh PYTHON
set -euo pipefail

PY=${1:?usage: tools/build_mmcv.sh PYTHON}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}

torch_ver=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
cache="${MMREPVGG_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmrepvgg/wheels}/torch-${torch_ver}-${py_tag}"

wheel=$(ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    echo "[build_mmcv] no cached wheel in $cache: building mmcv $MMCV_VERSION with ops" \
         "(about 15 minutes on 2 cores)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$PY" -m pip download --no-deps --no-binary :all: --no-build-isolation \
        "mmcv==$MMCV_VERSION" -d "$work"
    tar xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
    src="$work/mmcv-$MMCV_VERSION"
    sed -i "s/'-std=c++17'/'-std=c++20'/g" "$src/setup.py"
    grep -q "'-std=c++20'" "$src/setup.py" || { echo "[build_mmcv] patch did not apply" >&2; exit 1; }
    start=$(date +%s)
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "$PY" -m pip wheel --no-build-isolation --no-deps "$src" -w "$work/dist"
    echo "[build_mmcv] built in $(( $(date +%s) - start )) s"
    mkdir -p "$cache"
    built=$(ls "$work"/dist/mmcv-*.whl)
    # copy under a temporary name, then rename: a killed build never leaves a half wheel
    cp "$built" "$cache/.partial.$$"
    mv "$cache/.partial.$$" "$cache/$(basename "$built")"
    wheel="$cache/$(basename "$built")"
fi
echo "[build_mmcv] installing $wheel"
"$PY" -m pip install --no-deps --force-reinstall "$wheel"
