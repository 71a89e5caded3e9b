#!/bin/sh
# run-specs.sh - runs the busted specs and ends with busted's counts as
# "N passed, N failed" (also kept in $BUILD/spec-summary.txt for .ci/run).
set -u
out=${BUILD:-build}/spec-output.txt
mkdir -p "$(dirname "$out")"
lua5.4 /usr/bin/busted "$@" 2>&1 | tee "$out"
status=$(grep -E '^[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors?' "$out" | tail -n 1)
passed=$(echo "$status" | sed -E 's/^([0-9]+) success.*/\1/')
failures=$(echo "$status" | sed -E 's/^[0-9]+ success(es)? \/ ([0-9]+) failure.*/\2/')
errors=$(echo "$status" | sed -E 's/.* ([0-9]+) errors?.*/\1/')
if [ -z "$status" ]; then
  echo "0 passed, 1 failed" | tee "${BUILD:-build}/spec-summary.txt"
  exit 1
fi
failed=$((failures + errors))
echo "$passed passed, $failed failed" | tee "${BUILD:-build}/spec-summary.txt"
[ "$failed" -eq 0 ]
