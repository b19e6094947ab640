#!/usr/bin/env bash
# Everything that needs a GPU, in as few calls as a 30-minute device budget allows. One call
# runs one or more stages, each under its own time limit in seconds (STAGE=SECONDS; defaults below):
#   bash bench/gpu_session.sh tests       # pytest -m "cuda or gpu" (every GPU op vs the CPU backend, full size,
#                                         # and the kernel tests that run compiled on a GPU when there is one)
#   bash bench/gpu_session.sh kernels     # bench/run_kernels.py (fused block, losses)
#   bash bench/gpu_session.sh metrics     # bench/run_metrics.py --device cuda (vs MONAI, cuCIM)
#   bash bench/gpu_session.sh train       # bench/run_train_step.py (fused vs eager / torch.compile, memory, loader)
#   bash bench/gpu_session.sh inference   # bench/run_inference.py (vs MONAI sliding_window_inference)
#   bash bench/gpu_session.sh reproduce   # bench/reproduce_c2w.py (full-size C2W vs scratch; reruns continue it)
#   bash bench/gpu_session.sh tests=240 metrics=300   # two stages in one call, 9 minutes at most
# A stage that runs out of time is stopped (SIGINT: the bench scripts save the rows measured so
# far, marked incomplete), says so in its log, and the next one starts. Results are copied to
# $OUT after every stage, so a call killed at the device's own limit keeps the earlier stages'.
# Wheels from bench/fetch_gpu_wheels.sh are installed from .whl/ when present. Logs and the
# results JSON/PNG are copied to $OUT (the device tool's output folder) or bench/results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "WHEELS NOT INSTALLED (see pip's error above): the peers below may be missing"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The extension and the kernels folder mapping; the machine's own torch/triton/cupy are used. A warm
# machine keeps them from the previous call (the build folder is git-ignored): built once per session.
ROOT=$PWD
(cd /tmp && python3 -c "import sys, c2w_fast, c2w_fast._cpu, c2w_fast.kernels
sys.exit(not c2w_fast.__file__.startswith('$ROOT/'))") 2>/dev/null \
  || python3 -m pip install -q --no-build-isolation --no-deps -e . || exit 1
echo "commit ${C2W_COMMIT:-unknown (pass C2W_COMMIT=\$(git rev-parse HEAD))}" | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/gpu.txt"
python3 -m c2w_fast.ops 2>&1 | tee -a "$OUT/gpu.txt"  # versions, and the backend every op's auto picks here
# every module a stage imports, so a missing peer is named once here rather than found row by row
python3 -c "
import importlib
for name in ('nibabel', 'nrrd', 'tqdm', 'scipy', 'matplotlib', 'cupy', 'monai', 'skimage', 'lazy_loader',
             'cucim.core.operations.morphology', 'cucim.skimage.measure', 'cucim.skimage.morphology',
             'edt', 'cc3d', 'surface_distance', 'xdist', 'pytest_timeout'):
    try:
        importlib.import_module(name)
    except Exception as exc:
        print(f'IMPORT FAILED: {name}: {type(exc).__name__}: {exc}')
    else:
        top = importlib.import_module(name.split('.')[0])
        print(f'import ok: {name} {getattr(top, \"__version__\", \"\")}')
" | tee -a "$OUT/gpu.txt"

# Triton's and Inductor's compiled kernels, and Triton's autotuning choices (keyed by the candidates, so the
# tests' single-candidate choices are never taken for a full tuning), in a git-ignored folder of the checkout,
# which a warm machine keeps between calls: a later stage or a rerun reuses them rather than compiling again.
export TRITON_CACHE_DIR=$ROOT/.cache/triton TORCHINDUCTOR_CACHE_DIR=$ROOT/.cache/inductor TRITON_CACHE_AUTOTUNING=1
declare -A LIMIT=([tests]=300 [kernels]=500 [metrics]=200 [train]=250 [inference]=250 [reproduce]=500)
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 4")  # pytest-xdist where the machine has it
declare -A COMMAND=(
  # a file that cannot be imported (a missing package) is reported and the others still run; the GPU
  # metrics' tests run first (tests/conftest.py), so a time limit cuts the others; the conv kernels compile
  # one autotuning candidate per launch shape, not all (the benchmarks tune and check theirs)
  [tests]="C2W_AUTOTUNE=0 python3 -m pytest -m 'cuda or gpu' -q -p no:cacheprovider -rfEs \
           --continue-on-collection-errors $XDIST"
  [kernels]="python3 bench/run_kernels.py"
  [metrics]="python3 bench/run_metrics.py --device cuda"
  [train]="python3 bench/run_train_step.py"
  [inference]="python3 bench/run_inference.py"
  [reproduce]="python3 bench/reproduce_c2w.py"
)
[ $# -gt 0 ] || { echo "usage: bash bench/gpu_session.sh STAGE[=SECONDS] ... (stages: ${!COMMAND[*]})" >&2; exit 2; }
for stage in "$@"; do
  name=${stage%%=*}
  [ -n "${COMMAND[$name]:-}" ] || { echo "unknown stage '$name' (stages: ${!COMMAND[*]})" >&2; exit 2; }
done
for stage in "$@"; do
  name=${stage%%=*}
  seconds=${LIMIT[$name]}
  [ "$stage" = "$name" ] || seconds=${stage#*=}
  echo "== $name (at most ${seconds} s): ${COMMAND[$name]}"
  # bash -c keeps the quoting of a command; a simple command is exec'd, so the SIGINT reaches it
  timeout --signal=INT --kill-after=20 "$seconds" bash -c "${COMMAND[$name]}" 2>&1 | tee "$OUT/$name.log"
  code=${PIPESTATUS[0]}
  [ "$code" -ne 124 ] || echo "== $name stopped after its ${seconds} s limit" | tee -a "$OUT/$name.log"
  echo "== $name exit status $code" | tee -a "$OUT/$name.log"
  # new result files travel back next to the logs, stage by stage
  find bench/results -newer "$OUT/gpu.txt" -type f \( -name '*.json' -o -name '*.png' \) -exec cp {} "$OUT/" \; 2>/dev/null
done
exit 0
