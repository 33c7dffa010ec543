//! Replays the `rule_sql` fuzz corpus (fuzz/corpus/rule_sql) through the fuzz harness, so a
//! plain `cargo test` checks every input the fuzzer kept, without the instrumented build.
//!
//! `MYRIAD_FUZZ_INPUT=path` replays that one file (a crash file the fuzzer wrote).
//! `MYRIAD_FUZZ_WRITE_SEEDS=1` (re)writes the generated seeds into the corpus first.

use std::path::{Path, PathBuf};

use myriad_pipeline::fuzz;

#[test]
fn rule_sql_corpus() {
    if let Ok(input) = std::env::var("MYRIAD_FUZZ_INPUT") {
        fuzz::rule_sql(&std::fs::read(&input).expect("read MYRIAD_FUZZ_INPUT"));
        return;
    }
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/rule_sql");
    if std::env::var_os("MYRIAD_FUZZ_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (name, bytes) in fuzz::rule_sql_seeds() {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the rule_sql corpus is empty");
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| fuzz::rule_sql(&data));
        assert!(outcome.is_ok(), "corpus input {} failed", path.display());
    }
    // The seeds compile (they exercise evaluation, not just refusals) and pass.
    for (name, bytes) in fuzz::rule_sql_seeds() {
        let sql = &bytes[..bytes.iter().position(|&b| b == 0).unwrap()];
        let sql = std::str::from_utf8(sql).unwrap();
        assert!(
            myriad_pipeline::sql::Rule::compile(sql).is_ok(),
            "seed {name} does not compile"
        );
        fuzz::rule_sql(&bytes);
    }
}
