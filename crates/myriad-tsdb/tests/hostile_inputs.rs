//! Regression tests for what the fuzz targets `tsdb_files` and `promql` found (fuzz/README.md):
//! hostile block files and query texts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use myriad_tsdb::block::{BlockView, ENTRY_LEN, FOOTER_LEN, HEADER_LEN, SealedBlock};
use myriad_tsdb::promql::{PromError, PromLimits, Query, parse_selector};
use myriad_tsdb::{BlockError, Point, SealedSeries, SeriesId, Value, ValueKind};

/// Counts the bytes live on this test binary's heap, and their peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap growth while `f` runs, in bytes.
fn peak_growth<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(before))
}

/// A version 2 block holding one series of `n` zeros at timestamps 0..n.
fn block_of_zeros(n: i64) -> Vec<u8> {
    let points: Vec<Point> = (0..n)
        .map(|ts| Point {
            ts,
            value: Value::I64(0),
        })
        .collect();
    let mut block = SealedBlock::default();
    block.series.insert(
        SeriesId(7),
        SealedSeries::encode(ValueKind::I64, &points).expect("encode"),
    );
    block.to_bytes()
}

/// Rewrites the first index entry's point count and time range, and the index CRC.
fn forge_entry(block: &mut [u8], count: u32, first_ts: i64, last_ts: i64) {
    let footer = block.len() - FOOTER_LEN;
    let index_at =
        u64::from_le_bytes(block[footer + 4..footer + 12].try_into().expect("8")) as usize;
    block[index_at + 8..index_at + 12].copy_from_slice(&count.to_le_bytes());
    block[index_at + 16..index_at + 24].copy_from_slice(&first_ts.to_le_bytes());
    block[index_at + 24..index_at + 32].copy_from_slice(&last_ts.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&block[..HEADER_LEN]);
    h.update(&block[index_at..index_at + ENTRY_LEN]);
    let crc = h.finalize();
    block[footer + 12..].copy_from_slice(&crc.to_le_bytes());
}

/// A column is decoded chunk by chunk against the index's count: a chunk claiming more numbers
/// than the series has is refused before memory is taken for it. (Before, `pco` decoded the
/// whole column first: a few hundred bytes of constant data standing for millions of numbers
/// took 8 bytes each, whatever the count said.)
#[test]
fn a_column_longer_than_its_count_is_refused_before_it_is_decoded() {
    const N: i64 = 1 << 20;
    let mut block = block_of_zeros(N);
    assert!(block.len() < 4096, "{} bytes hold {N} points", block.len());
    forge_entry(&mut block, 10, 0, N - 1);
    let view = BlockView::open(Arc::new(block)).expect("the index is consistent");
    let (_, series) = view.series_at(0).expect("payload CRC unchanged");
    let (points, grew) = peak_growth(|| series.points());
    assert_eq!(points, Err(BlockError::Corrupt("timestamp column length")));
    // 8 MiB would be the column's numbers; the decoder's own tables are far below 1 MiB.
    assert!(grew < 1 << 20, "decoding took {grew} bytes");
}

/// A column shorter than its count is refused as well, and an untouched block still reads.
#[test]
fn a_column_shorter_than_its_count_is_refused() {
    let mut block = block_of_zeros(300);
    let fine = BlockView::open(Arc::new(block.clone())).expect("opens");
    assert_eq!(
        fine.series_at(0)
            .expect("series")
            .1
            .points()
            .expect("points")
            .len(),
        300
    );
    forge_entry(&mut block, 301, 0, 300);
    let view = BlockView::open(Arc::new(block)).expect("opens");
    assert_eq!(
        view.series_at(0).expect("series").1.points(),
        Err(BlockError::Corrupt("timestamp column length"))
    );
}

/// Timestamps in a block are unique: a count larger than the time range can hold is refused
/// before any column is decoded.
#[test]
fn a_count_beyond_the_time_range_is_refused() {
    let mut block = block_of_zeros(300);
    forge_entry(&mut block, 300, 0, 298);
    let view = BlockView::open(Arc::new(block)).expect("opens");
    let series = view.series_at(0).expect("series").1;
    assert_eq!(
        series.points(),
        Err(BlockError::Corrupt("point count exceeds the time range"))
    );
    // One ms per point fits exactly.
    let mut block = block_of_zeros(300);
    forge_entry(&mut block, 300, 5, 304);
    let view = BlockView::open(Arc::new(block)).expect("opens");
    assert_eq!(
        view.series_at(0)
            .expect("series")
            .1
            .points()
            .map(|p| p.len()),
        Ok(300)
    );
}

/// `promql-parser` panics converting a huge float range or offset to a `Duration` (found by the
/// `promql` target, corpus file `parser-panic-huge-range`): the parse entry points answer a
/// parse error instead.
#[test]
fn a_query_the_parser_panics_on_is_a_parse_error() {
    let limits = PromLimits::default();
    for text in [
        "emp[1e66666666]",
        "rate(temp[1e300])",
        "temp offset 1e300",
        "count_over_time(-2-emp[1e66666666])",
    ] {
        assert!(
            matches!(Query::parse(text, &limits), Err(PromError::Parse(_))),
            "{text}"
        );
        assert!(
            matches!(parse_selector(text, &limits), Err(PromError::Parse(_))),
            "{text}"
        );
    }
}

/// Runs `f` on a thread with a 2 MiB stack (a tokio worker's), as the HTTP API parses.
fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

fn nested(open: &str, inner: &str, close: &str, depth: usize) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

/// 8 KiB of parentheses or operators nest about 4,000 expressions: compiling them recursed once
/// per level and overflowed a 2 MiB stack (aborting the whole process). The depth is now bounded
/// right after parsing ([`MAX_QUERY_DEPTH`], 128 nodes): one past is refused, the limit passes.
#[test]
fn deeply_nested_queries_are_refused_not_a_stack_overflow() {
    use myriad_tsdb::promql::MAX_QUERY_DEPTH;
    let limits = PromLimits::default();
    for text in [
        nested("(", "1", ")", 4000),
        format!("{}1", "1+".repeat(4000)),
        nested("sum(", "temp", ")", 1300),
        nested("abs(", "temp", ")", 1600),
    ] {
        assert!(text.len() <= limits.max_query_len);
        let out = on_small_stack(move || Query::parse(&text, &limits).map(|_| ()));
        assert!(
            matches!(&out, Err(PromError::Unsupported(m)) if m.contains("nested")),
            "{out:?}"
        );
    }
    // `(` x (depth - 1) around a number: `depth` nodes.
    let at = nested("(", "1", ")", MAX_QUERY_DEPTH - 1);
    assert!(Query::parse(&at, &limits).is_ok());
    let past = nested("(", "1", ")", MAX_QUERY_DEPTH);
    assert!(matches!(
        Query::parse(&past, &limits),
        Err(PromError::Unsupported(_))
    ));
    let at = nested("sum(", "temp", ")", MAX_QUERY_DEPTH - 1);
    assert!(Query::parse(&at, &limits).is_ok());
}

/// A regex matcher whose compiled form would be huge is refused quickly (the `regex` size
/// limit, [`PromLimits::max_regex_bytes`]), in the third-party parser's own compile as in ours.
#[test]
fn a_huge_regex_is_refused_in_bounded_time() {
    let limits = PromLimits::default();
    for pattern in [
        "((a{100}){100}){100}",
        "(\\\\w{50}){50}",
        "[\\\\p{L}]{1000}{10}",
    ] {
        let text = format!(r#"temp{{room=~"{pattern}"}}"#);
        let started = std::time::Instant::now();
        let out = Query::parse(&text, &limits).map(|_| ());
        assert!(
            matches!(&out, Err(PromError::Regex { .. } | PromError::Parse(_))),
            "{text}: {out:?}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{text}"
        );
    }
}
