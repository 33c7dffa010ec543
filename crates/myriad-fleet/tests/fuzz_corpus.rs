//! Replays the `telemetry_payload` fuzz corpus (fuzz/corpus/telemetry_payload) through the fuzz
//! harness, so a plain `cargo test` checks every input the fuzzer kept, including the crash
//! reproductions added to it, without the instrumented build.
//!
//! `MYRIAD_FUZZ_INPUT=path` replays that one file instead (a crash file the fuzzer wrote).
//! `MYRIAD_FUZZ_WRITE_SEEDS=1` (re)writes the generated seeds into the corpus first.

use std::path::{Path, PathBuf};

use myriad_fleet::fuzz;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/telemetry_payload")
}

#[test]
fn telemetry_payload_corpus() {
    if let Ok(input) = std::env::var("MYRIAD_FUZZ_INPUT") {
        fuzz::telemetry_payload(&std::fs::read(&input).expect("read MYRIAD_FUZZ_INPUT"));
        return;
    }
    let dir = corpus();
    if std::env::var_os("MYRIAD_FUZZ_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (name, bytes) in fuzz::seeds() {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the telemetry_payload corpus is empty");
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| fuzz::telemetry_payload(&data));
        assert!(outcome.is_ok(), "corpus input {} failed", path.display());
    }
    for (name, bytes) in fuzz::seeds() {
        assert!(
            std::panic::catch_unwind(|| fuzz::telemetry_payload(&bytes)).is_ok(),
            "seed {name} failed"
        );
    }
}
