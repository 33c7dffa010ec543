#!/usr/bin/env bash
# The project's one test command (README: `bash scripts/test.sh`).
#
#   0. cargo metadata --locked for . and fuzz/ (fails fast on a stale lock file)
#   1. cargo fmt --check
#   2. cargo clippy --all-targets -- -D warnings
#   3. cargo build --profile ci         (the `myriad` binary the Python suite runs:
#                                        release optimisation without LTO, see
#                                        Cargo.toml; benchmarks use --release)
#   4. cargo test --workspace --profile ci (same profile as 3: dependencies compile once)
#   5. python -m pytest tests -q -n 3 --dist loadfile
#                                       (external-client integration suite; pytest-xdist, each
#                                        file whole in one of three workers: the suite waits on
#                                        processes far more than it computes)
#   6. bash scripts/fuzz.sh 60          (bounded fuzzing: instrumented build + 60 s
#                                        session + 10 s decode + 20 s each of
#                                        telemetry_payload, tsdb_files, promql, ota_patch, rule_sql;
#                                        MYRIAD_FUZZ_SECONDS sets the seconds, 0 skips)
#
# Prerequisites (.ci/run installs them): a Rust toolchain with rustfmt and clippy,
# Python 3 with tests/requirements.txt (a .venv/ at the repo root is used when
# present), mosquitto_pub/mosquitto_sub (Debian package mosquitto-clients), and
# Node with MQTT.js for the WebSocket tests (`npm ci --prefix tests/node`), and Chromium at
# /usr/bin/chromium (Debian package chromium) for the console browser tests.
# Exits non-zero on the first failing step.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -x .venv/bin/python ]; then
  PYTHON=${PYTHON:-.venv/bin/python}
else
  PYTHON=${PYTHON:-python3}
fi
TARGET_DIR=${CARGO_TARGET_DIR:-target}
export MYRIAD_BIN=${MYRIAD_BIN:-$TARGET_DIR/ci/myriad}

step() { printf '\n==> %s\n' "$*"; }
SECONDS=0

step "lock files current (root and fuzz/: the fuzz build runs --locked)"
cargo metadata --locked --format-version 1 >/dev/null
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --profile ci"
cargo build --workspace --profile ci

step "cargo test --workspace --profile ci"
cargo test --workspace --profile ci

step "python -m pytest tests -q -n 3 --dist loadfile (broker: $MYRIAD_BIN)"
"$PYTHON" -m pytest tests -q -n 3 --dist loadfile

FUZZ_SECONDS=${MYRIAD_FUZZ_SECONDS:-60}
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  step "bash scripts/fuzz.sh $FUZZ_SECONDS"
  bash scripts/fuzz.sh "$FUZZ_SECONDS"
fi

step "all checks passed in ${SECONDS}s"
