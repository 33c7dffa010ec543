//! Arbitrary rule SQL (up to the first NUL byte) and payload (after it) through the pipeline
//! rule engine: compile, match the topic, evaluate. Never a panic or a stack overflow, bounded
//! time (scripts/fuzz.sh runs it under -timeout). The logic lives in `myriad_pipeline::fuzz`
//! (feature `fuzz`) so that `cargo test` replays the corpus with it too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| myriad_pipeline::fuzz::rule_sql(data));
