//! Storage benchmark: prints one JSON line.
//!
//! Data: `DEVICES` devices x one day at 10 s (exact 10 s timestamps), four metrics each:
//! temperature (0.1 °C random walk), humidity (0.1 % random walk), battery (0.01 V, slowly
//! falling) and an event counter (integer, increments at random). Measures bytes per point for the
//! Gorilla head chunks and for the sealed pco blocks (the day merged with its rollup tables, as
//! the store keeps it), ingest points per CPU-second (batches of one
//! timestamp for every series, WAL record encoded per batch), and query times.
//!
//! CPU time is this thread's own (from /proc/thread-self/schedstat), so other load on the machine
//! does not count against it. Run: `cargo run --profile release -p myriad-tsdb --example bench`
//! (env `DEVICES`, default 1000).

use std::time::Instant;

use myriad_tsdb::{Agg, Db, DbConfig, HeadConfig, IndexLimits, Point, SeriesId, SeriesKey, Value};

const DAY: i64 = 86_400_000;
const STEP: i64 = 10_000;

/// This thread's CPU time in ns.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Device {
    temp: i64,
    hum: i64,
    batt: i64,
    events: i64,
    ids: [SeriesId; 4],
}

fn main() {
    let devices: usize = std::env::var("DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let steps = (DAY / STEP) as usize;
    let start = 20_425 * DAY;
    let mut db = Db::new(DbConfig {
        index: IndexLimits::default(),
        head: HeadConfig::default(),
        partition_ms: DAY,
        ..DbConfig::default()
    })
    .expect("config");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut wal = Vec::new();
    let mut devs: Vec<Device> = (0..devices)
        .map(|d| {
            let mut id = |m: &str| {
                db.engine_mut()
                    .series(
                        &SeriesKey::new(format!("dev{d:05}"), m)
                            .with_label("group", format!("g{}", d % 10)),
                        &mut wal,
                    )
                    .expect("series")
            };
            let ids = [
                id("temperature"),
                id("humidity"),
                id("battery"),
                id("events"),
            ];
            Device {
                temp: 180 + rng.below(80) as i64,
                hum: 400 + rng.below(200) as i64,
                batt: 400 + rng.below(20) as i64,
                events: 0,
                ids,
            }
        })
        .collect();

    // Batches are generated an hour (360 batches) at a time outside the timed interval; only
    // the `append` calls of each hour are timed.
    let mut points = 0usize;
    let (mut ingest_cpu_ns, mut ingest_wall) = (0u64, 0f64);
    let mut wal_bytes = 0usize;
    for hour in 0..steps / 360 {
        let mut batches = Vec::with_capacity(360);
        for s in hour * 360..(hour + 1) * 360 {
            let ts = start + s as i64 * STEP;
            let mut batch = Vec::with_capacity(devices * 4);
            for d in &mut devs {
                d.temp += rng.below(3) as i64 - 1;
                d.hum = (d.hum + rng.below(3) as i64 - 1).clamp(0, 1000);
                if rng.below(400) == 0 {
                    d.batt -= 1;
                }
                if rng.below(20) == 0 {
                    d.events += 1 + rng.below(3) as i64;
                }
                batch.push((
                    d.ids[0],
                    Point {
                        ts,
                        value: Value::F64(d.temp as f64 / 10.0),
                    },
                ));
                batch.push((
                    d.ids[1],
                    Point {
                        ts,
                        value: Value::F64(d.hum as f64 / 10.0),
                    },
                ));
                batch.push((
                    d.ids[2],
                    Point {
                        ts,
                        value: Value::F64(d.batt as f64 / 100.0),
                    },
                ));
                batch.push((
                    d.ids[3],
                    Point {
                        ts,
                        value: Value::I64(d.events),
                    },
                ));
            }
            points += batch.len();
            batches.push(batch);
        }
        let (c0, w0) = (cpu_ns(), Instant::now());
        for b in &batches {
            wal.clear();
            let r = db.engine_mut().append(b, &mut wal).expect("append");
            assert!(r.refused.is_empty());
            wal_bytes += wal.len();
        }
        ingest_wall += w0.elapsed().as_secs_f64();
        ingest_cpu_ns += cpu_ns() - c0;
    }
    let ingest_cpu = ingest_cpu_ns as f64 / 1e9;

    let gorilla_bytes = db.engine().head().chunk_bytes();

    let (c0, w0) = (cpu_ns(), Instant::now());
    let changed = db.seal().expect("seal");
    let (seal_cpu, seal_wall) = ((cpu_ns() - c0) as f64 / 1e9, w0.elapsed().as_secs_f64());
    assert_eq!(changed.len(), 1);
    // The day merged once it is cold: the block the store keeps, with its rollup tables (a
    // seal writes raw columns only).
    let plan = myriad_tsdb::db::CompactionPlan {
        partition: start,
        inputs: db.blocks()[&start].iter().map(|b| b.generation).collect(),
        level: myriad_tsdb::db::FULL_LEVEL,
        retain_at: None,
    };
    db.compact_in_memory(&plan).expect("merge");
    let block = &db.blocks()[&start][0];
    assert_eq!(block.points().expect("index"), points);
    let (raw_bytes, rollup_bytes) = block.column_bytes().expect("columns");
    let file_bytes = block.len();

    // Queries: temperature of one device for the day, raw and as 1-minute averages.
    let q = 200.min(devices);
    // Wall-clock p50 / p99 per query, and the mean CPU time per query over all of them.
    let time = |f: &mut dyn FnMut(usize) -> usize| {
        let c0 = cpu_ns();
        let mut us: Vec<f64> = (0..q)
            .map(|i| {
                let t = Instant::now();
                let n = f(i);
                assert!(n > 0);
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        let cpu_mean = (cpu_ns() - c0) as f64 / 1e3 / q as f64;
        us.sort_by(f64::total_cmp);
        (us[us.len() / 2], us[us.len() * 99 / 100], cpu_mean)
    };
    let devs_ref = &devs;
    let dbr = &db;
    let raw = time(&mut |i| {
        dbr.raw(devs_ref[i].ids[0], start, start + DAY)
            .expect("raw")
            .len()
    });
    let avg = time(&mut |i| {
        dbr.aggregate(devs_ref[i].ids[0], start, start + DAY, 60_000, Agg::Avg)
            .expect("agg")
            .len()
    });
    let t = Instant::now();
    let latest = devs
        .iter()
        .filter(|d| matches!(db.latest(d.ids[0]), Ok(Some(_))))
        .count();
    let latest_us = t.elapsed().as_secs_f64() * 1e6;
    assert_eq!(latest, devices);

    println!(
        "{{\"bench\":\"tsdb_engine\",\"devices\":{devices},\"series\":{},\"points\":{points},\
\"gorilla_bytes_per_point\":{:.3},\"pco_raw_bytes_per_point\":{:.3},\"rollup_bytes_per_point\":{:.3},\
\"block_file_bytes_per_point\":{:.3},\"wal_bytes_per_point\":{:.2},\
\"ingest_points_per_cpu_s\":{:.0},\"ingest_cpu_s\":{:.3},\"ingest_wall_s\":{:.3},\
\"seal_points_per_cpu_s\":{:.0},\"seal_wall_s\":{:.3},\
\"query_raw_day_us_p50\":{:.1},\"query_raw_day_us_p99\":{:.1},\"query_raw_day_cpu_us_mean\":{:.1},\
\"query_avg_1m_day_us_p50\":{:.1},\"query_avg_1m_day_us_p99\":{:.1},\"query_avg_1m_day_cpu_us_mean\":{:.1},\"latest_all_devices_us\":{:.1}}}",
        db.engine().index().len(),
        gorilla_bytes as f64 / points as f64,
        raw_bytes as f64 / points as f64,
        rollup_bytes as f64 / points as f64,
        file_bytes as f64 / points as f64,
        wal_bytes as f64 / points as f64,
        points as f64 / ingest_cpu,
        ingest_cpu,
        ingest_wall,
        points as f64 / seal_cpu,
        seal_wall,
        raw.0,
        raw.1,
        raw.2,
        avg.0,
        avg.1,
        avg.2,
        latest_us
    );
}
