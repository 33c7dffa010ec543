//! Device shadows: desired / reported / delta documents with versions, in
//! the AWS IoT Device Shadow format (Azure calls them twins).
//!
//! Sans-IO and clock-free: the caller passes the payload bytes and the
//! current time, and publishes the documents it gets back.
//!
//! # Documents
//!
//! A [`Shadow`] holds two JSON objects, `desired` (what the application
//! wants) and `reported` (what the device says), their per-field metadata
//! (`{"timestamp": ms}` for every leaf, mirroring the structure of the
//! state), a `version` incremented by each accepted update, and the time of
//! the last update.
//!
//! An update request is
//! `{"state": {"desired": {..}, "reported": {..}}, "version": N, "clientToken": ".."}`:
//!
//! - `desired` and `reported` are each optional; `null` deletes the whole
//!   section; `state` may hold no other key;
//! - inside a section objects merge recursively, a `null` value deletes its
//!   key (`{"a": {"b": null}}` deletes `a.b` only), arrays and scalars
//!   replace whole; an object left empty is removed (a stored document never
//!   holds an empty object);
//! - `version`, when present, must equal the shadow's current version, or
//!   the update is rejected with code 409 (optimistic locking);
//! - `clientToken`, a string of at most 64 bytes, is echoed in every
//!   response to the request.
//!
//! The delta ([`compute_delta`]) is the part of `desired` that differs from
//! `reported`. An accepted update that touches `desired` yields an
//! `update/delta` message when the delta is not empty;
//! [`Shadow::delta_message`] gives it again for a device that reconnects.
//!
//! Rejections ([`UpdateRejected`]) carry an HTTP-like code: 400 for a
//! malformed request or one nested too deep, 409 for a version conflict,
//! 413 for a request or resulting document too large ([`ShadowLimits`]).
//! A rejected update leaves the shadow unchanged.
//!
//! # Timestamps
//!
//! Every timestamp is in **unix milliseconds**, both in the metadata and in
//! the `"timestamp"` of each response (AWS uses seconds there): the caller
//! passes `now_ms` and nothing here reads a clock.
//!
//! # Differences from AWS
//!
//! - timestamps in milliseconds (above);
//! - arrays are leaves in the metadata (one timestamp for the whole array,
//!   not one per element);
//! - `get/accepted` always holds `state.desired` and `state.reported`, as
//!   `{}` when empty.

mod delta;
mod document;
mod error;
mod merge;
mod request;

pub use delta::compute_delta;
pub use document::{Shadow, ShadowMetadata, UpdateAccepted};
pub use error::{Section, ShadowError, UpdateRejected};
pub use request::{GetRequest, MAX_CLIENT_TOKEN_BYTES, SectionUpdate, ShadowLimits, UpdateRequest};

#[cfg(test)]
mod tests;
