//! Installs into temp-file slots: full image and delta, every tamper case refused before the
//! inactive slot is touched, the self-test verdicts, and a power cut after every I/O
//! operation of a whole install + switch + trial + confirm.

use std::cell::Cell;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use myriad_agent::fs::{Fs, RealFs, SlotFile};
use myriad_agent::selftest::{ProcessRunner, Runner, SelfTest, Verdict};
use myriad_agent::{
    Agent, AgentConfig, AgentError, BootDecision, Phase, Slot, Source, boot::BootState,
};
use myriad_ota::delta::{DiffOptions, diff};
use myriad_ota::manifest::{Manifest, ManifestError, SignedManifest, sha256, sign_ed25519};
use myriad_ota::rollout::DeviceState;
use prost::Message;

const HW: &str = "gw-1";
const OLD_COUNTER: u64 = 5;
const NEW_COUNTER: u64 = 6;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// A pseudo-random image (xorshift), `len` bytes.
fn image(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

struct Fixture {
    dir: tempfile::TempDir,
    old: Vec<u8>,
    new: Vec<u8>,
    patch: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let old = image(1, 200_000);
        let mut new = old.clone();
        new[1000..1100].fill(0xAB);
        new.extend_from_slice(&image(2, 30_000));
        let opts = DiffOptions {
            threads: false,
            ..DiffOptions::default()
        };
        let patch = diff(&old, &new, &opts).unwrap().bytes;
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            old,
            new,
            patch,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, argv: &[&str]) -> AgentConfig {
        AgentConfig {
            slot_a: self.path("slot_a"),
            slot_b: self.path("slot_b"),
            state_dir: self.path("state"),
            hardware_type: HW.into(),
            ed25519_keys: vec![key().verifying_key()],
            sm2_roots: Vec::new(),
            self_test: SelfTest::new(
                argv.iter().map(|s| s.to_string()).collect(),
                Duration::from_secs(10),
            )
            .unwrap(),
        }
    }

    /// Fresh slots (A: the old image, B: filler) and state; returns the agent.
    fn provision(&self) -> Agent<RealFs> {
        let _ = std::fs::remove_dir_all(self.path("state"));
        std::fs::create_dir_all(self.path("state")).unwrap();
        std::fs::write(self.path("slot_a"), &self.old).unwrap();
        std::fs::write(self.path("slot_b"), vec![0x5A; 1000]).unwrap();
        let config = self.config(&[]);
        Agent::provision(
            config,
            RealFs,
            Slot::A,
            "1.0",
            self.old.len() as u64,
            OLD_COUNTER,
        )
        .unwrap()
    }

    fn full_manifest(&self) -> Manifest {
        Manifest {
            target_version: "2.0".into(),
            hardware_type: HW.into(),
            image_size: self.new.len() as u64,
            target_sha256: sha256(&self.new),
            security_counter: NEW_COUNTER,
            ..Manifest::default()
        }
    }

    fn delta_manifest(&self) -> Manifest {
        Manifest {
            base_version: "1.0".into(),
            patch_size: self.patch.len() as u64,
            base_sha256: sha256(&self.old),
            patch_sha256: sha256(&self.patch),
            ..self.full_manifest()
        }
    }
}

fn sign(m: &Manifest) -> Vec<u8> {
    sign_ed25519(m, &key())
}

struct Fixed(Verdict);

impl Runner for Fixed {
    fn run(&self, _: &[String], _: Duration) -> Verdict {
        self.0.clone()
    }
}

fn pass() -> Fixed {
    Fixed(Verdict::Passed)
}

fn states(agent: &mut Agent<impl Fs>) -> Vec<DeviceState> {
    agent.take_reports().into_iter().map(|r| r.state).collect()
}

/// Slot B's bytes and mtime.
fn snapshot(f: &Fixture) -> (Vec<u8>, SystemTime) {
    let p = f.path("slot_b");
    (
        std::fs::read(&p).unwrap(),
        std::fs::metadata(&p).unwrap().modified().unwrap(),
    )
}

fn slot_image(f: &Fixture, slot: Slot, size: u64) -> Vec<u8> {
    let name = match slot {
        Slot::A => "slot_a",
        Slot::B => "slot_b",
    };
    let mut b = std::fs::read(f.path(name)).unwrap();
    b.truncate(size as usize);
    b
}

fn install_and_confirm(f: &Fixture, delta: bool) {
    let mut agent = f.provision();
    let (m, src) = if delta {
        (
            f.delta_manifest(),
            Source::Delta(Cursor::new(f.patch.clone())),
        )
    } else {
        (f.full_manifest(), Source::Full(Cursor::new(f.new.clone())))
    };
    agent.install(&sign(&m), "r1", src).unwrap();
    let p = agent.state().pending.clone().unwrap();
    assert_eq!((p.slot, p.phase), (Slot::B, Phase::Installed));
    assert_eq!(
        agent.state().boot_slot(),
        Slot::A,
        "switch takes effect at restart"
    );
    assert_eq!(slot_image(f, Slot::B, f.new.len() as u64), f.new);
    drop(agent);
    // "Reboot": a new agent from the state files.
    let mut agent = Agent::open(f.config(&[]), RealFs).unwrap();
    assert_eq!(agent.start(&pass()).unwrap(), BootDecision::Normal);
    let s = agent.state();
    assert_eq!((s.active, s.counter), (Slot::B, NEW_COUNTER));
    assert_eq!(s.image.version, "2.0");
    assert_eq!(s.image.sha256.as_slice(), sha256(&f.new).as_slice());
    assert!(s.pending.is_none());
    assert_eq!(states(&mut agent), [DeviceState::Succeeded]);
    assert_eq!(
        agent.state().outcome("r1").map(|r| r.state),
        Some(DeviceState::Succeeded),
        "the outcome is saved with the state"
    );
    // Restarting again changes nothing.
    let mut agent = Agent::open(f.config(&[]), RealFs).unwrap();
    assert_eq!(agent.start(&pass()).unwrap(), BootDecision::Normal);
    assert_eq!(agent.state().active, Slot::B);
}

#[test]
fn full_image_installs_and_confirms() {
    install_and_confirm(&Fixture::new(), false);
}

#[test]
fn delta_installs_and_confirms() {
    let f = Fixture::new();
    assert!(
        f.patch.len() < f.new.len() / 2,
        "patch {} bytes",
        f.patch.len()
    );
    install_and_confirm(&f, true);
}

#[test]
fn failing_self_test_rolls_back_with_a_real_process() {
    let f = Fixture::new();
    let mut agent = f.provision();
    let m = f.full_manifest();
    agent
        .install(&sign(&m), "r1", Source::Full(Cursor::new(f.new.clone())))
        .unwrap();
    drop(agent);
    let mut agent = Agent::open(f.config(&["sh", "-c", "exit 1"]), RealFs).unwrap();
    let BootDecision::RolledBack(report) = agent.start(&ProcessRunner).unwrap() else {
        panic!("not rolled back");
    };
    assert_eq!(report.state, DeviceState::RolledBack);
    assert!(report.reason.unwrap().contains("self-test failed"));
    let s = agent.state();
    assert_eq!(
        (s.active, s.counter, s.boot_slot()),
        (Slot::A, OLD_COUNTER, Slot::A)
    );
    assert!(s.pending.is_none());
    assert_eq!(slot_image(&f, Slot::A, f.old.len() as u64), f.old);
}

#[test]
fn restart_during_the_self_test_rolls_back() {
    let f = Fixture::new();
    let mut agent = f.provision();
    agent
        .install(
            &sign(&f.full_manifest()),
            "r1",
            Source::Full(Cursor::new(f.new.clone())),
        )
        .unwrap();
    drop(agent);
    let mut agent = Agent::open(f.config(&[]), RealFs).unwrap();
    assert_eq!(
        agent.boot().unwrap(),
        BootDecision::RunSelfTest { slot: Slot::B }
    );
    assert_eq!(agent.state().boot_slot(), Slot::B);
    drop(agent); // the device dies during its self-test
    let mut agent = Agent::open(f.config(&[]), RealFs).unwrap();
    assert!(matches!(agent.boot().unwrap(), BootDecision::RolledBack(_)));
    assert_eq!(agent.state().boot_slot(), Slot::A);
    assert_eq!(states(&mut agent), [DeviceState::RolledBack]);
}

/// Flips one byte of the signed envelope's manifest bytes (re-encoding the envelope).
fn flip_manifest_byte(env: &[u8]) -> Vec<u8> {
    let mut s = SignedManifest::decode(env).unwrap();
    let i = s.manifest.len() / 2;
    s.manifest[i] ^= 1;
    s.encode_to_vec()
}

fn flip_signature(env: &[u8]) -> Vec<u8> {
    let mut s = SignedManifest::decode(env).unwrap();
    s.signature[10] ^= 1;
    s.encode_to_vec()
}

fn flip(mut b: Vec<u8>, i: usize) -> Vec<u8> {
    b[i] ^= 0x10;
    b
}

#[test]
fn every_tamper_case_is_refused_before_the_inactive_slot_is_touched() {
    let f = Fixture::new();
    let full = f.full_manifest();
    let delta = f.delta_manifest();
    let other_key = SigningKey::from_bytes(&[9; 32]);
    let other_base = image(3, 200_000);
    let wrong_base_patch = diff(
        &other_base,
        &f.new,
        &DiffOptions {
            threads: false,
            ..DiffOptions::default()
        },
    )
    .unwrap()
    .bytes;
    type Case = (&'static str, Vec<u8>, bool, Vec<u8>);
    let cases: Vec<Case> = vec![
        (
            "manifest byte flip",
            flip_manifest_byte(&sign(&full)),
            false,
            f.new.clone(),
        ),
        (
            "signature flip",
            flip_signature(&sign(&full)),
            false,
            f.new.clone(),
        ),
        (
            "unknown key",
            sign_ed25519(&full, &other_key),
            false,
            f.new.clone(),
        ),
        (
            "lower counter",
            sign(&Manifest {
                security_counter: OLD_COUNTER - 1,
                ..full.clone()
            }),
            false,
            f.new.clone(),
        ),
        (
            "wrong hardware",
            sign(&Manifest {
                hardware_type: "gw-2".into(),
                ..full.clone()
            }),
            false,
            f.new.clone(),
        ),
        (
            "image byte flip",
            sign(&full),
            false,
            flip(f.new.clone(), 5000),
        ),
        (
            "image truncated",
            sign(&full),
            false,
            f.new[..f.new.len() - 1].to_vec(),
        ),
        (
            "image one byte long",
            sign(&full),
            false,
            [f.new.clone(), vec![0]].concat(),
        ),
        (
            "patch byte flip",
            sign(&delta),
            true,
            flip(f.patch.clone(), 200),
        ),
        (
            "patch header flip",
            sign(&delta),
            true,
            flip(f.patch.clone(), 40),
        ),
        (
            "wrong base (manifest)",
            sign(&Manifest {
                base_sha256: sha256(&other_base),
                patch_sha256: sha256(&wrong_base_patch),
                patch_size: wrong_base_patch.len() as u64,
                ..delta.clone()
            }),
            true,
            wrong_base_patch.clone(),
        ),
        (
            // A manifest that lies about the base: the patch header names another.
            "wrong base (patch)",
            sign(&Manifest {
                patch_sha256: sha256(&wrong_base_patch),
                patch_size: wrong_base_patch.len() as u64,
                ..delta.clone()
            }),
            true,
            wrong_base_patch.clone(),
        ),
        (
            "patch for a full manifest",
            sign(&full),
            true,
            f.patch.clone(),
        ),
        (
            "image for a delta manifest",
            sign(&delta),
            false,
            f.new.clone(),
        ),
    ];
    for (name, env, is_delta, bytes) in cases {
        let mut agent = f.provision();
        let before = snapshot(&f);
        std::thread::sleep(Duration::from_millis(5));
        let src = Cursor::new(bytes);
        let src = if is_delta {
            Source::Delta(src)
        } else {
            Source::Full(src)
        };
        let err = agent.install(&env, "r1", src).unwrap_err();
        assert_eq!(snapshot(&f), before, "{name}: slot B touched ({err})");
        let s = agent.state();
        assert!(s.pending.is_none(), "{name}: {s:?}");
        assert_eq!((s.active, s.counter), (Slot::A, OLD_COUNTER), "{name}");
        let reports = agent.take_reports();
        assert_eq!(reports.len(), 1, "{name}: {reports:?}");
        // A refused manifest (or a source of the other kind) is REJECTED; a download that
        // does not match its manifest FAILED (the platform may retry it).
        let want = if matches!(err, AgentError::SourceMismatch { .. } | AgentError::Slot(_)) {
            DeviceState::Failed
        } else {
            DeviceState::Rejected
        };
        assert_eq!(reports[0].state, want, "{name}: {reports:?}");
        assert_eq!(reports[0].rollout, "r1");
        // And after a restart nothing is pending: the old image boots.
        let mut agent = Agent::open(f.config(&[]), RealFs).unwrap();
        assert_eq!(
            agent.start(&pass()).unwrap(),
            BootDecision::Normal,
            "{name}"
        );
        match name {
            "lower counter" => assert!(matches!(
                err,
                AgentError::Manifest(ManifestError::Rollback { .. })
            )),
            "wrong hardware" => assert!(matches!(
                err,
                AgentError::Manifest(ManifestError::WrongHardware { .. })
            )),
            "signature flip" | "unknown key" => assert!(matches!(
                err,
                AgentError::Manifest(ManifestError::BadSignature)
            )),
            "wrong base (manifest)" => assert!(matches!(err, AgentError::WrongBase(_)), "{err}"),
            // The patch header is checked before the slot is opened for writing.
            "wrong base (patch)" => assert!(matches!(err, AgentError::Slot(_)), "{err}"),
            "image byte flip"
            | "patch byte flip"
            | "patch header flip"
            | "image truncated"
            | "image one byte long" => {
                assert!(
                    matches!(err, AgentError::SourceMismatch { .. }),
                    "{name}: {err}"
                )
            }
            _ => {}
        }
    }
}

/// A source that serves other bytes on its second pass (the download changed between the
/// hash check and the write): caught by the applier or the final hash; the slot was written
/// but never becomes bootable.
struct Swap {
    first: Cursor<Vec<u8>>,
    second: Cursor<Vec<u8>>,
    rewinds: u32,
}

impl Read for Swap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rewinds >= 2 {
            self.second.read(buf)
        } else {
            self.first.read(buf)
        }
    }
}

impl Seek for Swap {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.rewinds += 1;
        self.first.seek(pos)?;
        self.second.seek(pos)
    }
}

#[test]
fn bytes_changed_after_the_check_never_become_bootable() {
    let f = Fixture::new();
    for (is_delta, good, bad) in [
        (false, f.new.clone(), flip(f.new.clone(), 150_000)),
        (
            true,
            f.patch.clone(),
            flip(f.patch.clone(), f.patch.len() / 2),
        ),
        (
            true,
            f.patch.clone(),
            flip(f.patch.clone(), f.patch.len() - 1),
        ),
    ] {
        let mut agent = f.provision();
        let swap = Swap {
            first: Cursor::new(good),
            second: Cursor::new(bad),
            rewinds: 0,
        };
        let (m, src) = if is_delta {
            (f.delta_manifest(), Source::Delta(swap))
        } else {
            (f.full_manifest(), Source::Full(swap))
        };
        let err = agent.install(&sign(&m), "r1", src).unwrap_err();
        assert!(
            matches!(err, AgentError::TargetMismatch(_) | AgentError::Slot(_)),
            "{err}"
        );
        assert!(agent.state().pending.is_none());
        assert_eq!(states(&mut agent), [DeviceState::Failed]);
        let mut agent = Agent::open(f.config(&[]), RealFs).unwrap();
        assert_eq!(agent.start(&pass()).unwrap(), BootDecision::Normal);
        assert_eq!(agent.state().boot_slot(), Slot::A);
    }
}

#[test]
fn a_second_update_waits_for_the_first() {
    let f = Fixture::new();
    let mut agent = f.provision();
    let m = f.full_manifest();
    agent
        .install(&sign(&m), "r1", Source::Full(Cursor::new(f.new.clone())))
        .unwrap();
    let before = snapshot(&f);
    let err = agent
        .install(&sign(&m), "r2", Source::Full(Cursor::new(f.new.clone())))
        .unwrap_err();
    assert!(err.to_string().contains("r1"), "{err}");
    assert_eq!(snapshot(&f), before);
}

#[test]
fn a_damaged_newest_state_file_falls_back_to_the_previous_one() {
    let f = Fixture::new();
    let mut agent = f.provision();
    agent
        .install(
            &sign(&f.full_manifest()),
            "r1",
            Source::Full(Cursor::new(f.new.clone())),
        )
        .unwrap();
    drop(agent);
    // seq 3 (Installed) is state.1; seq 2 (Installing) is state.0.
    let p = f.path("state").join("state.1");
    let mut b = std::fs::read(&p).unwrap();
    b[30] ^= 1;
    std::fs::write(&p, b).unwrap();
    let mut agent = Agent::open(f.config(&[]), RealFs).unwrap();
    assert_eq!(agent.damaged_state_files().len(), 1);
    assert!(
        agent.damaged_state_files()[0]
            .to_string()
            .contains("state.1")
    );
    // Back at Installing: the install is discarded, the old image boots.
    assert!(matches!(
        agent.start(&pass()).unwrap(),
        BootDecision::Discarded(_)
    ));
    assert_eq!(agent.state().boot_slot(), Slot::A);
}

/// The file system with the power cut after `budget` operations: the failing write is torn
/// (half of it lands), and every later operation fails too.
#[derive(Clone)]
struct CrashFs {
    budget: Rc<Cell<u64>>,
}

impl CrashFs {
    fn tick(&self) -> io::Result<()> {
        let left = self.budget.get();
        if left == 0 {
            return Err(io::Error::other("power cut"));
        }
        self.budget.set(left - 1);
        Ok(())
    }
    fn dead(&self) -> bool {
        self.budget.get() == 0
    }
}

struct CrashFile {
    inner: Box<dyn SlotFile>,
    fs: CrashFs,
}

impl SlotFile for CrashFile {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.fs.tick()?;
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if self.fs.dead() {
            return Err(io::Error::other("power cut"));
        }
        if self.fs.tick().is_ok() && !self.fs.dead() {
            return self.inner.write_all_at(data, offset);
        }
        // The last operation before the cut: torn.
        self.inner.write_all_at(&data[..data.len() / 2], offset)?;
        Err(io::Error::other("power cut"))
    }
    fn sync(&mut self) -> io::Result<()> {
        self.fs.tick()?;
        self.inner.sync()
    }
}

impl Fs for CrashFs {
    fn open_slot(&self, path: &Path, write: bool) -> io::Result<Box<dyn SlotFile>> {
        self.tick()?;
        Ok(Box::new(CrashFile {
            inner: RealFs.open_slot(path, write)?,
            fs: self.clone(),
        }))
    }
    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if self.dead() {
            return Err(io::Error::other("power cut"));
        }
        if self.tick().is_ok() && !self.dead() {
            return RealFs.write_synced(path, data);
        }
        RealFs.write_synced(path, &data[..data.len() / 2])?;
        Err(io::Error::other("power cut"))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.tick()?;
        RealFs.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.tick()?;
        RealFs.sync_dir(dir)
    }
    fn read_file(&self, path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
        self.tick()?;
        RealFs.read_file(path, limit)
    }
}

/// One whole update (install, restart, trial, confirm) on a file system that dies after
/// `budget` operations; `Ok(true)` when it completed.
fn cycle(f: &Fixture, delta: bool, budget: u64) -> Result<bool, AgentError> {
    let fs = CrashFs {
        budget: Rc::new(Cell::new(budget)),
    };
    let mut agent = Agent::open(f.config(&[]), fs.clone())?;
    let (m, src) = if delta {
        (
            f.delta_manifest(),
            Source::Delta(Cursor::new(f.patch.clone())),
        )
    } else {
        (f.full_manifest(), Source::Full(Cursor::new(f.new.clone())))
    };
    agent.install(&sign(&m), "r1", src)?;
    drop(agent);
    let mut agent = Agent::open(f.config(&[]), fs.clone())?;
    agent.start(&pass())?;
    Ok(!fs.dead())
}

fn assert_boots_verified(f: &Fixture, s: &BootState) {
    let img = s.boot_image();
    let bytes = slot_image(f, s.boot_slot(), img.size);
    assert_eq!(sha256(&bytes).as_slice(), img.sha256.as_slice());
    assert!(
        bytes == f.old || bytes == f.new,
        "booted slot holds neither image"
    );
    // The counter rises at confirmation (not during the trial).
    if s.pending.is_none() {
        let counter = if bytes == f.new {
            NEW_COUNTER
        } else {
            OLD_COUNTER
        };
        assert_eq!(s.counter, counter);
    }
}

#[test]
fn power_cut_after_every_operation_still_boots_a_verified_image() {
    let f = Fixture::new();
    for delta in [false, true] {
        let mut completed = false;
        let mut budget = 0;
        while !completed {
            assert!(budget < 1000, "the cycle never completes");
            f.provision();
            let result = cycle(&f, delta, budget);
            completed = matches!(result, Ok(true));
            // Restart on a healthy file system.
            let mut agent = Agent::open(f.config(&[]), RealFs)
                .unwrap_or_else(|e| panic!("delta {delta} budget {budget}: {e}"));
            assert_boots_verified(&f, agent.state());
            agent.start(&pass()).unwrap();
            let s = agent.state();
            assert!(s.pending.is_none(), "delta {delta} budget {budget}: {s:?}");
            assert_boots_verified(&f, s);
            if completed {
                assert_eq!(s.image.version, "2.0");
            }
            budget += 1;
        }
        eprintln!("delta {delta}: {budget} crash points");
        assert!(budget > 20);
    }
}

/// A power cut, then another during the recovery (after every operation of the restart and
/// its self-test), then a clean restart: still a verified image, nothing left pending.
#[test]
fn power_cut_during_recovery_still_boots_a_verified_image() {
    let f = Fixture::new();
    for delta in [false, true] {
        let mut budget = 0;
        let mut recoveries = 0;
        loop {
            assert!(budget < 1000, "the cycle never completes");
            f.provision();
            if matches!(cycle(&f, delta, budget), Ok(true)) {
                break;
            }
            for second in 0.. {
                assert!(second < 100, "the recovery never completes");
                // Back to the state the first cut left.
                f.provision();
                let _ = cycle(&f, delta, budget);
                let fs = CrashFs {
                    budget: Rc::new(Cell::new(second)),
                };
                let done = Agent::open(f.config(&[]), fs.clone())
                    .and_then(|mut a| a.start(&pass()))
                    .is_ok()
                    && !fs.dead();
                let mut agent = Agent::open(f.config(&[]), RealFs)
                    .unwrap_or_else(|e| panic!("delta {delta} cuts {budget}/{second}: {e}"));
                assert_boots_verified(&f, agent.state());
                agent.start(&pass()).unwrap();
                assert!(agent.state().pending.is_none());
                assert_boots_verified(&f, agent.state());
                recoveries += 1;
                if done {
                    break;
                }
            }
            budget += 1;
        }
        eprintln!("delta {delta}: {recoveries} double cuts");
    }
}

/// An SM2 development chain made `age_secs` ago: (root DER, chain DERs, leaf signing key).
fn sm2_chain(seed: u8, age_secs: u64) -> (Vec<u8>, Vec<Vec<u8>>, sm2::dsa::SigningKey) {
    use myriad_ota::keygen;
    let now = myriad_agent::agent::unix_now();
    let chain = keygen::sm2_dev_chain(&[seed; 32], now - age_secs).unwrap();
    let root = keygen::load_certificates(chain.root_pem.as_bytes()).unwrap();
    let certs = keygen::load_certificates(chain.chain_pem.as_bytes()).unwrap();
    let key = keygen::load_sm2_signing_key(chain.leaf_key_pem.as_bytes()).unwrap();
    (root[0].clone(), certs, key)
}

#[test]
fn sm2_manifests_verify_against_the_pinned_root_and_the_device_clock() {
    let f = Fixture::new();
    let (root, certs, key) = sm2_chain(1, 60);
    let signed = myriad_ota::sm2_chain::sign_sm2(&f.full_manifest(), &key, certs.clone());
    let with_roots = |roots: Vec<Vec<u8>>| {
        let mut agent = f.provision();
        drop(agent);
        let mut config = f.config(&[]);
        config.sm2_roots = roots;
        agent = Agent::open(config, RealFs).unwrap();
        agent
    };
    // Pinned only an Ed25519 key: SM2 is not accepted.
    let mut agent = with_roots(Vec::new());
    let mut before = snapshot(&f);
    let e = agent
        .install(&signed, "r1", Source::Full(Cursor::new(f.new.clone())))
        .unwrap_err();
    assert!(matches!(e, AgentError::Manifest(_)), "{e}");
    assert_eq!(states(&mut agent), [DeviceState::Rejected]);
    assert_eq!(snapshot(&f), before, "slot B untouched");
    // Another root: the chain does not lead to it.
    let (other_root, _, _) = sm2_chain(2, 60);
    let mut agent = with_roots(vec![other_root]);
    before = snapshot(&f);
    let e = agent
        .install(&signed, "r1", Source::Full(Cursor::new(f.new.clone())))
        .unwrap_err();
    assert!(matches!(e, AgentError::Manifest(_)), "{e}");
    assert_eq!(snapshot(&f), before, "slot B untouched");
    // A chain that expired (made three years ago, valid for two).
    let (old_root, old_certs, old_key) = sm2_chain(3, 3 * 365 * 86_400);
    let expired = myriad_ota::sm2_chain::sign_sm2(&f.full_manifest(), &old_key, old_certs);
    let mut agent = with_roots(vec![old_root]);
    before = snapshot(&f);
    let e = agent
        .install(&expired, "r1", Source::Full(Cursor::new(f.new.clone())))
        .unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    assert_eq!(snapshot(&f), before, "slot B untouched");
    // The pinned root: installed, and confirmed after the "reboot".
    let mut agent = with_roots(vec![root.clone()]);
    agent
        .install(&signed, "r1", Source::Full(Cursor::new(f.new.clone())))
        .unwrap();
    drop(agent);
    let mut config = f.config(&[]);
    config.sm2_roots = vec![root];
    let mut agent = Agent::open(config, RealFs).unwrap();
    assert_eq!(agent.start(&pass()).unwrap(), BootDecision::Normal);
    assert_eq!(agent.state().image.version, "2.0");
    assert_eq!(slot_image(&f, Slot::B, f.new.len() as u64), f.new);
}
