#!/usr/bin/env bash
# Device run (developer tool): environment facts and a sweep of decode launch configs (NOTES.md has results).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv
python3 -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
T="python3 -m tritonmla.bench.tune"
$T --workloads "16,1,8192" --variants "16,64,4,2,2;16,64,4,3,2;16,32,4,3,2;16,32,4,4,4;16,64,8,2,2;16,64,4,2,4;16,32,4,2,4" 2>&1 | tee $OUT/tune16.log
$T --workloads "32,1,8192" --variants "32,64,4,2,2;32,64,8,2,2;32,32,4,3,2;32,32,8,3,2" 2>&1 | tee $OUT/tune32.log
$T --workloads "64,1,8192;128,2,8192" --variants "64,64,8,2,1;64,32,8,2,1;64,32,8,3,1;64,64,4,2,1;64,64,8,1,1;64,32,4,3,2" 2>&1 | tee $OUT/tune64.log
