#!/bin/sh
# run-specs.sh - runs the busted specs and ends with busted's counts as
# "N passed, N failed" (also kept in $BUILD/spec-summary.txt for .ci/run).
# The specs get a temporary directory of their own (LUSTER_SPEC_TMP, used by
# spec/support/helpers.lua for runner logs, script directories and scratch
# files); anything left in it at the end is named and counts as a failure.
set -u
out=${BUILD:-build}/spec-output.txt
mkdir -p "$(dirname "$out")"
LUSTER_SPEC_TMP=$(mktemp -d /tmp/luster-specs.XXXXXX) || exit 1
export LUSTER_SPEC_TMP
lua5.4 /usr/bin/busted "$@" 2>&1 | tee "$out"
leftover=0
if [ -n "$(ls -A "$LUSTER_SPEC_TMP")" ]; then
  leftover=1
  echo "the specs left these files behind (a spec that creates a file or starts a runner must remove it / stop it):"
  for f in "$LUSTER_SPEC_TMP"/*; do
    echo "  $(basename "$f"): $(head -c 200 "$f" 2>/dev/null | head -n 1)"
  done
fi
rm -rf "$LUSTER_SPEC_TMP"
status=$(grep -E '^[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors?' "$out" | tail -n 1)
passed=$(echo "$status" | sed -E 's/^([0-9]+) success.*/\1/')
failures=$(echo "$status" | sed -E 's/^[0-9]+ success(es)? \/ ([0-9]+) failure.*/\2/')
errors=$(echo "$status" | sed -E 's/.* ([0-9]+) errors?.*/\1/')
if [ -z "$status" ]; then
  echo "0 passed, 1 failed" | tee "${BUILD:-build}/spec-summary.txt"
  exit 1
fi
failed=$((failures + errors + leftover))
echo "$passed passed, $failed failed" | tee "${BUILD:-build}/spec-summary.txt"
[ "$failed" -eq 0 ]
