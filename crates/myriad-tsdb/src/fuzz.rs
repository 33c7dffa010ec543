//! Fuzz harnesses for the store's hostile inputs (feature `fuzz`): the fuzz targets
//! `tsdb_files` and `promql` in `fuzz/` call these, and `tests/fuzz_corpus.rs` replays their
//! seed corpora through them, so a plain `cargo test` checks every committed input.
//!
//! * [`tsdb_files`]: bytes from disk, as a WAL segment ([`Engine::replay`]) and as a block file
//!   ([`BlockView::open`], [`SealedBlock::from_bytes`], loaded into a [`Db`]), reading every
//!   series' points and rollups. The first byte picks the form; two of the four forms first fix
//!   the CRCs up (WAL records framed from the input, block payload and index CRCs recomputed),
//!   so mutations reach the parsers behind the checksums instead of stopping at them.
//! * [`promql`]: query text through the PromQL subset ([`Query::parse`], [`parse_selector`],
//!   instant and range evaluation, the series and label APIs, [`parse_time`] and
//!   [`parse_duration`]) over a small [`Db`] with sealed blocks and a head.
//!
//! Both panic (so the fuzzer records the input) when an invariant fails; errors are fine.
//!
//! `promql-parser` panics on some inputs (a range or offset like `[1e99]` overflowing
//! `Duration`); [`crate::promql`] catches that at its parse entry point and answers a parse
//! error. libFuzzer's panic hook aborts even on a panic that is caught, so the `promql` target
//! installs [`install_panic_hook`]: the harness first runs the third-party parser alone, and
//! when that panics it only checks that our entry points answer an error for the text; a panic
//! anywhere else still aborts.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};

use crate::block::{
    BlockView, ENTRY_LEN, FOOTER_LEN, HEADER_LEN, HOUR_MS, MINUTE_MS, SealedBlock, SealedSeries,
};
use crate::db::{Agg, Db, DbConfig};
use crate::engine::Engine;
use crate::head::HeadConfig;
use crate::index::{IndexLimits, SeriesId, SeriesKey};
use crate::promql::{
    self, Instant, PromLimits, Query, Window, eval_instant, eval_range, parse_duration,
    parse_selector, parse_time,
};
use crate::value::{Point, Value};
use crate::wal::{self, RECORD_HEADER_LEN, WAL_VERSION};

/// Form byte (low two bits of the first input byte) of [`tsdb_files`]: the rest is a WAL
/// segment as is.
pub const FORM_WAL: u8 = 0;
/// The rest is WAL record bodies, each `u16 length` (LE) + bytes, framed with a valid header
/// and CRC.
pub const FORM_WAL_FRAMED: u8 = 1;
/// The rest is a block file as is.
pub const FORM_BLOCK: u8 = 2;
/// The rest is a block file whose CRCs (v1 trailer; v2 payloads and index) are recomputed.
pub const FORM_BLOCK_FIXED: u8 = 3;

/// Start of the data the seeds and the `promql` Db use (ms).
pub const T0: i64 = 1_700_000_000_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

/// Runs one `tsdb_files` input (see the module docs).
pub fn tsdb_files(data: &[u8]) {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    match form & 3 {
        FORM_WAL => replay(rest),
        FORM_WAL_FRAMED => replay(&frame_wal(rest)),
        FORM_BLOCK => block(rest),
        _ => block(&fix_block_crcs(rest)),
    }
}

/// WAL records with valid headers around the bodies in `data` (see [`FORM_WAL_FRAMED`]).
pub fn frame_wal(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 2);
    while let [a, b, rest @ ..] = data {
        let n = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
        let (body, after) = rest.split_at(n);
        let mut rec = Vec::with_capacity(1 + n);
        rec.push(WAL_VERSION);
        rec.extend_from_slice(body);
        out.extend_from_slice(&(rec.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&rec).to_le_bytes());
        out.extend_from_slice(&rec);
        data = after;
    }
    out.extend_from_slice(data);
    out
}

fn replay(log: &[u8]) {
    let mut engine = Engine::new(IndexLimits::default(), HeadConfig::default());
    let report = engine.replay(log);
    assert_eq!(report.valid_len + report.dropped_bytes, log.len());
    assert_eq!(
        report.stop.is_none(),
        report.dropped_bytes == 0,
        "{report:?}"
    );
    assert!(
        report.series + report.series_refused <= report.records,
        "{report:?}"
    );
    // The valid prefix replays the same, to its end.
    let mut again = Engine::new(IndexLimits::default(), HeadConfig::default());
    let second = again.replay(&log[..report.valid_len]);
    assert_eq!(second.stop, None);
    assert_eq!(
        (second.records, second.series, second.points),
        (report.records, report.series, report.points)
    );
    // What the head holds seals into blocks that read back the same.
    for id in (0..engine.index().len() as u32).map(SeriesId) {
        let Some((kind, points)) = engine.head_mut().seal(id) else {
            continue;
        };
        assert!(points.windows(2).all(|w| w[0].ts < w[1].ts), "head order");
        let sealed = SealedSeries::encode(kind, &points).expect("sealed points encode");
        let back = sealed.points().expect("a sealed series decodes");
        assert_eq!(back.len(), points.len());
        for (a, b) in back.iter().zip(&points) {
            assert_eq!(a.ts, b.ts);
            assert!(a.value.bits_eq(&b.value), "{a:?} != {b:?}");
        }
        sealed.rollups(MINUTE_MS).expect("minute rollups decode");
        sealed.rollups(HOUR_MS).expect("hour rollups decode");
    }
}

fn pt(ts: i64, value: Value) -> Point {
    Point { ts, value }
}

/// Recomputes the CRCs of a block (see [`FORM_BLOCK_FIXED`]); other bytes are kept.
pub fn fix_block_crcs(bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    if b.len() >= 8 && b.starts_with(b"MTB\x01") {
        let at = b.len() - 4;
        let crc = crc32fast::hash(&b[..at]);
        b[at..].copy_from_slice(&crc.to_le_bytes());
        return b;
    }
    if b.len() < HEADER_LEN + FOOTER_LEN {
        return b;
    }
    let footer = b.len() - FOOTER_LEN;
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let le64 = |b: &[u8], at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    };
    let count = le32(&b, footer) as usize;
    let Ok(index_at) = usize::try_from(le64(&b, footer + 4)) else {
        return b;
    };
    let Some(index_len) = count.checked_mul(ENTRY_LEN) else {
        return b;
    };
    if index_at < HEADER_LEN || index_at.checked_add(index_len) != Some(footer) {
        return b;
    }
    for i in 0..count {
        let e = index_at + i * ENTRY_LEN;
        let (offset, len) = (le64(&b, e + 32), le64(&b, e + 40));
        let payload = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| Some(o..o.checked_add(l)?))
            .filter(|r| r.end <= index_at);
        if let Some(r) = payload {
            let crc = crc32fast::hash(&b[r]);
            b[e + 12..e + 16].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..HEADER_LEN]);
    h.update(&b[index_at..footer]);
    let crc = h.finalize();
    b[footer + 12..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn block(bytes: &[u8]) {
    if let Ok(view) = BlockView::open(Arc::new(bytes.to_vec())) {
        for i in 0..view.series_count() {
            let Ok(summary) = view.summary(i) else {
                continue;
            };
            if let Ok((id, s)) = view.series_at(i) {
                assert_eq!(id, summary.id);
                if let Ok(points) = s.points() {
                    assert_eq!(points.len(), s.len());
                }
                let _ = s.rollups(MINUTE_MS);
                let _ = s.rollups(HOUR_MS);
                assert!(view.series(id).is_ok_and(|s| s.is_some()));
            }
            let _ = view.time_range(summary.id);
        }
        let _ = view.column_bytes();
        let _ = view.points();
        // The same block as the store holds it: queries over its partition.
        let mut db = Db::new(DbConfig::default()).expect("default config");
        if let Ok(key) = db.load_block(Arc::new(bytes.to_vec())) {
            let (from, to) = (key.partition, key.partition.saturating_add(86_400_000));
            for i in 0..view.series_count() {
                let Ok(s) = view.summary(i) else { continue };
                let _ = db.raw(s.id, from, to);
                let _ = db.latest(s.id);
                let _ = db.rollups(s.id, MINUTE_MS, from, to);
                let _ = db.rollups(s.id, HOUR_MS, from, to);
                let _ = db.aggregate(s.id, from, to, HOUR_MS, Agg::Avg);
                let _ = db.has_data(s.id, from, to);
            }
        }
    }
    if let Ok(sealed) = SealedBlock::from_bytes(bytes) {
        for s in sealed.series.values() {
            if let Ok(points) = s.points() {
                assert_eq!(points.len(), s.view().len());
            }
            let _ = s.rollups(MINUTE_MS);
            let _ = s.rollups(HOUR_MS);
        }
        // What parses writes back as a version 2 block that parses the same.
        let again = sealed.to_bytes();
        let back = SealedBlock::from_bytes(&again).expect("a written block parses");
        assert_eq!(back, sealed);
        BlockView::open(Arc::new(again)).expect("a written block opens");
    }
}

/// Seeds for `tsdb_files`: valid WAL segments and blocks of both versions, in each form.
pub fn tsdb_files_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut wal_log = Vec::new();
    let mut engine = Engine::new(IndexLimits::default(), HeadConfig::default());
    let keys = [
        SeriesKey::new("d1", "temp"),
        SeriesKey::new("d1", "count"),
        SeriesKey::new("d2", "on").with_label("room", "a"),
    ];
    let ids: Vec<SeriesId> = keys
        .iter()
        .map(|k| engine.series(k, &mut wal_log).expect("series"))
        .collect();
    let batch: Vec<(SeriesId, Point)> = (0..40)
        .flat_map(|i| {
            let ts = T0 + i * 15_000;
            [
                (ids[0], pt(ts, Value::F64(20.0 + i as f64 / 4.0))),
                (ids[1], pt(ts, Value::I64(i * 3))),
                (ids[2], pt(ts, Value::Bool(i % 3 == 0))),
            ]
        })
        .collect();
    engine.append(&batch, &mut wal_log).expect("append");
    let late = [(ids[0], pt(T0 + 7_000, Value::F64(-1.5)))];
    engine.append(&late, &mut wal_log).expect("append late");
    seeds.push(("wal-segment".into(), tagged(FORM_WAL, &wal_log)));
    let mut torn = wal_log.clone();
    torn.truncate(wal_log.len() - 5);
    seeds.push(("wal-torn-tail".into(), tagged(FORM_WAL, &torn)));
    // The same records as bodies for the framed form.
    let mut bodies = Vec::new();
    let mut at = 0;
    while at + RECORD_HEADER_LEN <= wal_log.len() {
        let len = u32::from_le_bytes(wal_log[at..at + 4].try_into().expect("4 bytes")) as usize;
        let body = &wal_log[at + RECORD_HEADER_LEN + 1..at + RECORD_HEADER_LEN + len];
        bodies.extend_from_slice(&(body.len() as u16).to_le_bytes());
        bodies.extend_from_slice(body);
        at += RECORD_HEADER_LEN + len;
    }
    seeds.push(("wal-framed".into(), tagged(FORM_WAL_FRAMED, &bodies)));
    let mut one = Vec::new();
    wal::encode_series(SeriesId(0), &keys[2], &mut one).expect("encode");
    seeds.push(("wal-one-series".into(), tagged(FORM_WAL, &one)));

    // Blocks: the head sealed, version 2, raw kept and raw dropped, and version 1.
    let mut db = Db::new(DbConfig {
        partition_ms: HOUR,
        ..DbConfig::default()
    })
    .expect("db");
    let mut w = Vec::new();
    // Created in the same order, so the batch's ids name the same series.
    for k in &keys {
        db.engine_mut().series(k, &mut w).expect("series");
    }
    db.engine_mut().append(&batch, &mut w).expect("append");
    db.seal().expect("seal");
    let block = db
        .blocks()
        .values()
        .flatten()
        .next()
        .expect("a sealed block")
        .bytes()
        .to_vec();
    let sealed = SealedBlock::from_bytes(&block).expect("parses");
    seeds.push(("block-v2".into(), tagged(FORM_BLOCK, &block)));
    seeds.push(("block-v2-fixed".into(), tagged(FORM_BLOCK_FIXED, &block)));
    let mut dropped = sealed.clone();
    dropped.raw_dropped = true;
    for s in dropped.series.values_mut() {
        s.drop_raw();
    }
    seeds.push((
        "block-v2-raw-dropped".into(),
        tagged(FORM_BLOCK_FIXED, &dropped.to_bytes()),
    ));
    let v2 = BlockView::open(Arc::new(block.clone())).expect("opens");
    // Payloads of v2 are `col ts, col values, 2 x rollups`, exactly the v1 per-series tail;
    // rebuild v1 series by series with each payload appended after its fields.
    let mut v1 = b"MTB\x01".to_vec();
    v1.extend_from_slice(&sealed.partition.to_le_bytes());
    v1.push(0);
    v1.extend_from_slice(&(sealed.series.len() as u32).to_le_bytes());
    for i in 0..v2.series_count() {
        let s = v2.summary(i).expect("summary");
        let (offset, len) = payload_range(&block, i);
        v1.extend_from_slice(&s.id.0.to_le_bytes());
        v1.push(s.kind.tag());
        v1.extend_from_slice(&s.count.to_le_bytes());
        v1.extend_from_slice(&s.first_ts.to_le_bytes());
        v1.extend_from_slice(&s.last_ts.to_le_bytes());
        v1.extend_from_slice(&block[offset..offset + len]);
    }
    let crc = crc32fast::hash(&v1);
    v1.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(
        SealedBlock::from_bytes(&v1).expect("v1 seed parses").series,
        sealed.series
    );
    seeds.push(("block-v1".into(), tagged(FORM_BLOCK_FIXED, &v1)));
    seeds
}

fn payload_range(block: &[u8], i: usize) -> (usize, usize) {
    let footer = block.len() - FOOTER_LEN;
    let index_at = u64::from_le_bytes(block[footer + 4..footer + 12].try_into().expect("8"));
    let e = index_at as usize + i * ENTRY_LEN;
    let offset = u64::from_le_bytes(block[e + 32..e + 40].try_into().expect("8"));
    let len = u64::from_le_bytes(block[e + 40..e + 48].try_into().expect("8"));
    (offset as usize, len as usize)
}

fn tagged(form: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![form];
    v.extend_from_slice(bytes);
    v
}

/// The `promql` harness's store: four series over three hours, one-hour partitions, the first
/// two hours sealed into blocks and the last in the head.
pub fn promql_db() -> &'static Db {
    static DB: OnceLock<Db> = OnceLock::new();
    DB.get_or_init(|| {
        let mut db = Db::new(DbConfig {
            partition_ms: HOUR,
            ..DbConfig::default()
        })
        .expect("db");
        let mut w = Vec::new();
        let keys = [
            SeriesKey::new("d1", "temp").with_label("room", "kitchen"),
            SeriesKey::new("d2", "temp").with_label("room", "hall"),
            SeriesKey::new("d1", "requests"),
            SeriesKey::new("d2", "on"),
        ];
        let ids: Vec<SeriesId> = keys
            .iter()
            .map(|k| db.engine_mut().series(k, &mut w).expect("series"))
            .collect();
        let points = |from: i64, to: i64| -> Vec<(SeriesId, Point)> {
            (from..to)
                .flat_map(|i| {
                    let ts = T0 + i * 15_000;
                    [
                        (ids[0], pt(ts, Value::F64(20.0 + (i % 40) as f64 / 8.0))),
                        (ids[1], pt(ts, Value::F64(-3.25 * (i % 7) as f64))),
                        // A counter with a reset every 100 points.
                        (ids[2], pt(ts, Value::I64((i % 100) * 5))),
                        (ids[3], pt(ts, Value::Bool(i % 5 == 0))),
                    ]
                })
                .collect()
        };
        let per_hour = HOUR / 15_000;
        db.engine_mut()
            .append(&points(0, 2 * per_hour), &mut w)
            .expect("append");
        db.seal().expect("seal");
        db.engine_mut()
            .append(&points(2 * per_hour, 3 * per_hour), &mut w)
            .expect("append");
        db
    })
}

/// Limits of the `promql` harness: the defaults, with fewer samples so one input stays fast.
pub fn promql_limits() -> PromLimits {
    PromLimits {
        max_samples: 200_000,
        ..PromLimits::default()
    }
}

/// Range query parameters `(start, end, step)` the first input byte picks from.
const RANGES: [(i64, i64, i64); 8] = [
    (T0, T0 + 3 * HOUR, MIN),
    (T0 - HOUR, T0 + 4 * HOUR, 15_000),
    (T0 + 30 * MIN, T0 + 30 * MIN, 1),
    (T0, T0 + 3 * HOUR, HOUR),
    (T0 + 90 * MIN, T0 + 2 * HOUR, 1_000),
    (0, T0, T0 / 10_000),
    (
        -1_000_000_000_000_000,
        1_000_000_000_000_000,
        1_000_000_000_000,
    ),
    (T0, T0 + 3 * HOUR, 7_919),
];

thread_local! {
    /// Set while the harness runs code that may panic and catches it.
    static PANIC_EXPECTED: Cell<bool> = const { Cell::new(false) };
}

/// Makes the current panic hook skip panics the harness expects and catches (see the module
/// docs); for the fuzz target's init, after libFuzzer installed its aborting hook.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !PANIC_EXPECTED.with(Cell::get) {
            previous(info);
        }
    }));
}

/// Runs `f` with panics expected (the hook of [`install_panic_hook`] lets them unwind).
fn expecting_panic<R>(f: impl FnOnce() -> R) -> R {
    PANIC_EXPECTED.with(|p| p.set(true));
    let out = f();
    PANIC_EXPECTED.with(|p| p.set(false));
    out
}

/// Whether the third-party parser panics on `text` (within the query length limit, as our
/// entry points call it).
pub fn parser_panics(text: &str, limits: &PromLimits) -> bool {
    text.len() <= limits.max_query_len
        && expecting_panic(|| {
            std::panic::catch_unwind(|| promql_parser::parser::parse(text)).is_err()
        })
}

/// Stack of the thread a `promql` input runs on: half a tokio worker's 2 MiB, so recursion a
/// query can drive deep shows up as a stack overflow here first.
pub const PROMQL_STACK: usize = 1 << 20;

/// Runs one `promql` input (on a thread with a [`PROMQL_STACK`] stack): the first byte picks
/// times, the rest is the query text.
pub fn promql(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let text = text.to_owned();
    let run = std::thread::Builder::new()
        .stack_size(PROMQL_STACK)
        .spawn(move || promql_text(pick, &text))
        .expect("spawn the query thread")
        .join();
    if let Err(panic) = run {
        std::panic::resume_unwind(panic);
    }
}

fn promql_text(pick: u8, text: &str) {
    let db = promql_db();
    let limits = promql_limits();
    if parser_panics(text, &limits) {
        // Our entry points catch it and answer a parse error.
        let (query, selector) = expecting_panic(|| {
            (
                Query::parse(text, &limits).map(|_| ()),
                parse_selector(text, &limits).map(|_| ()),
            )
        });
        assert!(
            matches!(query, Err(promql::PromError::Parse(_))),
            "{query:?}"
        );
        assert!(
            matches!(selector, Err(promql::PromError::Parse(_))),
            "{selector:?}"
        );
        return;
    }
    let (start, end, step) = RANGES[usize::from(pick & 7)];
    let t = T0 + i64::from(pick >> 3) * 7 * MIN;
    if let Ok(q) = Query::parse(text, &limits) {
        match eval_instant(db, &q, t, &limits) {
            Ok(Instant::Vector(v)) => {
                // Every series of a vector has its own label set.
                let sets: std::collections::BTreeSet<_> = v.iter().map(|(l, _)| l).collect();
                assert_eq!(sets.len(), v.len(), "duplicate label sets");
            }
            Ok(Instant::Matrix(m)) => {
                for (_, pts) in m {
                    assert!(pts.windows(2).all(|w| w[0].0 < w[1].0), "matrix order");
                }
            }
            Ok(Instant::Scalar(_)) | Err(_) => {}
        }
        if let Ok(m) = eval_range(db, &q, start, end, step, &limits) {
            for (_, pts) in m {
                assert!(pts.iter().all(|(ts, _)| (start..=end).contains(ts)));
                assert!(pts.windows(2).all(|w| w[0].0 < w[1].0), "range order");
            }
        }
    }
    if let Ok(sel) = parse_selector(text, &limits) {
        let sels = [sel];
        let window = Window {
            from: start,
            to: end,
        };
        let none = promql::NoDeviceLabels;
        let _ = promql::series(db, &sels, Window::ALL, &none, &limits);
        let _ = promql::series(db, &sels, window, &none, &limits);
        let _ = promql::label_names(db, &sels, window, &none, &limits);
        let _ = promql::label_values(db, "device", &sels, Window::ALL, &none, &limits);
        let _ = promql::label_values(db, "__name__", &sels, window, &none, &limits);
    }
    let _ = parse_time("time", text);
    let _ = parse_duration("step", text);
}

/// Seeds for `promql`: queries of every supported shape and some that are refused.
pub fn promql_seeds() -> Vec<(String, Vec<u8>)> {
    let queries: &[&str] = &[
        "temp",
        r#"temp{device="d1"}"#,
        r#"{__name__=~"te.*",room!="hall"}"#,
        r#"temp{room=~"k.*|h(a)ll",device!~"d9"} offset 5m"#,
        "rate(requests[5m])",
        "increase(requests[1h])",
        "irate(requests[2m])",
        r#"delta(temp{device="d2"}[10m])"#,
        "avg_over_time(temp[15m])",
        "min_over_time(temp[1h]) ",
        "max_over_time(on[30m])",
        "sum_over_time(requests[5m])",
        "count_over_time(temp[1m])",
        "last_over_time(on[5m])",
        "sum by (room) (temp)",
        "avg without (device) (rate(requests[5m]))",
        "count(on)",
        "max(min_over_time(temp[5m]))",
        "temp[10m]",
        "1+1",
        "(2 * 3) ^ 2 % 5 - -1",
        "temp @ 100",
        "topk(3, temp)",
        "temp + temp",
        "rate(temp[5m:1m])",
        r#"{device=""}"#,
        r#"temp{room=~"(a+)+$"}"#,
        "label_replace(temp, \"a\", \"b\", \"c\", \"d\")",
        "2024-01-01T00:00:00Z",
        "1m30s",
    ];
    queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let mut v = vec![(i as u8).wrapping_mul(37)];
            v.extend_from_slice(q.as_bytes());
            (format!("q{i:02}"), v)
        })
        .collect()
}
