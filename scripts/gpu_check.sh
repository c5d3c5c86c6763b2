#!/usr/bin/env bash
# The GPU checks, as ONE script for the device machine (H200, torch 2.11+cu130, nvcc 13.0 there):
# build against that machine's torch, run the whole test suite (the CUDA tests run there), then the
# benchmarks, and leave a summary under $OUT. Usage (device tool): bash scripts/gpu_check.sh
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
cd "$(dirname "$0")/.."
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

log "$(date -u) $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | head -1)"
log "torch $(python -c 'import torch; print(torch.__version__, torch.version.cuda)')"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
start=$(date +%s)
pip install -q pytest pytest-benchmark hypothesis scipy scikit-learn tqdm matplotlib > "$OUT/pip.log" 2>&1
FORCE_CUDA=1 pip install --no-build-isolation -e . > "$OUT/build.log" 2>&1
log "build rc=$? in $(( $(date +%s) - start ))s"
python -m pytest -q tests -x -rs > "$OUT/tests.log" 2>&1
log "tests rc=$?: $(tail -1 "$OUT/tests.log")"
python -m pytest -q benchmarks --benchmark-only --benchmark-json="$OUT/bench.json" \
  --benchmark-columns=min,median,mean,rounds > "$OUT/bench.log" 2>&1
log "benchmarks rc=$?"
tail -60 "$OUT/bench.log" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
