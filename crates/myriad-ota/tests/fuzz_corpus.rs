//! Replays the `ota_patch` fuzz corpus (fuzz/corpus/ota_patch) through the fuzz harness, so a
//! plain `cargo test` checks every input the fuzzer kept without the instrumented build.
//!
//! `MYRIAD_FUZZ_INPUT=path` replays that one file (a crash file the fuzzer wrote).
//! `MYRIAD_FUZZ_WRITE_SEEDS=1` (re)writes the generated seeds into the corpus first.

use std::path::{Path, PathBuf};

use myriad_ota::fuzz;

#[test]
fn ota_patch_corpus() {
    if let Ok(input) = std::env::var("MYRIAD_FUZZ_INPUT") {
        fuzz::ota_patch(&std::fs::read(&input).expect("read MYRIAD_FUZZ_INPUT"));
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ota_patch");
    if std::env::var_os("MYRIAD_FUZZ_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (name, bytes) in fuzz::ota_patch_seeds() {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the ota_patch corpus is empty");
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| fuzz::ota_patch(&data));
        assert!(outcome.is_ok(), "corpus input {} failed", path.display());
    }
    for (name, bytes) in fuzz::ota_patch_seeds() {
        assert!(
            bytes.len() <= 4096,
            "seed {name} over the fuzzers' -max_len"
        );
        assert!(
            std::panic::catch_unwind(|| fuzz::ota_patch(&bytes)).is_ok(),
            "seed {name} failed"
        );
    }
}

/// The seeds reach the end of the applier: each valid patch applies.
#[test]
fn seeds_apply() {
    for (name, bytes) in fuzz::ota_patch_seeds() {
        if bytes[0] < 0x80 {
            let old = fuzz::fuzz_old();
            let mut a = myriad_ota::delta::Applier::new();
            a.push_patch(&bytes[1..]).expect(&name);
            let mut n = 0u64;
            loop {
                match a.poll().expect(&name) {
                    myriad_ota::delta::Step::ReadOld { offset, len } => a
                        .provide_old(&old[offset as usize..offset as usize + len])
                        .expect(&name),
                    myriad_ota::delta::Step::Write(b) => n += b.len() as u64,
                    myriad_ota::delta::Step::Done => break,
                    myriad_ota::delta::Step::NeedPatch => a.finish_patch(),
                    myriad_ota::delta::Step::Header(_) => {}
                }
            }
            assert_eq!(Some(n), a.header().map(|h| h.new_size), "{name}");
        }
    }
}
