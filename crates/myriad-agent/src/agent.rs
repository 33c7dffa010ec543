//! The agent: the boot state machine ([`crate::boot`]) persisted in the state files
//! ([`crate::state_file`]) around the slot I/O ([`crate::slots`]) and the self-test
//! ([`crate::selftest`]). Every state is saved before the agent acts on it.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use ed25519_dalek::VerifyingKey;
use myriad_ota::delta::MAX_IMAGE_SIZE;
use myriad_ota::manifest::{self, Manifest, ManifestError, Trust};
use myriad_ota::rollout::DeviceState;

use crate::boot::{BootDecision, BootError, BootState, Image, Report, Slot};
use crate::fs::Fs;
use crate::selftest::{Runner, SelfTest, Verdict};
use crate::slots::{self, DeltaExpect, SlotError};
use crate::state_file::{StateFileError, StateFiles};

/// Most reports held for the platform before the oldest is dropped.
pub const MAX_OUTBOX: usize = 64;

/// What the agent is configured with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Slot A (a file or a block device).
    pub slot_a: PathBuf,
    /// Slot B.
    pub slot_b: PathBuf,
    /// Directory of the state files (must exist).
    pub state_dir: PathBuf,
    /// The device's hardware type (manifests for another are refused).
    pub hardware_type: String,
    /// Pinned Ed25519 keys; one of them must have signed an Ed25519 manifest.
    pub ed25519_keys: Vec<VerifyingKey>,
    /// Pinned SM2 root CA certificates (DER); an SM2-with-SM3 manifest must carry a chain up
    /// to one of them, valid at the device's clock ([`unix_now`]).
    pub sm2_roots: Vec<Vec<u8>>,
    /// The self-test run after the trial boot.
    pub self_test: SelfTest,
}

impl AgentConfig {
    /// The path of `slot`.
    pub fn slot_path(&self, slot: Slot) -> &std::path::Path {
        match slot {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        }
    }
}

/// The [`Trust`] a manifest is verified against: built here and nowhere else. `now` (unix
/// seconds) is when the SM2 certificates must be valid.
pub fn trust(config: &AgentConfig, installed_counter: u64, now: u64) -> Trust {
    Trust {
        ed25519: config.ed25519_keys.clone(),
        sm2_roots: config.sm2_roots.clone(),
        now,
        hardware_type: config.hardware_type.clone(),
        installed_counter,
    }
}

/// The device's clock in unix seconds (0 when it reads before 1970: then no certificate is
/// valid, and SM2 manifests are refused until the clock is set).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where an update's bytes come from: the downloaded file (read twice: hashed against the
/// manifest before anything is written, then written).
pub enum Source<R> {
    /// The whole target image.
    Full(R),
    /// A delta patch from the active image.
    Delta(R),
}

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No state files yet: provision first.
    #[error("no boot state in {0}: provision the device first")]
    NotProvisioned(PathBuf),
    /// The state files.
    #[error(transparent)]
    State(#[from] StateFileError),
    /// The manifest was refused (nothing written).
    #[error("manifest refused: {0}")]
    Manifest(#[from] ManifestError),
    /// The state machine refused the step.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The source kind differs from the manifest (a patch for a full image or the reverse).
    #[error("the manifest describes a {manifest}, the source is a {source_kind}")]
    KindMismatch {
        /// What the manifest describes.
        manifest: &'static str,
        /// What was given.
        source_kind: &'static str,
    },
    /// The manifest's image is over [`MAX_IMAGE_SIZE`].
    #[error("image of {0} bytes, at most {MAX_IMAGE_SIZE}")]
    ImageTooLarge(u64),
    /// A delta's base is not the active image.
    #[error("delta base differs from the active image: {0}")]
    WrongBase(&'static str),
    /// The downloaded source does not match the manifest (nothing written).
    #[error("{what} does not match the manifest: {detail}")]
    SourceMismatch {
        /// `image` or `patch`.
        what: &'static str,
        /// Size or SHA-256.
        detail: String,
    },
    /// Writing or reading a slot.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// What was written does not hash to the manifest's target (the slot stays unbootable).
    #[error("slot {0} does not hash to the manifest's target after writing")]
    TargetMismatch(&'static str),
}

/// The device agent's core (no network).
pub struct Agent<F: Fs> {
    config: AgentConfig,
    fs: F,
    files: StateFiles,
    state: BootState,
    outbox: Vec<Report>,
    damaged: Vec<StateFileError>,
}

impl<F: Fs> Agent<F> {
    /// Opens the agent from its state files ([`AgentError::NotProvisioned`] when there are
    /// none). Damaged files next to a valid one are kept in [`Agent::damaged_state_files`].
    pub fn open(config: AgentConfig, fs: F) -> Result<Agent<F>, AgentError> {
        let mut files = StateFiles::new(&config.state_dir);
        let Some(loaded) = files.load(&fs)? else {
            return Err(AgentError::NotProvisioned(config.state_dir.clone()));
        };
        Ok(Agent {
            config,
            fs,
            files,
            state: loaded.state,
            outbox: Vec::new(),
            damaged: loaded.damaged,
        })
    }

    /// First start: hashes the first `size` bytes of `slot` as the confirmed image `version`
    /// with security counter `counter`, and saves that state. Refused when a state exists.
    pub fn provision(
        config: AgentConfig,
        fs: F,
        slot: Slot,
        version: &str,
        size: u64,
        counter: u64,
    ) -> Result<Agent<F>, AgentError> {
        let mut files = StateFiles::new(&config.state_dir);
        if let Some(l) = files.load(&fs)? {
            return Err(AgentError::Boot(BootError::Busy(format!(
                "already provisioned (version {})",
                l.state.image.version
            ))));
        }
        if size > MAX_IMAGE_SIZE {
            return Err(AgentError::ImageTooLarge(size));
        }
        if version.len() > crate::boot::MAX_VERSION_BYTES {
            return Err(BootError::TooLong("version", crate::boot::MAX_VERSION_BYTES).into());
        }
        let sha256 = slots::hash_slot(&fs, config.slot_path(slot), size)?;
        let image = Image {
            version: version.to_string(),
            size,
            sha256,
        };
        let state = BootState::provisioned(slot, image, counter);
        files.save(&fs, &state)?;
        Ok(Agent {
            config,
            fs,
            files,
            state,
            outbox: Vec::new(),
            damaged: Vec::new(),
        })
    }

    /// The current (saved) boot state.
    pub fn state(&self) -> &BootState {
        &self.state
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// State files that were damaged when the agent opened (a valid one was used).
    pub fn damaged_state_files(&self) -> &[StateFileError] {
        &self.damaged
    }

    /// Takes the reports for the platform, oldest first.
    pub fn take_reports(&mut self) -> Vec<Report> {
        std::mem::take(&mut self.outbox)
    }

    fn report(&mut self, report: Report) {
        if self.outbox.len() == MAX_OUTBOX {
            self.outbox.remove(0);
        }
        self.outbox.push(report);
    }

    fn save(&mut self, state: BootState) -> Result<(), AgentError> {
        self.files.save(&self.fs, &state)?;
        self.state = state;
        Ok(())
    }

    /// Installs an update into the inactive slot. In order, before the slot is touched: the
    /// manifest verifies ([`trust`]), the source kind matches it, a delta's base is the
    /// active image (recorded and re-hashed), the whole source hashes to the manifest's
    /// image or patch digest. Then the state says Installing (saved), the slot is written and
    /// fsynced, what was written must hash to the target, and only then the state says
    /// Installed (the slot is bootable from the next start). Reports REJECTED for a refused
    /// manifest or source, FAILED for a failure after writing began.
    pub fn install<R: Read + Seek>(
        &mut self,
        envelope: &[u8],
        rollout: &str,
        source: Source<R>,
    ) -> Result<(), AgentError> {
        let m = match self.check(envelope, &source) {
            Ok(m) => m,
            Err(e) => {
                if !matches!(e, AgentError::Boot(_) | AgentError::State(_)) {
                    self.report(Report {
                        rollout: rollout.to_string(),
                        state: DeviceState::Rejected,
                        reason: Some(e.to_string()),
                    });
                }
                return Err(e);
            }
        };
        let target: [u8; 32] = digest(&m.target_sha256)?;
        let image = Image {
            version: m.target_version.clone(),
            size: m.image_size,
            sha256: target,
        };
        let next = self
            .state
            .begin_install(image, m.security_counter, rollout)?;
        self.save(next)?;
        let inactive = self.state.inactive();
        let result = self.write(&m, source, inactive).and_then(|written| {
            let slot = inactive.name();
            let next = self
                .state
                .installed(&written)
                .map_err(|_| AgentError::TargetMismatch(slot))?;
            self.save(next)
        });
        if let Err(e) = &result
            && let Some((next, report)) = self.state.abandon(&e.to_string())
        {
            // Best effort: if this save fails too, the next start discards the install.
            if self.save(next).is_ok() {
                self.report(report);
            }
        }
        result
    }

    /// Every check before the slot is touched; the verified manifest.
    fn check<R: Read + Seek>(
        &self,
        envelope: &[u8],
        source: &Source<R>,
    ) -> Result<Manifest, AgentError> {
        let m = manifest::verify(
            envelope,
            &trust(&self.config, self.state.counter, unix_now()),
        )?;
        let delta = m.patch_size != 0;
        let kind = |d| if d { "delta patch" } else { "full image" };
        let src_delta = matches!(source, Source::Delta(_));
        if delta != src_delta {
            return Err(AgentError::KindMismatch {
                manifest: kind(delta),
                source_kind: kind(src_delta),
            });
        }
        if m.image_size > MAX_IMAGE_SIZE {
            return Err(AgentError::ImageTooLarge(m.image_size));
        }
        if let Some(p) = &self.state.pending
            && p.phase != crate::boot::Phase::Installing
        {
            return Err(BootError::Busy(p.rollout.clone()).into());
        }
        if delta {
            let active = &self.state.image;
            if m.base_sha256 != active.sha256 {
                return Err(AgentError::WrongBase("manifest base_sha256"));
            }
            let path = self.config.slot_path(self.state.active);
            let actual = slots::hash_slot(&self.fs, path, active.size)?;
            if actual != active.sha256 {
                return Err(AgentError::WrongBase("active slot content changed"));
            }
        }
        Ok(m)
    }

    fn write<R: Read + Seek>(
        &mut self,
        m: &Manifest,
        source: Source<R>,
        inactive: Slot,
    ) -> Result<[u8; 32], AgentError> {
        let dst = self.config.slot_path(inactive).to_path_buf();
        let (mut src, what, size, sha) = match source {
            Source::Full(r) => (r, "image", m.image_size, &m.target_sha256),
            Source::Delta(r) => (r, "patch", m.patch_size, &m.patch_sha256),
        };
        // The whole download is checked against the signed digest before the slot is
        // touched (the state already says Installing, which the next start discards).
        let rewind = |src: &mut R| {
            src.seek(SeekFrom::Start(0))
                .map_err(|source| SlotError::Io {
                    path: PathBuf::from("<source>"),
                    source,
                })
        };
        rewind(&mut src)?;
        let (got, len) = slots::hash_source(&mut src, size)?;
        if len != size {
            return Err(AgentError::SourceMismatch {
                what,
                detail: format!("{len} bytes, expected {size}"),
            });
        }
        if got.as_slice() != sha.as_slice() {
            return Err(AgentError::SourceMismatch {
                what,
                detail: "SHA-256 differs".into(),
            });
        }
        rewind(&mut src)?;
        let written = if m.patch_size == 0 {
            slots::write_full(&self.fs, &mut src, &dst, m.image_size)?
        } else {
            let want = DeltaExpect {
                old_size: self.state.image.size,
                old_sha256: self.state.image.sha256,
                new_size: m.image_size,
                new_sha256: digest(&m.target_sha256)?,
            };
            let old = self.config.slot_path(self.state.active).to_path_buf();
            slots::write_delta(&self.fs, &mut src, &old, &dst, &want)?
        };
        Ok(written)
    }

    /// The decision at start ("boot"), saved before it is acted on: an interrupted install
    /// is discarded, an installed update starts its trial (the slot is re-hashed first; a
    /// changed slot rolls back), a trial interrupted by a restart rolls back. The caller runs
    /// [`Agent::run_self_test`] on [`BootDecision::RunSelfTest`].
    pub fn boot(&mut self) -> Result<BootDecision, AgentError> {
        let (next, decision) = self.state.boot();
        if let BootDecision::RunSelfTest { slot } = decision {
            let p = next
                .pending
                .as_ref()
                .map(|p| (p.image.size, p.image.sha256));
            if let Some((size, sha)) = p {
                let ok = slots::hash_slot(&self.fs, self.config.slot_path(slot), size)
                    .is_ok_and(|h| h == sha);
                if !ok {
                    self.save(next)?;
                    return self.finish_trial(Some("trial slot does not hash to its target"));
                }
            }
        }
        self.save(next)?;
        match &decision {
            BootDecision::Discarded(r) | BootDecision::RolledBack(r) => self.report(r.clone()),
            // REBOOTING was reported before the restart; the self-test's verdict follows.
            BootDecision::RunSelfTest { .. } | BootDecision::Normal => {}
        }
        Ok(decision)
    }

    fn finish_trial(&mut self, failure: Option<&str>) -> Result<BootDecision, AgentError> {
        let (next, report) = self.state.self_test(failure)?;
        self.save(next)?;
        self.report(report.clone());
        Ok(if report.state == DeviceState::Succeeded {
            BootDecision::Normal
        } else {
            BootDecision::RolledBack(report)
        })
    }

    /// Runs the self-test on the trial slot and confirms (SUCCEEDED) or rolls back
    /// (ROLLED_BACK); the state is saved before the report is queued.
    pub fn run_self_test(&mut self, runner: &dyn Runner) -> Result<Report, AgentError> {
        let test = &self.config.self_test;
        let verdict = runner.run(test.argv(), test.timeout());
        let failure = match &verdict {
            Verdict::Passed => None,
            Verdict::Failed(why) => Some(why.as_str()),
        };
        let (next, report) = self.state.self_test(failure)?;
        self.save(next)?;
        self.report(report.clone());
        Ok(report)
    }

    /// [`Agent::boot`], then the self-test when the decision asks for it.
    pub fn start(&mut self, runner: &dyn Runner) -> Result<BootDecision, AgentError> {
        match self.boot()? {
            BootDecision::RunSelfTest { .. } => {
                let report = self.run_self_test(runner)?;
                Ok(match report.state {
                    DeviceState::Succeeded => BootDecision::Normal,
                    _ => BootDecision::RolledBack(report),
                })
            }
            d => Ok(d),
        }
    }
}

fn digest(d: &[u8]) -> Result<[u8; 32], AgentError> {
    <[u8; 32]>::try_from(d)
        .map_err(|_| ManifestError::BadField("target_sha256", "must be 32 bytes").into())
}
