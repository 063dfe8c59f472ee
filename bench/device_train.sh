#!/bin/bash
# On a GPU machine (repo root as cwd): the whole test suite, the demo trained/rendered/scored on
# the GPU, and the selection ablation. Wheels for missing packages are taken from .whl/.
#
#   bash bench/device_train.sh [--work DIR] [--out DIR] [tests] [cudatests] [head] [demo]
#                              [demo_ab] [ablation ITERATIONS ...] [train_step] [run50k]
# --work DIR: scratch folder for builds, the data cache, wheels and models (default /tmp);
# --out DIR: where logs and results go (default $OUT, else <work>/stga_out).
# cudatests: the CUDA-marked tests one file at a time (a crash names its file); demo_ab: the demo
# trained with and without the fused kernels (quality check); run50k: the wall-clock of a
# paper-length train.py run on bench/train_step.py's dataset; head: the realistic head's large
# variant (-s demo-large) generated on the GPU into the cache, timed (later stages reuse it).
set -u
WORK=/tmp
while [ $# -gt 0 ]; do
  case "$1" in
    --work) WORK=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) break ;;
  esac
done
OUT=${OUT:-$WORK/stga_out}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export TORCH_EXTENSIONS_DIR=$WORK/torch_ext STGA_CACHE=$WORK/stga_cache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" .whl/*.whl && export PYTHONPATH=$WORK/site
fi
export PYTHONPATH=$PWD/submodules/diff-gaussian-rasterization:$PWD/submodules/simple-knn:${PYTHONPATH:-}
say() { echo "=== $(date +%T) $*"; }
say "$(nvidia-smi --query-gpu=name,memory.used --format=csv,noheader)"
python3 -c "import diff_gaussian_rasterization as d; from utils import fused; print('cuda extension:', d.cuda_available(), 'fused kernels:', fused.available())"
while [ $# -gt 0 ]; do
  case "$1" in
    tests)
      say "pytest"
      python3 -m pytest -q -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/pytest.txt" ;;
    cudatests)
      say "CUDA tests, one file at a time"
      for f in tests/test_*.py; do
        if grep -q "mark.cuda" "$f"; then
          log="$OUT/pytest_$(basename "$f" .py).txt"
          python3 -m pytest -q -p no:cacheprovider -m cuda "$f" > "$log" 2>&1
          echo "$f: $(grep -E "passed|failed|error|Fatal" "$log" | tail -1)"
        fi
      done ;;
    head)
      say "realistic head, large variant, generated on the GPU"
      /usr/bin/time -f "head large wall %e s" python3 -c "
import time; t = time.perf_counter()
from tools.ict_head import ensure_head_dataset
print(ensure_head_dataset('large'), f'{time.perf_counter() - t:.1f} s in the generator')" 2>&1 | tr '\r' '\n' | grep -v "rendering:" | tee "$OUT/head_large.txt"
      du -sh "$STGA_CACHE"/head_large_* | tee -a "$OUT/head_large.txt" ;;
    demo_ab)
      say "demo with and without the fused kernels"
      for fused in 1 0; do
        name=$WORK/gpu_demo_fused$fused
        flag=auto; [ $fused = 0 ] && flag=off
        /usr/bin/time -f "wall %e s" python3 train.py -s demo -m $name --fused $flag \
          > "$name.txt" 2>&1
        echo "fused kernels: $fused"; tr '\r' '\n' < "$name.txt" | grep -E "PSNR|wall|done"
      done ;;
    run50k)
      data=$(python3 -c "
import sys; sys.path.insert(0, 'bench')
import train_step as t
print(t.prepare_dataset(t.build_parser().parse_args([])))" | tail -1)
      say "train.py, 50000 iterations on $data"
      /usr/bin/time -f "run50k wall %e s" python3 train.py -s "$data" -m "$WORK/run50k" \
        --iterations 50000 > "$OUT/run50k.txt" 2>&1
      tr '\r' '\n' < "$OUT/run50k.txt" | grep -E "ITER|wall|done|Initialised|images in" ;;
    demo)
      say "demo: train / render / metrics on the GPU"
      /usr/bin/time -f "train wall %e s" python3 train.py -s demo -w -m "$WORK/gpu_demo" --quiet 2>&1 | tail -5
      python3 render.py -m "$WORK/gpu_demo" --quiet && python3 metrics.py -m "$WORK/gpu_demo" --masks --quiet 2>&1 | tail -8
      cp "$WORK/gpu_demo/results.json" "$OUT/demo_results.json" ;;
    ablation)
      shift; its=$1
      say "ablation at $its iterations"
      python3 bench/ablation.py --iterations "$its" --out "$WORK/ablation_$its" 2>&1 | tail -12 | tee "$OUT/ablation_$its.txt" ;;
    train_step)
      say "training step, phase by phase"
      python3 bench/train_step.py --json "$OUT/train_step.json" 2>&1 | tail -40 | tee "$OUT/train_step.txt" ;;
  esac
  shift
done
say "done"
