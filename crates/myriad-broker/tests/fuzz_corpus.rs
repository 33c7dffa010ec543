//! Replays the session fuzz corpus (fuzz/corpus/session) through the fuzz
//! harness, so a plain `cargo test` checks every input the fuzzer kept,
//! including the crash reproductions added to it, without the instrumented
//! build.
//!
//! `MYRIAD_FUZZ_INPUT=path` replays that one file instead and prints each
//! operation and output (for a crash file the fuzzer wrote), with
//! `MYRIAD_FUZZ_DEEP_LEVELS` as the fuzz target reads it.

use std::path::{Path, PathBuf};

use myriad_broker::fuzz::{self, Options};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/session")
}

#[test]
fn fuzz_corpus() {
    if let Ok(input) = std::env::var("MYRIAD_FUZZ_INPUT") {
        let data = std::fs::read(&input).expect("read MYRIAD_FUZZ_INPUT");
        let options = Options {
            trace: true,
            max_deep_levels: std::env::var("MYRIAD_FUZZ_DEEP_LEVELS")
                .ok()
                .and_then(|levels| levels.parse().ok())
                .unwrap_or(fuzz::DEFAULT_DEEP_LEVELS),
        };
        fuzz::run(&data, &options);
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("fuzz/corpus/session exists")
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the session corpus is empty");
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| fuzz::run(&data, &Options::default()));
        assert!(outcome.is_ok(), "corpus input {} failed", path.display());
    }
}
