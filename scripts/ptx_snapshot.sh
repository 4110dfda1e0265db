#!/usr/bin/env bash
# Maintained tool: PTX of every decode kernel variant the offline compiles cover (portable dense, both Hopper dense
# kernels incl. the seesaw stress build, portable and Gluon sparse, the sink-aware combine's compile), into DIR,
# without a GPU. To show a refactor leaves the measured code as it was: snapshot before, snapshot after,
# scripts/ptx_diff.sh BEFORE AFTER (all 0). Run: bash scripts/ptx_snapshot.sh DIR
set -euo pipefail
dir=$(realpath -m "$1")
source "$(dirname "$0")/env.sh"  # (cd to the repository root, PYTHONPATH, PY)
mkdir -p "$dir"
PTX_DIR=$dir "$PY" scripts/compile_dense_offline.py > /dev/null
PTX_DIR=$dir "$PY" scripts/compile_sparse_offline.py > /dev/null
# dense Hopper kernels: dtype, causal, page size, kernel module (tritonmla.dense_decode.*), seesaw stress delay
for cfg in "bf16 1 64 kernel_sm90" "fp16 0 128 kernel_sm90" "bf16 1 64 kernel_sm90_seesaw" \
           "fp16 0 256 kernel_sm90_seesaw" "bf16 1 64 kernel_sm90_seesaw 4000"; do
  set -- $cfg
  "$PY" scripts/compile_hopper_offline.py "$1" "$2" "$3" "tritonmla.dense_decode.$4" ${5:-} > /dev/null
  cp /tmp/hopper.ptx "$dir/hopper_$(echo $cfg | tr ' ' '_').ptx"  # (compile_hopper_offline writes /tmp/hopper.ptx)
done
ls "$dir" | wc -l
