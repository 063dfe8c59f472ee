#!/bin/bash
# On the GPU machine (repo root as cwd): CUDA tests, the demo's quality, and the wall-clock of a
# paper-length (50k-iteration) train.py run on the 802x550, 16-camera training-step dataset.
#   bash bench/device_run50k.sh [tests] [demo] [run50k]
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
python3 -c "import diff_gaussian_rasterization as d; from utils import fused; print('raster', d.cuda_available(), 'fused', fused.available())"
for stage in "$@"; do
  case "$stage" in
    tests)
      say "CUDA tests, one file at a time"
      for f in tests/test_*.py; do
        if grep -q "mark.cuda" "$f"; then
          python3 -m pytest -q -p no:cacheprovider -m cuda "$f" > "$OUT/pytest_$(basename "$f" .py).txt" 2>&1
          echo "$f: $(grep -E "passed|failed|error|Fatal" "$OUT/pytest_$(basename "$f" .py).txt" | tail -1)"
        fi
      done ;;
    alltests)
      say "whole suite"
      python3 -m pytest -q -p no:cacheprovider tests/ > "$OUT/pytest_all.txt" 2>&1
      tail -15 "$OUT/pytest_all.txt" ;;
    demo)
      say "demo"
      /usr/bin/time -f "demo wall %e s" python3 train.py -s demo -m /tmp/gpu_demo > "$OUT/demo.txt" 2>&1
      tr '\r' '\n' < "$OUT/demo.txt" | grep -E "PSNR|wall|done"
      STGA_NO_FUSED=1 /usr/bin/time -f "demo (no fused kernels) wall %e s" python3 train.py -s demo -m /tmp/gpu_demo_ref > "$OUT/demo_ref.txt" 2>&1
      tr '\r' '\n' < "$OUT/demo_ref.txt" | grep -E "PSNR|wall|done" ;;
    run50k)
      say "dataset"
      data=$(python3 -c "
import sys; sys.argv=['x']; sys.path.insert(0, 'bench')
import train_step as t
print(t.prepare_dataset(t.build_parser().parse_args([])))" | tail -1)
      say "train.py, 50000 iterations on $data"
      /usr/bin/time -f "run50k wall %e s" python3 train.py -s "$data" -m /tmp/run50k --iterations 50000 > "$OUT/run50k.txt" 2>&1
      grep -v "Training:" "$OUT/run50k.txt" | tail -14
      ls -la /tmp/run50k/point_cloud/*/ ;;
  esac
done
say "done"
