//! Myriad's OTA core (issue 18), sans-IO: no clock, no threads, no I/O.
//!
//! This first step holds the update manifest: its protobuf schema (`proto/manifest.proto`,
//! compiled with protox and prost, so no system `protoc` is needed), signing with Ed25519 and
//! the checks a device runs before it writes anything to its inactive slot ([`manifest`]).
//! Artifacts, delta patches, rollouts and the device agent come next.

#![deny(missing_docs)]

pub mod manifest;

/// The generated protobuf types (`myriad.ota.v1`).
#[allow(missing_docs, clippy::doc_markdown)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/myriad.ota.v1.rs"));
}

// SM2 with SM3 under X.509 chains, and development keys with the loaders of key and
// certificate files (kept after `proto` so the module list above merges cleanly).
pub mod keygen;
pub mod sm2_chain;
