# Sourced by bench/*.sh: one scratch directory and the one broker process a
# script runs at a time, both cleaned up however the script ends.
#
#   bench_init NAME   WORK=$(mktemp -d /tmp/myriad-NAME.XXXXXX), BPID="",
#                     and an EXIT trap that stops the broker and removes WORK
#   stop_broker       SIGTERM to $BPID, up to STOP_WAIT s (default 5) to exit, then SIGKILL; BPID=""
#
# Only the PID the script started is signalled (never a name).

stop_broker() {
    [[ -z "${BPID:-}" ]] && return 0
    kill -TERM "$BPID" 2>/dev/null || true
    for _ in $(seq $((${STOP_WAIT:-5} * 10))); do
        kill -0 "$BPID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$BPID" 2>/dev/null || true
    wait "$BPID" 2>/dev/null || true
    BPID=""
}

bench_init() {
    WORK=$(mktemp -d "/tmp/myriad-$1.XXXXXX")
    BPID=""
    trap 'stop_broker; rm -rf "$WORK"' EXIT
}
