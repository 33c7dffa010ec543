#!/usr/bin/env bash
# OTA delta patches (issue 18): Myriad's differ and streaming container beside Debian's bsdiff
# (bspatch) and xdelta3 in the same run. One JSON line per image pair on stdout; progress on
# stderr. See bench/README.md ("OTA delta patches").
#
# Pairs:
#   repo-<example>   a binary built from this repo's own code at two commits: the example
#                    BIN_EXAMPLE of crate BIN_CRATE (default myriad-tsdb's `bench`) at HEAD and at
#                    OLD_REV, both stripped (as firmware ships). OLD_REV is checked out with
#                    `git worktree add` at OLD_TREE and built into the same target directory, so
#                    only the workspace crate recompiles.
#   libssl.so.3, libcrypto.so.3   Debian's libssl3 at OLD_DEB and NEW_DEB (`apt-get download`,
#                    `dpkg-deb -x`); when one is not in the archive, the oldest and newest
#                    versions `apt-cache madison libssl3` lists.
#
# Per pair: patch sizes (ours, bsdiff, xdelta3 -9), diff and apply seconds, our applier's heap
# peak (crates/myriad-ota/examples/delta_bench.rs: a counting allocator and glibc mallinfo2)
# and the max RSS (/usr/bin/time) of our apply, bspatch and xdelta3 -d (and of the `pair`
# process, whose peak is the differ's: both images, the suffix array, two encoders). Every
# applied image is compared with the new one (cmp).
#
#   bash bench/ota_delta.sh                    # ~1 min after the builds
#   PAIRS=debian bash bench/ota_delta.sh       # Debian pairs only (no repo builds)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PROFILE=${PROFILE:-ci}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_CRATE=${BIN_CRATE:-myriad-tsdb}
BIN_EXAMPLE=${BIN_EXAMPLE:-bench}
OLD_REV=${OLD_REV:-7062d60}
OLD_TREE=${OLD_TREE:-$ROOT/../delta-old}
OLD_DEB=${OLD_DEB:-3.0.17-1~deb12u2}
NEW_DEB=${NEW_DEB:-3.0.20-1~deb12u2}
PAIRS=${PAIRS:-"repo debian"}

log() { echo "ota_delta: $*" >&2; }

WORK=$(mktemp -d /tmp/myriad-ota-delta.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

need=()
command -v bsdiff >/dev/null || need+=(bsdiff)
command -v xdelta3 >/dev/null || need+=(xdelta3)
[[ -x /usr/bin/time ]] || need+=(time)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get install -y "${need[@]}" >&2
fi

log "building delta_bench ($PROFILE)"
cargo build --profile "$PROFILE" -p myriad-ota --example delta_bench >&2
BENCH=$TARGET/$PROFILE/examples/delta_bench

pairs=()

if [[ " $PAIRS " == *" repo "* ]]; then
    # Both trees build into one target directory, where cargo keys a workspace crate by its
    # path relative to the workspace, so the two trees share its fingerprint and cargo decides
    # freshness by source mtimes. Touch the tree being built so its sources are newest: the old
    # tree first, then this one's crate again (which also leaves this tree's build current).
    if [[ ! -d "$OLD_TREE" ]]; then
        log "git worktree add $OLD_TREE $OLD_REV"
        git worktree add --detach "$OLD_TREE" "$OLD_REV" >&2
    fi
    log "building $BIN_CRATE example $BIN_EXAMPLE at $OLD_REV ($OLD_TREE)"
    find "$OLD_TREE/crates/$BIN_CRATE" -type f -exec touch {} +
    (cd "$OLD_TREE" && CARGO_TARGET_DIR=$TARGET cargo build --profile "$PROFILE" -p "$BIN_CRATE" --example "$BIN_EXAMPLE" >&2)
    strip -o "$WORK/repo.old" "$TARGET/$PROFILE/examples/$BIN_EXAMPLE"
    log "building $BIN_CRATE example $BIN_EXAMPLE at HEAD ($(git rev-parse --short HEAD))"
    find "$ROOT/crates/$BIN_CRATE" -type f -exec touch {} +
    cargo build --profile "$PROFILE" -p "$BIN_CRATE" --example "$BIN_EXAMPLE" >&2
    strip -o "$WORK/repo.new" "$TARGET/$PROFILE/examples/$BIN_EXAMPLE"
    if cmp -s "$WORK/repo.old" "$WORK/repo.new"; then
        log "the two builds are identical: pick an OLD_REV that changed $BIN_CRATE"
        exit 1
    fi
    pairs+=("repo-$BIN_EXAMPLE:$WORK/repo.old:$WORK/repo.new")
fi

if [[ " $PAIRS " == *" debian "* ]]; then
    versions=$(apt-cache madison libssl3 | awk -F'|' '{gsub(/ /, "", $2); print $2}' | sort -uV)
    if ! grep -qxF "$OLD_DEB" <<<"$versions" || ! grep -qxF "$NEW_DEB" <<<"$versions"; then
        OLD_DEB=$(head -n1 <<<"$versions")
        NEW_DEB=$(tail -n1 <<<"$versions")
        log "pinned versions not in the archive; using $OLD_DEB and $NEW_DEB"
    fi
    if [[ -z "$OLD_DEB" || "$OLD_DEB" == "$NEW_DEB" ]]; then
        log "only one libssl3 version available ($NEW_DEB): no Debian pair"
    else
        for v in "$OLD_DEB" "$NEW_DEB"; do
            (cd "$WORK" && apt-get download "libssl3=$v" >&2)
            dpkg-deb -x "$WORK"/libssl3_"${v//:/%3a}"_*.deb "$WORK/deb-$v"
        done
        for lib in libssl.so.3 libcrypto.so.3; do
            pairs+=("$lib:$(echo "$WORK/deb-$OLD_DEB"/usr/lib/*/"$lib"):$(echo "$WORK/deb-$NEW_DEB"/usr/lib/*/"$lib")")
        done
    fi
fi

# timed cmd...: runs cmd under /usr/bin/time (stdout to $WORK/stdout), sets SECS and RSS_KB.
timed() {
    /usr/bin/time -f '%e %M' -o "$WORK/time" "$@" >"$WORK/stdout"
    read -r SECS RSS_KB <"$WORK/time"
}

for pair in "${pairs[@]}"; do
    IFS=: read -r name old new <<<"$pair"
    log "pair $name: $(stat -c %s "$old") -> $(stat -c %s "$new") bytes"
    timed "$BENCH" pair "$name" "$old" "$new" "$WORK/p.myr"
    ours=$(cat "$WORK/stdout")
    our_diff_rss=$RSS_KB
    timed "$BENCH" apply "$old" "$WORK/p.myr" "$WORK/out.myr"
    cmp "$new" "$WORK/out.myr"
    our_rss=$RSS_KB
    timed bsdiff "$old" "$new" "$WORK/p.bsdiff"
    bs_diff_secs=$SECS bs_diff_rss=$RSS_KB
    timed bspatch "$old" "$WORK/out.bsdiff" "$WORK/p.bsdiff"
    cmp "$new" "$WORK/out.bsdiff"
    bs_apply_secs=$SECS bs_apply_rss=$RSS_KB
    timed xdelta3 -e -9 -f -s "$old" "$new" "$WORK/p.xd3"
    xd_diff_secs=$SECS
    timed xdelta3 -d -f -s "$old" "$WORK/p.xd3" "$WORK/out.xd3"
    cmp "$new" "$WORK/out.xd3"
    xd_apply_secs=$SECS xd_apply_rss=$RSS_KB
    python3 - "$ours" <<PY
import json, sys
r = json.loads(sys.argv[1])
r.update({
    "diff_process_max_rss_kb": $our_diff_rss, "apply_max_rss_kb": $our_rss,
    "bsdiff_bytes": $(stat -c %s "$WORK/p.bsdiff"), "bsdiff_secs": $bs_diff_secs, "bsdiff_max_rss_kb": $bs_diff_rss,
    "bspatch_secs": $bs_apply_secs, "bspatch_max_rss_kb": $bs_apply_rss,
    "xdelta3_bytes": $(stat -c %s "$WORK/p.xd3"), "xdelta3_secs": $xd_diff_secs,
    "xdelta3_apply_secs": $xd_apply_secs, "xdelta3_apply_max_rss_kb": $xd_apply_rss,
})
r["patch_vs_bsdiff"] = round(r["patch_bytes"] / r["bsdiff_bytes"], 4)
r["targets_met"] = r["patch_bytes"] <= r["bsdiff_bytes"] and r["apply_malloc_peak"] <= 1 << 20
print(json.dumps(r))
PY
done
