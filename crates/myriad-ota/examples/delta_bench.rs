//! Delta patch benchmark (bench/ota_delta.sh runs it beside Debian's bsdiff and xdelta3).
//!
//! ```text
//! delta_bench pair NAME OLD NEW PATCH_OUT   diff, write the patch, apply it from files; one JSON line
//! delta_bench apply OLD PATCH NEW_OUT       apply only (run under /usr/bin/time for max RSS); one JSON line
//! ```
//!
//! Applying reads the old image at the offsets the applier asks (`read_exact_at`), pushes the
//! patch in 64 KiB reads and writes the new image sequentially, like a device. Memory while
//! applying, beyond those I/O buffers (allocated before the baseline):
//!
//! - `apply_rust_heap_peak`: peak of Rust allocations, from a counting `#[global_allocator]`;
//! - `apply_malloc_peak`: peak of everything malloc holds (Rust and the C codec libraries,
//!   whose allocations a Rust allocator does not see), from glibc's `mallinfo2()`
//!   (`uordblks + hblkhd`) sampled after every step, minus the value before the applier;
//! - `zstd_apply_malloc_peak`: the same for the zstd variant of the patch (`pair` makes both).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use myriad_ota::delta::{Applier, Codec, DiffOptions, Step, diff};
use sha2::{Digest, Sha256};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes malloc holds now (small chunks in arenas plus mmapped large ones).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_in_use() -> usize {
    // SAFETY: mallinfo2 only reads glibc's allocator statistics.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks + m.hblkhd
}

/// Without glibc there is no `mallinfo2`: the malloc peak reads 0 (the Rust heap peak stays).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_in_use() -> usize {
    0
}

struct ApplyStats {
    secs: f64,
    rust_heap_peak: usize,
    malloc_peak: usize,
    codec_memory: usize,
    read_old_calls: u64,
    written: u64,
}

type Error = Box<dyn std::error::Error>;

fn sha256_file(path: &str, buf: &mut [u8]) -> Result<[u8; 32], Error> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

fn apply_files(old: &str, patch: &str, out: &str, sample: bool) -> Result<ApplyStats, Error> {
    let old_file = File::open(old)?;
    let mut patch_file = File::open(patch)?;
    let mut out_file = File::create(out)?;
    // The caller's I/O buffers.
    let mut pbuf = vec![0u8; 64 * 1024];
    let mut obuf = vec![0u8; 32 * 1024];
    let old_hash = sha256_file(old, &mut obuf)?;
    let (mut ppos, mut plen) = (0usize, 0usize);
    let mut read_old_calls = 0u64;

    let base_rust = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base_rust, Ordering::Relaxed);
    let base_malloc = malloc_in_use();
    let mut malloc_peak = 0usize;
    let start = Instant::now();
    let mut applier = Applier::new();
    loop {
        match applier.poll()? {
            Step::Header(h) => {
                if h.old_sha256 != old_hash {
                    return Err("the old image is not the patch's base".into());
                }
            }
            Step::NeedPatch => {
                if ppos == plen {
                    plen = patch_file.read(&mut pbuf)?;
                    ppos = 0;
                }
                if plen == 0 {
                    applier.finish_patch();
                } else {
                    ppos += applier.push_patch(&pbuf[ppos..plen])?;
                }
            }
            Step::ReadOld { offset, len } => {
                read_old_calls += 1;
                old_file.read_exact_at(&mut obuf[..len], offset)?;
                applier.provide_old(&obuf[..len])?;
            }
            Step::Write(bytes) => out_file.write_all(bytes)?,
            Step::Done => break,
        }
        if sample {
            malloc_peak = malloc_peak.max(malloc_in_use().saturating_sub(base_malloc));
        }
    }
    out_file.sync_data()?;
    let secs = start.elapsed().as_secs_f64();
    Ok(ApplyStats {
        secs,
        rust_heap_peak: PEAK.load(Ordering::Relaxed) - base_rust,
        malloc_peak,
        codec_memory: applier.codec_memory(),
        read_old_calls,
        written: applier.written(),
    })
}

fn apply_json(s: &ApplyStats) -> String {
    format!(
        "\"apply_secs\":{:.4},\"apply_rust_heap_peak\":{},\"apply_malloc_peak\":{},\"apply_codec_memory\":{},\
         \"apply_buffers\":{},\"apply_read_old_calls\":{},\"new_written\":{}",
        s.secs,
        s.rust_heap_peak,
        s.malloc_peak,
        s.codec_memory,
        Applier::BUFFERS,
        s.read_old_calls,
        s.written
    )
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["pair", name, old_path, new_path, patch_path] => {
            let old = std::fs::read(old_path)?;
            let new = std::fs::read(new_path)?;
            let start = Instant::now();
            let patch = diff(&old, &new, &DiffOptions::default())?;
            let diff_secs = start.elapsed().as_secs_f64();
            std::fs::write(patch_path, &patch.bytes)?;
            let new_hash: [u8; 32] = Sha256::digest(&new).into();
            // The zstd variant too, for its memory (the smaller codec is usually xz).
            let zstd_only = DiffOptions {
                only: Some(Codec::Zstd),
                ..DiffOptions::default()
            };
            let zstd_patch = format!("{patch_path}.zstd");
            std::fs::write(&zstd_patch, diff(&old, &new, &zstd_only)?.bytes)?;
            drop((old, new));
            let out = format!("{patch_path}.out");
            // Timed without sampling, then measured with it.
            let timed = apply_files(old_path, patch_path, &out, false)?;
            let measured = apply_files(old_path, patch_path, &out, true)?;
            let mut buf = vec![0u8; 64 * 1024];
            if sha256_file(&out, &mut buf)? != new_hash {
                return Err("applied image differs".into());
            }
            let zstd = apply_files(old_path, &zstd_patch, &out, true)?;
            if sha256_file(&out, &mut buf)? != new_hash {
                return Err("applied image differs (zstd)".into());
            }
            std::fs::remove_file(&out)?;
            std::fs::remove_file(&zstd_patch)?;
            let stats = ApplyStats {
                secs: timed.secs,
                ..measured
            };
            println!(
                "{{\"name\":\"{name}\",\"old_bytes\":{},\"new_bytes\":{},\"patch_bytes\":{},\"codec\":\"{}\",\
                 \"window_log\":{},\"zstd_body\":{},\"xz_body\":{},\"entries\":{},\"raw_stream_bytes\":{},\
                 \"diff_secs\":{diff_secs:.3},{},\"zstd_apply_malloc_peak\":{},\"zstd_apply_codec_memory\":{}}}",
                patch.header.old_size,
                patch.header.new_size,
                patch.bytes.len(),
                patch.header.codec.name(),
                patch.header.window_log,
                patch.zstd_len.unwrap_or(0),
                patch.xz_len.unwrap_or(0),
                patch.entries,
                patch.raw_len,
                apply_json(&stats),
                zstd.malloc_peak,
                zstd.codec_memory
            );
        }
        ["apply", old_path, patch_path, out_path] => {
            let stats = apply_files(old_path, patch_path, out_path, true)?;
            println!("{{{}}}", apply_json(&stats));
        }
        _ => {
            eprintln!(
                "usage: delta_bench pair NAME OLD NEW PATCH_OUT | delta_bench apply OLD PATCH NEW_OUT"
            );
            std::process::exit(2);
        }
    }
    Ok(())
}
