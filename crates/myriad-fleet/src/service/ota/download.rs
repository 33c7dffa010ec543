//! Device downloads: signed URLs, one per device and artifact, as AWS IoT Jobs hands devices
//! presigned S3 URLs.
//!
//! A notification carries `/ota/v1/download/{artifact}?device={id}&expires={unix s}&sig={hex}`
//! where `sig` is BLAKE3 keyed with the server's download key (32 random bytes in
//! `{data_dir}/ota/download.key`, created at first start, mode 0600) over artifact, device and
//! expiry. Only a device that received the notification over its own authenticated MQTT
//! session has the URL; it stops working at `expires`, when the device is disabled or deleted,
//! or when the artifact is deleted. The download answers Range requests, so a broken download
//! resumes where it stopped. Checking a URL costs one keyed hash and one registry read, not a
//! password hash.

use std::path::{Path, PathBuf};

use super::artifacts::is_artifact_id;
use super::{OtaError, OtaService, hex};
use crate::registry::DeviceId;

/// The key file's name under `{data_dir}/ota`.
const KEY_FILE: &str = "download.key";

/// Why a download was refused: the API answers 403 without saying which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the download URL is not valid: {0}")]
pub struct DownloadRefused(pub &'static str);

/// Reads the download key at `dir/download.key`, creating it if missing.
pub(super) fn load_or_create_key(dir: &Path) -> Result<[u8; 32], OtaError> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            return bytes.try_into().map_err(|_| {
                OtaError::io(
                    &path,
                    std::io::Error::other(
                        "the OTA download key is not 32 bytes; delete it to make a new one",
                    ),
                )
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(OtaError::io(&path, e)),
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| OtaError::io(&path, std::io::Error::other(e.to_string())))?;
    let partial = dir.join(format!("{KEY_FILE}.partial"));
    myriad_store::write_secret_file(&partial, &key, myriad_store::Existing::Replace)
        .map_err(|e| OtaError::io(&partial, e))?;
    std::fs::rename(&partial, &path).map_err(|e| OtaError::io(&path, e))?;
    Ok(key)
}

fn signature(key: &[u8; 32], artifact: &str, device: &str, expires: u64) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(b"myriad-ota-download\0");
    hasher.update(artifact.as_bytes());
    hasher.update(b"\0");
    hasher.update(device.as_bytes());
    hasher.update(b"\0");
    hasher.update(&expires.to_be_bytes());
    hasher.finalize()
}

impl OtaService {
    /// The file of an artifact or delta id (one of the two shapes, checked by the caller).
    pub(super) fn file_path(&self, id: &str) -> PathBuf {
        if is_artifact_id(id) {
            self.artifact_path(id)
        } else {
            self.delta_path(id)
        }
    }

    /// The download URL (path and query) of `artifact` for `device`, valid for
    /// `ota.download_url_ttl_secs` from `now_ms`.
    pub fn download_url(&self, artifact: &str, device: &str, now_ms: u64) -> String {
        let expires = now_ms / 1000 + self.config.download_url_ttl_secs;
        let sig = signature(&self.download_key, artifact, device, expires);
        format!(
            "/ota/v1/download/{artifact}?device={device}&expires={expires}&sig={}",
            hex(sig.as_bytes())
        )
    }

    /// Checks a download URL at `now_ms`; returns the artifact's file and the bandwidth cap of
    /// the rollout the device fetches it for. Reads the registry
    /// (call it on the blocking pool or accept a point read).
    pub fn check_download(
        &self,
        artifact: &str,
        device: &str,
        expires: u64,
        sig: &str,
        now_ms: u64,
    ) -> Result<(PathBuf, Option<std::sync::Arc<super::throttle::Throttle>>), DownloadRefused> {
        let given = blake3::Hash::from_hex(sig).map_err(|_| DownloadRefused("sig"))?;
        // blake3::Hash compares in constant time.
        if given != signature(&self.download_key, artifact, device, expires) {
            return Err(DownloadRefused("sig"));
        }
        if now_ms / 1000 >= expires {
            return Err(DownloadRefused("expired"));
        }
        let id = DeviceId::new(device).map_err(|_| DownloadRefused("device"))?;
        match self.store.get_device(&id) {
            Ok(Some(found)) if found.enabled => {}
            _ => return Err(DownloadRefused("device")),
        }
        let known = if is_artifact_id(artifact) {
            matches!(self.store.get_artifact(artifact), Ok(Some(_)))
        } else {
            matches!(self.delta(artifact), Ok(Some(d)) if d.status == crate::store::ota::DeltaStatus::Done)
        };
        if !known {
            return Err(DownloadRefused("artifact"));
        }
        Ok((
            self.file_path(artifact),
            self.throttle_for(device, artifact),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_key(dir.path()).unwrap();
        assert_eq!(load_or_create_key(dir.path()).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(
            load_or_create_key(dir.path()).is_err(),
            "a damaged key stops start-up"
        );
    }

    #[test]
    fn signatures_bind_artifact_device_and_expiry() {
        let key = [9u8; 32];
        let base = signature(&key, "a1", "d1", 100);
        assert_ne!(base, signature(&key, "a2", "d1", 100));
        assert_ne!(base, signature(&key, "a1", "d2", 100));
        assert_ne!(base, signature(&key, "a1", "d1", 101));
        assert_ne!(base, signature(&[8u8; 32], "a1", "d1", 100));
        // The separator keeps ("a1d", "1") apart from ("a1", "d1").
        assert_ne!(base, signature(&key, "a1d", "1", 100));
    }
}
