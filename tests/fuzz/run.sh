#!/usr/bin/env bash
# Runs libFuzzer targets for a fixed time each on their committed seeds; fails if any crashes, leaks or trips a sanitizer.
#
# usage: tests/fuzz/run.sh BUILD_DIR SECONDS TARGET...   (TARGET: fuzz_config or config)
#
# Each target runs on two corpus directories: a fresh scratch one first (where
# libFuzzer writes the inputs it finds) and tests/fuzz/corpus/X/ second, which
# it only reads, so a run never changes the checkout. Logs, new inputs and
# crash artifacts go under BUILD_DIR/fuzz-runs/<time>/X/.
set -uo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $0 BUILD_DIR SECONDS TARGET..." >&2
    exit 2
fi
build=$1
seconds=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
run_dir=$build/fuzz-runs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$run_dir"
run_dir=$(cd "$run_dir" && pwd)

# Reports go to the log; a sanitizer report must end the run (the flags also
# say so), and leaks count. Caller settings come first and are overridden.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1"

# The value of one `stat::NAME: value` line of the final stats, or "?".
stat() {
    local v
    v=$(sed -n "s/^stat::$1: *//p" "$2" | tail -n 1)
    echo "${v:-?}"
}

summary=()
failed=0
for t in "$@"; do
    name=fuzz_${t#fuzz_}
    short=${name#fuzz_}
    bin=$build/tests/fuzz/$name
    seeds=$here/corpus/$short
    dict=$here/$short.dict
    out=$run_dir/$short
    mkdir -p "$out/corpus" "$out/artifacts"
    log=$out/fuzz.log

    if [ ! -x "$bin" ]; then
        summary+=("$name: FAILED: no executable $bin (is tests/fuzz/$name.c there?)")
        failed=1
        continue
    fi
    args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10
          -artifact_prefix="$out/artifacts/")
    [ -f "$dict" ] && args+=(-dict="$dict")
    corpora=("$out/corpus")
    [ -d "$seeds" ] && corpora+=("$seeds")

    echo "fuzz: $name for $seconds s, log $log"
    start=$(date +%s)
    "$bin" "${args[@]}" "${corpora[@]}" >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))

    execs=$(stat number_of_executed_units "$log")
    rate=$(stat average_exec_per_sec "$log")
    added=$(stat new_units_added "$log")
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    line="$execs executions ($rate/s) in $took s, coverage ${cov:-?}, $added new inputs"
    artifacts=$(find "$out/artifacts" -type f | sort)
    if [ $rc -ne 0 ] || [ -n "$artifacts" ]; then
        failed=1
        summary+=("$name: FAILED (exit $rc): $line; artifacts in $out/artifacts/")
        echo "---- $name: last lines of $log ----"
        tail -n 60 "$log"
        for a in $artifacts; do
            echo "reproduce: $bin $a"
        done
    else
        summary+=("$name: ok: $line")
    fi
done

echo "---- fuzz summary (run directory $run_dir) ----"
printf '%s\n' "${summary[@]}"
exit $failed
