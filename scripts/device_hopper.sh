#!/usr/bin/env bash
# Quick device loop for the Hopper kernel: the sanitizer case, the hopper GPU tests (first failures only), a
# benchmark subset for both kernels. Usage: bash scripts/device_hopper.sh [pytest -k expr] [bench --only expr]
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
python3 scripts/sanitize_case.py 2>&1 | tail -20 | tee $OUT/smoke.log
python3 -m pytest -q -x tests/test_gpu.py -k "${1:-hopper}" -p no:cacheprovider --maxfail=3 > $OUT/tests.log 2>&1
echo "tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed|Error" $OUT/tests.log | head -20
python3 -m tritonmla.bench --quick ${2:+--only $2} 2>$OUT/bench.err | tee $OUT/bench.log
tail -5 $OUT/bench.err
