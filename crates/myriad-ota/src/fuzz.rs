//! Fuzz harness of the delta patch applier (fuzz target `ota_patch`; `tests/fuzz_corpus.rs`
//! replays the corpus through it, so a plain `cargo test` covers every kept input).
//!
//! The first input byte picks the mode:
//!
//! - `< 0x80`: the rest is a patch (hostile bytes) applied against [`fuzz_old`], pushed in
//!   chunks of `1 + (byte & 0x7f) * 31` bytes. Checks: no panic; every old-image read inside
//!   the old image and at most 32 KiB; never more bytes written than the header's `new_size`;
//!   [`Step::Done`] only when the output's SHA-256 is the header's; after an error every call
//!   returns that error. Output stops being followed after 1 MiB (a valid patch may describe
//!   a 4 GiB image; that is not a bug, only slow).
//! - `>= 0x80`: a round trip. The rest splits at the next byte's share into old and new;
//!   [`diff()`](crate::delta::diff()) (zstd level 1, the smallest window, no threads) must
//!   produce a patch that applies back to exactly `new`.

use sha2::{Digest, Sha256};

use crate::delta::{Applier, Codec, DiffOptions, MIN_WINDOW_LOG, Step, diff};

/// Output followed per input before stopping.
const MAX_FOLLOWED: u64 = 1 << 20;

/// The old image hostile patches apply against: 4 KiB of structured, deterministic bytes.
pub fn fuzz_old() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..4096u32)
        .map(|i| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            if i % 8 < 4 {
                (i / 8) as u8
            } else {
                (x >> 24) as u8
            }
        })
        .collect()
}

/// The harness (see the module docs).
pub fn ota_patch(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode < 0x80 {
        let chunk = 1 + usize::from(mode & 0x7f) * 31;
        hostile(rest, &fuzz_old(), chunk);
    } else {
        round_trip(rest);
    }
}

fn hostile(patch: &[u8], old: &[u8], chunk: usize) {
    let mut a = Applier::new();
    let mut rest = patch;
    let mut out = Sha256::new();
    let mut written = 0u64;
    let outcome = loop {
        let step = match a.poll() {
            Ok(step) => step,
            Err(e) => break Err(e),
        };
        let result = match step {
            Step::Header(_) => Ok(()),
            Step::NeedPatch if rest.is_empty() => {
                a.finish_patch();
                Ok(())
            }
            Step::NeedPatch => a.push_patch(&rest[..chunk.min(rest.len())]).map(|n| {
                assert!(n > 0, "NeedPatch, yet nothing taken");
                rest = &rest[n..];
            }),
            Step::ReadOld { offset, len } => {
                assert!(len > 0 && len <= 32 * 1024, "read of {len}");
                let at = usize::try_from(offset).expect("offset");
                assert!(at + len <= old.len(), "read {at}+{len} past the old image");
                a.provide_old(&old[at..at + len])
            }
            Step::Write(bytes) => {
                assert!(!bytes.is_empty(), "empty write");
                written += bytes.len() as u64;
                out.update(bytes);
                let header = a.header().expect("writes after the header");
                assert!(
                    written <= header.new_size,
                    "wrote {written} of {}",
                    header.new_size
                );
                if written > MAX_FOLLOWED {
                    return;
                }
                Ok(())
            }
            Step::Done => break Ok(()),
        };
        if let Err(e) = result {
            break Err(e);
        }
    };
    match outcome {
        Ok(()) => {
            let header = a.header().expect("done after the header");
            assert_eq!(written, header.new_size);
            let got: [u8; 32] = out.finalize().into();
            assert_eq!(got, header.new_sha256, "done with a wrong image");
            assert_eq!(a.poll(), Ok(Step::Done));
        }
        Err(e) => {
            assert_eq!(a.poll(), Err(e.clone()));
            assert_eq!(a.push_patch(b"x"), Err(e.clone()));
            assert_eq!(a.provide_old(b"x"), Err(e));
        }
    }
}

fn round_trip(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = rest.len() * usize::from(split) / 255;
    let (old, new) = rest.split_at(at);
    let opts = DiffOptions {
        window_log: MIN_WINDOW_LOG,
        zstd_level: 1,
        only: Some(Codec::Zstd),
        threads: false,
        ..DiffOptions::default()
    };
    let patch = diff(old, new, &opts).expect("diff of small inputs");
    let mut a = Applier::new();
    let mut rest = &patch.bytes[..];
    let mut got = Vec::new();
    loop {
        match a.poll().expect("our own patch applies") {
            Step::Header(_) => {}
            Step::NeedPatch => {
                let n = a.push_patch(rest).expect("push");
                rest = &rest[n..];
            }
            Step::ReadOld { offset, len } => {
                let at = usize::try_from(offset).expect("offset");
                a.provide_old(&old[at..at + len]).expect("provide");
            }
            Step::Write(bytes) => got.extend_from_slice(bytes),
            Step::Done => break,
        }
    }
    assert_eq!(got, new);
}

/// Seeds: valid patches (both codecs) against [`fuzz_old`], one bad-checksum header, and
/// round-trip inputs.
pub fn ota_patch_seeds() -> Vec<(String, Vec<u8>)> {
    let old = fuzz_old();
    let mut edited = old.clone();
    for i in (0..edited.len()).step_by(50) {
        edited[i] ^= 0x55;
    }
    edited.splice(
        1000..1000,
        b"inserted bytes, copied as extra".iter().copied(),
    );
    edited.drain(3000..3100);
    let mut seeds = Vec::new();
    for (name, new) in [
        ("edited", edited.clone()),
        ("empty", Vec::new()),
        ("same", old.clone()),
    ] {
        for codec in [Codec::Zstd, Codec::Xz] {
            let opts = DiffOptions {
                only: Some(codec),
                ..DiffOptions::default()
            };
            let patch = diff(&old, &new, &opts).expect("seed diff");
            let mut input = vec![0x05];
            input.extend_from_slice(&patch.bytes);
            seeds.push((format!("{name}-{}", codec.name()), input));
        }
    }
    let mut round = vec![0x80, 128];
    round.extend_from_slice(&old[..500]);
    round.extend_from_slice(&edited[..600]);
    seeds.push(("round-trip".into(), round));
    seeds
}
