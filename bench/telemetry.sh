#!/usr/bin/env bash
# Telemetry store benchmarks (issue 17), Myriad beside InfluxDB 1.6 in the same run.
# Prints one JSON line per part on stdout; progress on stderr. See bench/README.md ("Telemetry").
#
#   1. engine:  the in-process engine bench (crates/myriad-tsdb/examples/bench.rs): bytes per point
#               after sealing (Gorilla and pco), points per CPU-second, query times.
#   2. mqtt:    `myriad serve` + `myriad sim telemetry`: DEVICES_MQTT devices publish quantised
#               readings over MQTT (QoS 1, PUBACK after the WAL) for DURATION s at INTERVAL s;
#               stored values per second, PUBACK latency, broker CPU per value.
#   3. influx:  InfluxDB 1.6 (Debian `influxdb`, installed if missing) on loopback ports
#               21896/21897: DEVICES x HOURS of the same data model as line protocol over HTTP
#               (bench/telemetry_lines.py); values per second (wall and per influxd CPU-second),
#               then bytes on disk per value once its TSM files are fully compacted.
#   4. myriad-lines (when Myriad answers `POST /write`): the same line protocol, same client,
#               into `myriad serve`; values per second, bytes on disk per value after the seal
#               at shutdown.
#
#   6. blocks (only when named in PARTS): crates/myriad-tsdb/examples/blocks.rs, DEVICES x DAYS
#               (default 2) through a file store sealed every 10 minutes of data with the
#               compactions due: seal CPU early and late in a day against re-encoding the whole
#               day (what each seal cost before block generations), write amplification, heap
#               (RssAnon) after reopening and reading everything against bytes on disk.
#
#   5. series-memory (only when named in PARTS): `myriad serve` with DEVICES_MEM devices (default
#               100,000) x 10 metrics = 1M active series, 3 points each in open chunks, written over
#               the line-protocol API (bench/telemetry_series_memory.py); server RSS before/after.
#
#   bash bench/telemetry.sh                                  # full run (~6 min)
#   PARTS=series-memory bash bench/telemetry.sh              # 1M series (~3 min)
#   DEVICES=100 HOURS=2 DEVICES_MQTT=500 DURATION=5 bash bench/telemetry.sh   # smoke run
#   PARTS="influx" bash bench/telemetry.sh                   # one part
#
# Loopback only; each server is stopped by its PID.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICES=${DEVICES:-1000}
HOURS=${HOURS:-24}
DEVICES_MQTT=${DEVICES_MQTT:-10000}
DURATION=${DURATION:-20}
INTERVAL=${INTERVAL:-1}
BATCH=${BATCH:-1}
PARTS=${PARTS:-engine mqtt influx myriad-lines}
MQTT_PORT=${MQTT_PORT:-21893}
API_PORT=${API_PORT:-21894}
INFLUX_PORT=${INFLUX_PORT:-21896}
PROFILE=${PROFILE:-ci}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
BIN=${MYRIAD_BIN:-$TARGET/myriad}
PY=${PYTHON:-python3}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init tmbench

log() { echo "== $*" >&2; }
has_part() { [[ " $PARTS " == *" $1 "* ]]; }

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building myriad and the engine bench (profile $PROFILE)"
    (cd "$ROOT" && cargo build --profile "$PROFILE" -q -p myriad -p myriad-tsdb --examples --bins)
fi

if has_part engine; then
    log "engine: DEVICES=$DEVICES in-process"
    DEVICES=$DEVICES "$TARGET/examples/bench" | tail -n 1
fi

if has_part blocks; then
    log "blocks: DEVICES=$DEVICES DAYS=${DAYS:-2} in-process, file store"
    TMPDIR=$WORK DEVICES=$DEVICES DAYS=${DAYS:-2} "$TARGET/examples/blocks" | tail -n 1
fi

start_myriad() { # $1: data dir
    TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    cat >"$WORK/myriad.toml" <<CONF
[auth]
allow_anonymous = false

[api]
token = "$TOKEN"

[store]
data_dir = "$1"
CONF
    (cd "$WORK" && exec "$BIN" serve --config "$WORK/myriad.toml" \
        --listen "127.0.0.1:$MQTT_PORT" --api-listen "127.0.0.1:$API_PORT") \
        >"$WORK/out.log" 2>"$WORK/err.log" &
    BPID=$!
    for _ in $(seq 100); do
        grep -q "^HTTP API listening" "$WORK/out.log" 2>/dev/null && return 0
        kill -0 "$BPID" 2>/dev/null || { cat "$WORK/err.log" >&2; exit 1; }
        sleep 0.2
    done
    echo "myriad serve did not start" >&2
    exit 1
}

if has_part mqtt; then
    start_myriad "$WORK/mqtt-data"
    log "mqtt: $DEVICES_MQTT devices, every ${INTERVAL}s, batch $BATCH, ${DURATION}s"
    MYRIAD_API_TOKEN=$TOKEN timeout $((DURATION + 300)) "$BIN" sim --quiet \
        --broker "127.0.0.1:$MQTT_PORT" --broker-pid "$BPID" --label myriad --conns-per-source 200 \
        telemetry --api "127.0.0.1:$API_PORT" -n "$DEVICES_MQTT" --duration "$DURATION" \
        --interval "$INTERVAL" --batch "$BATCH" | tail -n 1
    stop_broker
fi

dir_bytes() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
# Bytes of InfluxDB's TSM data files (its `_series` index files are preallocated 4 MiB each and
# reported apart).
tsm_bytes() { find "$WORK/influx/data/bench" -name '*.tsm' -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }

if has_part influx; then
    if ! command -v influxd >/dev/null; then
        log "installing influxdb (Debian)"
        apt-get install -y -q influxdb >/dev/null
    fi
    mkdir -p "$WORK/influx"
    cat >"$WORK/influx.conf" <<CONF
reporting-enabled = false
bind-address = "127.0.0.1:$((INFLUX_PORT + 1))"
[meta]
  dir = "$WORK/influx/meta"
[data]
  dir = "$WORK/influx/data"
  wal-dir = "$WORK/influx/wal"
  query-log-enabled = false
  cache-snapshot-write-cold-duration = "2s"
  compact-full-write-cold-duration = "5s"
[http]
  bind-address = "127.0.0.1:$INFLUX_PORT"
  log-enabled = false
[monitor]
  store-enabled = false
CONF
    influxd -config "$WORK/influx.conf" >"$WORK/influx.log" 2>&1 &
    BPID=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$INFLUX_PORT/ping" >/dev/null && break
        sleep 0.2
    done
    curl -sf -XPOST "http://127.0.0.1:$INFLUX_PORT/query" --data-urlencode "q=CREATE DATABASE bench" >/dev/null
    log "influx: DEVICES=$DEVICES HOURS=$HOURS line protocol"
    ingest=$("$PY" "$ROOT/bench/telemetry_lines.py" --url "http://127.0.0.1:$INFLUX_PORT/write?db=bench" \
        --devices "$DEVICES" --hours "$HOURS" --pid "$BPID" --label influxdb-1.6)
    # Let the cache snapshot and the full compaction run (cold after 2 s / 5 s), until the
    # TSM size stops changing for 10 s (at most 3 min).
    last=-1; stable=0
    for _ in $(seq 180); do
        sleep 1
        now=$(tsm_bytes)
        if [[ $now == "$last" ]]; then stable=$((stable + 1)); else stable=0; last=$now; fi
        [[ $stable -ge 10 ]] && break
    done
    wal=$(dir_bytes "$WORK/influx/wal/bench")
    values=$(echo "$ingest" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["values"])')
    series=$(dir_bytes "$WORK/influx/data/bench/_series")
    echo "$ingest" | "$PY" -c "import json,sys; r=json.load(sys.stdin); r.update(tsm_bytes=$last, series_index_bytes=$series, wal_bytes=$wal, bytes_per_value=round($last/$values, 3)); print(json.dumps(r))"
    stop_broker
fi

if has_part myriad-lines; then
    start_myriad "$WORK/lines-data"
    code=$(curl -s -o /dev/null -w '%{http_code}' -XPOST -H "Authorization: Bearer $TOKEN" \
        "http://127.0.0.1:$API_PORT/write?db=bench&precision=s" --data-binary 'sensor,device=probe x=1 1')
    if [[ $code == 404 || $code == 405 ]]; then
        log "myriad-lines: skipped (no /write on this build: HTTP $code)"
    else
        # The devices must exist: register them in one import.
        "$PY" - "$API_PORT" "$TOKEN" "$DEVICES" <<'PYEOF' >&2
import json, sys, urllib.request
port, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = "".join(json.dumps({"id": f"d{i}", "password": "bench-device-pw"}) + "\n" for i in range(n)).encode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/devices/import?format=jsonl", data=body, method="POST",
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"})
print("import:", urllib.request.urlopen(req, timeout=300).read()[:200])
PYEOF
        log "myriad-lines: DEVICES=$DEVICES HOURS=$HOURS line protocol"
        ingest=$("$PY" "$ROOT/bench/telemetry_lines.py" --url "http://127.0.0.1:$API_PORT/write?db=bench" \
            --devices "$DEVICES" --hours "$HOURS" --pid "$BPID" --token "$TOKEN" --label myriad)
        STOP_WAIT=300 stop_broker # seals the head into blocks (a day of 34.56M values: ~10 s)
        tdir="$WORK/lines-data/telemetry"
        blocks=$(find "$tdir" -name 'block-*.blk' -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print s + 0}')
        total=$(dir_bytes "$tdir")
        values=$(echo "$ingest" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["values"])')
        echo "$ingest" | "$PY" -c "import json,sys; r=json.load(sys.stdin); r.update(block_bytes=$blocks, dir_bytes=$total, bytes_per_value=round($blocks/$values, 3), dir_bytes_per_value=round($total/$values, 3)); print(json.dumps(r))"
    fi
fi

if has_part series-memory; then
    start_myriad "$WORK/mem-data"
    log "series-memory: ${DEVICES_MEM:-100000} devices x 10 metrics"
    "$PY" "$ROOT/bench/telemetry_series_memory.py" --api "127.0.0.1:$API_PORT" --token "$TOKEN" \
        --pid "$BPID" --devices "${DEVICES_MEM:-100000}"
    stop_broker
fi
