#!/usr/bin/env bash
# Fill .whl/ with the Python packages a lent GPU machine lacks, for scripts/device_checks.sh.
#
#   scripts/device_wheels.sh            # here, where pip can reach the package registry
#
# The GPU image (Python 3.12, x86-64; /work/.library/device/KINDS.md) has torch, triton, numpy,
# pyarrow, matplotlib, pytest, pytest-benchmark and pytest-timeout, but not DeepSpeed (nor its
# pydantic and hjson) or datasets (nor its dill and multiprocess). DeepSpeed's wheel is built here
# with its ops left to JIT (pure Python); the others are downloaded as cp312 manylinux wheels.
# The versions are this checkout's .venv's, so the GPU run uses what CI tests. .whl/ is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl.tmp && mkdir -p .whl.tmp
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w .whl.tmp "deepspeed==$(version deepspeed)"
pkgs=()
for name in hjson pydantic pydantic_core annotated_types typing_inspection datasets dill multiprocess; do
    pkgs+=("$name==$(version "$name")")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl.tmp "${pkgs[@]}"
rm -rf .whl && mv .whl.tmp .whl
ls -l .whl
