#!/usr/bin/env bash
# Maintained tool: lines that differ between two scripts/ptx_snapshot.sh directories, per file, debug info (.loc,
# comments, DWARF sections) left out: 0 everywhere = instruction-identical code. Run: bash scripts/ptx_diff.sh A B
clean() { awk '/\.section[ \t]+\.debug/ {exit} {print}' "$1" | grep -v "^\s*\.loc\|^\s*//\|\.file\|\$L__tmp"; }
for f in "$1"/*.ptx; do
  n=$(basename "$f")
  echo "$(diff <(clean "$f") <(clean "$2/$n") | wc -l) $n"
done
