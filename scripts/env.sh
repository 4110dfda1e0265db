# Sourced by scripts/bench.sh and scripts/test.sh: sets PY to a Python that has torch, triton and pytest.
# A machine whose python3 already has them (the GPU box) uses it as is; otherwise .venv is made once with
# torch 2.13 (CPU build where pip finds one), triton 3.6.0, numpy < 2.4 (the interpreter needs it) and
# transformers 5.17.0 (tests/test_deepseek.py; it does not pull another torch), then CuTe DSL 4.8.1 and nvdisasm (the
# CuTe kernels compile for sm_90a on the CPU). A .venv made before one of them gets it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ready() {  # $1: a python; $2: further modules it must have
  "$1" - "${2:-}" <<'PY' 2>/dev/null
import importlib, sys
import torch, triton, numpy, pytest
for name in sys.argv[1].split():
    importlib.import_module(name)
ok = torch.cuda.is_available() or tuple(int(v) for v in numpy.__version__.split(".")[:2]) < (2, 4)
raise SystemExit(0 if ok else 1)
PY
}
if ready python3; then
  PY=python3
else
  if [ ! -x .venv/bin/python ] || ! ready .venv/bin/python transformers; then
    echo "setting up .venv (torch, triton 3.6.0, numpy<2.4, pytest, matplotlib, transformers 5.17.0) ..." >&2
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip >&2
    .venv/bin/pip install -q "torch==2.13.0" "triton==3.6.0" "numpy<2.4" pytest matplotlib \
      "transformers==5.17.0" >&2
  fi
  cute='import importlib.metadata as m; m.version("nvidia-cuda-nvdisasm"); exit(m.version("nvidia-cutlass-dsl") != "4.8.1")'
  if ! .venv/bin/python -c "$cute" 2>/dev/null; then
    echo "installing CuTe DSL 4.8.1 and nvdisasm into .venv ..." >&2
    .venv/bin/pip install -q "nvidia-cutlass-dsl==4.8.1" "nvidia-cuda-nvdisasm==13.5.37" >&2
  fi
  PY=.venv/bin/python
fi
