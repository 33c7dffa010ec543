//! Gorilla codec: round trips for every value kind, `tsz` as the oracle for floats, and corrupt
//! input returning errors instead of panicking.

use myriad_tsdb::{ChunkEncoder, DecodeError, EncodeError, Point, Value, ValueKind, decode_chunk};
use proptest::prelude::*;
use tsz::stream::{BufferedReader, BufferedWriter};
use tsz::{DataPoint, Decode, Encode, StdDecoder, StdEncoder};

fn encode(kind: ValueKind, points: &[Point]) -> Vec<u8> {
    let mut e = ChunkEncoder::new(kind);
    for p in points {
        e.push(p.ts, p.value).expect("push");
    }
    assert_eq!(e.len(), points.len());
    let bytes = e.to_bytes();
    assert_eq!(bytes.len(), e.encoded_len());
    bytes
}

fn assert_same(got: &[Point], want: &[Point]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.ts, w.ts);
        assert!(g.value.bits_eq(&w.value), "{:?} != {:?}", g.value, w.value);
    }
}

/// Strictly increasing timestamps from a start and positive deltas.
fn timestamps(start: i64, deltas: &[i64]) -> Vec<i64> {
    let mut t = start;
    let mut out = vec![t];
    for d in deltas {
        t += d;
        out.push(t);
    }
    out
}

fn ts_strategy() -> impl Strategy<Value = Vec<i64>> {
    (
        0i64..4_000_000_000_000,
        prop::collection::vec(
            prop_oneof![
                Just(10_000i64),
                9_990i64..10_010,
                1i64..100_000,
                1i64..1_000_000_000
            ],
            0..300,
        ),
    )
        .prop_map(|(s, d)| timestamps(s, &d))
}

fn float_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        (-400i64..400).prop_map(|v| v as f64 / 10.0),
        Just(f64::NAN),
        Just(-0.0),
        Just(f64::INFINITY),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Our decoder and tsz's agree bit for bit on float series, and both give back the input.
    #[test]
    fn floats_match_tsz(
        start in 0u64..4_000_000_000,
        first in 0u64..16_000,
        deltas in prop::collection::vec(prop_oneof![Just(10u64), 1u64..2_000, 1u64..1_000_000], 0..300),
        values in prop::collection::vec(float_strategy(), 301),
    ) {
        // tsz: first delta in 14 bits, later delta-of-deltas in i32.
        let mut ts = vec![start + first];
        for d in &deltas {
            ts.push(ts[ts.len() - 1] + d);
        }
        let pts: Vec<Point> = ts.iter().zip(&values)
            .map(|(&t, &v)| Point { ts: t as i64, value: Value::F64(v) }).collect();

        let ours = decode_chunk(&encode(ValueKind::F64, &pts)).expect("decode");
        prop_assert_eq!(ours.0, ValueKind::F64);
        assert_same(&ours.1, &pts);

        let mut enc = StdEncoder::new(start, BufferedWriter::new());
        for p in &pts {
            let Value::F64(v) = p.value else { unreachable!() };
            enc.encode(DataPoint::new(p.ts as u64, v));
        }
        let mut dec = StdDecoder::new(BufferedReader::new(enc.close()));
        let mut oracle = Vec::new();
        while let Ok(dp) = dec.next() {
            oracle.push(Point { ts: dp.get_time() as i64, value: Value::F64(dp.get_value()) });
        }
        assert_same(&ours.1, &oracle);
    }

    /// Floats with any timestamps (beyond what tsz can represent) round-trip.
    #[test]
    fn floats_round_trip(ts in ts_strategy(), values in prop::collection::vec(float_strategy(), 301)) {
        let pts: Vec<Point> = ts.iter().zip(&values).map(|(&t, &v)| Point { ts: t, value: Value::F64(v) }).collect();
        let (kind, got) = decode_chunk(&encode(ValueKind::F64, &pts)).expect("decode");
        prop_assert_eq!(kind, ValueKind::F64);
        assert_same(&got, &pts);
    }

    /// Integers (counters, arbitrary, extremes) round-trip.
    #[test]
    fn ints_round_trip(
        ts in ts_strategy(),
        values in prop::collection::vec(prop_oneof![any::<i64>(), -3i64..3, Just(i64::MIN), Just(i64::MAX)], 301),
        counter in any::<bool>(),
    ) {
        let mut acc = 0i64;
        let pts: Vec<Point> = ts.iter().zip(&values).map(|(&t, &v)| {
            acc = acc.wrapping_add(v.rem_euclid(5));
            Point { ts: t, value: Value::I64(if counter { acc } else { v }) }
        }).collect();
        let (kind, got) = decode_chunk(&encode(ValueKind::I64, &pts)).expect("decode");
        prop_assert_eq!(kind, ValueKind::I64);
        assert_same(&got, &pts);
    }

    /// Booleans round-trip.
    #[test]
    fn bools_round_trip(ts in ts_strategy(), values in prop::collection::vec(any::<bool>(), 301)) {
        let pts: Vec<Point> = ts.iter().zip(&values).map(|(&t, &v)| Point { ts: t, value: Value::Bool(v) }).collect();
        let (kind, got) = decode_chunk(&encode(ValueKind::Bool, &pts)).expect("decode");
        prop_assert_eq!(kind, ValueKind::Bool);
        assert_same(&got, &pts);
    }

    /// Random bytes never panic: they decode (to increasing timestamps) or give an error.
    #[test]
    fn random_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..200), kind in 0u8..4) {
        if bytes.len() >= 2 {
            bytes[0] = 1;
            bytes[1] = kind;
        }
        if let Ok((_, pts)) = decode_chunk(&bytes) {
            prop_assert!(pts.windows(2).all(|w| w[0].ts < w[1].ts));
        }
    }

    /// Truncating or flipping bits of a valid chunk gives an error or other points, never a panic.
    #[test]
    fn corrupted_chunks_never_panic(ts in ts_strategy(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let pts: Vec<Point> = ts.iter().map(|&t| Point { ts: t, value: Value::F64(t as f64 / 7.0) }).collect();
        let bytes = encode(ValueKind::F64, &pts);
        let cut_at = cut.index(bytes.len());
        let truncated = decode_chunk(&bytes[..cut_at]);
        prop_assert!(truncated.is_err(), "a strict prefix must not decode: {truncated:?}");
        let mut flipped = bytes.clone();
        let i = flip.index(flipped.len());
        flipped[i] ^= 1 << bit;
        let _ = decode_chunk(&flipped);
    }
}

#[test]
fn empty_chunk_round_trips() {
    let bytes = ChunkEncoder::new(ValueKind::I64).to_bytes();
    assert_eq!(bytes.len(), 6);
    assert_eq!(decode_chunk(&bytes), Ok((ValueKind::I64, vec![])));
}

#[test]
fn push_refuses_non_increasing_and_wrong_kind() {
    let mut e = ChunkEncoder::new(ValueKind::F64);
    e.push(1000, Value::F64(1.0)).expect("first");
    assert_eq!(
        e.push(1000, Value::F64(2.0)),
        Err(EncodeError::NotIncreasing {
            ts: 1000,
            last: 1000
        })
    );
    assert_eq!(
        e.push(999, Value::F64(2.0)),
        Err(EncodeError::NotIncreasing {
            ts: 999,
            last: 1000
        })
    );
    assert_eq!(
        e.push(2000, Value::I64(2)),
        Err(EncodeError::KindMismatch {
            want: ValueKind::F64,
            got: ValueKind::I64
        })
    );
    assert_eq!(e.len(), 1);
    assert_eq!(e.last_ts(), Some(1000));
}

#[test]
fn decode_errors_are_typed() {
    assert_eq!(decode_chunk(&[1, 0, 0]), Err(DecodeError::ShortHeader));
    assert_eq!(
        decode_chunk(&[9, 0, 0, 0, 0, 0]),
        Err(DecodeError::Version(9))
    );
    assert_eq!(decode_chunk(&[1, 7, 0, 0, 0, 0]), Err(DecodeError::Kind(7)));
    // A count of 4 billion in 10 bytes is refused before allocating.
    let mut b = vec![1, 0, 0xff, 0xff, 0xff, 0xff];
    b.extend_from_slice(&[0; 10]);
    assert!(matches!(
        decode_chunk(&b),
        Err(DecodeError::CountTooLarge { .. })
    ));
    // Trailing whole bytes after the last point are refused.
    let mut e = ChunkEncoder::new(ValueKind::Bool);
    e.push(5, Value::Bool(true)).expect("push");
    let mut bytes = e.to_bytes();
    bytes.push(0);
    assert!(matches!(
        decode_chunk(&bytes),
        Err(DecodeError::Trailing(_))
    ));
}

/// Regular 10 s sensor data with 0.1-step values compresses as Gorilla should: about 1 bit per
/// timestamp plus the XOR bits, and a constant counter to ~2 bits a point.
#[test]
fn regular_series_are_compact() {
    let n = 8640;
    let mut e = ChunkEncoder::new(ValueKind::F64);
    let mut t = 20.0f64;
    for i in 0..n {
        t = ((t * 10.0).round() + [(-1.0), 0.0, 1.0][i % 3]) / 10.0;
        e.push(1_700_000_000_000 + i as i64 * 10_000, Value::F64(t))
            .expect("push");
    }
    let per_point = e.encoded_len() as f64 / n as f64;
    assert!(per_point < 5.0, "{per_point} B/point");
    let mut c = ChunkEncoder::new(ValueKind::I64);
    for i in 0..n {
        c.push(
            1_700_000_000_000 + i as i64 * 10_000,
            Value::I64(i as i64 * 3),
        )
        .expect("push");
    }
    assert!(c.encoded_len() < n / 4 + 32, "{} bytes", c.encoded_len());
}
