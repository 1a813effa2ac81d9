#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 20) from its committed seed corpus, and fails if
# any target finds a crash. Usage: fuzz/run.sh [SECONDS] [TARGET...]
#
# It builds with plain cargo and the flags `cargo fuzz build -s none` uses (libFuzzer's
# coverage instrumentation, `--cfg fuzzing`, debug assertions), so it runs on the stable
# toolchain and CI needs no `cargo install cargo-fuzz` (minutes of compiling). For long runs
# by hand, `cargo fuzz run -s none TARGET` (stable) or `cargo +nightly fuzz run TARGET`
# (AddressSanitizer) use the same targets and corpora (fuzz/README.md).
#
# FUZZ_PROFILE=dev builds without optimizations: it compiles in about half the time and runs
# several times slower, which suits a short smoke run in CI.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame_decoder protocol_parse token api_request proto_decode)
fi
profile=${FUZZ_PROFILE:-release}
triple=$(rustc -vV | sed -n 's/^host: //p')

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions"
# --target keeps RUSTFLAGS off build scripts and proc macros, as cargo fuzz does. Not --locked:
# fuzz/Cargo.lock must be able to follow new dependencies of the server crate.
cargo build --profile "$profile" --target "$triple" --bins
dir="target/$triple/$([ "$profile" = dev ] && echo debug || echo "$profile")"

mkdir -p artifacts
for target in "${targets[@]}"; do
  # New inputs go to a scratch directory; the committed seeds are only read.
  scratch=$(mktemp -d)
  echo "== fuzz $target for ${seconds}s"
  log=$(mktemp)
  status=0
  "$dir/$target" "$scratch" "corpus/$target" \
    -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="artifacts/$target-" >"$log" 2>&1 || status=$?
  grep -E "^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|new_units_added)" "$log" || true
  rm -rf "$scratch"
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed (exit $status); the input is in fuzz/artifacts/" >&2
    exit "$status"
  fi
  rm -f "$log"
done
