#!/usr/bin/env bash
# Runs the attack benchmarks in bench/attacks/ (issue 13: what one hostile or
# stalled client can make the broker hold, and whom it can slow) against one
# build, or side by side against a baseline build, and prints one JSON line per
# (build, attack, scenario) plus a Markdown table.
#
#   bash bench/attacks.sh                       # every attack, target/release/myriad
#   bash bench/attacks.sh topics_memory         # only bench/attacks/topics_memory.py
#   BASE_BIN=/path/to/old/myriad bash bench/attacks.sh
#                                               # ... the baseline first, same run
#   RESULTS_MD=/tmp/attacks.md bash bench/attacks.sh   # also write the table there
#
# Each attack script starts its own broker on a free loopback port with a
# temporary config and data dir, reads the broker's RSS/CPU from /proc, stops
# it by PID and prints JSON lines on stdout (see each script's docstring for
# what it measures and its bound). A script that fails or prints nothing is
# reported as such; the runner goes on with the next one and exits non-zero
# at the end. Every script is bounded by `timeout` (ATTACK_TIMEOUT, 900 s).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [ -x .venv/bin/python ]; then PYTHON=${PYTHON:-.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi
BIN=${MYRIAD_BIN:-$ROOT/target/release/myriad}
BASE_BIN=${BASE_BIN:-}
ATTACK_TIMEOUT=${ATTACK_TIMEOUT:-900}
RESULTS_MD=${RESULTS_MD:-}

if [ $# -gt 0 ]; then
  scripts=()
  for name in "$@"; do scripts+=("bench/attacks/${name%.py}.py"); done
else
  mapfile -t scripts < <(ls bench/attacks/[!_]*.py | sort)
fi

if [ ! -x "$BIN" ]; then
  echo "== building myriad (release)" >&2
  cargo build --release -p myriad >&2 || exit 1
fi

out=$(mktemp /tmp/myriad-attacks.XXXXXX)
trap 'rm -f "$out"' EXIT
failed=0

run_build() {
  local label=$1 bin=$2
  for script in "${scripts[@]}"; do
    local name
    name=$(basename "$script" .py)
    echo "== $label: $name" >&2
    local lines
    if ! lines=$(MYRIAD_BIN=$bin timeout "$ATTACK_TIMEOUT" "$PYTHON" "$script"); then
      # A baseline is expected to fail the bounds; only this build counts.
      echo "== $label: $name exited non-zero (a bound missed, or an error above)" >&2
      [ "$label" = this ] && failed=1
    fi
    if [ -z "$lines" ]; then
      lines='{"error": "no output"}'
    fi
    # Tag each JSON line with the build and the attack; keep non-JSON lines on stderr.
    LABEL=$label NAME=$name "$PYTHON" -c '
import json, os, sys
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        record = json.loads(line)
    except ValueError:
        print(line, file=sys.stderr)
        continue
    if not isinstance(record, dict):
        record = {"value": record}
    print(json.dumps({"build": os.environ["LABEL"], "attack": os.environ["NAME"], **record}))
' <<<"$lines" | tee -a "$out"
  done
}

if [ -n "$BASE_BIN" ]; then
  run_build base "$BASE_BIN"
fi
run_build this "$BIN"

# Markdown table: one row per (attack, scenario), builds side by side.
"$PYTHON" - "$out" "$RESULTS_MD" <<'EOF'
import json, sys
path, md_path = sys.argv[1], sys.argv[2]
rows, builds = {}, []
for line in open(path):
    r = json.loads(line)
    build = r.pop("build")
    if build not in builds:
        builds.append(build)
    attack = r.pop("attack")
    scenario = r.pop("name", None) or r.pop("scenario", None) or r.pop("case", "")
    for noise in ("bench", "binary"):
        r.pop(noise, None)
    rows.setdefault((attack, scenario), {})[build] = r

def brief(r):
    if r is None:
        return "-"
    keep = []
    for k, v in r.items():
        if isinstance(v, (dict, list)):
            continue
        if isinstance(v, float):
            v = round(v, 2)
        keep.append(f"{k}={v}")
    return ", ".join(keep)

lines = ["| attack | scenario | " + " | ".join(builds) + " |",
         "|---|---|" + "---|" * len(builds)]
for (attack, scenario), by_build in rows.items():
    lines.append(f"| {attack} | {scenario} | " + " | ".join(brief(by_build.get(b)) for b in builds) + " |")
table = "\n".join(lines)
print(table)
if md_path:
    with open(md_path, "w") as f:
        f.write(table + "\n")
EOF

exit $failed
