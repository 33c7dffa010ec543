//! Arbitrary bytes as a device's telemetry payload (JSON single or batch form, CBOR) and as an
//! HTTP bulk write body (line protocol, JSON): never a panic, what parses obeys the limits, and
//! every sample is accepted or counted refused. The logic lives in `myriad_fleet::fuzz`
//! (feature `fuzz`) so that `cargo test` replays the corpus with it too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| myriad_fleet::fuzz::telemetry_payload(data));
