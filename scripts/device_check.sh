#!/usr/bin/env bash
# Device run: the README's test command (GPU tests included, both kernels), compute-sanitizer memcheck, synccheck and
# racecheck on a small case, then (unless SKIP_BENCH=1) the full benchmark table. Logs land in $OUT.
set -u
export PYTHONUNBUFFERED=1
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  bash scripts/test.sh -p no:cacheprovider --maxfail=30 -rs --durations=5 > $OUT/tests.log 2>&1; echo "tests rc=$?"
  grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | tail -40
  for tool in memcheck racecheck synccheck; do
    PYTHONPATH=. timeout 400 compute-sanitizer --tool $tool --error-exitcode 9 python3 scripts/sanitize_case.py \
      > $OUT/$tool.log 2>&1; echo "$tool rc=$?"
    tail -4 $OUT/$tool.log
  done
  # Poisoned page ids / indices (issue 24): no kernel may read out of bounds.
  PYTHONPATH=. timeout 400 compute-sanitizer --tool memcheck --error-exitcode 9 python3 scripts/sanitize_poison.py \
    > $OUT/memcheck_poison.log 2>&1; echo "memcheck (poisoned inputs) rc=$?"
  tail -4 $OUT/memcheck_poison.log
fi
[ "${SKIP_BENCH:-0}" = 1 ] || bash scripts/bench.sh --csv $OUT/bench.csv --json $OUT/bench.json \
  --plot $OUT/roofline.png 2>$OUT/bench.err | tee $OUT/bench.log
