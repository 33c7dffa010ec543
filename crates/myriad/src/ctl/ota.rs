//! `myriad ctl ota keygen`: development signing keys for OTA update manifests (issue 18).
//! Works offline, needs no server.
//!
//! The keys come from [`myriad_ota::keygen`], seeded from the operating system's random
//! generator and dated now:
//!
//! - `--algorithm ed25519` (default): `ed25519.key` (PKCS#8 PEM private key, mode 0600) and
//!   `ed25519.pub` (SPKI PEM public key, what devices pin);
//! - `--algorithm sm2`: a development SM2 CA chain, every certificate valid for
//!   [`myriad_ota::keygen::DEV_VALIDITY_SECS`] (730 days): `sm2-root.pem` (the root CA
//!   certificate, what devices pin), `sm2-intermediate.pem`, `sm2-leaf.pem` (code signing),
//!   `sm2-chain.pem` (leaf then intermediate: what signed manifests carry) and `sm2-leaf.key`
//!   (the leaf's PKCS#8 PEM private key, mode 0600). The CA keys are not written.
//!
//! Existing files are not overwritten unless `--force`; without it nothing is written when
//! any of the files exists.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};

use super::error::CtlError;

/// `ctl ota ...`
#[derive(Debug, Subcommand)]
pub enum OtaCommand {
    /// Create development signing keys for update manifests in `--out`: an Ed25519 key pair
    /// (`ed25519.key`, `ed25519.pub`) or an SM2 CA chain with a code-signing leaf
    /// (`sm2-root.pem`, `sm2-intermediate.pem`, `sm2-leaf.pem`, `sm2-chain.pem`,
    /// `sm2-leaf.key`). Needs no server; for development only.
    Keygen(KeygenArgs),
}

/// Signature algorithms `keygen` makes keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyAlgorithm {
    /// An Ed25519 key pair.
    Ed25519,
    /// An SM2 (SM3 digests) root CA, intermediate CA and code-signing leaf.
    Sm2,
}

/// `ctl ota keygen`
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Directory to write into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Which kind of signing key.
    #[arg(long, value_enum, default_value = "ed25519")]
    pub algorithm: KeyAlgorithm,
    /// Overwrite files that exist already.
    #[arg(long)]
    pub force: bool,
}

/// Runs a `ctl ota` command; the paths written, one a line.
pub fn run(command: &OtaCommand) -> Result<String, CtlError> {
    match command {
        OtaCommand::Keygen(args) => keygen(args),
    }
}

/// The files of one key set: name, contents, whether secret (mode 0600).
fn files(
    algorithm: KeyAlgorithm,
    seed: &[u8; 32],
    now: u64,
) -> Result<Vec<(&'static str, String, bool)>, CtlError> {
    let failed = |e: myriad_ota::keygen::KeyError| {
        CtlError::Other(anyhow::anyhow!("cannot make the keys: {e}"))
    };
    Ok(match algorithm {
        KeyAlgorithm::Ed25519 => {
            let pair = myriad_ota::keygen::ed25519_dev_keypair(seed).map_err(failed)?;
            vec![
                ("ed25519.key", pair.private_pem, true),
                ("ed25519.pub", pair.public_pem, false),
            ]
        }
        KeyAlgorithm::Sm2 => {
            let chain = myriad_ota::keygen::sm2_dev_chain(seed, now).map_err(failed)?;
            vec![
                ("sm2-root.pem", chain.root_pem, false),
                ("sm2-intermediate.pem", chain.intermediate_pem, false),
                ("sm2-leaf.pem", chain.leaf_pem, false),
                ("sm2-chain.pem", chain.chain_pem, false),
                ("sm2-leaf.key", chain.leaf_key_pem, true),
            ]
        }
    })
}

fn keygen(args: &KeygenArgs) -> Result<String, CtlError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| CtlError::Other(anyhow::anyhow!("no randomness for the keys: {e}")))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| CtlError::Other(anyhow::anyhow!("the system clock is before 1970")))?
        .as_secs();
    let files = files(args.algorithm, &seed, now)?;
    fs::create_dir_all(&args.out).map_err(|e| local(&args.out, e))?;
    let paths: Vec<PathBuf> = files.iter().map(|(n, _, _)| args.out.join(n)).collect();
    if !args.force {
        let existing: Vec<String> = paths
            .iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(CtlError::Other(anyhow::anyhow!(
                "{} already exist{}; nothing written (--force overwrites)",
                existing.join(", "),
                if existing.len() == 1 { "s" } else { "" }
            )));
        }
    }
    let mut out = String::new();
    for ((_, text, secret), path) in files.iter().zip(&paths) {
        write_file(path, text, *secret, args.force)?;
        out.push_str(&format!("{}\n", path.display()));
    }
    Ok(out)
}

/// Writes `text` to `path`, a new file (an existing one is removed first when `replace`);
/// secret files are created readable by the owner only.
fn write_file(path: &Path, text: &str, secret: bool, replace: bool) -> Result<(), CtlError> {
    if replace {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(local(path, e)),
            _ => {}
        }
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = secret;
    let mut file = options.open(path).map_err(|e| local(path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| local(path, e))
}

fn local(path: &Path, error: io::Error) -> CtlError {
    CtlError::Other(anyhow::anyhow!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(out: &Path, algorithm: KeyAlgorithm, force: bool) -> KeygenArgs {
        KeygenArgs {
            out: out.to_owned(),
            algorithm,
            force,
        }
    }

    #[test]
    fn writes_loadable_keys_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let printed = keygen(&args(dir.path(), KeyAlgorithm::Sm2, false)).expect("keygen");
        assert_eq!(printed.lines().count(), 5);
        let read = |name: &str| fs::read(dir.path().join(name)).expect(name);
        let key = myriad_ota::keygen::load_sm2_signing_key(&read("sm2-leaf.key")).expect("key");
        let chain = myriad_ota::keygen::load_certificates(&read("sm2-chain.pem")).expect("chain");
        let root = myriad_ota::keygen::load_certificates(&read("sm2-root.pem")).expect("root");
        let manifest = myriad_ota::manifest::Manifest {
            target_version: "1".into(),
            hardware_type: "hw".into(),
            image_size: 1,
            target_sha256: vec![0; 32],
            ..Default::default()
        };
        let env = myriad_ota::manifest::sign_sm2(&manifest, &key, chain);
        let trust = myriad_ota::manifest::Trust {
            sm2_roots: root,
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs(),
            hardware_type: "hw".into(),
            ..Default::default()
        };
        assert_eq!(myriad_ota::manifest::verify(&env, &trust), Ok(manifest));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |n: &str| {
                fs::metadata(dir.path().join(n))
                    .expect("meta")
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode("sm2-leaf.key"), 0o600);
        }
        let before = read("sm2-leaf.key");
        let err = keygen(&args(dir.path(), KeyAlgorithm::Sm2, false)).expect_err("overwrote");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(read("sm2-leaf.key"), before, "unchanged");
        keygen(&args(dir.path(), KeyAlgorithm::Sm2, true)).expect("forced");
        assert_ne!(read("sm2-leaf.key"), before, "a new key");
        // Ed25519 beside it is another set of files.
        keygen(&args(dir.path(), KeyAlgorithm::Ed25519, false)).expect("ed25519");
        let signing =
            myriad_ota::keygen::load_ed25519_signing_key(&read("ed25519.key")).expect("key");
        let public =
            myriad_ota::keygen::load_ed25519_verifying_key(&read("ed25519.pub")).expect("public");
        assert_eq!(signing.verifying_key(), public);
    }
}
