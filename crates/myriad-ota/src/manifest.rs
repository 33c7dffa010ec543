//! Signed update manifests: what an update installs, signed so a device can tell it came from
//! the fleet's key, checked before anything is written.
//!
//! [`sign_ed25519`] encodes a [`Manifest`] and signs the exact encoded bytes; the envelope
//! ([`SignedManifest`]) carries them unchanged, so verification never depends on re-encoding.
//! [`verify`] is what a device runs on the bytes it received:
//!
//! 1. the envelope is at most [`MAX_SIGNED_MANIFEST`] bytes and decodes;
//! 2. the algorithm is one the device trusts: Ed25519 when it pins at least one Ed25519 key,
//!    SM2/SM3 when it pins at least one SM2 root certificate; anything else is
//!    [`ManifestError::Unsupported`];
//! 3. the signature verifies: Ed25519 (`verify_strict`: no malleable or small-order forms)
//!    under one of the pinned public keys, or SM2 under the leaf of a certificate chain that
//!    ends at a pinned root and is valid at [`Trust::now`] ([`crate::sm2_chain`] lists the
//!    checks; a chain refusal is [`ManifestError::Chain`]);
//! 4. only then are the manifest bytes decoded, and the manifest must be well formed (32-byte
//!    digests, a delta names its base and patch, no more than [`MAX_LOCATIONS`] locations),
//!    built for the device's hardware type, and its security counter not below the installed
//!    one (anti-rollback; equal is a reinstall).
//!
//! Every refusal is a [`ManifestError`] naming what failed.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use prost::Message;

pub use crate::proto::{Manifest, SignatureAlgorithm, SignedManifest};
pub use crate::sm2_chain::{ChainError, sign_sm2};

/// Largest signed manifest a device accepts (bytes).
pub const MAX_SIGNED_MANIFEST: usize = 64 * 1024;
/// Most download locations in a manifest.
pub const MAX_LOCATIONS: usize = 16;

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The envelope is larger than [`MAX_SIGNED_MANIFEST`].
    #[error("signed manifest of {0} bytes, at most {MAX_SIGNED_MANIFEST}")]
    TooLarge(usize),
    /// The envelope or the manifest does not decode.
    #[error("{0} does not decode")]
    Decode(&'static str),
    /// The algorithm is unknown or not trusted by this device.
    #[error("signature algorithm {0} not supported")]
    Unsupported(i32),
    /// The signature is malformed or no pinned key verifies it.
    #[error("signature does not verify")]
    BadSignature,
    /// A field is missing or malformed.
    #[error("manifest field {0}: {1}")]
    BadField(&'static str, &'static str),
    /// The SM2 certificate chain was refused.
    #[error("certificate chain: {0}")]
    Chain(#[from] ChainError),
    /// Built for another hardware type.
    #[error("manifest for hardware type {got:?}, this device is {want:?}")]
    WrongHardware {
        /// The manifest's hardware type.
        got: String,
        /// The device's.
        want: String,
    },
    /// The security counter is below the installed one.
    #[error("security counter {got} is below the installed {installed}")]
    Rollback {
        /// The manifest's counter.
        got: u64,
        /// The installed counter.
        installed: u64,
    },
}

/// What a device trusts and what it runs.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Pinned Ed25519 public keys (one of them must verify the signature); none: Ed25519
    /// envelopes are refused as unsupported.
    pub ed25519: Vec<VerifyingKey>,
    /// Pinned SM2 root certificates (DER); none: SM2 envelopes are refused as unsupported.
    pub sm2_roots: Vec<Vec<u8>>,
    /// The time to check certificate validity at (unix seconds; the crate has no clock).
    pub now: u64,
    /// The device's hardware type.
    pub hardware_type: String,
    /// The security counter of the installed image.
    pub installed_counter: u64,
}

/// Encodes `manifest` and signs the encoded bytes with `key`; returns the encoded envelope.
pub fn sign_ed25519(manifest: &Manifest, key: &SigningKey) -> Vec<u8> {
    let bytes = manifest.encode_to_vec();
    let signature = key.sign(&bytes);
    SignedManifest {
        manifest: bytes,
        algorithm: SignatureAlgorithm::Ed25519 as i32,
        signature: signature.to_bytes().to_vec(),
        certificates: Vec::new(),
    }
    .encode_to_vec()
}

/// Checks a received envelope as the module docs describe; the manifest when all checks pass.
pub fn verify(envelope: &[u8], trust: &Trust) -> Result<Manifest, ManifestError> {
    if envelope.len() > MAX_SIGNED_MANIFEST {
        return Err(ManifestError::TooLarge(envelope.len()));
    }
    let signed =
        SignedManifest::decode(envelope).map_err(|_| ManifestError::Decode("signed manifest"))?;
    match SignatureAlgorithm::try_from(signed.algorithm) {
        Ok(SignatureAlgorithm::Ed25519) if !trust.ed25519.is_empty() => {
            if !signed.certificates.is_empty() {
                return Err(ManifestError::BadField(
                    "certificates",
                    "not used with Ed25519",
                ));
            }
            let sig = <[u8; 64]>::try_from(signed.signature.as_slice())
                .map_err(|_| ManifestError::BadSignature)?;
            let sig = Signature::from_bytes(&sig);
            let ok = trust
                .ed25519
                .iter()
                .any(|k| k.verify_strict(&signed.manifest, &sig).is_ok());
            if !ok {
                return Err(ManifestError::BadSignature);
            }
        }
        Ok(SignatureAlgorithm::Sm2Sm3) if !trust.sm2_roots.is_empty() => {
            crate::sm2_chain::verify_sm2(&signed, &trust.sm2_roots, trust.now)?;
        }
        _ => return Err(ManifestError::Unsupported(signed.algorithm)),
    }
    let m = Manifest::decode(signed.manifest.as_slice())
        .map_err(|_| ManifestError::Decode("manifest"))?;
    check_fields(&m)?;
    if m.hardware_type != trust.hardware_type {
        return Err(ManifestError::WrongHardware {
            got: m.hardware_type,
            want: trust.hardware_type.clone(),
        });
    }
    if m.security_counter < trust.installed_counter {
        return Err(ManifestError::Rollback {
            got: m.security_counter,
            installed: trust.installed_counter,
        });
    }
    Ok(m)
}

fn check_fields(m: &Manifest) -> Result<(), ManifestError> {
    let digest = |name, d: &[u8]| {
        if d.len() == 32 {
            Ok(())
        } else {
            Err(ManifestError::BadField(name, "must be 32 bytes"))
        }
    };
    if m.target_version.is_empty() {
        return Err(ManifestError::BadField("target_version", "empty"));
    }
    if m.hardware_type.is_empty() {
        return Err(ManifestError::BadField("hardware_type", "empty"));
    }
    if m.image_size == 0 {
        return Err(ManifestError::BadField("image_size", "zero"));
    }
    digest("target_sha256", &m.target_sha256)?;
    let delta = !m.base_version.is_empty() || m.patch_size != 0;
    if delta {
        if m.base_version.is_empty() || m.patch_size == 0 {
            return Err(ManifestError::BadField(
                "base_version",
                "a delta names its base version and patch size",
            ));
        }
        digest("base_sha256", &m.base_sha256)?;
        digest("patch_sha256", &m.patch_sha256)?;
    } else if !m.base_sha256.is_empty() || !m.patch_sha256.is_empty() {
        return Err(ManifestError::BadField(
            "patch_sha256",
            "a full image has no base or patch digest",
        ));
    }
    if m.locations.len() > MAX_LOCATIONS {
        return Err(ManifestError::BadField("locations", "at most 16"));
    }
    Ok(())
}

/// SHA-256 of `bytes` (for building manifests).
pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn delta() -> Manifest {
        Manifest {
            target_version: "1.2.0".into(),
            base_version: "1.1.0".into(),
            hardware_type: "gw-a".into(),
            image_size: 4_000_000,
            patch_size: 120_000,
            base_sha256: sha256(b"base"),
            target_sha256: sha256(b"target"),
            patch_sha256: sha256(b"patch"),
            security_counter: 7,
            locations: vec!["https://fleet.example/ota/p1".into()],
        }
    }

    fn trust() -> Trust {
        Trust {
            ed25519: vec![key(2).verifying_key(), key(1).verifying_key()],
            hardware_type: "gw-a".into(),
            installed_counter: 7,
            ..Trust::default()
        }
    }

    #[test]
    fn signed_manifest_verifies_under_a_pinned_key() {
        let env = sign_ed25519(&delta(), &key(1));
        assert_eq!(verify(&env, &trust()), Ok(delta()));
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let env = sign_ed25519(&delta(), &key(1));
        for i in 0..env.len() {
            for flip in [0x01u8, 0x80] {
                let mut bad = env.clone();
                bad[i] ^= flip;
                assert!(
                    verify(&bad, &trust()).is_err(),
                    "byte {i} ^ {flip:#x} accepted"
                );
            }
        }
        // Cut short anywhere, or grown by a byte.
        for n in 0..env.len() {
            assert!(verify(&env[..n], &trust()).is_err(), "cut at {n} accepted");
        }
        let mut longer = env.clone();
        longer.push(0);
        assert!(verify(&longer, &trust()).is_err());
    }

    #[test]
    fn refusals_name_what_failed() {
        let t = trust();
        assert_eq!(
            verify(&sign_ed25519(&delta(), &key(9)), &t),
            Err(ManifestError::BadSignature),
            "unpinned key"
        );
        let older = Manifest {
            security_counter: 6,
            ..delta()
        };
        assert_eq!(
            verify(&sign_ed25519(&older, &key(1)), &t),
            Err(ManifestError::Rollback {
                got: 6,
                installed: 7
            })
        );
        let other = Manifest {
            hardware_type: "gw-b".into(),
            ..delta()
        };
        assert!(matches!(
            verify(&sign_ed25519(&other, &key(1)), &t),
            Err(ManifestError::WrongHardware { .. })
        ));
        let short = Manifest {
            target_sha256: vec![0; 31],
            ..delta()
        };
        assert_eq!(
            verify(&sign_ed25519(&short, &key(1)), &t),
            Err(ManifestError::BadField("target_sha256", "must be 32 bytes"))
        );
        let half_delta = Manifest {
            patch_size: 0,
            ..delta()
        };
        assert!(matches!(
            verify(&sign_ed25519(&half_delta, &key(1)), &t),
            Err(ManifestError::BadField("base_version", _))
        ));
        let many = Manifest {
            locations: vec!["x".into(); MAX_LOCATIONS + 1],
            ..delta()
        };
        assert!(matches!(
            verify(&sign_ed25519(&many, &key(1)), &t),
            Err(ManifestError::BadField("locations", _))
        ));
        let at_limit = Manifest {
            locations: vec!["x".into(); MAX_LOCATIONS],
            ..delta()
        };
        assert!(verify(&sign_ed25519(&at_limit, &key(1)), &t).is_ok());
        // A reinstall (equal counter) and a full image pass.
        let full = Manifest {
            base_version: String::new(),
            patch_size: 0,
            base_sha256: Vec::new(),
            patch_sha256: Vec::new(),
            ..delta()
        };
        assert!(verify(&sign_ed25519(&full, &key(2)), &t).is_ok());
        // No SM2 root pinned: SM2 is refused, never accepted unchecked.
        let mut sm2 =
            SignedManifest::decode(sign_ed25519(&delta(), &key(1)).as_slice()).expect("decode");
        sm2.algorithm = SignatureAlgorithm::Sm2Sm3 as i32;
        assert_eq!(
            verify(&sm2.encode_to_vec(), &t),
            Err(ManifestError::Unsupported(2))
        );
        assert_eq!(
            verify(&vec![0u8; MAX_SIGNED_MANIFEST + 1], &t),
            Err(ManifestError::TooLarge(MAX_SIGNED_MANIFEST + 1))
        );
    }

    proptest::proptest! {
        /// Arbitrary bytes never verify and never panic.
        #[test]
        fn arbitrary_envelopes_are_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            proptest::prop_assert!(verify(&bytes, &trust()).is_err());
        }
    }
}
