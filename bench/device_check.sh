#!/bin/bash
# Build, test and benchmark the CUDA rasterizer on a GPU machine in one go (repo root as cwd).
#
#   bash bench/device_check.sh [tests|bench|jit ...]     (default: tests bench jit)
#
# Expects gsplat's wheel under .whl/ (see bench/NOTES_raster.md). If .whl/gsplat_cuda.so.gz.part-*
# exist (a gsplat extension built earlier on the same image) they are used instead of gsplat's
# minutes-long first-use build. Logs go to $OUT (default /tmp/stga_out).
set -u
OUT=${OUT:-/tmp/stga_out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
STAGES=${*:-tests bench jit}
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export TORCH_EXTENSIONS_DIR=/tmp/torch_ext
SUB=submodules/diff-gaussian-rasterization
say() { echo "=== $(date +%T) $*" | tee -a "$LOG"; }

say "start: $STAGES"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv 2>&1 | tee -a "$LOG"

# gsplat from the carried wheel; its CUDA extension from carried parts, else built in background
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 || say "wheel install failed"
export PYTHONPATH=/tmp/site
GS_PID=""
if ls .whl/gsplat_cuda.so.gz.part-* >/dev/null 2>&1; then
  cat .whl/gsplat_cuda.so.gz.part-* | gunzip > /tmp/gsplat_cuda.so
  export STGA_GSPLAT_SO=/tmp/gsplat_cuda.so
  cat > /tmp/site/gsplat/csrc.py <<'EOF'
import importlib.util, os
import torch  # noqa: F401
_spec = importlib.util.spec_from_file_location("gsplat_cuda", os.environ["STGA_GSPLAT_SO"])
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
globals().update({k: getattr(_mod, k) for k in dir(_mod) if not k.startswith("__")})
EOF
  say "gsplat: using carried extension"
elif [[ "$STAGES" == *bench* ]]; then
  (MAX_JOBS=12 python3 -c "from gsplat.cuda._backend import _C; print('gsplat _C', _C)" \
     > /tmp/gsplat_build.txt 2>&1) &
  GS_PID=$!
  say "gsplat: building in background (pid $GS_PID)"
fi

# our extension, ahead of time, through pip (the documented route)
say "building the rasterizer"
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps --no-cache-dir --target /tmp/stga \
  "./$SUB" > "$OUT/build.txt" 2>&1
rc=$?
say "pip install rc=$rc in $(( $(date +%s) - t0 )) s"
[ $rc -ne 0 ] && tail -40 "$OUT/build.txt" | tee -a "$LOG"
cp /tmp/stga/diff_gaussian_rasterization/_C*.so "$SUB/diff_gaussian_rasterization/" 2>>"$LOG"
ls -la "$SUB/diff_gaussian_rasterization/" >> "$LOG"

JIT_PID=""
if [[ "$STAGES" == *jit* ]]; then
  (cd /tmp && STGA_RASTER_FORCE_JIT=1 TORCH_EXTENSIONS_DIR=/tmp/jit_ext PYTHONPATH=/tmp/stga \
    timeout 400 python3 -c "
import time; t=time.time()
from diff_gaussian_rasterization import cuda_backend as cb
print('JIT available:', cb.available(), cb.load_error(), 'in %.1f s' % (time.time()-t))
print('module:', cb._ext.__file__)" > /tmp/jit.txt 2>&1) &
  JIT_PID=$!
fi

if [[ "$STAGES" == *tests* ]]; then
  say "tests"
  timeout 420 python3 -m pytest tests/test_rasterizer_cuda.py -v --tb=short -p no:cacheprovider \
    2>&1 | tail -80 | tee -a "$LOG"
fi

if [ -n "$JIT_PID" ]; then
  wait "$JIT_PID"
  tail -5 /tmp/jit.txt | tee -a "$LOG"
fi

if [ -n "$GS_PID" ]; then
  say "waiting for the gsplat build"
  wait "$GS_PID"
  tail -5 /tmp/gsplat_build.txt | tee -a "$LOG"
  SO=$(ls /tmp/torch_ext/gsplat_cuda/gsplat_cuda*.so 2>/dev/null | head -1)
  if [ -n "$SO" ]; then
    ls -la "$SO" | tee -a "$LOG"
    gzip -1 -c "$SO" | split -b 15M - "$OUT/gsplat_cuda.so.gz.part-"
    ls -la "$OUT" | tee -a "$LOG"
  fi
fi

if [[ "$STAGES" == *bench* ]]; then
  say "benchmark"
  timeout 300 python3 bench/raster.py --json "$OUT/bench.json" 2>&1 | tee -a "$LOG"
  timeout 120 python3 bench/raster.py --profile --cases 100000x802x550,300000x1604x1100 > "$OUT/profile.txt" 2>&1
  echo "##### STGA_RASTER_NO_CULL=1 (tile-list culling off)" >> "$OUT/profile.txt"
  STGA_RASTER_NO_CULL=1 timeout 120 python3 bench/raster.py --profile \
    --cases 100000x802x550,300000x1604x1100 >> "$OUT/profile.txt" 2>&1
fi

say "done"
