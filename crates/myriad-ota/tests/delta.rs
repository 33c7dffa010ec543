//! Delta patches end to end: the differ's patches rebuild the new image through the sans-IO
//! applier, and every hostile patch is refused with a typed error.

use myriad_ota::delta::{
    Applier, ApplyError, Codec, DiffOptions, HEADER_LEN, Header, HeaderError, MAX_BODY_SIZE,
    MAX_IMAGE_SIZE, MAX_WINDOW_LOG, Step, diff,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

/// Drives the applier over `patch` pushed in `chunk`-byte pieces against `old`.
fn apply(patch: &[u8], old: &[u8], chunk: usize) -> Result<Vec<u8>, ApplyError> {
    apply_with(&mut Applier::new(), patch, old, chunk)
}

fn apply_with(
    a: &mut Applier,
    patch: &[u8],
    old: &[u8],
    chunk: usize,
) -> Result<Vec<u8>, ApplyError> {
    let mut new = Vec::new();
    let mut rest = patch;
    let mut saw_header = false;
    loop {
        match a.poll()? {
            Step::Header(h) => {
                assert!(!saw_header, "header shown twice");
                saw_header = true;
                assert_eq!(h.old_size, old.len() as u64);
            }
            Step::NeedPatch if rest.is_empty() => a.finish_patch(),
            Step::NeedPatch => {
                let n = a.push_patch(&rest[..chunk.min(rest.len())])?;
                assert!(n > 0, "NeedPatch but nothing taken");
                rest = &rest[n..];
            }
            Step::ReadOld { offset, len } => {
                assert!(saw_header, "old image read before the header was shown");
                let at = usize::try_from(offset).unwrap();
                assert!(len <= 32 * 1024);
                a.provide_old(&old[at..at + len])?;
            }
            Step::Write(bytes) => new.extend_from_slice(bytes),
            Step::Done => {
                assert_eq!(a.written(), new.len() as u64);
                // A caller offers everything it has: bytes past the patch are refused.
                if !rest.is_empty() {
                    a.push_patch(rest)?;
                }
                return Ok(new);
            }
        }
    }
}

fn rng_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A "binary": repeated structures with offsets, then an edited version of it (changed
/// constants, an inserted block, a deleted block, a moved block).
fn structured(seed: u64, len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut old = Vec::with_capacity(len);
    let noise = rng_bytes(seed, len);
    let mut i = 0u32;
    while old.len() < len {
        old.extend_from_slice(&[0x48, 0x8b, 0x05]);
        old.extend_from_slice(&(i.wrapping_mul(16) + 0x1000).to_le_bytes());
        old.extend_from_slice(&noise[old.len() % (len - 16)..][..5]);
        i += 1;
    }
    old.truncate(len);
    let mut new = old.clone();
    for k in (0..new.len()).step_by(97) {
        new[k] = new[k].wrapping_add(3);
    }
    let q = len / 4;
    new.splice(q..q, rng_bytes(seed + 1, len / 20));
    new.drain(2 * q..2 * q + len / 30);
    let moved: Vec<u8> = old[len / 10..len / 10 + len / 15].to_vec();
    new.extend_from_slice(&moved);
    (old, new)
}

fn round_trip(old: &[u8], new: &[u8]) {
    for only in [None, Some(Codec::Zstd), Some(Codec::Xz)] {
        let opts = DiffOptions {
            only,
            ..DiffOptions::default()
        };
        let patch = diff(old, new, &opts).unwrap();
        assert_eq!(patch.header.new_size, new.len() as u64);
        assert_eq!(
            patch.bytes.len(),
            HEADER_LEN + patch.header.body_len as usize
        );
        if let Some(c) = only {
            assert_eq!(patch.header.codec, c);
        } else {
            let smaller = if patch.zstd_len < patch.xz_len {
                Codec::Zstd
            } else {
                Codec::Xz
            };
            assert_eq!(patch.header.codec, smaller);
        }
        for chunk in [1, 7, 4096, 1 << 20] {
            if chunk == 1 && patch.bytes.len() > 20_000 {
                continue;
            }
            assert_eq!(
                apply(&patch.bytes, old, chunk).as_deref(),
                Ok(new),
                "{only:?} chunk {chunk}"
            );
        }
    }
}

#[test]
fn round_trips() {
    let (old, new) = structured(1, 300_000);
    round_trip(&old, &new);
    round_trip(&rng_bytes(2, 50_000), &rng_bytes(3, 70_000));
    round_trip(&[], &rng_bytes(4, 10_000));
    round_trip(&rng_bytes(5, 10_000), &[]);
    round_trip(&[], &[]);
    round_trip(&old, &old);
    round_trip(b"a", b"b");
}

#[test]
fn structured_patch_is_small() {
    let (old, new) = structured(6, 1 << 20);
    let patch = diff(&old, &new, &DiffOptions::default()).unwrap();
    // The inserted block (len / 20 random bytes) dominates; the rest costs little.
    assert!(
        patch.bytes.len() < (1 << 20) / 20 + 20_000,
        "{} bytes",
        patch.bytes.len()
    );
}

#[test]
fn memory_stays_within_one_mib() {
    // Large enough for both codecs to fill their whole window.
    let (old, new) = structured(7, 3 << 20);
    for only in [Some(Codec::Zstd), Some(Codec::Xz)] {
        let patch = diff(
            &old,
            &new,
            &DiffOptions {
                only,
                ..DiffOptions::default()
            },
        )
        .unwrap();
        let mut a = Applier::new();
        assert_eq!(
            apply_with(&mut a, &patch.bytes, &old, 65536).as_deref(),
            Ok(&new[..])
        );
        let total = Applier::BUFFERS + a.codec_memory();
        let window = 1usize << only.map_or(MAX_WINDOW_LOG, Codec::max_window_log);
        assert!(a.codec_memory() >= window, "{only:?}: {}", a.codec_memory());
        assert_eq!(
            usize::from(patch.header.window_log),
            window.trailing_zeros() as usize
        );
        assert!(total <= 1 << 20, "{only:?}: {total} bytes");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn apply_of_diff_is_new(
        old in proptest::collection::vec(any::<u8>(), 0..3000),
        edits in proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 0..20),
        chunk in 1usize..600,
    ) {
        // new: old with byte changes, inserts and deletes, so matches exist.
        let mut new = old.clone();
        for (at, b, kind) in edits {
            let at = if new.is_empty() { 0 } else { at as usize % new.len() };
            match kind {
                0 if !new.is_empty() => new[at] = b,
                1 => new.insert(at, b),
                _ if !new.is_empty() => { new.remove(at); }
                _ => new.push(b),
            }
        }
        let patch = diff(&old, &new, &DiffOptions::default()).unwrap();
        prop_assert_eq!(apply(&patch.bytes, &old, chunk), Ok(new));
    }
}

fn small_case() -> (Vec<u8>, Vec<u8>) {
    let (old, mut new) = structured(8, 2000);
    new.extend_from_slice(b"a new tail that is copied as extra bytes");
    (old, new)
}

#[test]
fn every_truncation_refused() {
    let (old, new) = small_case();
    for only in [Some(Codec::Zstd), Some(Codec::Xz)] {
        let patch = diff(
            &old,
            &new,
            &DiffOptions {
                only,
                ..DiffOptions::default()
            },
        )
        .unwrap();
        for len in 0..patch.bytes.len() {
            assert_eq!(
                apply(&patch.bytes[..len], &old, 64),
                Err(ApplyError::Truncated),
                "{only:?} {len}"
            );
        }
    }
}

#[test]
fn every_flipped_byte_refused_or_exact() {
    let (old, new) = small_case();
    let mut hash_caught = 0;
    for only in [Some(Codec::Zstd), Some(Codec::Xz)] {
        let patch = diff(
            &old,
            &new,
            &DiffOptions {
                only,
                ..DiffOptions::default()
            },
        )
        .unwrap();
        for at in 0..patch.bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = patch.bytes.clone();
                bad[at] ^= flip;
                match apply(&bad, &old, 256) {
                    Ok(got) => assert_eq!(
                        got, new,
                        "{only:?}: byte {at} ^ {flip:#x} gave a wrong image"
                    ),
                    Err(ApplyError::Header(_)) => assert!(at < HEADER_LEN),
                    Err(ApplyError::NewHashMismatch) => hash_caught += 1,
                    Err(_) => {}
                }
                if at < HEADER_LEN {
                    assert!(matches!(apply(&bad, &old, 256), Err(ApplyError::Header(_))));
                }
            }
        }
    }
    // Some flips land in literals that still decode: the final hash catches them.
    assert!(hash_caught > 0);
}

// Hand-made patches for each hostile case.

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn entry(out: &mut Vec<u8>, seek: i64, add: &[u8], copy: &[u8]) {
    varint(out, ((seek << 1) ^ (seek >> 63)) as u64);
    varint(out, add.len() as u64);
    varint(out, copy.len() as u64);
    out.extend_from_slice(add);
    out.extend_from_slice(copy);
}

fn zstd_body(raw: &[u8], window_log: u32) -> Vec<u8> {
    use std::io::Write;
    let mut z = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    z.set_parameter(zstd::stream::raw::CParameter::WindowLog(window_log))
        .unwrap();
    z.write_all(raw).unwrap();
    z.finish().unwrap()
}

/// A zstd patch with `raw` as its entry stream.
fn hand_patch(old: &[u8], new: &[u8], raw: &[u8], window_log: u8) -> Vec<u8> {
    let body = zstd_body(raw, u32::from(window_log));
    let header = Header {
        codec: Codec::Zstd,
        window_log,
        old_size: old.len() as u64,
        new_size: new.len() as u64,
        body_len: body.len() as u64,
        old_sha256: Sha256::digest(old).into(),
        new_sha256: Sha256::digest(new).into(),
    };
    let mut p = header.encode().to_vec();
    p.extend_from_slice(&body);
    p
}

#[test]
fn hand_made_patch_applies() {
    let old = b"0123456789".to_vec();
    let new = b"2345xyz0123".to_vec();
    let mut raw = Vec::new();
    entry(&mut raw, 2, &[0; 4], b"xyz");
    entry(&mut raw, -6, &[0; 4], b"");
    assert_eq!(apply(&hand_patch(&old, &new, &raw, 12), &old, 5), Ok(new));
}

#[test]
fn hostile_entries_refused() {
    let old = b"0123456789".to_vec();
    let new = b"abcd".to_vec();
    let cases: Vec<(Vec<u8>, ApplyError)> = vec![
        (
            {
                let mut r = Vec::new();
                entry(&mut r, -1, &[0], b"abc");
                r
            },
            ApplyError::SeekOutOfRange {
                cursor: 0,
                seek: -1,
                old_size: 10,
            },
        ),
        (
            {
                let mut r = Vec::new();
                entry(&mut r, 11, &[0], b"abc");
                r
            },
            ApplyError::SeekOutOfRange {
                cursor: 0,
                seek: 11,
                old_size: 10,
            },
        ),
        (
            {
                let mut r = Vec::new();
                entry(&mut r, 8, &[0; 3], b"a");
                r
            },
            ApplyError::ReadPastOld {
                offset: 8,
                len: 3,
                old_size: 10,
            },
        ),
        (
            {
                let mut r = Vec::new();
                entry(&mut r, 0, &[], b"abcde");
                r
            },
            ApplyError::WritePastEnd {
                written: 0,
                len: 5,
                new_size: 4,
            },
        ),
        (
            {
                let mut r = Vec::new();
                entry(&mut r, 0, &[0; 3], b"ab");
                r
            },
            ApplyError::WritePastEnd {
                written: 0,
                len: 5,
                new_size: 4,
            },
        ),
        (
            {
                let mut r = Vec::new();
                entry(&mut r, 0, &[], b"");
                r
            },
            ApplyError::EmptyEntry,
        ),
        (vec![0x80; 11], ApplyError::Varint),
        (
            {
                let mut r = Vec::new();
                entry(&mut r, 0, &[], b"abcd");
                r.push(0);
                r
            },
            ApplyError::TrailingData,
        ),
        (
            {
                let mut r = Vec::new();
                entry(&mut r, 0, &[], b"ab");
                r
            },
            ApplyError::Truncated,
        ),
        (
            {
                let mut r = Vec::new();
                entry(&mut r, 0, &[], b"abcd");
                r.truncate(r.len() - 1);
                r
            },
            ApplyError::Truncated,
        ),
        (
            {
                let mut r = Vec::new();
                entry(&mut r, 0, &[], b"abce");
                r
            },
            ApplyError::NewHashMismatch,
        ),
    ];
    for (raw, want) in cases {
        let patch = hand_patch(&old, &new, &raw, 12);
        assert_eq!(apply(&patch, &old, 3), Err(want.clone()), "{raw:?}");
        // Refused again on every later call.
        let mut a = Applier::new();
        assert_eq!(apply_with(&mut a, &patch, &old, 1000), Err(want.clone()));
        assert_eq!(a.poll(), Err(want.clone()));
        assert_eq!(a.push_patch(b"x"), Err(want));
    }
}

#[test]
fn bytes_after_the_body_refused() {
    let old = b"0123456789".to_vec();
    let new = b"abcd".to_vec();
    let mut raw = Vec::new();
    entry(&mut raw, 0, &[], b"abcd");
    let good = hand_patch(&old, &new, &raw, 12);
    assert_eq!(apply(&good, &old, 7), Ok(new.clone()));
    // Past body_len, in one push or a later one.
    let mut longer = good.clone();
    longer.push(0);
    assert_eq!(apply(&longer, &old, 1 << 20), Err(ApplyError::TrailingData));
    assert_eq!(apply(&longer, &old, 1), Err(ApplyError::TrailingData));
    // body_len announcing more than the stream holds: the extra bytes are inside the body.
    let mut h = Header::decode(good[..HEADER_LEN].try_into().unwrap()).unwrap();
    h.body_len += 1;
    let mut inside = h.encode().to_vec();
    inside.extend_from_slice(&good[HEADER_LEN..]);
    inside.push(0);
    assert_eq!(apply(&inside, &old, 1 << 20), Err(ApplyError::TrailingData));
    // A second zstd frame after the first.
    let mut two = good.clone();
    two.extend_from_slice(&good[HEADER_LEN..]);
    let mut h2 = h.clone();
    h2.body_len = (two.len() - HEADER_LEN) as u64;
    two[..HEADER_LEN].copy_from_slice(&h2.encode());
    assert_eq!(apply(&two, &old, 1 << 20), Err(ApplyError::TrailingData));
    // Pushing after Done.
    let mut a = Applier::new();
    apply_with(&mut a, &good, &old, 64).unwrap();
    assert_eq!(a.push_patch(b"x"), Err(ApplyError::TrailingData));
}

#[test]
fn zstd_window_over_the_header_refused() {
    // A frame declaring a 1 MiB window while the header allows 4 KiB: the decoder refuses it
    // rather than allocating the window.
    let old = rng_bytes(9, 10);
    let new = rng_bytes(10, 2 << 20);
    let mut raw = Vec::new();
    entry(&mut raw, 0, &[], &new);
    let body = zstd_body(&raw, 20);
    let header = Header {
        codec: Codec::Zstd,
        window_log: 12,
        old_size: old.len() as u64,
        new_size: new.len() as u64,
        body_len: body.len() as u64,
        old_sha256: Sha256::digest(&old).into(),
        new_sha256: Sha256::digest(&new).into(),
    };
    let mut p = header.encode().to_vec();
    p.extend_from_slice(&body);
    let mut a = Applier::new();
    assert!(matches!(
        apply_with(&mut a, &p, &old, 4096),
        Err(ApplyError::Decompress(_))
    ));
    assert!(a.codec_memory() < 1 << 19, "{}", a.codec_memory());
}

#[test]
fn header_one_past_the_caps_refused() {
    let base = Header {
        codec: Codec::Xz,
        window_log: MAX_WINDOW_LOG,
        old_size: MAX_IMAGE_SIZE,
        new_size: MAX_IMAGE_SIZE,
        body_len: MAX_BODY_SIZE,
        old_sha256: [0; 32],
        new_sha256: [0; 32],
    };
    // At the caps: accepted (and then waiting for the body).
    let mut a = Applier::new();
    assert_eq!(a.push_patch(&base.encode()), Ok(HEADER_LEN));
    assert_eq!(a.poll().map(|s| matches!(s, Step::Header(_))), Ok(true));
    assert_eq!(a.poll(), Ok(Step::NeedPatch));
    let past = [
        Header {
            old_size: MAX_IMAGE_SIZE + 1,
            ..base.clone()
        },
        Header {
            new_size: MAX_IMAGE_SIZE + 1,
            ..base.clone()
        },
        Header {
            body_len: MAX_BODY_SIZE + 1,
            ..base.clone()
        },
        Header {
            window_log: MAX_WINDOW_LOG + 1,
            ..base.clone()
        },
    ];
    for h in past {
        let got = Applier::new().push_patch(&h.encode());
        assert!(
            matches!(
                got,
                Err(ApplyError::Header(
                    HeaderError::TooLarge { .. } | HeaderError::Window(..)
                ))
            ),
            "{got:?}"
        );
    }
}

#[test]
fn misuse_refused() {
    let (old, new) = small_case();
    let patch = diff(&old, &new, &DiffOptions::default()).unwrap();
    let mut a = Applier::new();
    assert_eq!(a.provide_old(b"x"), Err(ApplyError::NotAwaitingOld));
    let mut a = Applier::new();
    a.push_patch(&patch.bytes).unwrap();
    loop {
        match a.poll().unwrap() {
            Step::ReadOld { len, .. } => {
                assert_eq!(
                    a.provide_old(&vec![0; len + 1]),
                    Err(ApplyError::OldLength {
                        expected: len,
                        got: len + 1
                    })
                );
                break;
            }
            Step::NeedPatch | Step::Done => panic!("no old read"),
            _ => {}
        }
    }
}

#[test]
fn wrong_base_caught_by_the_hash() {
    let (old, new) = small_case();
    let patch = diff(&old, &new, &DiffOptions::default()).unwrap();
    let mut other = old.clone();
    other[100] ^= 1;
    assert_eq!(
        apply(&patch.bytes, &other, 512),
        Err(ApplyError::NewHashMismatch)
    );
}

#[test]
fn differ_window_outside_its_range_refused() {
    use myriad_ota::delta::{DiffError, MIN_WINDOW_LOG};
    for window_log in [MIN_WINDOW_LOG - 1, MAX_WINDOW_LOG + 1] {
        let opts = DiffOptions {
            window_log,
            ..DiffOptions::default()
        };
        assert!(
            matches!(diff(b"old", b"new", &opts), Err(DiffError::Window(w)) if w == window_log)
        );
    }
    // The smallest window works, and zstd never declares more than its own maximum.
    let (old, new) = small_case();
    for only in [Some(Codec::Zstd), Some(Codec::Xz)] {
        let opts = DiffOptions {
            window_log: MIN_WINDOW_LOG,
            only,
            ..DiffOptions::default()
        };
        let patch = diff(&old, &new, &opts).unwrap();
        assert_eq!(patch.header.window_log, MIN_WINDOW_LOG);
        assert_eq!(apply(&patch.bytes, &old, 100), Ok(new.clone()));
    }
    let zstd = diff(
        &old,
        &new,
        &DiffOptions {
            only: Some(Codec::Zstd),
            ..DiffOptions::default()
        },
    )
    .unwrap();
    assert_eq!(zstd.header.window_log, Codec::Zstd.max_window_log());
}

#[test]
fn without_threads_the_patch_still_applies() {
    let (old, new) = structured(11, 2 << 20);
    let opts = DiffOptions {
        threads: false,
        ..DiffOptions::default()
    };
    let patch = diff(&old, &new, &opts).unwrap();
    assert_eq!(apply(&patch.bytes, &old, 65536), Ok(new.clone()));
    let threaded = diff(&old, &new, &DiffOptions::default()).unwrap();
    assert_eq!(apply(&threaded.bytes, &old, 65536), Ok(new));
    // Both encoders ran either way and the smaller codec was kept.
    assert!(patch.zstd_len.is_some() && patch.xz_len.is_some());
}
