#!/usr/bin/env bash
# Device run: the README's test command (GPU tests included), compute-sanitizer memcheck on a small case, then
# the full benchmark table. Logs and the table's CSV/JSON/PNG land in $OUT.
set -u
export PYTHONUNBUFFERED=1
bash scripts/test.sh -p no:cacheprovider --maxfail=30 -rs --durations=5 > $OUT/tests.log 2>&1; echo "tests rc=$?"
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | tail -40
PYTHONPATH=. timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 python3 scripts/sanitize_case.py \
  > $OUT/memcheck.log 2>&1; echo "memcheck rc=$?"
tail -3 $OUT/memcheck.log
[ "${SKIP_BENCH:-0}" = 1 ] || bash scripts/bench.sh --csv $OUT/bench.csv --json $OUT/bench.json \
  --plot $OUT/roofline.png 2>$OUT/bench.err | tee $OUT/bench.log
