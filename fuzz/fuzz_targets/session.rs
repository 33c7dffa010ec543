//! Packet sequences from several clients into the sans-IO broker core, with
//! low limits, the clock moving and restarts from the recorded store; every
//! step is checked against the broker's invariants. The logic lives in
//! `myriad_broker::fuzz` (feature `fuzz`) so that `cargo test` replays the
//! corpus with it too.
//!
//! `MYRIAD_FUZZ_DEEP_LEVELS` caps generated deep topics (default
//! `myriad_broker::fuzz::DEFAULT_DEEP_LEVELS`). Run with `-handle_segv=0`
//! (scripts/fuzz.sh does): a stack overflow then aborts through the handler
//! installed here, and libFuzzer saves the input.

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
        trace: false,
    })
}

/// Bytes of the alternate signal stack: libFuzzer's abort handler runs on it
/// (it prints a stack trace and writes the crash input).
const ALT_STACK: usize = 1 << 20;

/// libFuzzer's own main runs the target, not Rust's, so nothing catches a
/// stack overflow: the SIGSEGV handler would run on the exhausted stack and
/// the process die without saving the input. This one runs on an alternate
/// stack and aborts, which libFuzzer handles (its SIGABRT handler then runs
/// on the same alternate stack).
fn catch_stack_overflow() {
    extern "C" fn on_segv(_: libc::c_int) {
        const MESSAGE: &[u8] = b"\n==fuzz== SIGSEGV (a stack overflow?): aborting\n";
        // SAFETY: write(2) and abort(3) are async-signal-safe.
        unsafe {
            libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
            libc::abort();
        }
    }
    let stack = Box::leak(vec![0u8; ALT_STACK].into_boxed_slice());
    // SAFETY: the alternate stack is leaked, so it lives as long as the
    // process; the handler only calls async-signal-safe functions.
    unsafe {
        let alt = libc::stack_t {
            ss_sp: stack.as_mut_ptr().cast(),
            ss_flags: 0,
            ss_size: stack.len(),
        };
        libc::sigaltstack(&alt, std::ptr::null_mut());
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_segv as *const () as usize;
        action.sa_flags = libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut());
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

fuzz_target!(init: catch_stack_overflow(), |data: &[u8]| run(data, options()));
