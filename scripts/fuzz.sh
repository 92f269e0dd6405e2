#!/usr/bin/env bash
# Fuzzes request decoding and validation (fuzz/fuzz_targets/requests.rs) for a bounded
# time, after replaying every input that ever crashed it (fuzz/regressions/requests/).
#
#   scripts/fuzz.sh [SECONDS]     default 60
#
# cargo-fuzz comes from crates.io (installed if missing). libFuzzer needs the nightly
# -Z flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. No sanitizer: the
# crate has no unsafe code of its own, and a panic is the failure looked for.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
cargo_fuzz_version=0.13.2

if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
    echo "installing cargo-fuzz $cargo_fuzz_version" >&2
    cargo install --quiet --locked cargo-fuzz --version "$cargo_fuzz_version"
fi
export RUSTC_BOOTSTRAP=1
# The dev profile of fuzz/Cargo.toml (opt-level 0, debug assertions on, no debug info)
# builds in ~4 minutes on two cores (opt-level 1: 6-8, release: ~9); the reasons and the
# speed it gives up are in fuzz/Cargo.toml.
cargo fuzz build --dev -s none requests
binary=fuzz/target/x86_64-unknown-linux-gnu/debug/requests
regressions=(fuzz/regressions/requests/*)
if [ -e "${regressions[0]}" ]; then
    echo "replaying ${#regressions[@]} saved crash input(s)"
    "$binary" "${regressions[@]}"
fi
mkdir -p fuzz/corpus/requests fuzz/artifacts
echo "fuzzing for ${seconds}s (libFuzzer's log: fuzz/artifacts/last-run.log)"
# libFuzzer prints a line per new input; the log keeps them, the console gets the summary.
if ! "$binary" -max_total_time="$seconds" -print_final_stats=1 fuzz/corpus/requests \
    -artifact_prefix=fuzz/artifacts/ >fuzz/artifacts/last-run.log 2>&1; then
    tail -n 60 fuzz/artifacts/last-run.log >&2
    echo "scripts/fuzz.sh: a crash; its input is in fuzz/artifacts/. Fix it, then move the" \
        "input to fuzz/regressions/requests/ so it is replayed on every run." >&2
    exit 1
fi
grep -E "^Done|^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" \
    fuzz/artifacts/last-run.log
