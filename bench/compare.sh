#!/usr/bin/env bash
# Runs the same `myriad sim` scenarios against Myriad and its peers (Mosquitto
# from Debian; rumqttd and rmqtt from crates.io when they install in time), one
# broker at a time on its own loopback port, and prints a Markdown table plus
# one JSON line per (broker, scenario). See bench/README.md.
#
# Every broker is started fresh for each scenario and stopped by its PID.
# Everything talks to 127.0.0.1 only; every sim run is bounded by `timeout`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_DIR=${PEERS_DIR:-$HOME/.cache/myriad-bench}
BROKERS=${BROKERS:-"myriad mosquitto rumqttd rmqtt"}
SCENARIOS=${SCENARIOS:-"conn fanin_qos0 fanin_qos1 fanout p2p storm"}
CONNS=${CONNS:-15000}              # idle connections
DURATION=${DURATION:-10}           # seconds of publishing per throughput scenario
FANIN_PUBS=${FANIN_PUBS:-16}
FANOUT_SUBS=${FANOUT_SUBS:-1000}
PAIRS=${PAIRS:-5000}
P2P_RATE=${P2P_RATE:-2}            # messages/s per pair
STORM_DEVICES=${STORM_DEVICES:-15000}
STORM_SECS=${STORM_SECS:-40}        # fleet run length; the storm hits at half time
MQTT=${MQTT:-3}                    # 3.1.1 everywhere: the level every peer speaks fully
RESULTS_MD=${RESULTS_MD:-}         # write the table to this file (e.g. bench/RESULTS.md)
WORK=$(mktemp -d /tmp/myriad-bench.XXXXXX)
RESULTS=$WORK/results.tsv
NOTES=$WORK/notes.txt
: > "$RESULTS"
: > "$NOTES"
declare -A PORT=([myriad]=21883 [mosquitto]=21884 [rumqttd]=21885 [rmqtt]=21886)
declare -A BIN=()
BPID=""

note() { echo "note: $*" | tee -a "$NOTES" >&2; }
log() { echo "== $*" >&2; }

cleanup() {
    if [[ -n "$BPID" ]] && kill -0 "$BPID" 2>/dev/null; then
        kill "$BPID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# --- install -------------------------------------------------------------
install_peers() {
    for broker in $BROKERS; do
        case $broker in
        myriad)
            if [[ -n ${MYRIAD_BIN:-} ]]; then
                log "myriad: $MYRIAD_BIN (not rebuilt)"
                BIN[myriad]=$MYRIAD_BIN
            else
                log "building myriad (release)"
                (cd "$ROOT" && cargo build --release -q -p myriad)
                BIN[myriad]=$ROOT/target/release/myriad
            fi
            ;;
        mosquitto)
            if ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]]; then
                log "installing mosquitto (apt-get)"
                (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto) >&2 ||
                    { note "mosquitto: apt-get install failed, skipped"; continue; }
            fi
            BIN[mosquitto]=$(command -v mosquitto || echo /usr/sbin/mosquitto)
            ;;
        rumqttd | rmqtt)
            local root=$PEERS_DIR/$broker
            if [[ ! -x $root/bin/$broker ]]; then
                log "cargo install $broker (time-boxed to 900 s)"
                if ! timeout 900 cargo install -q "$broker" --root "$root" >"$WORK/install-$broker.log" 2>&1; then
                    note "$broker: cargo install failed or timed out ($(grep -m1 -E 'error|only for installing' "$WORK/install-$broker.log" | cut -c1-120)), skipped"
                    continue
                fi
            fi
            if [[ -x $root/bin/$broker ]]; then
                BIN[$broker]=$root/bin/$broker
            else
                note "$broker: no binary named $broker after install, skipped"
            fi
            ;;
        *) note "unknown broker $broker, skipped" ;;
        esac
    done
}

# --- brokers -------------------------------------------------------------
start_broker() {
    local broker=$1 port=${PORT[$1]} dir=$WORK/$1
    rm -rf "$dir" && mkdir -p "$dir"
    case $broker in
    myriad)
        (cd "$dir" && exec "${BIN[myriad]}" serve --listen "127.0.0.1:$port" --api-listen 127.0.0.1:0 --data-dir "$dir/data") \
            >"$dir/out.log" 2>"$dir/err.log" &
        ;;
    mosquitto)
        cat >"$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
max_queued_messages 10000
max_inflight_messages 100
log_dest none
CONF
        "${BIN[mosquitto]}" -c "$dir/mosquitto.conf" >"$dir/out.log" 2>&1 &
        ;;
    rumqttd)
        cat >"$dir/rumqttd.toml" <<CONF
id = 0
[router]
id = 0
max_connections = 20000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
CONF
        "${BIN[rumqttd]}" -q -c "$dir/rumqttd.toml" >"$dir/out.log" 2>&1 &
        ;;
    rmqtt)
        "${BIN[rmqtt]}" >"$dir/out.log" 2>&1 &
        ;;
    esac
    BPID=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            sleep 0.5
            return 0
        fi
        kill -0 "$BPID" 2>/dev/null || break
        sleep 0.2
    done
    note "$broker did not start on port $port (see $dir)"
    stop_broker
    return 1
}

stop_broker() {
    [[ -z "$BPID" ]] && return 0
    kill "$BPID" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$BPID" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$BPID" 2>/dev/null || true
    wait "$BPID" 2>/dev/null || true
    BPID=""
    sleep 1 # let the kernel reap sockets before the next broker
}

# --- scenarios -------------------------------------------------------------
scenario_args() {
    case $1 in
    conn) echo "conn -n $CONNS --keepalive 60 --hold 8 --settle 3 --conns-per-source 10000" ;;
    fanin_qos0) echo "fanin --publishers $FANIN_PUBS --qos 0 --payload 64 --duration $DURATION --drain 10" ;;
    fanin_qos1) echo "fanin --publishers $FANIN_PUBS --qos 1 --payload 64 --window 64 --duration $DURATION --drain 10" ;;
    fanout) echo "fanout --subscribers $FANOUT_SUBS --qos 1 --payload 64 --window 16 --duration $DURATION --drain 15" ;;
    p2p) echo "p2p --pairs $PAIRS --qos 1 --payload 64 --rate $P2P_RATE --duration $DURATION --drain 10" ;;
    storm) echo "fleet -n $STORM_DEVICES --duration $STORM_SECS --storm-after $((STORM_SECS / 2)) --telemetry-interval 10 --keepalive 60 --command-rate 20 --conns-per-source 10000" ;;
    esac
}

run_case() {
    local broker=$1 case=$2 line
    # shellcheck disable=SC2046
    if line=$(timeout 300 "${BIN[myriad]:-$ROOT/target/release/myriad}" sim --quiet --label "$broker" \
        --broker "127.0.0.1:${PORT[$broker]}" --broker-pid "$BPID" --mqtt "$MQTT" \
        $(scenario_args "$case") | tail -n 1) && [[ -n "$line" ]]; then
        printf '%s\t%s\t%s\n' "$broker" "$case" "$line" >>"$RESULTS"
        printf '%s\n' "$line" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["case"]=sys.argv[1]; print(json.dumps(d))' "$case"
    else
        note "$broker/$case: sim failed or timed out"
    fi
}

# --- main ---------------------------------------------------------------------
started=$(date +%s)
install_peers
[[ -n "${BIN[myriad]:-}" ]] || { (cd "$ROOT" && cargo build --release -q -p myriad); BIN[myriad]=$ROOT/target/release/myriad; }
for case in $SCENARIOS; do
    for broker in $BROKERS; do
        [[ -n "${BIN[$broker]:-}" ]] || continue
        log "$broker: $case"
        if start_broker "$broker"; then
            run_case "$broker" "$case"
            stop_broker
        fi
    done
done

python3 - "$RESULTS" "$NOTES" "$RESULTS_MD" "$(( $(date +%s) - started ))" "$BROKERS" <<'PY'
import json, sys, os, platform, subprocess, datetime
results, notes, out_md, secs, brokers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5].split()
data = {}
for line in open(results):
    broker, case, js = line.rstrip("\n").split("\t", 2)
    data[(broker, case)] = json.loads(js)
present = [b for b in brokers if any(k[0] == b for k in data)]
rows = [
    ("conn", "connected / failed", lambda d: f"{d['connected']} / {d['failed']}"),
    ("conn", "broker bytes per idle conn (VmRSS)", lambda d: d.get("bytes_per_conn")),
    ("conn", "broker anon bytes per idle conn", lambda d: d.get("anon_bytes_per_conn")),
    ("conn", "connects/s", lambda d: round(d["connect_rate"])),
    ("fanin_qos0", "delivered msgs/s", lambda d: round(d["delivered_per_sec"])),
    ("fanin_qos0", "msgs per broker CPU s", lambda d: d.get("msgs_per_broker_cpu_sec") and round(d["msgs_per_broker_cpu_sec"])),
    ("fanin_qos0", "lost (QoS 0 drops)", lambda d: d["lost"]),
    ("fanin_qos1", "delivered msgs/s", lambda d: round(d["delivered_per_sec"])),
    ("fanin_qos1", "msgs per broker CPU s", lambda d: d.get("msgs_per_broker_cpu_sec") and round(d["msgs_per_broker_cpu_sec"])),
    ("fanin_qos1", "lost / dups", lambda d: f"{d['lost']} / {d['duplicates']}"),
    ("fanin_qos1", "p99 ms", lambda d: d["p99_ms"]),
    ("fanout", "delivered msgs/s", lambda d: round(d["delivered_per_sec"])),
    ("fanout", "msgs per broker CPU s", lambda d: d.get("msgs_per_broker_cpu_sec") and round(d["msgs_per_broker_cpu_sec"])),
    ("fanout", "lost / dups", lambda d: f"{d['lost']} / {d['duplicates']}"),
    ("p2p", "delivered msgs/s", lambda d: round(d["delivered_per_sec"])),
    ("p2p", "p50 / p99 / p99.9 ms", lambda d: f"{d['p50_ms']} / {d['p99_ms']} / {d['p999_ms']}"),
    ("p2p", "lost / dups", lambda d: f"{d['lost']} / {d['duplicates']}"),
    ("p2p", "msgs per broker CPU s", lambda d: d.get("msgs_per_broker_cpu_sec") and round(d["msgs_per_broker_cpu_sec"])),
    ("storm", "online before / at end", lambda d: f"{d['storm']['online_before']} / {d['online_at_end']}"),
    ("storm", "reconnect all (s)", lambda d: d["storm"]["reconnect_secs"]),
    ("storm", "broker peak / steady RSS", lambda d: d["storm"]["peak_over_steady"]),
]
def cell(fn, d):
    if d is None: return "-"
    try:
        v = fn(d)
    except Exception:
        return "?"
    return "-" if v is None else str(v)
lines = ["| scenario | metric | " + " | ".join(present) + " |", "|---|---|" + "---|" * len(present)]
for case, metric, fn in rows:
    if not any((b, case) in data for b in present): continue
    lines.append(f"| {case} | {metric} | " + " | ".join(cell(fn, data.get((b, case))) for b in present) + " |")
table = "\n".join(lines)
print(table)
note_lines = [l.strip() for l in open(notes) if l.strip()]
for l in note_lines: print(l)
print(f"total {secs} s", file=sys.stderr)
if out_md:
    def sh(cmd):
        try: return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception: return "?"
    mem = sh("free -g | awk '/Mem:/ {print $2}'")
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    doc = [
        "# Benchmark results",
        "",
        f"Latest run of `bench/compare.sh` ({datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {secs} s).",
        "",
        f"Machine: {sh('nproc')} cores ({cpu}), {mem} GiB RAM, Linux {platform.release()}; "
        f"open-file limit {sh('ulimit -n')} per process (sim and broker each); all traffic on loopback.",
        f"Myriad {sh('git -C ' + os.path.dirname(os.path.abspath(out_md)) + ' rev-parse --short HEAD')} (release build); "
        f"{sh('mosquitto -h 2>/dev/null | head -1') or 'mosquitto'}; brokers: {', '.join(present)}.",
        "",
        "MQTT 3.1.1 for every broker. Each broker is started fresh per scenario; the simulator shares the",
        "machine's cores with the broker, so absolute rates are bounded by the 2 cores; compare per broker-CPU-second.",
        "",
        table,
        "",
    ]
    if note_lines:
        doc += ["Notes:", ""] + [f"- {l}" for l in note_lines] + [""]
    doc += ["Raw JSON lines:", "", "```"] + [json.dumps(dict(data[k], case=k[1])) for k in sorted(data)] + ["```", ""]
    open(out_md, "w").write("\n".join(doc))
PY
rm -rf "$WORK"
