//! Arbitrary bytes as a telemetry WAL segment (`Engine::replay`) and as a block file
//! (`BlockView::open`, `SealedBlock::from_bytes`, loaded into a `Db`), reading every series'
//! points and rollups: never a panic, never memory a length field asks for but the bytes do not
//! hold (scripts/fuzz.sh runs it under -malloc_limit_mb). The logic lives in
//! `myriad_tsdb::fuzz` (feature `fuzz`) so that `cargo test` replays the corpus with it too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| myriad_tsdb::fuzz::tsdb_files(data));
