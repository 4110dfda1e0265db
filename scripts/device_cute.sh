#!/usr/bin/env bash
# Device loop for the CuTe DSL dense decode kernel (carry .cutedsl, ../shared/device/cute-dsl.sh installs it): smoke,
# the A/B of kernel versions (scripts/cute_ab.py; --base for each tritonmla/dense_decode/_ab_*.py beside it), the
# GPU tests for "cute", compute-sanitizer racecheck/synccheck/memcheck on the CuTe kernel, CPU time per call, the
# per-pair timeline (scripts/cute_timeline.py, TIMELINE_CASE="b s_q sk h_q"), ncu of both Hopper kernels
# (scripts/cute_ncu_case.py). Then, machine still warm: scripts/device_cute_compare.sh (carry
# .flashmla). STEPS picks steps (default all but first: smoke ab tests san overhead timeline ncu).
set -u
export PYTHONUNBUFFERED=1
STEPS=${STEPS:-smoke ab tests san overhead timeline ncu}  # also: first (first-call table), prefill, pageid
has() { [[ " $STEPS " == *" $1 "* ]]; }
[ -d /tmp/cutedsl/nvidia_cutlass_dsl ] || bash .cutedsl/cute-dsl.sh install .cutedsl /tmp/cutedsl > /dev/null
export PYTHONPATH=.:/tmp/cutedsl:/tmp/cutedsl/nvidia_cutlass_dsl/dsl_packages
if has smoke; then
  timeout 200 python3 scripts/cute_smoke.py 2>&1 | tail -8 | tee $OUT/smoke.log
  grep -q "SMOKE OK" $OUT/smoke.log || exit 1
fi
if has ab; then
  base=""; for f in tritonmla/dense_decode/_ab_*.py; do [ -f "$f" ] && base="$base --base tritonmla.dense_decode.$(basename $f .py)"; done
  timeout 330 python3 scripts/cute_ab.py $base ${AB_ARGS:-} 2>&1 | tail -12 | tee $OUT/ab.log | cut -c1-200
fi
if has tests; then
  timeout 240 python3 -m pytest -q -x tests/test_gpu.py tests/test_bind_cute_cpu.py tests/test_bad_inputs.py -k "${TESTS:-cute}" \
    -p no:cacheprovider --maxfail=3 > $OUT/tests.log 2>&1
  echo "tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | head -5
fi
if has san; then
  for tool in racecheck synccheck memcheck; do
    timeout 100 compute-sanitizer --tool $tool --report-api-errors no --error-exitcode 9 python3 scripts/sanitize_case.py --cute-only \
      > $OUT/san_$tool.log 2>&1; echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $OUT/san_$tool.log | tail -1)"
  done
fi
if has overhead; then
  timeout 120 python3 -m tritonmla.bench --overhead --json $OUT/overhead.json > $OUT/overhead.log 2>&1
  echo "overhead rc=$?"; grep -A12 "thread CPU" $OUT/overhead.log | head -14
fi
if has pageid; then  # issue 24: bad page ids on every dense kernel, the default (CuTe) included, under memcheck
  timeout 150 python3 -m pytest -q tests/test_bad_inputs.py -p no:cacheprovider > $OUT/pageid_tests.log 2>&1
  echo "pageid tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/pageid_tests.log | head -5
  timeout 200 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 python3 scripts/sanitize_poison.py \
    > $OUT/san_poison.log 2>&1; echo "poison memcheck rc=$? $(grep -E 'ERROR SUMMARY' $OUT/san_poison.log | tail -1)"
fi
if has timeline; then
  timeout 150 python3 scripts/cute_timeline.py ${TIMELINE_CASE:-} 2>&1 | tail -30 | tee $OUT/timeline.log
fi
if has ptimeline; then  # the prefill kernel's timeline (PT_CASES, comma-separated "s_kv topk h_q d_qk"; default MODEL1-1, V3.2)
  IFS=, read -ra cases <<< "${PT_CASES:-32768 512 64 512,65536 2048 128 576}"
  for c in "${cases[@]}"; do
    timeout 120 python3 scripts/cute_timeline.py prefill $c 2>&1 | tail -36 | tee -a $OUT/ptimeline.log
  done
fi
if has pncu; then  # ncu of the prefill kernel on one case (PNCU_CASE "s_kv topk h_q d_qk"; default MODEL1-1)
  M=sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__throughput.avg.pct_of_peak_sustained_elapsed,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,smsp__inst_executed.sum,gpu__time_duration.sum,lts__t_sector_hit_rate.pct
  for k in ${PNCU_KERNELS:-tritonmla}; do
    TRITONMLA_KERNEL=cute timeout 150 ncu --metrics $M --section WarpStateStats -k regex:"[Ss]parse|[Pp]refill|attn" --launch-skip 2 --launch-count 1 \
      python3 scripts/cute_ncu_prefill.py $k ${PNCU_CASE:-} > $OUT/pncu_$k.log 2>&1
    echo "pncu $k rc=$?:"; grep -E "hmma|sm__throughput|dram__|lts__|l1tex|inst_executed|duration|hit_rate|Stall|Warp Cycles" $OUT/pncu_$k.log | sed 's/  */ /g' | head -24
  done
fi
if has prefill; then  # the CuTe sparse prefill kernel (SM90's default): its GPU tests, sanitizers, FlashMLA's cases
  timeout 240 python3 -m pytest -q -x tests/test_sparse_prefill_gpu.py -k "${PREFILL_TESTS:-not portable}" -p no:cacheprovider > $OUT/prefill_tests.log 2>&1
  echo "prefill tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/prefill_tests.log | head -5
  for tool in ${PREFILL_SAN-memcheck racecheck synccheck}; do
    TRITONMLA_KERNEL=cute timeout 100 compute-sanitizer --tool $tool --report-api-errors no --error-exitcode 9 python3 scripts/sanitize_prefill.py \
      > $OUT/san_prefill_$tool.log 2>&1; echo "prefill $tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $OUT/san_prefill_$tool.log | tail -1)"
  done
  [ "${PREFILL_BENCH:-1}" = 1 ] && TRITONMLA_KERNEL=cute timeout 200 python3 -m tritonmla.bench sparse-prefill ${PREFILL_ARGS:-} 2>$OUT/prefill_bench.err | tail -14
fi
if has first; then
  timeout 300 python3 -m tritonmla.bench --first-call --json $OUT/first_call.json > $OUT/first_call.log 2>&1
  echo "first-call rc=$?"; tail -14 $OUT/first_call.log
fi
if has ncu; then
  M=sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,smsp__inst_executed.sum,gpu__time_duration.sum,lts__t_sector_hit_rate.pct
  for k in cute hopper; do
    timeout 100 ncu --metrics $M -k regex:"decode|Decode|seesaw" --launch-skip 2 --launch-count 1 python3 scripts/cute_ncu_case.py $k \
      > $OUT/ncu_$k.log 2>&1; echo "ncu $k:"; grep -E "hmma|sm__throughput|dram__|inst_executed|duration|hit_rate" $OUT/ncu_$k.log | sed 's/  */ /g'
  done
fi
