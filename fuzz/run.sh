#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, as many at once as there
# are CPU cores (FUZZ_JOBS overrides). Fails when a target crashes, and prints the path
# of the input that crashed it.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     # CI: fuzz/run.sh 30; release: fuzz/run.sh 3600
#
# Works on stable Rust (RUSTC_BOOTSTRAP=1, no sanitizer). New inputs go to
# fuzz/work/TARGET (not committed); fuzz/corpus/TARGET holds the committed seeds.
# FUZZ_CODEGEN_UNITS (default 16: a faster build, slightly slower runs; 1 for long runs).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-30}
shift || true
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

start=$(date +%s)
flags=(-s none --codegen-units "${FUZZ_CODEGEN_UNITS:-16}")
# One build of all targets: they share the library, the expensive part.
cargo fuzz build "${flags[@]}"
built=$(date +%s)
echo "fuzz: built in $((built - start)) s; ${seconds} s per target"

jobs=${FUZZ_JOBS:-$(nproc)}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
running=0
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "artifacts/$t" "corpus/$t"
    (
        # -timeout: an input that takes 10 s is a hang, reported like a crash.
        cargo fuzz run "${flags[@]}" "$t" "work/$t" "corpus/$t" -- \
            -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$logs/$t" 2>&1
        echo $? >"$logs/$t.rc"
    ) &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true

failed=0
for t in "${targets[@]}"; do
    rc=$(cat "$logs/$t.rc" 2>/dev/null || echo 1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t" | tail -n 1)
    if [ "$rc" = 0 ]; then
        echo "fuzz: $t: ok, ${execs:-?} runs, ${rate:-?}/s"
    else
        failed=1
        echo "fuzz: $t: FAILED (exit $rc)"
        tail -n 40 "$logs/$t"
        for f in $(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$logs/$t"); do
            echo "fuzz: $t: crashing input: $f (replay: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} $t $f)"
        done
    fi
done
echo "fuzz: done in $(($(date +%s) - start)) s"
exit "$failed"
