//! Packet sequences from several clients into the sans-IO broker core, with
//! low limits, the clock moving and restarts from the recorded store; every
//! step is checked against the broker's invariants. The logic lives in
//! `myriad_broker::fuzz` (feature `fuzz`) so that `cargo test` replays the
//! corpus with it too.
//!
//! `MYRIAD_FUZZ_DEEP_LEVELS` caps generated deep topics (default
//! `myriad_broker::fuzz::DEFAULT_DEEP_LEVELS`).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use myriad_broker::fuzz::{DEFAULT_DEEP_LEVELS, Options, run};

fn options() -> &'static Options {
    static OPTIONS: OnceLock<Options> = OnceLock::new();
    OPTIONS.get_or_init(|| Options {
        max_deep_levels: std::env::var("MYRIAD_FUZZ_DEEP_LEVELS")
            .ok()
            .and_then(|levels| levels.parse().ok())
            .unwrap_or(DEFAULT_DEEP_LEVELS),
    })
}

fuzz_target!(|data: &[u8]| run(data, options()));
