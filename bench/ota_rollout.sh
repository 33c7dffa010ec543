#!/usr/bin/env bash
# Benchmark of an OTA rollout (issue 18): DEVICES simulated devices connected
# to a fresh `myriad serve` (embedded store, temporary data dir, loopback ports
# 21895/21896) get a rollout of one image; each reports every step at once
# (DOWNLOAD=1: downloads the image from its signed URL first). Prints the
# sim's JSON line last: notification latency, time to all notified and to
# COMPLETED, server CPU and peak RSS. Devices connect from 127.0.0.x, 200 per
# address (the login throttle refuses over 50 logins in flight per address).
# See bench/README.md ("OTA rollout").
#
#   bash bench/ota_rollout.sh                        # 10,000 devices, one wave
#   DEVICES=1000 bash bench/ota_rollout.sh           # smoke run
#   WAVES=10,40 DOWNLOAD=1 bash bench/ota_rollout.sh # waves, with downloads
#
# Everything talks to 127.0.0.1 only; the sim run is bounded by `timeout`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICES=${DEVICES:-10000}
WAVES=${WAVES:-100}
IMAGE=${IMAGE:-65536}
DOWNLOAD=${DOWNLOAD:-}
NOTIFY_RATE=${NOTIFY_RATE:-10000}   # [ota] notify_per_second
MQTT_PORT=${MQTT_PORT:-21895}
API_PORT=${API_PORT:-21896}
BIN=${MYRIAD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/myriad}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init otabench

log() { echo "== $*" >&2; }

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building myriad (release)"
    (cd "$ROOT" && cargo build --release -q -p myriad)
fi
[[ -x $BIN ]] || { echo "no binary at $BIN (set MYRIAD_BIN)" >&2; exit 1; }

TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
cat >"$WORK/myriad.toml" <<CONF
[auth]
allow_anonymous = false

[api]
token = "$TOKEN"

[store]
data_dir = "$WORK/data"

[ota]
notify_per_second = $NOTIFY_RATE
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

args=(--broker "127.0.0.1:$MQTT_PORT" --broker-pid "$BPID" --label myriad --conns-per-source 200
    ota --api "127.0.0.1:$API_PORT" -n "$DEVICES" --waves "$WAVES" --image-bytes "$IMAGE")
[[ -n $DOWNLOAD ]] && args+=(--download)
log "myriad sim ${args[*]}"
status=0
MYRIAD_API_TOKEN=$TOKEN timeout 600 "$BIN" sim "${args[@]}" >"$WORK/report.json" || status=$?
stop_broker
if [[ $status -ne 0 ]]; then
    echo "myriad sim exited with $status; server log tail:" >&2
    tail -n 20 "$WORK/err.log" >&2
fi
tail -n 1 "$WORK/report.json"
exit "$status"
