#!/usr/bin/env bash
# Download the wheels that tools/gpu/benchmark.sh installs on a GPU machine without network
# (requirements/gpu_wheels.txt) into .whl/ (git-ignored), for CPython 3.12 on x86-64 Linux.
# Every package there has a wheel on PyPI; nothing is built.
#
#   bash tools/gpu/fetch_wheels.sh [PYTHON]      # PYTHON: any python with pip (default python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-python3}
mkdir -p .whl
grep -v '^#' requirements/gpu_wheels.txt | grep -v '^$' | while read -r pkg; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$pkg"
done
ls .whl
