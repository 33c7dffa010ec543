#!/usr/bin/env bash
# Reconnect spread of 10,000 simulated devices (issue 19: "no thundering herd after a broker
# restart"). `myriad sim fleet` devices connect to a fresh `myriad serve` (loopback, port
# 21897); STORM_AFTER s in, every device loses its connection at once and reconnects, waiting
# as `--backoff` says: `sim` (the simulator's own: uniform in 0..min after a storm) or `agent`
# (`myriad agent`'s full-jitter backoff, the same code). Two cases per kind:
#   storm    the broker stays up (a network blip: every device dropped at once);
#   restart  the broker is killed (SIGKILL) at the storm and started again DOWN s later, on
#            the same port and data dir (connects fail meanwhile, so windows grow).
# Prints one JSON line per run: the sim's storm report (reconnects per second after the storm,
# the busiest second's share of the devices, seconds until all were back).
#
#   bash bench/agent_reconnect.sh                 # 10,000 devices, both kinds, both cases
#   DEVICES=1000 KINDS=agent CASES=restart bash bench/agent_reconnect.sh
#
# Only the broker this script started is signalled, by PID.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICES=${DEVICES:-10000}
KINDS=${KINDS:-"sim agent"}
CASES=${CASES:-"storm restart"}
STORM_AFTER=${STORM_AFTER:-15}
DURATION=${DURATION:-60}
DOWN=${DOWN:-5}
MIN_MS=${MIN_MS:-2000}
MAX_MS=${MAX_MS:-120000}
PORT=${PORT:-21897}
BIN=$(realpath "${MYRIAD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/myriad}")
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init agentreconnect

start() {
    (cd "$WORK" && exec "$BIN" serve --listen "127.0.0.1:$PORT" --api-listen 127.0.0.1:0 \
        --data-dir "$WORK/data") >"$WORK/serve.log" 2>&1 &
    BPID=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "broker did not start" >&2
    exit 1
}

for kind in $KINDS; do
    for case in $CASES; do
        rm -rf "$WORK/data"
        start
        "$BIN" sim --broker "127.0.0.1:$PORT" --quiet --conns-per-source 10000 --label "$kind-$case" \
            fleet -n "$DEVICES" --duration "$DURATION" --storm-after "$STORM_AFTER" \
            --telemetry-interval 0 --command-rate 0 --keepalive 60 \
            --backoff "$kind" --backoff-min-ms "$MIN_MS" --backoff-max-ms "$MAX_MS" \
            >"$WORK/sim.json" 2>"$WORK/sim.err" &
        SIM=$!
        if [[ $case == restart ]]; then
            sleep "$STORM_AFTER"
            kill -KILL "$BPID" 2>/dev/null || true
            wait "$BPID" 2>/dev/null || true
            BPID=""
            sleep "$DOWN"
            start
        fi
        wait "$SIM" || { cat "$WORK/sim.err" >&2; exit 1; }
        python3 - "$kind" "$case" "$WORK/sim.json" <<'PY'
import json, sys
kind, case, path = sys.argv[1], sys.argv[2], sys.argv[3]
report = json.loads(open(path).read().strip().splitlines()[-1])
body = report.get("body", report)
storm = body.get("storm") or {}
print(json.dumps({"bench": "agent_reconnect", "backoff": kind, "case": case,
                  "devices": body.get("devices"), "online_before": storm.get("online_before"),
                  "online_at_end": body.get("online_at_end"),
                  "busiest_second_share": storm.get("busiest_second_share"),
                  "reconnect_secs": storm.get("reconnect_secs"),
                  "reconnects_per_second": storm.get("reconnects_per_second"),
                  "connect_failures": body.get("connect_failures")}))
PY
        stop_broker
    done
done
