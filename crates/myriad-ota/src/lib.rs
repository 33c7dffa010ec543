//! Myriad's OTA core (issue 18), sans-IO: no clock, no threads, no I/O.
//!
//! This first step holds the update manifest: its protobuf schema (`proto/manifest.proto`,
//! compiled with protox and prost, so no system `protoc` is needed), signing with Ed25519 and
//! the checks a device runs before it writes anything to its inactive slot ([`manifest`]).
//! SM2 with SM3 under an X.509 chain is [`sm2_chain`]; development keys and the loaders of
//! key and certificate files are [`keygen`].
//! Artifacts, delta patches, rollouts and the device agent come next.

#![deny(missing_docs)]

pub mod keygen;
pub mod manifest;
pub mod sm2_chain;

/// The generated protobuf types (`myriad.ota.v1`).
#[allow(missing_docs, clippy::doc_markdown)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/myriad.ota.v1.rs"));
}
