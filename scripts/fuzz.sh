#!/usr/bin/env bash
# Bounded fuzzing run (CI step of scripts/test.sh; fuzz/README.md has the rest).
#
#   bash scripts/fuzz.sh [seconds]
#
# Builds the fuzz targets with coverage instrumentation on the stable
# toolchain (no nightly, no sanitizer), then runs `session` for [seconds]
# (default 60), `decode` for a sixth of that and the telemetry store's
# targets (`telemetry_payload`, `tsdb_files`, `promql`) for a third of it
# each, the pipeline rule engine's (`rule_sql`) for a third of it too, all
# starting from their seed corpora in fuzz/corpus/<target>. New
# inputs go to a scratch directory, so the seed corpora stay as committed. A
# crash, a timeout (a single input running for over 25 s; 10 s for the
# telemetry targets), a leak past 2 GiB of RSS or (telemetry targets) a
# single allocation over 512 MiB fails the run; the input is kept in
# fuzz/artifacts/<target>/ and the script prints how to replay it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

SECONDS_SESSION=${1:-60}
SECONDS_DECODE=$((SECONDS_SESSION / 6 > 0 ? SECONDS_SESSION / 6 : 1))
SECONDS_TELEMETRY=$((SECONDS_SESSION / 3 > 0 ? SECONDS_SESSION / 3 : 1))
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
TARGET_DIR=target/instrumented
BIN="$TARGET_DIR/$TRIPLE/release"

SECONDS=0
echo "fuzz: building the instrumented targets ($TRIPLE)"
# --target keeps the flags away from build scripts and proc macros.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --locked --target "$TRIPLE" --target-dir "$TARGET_DIR" \
  --bin session --bin decode --bin telemetry_payload --bin tsdb_files --bin promql --bin ota_patch \
  --bin rule_sql
echo "fuzz: built in ${SECONDS}s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# run <target> <seconds> [extra libFuzzer flags, after the defaults so they win]
run() {
  local target=$1 seconds=$2
  shift 2
  local log="$scratch/$target.log"
  mkdir -p "$scratch/$target" "artifacts/$target"
  echo "fuzz: $target for ${seconds}s over corpus/$target"
  if ! "$BIN/$target" "$scratch/$target" "corpus/$target" \
      -max_total_time="$seconds" -max_len=4096 -timeout=25 -rss_limit_mb=2048 \
      -handle_segv=0 -artifact_prefix="artifacts/$target/" -print_final_stats=1 "$@" >"$log" 2>&1; then
    tail -n 80 "$log"
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/ (see above)."
    case "$target" in
      session)
        echo "fuzz: replay it with MYRIAD_FUZZ_INPUT=<file> cargo test -p myriad-broker --test fuzz_corpus -- --nocapture" ;;
      telemetry_payload)
        echo "fuzz: replay it with MYRIAD_FUZZ_INPUT=<file> cargo test -p myriad-fleet --test fuzz_corpus -- --nocapture" ;;
      tsdb_files | promql)
        echo "fuzz: replay it with MYRIAD_FUZZ_INPUT=<file> MYRIAD_FUZZ_TARGET=$target cargo test -p myriad-tsdb --test fuzz_corpus -- --nocapture" ;;
      ota_patch)
        echo "fuzz: replay it with MYRIAD_FUZZ_INPUT=<file> cargo test -p myriad-ota --test fuzz_corpus -- --nocapture" ;;
      rule_sql)
        echo "fuzz: replay it with MYRIAD_FUZZ_INPUT=<file> cargo test -p myriad-pipeline --test fuzz_corpus -- --nocapture" ;;
    esac
    return 1
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
  echo "fuzz: $target kept $(find "$scratch/$target" -type f | wc -l) new inputs"
}

# The telemetry store's targets: an input of at most 4 KiB must neither take a
# single allocation over 512 MiB (a length field asking for memory the bytes do
# not hold) nor run for over 10 s (a query).
telemetry_limits=(-timeout=10 -malloc_limit_mb=512)
run session "$SECONDS_SESSION"
run decode "$SECONDS_DECODE"
run telemetry_payload "$SECONDS_TELEMETRY" "${telemetry_limits[@]}"
run tsdb_files "$SECONDS_TELEMETRY" "${telemetry_limits[@]}"
run promql "$SECONDS_TELEMETRY" "${telemetry_limits[@]}"
run ota_patch "$SECONDS_TELEMETRY" "${telemetry_limits[@]}"
run rule_sql "$SECONDS_TELEMETRY" "${telemetry_limits[@]}"
echo "fuzz: passed in ${SECONDS}s"
