"""FlashMLA's module name served by tritonmla, so FlashMLA's own test files run against it unmodified:

    cd FLASHMLA/tests && PYTHONPATH=TRITONMLA:TRITONMLA/scripts/flashmla_tests python3 test_flash_mla_sparse_prefill.py

(FlashMLA's tests bring their own test-support package, tests/kernelkit.)"""
from tritonmla import *  # noqa: F401,F403
