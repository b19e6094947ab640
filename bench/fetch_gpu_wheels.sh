#!/usr/bin/env bash
# Download the wheels a bare GPU machine lacks (no package registry there) into .whl/ (git-ignored):
# the data-IO packages, MONAI, cuCIM and the CPU-metric peers, for CPython 3.12 on x86-64 Linux.
# Then carry .whl to the GPU machine and run bench/gpu_session.sh there (docs/gpu-checks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
CUCIM=${CUCIM:-cucim-cu13==26.10.0}   # cucim-cu12 for a CUDA 12 machine
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  nibabel==5.4.2 pynrrd==1.1.3 monai==1.6.1 "$CUCIM" surface-distance==0.1 edt==3.1.2 \
  connected-components-3d==4.1.1
ls -la .whl
