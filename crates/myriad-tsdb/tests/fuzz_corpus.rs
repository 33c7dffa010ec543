//! Replays the `tsdb_files` and `promql` fuzz corpora (fuzz/corpus/<target>) through the fuzz
//! harnesses, so a plain `cargo test` checks every input the fuzzers kept, including the crash
//! reproductions added to them, without the instrumented build.
//!
//! `MYRIAD_FUZZ_INPUT=path MYRIAD_FUZZ_TARGET=tsdb_files|promql` replays that one file (a crash
//! file the fuzzer wrote). `MYRIAD_FUZZ_WRITE_SEEDS=1` (re)writes the generated seeds into the
//! corpora first.

use std::path::{Path, PathBuf};

use myriad_tsdb::fuzz;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn replay(target: &str, run: fn(&[u8]), seeds: fn() -> Vec<(String, Vec<u8>)>) {
    if let Ok(input) = std::env::var("MYRIAD_FUZZ_INPUT") {
        if std::env::var("MYRIAD_FUZZ_TARGET").as_deref() == Ok(target) {
            run(&std::fs::read(&input).expect("read MYRIAD_FUZZ_INPUT"));
        }
        return;
    }
    let dir = corpus(target);
    if std::env::var_os("MYRIAD_FUZZ_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the {target} corpus is empty");
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "corpus input {} failed", path.display());
    }
    // The generated seeds pass too (they are what the corpus started from).
    for (name, bytes) in seeds() {
        assert!(
            std::panic::catch_unwind(|| run(&bytes)).is_ok(),
            "seed {name} failed"
        );
    }
}

#[test]
fn tsdb_files_corpus() {
    replay("tsdb_files", fuzz::tsdb_files, fuzz::tsdb_files_seeds);
}

#[test]
fn promql_corpus() {
    // Quiet for the parser panics the harness expects and catches (as the fuzz target).
    fuzz::install_panic_hook();
    replay("promql", fuzz::promql, fuzz::promql_seeds);
}
