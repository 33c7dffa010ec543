//! Myriad's OTA core (issue 18), sans-IO: no clock, no I/O (the differ, feature `diff`, may
//! use threads: `DiffOptions::threads`).
//!
//! - [`delta`]: delta patches: a bsdiff-class differ (qbsdiff) writing our own streaming
//!   container (one xz or zstd stream, the smaller), and a sans-IO applier that reads the old
//!   image at random offsets and writes the new one sequentially in under 1 MiB.
//! - [`keygen`]: development signing keys (an Ed25519 pair; an SM2 root CA, intermediate CA
//!   and code-signing leaf) from a seed and a time passed in, and the loaders of key and
//!   certificate files (PEM or DER bytes).
//! - [`manifest`]: the update manifest, its protobuf schema (`proto/manifest.proto`, compiled
//!   with protox and prost, so no system `protoc` is needed), signing with Ed25519 or SM2 and
//!   the checks a device runs before it writes anything to its inactive slot.
//! - [`rollout`]: the rollout planner (waves, abort threshold, retries, timeouts, pause /
//!   resume / cancel) as a state machine with time passed in, restorable from its records.
//! - [`sm2_chain`]: SM2 signatures with SM3 digests under an X.509 chain checked up to pinned
//!   roots at a time passed in.

#![deny(missing_docs)]

pub mod delta;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod keygen;
pub mod manifest;
pub mod rollout;
pub mod sm2_chain;

/// The generated protobuf types (`myriad.ota.v1`).
#[allow(missing_docs, clippy::doc_markdown)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/myriad.ota.v1.rs"));
}
