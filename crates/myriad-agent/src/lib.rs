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
//! - [`fs`]: the file operations behind a trait (tests inject power cuts); [`fs::LogFs`] adds
//!   the directory and append operations of the SDK cores below.
//!
//! The device SDK's cores (issue 19), sans-IO (time and randomness passed in, files through
//! [`fs::LogFs`]):
//!
//! - [`spool`]: the store-and-forward telemetry log (segments, ack cursor, size cap with
//!   counted drops) and [`spool::Point`], the batch telemetry form.
//! - [`replay`]: the pacer that drains the spool's backlog at a rate without holding up live
//!   data.
//! - [`backoff`]: reconnect delays, exponential with full jitter.
//! - [`dedup`]: the persisted set of recent command ids (a redelivered command runs once).
//! - [`shadow`]: the local shadow copy and its sync over `$shadow/{id}/...`.
//! - `client` (feature `client`): the device's one MQTT connection (tokio + rumqttc; 5.0 with a
//!   3.1.1 fallback, persistent session, reconnects with [`backoff`], PUBACKs reported back).
//! - `telemetry` (feature `client`): store-and-forward end to end: points into the [`spool`],
//!   a pump publishing its records at QoS 1 and acknowledging them after the PUBACK.
//! - [`memfs`]: an in-memory [`fs::LogFs`] with power cuts, for tests.
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
//! | final outcomes kept in the state | [`boot::MAX_OUTCOMES`] (8), reasons cut to [`boot::MAX_OUTCOME_REASON_BYTES`] (256) |
//! | trust anchors (Ed25519 keys + SM2 roots) | [`config::MAX_KEYS`] (16), each file at most [`myriad_ota::keygen::MAX_KEY_FILE`] (64 KiB) |
//! | telemetry spool record | [`spool::MAX_RECORD_BYTES`] (256 KiB) |
//! | telemetry spool segment, total | [`spool::SpoolConfig`]: 4 MiB and 64 MiB by default ([`spool::MIN_SEGMENT_BYTES`] 4 KiB ..= [`spool::MAX_SEGMENT_BYTES`] 256 MiB; 2 segments ..= [`spool::MAX_TOTAL_BYTES`] 1 TiB), oldest segments dropped and counted |
//! | records per spool batch append, per peek | [`spool::MAX_BATCH_RECORDS`] (1,024), [`spool::MAX_PEEK_RECORDS`] (10,000) |
//! | points per record, metrics per point, metric name | [`spool::MAX_POINTS`] (1,000), [`spool::MAX_METRICS`] (64), [`spool::MAX_METRIC_NAME`] (128 bytes) |
//! | replay rate, burst | [`replay::MAX_RATE`] (10,000 records/s), [`replay::MAX_BURST`] (100,000) |
//! | reconnect window | [`backoff::BackoffConfig`]: 2 s doubling to 2 min by default, cap at most [`backoff::MAX_CAP_MS`] (1 h) |
//! | command ids remembered, id length | [`dedup::DEFAULT_CAPACITY`] (1,024; at most [`dedup::MAX_CAPACITY`] 65,536), [`dedup::MAX_ID_BYTES`] (128 bytes) |
//! | client (feature `client`): QoS 1 outbox, subscriptions, channel | 256 by default (at most 65,536), 64, 1 ..= 4,096 messages (full: dropped, counted) |
//! | telemetry pump (feature `client`): records in flight, points per call | 8 by default (1 ..= 256), 100,000 |
//! | `[[telemetry.sample]]` | [`config::MAX_SAMPLERS`] (32), every 1 s ..= 1 day, command output [`config::MAX_SAMPLE_OUTPUT`] (64 KiB) |
//! | shadow section, nesting, message | [`shadow::MAX_SECTION_BYTES`] (8 KiB), [`shadow::MAX_DEPTH`] (6), [`shadow::MAX_MESSAGE_BYTES`] (64 KiB) |

#![deny(missing_docs)]

pub mod agent;
pub mod backoff;
pub mod boot;
#[cfg(feature = "client")]
pub mod client;
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
#[cfg(feature = "client")]
pub mod telemetry;

pub use agent::{Agent, AgentConfig, AgentError, Source, trust};
pub use boot::{BootDecision, BootState, Image, Phase, Report, Slot};
