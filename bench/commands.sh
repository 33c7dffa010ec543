#!/usr/bin/env bash
# Benchmark of the command service (issue 6): commands per second end to end
# to DEVICES connected simulated devices, with latency from the API call to
# the device's recorded reply. Starts a fresh `myriad serve` (embedded store,
# temporary data dir, loopback ports 21893/21894), runs `myriad sim commands`
# against it, stops the server by its PID and prints the sim's JSON line last.
# See bench/README.md ("Commands").
#
#   bash bench/commands.sh                            # 10,000 devices, 30 s (~1.5 min)
#   DEVICES=500 DURATION=5 bash bench/commands.sh     # smoke run
#   MQTT=3 bash bench/commands.sh                     # 3.1.1 devices (envelope replies)
#   MIXED=1 bash bench/commands.sh                    # half 5.0, half 3.1.1
#
# Everything talks to 127.0.0.1 only; the sim run is bounded by `timeout`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICES=${DEVICES:-10000}
DURATION=${DURATION:-30}           # seconds of sending
WINDOW=${WINDOW:-64}               # commands open at once
PRIORITY=${PRIORITY:-l2}
MQTT=${MQTT:-5}                    # devices' protocol: 5 or 3
MIXED=${MIXED:-}                   # non-empty: half the devices on 3.1.1
THREADS=${THREADS:-1}              # [runtime] threads of myriad serve (1 is its default)
FSYNC=${FSYNC:-true}               # [store] fsync (true is the default)
MQTT_PORT=${MQTT_PORT:-21893}
API_PORT=${API_PORT:-21894}
BIN=${MYRIAD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/myriad}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init cmdbench

log() { echo "== $*" >&2; }


if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building myriad (release)"
    (cd "$ROOT" && cargo build --release -q -p myriad)
fi
[[ -x $BIN ]] || { echo "no binary at $BIN (set MYRIAD_BIN)" >&2; exit 1; }

TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
# Rate limits lifted so the run measures throughput, not the limiter: the
# class limits (L1/L2 unlimited by default, L3 1,000/s) and the per-device
# limit (10/s, burst 20) are all set to 0 = unlimited. The window (at most
# WINDOW commands open) stays far below max_in_flight (50,000), so nothing
# is refused for pressure either. Everything else is the default config.
cat >"$WORK/myriad.toml" <<CONF
[auth]
allow_anonymous = false

[api]
token = "$TOKEN"

[runtime]
threads = $THREADS

[store]
data_dir = "$WORK/data"
fsync = $FSYNC

[commands.rate_l1]
per_second = 0.0

[commands.rate_l2]
per_second = 0.0

[commands.rate_l3]
per_second = 0.0

[commands.rate_device]
per_second = 0.0
CONF

log "starting myriad serve (mqtt 127.0.0.1:$MQTT_PORT, api 127.0.0.1:$API_PORT)"
(cd "$WORK" && exec "$BIN" serve --config "$WORK/myriad.toml" \
    --listen "127.0.0.1:$MQTT_PORT" --api-listen "127.0.0.1:$API_PORT") \
    >"$WORK/out.log" 2>"$WORK/err.log" &
BPID=$!
for _ in $(seq 100); do
    if grep -q "^HTTP API listening" "$WORK/out.log" 2>/dev/null; then
        break
    fi
    kill -0 "$BPID" 2>/dev/null || { cat "$WORK/err.log" >&2; exit 1; }
    sleep 0.2
done
grep -q "^HTTP API listening" "$WORK/out.log" || { echo "myriad serve did not start" >&2; exit 1; }

args=(--broker "127.0.0.1:$MQTT_PORT" --broker-pid "$BPID" --mqtt "$MQTT" --label myriad
    commands --api "127.0.0.1:$API_PORT" -n "$DEVICES" --duration "$DURATION"
    --window "$WINDOW" --priority "$PRIORITY")
[[ -n $MIXED ]] && args+=(--mixed)
log "myriad sim ${args[*]}"
status=0
MYRIAD_API_TOKEN=$TOKEN timeout $((DURATION + 150)) "$BIN" sim "${args[@]}" >"$WORK/report.json" || status=$?
stop_broker
if [[ $status -ne 0 ]]; then
    echo "myriad sim exited with $status; server log tail:" >&2
    tail -n 20 "$WORK/err.log" >&2
fi
tail -n 1 "$WORK/report.json"
exit "$status"
