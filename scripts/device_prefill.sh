#!/usr/bin/env bash
# Device run for sparse prefill: FlashMLA built beside us (from a carried .flashmla, ../shared/anchors/flashmla.sh),
# the GPU tests, FlashMLA's own test file against tritonmla (scripts/flashmla_tests/flash_mla.py), a launch-config sweep, the
# benchmark beside FlashMLA with the best config, and compute-sanitizer on a small case. Logs in $OUT.
# Run from the repository root: FLASHMLA=.flashmla bash scripts/device_prefill.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
root=$PWD
fm=${FLASHMLA:-.flashmla}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
[ -d "$fm" ] && (bash "$fm/flashmla.sh" build "$fm" > $OUT/flashmla_build.log 2>&1; echo "flashmla build rc=$?" >> $OUT/flashmla_build.log) &
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_sparse_prefill_gpu.py tests/test_sparse_prefill_cpu.py \
  > $OUT/prefill_tests.log 2>&1; echo "prefill tests rc=$?"; tail -3 $OUT/prefill_tests.log
timeout 150 python3 scripts/prefill_sweep.py > $OUT/sweep.log 2>&1; grep -A20 "best first" $OUT/sweep.log
best=$(grep '^BEST' $OUT/sweep.log | awk '{print $2}')
wait
tail -2 $OUT/flashmla_build.log
TRITONMLA_PREFILL_CONFIG=$best PYTHONPATH=$root:/tmp/flashmla timeout 150 python3 -m tritonmla.bench sparse-prefill \
  --compare flashmla --csv $OUT/prefill_bench.csv 2>$OUT/prefill_bench.err > $OUT/prefill_bench.log
echo "config used: $best"
for tool in memcheck racecheck synccheck; do
  TRITONMLA_PREFILL_CONFIG=$best timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 python3 scripts/sanitize_prefill.py \
    > $OUT/san_$tool.log 2>&1; echo "$tool rc=$? $(tail -1 $OUT/san_$tool.log)"
done
if [ -d "$fm" ]; then
  (cd "$fm/tests" && PYTHONPATH=$root:$root/scripts/flashmla_tests TRITONMLA_PREFILL_CONFIG=$best NO_COOLDOWN=1 \
    timeout 120 python3 test_flash_mla_sparse_prefill.py > $OUT/flashmla_own_tests.log 2>&1; echo "FlashMLA's own prefill test file vs tritonmla rc=$?")
  grep -E "cases (passed|failed)|TFlops" $OUT/flashmla_own_tests.log | tail -16
fi
cat $OUT/prefill_bench.log
