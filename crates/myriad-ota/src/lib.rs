//! Myriad's OTA core (issue 18), sans-IO: no clock, no I/O (the differ, feature `diff`, may
//! use threads: `DiffOptions::threads`).
//!
//! - [`delta`]: delta patches: a bsdiff-class differ (qbsdiff) writing our own streaming
//!   container (one xz or zstd stream, the smaller), and a sans-IO applier that reads the old
//!   image at random offsets and writes the new one sequentially in under 1 MiB.
//! - [`manifest`]: the update manifest, its protobuf schema (`proto/manifest.proto`, compiled
//!   with protox and prost, so no system `protoc` is needed), signing with Ed25519 and the
//!   checks a device runs before it writes anything to its inactive slot.
//! - [`rollout`]: the rollout planner (waves, abort threshold, retries, timeouts, pause /
//!   resume / cancel) as a state machine with time passed in, restorable from its records.

#![deny(missing_docs)]

pub mod delta;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod manifest;
pub mod rollout;

/// The generated protobuf types (`myriad.ota.v1`).
#[allow(missing_docs, clippy::doc_markdown)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/myriad.ota.v1.rs"));
}

// SM2 with SM3 under X.509 chains, and development keys with the loaders of key and
// certificate files (kept after `proto` so the module list above merges cleanly).
pub mod keygen;
pub mod sm2_chain;
