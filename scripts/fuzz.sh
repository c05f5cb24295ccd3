#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, then prints one line of figures per
# target (runs, executions per second, corpus size, crashes). Exit 1 when any target crashed;
# the crashing input is in fuzz/artifacts/<target>/ and becomes a unit test in src/fuzzing.rs.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
#
# Seeds are fuzz/corpus/<target>/seed-*; what the fuzzer adds beside them is git-ignored.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-60}"
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;;
esac

# cargo-fuzz passes nightly-only flags (-Z...) to rustc; only the stable toolchain exists here,
# and RUSTC_BOOTSTRAP=1 lets it accept them.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# A debug build (fuzz/Cargo.toml gives it opt-level 1): debug assertions and overflow checks
# stay on. No sanitizer: samvault and its parsers are safe Rust, so the crashes worth finding
# are panics and broken promises, and an uninstrumented run makes twice the executions.
build=(--dev --sanitizer none)
targets=$(cargo fuzz list)
cargo fuzz build "${build[@]}"

logs=target/fuzz-logs
mkdir -p "$logs"
failed=0
summary=()
for target in $targets; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    echo "==> $target for ${seconds}s"
    set +e
    cargo fuzz run "${build[@]}" "$target" -- \
        -max_total_time="$seconds" -timeout=30 -print_final_stats=1 \
        >"$logs/$target.log" 2>&1
    code=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target.log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$target.log" | tail -1)
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    crashes=$(find "fuzz/artifacts/$target" -type f | wc -l)
    if [ "$code" != 0 ] || [ "$crashes" != 0 ]; then
        failed=1
        tail -n 30 "$logs/$target.log"
    fi
    summary+=("$(printf '%-16s runs %10s  exec/s %7s  corpus %5s  crashes %s' \
        "$target" "${runs:-?}" "${speed:-?}" "$corpus" "$crashes")")
done

echo
echo "fuzz: ${seconds}s per target (logs in $logs/)"
printf '%s\n' "${summary[@]}"
exit "$failed"
