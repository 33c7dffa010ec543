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

use serde_json::json;

use super::encode::percent_encode;
use super::error::CtlError;
use super::request::{API_PREFIX, ApiBody, ApiRequest, Method};

/// `ctl ota ...`
#[derive(Debug, Subcommand)]
pub enum OtaCommand {
    /// Create development signing keys for update manifests in `--out`: an Ed25519 key pair
    /// (`ed25519.key`, `ed25519.pub`) or an SM2 CA chain with a code-signing leaf
    /// (`sm2-root.pem`, `sm2-intermediate.pem`, `sm2-leaf.pem`, `sm2-chain.pem`,
    /// `sm2-leaf.key`). Needs no server; for development only.
    Keygen(KeygenArgs),
    /// Upload a firmware image (streamed, with a progress bar on a terminal).
    Upload(UploadArgs),
    /// Firmware artifacts: list, get, delete.
    #[command(subcommand)]
    Artifacts(ArtifactsCommand),
    /// Delta patches between two artifacts: create (built in the background), list, get.
    #[command(subcommand)]
    Deltas(DeltasCommand),
    /// Rollouts: create, list, get, devices, pause, resume, cancel.
    #[command(subcommand)]
    Rollouts(RolloutsCommand),
}

/// `ctl ota upload`
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The image file.
    pub file: PathBuf,
    /// The firmware version it installs.
    #[arg(long)]
    pub version: String,
    /// The hardware type it is built for.
    #[arg(long)]
    pub hardware_type: String,
    /// Release notes.
    #[arg(long)]
    pub notes: Option<String>,
    /// Anti-rollback counter written into its manifests.
    #[arg(long)]
    pub security_counter: Option<u64>,
}

/// An artifact, delta or rollout id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// The id.
    pub id: String,
}

/// `ctl ota artifacts ...`
#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// Every artifact.
    List,
    /// One artifact.
    Get(IdArg),
    /// Delete an artifact (refused while a rollout uses it).
    Delete(IdArg),
}

/// `ctl ota deltas ...`
#[derive(Debug, Subcommand)]
pub enum DeltasCommand {
    /// Ask for the delta between two artifacts (poll it with `get`).
    Create {
        /// The base artifact.
        from: String,
        /// The target artifact.
        to: String,
    },
    /// Every delta.
    List,
    /// One delta: status and phase.
    Get(IdArg),
}

/// `ctl ota rollouts ...`
#[derive(Debug, Subcommand)]
pub enum RolloutsCommand {
    /// Start a rollout of an artifact to devices (exactly one of --device, --group, --attribute).
    Create(Box<RolloutCreate>),
    /// Every rollout with its counts.
    List,
    /// One rollout with its counts.
    Get(IdArg),
    /// A rollout's devices and their states.
    Devices {
        /// The rollout id.
        id: String,
        /// Only devices in this state (QUEUED ... ROLLED_BACK).
        #[arg(long)]
        state: Option<String>,
        /// Skip this many.
        #[arg(long)]
        offset: Option<usize>,
        /// At most this many (1..=1000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Stop notifying devices.
    Pause(IdArg),
    /// Continue a paused rollout.
    Resume(IdArg),
    /// Cancel a rollout.
    Cancel(IdArg),
}

/// `ctl ota rollouts create`
#[derive(Debug, Args)]
pub struct RolloutCreate {
    /// The artifact to install.
    pub artifact: String,
    /// A name for people.
    #[arg(long)]
    pub name: Option<String>,
    /// Target these devices (repeat, in wave order).
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// Target every device of this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Target every device with this attribute (`key=value`).
    #[arg(long)]
    pub attribute: Option<String>,
    /// Waves as percents of all devices, e.g. `1,10,50` (the rest is a final wave).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["wave_counts", "exponential"])]
    pub wave_percents: Vec<u8>,
    /// Waves as device counts, e.g. `10,100` (the rest is a final wave).
    #[arg(long, value_delimiter = ',', conflicts_with = "exponential")]
    pub wave_counts: Vec<u32>,
    /// Exponential waves `first,factor`, e.g. `1,2`.
    #[arg(long, value_delimiter = ',', num_args = 1)]
    pub exponential: Vec<u32>,
    /// Share of a wave (percent) that must finish before the next starts.
    #[arg(long)]
    pub advance_percent: Option<u8>,
    /// Abort when failures exceed this percent of finished devices ...
    #[arg(long, requires = "abort_min_finished")]
    pub abort_failure_percent: Option<u8>,
    /// ... once at least this many finished.
    #[arg(long, requires = "abort_failure_percent")]
    pub abort_min_finished: Option<u32>,
    /// A working device silent this long times out (seconds).
    #[arg(long)]
    pub in_progress_timeout_secs: Option<u64>,
    /// A notified device that never starts times out after this long (seconds).
    #[arg(long)]
    pub pending_timeout_secs: Option<u64>,
    /// Retries after a failure or timeout.
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Download bandwidth cap over all devices (bytes per second).
    #[arg(long)]
    pub max_bytes_per_second: Option<u64>,
    /// Also offer the (built) delta from this artifact.
    #[arg(long)]
    pub delta_from: Option<String>,
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

/// Runs `ctl ota keygen` (offline); the paths written, one a line. `None` for the commands
/// that talk to the API ([`api_request`]).
pub fn run(command: &OtaCommand) -> Option<Result<String, CtlError>> {
    match command {
        OtaCommand::Keygen(args) => Some(keygen(args)),
        _ => None,
    }
}

fn ota_path(rest: &str) -> String {
    format!("{API_PREFIX}/ota/{rest}")
}

/// The request an API command of `ctl ota` sends (`None` for `keygen`).
pub fn api_request(command: &OtaCommand) -> Option<anyhow::Result<ApiRequest>> {
    Some(Ok(match command {
        OtaCommand::Keygen(_) => return None,
        OtaCommand::Upload(args) => {
            // Checked here too: the server refuses a bad label before it reads the body, and a
            // refusal while the file is still being sent reads as a broken connection.
            for (flag, value) in [
                ("--version", &args.version),
                ("--hardware-type", &args.hardware_type),
            ] {
                if let Err(error) = check_label(flag, value) {
                    return Some(Err(error));
                }
            }
            let mut request = ApiRequest::new(Method::Post, ota_path("artifacts"))
                .param("version", Some(&args.version))
                .param("hardware_type", Some(&args.hardware_type))
                .param("notes", args.notes.as_ref())
                .param("security_counter", args.security_counter);
            request.body = ApiBody::Upload {
                path: args.file.clone(),
            };
            request
        }
        OtaCommand::Artifacts(ArtifactsCommand::List) => {
            ApiRequest::new(Method::Get, ota_path("artifacts"))
        }
        OtaCommand::Artifacts(ArtifactsCommand::Get(arg)) => ApiRequest::new(
            Method::Get,
            ota_path(&format!("artifacts/{}", percent_encode(&arg.id))),
        ),
        OtaCommand::Artifacts(ArtifactsCommand::Delete(arg)) => ApiRequest::new(
            Method::Delete,
            ota_path(&format!("artifacts/{}", percent_encode(&arg.id))),
        ),
        OtaCommand::Deltas(DeltasCommand::Create { from, to }) => {
            ApiRequest::new(Method::Post, ota_path("deltas")).json(json!({"from": from, "to": to}))
        }
        OtaCommand::Deltas(DeltasCommand::List) => ApiRequest::new(Method::Get, ota_path("deltas")),
        OtaCommand::Deltas(DeltasCommand::Get(arg)) => ApiRequest::new(
            Method::Get,
            ota_path(&format!("deltas/{}", percent_encode(&arg.id))),
        ),
        OtaCommand::Rollouts(command) => match rollout_request(command) {
            Ok(request) => request,
            Err(error) => return Some(Err(error)),
        },
    }))
}

/// The server's rule for versions and hardware types: 1 to 64 of `A-Za-z0-9._+-`.
fn check_label(flag: &str, value: &str) -> anyhow::Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if !ok {
        anyhow::bail!("{flag}: 1 to 64 characters of A-Z a-z 0-9 . _ + -, got {value:?}");
    }
    Ok(())
}

fn rollout_request(command: &RolloutsCommand) -> anyhow::Result<ApiRequest> {
    let one = |id: &str, action: &str| {
        let path = ota_path(&format!("rollouts/{}{action}", percent_encode(id)));
        (path, action.is_empty())
    };
    Ok(match command {
        RolloutsCommand::Create(create) => {
            ApiRequest::new(Method::Post, ota_path("rollouts")).json(rollout_body(create)?)
        }
        RolloutsCommand::List => ApiRequest::new(Method::Get, ota_path("rollouts")),
        RolloutsCommand::Get(arg) => ApiRequest::new(Method::Get, one(&arg.id, "").0),
        RolloutsCommand::Devices {
            id,
            state,
            offset,
            limit,
        } => ApiRequest::new(Method::Get, one(id, "/devices").0)
            .param("state", state.as_ref())
            .param("offset", *offset)
            .param("limit", *limit),
        RolloutsCommand::Pause(arg) => ApiRequest::new(Method::Post, one(&arg.id, "/pause").0),
        RolloutsCommand::Resume(arg) => ApiRequest::new(Method::Post, one(&arg.id, "/resume").0),
        RolloutsCommand::Cancel(arg) => ApiRequest::new(Method::Post, one(&arg.id, "/cancel").0),
    })
}

/// The JSON body of `rollouts create`; only what was given (the server has the defaults).
fn rollout_body(create: &RolloutCreate) -> anyhow::Result<serde_json::Value> {
    let targets = match (create.devices.is_empty(), &create.group, &create.attribute) {
        (false, None, None) => json!({"devices": create.devices}),
        (true, Some(group), None) => json!({"group": group}),
        (true, None, Some(attribute)) => {
            let (key, value) = attribute.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--attribute: expected key=value, got {attribute:?}")
            })?;
            json!({"attribute": {"key": key, "value": value}})
        }
        _ => anyhow::bail!("give exactly one of --device, --group, --attribute"),
    };
    let mut body = json!({"artifact": create.artifact, "targets": targets});
    let waves = if !create.wave_percents.is_empty() {
        Some(json!({"percent": create.wave_percents}))
    } else if !create.wave_counts.is_empty() {
        Some(json!({"count": create.wave_counts}))
    } else if let [first, factor] = create.exponential[..] {
        Some(json!({"exponential": {"first": first, "factor": factor}}))
    } else if !create.exponential.is_empty() {
        anyhow::bail!("--exponential: expected first,factor");
    } else {
        None
    };
    let fields = [
        ("name", create.name.as_ref().map(|v| json!(v))),
        ("waves", waves),
        ("advance_percent", create.advance_percent.map(|v| json!(v))),
        (
            "abort",
            create
                .abort_failure_percent
                .zip(create.abort_min_finished)
                .map(|(percent, min)| json!({"max_failure_percent": percent, "min_finished": min})),
        ),
        (
            "in_progress_timeout_secs",
            create.in_progress_timeout_secs.map(|v| json!(v)),
        ),
        (
            "pending_timeout_secs",
            create.pending_timeout_secs.map(|v| json!(v)),
        ),
        ("max_retries", create.max_retries.map(|v| json!(v))),
        (
            "max_bytes_per_second",
            create.max_bytes_per_second.map(|v| json!(v)),
        ),
        ("delta_from", create.delta_from.as_ref().map(|v| json!(v))),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            body[key] = value;
        }
    }
    Ok(body)
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
    if secret {
        return myriad_store::write_secret_file(
            path,
            text.as_bytes(),
            myriad_store::Existing::Refuse,
        )
        .map_err(|e| local(path, e));
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| local(path, e))?;
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
