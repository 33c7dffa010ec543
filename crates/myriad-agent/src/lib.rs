//! Myriad's device agent (issue 18), its core: A/B slots, verified install of a full image or
//! a delta patch into the inactive slot, the trial boot with a self-test, confirm or roll
//! back, and a crash-safe state. The network side (MQTT notifications and reports, HTTP
//! download with resume) is `myriad agent`'s network mode (crates/myriad/src/agent/net.rs),
//! on top of [`Agent`]; [`config::MqttConfig`] is its `[mqtt]` table.
//!
//! - [`boot`]: the boot state machine, pure (no I/O, no clock).
//! - [`state_file`]: that state on disk, two alternating checksummed files.
//! - [`slots`]: hashing and writing slots (files or block devices), driving the
//!   [`myriad_ota::delta::Applier`] for patches.
//! - [`selftest`]: the self-test command behind a [`selftest::Runner`] trait.
//! - [`agent`]: [`Agent`], the checks and the order of the saves.
//! - [`fs`]: the file operations behind a trait (tests inject power cuts).
//!
//! # States
//!
//! ```text
//!                 install: manifest verified, kind, base, source hash ok
//!   Confirmed ─────────────────────────────────────────────► Installing
//!   (active, image, counter)                                  │   │
//!      ▲  ▲  ▲                 write + fsync + hash == target │   │ write or hash fails:
//!      │  │  │                                                ▼   │ abandon (FAILED)
//!      │  │  │                                         Installed  │ restart: discard (FAILED)
//!      │  │  └────────────────────────────────────────────────────┘
//!      │  │                                                 │ restart ("boot"): re-hash slot
//!      │  │ self-test fails, or restart during it,          ▼
//!      │  │ or slot hash changed: ROLLED_BACK             Trial  (booted from the new slot)
//!      │  └──────────────────────────────────────────────── │
//!      │                                                    │ self-test exit 0
//!      └─── active = new slot, counter raised: SUCCEEDED ───┘
//! ```
//!
//! The booted slot ([`BootState::boot_slot`]) is the active one except during Trial, and a
//! slot enters Installed only after the SHA-256 of the bytes written (and fsynced) matched the
//! signed manifest's target: the device always boots a verified image. Every state is saved
//! (temp file, fsync, rename, fsync of the directory) before the agent acts on it, so a crash
//! between any two steps restarts into one of them; `tests/install.rs` cuts the power after
//! every I/O operation of a whole install + switch + trial + confirm.
//!
//! # Refused before the inactive slot is touched
//!
//! A manifest that does not verify ([`myriad_ota::manifest::verify`]: signature, hardware
//! type, anti-rollback counter against the installed one), a source of the other kind, a
//! delta whose base is not the active image (the recorded hash and a fresh hash of the slot),
//! and a source whose size or SHA-256 differs from the manifest's (the downloaded file is
//! hashed whole first). A patch that still fails in the applier, or bytes that change between
//! the two reads, end in a hash mismatch and the slot never becomes bootable.
//!
//! # Limits
//!
//! | limit | value |
//! |---|---|
//! | state file | [`state_file::MAX_STATE_FILE`] (16 KiB) |
//! | version string, rollout id | [`boot::MAX_VERSION_BYTES`], [`boot::MAX_ROLLOUT_BYTES`] (128 bytes) |
//! | image size | [`myriad_ota::delta::MAX_IMAGE_SIZE`] (4 GiB) |
//! | self-test command | [`selftest::MAX_SELF_TEST_ARGS`] (64) arguments of [`selftest::MAX_SELF_TEST_ARG_BYTES`] (4 KiB) |
//! | self-test timeout | [`selftest::MAX_SELF_TEST_TIMEOUT`] (1 h) |
//! | queued reports | [`agent::MAX_OUTBOX`] (64, oldest dropped) |

#![deny(missing_docs)]

pub mod agent;
pub mod backoff;
pub mod boot;
pub mod config;
pub mod dedup;
pub mod fs;
pub mod memfs;
pub mod replay;
pub mod selftest;
pub mod shadow;
pub mod slots;
pub mod spool;
pub mod state_file;

pub use agent::{Agent, AgentConfig, AgentError, Source, trust};
pub use boot::{BootDecision, BootState, Image, Phase, Report, Slot};
