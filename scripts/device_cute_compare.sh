#!/usr/bin/env bash
# Later calls of a CuTe device session (machine still warm from device_cute.sh, CuTe DSL in /tmp/cutedsl): FlashMLA
# built beside us (carry .flashmla; it stays in /tmp/flashmla while the machine is warm), the GPU tests and
# compute-sanitizer on the CuTe kernel meanwhile, then our kernels timed beside FlashMLA: the head suite, the seed
# table, the small-batch table, CPU time per call, ncu of the three kernels on one case.
# STEPS picks steps (default: build tests san head seed); others: small prefill overhead ncu. KERNELS: ours to time
# (default hopper,cute). DURING: other device_cute.sh steps to run while FlashMLA builds (e.g. "ptimeline").
# Usage: STEPS="..." bash scripts/device_cute_compare.sh
set -u
export PYTHONUNBUFFERED=1
STEPS=${STEPS:-build tests san head seed}
has() { [[ " $STEPS " == *" $1 "* ]]; }
root=$PWD
[ -d /tmp/cutedsl/nvidia_cutlass_dsl ] || { echo "CuTe DSL not installed (run device_cute.sh first)"; exit 1; }
export PYTHONPATH=$root:/tmp/cutedsl:/tmp/cutedsl/nvidia_cutlass_dsl/dsl_packages
if has build; then
  (bash .flashmla/flashmla.sh build .flashmla > $OUT/flashmla_build.log 2>&1; echo "flashmla build rc=$?" >> $OUT/flashmla_build.log) &
fi
sub="${DURING:-}"; has tests && sub="$sub tests"; has san && sub="$sub san"
# While FlashMLA builds: device_cute.sh's steps named in DURING, then the GPU tests and the sanitizers (CuTe kernel by
# name and as "auto").
[ -n "$sub" ] && STEPS="$sub" TESTS="${TESTS:-cute or None or auto or compile}" bash scripts/device_cute.sh
wait; [ -f $OUT/flashmla_build.log ] && tail -1 $OUT/flashmla_build.log
export PYTHONPATH=$PYTHONPATH:/tmp/flashmla
if has head; then
  timeout 200 python3 -m tritonmla.bench --suite head --kernel ${KERNELS:-hopper,cute} --compare flashmla --csv $OUT/head.csv \
    2>$OUT/head.err | tee $OUT/head.log | tail -22
fi
if has seed; then
  timeout 180 python3 -m tritonmla.bench --kernel ${KERNELS:-hopper,cute} --compare flashmla --only varlen=False --csv $OUT/seed.csv \
    2>$OUT/seed.err | tee $OUT/seed.log | tail -30
fi
if has small; then
  timeout 120 python3 -m tritonmla.bench --suite small --kernel ${KERNELS:-hopper,cute} --compare flashmla --csv $OUT/small.csv \
    2>$OUT/small.err | tee $OUT/small.log | tail -18
fi
if has prefill; then
  timeout 300 python3 -m tritonmla.bench sparse-prefill --compare flashmla --csv $OUT/prefill.csv \
    2>$OUT/prefill.err | tee $OUT/prefill.log | tail -18
fi
if has overhead; then
  timeout 150 python3 -m tritonmla.bench --overhead --json $OUT/overhead.json > $OUT/overhead.log 2>&1
  echo "overhead rc=$?"; grep -B1 -A12 "thread CPU" $OUT/overhead.log | cut -c1-220 | head -16
fi
if has ncu; then
  M=sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,smsp__inst_executed.sum,gpu__time_duration.sum,lts__t_sector_hit_rate.pct
  for k in flashmla cute hopper; do
    timeout 100 ncu --metrics $M -k regex:"decode|Decode|seesaw|splitkv_mla" --launch-skip 2 --launch-count 1 python3 scripts/cute_ncu_case.py $k \
      > $OUT/ncu_$k.log 2>&1; echo "ncu $k:"; grep -E "hmma|sm__throughput|dram__|inst_executed|duration|hit_rate" $OUT/ncu_$k.log | sed 's/  */ /g'
  done
fi
