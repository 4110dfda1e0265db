#!/usr/bin/env bash
# Runs the test suite: Triton kernels under the CPU interpreter without a GPU, plus the GPU tests with one.
source "$(dirname "$0")/env.sh"
exec "$PY" -m pytest -q "$@"
