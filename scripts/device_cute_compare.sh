#!/usr/bin/env bash
# Second call of a CuTe device session (machine still warm from device_cute.sh, CuTe DSL in /tmp/cutedsl; carry
# .flashmla): FlashMLA built beside us, compute-sanitizer on the CuTe kernel meanwhile, then the head suite and the
# seed table timed beside FlashMLA (Gluon and CuTe kernels). Usage: bash scripts/device_cute_compare.sh [bench args]
set -u
export PYTHONUNBUFFERED=1
root=$PWD
[ -d /tmp/cutedsl/nvidia_cutlass_dsl ] || { echo "CuTe DSL not installed (run device_cute.sh first)"; exit 1; }
export PYTHONPATH=$root:/tmp/cutedsl:/tmp/cutedsl/nvidia_cutlass_dsl/dsl_packages
(bash .flashmla/flashmla.sh build .flashmla > $OUT/flashmla_build.log 2>&1; echo "flashmla build rc=$?" >> $OUT/flashmla_build.log) &
for tool in ${SAN_TOOLS-memcheck racecheck synccheck}; do
  timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 python3 scripts/sanitize_case.py --cute-only \
    > $OUT/san_$tool.log 2>&1; echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|hazard|RACECHECK SUMMARY' $OUT/san_$tool.log | tail -1)"
done
wait; tail -1 $OUT/flashmla_build.log
export PYTHONPATH=$PYTHONPATH:/tmp/flashmla
timeout 200 python3 -m tritonmla.bench --suite head --kernel hopper,cute --compare flashmla --csv $OUT/head.csv ${1:-} \
  2>$OUT/head.err | tee $OUT/head.log | tail -25
timeout 150 python3 -m tritonmla.bench --kernel hopper,cute --compare flashmla --only varlen=False --csv $OUT/seed.csv \
  2>$OUT/seed.err | tail -30
