#!/usr/bin/env bash
# Persistent QoS 1 throughput of Myriad under each durability setting, in one run.
#
#   bench/durability.sh            (builds the release binary first)
#
# For each store setting, starts `myriad serve` on a loopback port with a fresh
# data directory, runs `myriad sim p2p` (QoS 1, subscribers with persistent
# sessions, so every delivery is written to the store and removed again when
# acknowledged) and prints one JSON line per setting plus a table. A PUBACK
# leaves only after the message is committed, so publisher acks per second are
# bounded by commit throughput.
#
# Settings: memory (no store), embedded + fsync + group commit (the default),
# embedded + fsync + one commit per acknowledgement, embedded without fsync.
# Knobs: PAIRS (16), WINDOW (32), DURATION (8 s), PORT (21900).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PAIRS=${PAIRS:-16}
WINDOW=${WINDOW:-32}
DURATION=${DURATION:-8}
PORT=${PORT:-21900}
BIN=${MYRIAD_BIN:-target/release/myriad}
if [ -z "${MYRIAD_BIN:-}" ]; then
    cargo build --release -p myriad >&2
fi
BIN=$(realpath "$BIN")  # the broker runs in its own directory
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_init durability

declare -A CONFIGS=(
    [memory]='[store]
backend = "memory"'
    [fsync_group]='[store]
fsync = true
commit = "group"'
    [fsync_per_ack]='[store]
fsync = true
commit = "per_ack"'
    [nofsync_group]='[store]
fsync = false
commit = "group"'
)
ORDER=(memory fsync_group fsync_per_ack nofsync_group)

results=()
for mode in "${ORDER[@]}"; do
    dir=$WORK/$mode
    mkdir -p "$dir"
    printf '%s\n' "${CONFIGS[$mode]}" >"$dir/myriad.toml"
    (cd "$dir" && exec "$BIN" serve --config myriad.toml --listen "127.0.0.1:$PORT" --api-listen 127.0.0.1:0 --data-dir data) \
        >"$dir/out.log" 2>"$dir/err.log" &
    BPID=$!
    for _ in $(seq 100); do
        grep -q "MQTT listening" "$dir/out.log" 2>/dev/null && break
        sleep 0.1
    done
    line=$("$BIN" sim --broker "127.0.0.1:$PORT" --broker-pid "$BPID" --label "$mode" -q \
        p2p --pairs "$PAIRS" --qos 1 --window "$WINDOW" --duration "$DURATION" \
        --persistent-subscribers | tail -n 1)
    stop_broker
    json=$(python3 -c 'import json,sys; r=json.loads(sys.argv[2]); print(json.dumps({"bench":"persistent_qos1","mode":sys.argv[1],"pairs":r["publishers"],"window":r["window"],"acked_per_sec":round(r["acked"]/r["publish_secs"]),"delivered_per_sec":r["delivered_per_sec"],"lost":r["lost"],"duplicates":r["duplicates"],"p50_ms":r["p50_ms"],"p99_ms":r["p99_ms"],"broker_cpu_secs":r["broker_cpu_secs"],"broker_rss_peak_mib":round(r.get("broker_rss_peak",0)/2**20,1)}))' "$mode" "$line")
    echo "$json"
    results+=("$json")
done

printf '\n| mode | acked msgs/s | delivered msgs/s | p50 ms | p99 ms | lost | dups | broker peak RSS MiB |\n|---|---|---|---|---|---|---|---|\n'
for json in "${results[@]}"; do
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("| %s | %d | %.0f | %s | %s | %d | %d | %s |" % (r["mode"], r["acked_per_sec"], r["delivered_per_sec"], r["p50_ms"], r["p99_ms"], r["lost"], r["duplicates"], r["broker_rss_peak_mib"]))' "$json"
done
