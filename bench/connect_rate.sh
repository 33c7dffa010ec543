#!/usr/bin/env bash
# Connection set-up rate, Myriad against Mosquitto in the same run (issue 13).
#
#   bench/connect_rate.sh          (uses target/release/myriad; MYRIAD_BIN overrides)
#
# Each broker runs pinned to CPU 0 (`taskset -c 0`), `myriad sim conn` on CPU 1:
# N (10000) clean MQTT 3.1.1 connects, INFLIGHT (200) handshakes at a time, held
# 1 s, then closed. ROUNDS (3) rounds alternate the brokers; each prints one JSON
# line with the connect rate, the broker's CPU seconds and the listen-queue
# overflows the kernel counted meanwhile (`nstat` TcpExtListenOverflows: each one
# is a dropped SYN the client retries a second later). Myriad runs its default
# config (embedded store in a temporary data dir, anonymous clients allowed);
# Mosquitto from Debian with persistence off and no connection limit.
# Knobs: N, INFLIGHT, ROUNDS, PORT (21990), MOSQUITTO (/usr/sbin/mosquitto).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-10000}
INFLIGHT=${INFLIGHT:-200}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-21990}
BIN=${MYRIAD_BIN:-target/release/myriad}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p myriad" >&2; exit 1; }
[ -x "$MOSQUITTO" ] || { echo "no $MOSQUITTO (apt-get install mosquitto)" >&2; exit 1; }
BIN=$(realpath "$BIN")
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_init connect-rate

overflows() {
    if command -v nstat >/dev/null; then
        nstat -asz TcpExtListenOverflows 2>/dev/null | awk '/TcpExtListenOverflows/ {print $2}'
    else
        echo 0
    fi
}

start_myriad() {
    local dir=$WORK/myriad-$1
    mkdir -p "$dir"
    : >"$dir/myriad.toml"
    (cd "$dir" && exec taskset -c 0 "$BIN" serve --config myriad.toml --listen "127.0.0.1:$PORT" \
        --api-listen 127.0.0.1:0 --data-dir data) >"$dir/out.log" 2>"$dir/err.log" &
    BPID=$!
    for _ in $(seq 100); do
        grep -q "MQTT listening" "$dir/out.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "myriad did not start" >&2; cat "$dir/err.log" >&2; exit 1
}

start_mosquitto() {
    local dir=$WORK/mosquitto-$1
    mkdir -p "$dir"
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\nlog_dest none\n' \
        "$PORT" >"$dir/mosquitto.conf"
    taskset -c 0 "$MOSQUITTO" -c "$dir/mosquitto.conf" >"$dir/out.log" 2>&1 &
    BPID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "mosquitto did not start" >&2; exit 1
}

for round in $(seq "$ROUNDS"); do
    for broker in myriad mosquitto; do
        "start_$broker" "$round"
        before=$(overflows)
        line=$(taskset -c 1 timeout 300 "$BIN" sim --broker "127.0.0.1:$PORT" --broker-pid "$BPID" \
            --mqtt 3 --connect-concurrency "$INFLIGHT" --label "$broker" -q \
            conn -n "$N" --hold 1 --settle 0.5 | tail -n 1)
        after=$(overflows)
        stop_broker
        python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print(json.dumps({"bench": "connect_rate", "broker": sys.argv[2], "round": int(sys.argv[3]),
    "connections": r["connected"], "failed": r["failed"], "in_flight": int(sys.argv[4]),
    "connects_per_sec": round(r["connect_rate"]), "connect_secs": r["connect_secs"],
    "broker_cpu_secs": r["broker_cpu_secs"], "listen_overflows": int(sys.argv[6]) - int(sys.argv[5])}))
' "$line" "$broker" "$round" "$INFLIGHT" "$before" "$after"
        sleep 1
    done
done
