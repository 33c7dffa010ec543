//! The key the platform signs update manifests with.
//!
//! - `ota.signing_key` alone: an Ed25519 private key (PKCS#8 PEM, as `myriad ctl ota keygen`
//!   writes it);
//! - `ota.signing_key` and `ota.signing_chain`: an SM2 private key and its certificate chain
//!   (PEM, leaf first), for devices that pin an SM2 root;
//! - neither: a development Ed25519 key is made at first start in
//!   `{data_dir}/ota/signing-ed25519.key` (mode 0600) and a warning is logged; its public key
//!   is served at `GET /api/v1/ota/signing-key` for devices to pin.
//!
//! A key file that does not load stops start-up naming the config key.

use std::path::Path;

use myriad_ota::keygen;
use myriad_ota::manifest::{Manifest, sign_ed25519};
use myriad_ota::sm2_chain::sign_sm2;

use super::{OtaConfig, OtaError};

/// Name of the development key made when none is configured.
const DEV_KEY_FILE: &str = "signing-ed25519.key";

/// A loaded signing key.
pub enum ManifestSigner {
    /// Ed25519.
    Ed25519(ed25519_dalek::SigningKey),
    /// SM2 with SM3 under an X.509 chain.
    Sm2 {
        /// The leaf's private key.
        key: Box<sm2::dsa::SigningKey>,
        /// DER certificates, leaf first.
        chain: Vec<Vec<u8>>,
    },
}

impl std::fmt::Debug for ManifestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ManifestSigner::Ed25519(_) => "ManifestSigner::Ed25519",
            ManifestSigner::Sm2 { .. } => "ManifestSigner::Sm2",
        })
    }
}

fn config_error(key: &str, path: &Path, why: impl std::fmt::Display) -> OtaError {
    OtaError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(format!("ota.{key}: {why}")),
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, OtaError> {
    std::fs::read(path).map_err(|e| config_error(key, path, e))
}

impl ManifestSigner {
    /// Loads the configured key, or the development key under `ota_dir` (made if missing).
    pub fn load(config: &OtaConfig, ota_dir: &Path) -> Result<Self, OtaError> {
        match (&config.signing_key, &config.signing_chain) {
            (Some(key_path), None) => {
                let key = keygen::load_ed25519_signing_key(&read("signing_key", key_path)?)
                    .map_err(|e| config_error("signing_key", key_path, e))?;
                Ok(ManifestSigner::Ed25519(key))
            }
            (Some(key_path), Some(chain_path)) => {
                let key = keygen::load_sm2_signing_key(&read("signing_key", key_path)?)
                    .map_err(|e| config_error("signing_key", key_path, e))?;
                let chain = keygen::load_certificates(&read("signing_chain", chain_path)?)
                    .map_err(|e| config_error("signing_chain", chain_path, e))?;
                Ok(ManifestSigner::Sm2 {
                    key: Box::new(key),
                    chain,
                })
            }
            (None, Some(chain_path)) => Err(config_error(
                "signing_chain",
                chain_path,
                "needs ota.signing_key (the SM2 private key)",
            )),
            (None, None) => Self::development(ota_dir),
        }
    }

    fn development(ota_dir: &Path) -> Result<Self, OtaError> {
        let path = ota_dir.join(DEV_KEY_FILE);
        if !path.exists() {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed)
                .map_err(|e| OtaError::io(&path, std::io::Error::other(e.to_string())))?;
            let pair = keygen::ed25519_dev_keypair(&seed)
                .map_err(|e| OtaError::io(&path, std::io::Error::other(e.to_string())))?;
            myriad_store::write_secret_file(
                &path,
                pair.private_pem.as_bytes(),
                myriad_store::Existing::Refuse,
            )
            .map_err(|e| OtaError::io(&path, e))?;
            tracing::warn!(file = %path.display(), "no ota.signing_key: made a development Ed25519 key; configure your own for production");
        }
        let key = keygen::load_ed25519_signing_key(&read("signing_key", &path)?)
            .map_err(|e| config_error("signing_key", &path, e))?;
        Ok(ManifestSigner::Ed25519(key))
    }

    /// Signs `manifest`; returns the encoded envelope.
    pub fn sign(&self, manifest: &Manifest) -> Vec<u8> {
        match self {
            ManifestSigner::Ed25519(key) => sign_ed25519(manifest, key),
            ManifestSigner::Sm2 { key, chain } => sign_sm2(manifest, key, chain.clone()),
        }
    }

    /// What devices pin: the Ed25519 public key (SPKI PEM), or the chain's certificates (PEM,
    /// leaf first; devices pin its root).
    pub fn public_pem(&self) -> String {
        match self {
            ManifestSigner::Ed25519(key) => {
                keygen::ed25519_public_pem(&key.verifying_key()).unwrap_or_default()
            }
            ManifestSigner::Sm2 { chain, .. } => chain
                .iter()
                .map(|der| pem_block("CERTIFICATE", der))
                .collect(),
        }
    }

    /// `ed25519` or `sm2`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            ManifestSigner::Ed25519(_) => "ed25519",
            ManifestSigner::Sm2 { .. } => "sm2",
        }
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use myriad_ota::manifest::{Trust, verify};

    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            target_version: "2.0".into(),
            hardware_type: "hw".into(),
            image_size: 3,
            target_sha256: vec![1; 32],
            security_counter: 5,
            ..Manifest::default()
        }
    }

    #[test]
    fn configured_and_development_keys_sign_what_devices_verify() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        // SM2 from files as `myriad ctl ota keygen --algorithm sm2` writes them.
        let chain = keygen::sm2_dev_chain(&[4; 32], now).unwrap();
        let key_path = dir.path().join("leaf.key");
        let chain_path = dir.path().join("chain.pem");
        std::fs::write(&key_path, &chain.leaf_key_pem).unwrap();
        std::fs::write(
            &chain_path,
            format!("{}{}", chain.leaf_pem, chain.intermediate_pem),
        )
        .unwrap();
        let config = OtaConfig {
            signing_key: Some(key_path.clone()),
            signing_chain: Some(chain_path),
            ..OtaConfig::default()
        };
        let signer = ManifestSigner::load(&config, dir.path()).unwrap();
        assert_eq!(signer.algorithm(), "sm2");
        let root = keygen::load_certificates(chain.root_pem.as_bytes()).unwrap();
        let trust = Trust {
            sm2_roots: root,
            now,
            hardware_type: "hw".into(),
            installed_counter: 5,
            ..Trust::default()
        };
        assert_eq!(
            verify(&signer.sign(&manifest()), &trust).unwrap(),
            manifest()
        );

        // No key configured: a development Ed25519 key, made once and kept.
        let dev = ManifestSigner::load(&OtaConfig::default(), dir.path()).unwrap();
        let again = ManifestSigner::load(&OtaConfig::default(), dir.path()).unwrap();
        assert_eq!(dev.public_pem(), again.public_pem());
        let public = keygen::load_ed25519_verifying_key(dev.public_pem().as_bytes()).unwrap();
        let trust = Trust {
            ed25519: vec![public],
            hardware_type: "hw".into(),
            ..Trust::default()
        };
        assert_eq!(verify(&dev.sign(&manifest()), &trust).unwrap(), manifest());

        // A chain without its key, or a key file that is not a key, stops start-up by name.
        let chain_only = OtaConfig {
            signing_chain: Some(key_path.clone()),
            ..OtaConfig::default()
        };
        assert!(
            ManifestSigner::load(&chain_only, dir.path())
                .unwrap_err()
                .to_string()
                .contains("ota.signing_chain")
        );
        std::fs::write(&key_path, "not a key").unwrap();
        let bad = OtaConfig {
            signing_key: Some(key_path),
            ..OtaConfig::default()
        };
        assert!(
            ManifestSigner::load(&bad, dir.path())
                .unwrap_err()
                .to_string()
                .contains("ota.signing_key")
        );
    }
}
