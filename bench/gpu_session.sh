#!/usr/bin/env bash
# Everything that needs a GPU, in as few calls as a 30-minute device budget allows:
#   bash bench/gpu_session.sh tests       # pytest -m cuda (every GPU op vs the CPU backend, full size)
#   bash bench/gpu_session.sh kernels     # bench/run_kernels.py (fused block, losses)
#   bash bench/gpu_session.sh metrics     # bench/run_metrics.py --device cuda (vs MONAI, cuCIM)
#   bash bench/gpu_session.sh train       # bench/run_train_step.py (fused vs eager / torch.compile, memory, loader)
#   bash bench/gpu_session.sh inference   # bench/run_inference.py (vs MONAI sliding_window_inference)
# Wheels from bench/fetch_gpu_wheels.sh are installed from .whl/ when present. Logs and the
# results JSON/PNG are copied to $OUT (the device tool's output folder) or bench/results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The extension and the kernels folder mapping; the machine's own torch/triton/cupy are used.
python3 -m pip install -q --no-build-isolation --no-deps -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

run() {  # run NAME COMMAND...: log to $OUT/NAME.log, keep going on failure
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$OUT/$name.log"
}

case "${1:-}" in
  tests) run cuda_tests python3 -m pytest -m cuda -q -p no:cacheprovider -rfEs ;;
  kernels) run kernels python3 bench/run_kernels.py ;;
  metrics) run metrics python3 bench/run_metrics.py --device cuda ;;
  train) run train_step python3 bench/run_train_step.py ;;
  inference) run inference python3 bench/run_inference.py ;;
  *) echo "usage: bash bench/gpu_session.sh tests|kernels|metrics|train|inference" >&2; exit 2 ;;
esac
# New result files of this run travel back next to the logs.
find bench/results -newer "$OUT/gpu.txt" -type f \( -name '*.json' -o -name '*.png' \) -exec cp {} "$OUT/" \; 2>/dev/null
exit 0
