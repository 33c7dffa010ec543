//! The boot state machine: pure (no I/O, no clock). The shell persists every state this
//! module returns before it acts on it (see the [crate docs](crate) for the diagram).
//!
//! The invariant every transition keeps: the slot the device boots ([`BootState::boot_slot`])
//! holds an image whose SHA-256 was verified, and [`BootState::boot_image`] says which. A slot
//! becomes bootable only through [`BootState::installed`], which compares the hash of what was
//! written with the manifest's target.

use serde::{Deserialize, Serialize};

use myriad_ota::rollout::DeviceState;

/// Longest version string kept in the state (bytes).
pub const MAX_VERSION_BYTES: usize = 128;
/// Longest rollout id kept in the state (bytes).
pub const MAX_ROLLOUT_BYTES: usize = 128;
/// Final outcomes kept in the state ([`BootState::outcomes`]); older ones are forgotten.
pub const MAX_OUTCOMES: usize = 8;
/// Longest reason kept with an outcome (bytes; cut at a character boundary).
pub const MAX_OUTCOME_REASON_BYTES: usize = 256;

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `"A"` or `"B"`.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
}

/// An image in a slot: the slot's first `size` bytes hash to `sha256`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The image's version.
    pub version: String,
    /// Its length in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

/// Where a pending update is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Writing the inactive slot; its content is garbage until [`Phase::Installed`].
    Installing,
    /// Written, fsynced and its SHA-256 matched the manifest: switched, awaiting the trial
    /// boot.
    Installed,
    /// Booted once from the new slot; the self-test is running.
    Trial,
}

/// An update in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The slot being written (always the inactive one).
    pub slot: Slot,
    /// The target image (version, size and SHA-256 from the signed manifest).
    pub image: Image,
    /// The target's security counter.
    pub counter: u64,
    /// The rollout that asked for it.
    pub rollout: String,
    /// Where the update is.
    pub phase: Phase,
}

/// The device's boot state, persisted by [`crate::state_file`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// The confirmed slot.
    pub active: Slot,
    /// The confirmed image in it.
    pub image: Image,
    /// The installed security counter (anti-rollback).
    pub counter: u64,
    /// An update in progress, if any.
    pub pending: Option<Pending>,
    /// The last [`MAX_OUTCOMES`] final outcomes of updates (SUCCEEDED, ROLLED_BACK, or FAILED
    /// after writing began), oldest first, saved with the state they led to: a report lost
    /// to a crash before the platform acknowledged it is sent again when the platform
    /// notifies the rollout again, and the update is not installed twice.
    #[serde(default)]
    pub outcomes: Vec<Report>,
}

/// A report for the platform (`$ota/{id}/progress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The rollout.
    pub rollout: String,
    /// The device's state in it.
    pub state: DeviceState,
    /// Why, for failures and rollbacks.
    pub reason: Option<String>,
}

/// What the agent does after [`BootState::boot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// Run the confirmed image; nothing pending.
    Normal,
    /// An install was interrupted: the inactive slot was discarded (the platform's retry, or
    /// the next session's resume, starts it again).
    Discarded(Report),
    /// The new slot is on trial: run the self-test, then [`BootState::self_test`].
    RunSelfTest {
        /// The slot on trial.
        slot: Slot,
    },
    /// The agent restarted during the self-test: back on the confirmed slot.
    RolledBack(Report),
}

/// A transition that the state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootError {
    /// An update is already installed or on trial.
    #[error("an update for rollout {0:?} is already installed or on trial")]
    Busy(String),
    /// The pending update is not in the phase this step needs.
    #[error("no pending update in phase {0:?}")]
    WrongPhase(Phase),
    /// The written slot's SHA-256 differs from the manifest's target.
    #[error("slot {0} SHA-256 differs from the manifest's target")]
    HashMismatch(&'static str),
    /// A version or rollout id over its limit.
    #[error("{0} longer than {1} bytes")]
    TooLong(&'static str, usize),
}

impl BootState {
    /// A freshly provisioned device: `image` (already hashed by the caller) in `active`.
    pub fn provisioned(active: Slot, image: Image, counter: u64) -> BootState {
        BootState {
            active,
            image,
            counter,
            pending: None,
            outcomes: Vec::new(),
        }
    }

    /// The saved final outcome of `rollout`, if it is among the last [`MAX_OUTCOMES`].
    pub fn outcome(&self, rollout: &str) -> Option<&Report> {
        self.outcomes.iter().rev().find(|r| r.rollout == rollout)
    }

    /// Records a final outcome (the reason cut to [`MAX_OUTCOME_REASON_BYTES`]).
    fn remember(&mut self, report: &Report) {
        let mut kept = report.clone();
        if let Some(reason) = kept.reason.as_mut() {
            let mut end = reason.len().min(MAX_OUTCOME_REASON_BYTES);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        self.outcomes.retain(|r| r.rollout != kept.rollout);
        if self.outcomes.len() == MAX_OUTCOMES {
            self.outcomes.remove(0);
        }
        self.outcomes.push(kept);
    }

    /// The slot the bootloader starts: the trial slot during [`Phase::Trial`], else the
    /// confirmed one.
    pub fn boot_slot(&self) -> Slot {
        match &self.pending {
            Some(p) if p.phase == Phase::Trial => p.slot,
            _ => self.active,
        }
    }

    /// The image in [`BootState::boot_slot`] (verified when it became bootable).
    pub fn boot_image(&self) -> &Image {
        match &self.pending {
            Some(p) if p.phase == Phase::Trial => &p.image,
            _ => &self.image,
        }
    }

    /// The slot an install writes: the one not booted.
    pub fn inactive(&self) -> Slot {
        self.active.other()
    }

    /// Starts writing `image` into the inactive slot (persist the result before the first
    /// byte). Replaces an interrupted [`Phase::Installing`]; refused while an update is
    /// installed or on trial.
    pub fn begin_install(
        &self,
        image: Image,
        counter: u64,
        rollout: &str,
    ) -> Result<BootState, BootError> {
        if image.version.len() > MAX_VERSION_BYTES {
            return Err(BootError::TooLong("version", MAX_VERSION_BYTES));
        }
        if rollout.len() > MAX_ROLLOUT_BYTES {
            return Err(BootError::TooLong("rollout", MAX_ROLLOUT_BYTES));
        }
        if let Some(p) = &self.pending
            && p.phase != Phase::Installing
        {
            return Err(BootError::Busy(p.rollout.clone()));
        }
        let mut next = self.clone();
        next.pending = Some(Pending {
            slot: self.inactive(),
            image,
            counter,
            rollout: rollout.to_string(),
            phase: Phase::Installing,
        });
        Ok(next)
    }

    /// The slot was written and fsynced and what was written hashes to `written_sha256`:
    /// the slot becomes bootable (switch) only if that equals the target. On a mismatch the
    /// caller persists [`BootState::abandon`].
    pub fn installed(&self, written_sha256: &[u8; 32]) -> Result<BootState, BootError> {
        let p = self.pending_in(Phase::Installing)?;
        if &p.image.sha256 != written_sha256 {
            return Err(BootError::HashMismatch(p.slot.name()));
        }
        let mut next = self.clone();
        if let Some(p) = next.pending.as_mut() {
            p.phase = Phase::Installed;
        }
        Ok(next)
    }

    /// Drops an update that is still [`Phase::Installing`] (failed write, bad hash); the
    /// report says FAILED with `reason`. `None` when nothing is being installed.
    pub fn abandon(&self, reason: &str) -> Option<(BootState, Report)> {
        let p = self.pending.as_ref()?;
        if p.phase != Phase::Installing {
            return None;
        }
        let report = Report {
            rollout: p.rollout.clone(),
            state: DeviceState::Failed,
            reason: Some(reason.to_string()),
        };
        let mut next = self.clone();
        next.pending = None;
        next.remember(&report);
        Some((next, report))
    }

    /// The decision at agent start (a "boot"); persist the returned state before acting.
    pub fn boot(&self) -> (BootState, BootDecision) {
        let mut next = self.clone();
        let Some(p) = next.pending.as_mut() else {
            return (next, BootDecision::Normal);
        };
        match p.phase {
            Phase::Installing => {
                let report = Report {
                    rollout: p.rollout.clone(),
                    state: DeviceState::Failed,
                    reason: Some("install interrupted by a restart".to_string()),
                };
                next.pending = None;
                next.remember(&report);
                (next, BootDecision::Discarded(report))
            }
            Phase::Installed => {
                p.phase = Phase::Trial;
                let slot = p.slot;
                (next, BootDecision::RunSelfTest { slot })
            }
            Phase::Trial => {
                let report = Report {
                    rollout: p.rollout.clone(),
                    state: DeviceState::RolledBack,
                    reason: Some("restarted during the self-test".to_string()),
                };
                next.pending = None;
                next.remember(&report);
                (next, BootDecision::RolledBack(report))
            }
        }
    }

    /// The self-test's verdict on the trial slot: confirm (the slot becomes active, the
    /// counter rises) or roll back (`failure` is the reason).
    pub fn self_test(&self, failure: Option<&str>) -> Result<(BootState, Report), BootError> {
        let p = self.pending_in(Phase::Trial)?.clone();
        let mut next = self.clone();
        next.pending = None;
        let report = match failure {
            None => {
                next.active = p.slot;
                next.image = p.image;
                next.counter = next.counter.max(p.counter);
                Report {
                    rollout: p.rollout,
                    state: DeviceState::Succeeded,
                    reason: None,
                }
            }
            Some(reason) => Report {
                rollout: p.rollout,
                state: DeviceState::RolledBack,
                reason: Some(format!("self-test failed: {reason}")),
            },
        };
        next.remember(&report);
        Ok((next, report))
    }

    fn pending_in(&self, phase: Phase) -> Result<&Pending, BootError> {
        match &self.pending {
            Some(p) if p.phase == phase => Ok(p),
            _ => Err(BootError::WrongPhase(phase)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(v: &str, b: u8) -> Image {
        Image {
            version: v.to_string(),
            size: 4,
            sha256: [b; 32],
        }
    }

    /// A model of the disk: the persisted state and the bytes (here: a tag) in each slot.
    #[derive(Clone)]
    struct Disk {
        state: BootState,
        slots: [Option<u8>; 2],
    }

    fn idx(s: Slot) -> usize {
        match s {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    /// The steps of one update path, each one atomic write to the disk model. `outcome`:
    /// 0 self-test ok, 1 self-test fails, 2 the written bytes are bad.
    fn steps(outcome: u8) -> usize {
        match outcome {
            2 => 4,
            _ => 6,
        }
    }

    /// Runs `n` steps of the path; returns the disk (a crash after step `n`).
    fn run(n: usize, outcome: u8) -> Disk {
        let mut d = Disk {
            state: BootState::provisioned(Slot::A, img("1", 1), 3),
            slots: [Some(1), Some(9)],
        };
        let new = img("2", 2);
        let mut k = 0;
        let mut step = |d: &mut Disk, f: &mut dyn FnMut(&mut Disk)| {
            if k < n {
                f(d);
            }
            k += 1;
        };
        step(&mut d, &mut |d| {
            d.state = d.state.begin_install(new.clone(), 4, "r").unwrap();
        });
        // Half the slot written: garbage.
        step(&mut d, &mut |d| d.slots[1] = None);
        let written = if outcome == 2 { 7 } else { 2 };
        step(&mut d, &mut |d| d.slots[1] = Some(written));
        step(&mut d, &mut |d| match d.state.installed(&[written; 32]) {
            Ok(s) => d.state = s,
            Err(_) => d.state = d.state.abandon("hash").unwrap().0,
        });
        // Restart: the trial boot.
        step(&mut d, &mut |d| {
            let (s, dec) = d.state.boot();
            assert_eq!(dec, BootDecision::RunSelfTest { slot: Slot::B });
            d.state = s;
        });
        step(&mut d, &mut |d| {
            let fail = (outcome == 1).then_some("exit 1");
            d.state = d.state.self_test(fail).unwrap().0;
        });
        d
    }

    fn assert_verified(d: &Disk) {
        let slot = d.state.boot_slot();
        let tag = d.slots[idx(slot)].expect("booted slot holds garbage");
        assert_eq!([tag; 32], d.state.boot_image().sha256);
    }

    /// Crash after every step of every path, restart (boot, self-test passes): the booted slot
    /// always holds the verified image its state names, and restarting again changes nothing.
    #[test]
    fn crash_after_every_step_boots_a_verified_image() {
        for outcome in 0..3u8 {
            for n in 0..=steps(outcome) {
                let mut d = run(n, outcome);
                assert_verified(&d);
                let (s, dec) = d.state.boot();
                d.state = s;
                assert_verified(&d);
                if let BootDecision::RunSelfTest { .. } = dec {
                    // A second crash during the trial rolls back.
                    let (back, dec2) = d.state.boot();
                    assert!(matches!(dec2, BootDecision::RolledBack(_)));
                    let back = Disk {
                        state: back,
                        slots: d.slots,
                    };
                    assert_verified(&back);
                    d.state = d.state.self_test(None).unwrap().0;
                    assert_verified(&d);
                }
                assert!(d.state.pending.is_none(), "outcome {outcome} n {n}");
                let v = &d.state.image.version;
                // Installed then restarted: trial, passes. Crashed during the trial (5):
                // rolled back. Outcome 1's own self-test fails at 6.
                let want = match (outcome, n) {
                    (0, 4) | (0, 6) | (1, 4) => "2",
                    _ => "1",
                };
                assert_eq!(v, want, "outcome {outcome} crash after {n}");
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Begin(u8),
        WriteSlot(u8),
        Installed(u8),
        Abandon,
        Boot,
        SelfTest(bool),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (1u8..5).prop_map(Op::Begin),
            (0u8..5).prop_map(Op::WriteSlot),
            (1u8..5).prop_map(Op::Installed),
            Just(Op::Abandon),
            Just(Op::Boot),
            any::<bool>().prop_map(Op::SelfTest),
        ]
    }

    proptest::proptest! {
        /// Any sequence of steps (each one persisted, so a crash may fall between any two):
        /// the booted slot holds the verified image the state names. Writes go only to a
        /// slot being installed; 0 writes garbage.
        #[test]
        fn random_paths_keep_a_verified_boot_image(ops in proptest::collection::vec(op(), 0..40)) {
            let mut d = Disk {
                state: BootState::provisioned(Slot::A, img("1", 1), 0),
                slots: [Some(1), None],
            };
            for op in ops {
                match op {
                    Op::Begin(t) => {
                        if let Ok(s) = d.state.begin_install(img("n", t), 1, "r") {
                            d.state = s;
                        }
                    }
                    Op::WriteSlot(t) => {
                        if let Some(p) = &d.state.pending
                            && p.phase == Phase::Installing
                        {
                            d.slots[idx(p.slot)] = (t != 0).then_some(t);
                        }
                    }
                    Op::Installed(claimed) => {
                        // The shell hashes what the slot holds; `claimed` is ignored when
                        // the slot holds something, as the real hash would be.
                        let hash = d.state.pending.as_ref().map(|p| match d.slots[idx(p.slot)] {
                            Some(t) => [t; 32],
                            None => [claimed.wrapping_add(100); 32],
                        });
                        if let Some(h) = hash
                            && let Ok(s) = d.state.installed(&h)
                        {
                            d.state = s;
                        }
                    }
                    Op::Abandon => {
                        if let Some((s, _)) = d.state.abandon("x") {
                            d.state = s;
                        }
                    }
                    Op::Boot => d.state = d.state.boot().0,
                    Op::SelfTest(ok) => {
                        if let Ok((s, _)) = d.state.self_test((!ok).then_some("no")) {
                            d.state = s;
                        }
                    }
                }
                assert_verified(&d);
            }
        }
    }

    #[test]
    fn transitions_refused_in_the_wrong_phase() {
        let s = BootState::provisioned(Slot::B, img("1", 1), 0);
        assert_eq!(
            s.installed(&[1; 32]),
            Err(BootError::WrongPhase(Phase::Installing))
        );
        assert!(s.self_test(None).is_err());
        assert!(s.abandon("x").is_none());
        let s = s.begin_install(img("2", 2), 1, "r").unwrap();
        assert_eq!(s.pending.as_ref().unwrap().slot, Slot::A);
        assert_eq!(s.installed(&[3; 32]), Err(BootError::HashMismatch("A")));
        let s = s.installed(&[2; 32]).unwrap();
        assert_eq!(
            s.begin_install(img("3", 3), 1, "q"),
            Err(BootError::Busy("r".into()))
        );
        assert_eq!(
            s.boot_slot(),
            Slot::B,
            "installed is not booted before restart"
        );
        let (s, _) = s.boot();
        assert_eq!(s.boot_slot(), Slot::A);
        let (ok, report) = s.self_test(None).unwrap();
        assert_eq!(report.state, DeviceState::Succeeded);
        assert_eq!((ok.active, ok.counter), (Slot::A, 1));
        let (back, report) = s.self_test(Some("exit 1")).unwrap();
        assert_eq!(report.state, DeviceState::RolledBack);
        assert_eq!((back.active, back.counter), (Slot::B, 0));
    }

    #[test]
    fn limits_one_past() {
        let s = BootState::provisioned(Slot::A, img("1", 1), 0);
        let long = "v".repeat(MAX_VERSION_BYTES + 1);
        assert!(s.begin_install(img(&long, 2), 0, "r").is_err());
        let ok = "v".repeat(MAX_VERSION_BYTES);
        assert!(s.begin_install(img(&ok, 2), 0, "r").is_ok());
        let r = "r".repeat(MAX_ROLLOUT_BYTES + 1);
        assert!(s.begin_install(img("2", 2), 0, &r).is_err());
    }

    #[test]
    fn outcomes_are_bounded_and_reasons_cut() {
        let mut s = BootState::provisioned(Slot::A, img("1", 1), 0);
        for i in 0..MAX_OUTCOMES + 3 {
            s.remember(&Report {
                rollout: format!("r{i}"),
                state: DeviceState::RolledBack,
                reason: Some("é".repeat(MAX_OUTCOME_REASON_BYTES)),
            });
        }
        assert_eq!(s.outcomes.len(), MAX_OUTCOMES);
        assert!(s.outcome("r2").is_none(), "the oldest are forgotten");
        let last = s.outcome(&format!("r{}", MAX_OUTCOMES + 2)).unwrap();
        let reason = last.reason.as_deref().unwrap();
        assert!(reason.len() <= MAX_OUTCOME_REASON_BYTES && reason.starts_with('é'));
        // A rollout's newer outcome replaces its older one.
        s.remember(&Report {
            rollout: "r5".into(),
            state: DeviceState::Succeeded,
            reason: None,
        });
        assert_eq!(s.outcome("r5").unwrap().state, DeviceState::Succeeded);
        assert_eq!(s.outcomes.iter().filter(|r| r.rollout == "r5").count(), 1);
        assert_eq!(s.outcomes.len(), MAX_OUTCOMES);
    }
}
