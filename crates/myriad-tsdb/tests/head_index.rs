//! Head (out-of-order window, duplicates, seal) and series index (postings, limits).

use std::collections::BTreeMap;

use myriad_tsdb::{
    AppendError, Appended, Head, HeadConfig, IndexError, IndexLimits, Point, SeriesId, SeriesIndex,
    SeriesKey, Value, ValueKind,
};
use proptest::prelude::*;

const S: SeriesId = SeriesId(0);

fn ts_values(points: &[Point]) -> Vec<(i64, f64)> {
    points
        .iter()
        .map(|p| match p.value {
            Value::F64(v) => (p.ts, v),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn out_of_order_within_window_is_merged_in_order() {
    let mut h = Head::new(HeadConfig {
        ooo_window_ms: 1000,
        max_ooo_points: 10,
    });
    assert_eq!(h.append(S, 10_000, Value::F64(1.0)), Ok(Appended::InOrder));
    assert_eq!(h.append(S, 12_000, Value::F64(3.0)), Ok(Appended::InOrder));
    assert_eq!(
        h.append(S, 11_500, Value::F64(2.0)),
        Ok(Appended::OutOfOrder)
    );
    // Exactly at the window's edge is accepted; one ms before it is refused.
    assert_eq!(
        h.append(S, 11_000, Value::F64(1.5)),
        Ok(Appended::OutOfOrder)
    );
    assert_eq!(
        h.append(S, 10_999, Value::F64(9.0)),
        Err(AppendError::TooOld {
            ts: 10_999,
            min: 11_000
        })
    );
    assert_eq!(
        ts_values(&h.range(S, i64::MIN, i64::MAX)),
        vec![(10_000, 1.0), (11_000, 1.5), (11_500, 2.0), (12_000, 3.0)]
    );
    assert_eq!(
        ts_values(&h.range(S, 11_000, 12_000)),
        vec![(11_000, 1.5), (11_500, 2.0)]
    );
    assert!(h.range(S, 12_000, 11_000).is_empty());
}

#[test]
fn duplicate_timestamp_keeps_last_value() {
    let mut h = Head::new(HeadConfig::default());
    h.append(S, 1000, Value::F64(1.0)).expect("a");
    h.append(S, 2000, Value::F64(2.0)).expect("b");
    // Duplicate of a chunk point, then of the newest point, then again.
    h.append(S, 1000, Value::F64(10.0)).expect("c");
    h.append(S, 2000, Value::F64(20.0)).expect("d");
    h.append(S, 2000, Value::F64(21.0)).expect("e");
    assert_eq!(
        ts_values(&h.range(S, 0, 10_000)),
        vec![(1000, 10.0), (2000, 21.0)]
    );
    assert_eq!(
        h.latest(S),
        Some(Point {
            ts: 2000,
            value: Value::F64(21.0)
        })
    );
    let (kind, sealed) = h.seal(S).expect("seal");
    assert_eq!(kind, ValueKind::F64);
    assert_eq!(ts_values(&sealed), vec![(1000, 10.0), (2000, 21.0)]);
}

#[test]
fn side_buffer_limit_and_one_past() {
    let mut h = Head::new(HeadConfig {
        ooo_window_ms: 10_000,
        max_ooo_points: 3,
    });
    h.append(S, 10_000, Value::I64(0)).expect("newest");
    for ts in [9_001, 9_002, 9_003] {
        assert_eq!(h.append(S, ts, Value::I64(1)), Ok(Appended::OutOfOrder));
    }
    assert_eq!(
        h.append(S, 9_004, Value::I64(1)),
        Err(AppendError::OutOfOrderFull { limit: 3 })
    );
    // Replacing a buffered timestamp still works when full.
    assert_eq!(h.append(S, 9_002, Value::I64(7)), Ok(Appended::OutOfOrder));
    // In-order points are unaffected.
    assert_eq!(h.append(S, 10_001, Value::I64(2)), Ok(Appended::InOrder));
    // Sealing empties the buffer; the window still counts from the newest timestamp.
    let (_, pts) = h.seal(S).expect("seal");
    assert_eq!(pts.len(), 5);
    assert_eq!(
        pts[1],
        Point {
            ts: 9_002,
            value: Value::I64(7)
        }
    );
    assert_eq!(h.points(S), 0);
    assert_eq!(h.append(S, 9_004, Value::I64(1)), Ok(Appended::OutOfOrder));
    assert_eq!(
        h.append(S, 0, Value::I64(1)),
        Err(AppendError::TooOld { ts: 0, min: 1 })
    );
    assert_eq!(h.seal(S).map(|(_, p)| p.len()), Some(1));
    assert_eq!(h.seal(S), None);
}

#[test]
fn series_kind_is_fixed_by_first_point() {
    let mut h = Head::new(HeadConfig::default());
    h.append(S, 1, Value::Bool(true)).expect("first");
    assert_eq!(
        h.append(S, 2, Value::F64(1.0)),
        Err(AppendError::KindMismatch {
            want: ValueKind::Bool,
            got: ValueKind::F64
        })
    );
    assert_eq!(h.kind(S), Some(ValueKind::Bool));
    assert_eq!(h.kind(SeriesId(9)), None);
    assert!(h.range(SeriesId(9), 0, 10).is_empty());
}

proptest! {
    /// Against a model (a map with last-write-wins and the window rule), any sequence of
    /// appends gives the same accepted set and the same merged points, before and after a seal.
    #[test]
    fn head_matches_model(
        ops in prop::collection::vec((0i64..5_000, -100i64..100), 1..400),
        window in 0i64..2_000,
        seal_at in any::<prop::sample::Index>(),
    ) {
        let cfg = HeadConfig { ooo_window_ms: window, max_ooo_points: usize::MAX };
        let mut h = Head::new(cfg);
        let mut model: BTreeMap<i64, f64> = BTreeMap::new();
        let mut newest: Option<i64> = None;
        let seal_at = seal_at.index(ops.len());
        let mut sealed: BTreeMap<i64, f64> = BTreeMap::new();
        for (i, (ts, v)) in ops.iter().enumerate() {
            let v = *v as f64;
            let ok = newest.is_none_or(|n| *ts >= n - window);
            prop_assert_eq!(h.append(S, *ts, Value::F64(v)).is_ok(), ok);
            if ok {
                model.insert(*ts, v);
                newest = Some(newest.map_or(*ts, |n| n.max(*ts)));
            }
            if i == seal_at {
                let got = h.seal(S).map(|(_, p)| ts_values(&p)).unwrap_or_default();
                prop_assert_eq!(got, model.iter().map(|(&t, &v)| (t, v)).collect::<Vec<_>>());
                sealed.append(&mut model);
            }
        }
        let got = ts_values(&h.range(S, i64::MIN, i64::MAX));
        prop_assert_eq!(got, model.iter().map(|(&t, &v)| (t, v)).collect::<Vec<_>>());
        let all: BTreeMap<i64, f64> = sealed.into_iter().chain(model).collect();
        let newest_model = all.iter().next_back().map(|(&ts, &v)| Point { ts, value: Value::F64(v) });
        prop_assert_eq!(h.latest(S), newest_model);
    }
}

fn index_with_fleet() -> SeriesIndex {
    let mut idx = SeriesIndex::new(IndexLimits::default());
    for d in 0..100 {
        for m in ["temp", "hum", "batt"] {
            let key = SeriesKey::new(format!("dev{d}"), m)
                .with_label("group", if d % 2 == 0 { "even" } else { "odd" })
                .with_label("site", format!("s{}", d % 10));
            let (_, created) = idx.get_or_create(&key).expect("create");
            assert!(created);
        }
    }
    idx
}

#[test]
fn index_selects_by_device_metric_and_labels() {
    let idx = index_with_fleet();
    assert_eq!(idx.len(), 300);
    let dev7 = idx.select(&[("device", "dev7")]).expect("select");
    assert_eq!(dev7.len(), 3);
    assert!(
        dev7.iter()
            .all(|id| idx.key(*id).is_some_and(|k| k.device == "dev7"))
    );
    assert_eq!(
        idx.select(&[("metric", "temp")]).expect("select").len(),
        100
    );
    let sel = idx
        .select(&[("metric", "hum"), ("group", "odd"), ("site", "s3")])
        .expect("select");
    let devices: Vec<String> = sel
        .iter()
        .filter_map(|id| idx.key(*id))
        .map(|k| k.device)
        .collect();
    assert_eq!(
        devices,
        [
            "dev3", "dev13", "dev23", "dev33", "dev43", "dev53", "dev63", "dev73", "dev83", "dev93"
        ]
    );
    assert!(
        idx.select(&[("metric", "hum"), ("group", "nope")])
            .expect("select")
            .is_empty()
    );
    assert!(
        idx.select(&[("site", "s3"), ("group", "even")])
            .expect("select")
            .is_empty()
    );
    assert_eq!(idx.select(&[]), Err(IndexError::EmptySelector));
    assert_eq!(idx.label_names(), ["device", "group", "metric", "site"]);
    assert_eq!(idx.label_values("metric"), ["batt", "hum", "temp"]);
    // Same key again: same id, not created.
    let key = SeriesKey::new("dev7", "temp")
        .with_label("group", "odd")
        .with_label("site", "s7");
    let id = idx.get(&key).expect("exists");
    let mut idx = idx;
    assert_eq!(idx.get_or_create(&key), Ok((id, false)));
    assert_eq!(idx.len(), 300);
}

#[test]
fn index_limits_and_one_past() {
    let limits = IndexLimits {
        max_series: 2,
        max_labels: 2,
        max_text_len: 8,
    };
    let mut idx = SeriesIndex::new(limits);
    idx.get_or_create(&SeriesKey::new("12345678", "m"))
        .expect("8 bytes ok");
    assert_eq!(
        idx.get_or_create(&SeriesKey::new("123456789", "m")),
        Err(IndexError::TooLong {
            what: "device id",
            len: 9,
            limit: 8
        })
    );
    assert_eq!(
        idx.get_or_create(&SeriesKey::new("", "m")),
        Err(IndexError::Empty("device id"))
    );
    let two = SeriesKey::new("d", "m")
        .with_label("a", "1")
        .with_label("b", "2");
    let three = two.clone().with_label("c", "3");
    assert_eq!(
        idx.get_or_create(&three),
        Err(IndexError::TooManyLabels { count: 3, limit: 2 })
    );
    assert_eq!(
        idx.get_or_create(&SeriesKey::new("d", "m").with_label("device", "x")),
        Err(IndexError::ReservedLabel("device".into()))
    );
    idx.get_or_create(&two).expect("second series");
    assert_eq!(
        idx.get_or_create(&SeriesKey::new("d", "other")),
        Err(IndexError::TooManySeries { limit: 2 })
    );
    // Existing series are still found at the limit.
    assert_eq!(idx.get_or_create(&two), Ok((SeriesId(1), false)));
}

#[test]
fn index_restore_requires_dense_ids() {
    let mut idx = SeriesIndex::new(IndexLimits::default());
    idx.restore(SeriesId(0), SeriesKey::new("a", "m"))
        .expect("0");
    idx.restore(SeriesId(0), SeriesKey::new("a", "m"))
        .expect("replayed twice");
    assert_eq!(
        idx.restore(SeriesId(5), SeriesKey::new("b", "m")),
        Err(IndexError::IdOutOfSequence { want: 1, got: 5 })
    );
    idx.restore(SeriesId(1), SeriesKey::new("b", "m"))
        .expect("1");
    assert_eq!(
        idx.get_or_create(&SeriesKey::new("c", "m")),
        Ok((SeriesId(2), true))
    );
}

proptest! {
    /// Keys with any text (NULs, separators, multi-byte) survive the index's compact form, and
    /// distinct keys get distinct ids.
    #[test]
    fn index_keys_round_trip_and_stay_distinct(
        keys in prop::collection::vec(
            ("\\PC{1,12}", "[a-z\\x00=,]{1,6}", prop::collection::btree_map("[a-z\\x00]{1,4}", "\\PC{0,5}", 0..4)),
            1..40,
        ),
    ) {
        let mut idx = SeriesIndex::new(IndexLimits::default());
        let mut seen: BTreeMap<SeriesKey, SeriesId> = BTreeMap::new();
        for (device, metric, labels) in keys {
            let labels = labels.into_iter().filter(|(k, _)| k != "device" && k != "metric").collect();
            let key = SeriesKey { device, metric, labels };
            let (id, created) = idx.get_or_create(&key).expect("valid key");
            prop_assert_eq!(created, !seen.contains_key(&key));
            prop_assert_eq!(*seen.entry(key.clone()).or_insert(id), id);
            prop_assert_eq!(idx.key(id), Some(key.clone()));
            prop_assert_eq!(idx.get(&key), Some(id));
        }
        prop_assert_eq!(idx.len(), seen.len());
    }
}
