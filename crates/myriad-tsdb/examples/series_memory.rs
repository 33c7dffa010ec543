//! Memory of many active series: prints one JSON line.
//!
//! Creates `DEVICES` devices x 10 metrics (default 100,000 x 10 = 1M series), each with a
//! `group` label, and appends `POINTS` points (default 10, 10 s apart, 0.1-quantised random
//! walk) to each, then reports the process's resident memory (VmRSS from /proc/self/status)
//! before and after. Run: `cargo run --profile ci -p myriad-tsdb --example series_memory`.

use myriad_tsdb::{Engine, HeadConfig, IndexLimits, Point, SeriesKey, Value};

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let devices = env("DEVICES", 100_000);
    let points = env("POINTS", 10);
    let before = rss_bytes();
    let mut e = Engine::new(IndexLimits::default(), HeadConfig::default());
    let mut wal = Vec::new();
    let mut ids = Vec::with_capacity(devices * 10);
    for d in 0..devices {
        for m in 0..10 {
            let key = SeriesKey::new(format!("dev{d:06}"), format!("metric{m}"))
                .with_label("group", format!("g{}", d % 100));
            ids.push(e.series(&key, &mut wal).expect("series"));
            wal.clear();
        }
    }
    let after_index = rss_bytes();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut batch = Vec::with_capacity(ids.len());
    for p in 0..points {
        batch.clear();
        for (i, &id) in ids.iter().enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = 200 + (i % 50) as i64 + (x % 3) as i64 - 1;
            batch.push((
                id,
                Point {
                    ts: 1_764_806_400_000 + p as i64 * 10_000,
                    value: Value::F64(v as f64 / 10.0),
                },
            ));
        }
        wal.clear();
        e.append(&batch, &mut wal).expect("append");
    }
    drop(batch);
    let after = rss_bytes();
    let series = ids.len();
    println!(
        "{{\"bench\":\"tsdb_series_memory\",\"series\":{series},\"points_per_series\":{points},\
\"rss_bytes\":{after},\"rss_growth_bytes\":{},\"index_bytes_per_series\":{:.0},\
\"total_bytes_per_series\":{:.0},\"head_chunk_bytes\":{}}}",
        after - before,
        (after_index - before) as f64 / series as f64,
        (after - before) as f64 / series as f64,
        e.head().chunk_bytes()
    );
}
