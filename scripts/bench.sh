#!/usr/bin/env bash
# The main job: FlashMLA's decode table on the GPU (or, without one, a small self-checking CPU demo).
source "$(dirname "$0")/env.sh"
exec "$PY" -m tritonmla.bench "$@"
