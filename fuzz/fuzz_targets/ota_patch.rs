//! Arbitrary bytes as an OTA delta patch fed to the sans-IO applier in chunks (or, by the first
//! byte, two images diffed and applied back): never a panic, never a read outside the old
//! image or a write past the header's new size, `Done` only with the right SHA-256, and never
//! memory a length field asks for (scripts/fuzz.sh runs it under -malloc_limit_mb). The logic
//! lives in `myriad_ota::fuzz` (feature `fuzz`) so that `cargo test` replays the corpus too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| myriad_ota::fuzz::ota_patch(data));
