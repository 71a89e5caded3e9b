#!/bin/sh
# fuzz.sh - runs each libFuzzer target named on the command line for
# FUZZ_SECONDS (600; with FUZZ_RUNS set, it stops at that many executions if
# sooner) at the lowest CPU priority, growing a working corpus in
# build/fuzz-corpus/<target> from the committed seeds in fuzz/corpus/<target>.
# A crash leaves its input in build/fuzz-crashes/<target>/ and the log in
# build/fuzz-logs/<target>.log; an input that runs longer than 60 s counts
# as a crash too (a parser that slow is a way to stall a runner). Ends with one line
# "fuzz: N targets, M executions, K crashes", and fails when K > 0.
set -u
secs=${FUZZ_SECONDS:-600}
runs=${FUZZ_RUNS:+-runs=$FUZZ_RUNS}
bin=${FUZZ_BIN:-build/fuzz}
crashdir=build/fuzz-crashes
work=build/fuzz-corpus
logs=build/fuzz-logs
n=0 execs=0 crashes=0
for t in "$@"; do
  n=$((n + 1))
  mkdir -p "$crashdir/$t" "$work/$t" "$logs"
  dict=
  [ -f "fuzz/$t.dict" ] && dict="-dict=fuzz/$t.dict"
  nice -n 19 "$bin/fuzz_$t" -max_total_time="$secs" $runs -timeout=60 -print_final_stats=1 \
    -artifact_prefix="$crashdir/$t/" $dict "$work/$t" "fuzz/corpus/$t" >"$logs/$t.log" 2>&1
  rc=$?
  # The final stats, or after a crash the last progress line ("#N ...").
  e=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -n 1)
  [ -n "$e" ] || e=$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$logs/$t.log" | tail -n 1)
  e=${e:-0}
  execs=$((execs + e))
  if [ "$rc" -ne 0 ]; then
    crashes=$((crashes + 1))
    echo "  $t: $e executions, CRASHED (exit $rc): input in $crashdir/$t/, log in $logs/$t.log"
  else
    echo "  $t: $e executions"
  fi
done
echo "fuzz: $n targets, $execs executions, $crashes crashes"
[ "$crashes" -eq 0 ]
