#!/usr/bin/env bash
# The GPU checks, as ONE script for the device machine (H200, torch 2.11+cu130, nvcc 13.0 there, no
# network): build against that machine's torch, run every CUDA test, then the CUDA benchmarks
# (benchmarks/cuda_step.py: mnist step fused / graph / reference / compiled, flickr30k step against its
# GEMMs alone, peak memory fused against reference, bfloat16 beside float32), and leave under $OUT:
# summary.txt (what follows), build.log, tests.log, bench.log and cuda_step.json.
# Each stage has its own time limit, so the whole stays under about 8 minutes (the build is the
# largest part). Usage (device tool): bash scripts/gpu_check.sh
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
cd "$(dirname "$0")/.."
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
elapsed() { echo "$(( $(date +%s) - start ))s"; }

start=$(date +%s)
log "$(date -u) $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | head -1)"
log "torch $(python -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1)"
# Test tools: only what is missing, and without waiting on a network that is not there.
for module in pytest hypothesis; do
  python -c "import $module" 2>/dev/null ||
    python -m pip install -q --retries 0 --timeout 5 "$module" >> "$OUT/pip.log" 2>&1 ||
    log "$module is missing and could not be installed"
done

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
FORCE_CUDA=1 timeout 150 python -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
log "build rc=$? at $(elapsed)"
python -c "import twoway_fast._C, torch; from twoway_fast._extension import has_kernel; \
print('CUDA kernels:', [op for op in ('hidden_block', 'twoway_net', 'twoway_loss', 'retrieval_ranks') \
if has_kernel(op, 'cuda')])" 2>&1 | tee -a "$OUT/summary.txt"

# Every CUDA test: the CUDA-only files whole, and the CUDA tests of the files that mix devices.
# The torch.compile tests (test_graph_step.py) last: they are the slowest.
timeout 150 python -m pytest -q -rs -p no:cacheprovider tests/test_cuda_ops.py \
  tests/test_hidden_block.py::test_cuda_matches_reference tests/test_hidden_block.py::test_cuda_opcheck \
  tests/test_graph_step.py > "$OUT/tests.log" 2>&1
log "tests rc=$? at $(elapsed): $(tail -1 "$OUT/tests.log")"
timeout 30 python -m pytest -q -rs -p no:cacheprovider tests/test_retrieval_ranks.py -k cuda \
  >> "$OUT/tests.log" 2>&1
log "retrieval-rank tests rc=$? at $(elapsed): $(tail -1 "$OUT/tests.log")"
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -40 >> "$OUT/summary.txt"

timeout 140 python benchmarks/cuda_step.py "$OUT" > "$OUT/bench.log" 2>&1
log "benchmarks rc=$? at $(elapsed)"
cat "$OUT/bench.log" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
