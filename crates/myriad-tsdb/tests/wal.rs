//! WAL records and crash replay: a log cut or corrupted anywhere replays up to the last whole
//! record, reports what it dropped, and leaves the engine as it was after that record.

use myriad_tsdb::engine::MAX_BATCH_POINTS;
use myriad_tsdb::wal::{MAX_RECORD_LEN, encode_points, encode_series};
use myriad_tsdb::{
    AppendError, Engine, EngineError, HeadConfig, IndexLimits, MemStorage, Point, PointError,
    SeriesId, SeriesKey, Storage, Value, WalEncodeError, WalReader, WalRecord, WalStop,
};
use proptest::prelude::*;

const LOG: &str = "wal";

fn engine() -> Engine {
    Engine::new(
        IndexLimits::default(),
        HeadConfig {
            ooo_window_ms: 60_000,
            max_ooo_points: 64,
        },
    )
}

/// Everything observable about an engine: each series' key, its head points and newest point.
type Snapshot = Vec<(SeriesKey, Vec<Point>, Option<Point>)>;

fn snapshot(e: &Engine) -> Snapshot {
    (0..e.index().len() as u32)
        .map(SeriesId)
        .map(|id| {
            let key = e.index().key(id).expect("dense ids");
            (
                key,
                e.head().range(id, i64::MIN, i64::MAX),
                e.head().latest(id),
            )
        })
        .collect()
}

fn value_of(kind: u8, x: i64) -> Value {
    match kind % 3 {
        0 => Value::F64(x as f64 / 10.0),
        1 => Value::I64(x),
        _ => Value::Bool(x % 2 == 0),
    }
}

/// Writes batches through an engine into storage; returns the engine state and the log length
/// after each record (the points an ack would have covered).
fn write_batches(
    batches: &[Vec<(u8, i64, i64)>],
    storage: &mut MemStorage,
) -> Vec<(usize, Snapshot)> {
    let mut e = engine();
    let mut states = vec![(0, snapshot(&e))];
    for batch in batches {
        let mut pts = Vec::new();
        for &(dev, ts, x) in batch {
            let mut wal = Vec::new();
            // Kind fixed per device so the series' kind never conflicts.
            let id = e
                .series(&SeriesKey::new(format!("d{dev}"), "m"), &mut wal)
                .expect("series");
            if !wal.is_empty() {
                storage.append(LOG, &wal).expect("mem");
                states.push((storage.read(LOG).expect("mem").len(), snapshot(&e)));
            }
            pts.push((
                id,
                Point {
                    ts,
                    value: value_of(dev, x),
                },
            ));
        }
        let mut wal = Vec::new();
        e.append(&pts, &mut wal).expect("append");
        if !wal.is_empty() {
            storage.append(LOG, &wal).expect("mem");
            states.push((storage.read(LOG).expect("mem").len(), snapshot(&e)));
        }
    }
    states
}

fn batches_strategy() -> impl Strategy<Value = Vec<Vec<(u8, i64, i64)>>> {
    prop::collection::vec(
        prop::collection::vec((0u8..6, 0i64..200_000, -500i64..500), 1..20),
        1..12,
    )
}

proptest! {
    /// Cutting the log at any byte (a torn write at kill -9) replays exactly the records before
    /// the cut: the engine equals the original after its last whole record.
    #[test]
    fn torn_tail_replays_whole_records(batches in batches_strategy(), cut in any::<prop::sample::Index>()) {
        let mut storage = MemStorage::default();
        let states = write_batches(&batches, &mut storage);
        let full = storage.read(LOG).expect("mem");
        let cut = cut.index(full.len() + 1);
        storage.truncate(LOG, cut).expect("mem");

        let mut e = engine();
        let report = e.replay(&storage.read(LOG).expect("mem"));
        let (boundary, state) = states.iter().rev().find(|(len, _)| *len <= cut).expect("state 0");
        prop_assert_eq!(report.valid_len, *boundary);
        prop_assert_eq!(report.dropped_bytes, cut - boundary);
        prop_assert_eq!(report.stop.is_some(), cut != *boundary);
        if cut != *boundary {
            prop_assert!(matches!(report.stop, Some(WalStop::Incomplete { .. })), "{:?}", report.stop);
        }
        prop_assert_eq!(report.points_refused, 0);
        prop_assert_eq!(&snapshot(&e), state);
    }

    /// A corrupted byte inside record k stops replay at the start of record k.
    #[test]
    fn corrupt_record_stops_replay(batches in batches_strategy(), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut storage = MemStorage::default();
        let states = write_batches(&batches, &mut storage);
        let len = storage.read(LOG).expect("mem").len();
        let pos = at.index(len);
        storage.file_mut(LOG)[pos] ^= xor;

        let mut e = engine();
        let report = e.replay(&storage.read(LOG).expect("mem"));
        let (boundary, state) = states.iter().rev().find(|(l, _)| *l <= pos).expect("state 0");
        prop_assert_eq!(report.valid_len, *boundary);
        prop_assert_eq!(report.dropped_bytes, len - boundary);
        prop_assert!(report.stop.is_some());
        prop_assert_eq!(&snapshot(&e), state);
    }

    /// Random bytes as a log never panic and never report more than they hold.
    #[test]
    fn random_log_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut e = engine();
        let report = e.replay(&bytes);
        prop_assert_eq!(report.valid_len + report.dropped_bytes, bytes.len());
    }
}

#[test]
fn crash_replay_then_continue() {
    let mut storage = MemStorage::default();
    let mut e = engine();
    let mut wal = Vec::new();
    let temp = e
        .series(
            &SeriesKey::new("dev1", "temp").with_label("site", "a"),
            &mut wal,
        )
        .expect("s");
    let count = e
        .series(&SeriesKey::new("dev1", "events"), &mut wal)
        .expect("s");
    let t0 = 1_764_800_000_000;
    let batch = |i: i64| {
        vec![
            (
                temp,
                Point {
                    ts: t0 + i * 10_000,
                    value: Value::F64(21.5 + i as f64 / 10.0),
                },
            ),
            (
                count,
                Point {
                    ts: t0 + i * 10_000,
                    value: Value::I64(i),
                },
            ),
        ]
    };
    for i in 0..3 {
        e.append(&batch(i), &mut wal).expect("append");
    }
    storage.append(LOG, &wal).expect("mem");
    let acked = storage.read(LOG).expect("mem").len();
    // A fourth batch is torn halfway through its write.
    let mut last = Vec::new();
    e.append(&batch(3), &mut last).expect("append");
    storage.append(LOG, &last[..last.len() / 2]).expect("mem");

    let mut r = engine();
    let report = r.replay(&storage.read(LOG).expect("mem"));
    assert_eq!(report.records, 5);
    assert_eq!(report.series, 2);
    assert_eq!(report.points, 6);
    assert_eq!(report.valid_len, acked);
    assert_eq!(report.dropped_bytes, last.len() / 2);
    assert_eq!(
        report.stop,
        Some(WalStop::Incomplete {
            have: last.len() / 2,
            need: last.len()
        })
    );
    assert_eq!(
        r.index().select(&[("site", "a")]).expect("select"),
        vec![temp]
    );
    assert_eq!(
        r.head().latest(temp),
        Some(Point {
            ts: t0 + 20_000,
            value: Value::F64(21.5 + 0.2)
        })
    );

    // The caller cuts the torn tail and carries on; the next replay sees everything.
    storage.truncate(LOG, report.valid_len).expect("mem");
    let mut more = Vec::new();
    r.append(&batch(3), &mut more).expect("append");
    storage.append(LOG, &more).expect("mem");
    let mut again = engine();
    let report = again.replay(&storage.read(LOG).expect("mem"));
    assert_eq!(
        (report.points, report.dropped_bytes, report.stop),
        (8, 0, None)
    );
    assert_eq!(snapshot(&again), snapshot(&e));
}

#[test]
fn refused_points_are_reported_and_not_logged() {
    let mut e = engine();
    let mut wal = Vec::new();
    let s = e.series(&SeriesKey::new("d", "m"), &mut wal).expect("s");
    let series_only = wal.len();
    let report = e
        .append(
            &[
                (
                    s,
                    Point {
                        ts: 100_000,
                        value: Value::F64(1.0),
                    },
                ),
                (
                    s,
                    Point {
                        ts: 1,
                        value: Value::F64(2.0),
                    },
                ),
                (
                    SeriesId(42),
                    Point {
                        ts: 100_000,
                        value: Value::F64(3.0),
                    },
                ),
                (
                    s,
                    Point {
                        ts: 100_001,
                        value: Value::Bool(true),
                    },
                ),
            ],
            &mut wal,
        )
        .expect("append");
    assert_eq!(report.accepted, 1);
    assert_eq!(
        report.refused,
        vec![
            (
                1,
                PointError::Head(AppendError::TooOld { ts: 1, min: 40_000 })
            ),
            (2, PointError::UnknownSeries(SeriesId(42))),
            (
                3,
                PointError::Head(AppendError::KindMismatch {
                    want: myriad_tsdb::ValueKind::F64,
                    got: myriad_tsdb::ValueKind::Bool
                })
            ),
        ]
    );
    let recs: Vec<WalRecord> = WalReader::new(&wal[series_only..]).collect();
    assert_eq!(
        recs,
        vec![WalRecord::Points(vec![(
            s,
            Point {
                ts: 100_000,
                value: Value::F64(1.0)
            }
        )])]
    );
    // A batch with nothing accepted writes no record.
    let before = wal.len();
    e.append(
        &[(
            s,
            Point {
                ts: 0,
                value: Value::F64(1.0),
            },
        )],
        &mut wal,
    )
    .expect("append");
    assert_eq!(wal.len(), before);
}

#[test]
fn batch_size_limit_and_one_past() {
    let mut e = engine();
    let mut wal = Vec::new();
    let p = (
        SeriesId(7),
        Point {
            ts: 0,
            value: Value::I64(0),
        },
    );
    let at_limit = vec![p; MAX_BATCH_POINTS];
    let report = e.append(&at_limit, &mut wal).expect("at the limit");
    assert_eq!(report.refused.len(), MAX_BATCH_POINTS);
    let one_past = vec![p; MAX_BATCH_POINTS + 1];
    assert!(matches!(
        e.append(&one_past, &mut wal),
        Err(EngineError::Wal(WalEncodeError::TooLarge { .. }))
    ));
    assert!(wal.is_empty());
}

#[test]
fn reader_stops_on_bad_header_fields() {
    let mut rec = Vec::new();
    encode_points(
        &[(
            SeriesId(1),
            Point {
                ts: -5,
                value: Value::I64(i64::MIN),
            },
        )],
        &mut rec,
    )
    .expect("enc");
    encode_series(
        SeriesId(0),
        &SeriesKey::new("d", "m").with_label("k", "v"),
        &mut rec,
    )
    .expect("enc");
    let recs: Vec<WalRecord> = WalReader::new(&rec).collect();
    assert_eq!(recs.len(), 2);
    assert_eq!(
        recs[0],
        WalRecord::Points(vec![(
            SeriesId(1),
            Point {
                ts: -5,
                value: Value::I64(i64::MIN)
            }
        )])
    );

    let stop_of = |bytes: &[u8]| {
        let mut r = WalReader::new(bytes);
        assert_eq!(r.by_ref().count(), 0);
        (r.valid_len(), r.stop().cloned())
    };
    let mut zero = rec.clone();
    zero[..4].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(stop_of(&zero), (0, Some(WalStop::BadLength(0))));
    let mut huge = rec.clone();
    let past = MAX_RECORD_LEN as u32 + 1;
    huge[..4].copy_from_slice(&past.to_le_bytes());
    assert_eq!(stop_of(&huge), (0, Some(WalStop::BadLength(past))));

    // A record with a valid CRC but a wrong version, and one whose body does not parse.
    let with_crc = |body: &[u8]| {
        let mut v = (body.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        v.extend_from_slice(body);
        v
    };
    assert_eq!(
        stop_of(&with_crc(&[2, 2, 0])),
        (0, Some(WalStop::Version(2)))
    );
    assert_eq!(
        stop_of(&with_crc(&[1, 9])),
        (0, Some(WalStop::Malformed("unknown record type")))
    );
    assert_eq!(
        stop_of(&with_crc(&[1, 2, 0xff, 0xff, 0xff, 0xff, 0x0f])),
        (0, Some(WalStop::Malformed("point count exceeds body")))
    );
    assert_eq!(
        stop_of(&with_crc(&[1, 2, 1, 0, 0, 2, 7])),
        (0, Some(WalStop::Malformed("bool not 0 or 1")))
    );
    assert_eq!(
        stop_of(&with_crc(&[1, 2, 0, 0])),
        (0, Some(WalStop::Malformed("trailing bytes in record")))
    );
}

/// Timestamps are delta-coded within a record (wrapping), so extremes round-trip.
#[test]
fn points_record_round_trips_extreme_timestamps() {
    let pts: Vec<(SeriesId, Point)> = [i64::MAX, i64::MIN, 0, -1, i64::MAX, 1_764_806_400_000]
        .iter()
        .enumerate()
        .map(|(i, &ts)| {
            (
                SeriesId(i as u32 * 1000),
                Point {
                    ts,
                    value: Value::F64(i as f64),
                },
            )
        })
        .collect();
    let mut rec = Vec::new();
    encode_points(&pts, &mut rec).expect("enc");
    let mut r = WalReader::new(&rec);
    assert_eq!(r.next(), Some(WalRecord::Points(pts)));
    assert_eq!((r.next(), r.valid_len(), r.stop()), (None, rec.len(), None));
}
