#!/usr/bin/env bash
# PTX of every decode kernel variant the offline compiles cover (portable dense, both Hopper dense kernels incl.
# the seesaw stress build, portable and Gluon sparse), into DIR, without a GPU. To show a refactor leaves the
# measured code as it was: snapshot before, snapshot after, experiments/ptx_diff.sh BEFORE AFTER (all 0).
# Run from the repository root: bash experiments/ptx_snapshot.sh DIR
set -euo pipefail
dir=$1
mkdir -p "$dir"
export PYTHONPATH=.
PTX_DIR=$dir python experiments/compile_dense_offline.py > /dev/null
PTX_DIR=$dir python experiments/compile_sparse_offline.py > /dev/null
for cfg in "bf16 1 64 tritonmla.kernels.decode_hopper" "fp16 0 128 tritonmla.kernels.decode_hopper" \
           "bf16 1 64 tritonmla.kernels.decode_hopper_seesaw" "fp16 0 256 tritonmla.kernels.decode_hopper_seesaw" \
           "bf16 1 64 tritonmla.kernels.decode_hopper_seesaw 4000"; do
  python experiments/compile_hopper_offline.py $cfg > /dev/null  # (writes /tmp/hopper.ptx)
  cp /tmp/hopper.ptx "$dir/hopper_$(echo $cfg | tr ' .' '__').ptx"
done
ls "$dir" | wc -l
