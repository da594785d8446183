#!/bin/bash
# The GPU check, in one call on the GPU machine (one H200, no network, no mlflow): the `cuda`
# tests, then ERM, DANN and DANN + --meta init on packed PACS (benchmarks/speed/gpu_check.py), all
# written under $OUT. First, here: python scripts/pack_gpu_check.py  (fills gpu_pack/, <= 48 MiB)
# and carry gpu_pack. Quick run on a CPU: GPU_CHECK_STEPS=3 GPU_CHECK_BATCH=2 GPU_CHECK_DEVICE=cpu
# DGMETA_CUDA_TEST_DEVICE=cpu benchmarks/speed/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/out/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
PACK=${GPU_CHECK_PACK:-gpu_pack}
[ -f "$PACK/manifest.json" ] || { echo "error: no $PACK/ — run python scripts/pack_gpu_check.py here and carry gpu_pack" >&2; exit 2; }
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia_smi.csv" 2>&1 || true
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}
"$PY" benchmarks/speed/gpu_check.py --pack "$PACK" --out "$OUT/gpu_check.json" --tests-rc "$tests_rc" 2>&1 | tee "$OUT/gpu_check.log"
check_rc=${PIPESTATUS[0]}
echo "cuda tests exit $tests_rc, check exit $check_rc, $(( $(date +%s) - start )) s in all" | tee -a "$OUT/gpu_check.log"
[ "$tests_rc" -eq 0 ] && [ "$check_rc" -eq 0 ]
