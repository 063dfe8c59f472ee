#!/bin/bash
# On a GPU machine (repo root as cwd): the whole test suite, the demo trained/rendered/scored on
# the GPU, and the selection ablation. Wheels for missing packages are taken from .whl/.
#
#   bash bench/device_train.sh [tests] [demo] [ablation ITERATIONS ...] [train_step]
set -u
OUT=${OUT:-/tmp/stga_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export TORCH_EXTENSIONS_DIR=/tmp/torch_ext STGA_CACHE=/tmp/stga_cache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/submodules/diff-gaussian-rasterization:$PWD/submodules/simple-knn:${PYTHONPATH:-}
say() { echo "=== $(date +%T) $*"; }
say "$(nvidia-smi --query-gpu=name,memory.used --format=csv,noheader)"
python3 -c "import diff_gaussian_rasterization as d; print('cuda extension:', d.cuda_available())"
while [ $# -gt 0 ]; do
  case "$1" in
    tests)
      say "pytest"
      python3 -m pytest -q -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/pytest.txt" ;;
    demo)
      say "demo: train / render / metrics on the GPU"
      /usr/bin/time -f "train wall %e s" python3 train.py -s demo -m /tmp/gpu_demo --quiet 2>&1 | tail -5
      python3 render.py -m /tmp/gpu_demo --quiet && python3 metrics.py -m /tmp/gpu_demo --quiet 2>&1 | tail -6
      cp /tmp/gpu_demo/results.json "$OUT/demo_results.json" ;;
    ablation)
      shift; its=$1
      say "ablation at $its iterations"
      python3 bench/ablation.py --iterations "$its" --out "/tmp/ablation_$its" 2>&1 | tail -9 | tee "$OUT/ablation_$its.txt" ;;
    train_step)
      say "training step, phase by phase"
      python3 bench/train_step.py --json "$OUT/train_step.json" 2>&1 | tail -40 | tee "$OUT/train_step.txt" ;;
  esac
  shift
done
say "done"
