//! Arbitrary query text through the PromQL subset (parse, instant and range evaluation, the
//! series and label APIs, time and duration parameters) over a small in-memory `Db`: never a
//! panic, bounded time (scripts/fuzz.sh runs it under -timeout). The logic lives in
//! `myriad_tsdb::fuzz` (feature `fuzz`) so that `cargo test` replays the corpus with it too.
//!
//! `promql-parser` panics on some inputs and our parse entry point catches that; the init
//! lets those caught panics unwind instead of libFuzzer's hook aborting on them (see
//! `myriad_tsdb::fuzz`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: myriad_tsdb::fuzz::install_panic_hook(),
    |data: &[u8]| myriad_tsdb::fuzz::promql(data)
);
