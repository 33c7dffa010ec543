//! Block lifecycle benchmark: prints one JSON line.
//!
//! `DEVICES` devices (default 1,000) x four metrics at 10 s for `DAYS` days (default 2) go
//! through a [`FileDb`] in a temporary directory as the server drives it: a seal every 10
//! minutes of data, then the compactions due (level merges; each day merged whole once an hour
//! past its end), with the clock the data's own. Reports:
//!
//! * seal CPU per seal in the first and the last hour of a day (flat when a seal writes only
//!   what arrived since the last one), and what sealing the whole day at once costs
//!   (`whole_day_reencode_cpu_ms`: raw columns, as a seal now writes them; before block
//!   generations every seal re-encoded the day so far, rollup tables included);
//! * compaction CPU and bytes written (write amplification: bytes written by seals and
//!   compactions over the bytes left on disk), files per day;
//! * memory after reopening the store and reading every series of every day: the process's
//!   anonymous RSS (heap) against the block bytes on disk (before, all blocks were decoded into
//!   the heap), and file-backed RSS (page cache mapped);
//! * query: one device-day raw from the compacted blocks.
//!
//! Run: `cargo run --profile release -p myriad-tsdb --example blocks`.

use std::time::Instant;

use myriad_tsdb::db::FULL_LEVEL;
use myriad_tsdb::{DbConfig, FileDb, Point, SeriesId, SeriesKey, Value};

const DAY: i64 = 86_400_000;
const STEP: i64 = 10_000;
const SEAL_EVERY: i64 = 600_000;

fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// `RssAnon` and `RssFile` of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("RssAnon:"), field("RssFile:"))
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn dir_bytes(dir: &std::path::Path) -> (u64, usize) {
    let mut total = (0, 0);
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        if e.file_name().to_string_lossy().ends_with(".blk") {
            total.0 += e.metadata().map(|m| m.len()).unwrap_or(0);
            total.1 += 1;
        }
    }
    total
}

fn main() {
    let devices = env("DEVICES", 1000);
    let days = env("DAYS", 2) as i64;
    let tmp = tempfile::tempdir().expect("tempdir");
    let start = 20_425 * DAY;
    let (mut db, _) = FileDb::open(tmp.path(), DbConfig::default(), false).expect("open");
    let mut ids: Vec<[SeriesId; 4]> = Vec::with_capacity(devices);
    for d in 0..devices {
        let dev = format!("dev-{d:06}");
        let mut id = |m: &str| db.series(&SeriesKey::new(dev.as_str(), m)).expect("series");
        ids.push([id("temp"), id("hum"), id("batt"), id("events")]);
    }
    // Quantised random walks, as in the engine bench.
    let mut state: Vec<[i64; 4]> = (0..devices)
        .map(|d| [200 + d as i64 % 50, 500, 370, 0])
        .collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut seal_ns: Vec<(i64, u64)> = Vec::new();
    let (mut compact_ns, mut compact_bytes, mut compactions) = (0u64, 0u64, 0usize);
    let mut seal_bytes = 0u64;
    let mut points = 0u64;
    let end = start + days * DAY;
    let mut ts = start;
    let mut batch = Vec::with_capacity(devices * 4);
    while ts < end {
        batch.clear();
        for (d, s) in state.iter_mut().enumerate() {
            s[0] += (next() % 3) as i64 - 1;
            s[1] = (s[1] + (next() % 3) as i64 - 1).clamp(0, 1000);
            if next() % 400 == 0 {
                s[2] -= 1;
            }
            if next() % 20 == 0 {
                s[3] += 1 + (next() % 3) as i64;
            }
            let v = [
                Value::F64(s[0] as f64 / 10.0),
                Value::F64(s[1] as f64 / 10.0),
                Value::F64(s[2] as f64 / 100.0),
                Value::I64(s[3]),
            ];
            for m in 0..4 {
                batch.push((ids[d][m], Point { ts, value: v[m] }));
            }
        }
        db.append_unsynced(&batch).expect("append");
        points += batch.len() as u64;
        ts += STEP;
        if (ts - start) % SEAL_EVERY == 0 {
            let before = dir_bytes(tmp.path()).0;
            let c0 = cpu_ns();
            db.seal().expect("seal");
            seal_ns.push((ts, cpu_ns() - c0));
            seal_bytes += dir_bytes(tmp.path()).0.saturating_sub(before);
            let c0 = cpu_ns();
            while let Some((_, r)) = db.compact_step(ts).expect("compact") {
                compact_bytes += r.bytes;
                compactions += 1;
            }
            compact_ns += cpu_ns() - c0;
        }
    }
    // The last day turns cold an hour after its end.
    let c0 = cpu_ns();
    while let Some((_, r)) = db.compact_step(end + 3_600_000).expect("compact") {
        compact_bytes += r.bytes;
        compactions += 1;
    }
    compact_ns += cpu_ns() - c0;
    let per_seal_ms = |hour_of_day: std::ops::Range<i64>| {
        let v: Vec<u64> = seal_ns
            .iter()
            .filter(|(t, _)| hour_of_day.contains(&((t - start - 1).rem_euclid(DAY) / 3_600_000)))
            .map(|(_, ns)| *ns)
            .collect();
        v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1e6
    };
    let (first_hour, last_hour) = (per_seal_ms(0..1), per_seal_ms(23..24));

    // What a seal at the end of a day cost before generations: re-encoding the whole day. The
    // cold merge of one day of level 0 blocks is that work.
    let (disk_bytes, files) = dir_bytes(tmp.path());
    drop(db);

    // Memory after reopening and reading every series of every day.
    let (anon0, _) = rss();
    let (db, _) = FileDb::open(tmp.path(), DbConfig::default(), false).expect("reopen");
    let mut read = 0usize;
    for d in &ids {
        for id in d {
            read += db.db().raw(*id, start, end).expect("raw").len();
        }
    }
    assert_eq!(read as u64, points);
    let (anon1, file1) = rss();
    let q = 200.min(devices);
    let t = Instant::now();
    for d in ids.iter().take(q) {
        assert!(
            !db.db()
                .raw(d[0], start, start + DAY)
                .expect("raw")
                .is_empty()
        );
    }
    let day_raw_us = t.elapsed().as_secs_f64() * 1e6 / q as f64;
    assert!(
        db.db()
            .blocks()
            .values()
            .all(|v| v.len() == 1 && v[0].level == FULL_LEVEL)
    );
    drop(db);

    // The old seal's cost: one day's points re-encoded into one block (a full merge of
    // 144 single-seal blocks), measured on a fresh copy of the first day.
    let tmp2 = tempfile::tempdir().expect("tempdir");
    let (mut db2, _) = FileDb::open(tmp2.path(), DbConfig::default(), false).expect("open");
    for d in 0..devices {
        let dev = format!("dev-{d:06}");
        for m in ["temp", "hum", "batt", "events"] {
            db2.series(&SeriesKey::new(dev.as_str(), m))
                .expect("series");
        }
    }
    let (db1, _) = FileDb::open(tmp.path(), DbConfig::default(), false).expect("reopen");
    let mut day = Vec::new();
    for d in &ids {
        for id in d {
            for p in db1.db().raw(*id, start, start + DAY).expect("raw") {
                day.push((*id, p));
            }
        }
    }
    day.sort_by_key(|(_, p)| p.ts);
    for chunk in day.chunks(1_000_000) {
        db2.append_unsynced(chunk).expect("append");
    }
    let c0 = cpu_ns();
    db2.seal().expect("seal");
    let whole_day_ms = (cpu_ns() - c0) as f64 / 1e6;

    println!(
        "{{\"bench\":\"telemetry_blocks\",\"devices\":{devices},\"days\":{days},\"points\":{points},\
\"seals\":{},\"seal_cpu_ms_first_hour\":{first_hour:.2},\"seal_cpu_ms_last_hour\":{last_hour:.2},\
\"whole_day_reencode_cpu_ms\":{whole_day_ms:.1},\"compactions\":{compactions},\
\"compaction_cpu_s\":{:.2},\"write_amplification\":{:.2},\"block_files\":{files},\
\"disk_bytes\":{disk_bytes},\"bytes_per_point\":{:.3},\"rss_anon_before_open\":{anon0},\
\"rss_anon_after_reading_all\":{anon1},\"rss_file_after_reading_all\":{file1},\
\"device_day_raw_us\":{day_raw_us:.0}}}",
        seal_ns.len(),
        compact_ns as f64 / 1e9,
        (seal_bytes + compact_bytes) as f64 / disk_bytes as f64,
        disk_bytes as f64 / points as f64,
    );
}
