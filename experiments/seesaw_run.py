"""Run the benchmark or the GPU tests with experiments/seesaw_kernel.py standing in for the shipped Hopper kernel.
Written against the code before issue 8: run it from commit 0229004 (see seesaw_kernel.py).
Device only. Usage: PYTHONPATH=. python3 experiments/seesaw_run.py bench [bench args]
                    PYTHONPATH=. python3 experiments/seesaw_run.py pytest [pytest args]"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import seesaw_kernel  # noqa: E402

from tritonmla.kernels import dispatch  # noqa: E402

dispatch.decode_hopper = seesaw_kernel  # the op looks the launcher up here at every call
if __name__ == "__main__":
    what, sys.argv = sys.argv[1], [sys.argv[0]] + sys.argv[2:]
    if what == "bench":
        import runpy
        runpy.run_module("tritonmla.bench", run_name="__main__")
    else:
        import pytest
        sys.exit(pytest.main(sys.argv[1:]))
