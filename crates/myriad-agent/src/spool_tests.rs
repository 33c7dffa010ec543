use super::*;
use crate::fs::RealFs;
use crate::memfs::MemFs;
use proptest::prelude::*;

fn small() -> SpoolConfig {
    SpoolConfig {
        max_total_bytes: 16 * 1024,
        segment_bytes: 4 * 1024,
        max_record_bytes: 1024,
    }
}

fn dir() -> &'static Path {
    Path::new("/spool")
}

/// Every record after `after`, read in pages.
fn read_all<F: LogFs>(s: &mut Spool<F>) -> Vec<Peeked> {
    let mut out: Vec<Peeked> = Vec::new();
    loop {
        let after = out.last().map_or(0, |p| p.seq);
        let page = s.peek_after(after, 7, 3000).unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

fn payload(id: u64, len: usize) -> Vec<u8> {
    id.to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(len.max(8))
        .collect()
}

#[test]
fn append_peek_ack_reopen_on_a_real_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("spool");
    let mut s = Spool::open(RealFs, &d, small()).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.append(b"one", 1).unwrap(), 1);
    assert_eq!(
        s.append_batch(&[(b"two", 2), (b"three", 3)]).unwrap(),
        2..=3
    );
    let p = s.peek(2, usize::MAX).unwrap();
    assert_eq!(
        p.iter()
            .map(|p| (p.seq, p.points, p.payload.as_slice()))
            .collect::<Vec<_>>(),
        [(1, 1, &b"one"[..]), (2, 2, &b"two"[..])]
    );
    // Peek changes nothing; peek_after pipelines.
    assert_eq!(s.peek(1, 0).unwrap()[0].seq, 1);
    assert_eq!(s.peek_after(2, 10, usize::MAX).unwrap()[0].seq, 3);
    s.ack(2).unwrap();
    assert_eq!(s.stats().pending_records, 1);
    drop(s);
    let mut s = Spool::open(RealFs, &d, small()).unwrap();
    assert_eq!(s.open_report(), &OpenReport::default());
    let all = read_all(&mut s);
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].seq, all[0].payload.as_slice()), (3, &b"three"[..]));
    assert_eq!(s.append(b"four", 1).unwrap(), 4);
    s.ack(4).unwrap();
    assert!(s.is_empty());
    // Everything acknowledged: no segment left, and the sequence goes on after a reopen.
    assert_eq!(s.stats().segments, 0);
    drop(s);
    let mut s = Spool::open(RealFs, &d, small()).unwrap();
    assert_eq!(s.append(b"five", 1).unwrap(), 5);
    assert!(matches!(
        s.ack(6),
        Err(SpoolError::AckBeyondEnd { seq: 6, last: 5 })
    ));
}

#[test]
fn config_bounds_one_past() {
    let ok = SpoolConfig::default();
    ok.validate().unwrap();
    small().validate().unwrap();
    let bad = [
        SpoolConfig {
            max_record_bytes: MAX_RECORD_BYTES + 1,
            ..ok
        },
        SpoolConfig {
            max_record_bytes: 0,
            ..ok
        },
        SpoolConfig {
            segment_bytes: MIN_SEGMENT_BYTES - 1,
            max_record_bytes: 100,
            ..ok
        },
        SpoolConfig {
            segment_bytes: MAX_SEGMENT_BYTES + 1,
            max_total_bytes: MAX_TOTAL_BYTES,
            ..ok
        },
        SpoolConfig {
            // One byte short of holding a largest record.
            segment_bytes: SEGMENT_HEADER + FRAME_HEADER + u64::from(MAX_RECORD_BYTES) - 1,
            ..ok
        },
        SpoolConfig {
            max_total_bytes: 2 * ok.segment_bytes - 1,
            ..ok
        },
        SpoolConfig {
            max_total_bytes: MAX_TOTAL_BYTES + 1,
            ..ok
        },
    ];
    for c in bad {
        assert!(matches!(c.validate(), Err(SpoolError::Config(_))), "{c:?}");
    }
    SpoolConfig {
        segment_bytes: SEGMENT_HEADER + FRAME_HEADER + u64::from(MAX_RECORD_BYTES),
        ..ok
    }
    .validate()
    .unwrap();
    SpoolConfig {
        max_total_bytes: 2 * ok.segment_bytes,
        ..ok
    }
    .validate()
    .unwrap();
}

#[test]
fn record_and_batch_limits_one_past() {
    let fs = MemFs::new(1);
    let mut s = Spool::open(fs, dir(), small()).unwrap();
    assert!(matches!(
        s.append(&[0; 1025], 1),
        Err(SpoolError::RecordTooLarge {
            len: 1025,
            max: 1024
        })
    ));
    assert_eq!(s.append(&[0; 1024], 1).unwrap(), 1);
    let rec: &[u8] = b"x";
    let batch = vec![(rec, 1); MAX_BATCH_RECORDS + 1];
    assert!(matches!(
        s.append_batch(&batch),
        Err(SpoolError::BatchTooLarge(n)) if n == MAX_BATCH_RECORDS + 1
    ));
    // A failed check wrote nothing.
    assert_eq!(s.stats().next_seq, 2);
    // The default limit: 256 KiB passes, one more byte does not.
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Spool::open(RealFs, tmp.path(), SpoolConfig::default()).unwrap();
    let big = vec![7u8; MAX_RECORD_BYTES as usize];
    assert_eq!(s.append(&big, 1).unwrap(), 1);
    assert!(matches!(
        s.append(&[big.as_slice(), &[0]].concat(), 1),
        Err(SpoolError::RecordTooLarge { .. })
    ));
    assert_eq!(s.peek(1, 1).unwrap()[0].payload, big);
    // Peek caps its record count.
    let n = MAX_PEEK_RECORDS + 5;
    let tiny: &[u8] = b"t";
    for chunk in 0..n.div_ceil(MAX_BATCH_RECORDS) {
        let k = MAX_BATCH_RECORDS.min(n - chunk * MAX_BATCH_RECORDS);
        s.append_batch(&vec![(tiny, 1); k]).unwrap();
    }
    assert_eq!(
        s.peek_after(1, usize::MAX, usize::MAX).unwrap().len(),
        MAX_PEEK_RECORDS
    );
}

#[test]
fn segments_roll_and_acked_ones_are_removed() {
    let fs = MemFs::new(2);
    let mut s = Spool::open(fs.clone(), dir(), small()).unwrap();
    for i in 0..25 {
        s.append(&payload(i, 500), 1).unwrap();
    }
    // 520 bytes a frame, 7 per 4 KiB segment.
    let st = s.stats();
    assert_eq!(
        (st.segments, st.pending_records, st.dropped_records),
        (4, 25, 0)
    );
    assert_eq!(st.total_bytes, 4 * SEGMENT_HEADER + 25 * 520);
    s.ack(13).unwrap();
    assert_eq!(s.stats().segments, 3, "8..=14 is not fully acknowledged");
    s.ack(14).unwrap();
    assert_eq!(s.stats().segments, 2);
    let names = fs.list(dir()).unwrap();
    assert_eq!(names.iter().filter(|n| n.ends_with(".seg")).count(), 2);
    assert!(
        names.contains(&"000000000000000f.seg".to_string()),
        "{names:?}"
    );
    assert_eq!(s.peek(1, 0).unwrap()[0].seq, 15);
}

#[test]
fn the_cap_drops_oldest_segments_and_counts_them() {
    let fs = MemFs::new(3);
    let mut s = Spool::open(fs.clone(), dir(), small()).unwrap();
    // 1044-byte frames: 3 per segment (24 + 3 * 1044 = 3156), 15 fit in 16 KiB (5 segments).
    for i in 0..15 {
        s.append(&payload(i, 1024), 10).unwrap();
    }
    assert_eq!(s.stats().dropped_records, 0);
    s.ack(2).unwrap(); // a partly acknowledged oldest segment
    s.append(&payload(15, 1024), 10).unwrap();
    let st = s.stats();
    // The oldest segment (1..=3) was dropped: only record 3 was unacknowledged.
    assert_eq!(
        (st.dropped_records, st.dropped_points, st.acked),
        (1, 10, 3)
    );
    assert!(st.total_bytes <= small().max_total_bytes, "{st:?}");
    for i in 16..40 {
        s.append(&payload(i, 1024), 10).unwrap();
        assert!(s.stats().total_bytes <= small().max_total_bytes);
    }
    let st = s.stats();
    assert_eq!(st.dropped_records + st.pending_records, 40 - 2);
    assert_eq!(st.dropped_points, st.dropped_records * 10);
    let all = read_all(&mut s);
    // What is left is the newest records, in order, nothing missing in between.
    assert_eq!(all.last().unwrap().seq, 40);
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(all.len() as u64, st.pending_records);
    for p in &all {
        assert_eq!(p.payload, payload(p.seq - 1, 1024));
    }
    // The counters are persisted.
    drop(s);
    let s = Spool::open(fs, dir(), small()).unwrap();
    assert_eq!(s.stats().dropped_records, st.dropped_records);
    assert_eq!(s.stats().dropped_points, st.dropped_points);
    assert_eq!(s.stats().pending_records, st.pending_records);
}

#[test]
fn a_torn_or_damaged_tail_is_cut_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut s = Spool::open(RealFs, d, small()).unwrap();
    for i in 0..5 {
        s.append(&payload(i, 100), 1).unwrap();
    }
    drop(s);
    let seg = d.join("0000000000000001.seg");
    let mut b = std::fs::read(&seg).unwrap();
    let good = b.len();
    b.extend_from_within(good - 60..good); // a half frame
    std::fs::write(&seg, &b).unwrap();
    let mut s = Spool::open(RealFs, d, small()).unwrap();
    assert_eq!(
        s.open_report(),
        &OpenReport {
            segments_cut: 1,
            bytes_cut: 60,
            ..OpenReport::default()
        }
    );
    assert_eq!(read_all(&mut s).len(), 5);
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, good);
    // Appends go on after the cut.
    assert_eq!(s.append(b"six", 1).unwrap(), 6);
    drop(s);
    // A flipped byte in record 3: records 1 and 2 stay, the rest of that segment is cut,
    // the later segment (record 6) stays.
    let mut b = std::fs::read(&seg).unwrap();
    let frame = (FRAME_HEADER + 100) as usize;
    b[SEGMENT_HEADER as usize + 2 * frame + 30] ^= 1;
    std::fs::write(&seg, &b).unwrap();
    let mut s = Spool::open(RealFs, d, small()).unwrap();
    assert_eq!(s.open_report().segments_cut, 1);
    let seqs: Vec<u64> = read_all(&mut s).iter().map(|p| p.seq).collect();
    assert_eq!(seqs, [1, 2, 6]);
    assert_eq!(s.append(b"seven", 1).unwrap(), 7);
}

#[test]
fn a_damaged_meta_file_sends_again_rather_than_loses() {
    let fs = MemFs::new(4);
    let mut s = Spool::open(fs.clone(), dir(), small()).unwrap();
    for i in 0..10 {
        s.append(&payload(i, 100), 1).unwrap();
    }
    s.ack(4).unwrap();
    drop(s);
    let meta = dir().join("spool.meta");
    let mut b = fs.contents(&meta).unwrap();
    b[14] ^= 0xFF;
    fs.put(&meta, &b);
    let mut s = Spool::open(fs.clone(), dir(), small()).unwrap();
    assert!(s.open_report().meta_damaged);
    assert_eq!(read_all(&mut s).first().unwrap().seq, 1);
    // A meta file too long to be one: also damaged, no error.
    fs.put(&meta, &vec![0u8; 10_000]);
    assert!(
        Spool::open(fs, dir(), small())
            .unwrap()
            .open_report()
            .meta_damaged
    );
}

#[test]
fn points_encode_to_the_batch_form() {
    let p = |ts, m: Vec<(&str, MetricValue)>| Point {
        ts_ms: ts,
        metrics: m.into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
    };
    let json = encode_points(&[
        p(
            1733350000000,
            vec![
                ("temp", MetricValue::F64(20.5)),
                ("on", MetricValue::Bool(true)),
            ],
        ),
        p(1733350001000, vec![("temp", MetricValue::F64(-1e-7))]),
    ])
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"points": [
            {"ts": 1733350000000u64, "temp": 20.5, "on": true},
            {"ts": 1733350001000u64, "temp": -1e-7}
        ]})
    );
    let name = "a".repeat(MAX_METRIC_NAME);
    let ok = p(1, vec![(&name, MetricValue::F64(1.0))]);
    encode_points(std::slice::from_ref(&ok)).unwrap();
    let long = "a".repeat(MAX_METRIC_NAME + 1);
    for (bad, what) in [
        (
            vec![p(1, vec![(&long, MetricValue::F64(1.0))])],
            "long name",
        ),
        (vec![p(1, vec![("ts", MetricValue::F64(1.0))])], "ts"),
        (vec![p(1, vec![("a b", MetricValue::F64(1.0))])], "space"),
        (vec![p(1, vec![("", MetricValue::F64(1.0))])], "empty"),
        (vec![p(1, vec![("x", MetricValue::F64(f64::NAN))])], "nan"),
        (
            vec![p(1, vec![("x", MetricValue::F64(f64::INFINITY))])],
            "inf",
        ),
        (
            vec![p(
                1,
                vec![
                    ("x", MetricValue::F64(1.0)),
                    ("x", MetricValue::Bool(false)),
                ],
            )],
            "dup",
        ),
        (vec![p(1, vec![])], "no metrics"),
        (vec![], "no points"),
        (vec![ok.clone(); MAX_POINTS + 1], "1001 points"),
    ] {
        assert!(encode_points(&bad).is_err(), "{what}");
    }
    encode_points(&vec![ok.clone(); MAX_POINTS]).unwrap();
    let many: Vec<(String, MetricValue)> = (0..=MAX_METRICS)
        .map(|i| (format!("m{i}"), MetricValue::Bool(true)))
        .collect();
    let mut pt = Point {
        ts_ms: 1,
        metrics: many,
    };
    assert!(matches!(
        encode_points(std::slice::from_ref(&pt)),
        Err(PointError::Metrics { count: 65, .. })
    ));
    pt.metrics.pop();
    encode_points(&[pt.clone()]).unwrap();
    // Through the spool.
    let mut s = Spool::open(MemFs::new(5), dir(), SpoolConfig::default()).unwrap();
    let seqs = s.append_points(&[pt.clone(), pt]).unwrap();
    let got = s.peek(1, usize::MAX).unwrap();
    assert_eq!((got[0].seq, got[0].points), (*seqs.start(), 2));
    assert_eq!(seqs, 1..=1);
}

#[test]
fn points_split_into_records_under_the_limits() {
    let pt = |ts: u64| Point {
        ts_ms: ts,
        metrics: vec![("temp".to_string(), MetricValue::F64(ts as f64 / 3.0))],
    };
    let points: Vec<Point> = (0..2500).map(pt).collect();
    // Enough room: split by the point count only.
    let recs = encode_batches(&points, MAX_RECORD_BYTES as usize).unwrap();
    assert_eq!(
        recs.iter().map(|r| r.1).collect::<Vec<_>>(),
        [1000, 1000, 500]
    );
    // Small records: each under the byte limit, every point once, in order.
    for max in [60, 200, 1000, 4096] {
        let recs = encode_batches(&points, max).unwrap();
        let mut ts = Vec::new();
        for (bytes, n) in &recs {
            assert!(bytes.len() <= max, "{} > {max}", bytes.len());
            let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            let pts = v["points"].as_array().unwrap();
            assert_eq!(pts.len(), *n as usize);
            ts.extend(pts.iter().map(|p| p["ts"].as_u64().unwrap()));
        }
        assert_eq!(ts, (0..2500).collect::<Vec<u64>>());
    }
    // A point that cannot fit alone, one byte past: refused.
    let one = encode_points(&[pt(7)]).unwrap();
    assert_eq!(encode_batches(&[pt(7)], one.len()).unwrap()[0].0, one);
    assert!(matches!(
        encode_batches(&[pt(7)], one.len() - 1),
        Err(PointError::TooLarge { index: 0, .. })
    ));
    assert!(encode_batches(&[], 100).unwrap().is_empty());
    // Through the spool: 2,500 points in small records, one call.
    let config = SpoolConfig {
        max_record_bytes: 4096,
        ..SpoolConfig::default()
    };
    let mut s = Spool::open(MemFs::new(8), dir(), config).unwrap();
    let seqs = s.append_points(&points).unwrap();
    let all = read_all(&mut s);
    assert_eq!(all.len() as u64, seqs.end() - seqs.start() + 1);
    assert_eq!(all.iter().map(|p| u64::from(p.points)).sum::<u64>(), 2500);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any bytes in a segment file or the meta file: open succeeds, and the spool works.
    #[test]
    fn garbage_on_disk_opens_cleanly(
        seg in proptest::collection::vec(any::<u8>(), 0..3000),
        meta in proptest::collection::vec(any::<u8>(), 0..80),
        name in 1u64..50,
        valid_header in any::<bool>(),
    ) {
        let fs = MemFs::new(name);
        let mut bytes = seg;
        if valid_header {
            let mut b = segment_header(name).to_vec();
            b.extend_from_slice(&bytes);
            bytes = b;
        }
        fs.put(&dir().join(segment_name(name)), &bytes);
        fs.put(&dir().join("spool.meta"), &meta);
        fs.put(&dir().join("0000000000000000.seg"), &bytes);
        let mut s = Spool::open(fs.clone(), dir(), small()).unwrap();
        let before = read_all(&mut s);
        prop_assert!(before.windows(2).all(|w| w[0].seq < w[1].seq));
        let seq = s.append(b"after", 1).unwrap();
        prop_assert!(before.iter().all(|p| p.seq < seq));
        let after = read_all(&mut s);
        prop_assert_eq!(after.last().map(|p| p.payload.clone()), Some(b"after".to_vec()));
        drop(s);
        let mut s = Spool::open(fs, dir(), small()).unwrap();
        prop_assert_eq!(read_all(&mut s), after);
    }

    /// A real segment with random damage: open keeps a prefix of its records.
    #[test]
    fn damaged_segments_keep_a_prefix(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let fs = MemFs::new(9);
        let mut s = Spool::open(fs.clone(), dir(), small()).unwrap();
        for i in 0..6 {
            s.append(&payload(i, 30 + 20 * i as usize), i as u32).unwrap();
        }
        let want = read_all(&mut s);
        drop(s);
        let path = dir().join(segment_name(1));
        let mut b = fs.contents(&path).unwrap();
        for (i, x) in &flips {
            let i = i.index(b.len());
            b[i] ^= x;
        }
        b.truncate(cut.index(b.len() + 1));
        fs.put(&path, &b);
        let mut s = Spool::open(fs, dir(), small()).unwrap();
        let got = read_all(&mut s);
        prop_assert!(got.len() <= want.len());
        prop_assert_eq!(&got[..], &want[..got.len()]);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(u16, u8)>),
    Peek(u8, u16),
    Ack(prop::sample::Index),
    Reopen,
    Cut(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec((8u16..1025, 0u8..5), 1..5).prop_map(Op::Append),
        2 => (1u8..10, 0u16..4000).prop_map(|(n, b)| Op::Peek(n, b)),
        3 => any::<prop::sample::Index>().prop_map(Op::Ack),
        1 => Just(Op::Reopen),
        2 => (0u8..30).prop_map(Op::Cut),
    ]
}

struct Model {
    fs: MemFs,
    spool: Option<Spool<MemFs>>,
    /// Unacknowledged records: (seq, payload, points).
    pending: Vec<(u64, Vec<u8>, u32)>,
    next_seq: u64,
    dropped: (u64, u64),
    ids: u64,
    /// The operation the power cut interrupted.
    uncertain_append: Vec<(Vec<u8>, u32)>,
    uncertain_ack: u64,
}

fn as_tuples(v: &[Peeked]) -> Vec<(u64, Vec<u8>, u32)> {
    v.iter()
        .map(|p| (p.seq, p.payload.clone(), p.points))
        .collect()
}

impl Model {
    fn spool(&mut self) -> &mut Spool<MemFs> {
        self.spool.as_mut().expect("open")
    }

    /// The power was cut during the last operation: reboot and check what survived.
    fn reboot(&mut self) -> Result<(), TestCaseError> {
        self.spool = None;
        self.fs.crash();
        let mut s = loop {
            match Spool::open(self.fs.clone(), dir(), small()) {
                Ok(s) => break s,
                Err(_) => {
                    prop_assert!(self.fs.is_dead(), "open failed with the power on");
                    self.fs.crash();
                }
            }
        };
        // Reading may hit a cut armed earlier: disarm it for the check.
        self.fs.disarm();
        let got = as_tuples(&read_all(&mut s));
        let st = s.stats();
        let mut all = self.pending.clone();
        for (i, (p, pts)) in self.uncertain_append.drain(..).enumerate() {
            all.push((self.next_seq + i as u64, p, pts));
        }
        // What survived is a contiguous run of `all` holding every confirmed record from
        // some point on (a prefix may be acknowledged or dropped; a suffix of the
        // interrupted append may be missing).
        let start = match got.first() {
            Some(first) => all.iter().position(|r| r == first),
            None => Some(all.len().min(self.pending.len())),
        };
        prop_assert!(
            start.is_some(),
            "unknown first record {:?}",
            got.first().map(|r| r.0)
        );
        let start = start.unwrap_or(0);
        prop_assert!(start + got.len() <= all.len());
        prop_assert_eq!(&all[start..start + got.len()], &got[..]);
        prop_assert!(
            start + got.len() >= self.pending.len(),
            "confirmed records lost at the end: kept {}..{} of {} confirmed",
            start,
            start + got.len(),
            self.pending.len()
        );
        let removed = &all[..start];
        prop_assert!(st.dropped_records >= self.dropped.0);
        let newly_dropped = st.dropped_records - self.dropped.0;
        let unexplained = removed.iter().filter(|r| r.0 > self.uncertain_ack).count() as u64;
        prop_assert!(
            unexplained <= newly_dropped,
            "{} records gone, {} dropped",
            unexplained,
            newly_dropped
        );
        prop_assert!(st.next_seq >= self.next_seq);
        prop_assert!(got.iter().all(|r| r.0 < st.next_seq));
        self.pending = got;
        self.next_seq = st.next_seq;
        self.dropped = (st.dropped_records, st.dropped_points);
        self.uncertain_ack = 0;
        prop_assert_eq!(st.pending_records, self.pending.len() as u64);
        self.spool = Some(s);
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append(recs) => {
                let recs: Vec<(Vec<u8>, u32)> = recs
                    .iter()
                    .map(|&(len, pts)| {
                        self.ids += 1;
                        (payload(self.ids, len as usize), u32::from(pts))
                    })
                    .collect();
                let refs: Vec<(&[u8], u32)> =
                    recs.iter().map(|(p, n)| (p.as_slice(), *n)).collect();
                match self.spool().append_batch(&refs) {
                    Ok(range) => {
                        prop_assert_eq!(*range.start(), self.next_seq);
                        for (i, (p, n)) in recs.into_iter().enumerate() {
                            self.pending.push((self.next_seq + i as u64, p, n));
                        }
                        self.next_seq = range.end() + 1;
                        let st = self.spool().stats();
                        let d = st.dropped_records - self.dropped.0;
                        prop_assert!(d as usize <= self.pending.len());
                        let gone: Vec<_> = self.pending.drain(..d as usize).collect();
                        let pts: u64 = gone.iter().map(|r| u64::from(r.2)).sum();
                        prop_assert_eq!(st.dropped_points - self.dropped.1, pts);
                        self.dropped = (st.dropped_records, st.dropped_points);
                        prop_assert!(st.total_bytes <= small().max_total_bytes);
                    }
                    Err(_) => {
                        prop_assert!(self.fs.is_dead());
                        self.uncertain_append = recs;
                        return self.reboot();
                    }
                }
            }
            Op::Peek(n, bytes) => match self.spool().peek(n as usize, bytes as usize) {
                Ok(got) => {
                    let got = as_tuples(&got);
                    let k = got.len();
                    prop_assert!(k <= n as usize);
                    prop_assert_eq!(k == 0, self.pending.is_empty());
                    prop_assert_eq!(&got[..], &self.pending[..k]);
                    // As many as fit in the byte budget (at least one).
                    if k < n as usize && k < self.pending.len() {
                        let used: usize = got.iter().map(|r| r.1.len()).sum();
                        prop_assert!(used + self.pending[k].1.len() > bytes as usize);
                    }
                }
                Err(_) => {
                    prop_assert!(self.fs.is_dead());
                    return self.reboot();
                }
            },
            Op::Ack(i) => {
                if self.pending.is_empty() {
                    return Ok(());
                }
                let seq = self.pending[i.index(self.pending.len())].0;
                match self.spool().ack(seq) {
                    Ok(()) => self.pending.retain(|r| r.0 > seq),
                    Err(_) => {
                        prop_assert!(self.fs.is_dead());
                        self.uncertain_ack = seq;
                        return self.reboot();
                    }
                }
            }
            Op::Reopen => {
                self.spool = None;
                match Spool::open(self.fs.clone(), dir(), small()) {
                    Ok(mut s) => {
                        self.fs.disarm();
                        let got = as_tuples(&read_all(&mut s));
                        prop_assert_eq!(&got, &self.pending);
                        prop_assert_eq!(s.stats().next_seq, self.next_seq);
                        prop_assert_eq!(
                            (s.stats().dropped_records, s.stats().dropped_points),
                            self.dropped
                        );
                        self.spool = Some(s);
                    }
                    Err(_) => {
                        prop_assert!(self.fs.is_dead());
                        return self.reboot();
                    }
                }
            }
            Op::Cut(n) => self.fs.cut_after(u64::from(n)),
        }
        prop_assert_eq!(
            self.spool().stats().pending_records,
            self.pending.len() as u64
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random appends, peeks, acks, reopens and power cuts after any file operation,
    /// against a model: nothing appended (and returned) is lost unless counted as dropped;
    /// nothing acknowledged comes back; order and sequence numbers hold.
    #[test]
    fn model_with_power_cuts(ops in proptest::collection::vec(op(), 1..60), seed in any::<u64>()) {
        let fs = MemFs::new(seed);
        let spool = Spool::open(fs.clone(), dir(), small()).unwrap();
        let mut m = Model {
            fs,
            spool: Some(spool),
            pending: Vec::new(),
            next_seq: 1,
            dropped: (0, 0),
            ids: 0,
            uncertain_append: Vec::new(),
            uncertain_ack: 0,
        };
        for op in ops {
            m.apply(op)?;
        }
        m.fs.disarm();
        m.apply(Op::Reopen)?;
    }
}

#[test]
fn a_cut_after_every_operation_of_a_scenario() {
    // The scenario: fill past the cap, ack some, reopen; cut the power after the n-th file
    // operation for every n, then check the invariants on the rebooted spool.
    type Run = (MemFs, Vec<(u64, Vec<u8>, u32)>, u64, bool);
    let run = |cut: Option<u64>| -> Run {
        let fs = MemFs::new(cut.unwrap_or(0));
        let mut s = Spool::open(fs.clone(), dir(), small()).unwrap();
        if let Some(n) = cut {
            fs.cut_after(n);
        }
        let mut confirmed = Vec::new();
        for i in 0..30u64 {
            let p = payload(i, 900);
            match s.append(&p, 1) {
                Ok(seq) => confirmed.push((seq, p, 1)),
                Err(_) => return (fs, confirmed, 0, true),
            }
            if i % 7 == 6 {
                let acked = confirmed[confirmed.len() - 3].0;
                if s.ack(acked).is_err() {
                    return (fs, confirmed, acked, true);
                }
                confirmed.retain(|r| r.0 > acked);
            }
        }
        (fs, confirmed, 0, false)
    };
    let (_, _, _, cut) = run(None);
    assert!(!cut);
    let mut n = 0;
    loop {
        let (fs, confirmed, maybe_acked, was_cut) = run(Some(n));
        if !was_cut {
            break;
        }
        fs.crash();
        let mut s = Spool::open(fs, dir(), small()).unwrap();
        let got = as_tuples(&read_all(&mut s));
        // The confirmed records that were not dropped are all there, in order; anything
        // else there is a record of the interrupted call or one of `full`'s.
        let last_confirmed = confirmed.last().map_or(0, |r| r.0);
        let dropped = s.stats().dropped_records;
        let missing = confirmed
            .iter()
            .filter(|r| r.0 > maybe_acked && !got.contains(r))
            .count() as u64;
        assert!(
            missing <= dropped,
            "cut at {n}: {missing} missing, {dropped} dropped"
        );
        assert!(got.windows(2).all(|w| w[1].0 == w[0].0 + 1), "cut at {n}");
        assert!(
            got.iter()
                .all(|r| r.0 > last_confirmed || confirmed.contains(r)),
            "cut at {n}"
        );
        // Sequence numbers are not reused: record i has sequence number i + 1.
        assert!(
            got.iter().all(|r| r.1 == payload(r.0 - 1, 900)),
            "cut at {n}"
        );
        n += 1;
    }
    assert!(n > 100, "only {n} operations");
}

/// The cores move to the thread (or blocking task) that owns them.
#[test]
fn the_cores_are_send() {
    fn send<T: Send>() {}
    send::<Spool<RealFs>>();
    send::<Spool<MemFs>>();
    send::<crate::dedup::Dedup<RealFs>>();
    send::<crate::shadow::ShadowSync>();
    send::<crate::replay::Replay>();
    send::<crate::backoff::Backoff>();
}
