#!/usr/bin/env bash
# Run the Eclipse Paho interoperability client tests (client_test.py for MQTT 3.1.1,
# client_test5.py for MQTT 5.0) against a freshly built Myriad broker.
#
# usage: scripts/paho-interop.sh /path/to/paho.mqtt.testing
#
# The Paho suite is NOT part of this repository; point the script at a checkout
# (it needs <path>/interoperability/client_test.py, client_test5.py and mqtt/).
#
# Environment knobs:
#   PAHO_TARGET=host:port   do not build/start Myriad; test an already running broker
#                           (used to sanity-check the suite against Mosquitto)
#   PAHO_SUITES="v311 v5"   which suites to run (default both)
#   PAHO_TESTS="test_basic test_keepalive"   only run these test methods
#   PAHO_TEST_TIMEOUT=120   seconds allowed per test case (some cases loop forever
#                           when the broker never answers)
#   MYRIAD_BIN=path         use this binary instead of building target/release/myriad
#   PAHO_LOG_DIR=dir        keep logs here (default: a temp dir that is printed)
#
# Each test method runs in its own python process (so a hanging case cannot block
# the rest, and every case starts from the suite's own cleanup), with a per-case
# timeout. Exit status is non-zero when any case failed or timed out.
set -uo pipefail

usage() { echo "usage: $0 /path/to/paho.mqtt.testing" >&2; exit 2; }
[ $# -eq 1 ] || usage
PAHO_DIR=$(cd "$1" 2>/dev/null && pwd) || { echo "no such directory: $1" >&2; exit 2; }
INTEROP="$PAHO_DIR/interoperability"
for f in client_test.py client_test5.py mqtt; do
  [ -e "$INTEROP/$f" ] || { echo "missing $INTEROP/$f (is this a paho.mqtt.testing checkout?)" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUITES=${PAHO_SUITES:-"v311 v5"}
TEST_TIMEOUT=${PAHO_TEST_TIMEOUT:-120}
LOG_DIR=${PAHO_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/paho-interop.XXXXXX")}
mkdir -p "$LOG_DIR"
SERVER_PID=""

cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  SERVER_PID=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${PAHO_TARGET:-}" ]; then
  HOST=${PAHO_TARGET%:*}
  PORT=${PAHO_TARGET##*:}
  echo "== using already running broker at $HOST:$PORT"
else
  if [ -n "${MYRIAD_BIN:-}" ]; then
    BIN=$MYRIAD_BIN
  else
    echo "== building myriad (release)"
    (cd "$REPO" && cargo build --release -p myriad) || { echo "build failed" >&2; exit 1; }
    BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/myriad"
  fi
  [ -x "$BIN" ] || { echo "no executable at $BIN" >&2; exit 1; }

  CONFIG="$LOG_DIR/myriad-paho.toml"
  cat > "$CONFIG" <<'EOF'
# Written by scripts/paho-interop.sh: what the Paho client tests expect of a server.
[mqtt]
listen = "127.0.0.1:0"
# client_test5.py test_server_keep_alive asks for 120 s and expects Server Keep Alive = 60
max_keep_alive_secs = 60
# test_subscribe_failure expects SUBACK failure (0x80) for this filter
deny_subscribe = ["test/nosubscribe"]
# test_flow_control2 sends Receive Maximum + 1 unacknowledged QoS 2 publishes and
# waits for DISCONNECT 0x93; a small maximum keeps that quick and avoids a socket
# buffer deadlock (the client does not read PUBRECs while it floods).
receive_maximum = 20
EOF

  SERVER_LOG="$LOG_DIR/myriad.log"
  SERVE_ARGS=(serve --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --config "$CONFIG")
  # a fresh store per run (newer binaries persist sessions/retained messages in a
  # data directory, ./myriad-data by default)
  if "$BIN" serve --help 2>/dev/null | grep -q -- '--data-dir'; then
    rm -rf "$LOG_DIR/data"
    SERVE_ARGS+=(--data-dir "$LOG_DIR/data")
  fi
  echo "== starting $BIN ${SERVE_ARGS[*]}"
  "$BIN" "${SERVE_ARGS[@]}" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  HOST=127.0.0.1
  PORT=""
  for _ in $(seq 1 300); do
    line=$(grep -m1 -oE 'MQTT listening on [0-9.]+:[0-9]+' "$SERVER_LOG" 2>/dev/null || true)
    if [ -n "$line" ]; then PORT=${line##*:}; break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.2
  done
  if [ -z "$PORT" ]; then
    echo "myriad did not report 'MQTT listening on ...' (pid $SERVER_PID); log:" >&2
    sed -n '1,40p' "$SERVER_LOG" >&2
    exit 1
  fi
  echo "== myriad pid $SERVER_PID listening on $HOST:$PORT"
fi

# Runs one Paho test file through unittest with our own argv: the suite's __main__
# parses -h/-p itself but then hands sys.argv to unittest.main(), which rejects them,
# so unittest.main is wrapped to receive only the test selection.
# usage: python3 - SCRIPT HOST PORT list|run [TestClass.test_name]
read -r -d '' RUNNER <<'PY'
import runpy, sys, unittest
script, host, port, mode = sys.argv[1:5]
selection = sys.argv[5:]
if mode == "list":
    # import the module without running its __main__ block and list test methods
    ns = runpy.run_path(script, run_name="paho_listing")
    loader = unittest.TestLoader()
    for obj in ns.values():
        if isinstance(obj, type) and issubclass(obj, unittest.TestCase) and obj is not unittest.TestCase:
            for name in loader.getTestCaseNames(obj):
                print("%s.%s" % (obj.__name__, name))
    sys.exit(0)
_orig_main = unittest.main
def _main(*args, **kwargs):
    kwargs["argv"] = [script, "-v"] + selection
    return _orig_main(*args, **kwargs)
unittest.main = _main
# note: never pass "-h": the suite tests `o in ("--help")`, a substring test that
# matches "-h", and then exits 0 after printing its usage text
sys.argv = [script, "--hostname", host, "--port", port]
runpy.run_path(script, run_name="__main__")
PY

# One line explaining a failed case: the error unittest reported for the case, and,
# when different, the last error printed before that report (the suite often catches the
# real error, prints its traceback and then fails with a bare 'False != True'; the
# 5.0 client's receiver thread also prints errors, e.g. on SUBACK codes it rejects).
failure_cause() {
  local log=$1 final first
  final=$(awk '/^(FAIL|ERROR): /{on=1} /^Ran [0-9]+ test/{on=0} on && /^[A-Za-z_.]*(Error|Exception|timeout)(:|$)/{last=$0} END{print last}' "$log")
  first=$(awk '/^(FAIL|ERROR): /{exit} /^[A-Za-z_.]*(Error|Exception|timeout)(:|$)/{last=$0} END{print last}' "$log")
  if [ -n "$first" ] && [ "$first" != "$final" ]; then
    printf '%s  [earlier: %s]' "${final:0:220}" "${first:0:160}"
  else
    printf '%s' "${final:0:220}"
  fi
}

TOTAL_PASS=0
TOTAL_FAIL=0
SUMMARY=""

run_suite() {
  local label=$1 script=$2
  local tests
  tests=$(cd "$INTEROP" && python3 - "$script" "$HOST" "$PORT" list <<<"$RUNNER" 2>"$LOG_DIR/$label.list.err")
  if [ -z "$tests" ]; then
    echo "!! could not list tests in $script:"; cat "$LOG_DIR/$label.list.err"
    TOTAL_FAIL=$((TOTAL_FAIL + 1))
    SUMMARY+="FAIL  $label  (could not load $script)"$'\n'
    return
  fi
  echo "== $label: $script ($(echo "$tests" | wc -l) cases, ${TEST_TIMEOUT}s timeout each)"
  local t name log rc status cause
  for t in $tests; do
    name=${t#*.}
    if [ -n "${PAHO_TESTS:-}" ] && ! [[ " $PAHO_TESTS " == *" $name "* ]]; then continue; fi
    log="$LOG_DIR/$label.$name.log"
    local start=$SECONDS
    (cd "$INTEROP" && timeout -k 5 "$TEST_TIMEOUT" python3 - "$script" "$HOST" "$PORT" run "$t" <<<"$RUNNER") >"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && ! grep -qE '^Ran [1-9][0-9]* tests?' "$log"; then
      rc=1  # exited 0 without running the case: count it as a failure
    fi
    if [ $rc -eq 0 ]; then
      status=PASS; cause=""
      TOTAL_PASS=$((TOTAL_PASS + 1))
    else
      TOTAL_FAIL=$((TOTAL_FAIL + 1))
      if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        status=FAIL; cause="timed out after ${TEST_TIMEOUT}s"
      else
        status=FAIL
        cause=$(failure_cause "$log")
        [ -n "$cause" ] || cause="exit $rc"
      fi
      if [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
        cause="$cause [myriad is no longer running]"
      fi
    fi
    printf '%-4s  %-5s %-32s %3ss  %s\n' "$status" "$label" "$name" "$((SECONDS - start))" "$cause"
    SUMMARY+=$(printf '%-4s  %-5s %-32s %s' "$status" "$label" "$name" "$cause")$'\n'
  done
}

for s in $SUITES; do
  case $s in
    v311|3|311) run_suite v311 client_test.py ;;
    v5|5) run_suite v5 client_test5.py ;;
    *) echo "unknown suite '$s' (use v311 and/or v5)" >&2; exit 2 ;;
  esac
done

echo
echo "================ Paho interoperability summary ================"
printf '%s' "$SUMMARY"
echo "logs: $LOG_DIR"
echo "$TOTAL_PASS passed, $TOTAL_FAIL failed"
[ "$TOTAL_FAIL" -eq 0 ]
