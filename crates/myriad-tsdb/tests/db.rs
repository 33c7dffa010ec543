//! Sealed blocks (pco columns, rollups), queries over head + blocks, retention.

use std::collections::BTreeMap;
use std::sync::Arc;

use myriad_tsdb::block::{FOOTER_LEN, HOUR_MS, MINUTE_MS};
use myriad_tsdb::db::BlockKey;
use myriad_tsdb::db::MAX_BUCKETS;
use myriad_tsdb::retention::RetentionPolicy;
use myriad_tsdb::{
    Agg, BlockError, Db, DbConfig, DbError, HeadConfig, IndexLimits, Point, SealedBlock, SeriesId,
    SeriesKey, Value,
};
use proptest::prelude::*;

const H: i64 = 3_600_000;

fn db() -> Db {
    Db::new(DbConfig {
        index: IndexLimits::default(),
        head: HeadConfig {
            ooo_window_ms: 10 * H,
            max_ooo_points: 100_000,
        },
        partition_ms: H,
        ..DbConfig::default()
    })
    .expect("config")
}

/// Applies a policy keeping raw points 1 ms and rollups forever at `cutoff + 1`: partitions
/// that end at or before `cutoff` lose their raw points. Returns how many were rewritten.
fn drop_raw_before(d: &mut Db, cutoff: i64) -> usize {
    d.set_retention(RetentionPolicy::new(vec![], 1, i64::MAX).expect("policy"));
    d.apply_retention(cutoff.saturating_add(1))
        .expect("retention")
        .1
}

/// The partitions of sealed block keys.
fn parts(keys: Vec<BlockKey>) -> Vec<i64> {
    keys.into_iter().map(|k| k.partition).collect()
}

fn series(db: &mut Db, device: &str, metric: &str) -> SeriesId {
    db.engine_mut()
        .series(&SeriesKey::new(device, metric), &mut Vec::new())
        .expect("series")
}

fn write(db: &mut Db, id: SeriesId, pts: &[(i64, Value)]) {
    let batch: Vec<_> = pts
        .iter()
        .map(|&(ts, value)| (id, Point { ts, value }))
        .collect();
    let r = db
        .engine_mut()
        .append(&batch, &mut Vec::new())
        .expect("append");
    assert!(r.refused.is_empty(), "{:?}", r.refused);
}

fn f(v: f64) -> Value {
    Value::F64(v)
}

#[test]
fn seal_splits_partitions_and_round_trips() {
    let mut d = db();
    let t = series(&mut d, "dev1", "temp");
    let c = series(&mut d, "dev1", "events");
    let b = series(&mut d, "dev1", "door");
    let pts: Vec<(i64, Value)> = (0..720)
        .map(|i| (i * 10_000, f(20.0 + (i % 7) as f64 / 10.0)))
        .collect();
    write(&mut d, t, &pts);
    write(
        &mut d,
        c,
        &(0..720)
            .map(|i| (i * 10_000, Value::I64(i / 3)))
            .collect::<Vec<_>>(),
    );
    write(
        &mut d,
        b,
        &[(5, Value::Bool(true)), (H + 5, Value::Bool(false))],
    );
    let before = d.raw(t, 0, 2 * H).expect("raw");
    let sealed = d.seal().expect("seal");
    assert_eq!(parts(sealed), vec![0, H], "two hourly partitions");
    assert_eq!(d.engine().head().points(t), 0);
    assert_eq!(d.blocks()[&0][0].partition, 0);
    assert_eq!(d.blocks()[&H][0].partition, H);
    assert_eq!(d.blocks()[&0][0].points().expect("index"), 360 + 360 + 1);
    assert_eq!(d.raw(t, 0, 2 * H).expect("raw"), before);
    assert_eq!(
        d.raw(t, 0, 2 * H).expect("raw"),
        pts.iter()
            .map(|&(ts, value)| Point { ts, value })
            .collect::<Vec<_>>()
    );
    assert_eq!(d.raw(b, 0, 2 * H).expect("raw").len(), 2);
    assert_eq!(d.raw(c, 3_590_000, 3_610_000).expect("raw").len(), 2);

    // Serialised blocks load into a fresh database and answer the same.
    let mut e = db();
    series(&mut e, "dev1", "temp");
    for blk in d.blocks().values().flatten() {
        let bytes = blk.bytes().to_vec();
        assert_eq!(
            SealedBlock::from_bytes(&bytes).expect("parse").to_bytes(),
            bytes
        );
        e.load_block(Arc::new(bytes)).expect("load");
    }
    assert_eq!(e.raw(t, 0, 2 * H).expect("raw"), before);
    assert_eq!(e.latest(t).expect("latest"), before.last().copied());
    assert_eq!(e.latest(SeriesId(99)).expect("latest"), None);
}

#[test]
fn late_and_duplicate_points_after_seal_win() {
    let mut d = db();
    let t = series(&mut d, "dev1", "temp");
    write(&mut d, t, &[(1000, f(1.0)), (2000, f(2.0)), (3000, f(3.0))]);
    d.seal().expect("seal");
    // Rewrite a sealed timestamp and add a late one: the head wins over the block.
    write(&mut d, t, &[(2000, f(20.0)), (1500, f(1.5))]);
    let want = vec![
        Point {
            ts: 1000,
            value: f(1.0),
        },
        Point {
            ts: 1500,
            value: f(1.5),
        },
        Point {
            ts: 2000,
            value: f(20.0),
        },
        Point {
            ts: 3000,
            value: f(3.0),
        },
    ];
    assert_eq!(d.raw(t, 0, 10_000).expect("raw"), want);
    // Sealed again: a second block of the partition, the newer value winning.
    assert_eq!(parts(d.seal().expect("seal")), vec![0]);
    assert_eq!(d.blocks().len(), 1);
    assert_eq!(d.blocks()[&0].len(), 2, "two generations");
    assert_eq!(d.raw(t, 0, 10_000).expect("raw"), want);
    assert_eq!(
        d.aggregate(t, 0, 10_000, 10_000, Agg::Sum).expect("agg"),
        vec![(0, 25.5)]
    );
    // The rollups count the rewritten point once, with its new value.
    let r = d.rollups(t, MINUTE_MS, 0, H).expect("rollups");
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].count, r[0].min, r[0].max, r[0].sum, r[0].last),
        (4, 1.0, 20.0, 25.5, 3.0)
    );
}

/// Naive reference aggregation over a sorted map.
fn reference(
    points: &BTreeMap<i64, f64>,
    from: i64,
    to: i64,
    step: i64,
    agg: Agg,
) -> Vec<(i64, f64)> {
    let mut buckets: BTreeMap<i64, Vec<(i64, f64)>> = BTreeMap::new();
    for (&ts, &v) in points.range(from..to) {
        buckets
            .entry(ts.div_euclid(step) * step)
            .or_default()
            .push((ts, v));
    }
    buckets
        .into_iter()
        .filter_map(|(start, b)| {
            let vals: Vec<f64> = b.iter().map(|x| x.1).collect();
            let v = match agg {
                Agg::Avg => vals.iter().sum::<f64>() / vals.len() as f64,
                Agg::Min => vals.iter().copied().fold(f64::INFINITY, f64::min),
                Agg::Max => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                Agg::Sum => vals.iter().sum(),
                Agg::Count => vals.len() as f64,
                Agg::Last => *vals.last()?,
                Agg::Rate => {
                    if b.len() < 2 {
                        return None;
                    }
                    let mut inc = 0.0;
                    for w in vals.windows(2) {
                        inc += if w[1] >= w[0] { w[1] - w[0] } else { w[1] };
                    }
                    inc / ((b[b.len() - 1].0 - b[0].0) as f64 / 1000.0)
                }
            };
            Some((start, v))
        })
        .collect()
}

fn close(a: &[(i64, f64)], b: &[(i64, f64)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() <= 1e-9 * (1.0 + y.1.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every aggregation over head + blocks (sealed at a random point, with rewrites) equals a
    /// naive computation over last-write-wins points; the stored rollups equal the raw ones.
    #[test]
    fn queries_match_reference(
        writes in prop::collection::vec((0i64..3 * H, 0i64..1000), 1..300),
        seal_at in any::<prop::sample::Index>(),
        step in prop_oneof![Just(MINUTE_MS), Just(10_000i64), 1i64..2 * H],
        from in 0i64..H,
        len in 1i64..4 * H,
    ) {
        let mut d = db();
        let id = series(&mut d, "d", "m");
        let mut model = BTreeMap::new();
        let seal_at = seal_at.index(writes.len());
        let mut newest = i64::MIN;
        for (i, &(ts, v)) in writes.iter().enumerate() {
            let v = v as f64 / 10.0;
            write(&mut d, id, &[(ts, f(v))]);
            model.insert(ts, v);
            newest = newest.max(ts);
            if i == seal_at {
                d.seal().expect("seal");
            }
        }
        let to = from + len;
        let raw: Vec<Point> = model.range(from..to).map(|(&ts, &v)| Point { ts, value: f(v) }).collect();
        prop_assert_eq!(d.raw(id, from, to).expect("raw"), raw);
        for agg in [Agg::Avg, Agg::Min, Agg::Max, Agg::Sum, Agg::Count, Agg::Last, Agg::Rate] {
            let got = d.aggregate(id, from, to, step, agg).expect("agg");
            let want = reference(&model, from, to, step, agg);
            prop_assert!(close(&got, &want), "{:?}: {:?} != {:?}", agg, got, want);
        }
        prop_assert_eq!(d.latest(id).expect("latest").map(|p| p.ts), Some(newest));
        // After sealing everything, the rollups equal aggregations of the raw points.
        d.seal().expect("seal");
        for width in [MINUTE_MS, HOUR_MS] {
            let r = d.rollups(id, width, 0, 4 * H).expect("rollups");
            let count: Vec<(i64, f64)> = r.iter().map(|r| (r.start, r.count as f64)).collect();
            prop_assert!(close(&count, &reference(&model, 0, 4 * H, width, Agg::Count)));
            let min: Vec<(i64, f64)> = r.iter().map(|r| (r.start, r.min)).collect();
            prop_assert!(close(&min, &reference(&model, 0, 4 * H, width, Agg::Min)));
            let max: Vec<(i64, f64)> = r.iter().map(|r| (r.start, r.max)).collect();
            prop_assert!(close(&max, &reference(&model, 0, 4 * H, width, Agg::Max)));
            let sum: Vec<(i64, f64)> = r.iter().map(|r| (r.start, r.sum)).collect();
            prop_assert!(close(&sum, &reference(&model, 0, 4 * H, width, Agg::Sum)));
            let last: Vec<(i64, f64)> = r.iter().map(|r| (r.start, r.last)).collect();
            prop_assert!(close(&last, &reference(&model, 0, 4 * H, width, Agg::Last)));
        }
    }

    /// Many seals (each a new block generation) with rewrites and late points in between, and
    /// compactions at random moments (level merges while partitions are hot, whole-partition
    /// merges once cold): raw points, aggregations, latest and rollups always equal the naive
    /// last-write-wins model, and a partition never holds more than a few blocks per level.
    #[test]
    fn seals_and_compactions_match_reference(
        rounds in prop::collection::vec(
            (prop::collection::vec((0i64..3 * H, 0i64..1000), 1..40), 0u8..4),
            1..40,
        ),
        step in prop_oneof![Just(MINUTE_MS), Just(10_000i64), 1i64..2 * H],
    ) {
        let mut d = db();
        let id = series(&mut d, "d", "m");
        let other = series(&mut d, "d", "n");
        let mut model = BTreeMap::new();
        for (writes, action) in &rounds {
            for &(ts, v) in writes {
                let v = v as f64 / 10.0;
                write(&mut d, id, &[(ts, f(v))]);
                if ts % 3 == 0 {
                    write(&mut d, other, &[(ts, Value::I64(ts))]);
                }
                model.insert(ts, v);
            }
            d.seal().expect("seal");
            // 0: no compaction; 1: level merges only; 2: everything due with partitions cold;
            // 3: one step only.
            let now = if *action == 2 { i64::MAX } else { 0 };
            let steps = match action { 0 => 0, 3 => 1, _ => 64 };
            for _ in 0..steps {
                let Some(plan) = d.plan_compaction(now) else { break };
                d.compact_in_memory(&plan).expect("compact");
            }
        }
        // Level merges to quiescence leave at most three blocks per level (plus a whole-
        // partition one): 40 seals need levels 0 to 2.
        while let Some(plan) = d.plan_compaction(0) {
            d.compact_in_memory(&plan).expect("compact");
        }
        for views in d.blocks().values() {
            prop_assert!(views.len() <= 1 + 3 * 3, "{} blocks", views.len());
        }
        let raw: Vec<Point> = model.iter().map(|(&ts, &v)| Point { ts, value: f(v) }).collect();
        prop_assert_eq!(d.raw(id, 0, 4 * H).expect("raw"), raw);
        prop_assert_eq!(
            d.raw(other, 0, 4 * H).expect("raw").len(),
            model.keys().filter(|ts| **ts % 3 == 0).count()
        );
        for agg in [Agg::Avg, Agg::Sum, Agg::Count, Agg::Last, Agg::Rate] {
            let got = d.aggregate(id, 0, 4 * H, step, agg).expect("agg");
            let want = reference(&model, 0, 4 * H, step, agg);
            prop_assert!(close(&got, &want), "{:?}: {:?} != {:?}", agg, got, want);
        }
        let newest = model.iter().next_back().map(|(&ts, &v)| Point { ts, value: f(v) });
        prop_assert_eq!(d.latest(id).expect("latest"), newest);
        for width in [MINUTE_MS, HOUR_MS] {
            let r = d.rollups(id, width, 0, 4 * H).expect("rollups");
            let sum: Vec<(i64, f64)> = r.iter().map(|r| (r.start, r.sum)).collect();
            prop_assert!(close(&sum, &reference(&model, 0, 4 * H, width, Agg::Sum)));
            let count: Vec<(i64, f64)> = r.iter().map(|r| (r.start, r.count as f64)).collect();
            prop_assert!(close(&count, &reference(&model, 0, 4 * H, width, Agg::Count)));
        }
        // Raw retention merges each partition's blocks into one holding rollups only; they
        // still count every point once, with its last value.
        let before = d.rollups(id, MINUTE_MS, 0, 4 * H).expect("rollups");
        prop_assert_eq!(drop_raw_before(&mut d, i64::MAX), d.blocks().len());
        prop_assert!(d.blocks().values().all(|v| v.len() == 1 && v[0].raw_dropped));
        prop_assert!(d.raw(id, 0, 4 * H).expect("raw").is_empty());
        let after = d.rollups(id, MINUTE_MS, 0, 4 * H).expect("rollups");
        prop_assert_eq!(after.len(), before.len());
        for (a, b) in after.iter().zip(&before) {
            prop_assert_eq!((a.start, a.count), (b.start, b.count));
            prop_assert!((a.sum - b.sum).abs() <= 1e-9 * (1.0 + b.sum.abs()));
        }
    }

    /// A corrupted block is refused with an error, never a panic.
    #[test]
    fn corrupt_block_is_refused(at in any::<prop::sample::Index>(), xor in 1u8..=255, cut in any::<prop::sample::Index>()) {
        let mut d = db();
        let id = series(&mut d, "d", "m");
        write(&mut d, id, &(0..100).map(|i| (i * 1000, f(i as f64))).collect::<Vec<_>>());
        d.seal().expect("seal");
        let bytes = d.blocks()[&0][0].bytes().to_vec();
        let mut bad = bytes.clone();
        bad[at.index(bytes.len())] ^= xor;
        prop_assert!(SealedBlock::from_bytes(&bad).is_err());
        prop_assert!(SealedBlock::from_bytes(&bytes[..cut.index(bytes.len())]).is_err());
    }
}

#[test]
fn rate_handles_counter_reset() {
    let mut d = db();
    let c = series(&mut d, "d", "count");
    write(
        &mut d,
        c,
        &[
            (0, Value::I64(10)),
            (10_000, Value::I64(20)),
            (20_000, Value::I64(5)),
            (30_000, Value::I64(15)),
        ],
    );
    // Increase 10 + 5 (reset) + 10 = 25 over 30 s.
    let r = d.aggregate(c, 0, 60_000, 60_000, Agg::Rate).expect("rate");
    assert_eq!(r, vec![(0, 25.0 / 30.0)]);
    // A bucket with one point has no rate.
    assert!(
        d.aggregate(c, 0, 60_000, 10_000, Agg::Rate)
            .expect("rate")
            .is_empty()
    );
}

#[test]
fn retention_drops_whole_partitions() {
    let mut d = db();
    let t = series(&mut d, "d", "m");
    write(
        &mut d,
        t,
        &[(10, f(1.0)), (H + 10, f(2.0)), (2 * H + 10, f(3.0))],
    );
    d.seal().expect("seal");
    assert_eq!(d.blocks().len(), 3);
    // A partition ending one ms after the cutoff is kept; one ending at it is dropped.
    assert_eq!(d.drop_before(2 * H - 1).len(), 1);
    assert_eq!(d.drop_before(2 * H).len(), 1);
    assert_eq!(
        d.raw(t, 0, 3 * H).expect("raw"),
        vec![Point {
            ts: 2 * H + 10,
            value: f(3.0)
        }]
    );
    assert!(d.drop_before(0).is_empty());
}

#[test]
fn query_limits_and_one_past() {
    let mut d = db();
    let t = series(&mut d, "d", "m");
    write(&mut d, t, &[(10, f(1.0))]);
    assert_eq!(d.aggregate(t, 0, 10, 0, Agg::Avg), Err(DbError::BadStep(0)));
    assert_eq!(
        d.aggregate(t, 0, 10, -5, Agg::Avg),
        Err(DbError::BadStep(-5))
    );
    assert_eq!(
        d.aggregate(t, 0, MAX_BUCKETS - 1, 1, Agg::Avg)
            .expect("at the limit"),
        vec![(10, 1.0)]
    );
    assert_eq!(
        d.aggregate(t, 0, MAX_BUCKETS, 1, Agg::Avg),
        Err(DbError::TooManyBuckets {
            buckets: MAX_BUCKETS + 1
        })
    );
    assert!(
        d.aggregate(t, 10, 10, 1, Agg::Avg)
            .expect("empty range")
            .is_empty()
    );
    assert!(matches!(
        Db::new(DbConfig {
            partition_ms: 0,
            ..DbConfig::default()
        }),
        Err(DbError::BadPartition(0))
    ));
    assert_eq!(
        SealedBlock::from_bytes(&[1, 2]),
        Err(BlockError::Corrupt("truncated"))
    );
}

#[test]
fn rollup_sums_exact_for_decimals_and_fall_back_otherwise() {
    let mut d = db();
    let dec = series(&mut d, "d", "decimal");
    let third = series(&mut d, "d", "third");
    let big = series(&mut d, "d", "big");
    // 0.1 + 0.2 + 0.7 in floats is 0.9999999999999999; stored as tenths it is exactly 1.
    write(&mut d, dec, &[(0, f(0.1)), (1000, f(0.2)), (2000, f(0.7))]);
    write(&mut d, third, &[(0, f(1.0 / 3.0)), (1000, f(2.0 / 3.0))]);
    write(
        &mut d,
        big,
        &[(0, Value::I64(1 << 52)), (1000, Value::I64(1 << 52))],
    );
    d.seal().expect("seal");
    let sum = |id| d.rollups(id, MINUTE_MS, 0, H).expect("rollups")[0].sum;
    assert_eq!(sum(dec), 1.0);
    assert_eq!(sum(third), 1.0 / 3.0 + 2.0 / 3.0);
    // 2^53 does not fit the exact integer form: the float form is used.
    assert_eq!(sum(big), 2f64.powi(53));
}

#[test]
fn sealed_floats_round_trip_bit_exact_in_both_column_forms() {
    let mut d = db();
    let dec = series(&mut d, "d", "decimal");
    let odd = series(&mut d, "d", "odd");
    let decimals = [0.1, 21.5, -3.25, 0.0, 1e-6, 123456.7];
    let odds = [
        1.0 / 3.0,
        -0.0,
        f64::NAN,
        f64::INFINITY,
        1e300,
        f64::MIN_POSITIVE,
    ];
    let pts = |vals: &[f64]| {
        vals.iter()
            .enumerate()
            .map(|(i, &v)| (i as i64 * 1000, f(v)))
            .collect::<Vec<_>>()
    };
    write(&mut d, dec, &pts(&decimals));
    write(&mut d, odd, &pts(&odds));
    d.seal().expect("seal");
    for (id, want) in [(dec, &decimals), (odd, &odds)] {
        let got: Vec<u64> = d
            .raw(id, 0, H)
            .expect("raw")
            .iter()
            .map(|p| match p.value {
                Value::F64(v) => v.to_bits(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A block altered *with* a matching CRC (so only the parser and pco stand guard) gives
    /// errors or other values when read, never a panic.
    #[test]
    fn altered_block_with_valid_crc_never_panics(
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
        decimal in any::<bool>(),
    ) {
        let mut d = db();
        let id = series(&mut d, "d", "m");
        let v = |i: i64| if decimal { i as f64 / 10.0 } else { i as f64 / 3.0 };
        write(&mut d, id, &(0..500).map(|i| (i * 1000, f(v(i % 17)))).collect::<Vec<_>>());
        d.seal().expect("seal");
        let mut bytes = d.blocks()[&0][0].bytes().to_vec();
        let body = bytes.len() - FOOTER_LEN;
        bytes[at.index(body)] ^= xor;
        let bytes = myriad_tsdb::fuzz::fix_block_crcs(&bytes);
        if let Ok(block) = SealedBlock::from_bytes(&bytes) {
            for s in block.series.values() {
                let _ = s.points();
                let _ = s.rollups(MINUTE_MS);
                let _ = s.rollups(HOUR_MS);
            }
        }
    }
}

/// The whole durability cycle through storage: WAL, seal, persisted blocks, a new WAL segment
/// from a checkpoint, a torn write, and a restart from blocks + the new segment.
#[test]
fn restart_from_blocks_and_checkpointed_wal() {
    use myriad_tsdb::{MemStorage, Storage};
    let mut st = MemStorage::default();
    let mut d = db();
    let mut wal = Vec::new();
    let t = d
        .engine_mut()
        .series(
            &SeriesKey::new("dev1", "temp").with_label("site", "a"),
            &mut wal,
        )
        .expect("s");
    let pts: Vec<_> = (0..100)
        .map(|i| {
            (
                t,
                Point {
                    ts: i * 60_000,
                    value: f(i as f64 / 10.0),
                },
            )
        })
        .collect();
    d.engine_mut().append(&pts, &mut wal).expect("append");
    st.append("wal-0", &wal).expect("mem");

    // Seal, persist the blocks, start a new segment from a checkpoint, drop the old one.
    for key in d.seal().expect("seal") {
        let block = d.block(key).expect("sealed block");
        st.append(
            &format!("block-{}-{}", key.partition, key.generation),
            block.bytes(),
        )
        .expect("mem");
    }
    let mut seg = Vec::new();
    d.engine().checkpoint(&mut seg).expect("checkpoint");
    st.append("wal-1", &seg).expect("mem");
    st.remove("wal-0").expect("mem");

    // More points, one of them rewriting a sealed timestamp; then a torn write.
    let mut wal = Vec::new();
    d.engine_mut()
        .append(
            &[
                (
                    t,
                    Point {
                        ts: 100 * 60_000,
                        value: f(99.0),
                    },
                ),
                (
                    t,
                    Point {
                        ts: 60_000,
                        value: f(-1.0),
                    },
                ),
            ],
            &mut wal,
        )
        .expect("append");
    st.append("wal-1", &wal).expect("mem");
    let mut torn = Vec::new();
    d.engine_mut()
        .append(
            &[(
                t,
                Point {
                    ts: 101 * 60_000,
                    value: f(7.0),
                },
            )],
            &mut torn,
        )
        .expect("append");
    st.append("wal-1", &torn[..torn.len() - 1]).expect("mem");

    // Restart.
    let mut r = db();
    for name in st.list().expect("mem") {
        if name.starts_with("block-") {
            r.load_block(Arc::new(st.read(&name).expect("mem")))
                .expect("load");
        }
    }
    let report = r.engine_mut().replay(&st.read("wal-1").expect("mem"));
    assert_eq!(
        (report.series, report.points, report.dropped_bytes),
        (1, 2, torn.len() - 1)
    );
    let got = r.raw(t, 0, 200 * 60_000).expect("raw");
    let mut want = d.raw(t, 0, 200 * 60_000).expect("raw");
    assert_eq!(
        want.pop(),
        Some(Point {
            ts: 101 * 60_000,
            value: f(7.0)
        }),
        "only the torn point is lost"
    );
    assert_eq!(got, want);
    assert_eq!(
        got[1],
        Point {
            ts: 60_000,
            value: f(-1.0)
        }
    );
    assert_eq!(
        r.engine().index().select(&[("site", "a")]).expect("select"),
        vec![t]
    );
}

#[test]
fn raw_retention_keeps_rollups_and_counts_late_points() {
    let mut d = db();
    let t = series(&mut d, "d", "m");
    write(&mut d, t, &[(0, f(1.0)), (30_000, f(3.0)), (H, f(5.0))]);
    d.seal().expect("seal");
    // Partition [0, H) ends at H: a cutoff of H - 1 leaves it; H drops its raw data.
    assert_eq!(drop_raw_before(&mut d, H - 1), 0);
    assert_eq!(drop_raw_before(&mut d, H), 1);
    assert_eq!(drop_raw_before(&mut d, H), 0, "already dropped");
    assert_eq!(
        d.raw(t, 0, 2 * H).expect("raw"),
        vec![Point {
            ts: H,
            value: f(5.0)
        }]
    );
    let r = d.rollups(t, MINUTE_MS, 0, H).expect("rollups");
    assert_eq!((r.len(), r[0].count, r[0].sum, r[0].last), (1, 2, 4.0, 3.0));
    assert_eq!(d.rollups(t, HOUR_MS, 0, 2 * H).expect("rollups").len(), 2);
    // The flag survives serialisation.
    let bytes = d.blocks()[&0][0].bytes().to_vec();
    let back = SealedBlock::from_bytes(&bytes).expect("parse");
    assert!(back.raw_dropped);
    assert_eq!(back.points(), 0);
    // A late point for the expired partition is refused at seal and counted; rollups unchanged.
    write(&mut d, t, &[(10_000, f(100.0))]);
    assert_eq!(parts(d.seal().expect("seal")), Vec::<i64>::new());
    assert_eq!(d.expired_points(), 1);
    assert_eq!(d.rollups(t, MINUTE_MS, 0, H).expect("rollups"), r);
    assert_eq!(
        d.latest(t).expect("latest"),
        Some(Point {
            ts: H,
            value: f(5.0)
        })
    );
    // Whole-partition retention then removes the rollups too.
    assert_eq!(d.drop_before(H).len(), 1);
    assert!(d.rollups(t, MINUTE_MS, 0, H).expect("rollups").is_empty());
}

/// Timestamps at the ends of the i64 range seal, query and aggregate without overflow.
#[test]
fn extreme_timestamps_are_safe() {
    let mut d = db();
    let t = series(&mut d, "d", "m");
    let lo = i64::MIN + 1;
    let hi = i64::MAX - 1;
    write(&mut d, t, &[(hi, f(3.0))]);
    let mut wide = Db::new(DbConfig {
        partition_ms: 3 * H,
        ..DbConfig::default()
    })
    .expect("config");
    let w = series(&mut wide, "d", "m");
    write(&mut wide, w, &[(lo, f(1.0)), (0, f(2.0)), (hi, f(3.0))]);
    for db in [&mut d, &mut wide] {
        db.seal().expect("seal");
    }
    let all = wide.raw(w, i64::MIN, i64::MAX).expect("raw");
    assert_eq!(
        all.iter().map(|p| p.ts).collect::<Vec<_>>(),
        vec![lo, 0, hi]
    );
    let counts = wide.aggregate(w, i64::MIN, i64::MAX, i64::MAX / 2, Agg::Count);
    assert!(
        matches!(counts, Ok(ref c) if c.iter().map(|x| x.1).sum::<f64>() == 3.0),
        "{counts:?}"
    );
    let r = wide
        .rollups(w, MINUTE_MS, i64::MIN, i64::MAX)
        .expect("rollups");
    assert_eq!(r.iter().map(|r| r.count).sum::<u64>(), 3);
    assert_eq!(r[0].start, i64::MIN, "clamped bucket start");
    assert_eq!(d.latest(t).expect("latest").map(|p| p.ts), Some(hi));
}

/// After raw retention, aggregations with a step that is a multiple of a rollup width answer
/// from the rollups with the same values as from the raw points before.
#[test]
fn aggregates_fall_back_to_rollups_after_raw_retention() {
    let mut d = db();
    let t = series(&mut d, "d", "m");
    let pts: Vec<(i64, Value)> = (0..1000)
        .map(|i| (i * 7_000, f(((i * 37) % 101) as f64 / 10.0)))
        .collect();
    write(&mut d, t, &pts);
    d.seal().expect("seal");
    let aggs = [
        Agg::Avg,
        Agg::Min,
        Agg::Max,
        Agg::Sum,
        Agg::Count,
        Agg::Last,
    ];
    let steps = [MINUTE_MS, 5 * MINUTE_MS, H, 2 * H];
    let before: Vec<Vec<(i64, f64)>> = steps
        .iter()
        .flat_map(|&s| aggs.iter().map(move |&a| (s, a)))
        .map(|(s, a)| d.aggregate(t, 0, 2 * H, s, a).expect("agg"))
        .collect();
    assert_eq!(drop_raw_before(&mut d, 2 * H), 2);
    assert!(d.raw(t, 0, 2 * H).expect("raw").is_empty());
    let after: Vec<Vec<(i64, f64)>> = steps
        .iter()
        .flat_map(|&s| aggs.iter().map(move |&a| (s, a)))
        .map(|(s, a)| d.aggregate(t, 0, 2 * H, s, a).expect("agg"))
        .collect();
    for (b, a) in before.iter().zip(&after) {
        assert!(!b.is_empty());
        assert!(close(a, b), "{a:?} != {b:?}");
    }
    // No rate, and nothing for a step that is not a multiple of a minute.
    assert!(
        d.aggregate(t, 0, 2 * H, MINUTE_MS, Agg::Rate)
            .expect("rate")
            .is_empty()
    );
    assert!(
        d.aggregate(t, 0, 2 * H, 90_000, Agg::Avg)
            .expect("agg")
            .is_empty()
    );
}
