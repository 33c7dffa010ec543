//! SM2 signatures with SM3 digests under an X.509 chain (GM/T 0003, GM/T 0015), as
//! automotive ECUs in China require.
//!
//! [`sign_sm2`] signs the encoded manifest with the leaf's SM2 key and carries the chain
//! (DER, leaf first) in the envelope. [`crate::manifest::verify`] hands an `SM2_SM3`
//! envelope to the checks here when the device pins at least one SM2 root
//! ([`crate::manifest::Trust::sm2_roots`]); the time is passed in
//! ([`crate::manifest::Trust::now`], unix seconds): the crate has no clock.
//!
//! What the device checks, in order; each refusal is its own [`ChainError`] variant, with
//! the index of the certificate in the envelope (0 = leaf):
//!
//! 1. there is at least one certificate and at most [`MAX_CHAIN_CERTS`] (4: leaf, two
//!    intermediates, and the root itself if the signer includes it); each is at most
//!    [`MAX_CERT_DER`] (4096) bytes;
//! 2. each parses as a DER X.509 v3 certificate and re-encodes to exactly its bytes (no BER,
//!    no trailing bytes); its signature algorithm, outside and inside the signed part, is
//!    SM2-with-SM3 ([`OID_SM2_WITH_SM3`], 1.2.156.10197.1.501, parameters absent or NULL):
//!    any other algorithm is refused; its key is an SM2 key (id-ecPublicKey on the SM2 curve
//!    1.2.156.10197.1.301); no extension appears twice; every critical extension is one
//!    the device processes (basicConstraints, keyUsage, extKeyUsage), any other critical
//!    extension is refused;
//! 3. the chain ends at a pinned root: either its last certificate is byte-for-byte a
//!    pinned root, or its last certificate's issuer is a pinned root's subject
//!    ([`ChainError::UnpinnedRoot`] when the last certificate is a self-issued root that is
//!    not pinned, [`ChainError::NoPinnedIssuer`] when no pinned root has the issuer's name);
//! 4. for each certificate below the root, with its issuer the next one up: the issuer name
//!    equals the issuer's subject (byte for byte), the issuer's SM2 signature over the
//!    to-be-signed bytes verifies, the issuer is a CA (basicConstraints cA; keyCertSign
//!    when it has a keyUsage; its pathLenConstraint not below the number of intermediates
//!    under it), and the validity window contains `now` (both ends inclusive). The pinned
//!    root is a trust anchor (RFC 5280 §6.1): its own validity and self-signature are not
//!    checked, only that it may issue;
//! 5. the leaf has extendedKeyUsage with codeSigning (1.3.6.1.5.5.7.3.3;
//!    anyExtendedKeyUsage is not enough) and, if it has a keyUsage, digitalSignature;
//! 6. the manifest signature (64 bytes, `r || s`) verifies under the leaf's key.
//!
//! Both the certificate signatures (DER `SEQUENCE { r, s }`) and the manifest signature
//! use the default distinguishing ID [`SM2_DISTID`] (`"1234567812345678"`, GB/T 35276 and
//! GM/T 0009) in the SM3 `Z` hash of the signer's key.

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use prost::Message;
use sm2::dsa::signature::{Signer, Verifier};
use x509_cert::Certificate;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};

use crate::manifest::ManifestError;
use crate::proto::{Manifest, SignatureAlgorithm, SignedManifest};

/// The SM2 distinguishing ID every signature here uses (the standard's default).
pub const SM2_DISTID: &str = "1234567812345678";
/// Most certificates in a signed manifest.
pub const MAX_CHAIN_CERTS: usize = 4;
/// Largest certificate (DER bytes).
pub const MAX_CERT_DER: usize = 4096;

/// SM2 signature with SM3 digest (GM/T 0006).
pub const OID_SM2_WITH_SM3: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.501");
/// The SM2 curve (`sm2p256v1`).
pub const OID_SM2_CURVE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.301");
/// `id-ecPublicKey` (RFC 5480).
pub const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// Extended key usage codeSigning (RFC 5280).
pub const OID_CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
/// The basicConstraints extension.
pub const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
/// The keyUsage extension.
pub const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
/// The extKeyUsage extension.
pub const OID_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");

/// Why an SM2 certificate chain was refused. `index` is the certificate's position in the
/// envelope, 0 for the leaf; for the pinned root it is the envelope's certificate count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// An SM2 envelope without certificates.
    #[error("no certificates")]
    Empty,
    /// More than [`MAX_CHAIN_CERTS`] certificates.
    #[error("{0} certificates, at most {MAX_CHAIN_CERTS}")]
    TooMany(usize),
    /// A certificate larger than [`MAX_CERT_DER`].
    #[error("certificate {index} is {len} bytes, at most {MAX_CERT_DER}")]
    CertTooLarge {
        /// Which certificate.
        index: usize,
        /// Its size.
        len: usize,
    },
    /// Not a DER X.509 certificate (or not exactly its own encoding).
    #[error("certificate {index} does not parse")]
    Malformed {
        /// Which certificate.
        index: usize,
    },
    /// Not an X.509 v3 certificate.
    #[error("certificate {index} is not X.509 v3")]
    NotV3 {
        /// Which certificate.
        index: usize,
    },
    /// Signed with another algorithm than SM2-with-SM3, or the outer and inner algorithms
    /// differ.
    #[error("certificate {index} signature algorithm {oid}, only SM2-with-SM3 is accepted")]
    WrongSignatureAlgorithm {
        /// Which certificate.
        index: usize,
        /// The algorithm found.
        oid: String,
    },
    /// The certified key is not an SM2 public key.
    #[error("certificate {index} does not certify an SM2 key")]
    NotSm2Key {
        /// Which certificate.
        index: usize,
    },
    /// An extension appears twice.
    #[error("certificate {index} has extension {oid} twice")]
    DuplicateExtension {
        /// Which certificate.
        index: usize,
        /// The extension.
        oid: String,
    },
    /// A critical extension the device does not process.
    #[error("certificate {index} has unknown critical extension {oid}")]
    UnknownCriticalExtension {
        /// Which certificate.
        index: usize,
        /// The extension.
        oid: String,
    },
    /// The last certificate is a root that is not pinned.
    #[error("certificate {index} is a root that is not pinned")]
    UnpinnedRoot {
        /// Which certificate.
        index: usize,
    },
    /// No pinned root issued the last certificate.
    #[error("the chain does not reach a pinned root")]
    NoPinnedIssuer,
    /// A certificate's issuer name is not the next certificate's subject.
    #[error("certificate {index}'s issuer is not the next certificate's subject")]
    IssuerMismatch {
        /// Which certificate.
        index: usize,
    },
    /// The next certificate's key did not sign this one.
    #[error("certificate {index}'s signature does not verify")]
    BadCertSignature {
        /// Which certificate.
        index: usize,
    },
    /// An issuer that is not a CA (no basicConstraints cA).
    #[error("certificate {index} issues certificates but is not a CA")]
    NotCa {
        /// Which certificate.
        index: usize,
    },
    /// An issuer whose keyUsage lacks keyCertSign.
    #[error("certificate {index} issues certificates without keyCertSign")]
    NoKeyCertSign {
        /// Which certificate.
        index: usize,
    },
    /// More intermediates below an issuer than its pathLenConstraint allows.
    #[error("certificate {index}'s path length constraint is exceeded")]
    PathLenExceeded {
        /// Which certificate.
        index: usize,
    },
    /// `now` is after the certificate's notAfter.
    #[error("certificate {index} expired at {not_after}")]
    Expired {
        /// Which certificate.
        index: usize,
        /// Its notAfter (unix seconds).
        not_after: u64,
    },
    /// `now` is before the certificate's notBefore.
    #[error("certificate {index} is not valid before {not_before}")]
    NotYetValid {
        /// Which certificate.
        index: usize,
        /// Its notBefore (unix seconds).
        not_before: u64,
    },
    /// The leaf has no extendedKeyUsage codeSigning.
    #[error("the leaf certificate is not for code signing")]
    NoCodeSigning,
    /// The leaf's keyUsage lacks digitalSignature.
    #[error("the leaf certificate's key usage lacks digitalSignature")]
    NoDigitalSignature,
    /// A pinned root (device configuration) does not parse as an SM2 certificate.
    #[error("pinned root {0} is not a usable SM2 certificate")]
    BadPinnedRoot(usize),
}

/// Encodes `manifest`, signs the encoded bytes with `key` (SM2 with SM3; give it the
/// default distinguishing ID [`SM2_DISTID`], as [`crate::keygen::load_sm2_signing_key`]
/// does) and returns the encoded envelope carrying `chain_der` (the leaf's certificate
/// first, then its issuers; the root may be left out).
pub fn sign_sm2(
    manifest: &Manifest,
    key: &sm2::dsa::SigningKey,
    chain_der: Vec<Vec<u8>>,
) -> Vec<u8> {
    let bytes = manifest.encode_to_vec();
    let signature: sm2::dsa::Signature = key.sign(&bytes);
    SignedManifest {
        manifest: bytes,
        algorithm: SignatureAlgorithm::Sm2Sm3 as i32,
        signature: signature.to_vec(),
        certificates: chain_der,
    }
    .encode_to_vec()
}

/// What the checks need of one certificate.
struct Parsed {
    cert: Certificate,
    tbs: Vec<u8>,
    key: sm2::dsa::VerifyingKey,
    subject: Vec<u8>,
    issuer: Vec<u8>,
    basic: Option<BasicConstraints>,
    key_usage: Option<KeyUsage>,
    ext_key_usage: Option<ExtendedKeyUsage>,
}

fn parse(index: usize, der: &[u8]) -> Result<Parsed, ChainError> {
    let malformed = ChainError::Malformed { index };
    if der.len() > MAX_CERT_DER {
        return Err(ChainError::CertTooLarge {
            index,
            len: der.len(),
        });
    }
    let cert = Certificate::from_der(der).map_err(|_| malformed.clone())?;
    if cert.to_der().ok().as_deref() != Some(der) {
        return Err(malformed);
    }
    let tbs_cert = cert.tbs_certificate();
    if tbs_cert.version() != x509_cert::Version::V3 {
        return Err(ChainError::NotV3 { index });
    }
    let null = der::asn1::Null.to_der().map_err(|_| malformed.clone())?;
    for alg in [cert.signature_algorithm(), tbs_cert.signature()] {
        let params_ok = match &alg.parameters {
            None => true,
            Some(p) => p.to_der().ok().as_deref() == Some(null.as_slice()),
        };
        if alg.oid != OID_SM2_WITH_SM3 || !params_ok {
            return Err(ChainError::WrongSignatureAlgorithm {
                index,
                oid: alg.oid.to_string(),
            });
        }
    }
    let spki = tbs_cert.subject_public_key_info();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != OID_EC_PUBLIC_KEY || curve != Some(OID_SM2_CURVE) {
        return Err(ChainError::NotSm2Key { index });
    }
    let key = spki
        .subject_public_key
        .as_bytes()
        .and_then(|b| sm2::dsa::VerifyingKey::from_sec1_bytes(SM2_DISTID, b).ok())
        .ok_or(ChainError::NotSm2Key { index })?;
    let mut basic = None;
    let mut key_usage = None;
    let mut ext_key_usage = None;
    let mut seen: Vec<ObjectIdentifier> = Vec::new();
    for ext in tbs_cert.extensions().map(Vec::as_slice).unwrap_or_default() {
        if seen.contains(&ext.extn_id) {
            return Err(ChainError::DuplicateExtension {
                index,
                oid: ext.extn_id.to_string(),
            });
        }
        seen.push(ext.extn_id);
        let value = ext.extn_value.as_bytes();
        match ext.extn_id {
            OID_BASIC_CONSTRAINTS => {
                basic = Some(BasicConstraints::from_der(value).map_err(|_| malformed.clone())?);
            }
            OID_KEY_USAGE => {
                key_usage = Some(KeyUsage::from_der(value).map_err(|_| malformed.clone())?);
            }
            OID_EXT_KEY_USAGE => {
                ext_key_usage =
                    Some(ExtendedKeyUsage::from_der(value).map_err(|_| malformed.clone())?);
            }
            oid if ext.critical => {
                return Err(ChainError::UnknownCriticalExtension {
                    index,
                    oid: oid.to_string(),
                });
            }
            _ => {}
        }
    }
    let tbs = tbs_cert.to_der().map_err(|_| malformed.clone())?;
    let subject = tbs_cert.subject().to_der().map_err(|_| malformed.clone())?;
    let issuer = tbs_cert.issuer().to_der().map_err(|_| malformed)?;
    Ok(Parsed {
        cert,
        tbs,
        key,
        subject,
        issuer,
        basic,
        key_usage,
        ext_key_usage,
    })
}

/// May `issuer` (at `index`) issue a certificate with `below` intermediates under it?
fn check_issuer(index: usize, issuer: &Parsed, below: usize) -> Result<(), ChainError> {
    let basic = issuer
        .basic
        .as_ref()
        .filter(|b| b.ca)
        .ok_or(ChainError::NotCa { index })?;
    if issuer
        .key_usage
        .as_ref()
        .is_some_and(|k| !k.key_cert_sign())
    {
        return Err(ChainError::NoKeyCertSign { index });
    }
    if basic
        .path_len_constraint
        .is_some_and(|max| below > usize::from(max))
    {
        return Err(ChainError::PathLenExceeded { index });
    }
    Ok(())
}

fn check_signed_by(index: usize, cert: &Parsed, issuer: &Parsed) -> Result<(), ChainError> {
    let bad = ChainError::BadCertSignature { index };
    let sig = cert.cert.signature().as_bytes().ok_or(bad.clone())?;
    let sig = sm2::dsa::Signature::from_der(sig).map_err(|_| bad.clone())?;
    issuer.key.verify(&cert.tbs, &sig).map_err(|_| bad)
}

fn check_validity(index: usize, cert: &Parsed, now: u64) -> Result<(), ChainError> {
    let validity = cert.cert.tbs_certificate().validity();
    let not_before = validity.not_before.to_unix_duration().as_secs();
    let not_after = validity.not_after.to_unix_duration().as_secs();
    if now < not_before {
        return Err(ChainError::NotYetValid { index, not_before });
    }
    if now > not_after {
        return Err(ChainError::Expired { index, not_after });
    }
    Ok(())
}

/// Checks the chain of `signed` against the pinned `roots` at `now` and the manifest
/// signature under the leaf (module docs).
pub(crate) fn verify_sm2(
    signed: &SignedManifest,
    roots: &[Vec<u8>],
    now: u64,
) -> Result<(), ManifestError> {
    let certs = &signed.certificates;
    if certs.is_empty() {
        return Err(ChainError::Empty.into());
    }
    if certs.len() > MAX_CHAIN_CERTS {
        return Err(ChainError::TooMany(certs.len()).into());
    }
    let chain = certs
        .iter()
        .enumerate()
        .map(|(i, der)| parse(i, der))
        .collect::<Result<Vec<_>, _>>()?;
    let pinned = roots
        .iter()
        .enumerate()
        .map(|(i, der)| parse(i, der).map_err(|_| ChainError::BadPinnedRoot(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let n = chain.len();
    let top = &chain[n - 1];
    // Below the anchor: the whole chain, or all but its last certificate when that one is
    // a pinned root itself.
    let (below_anchor, anchors): (usize, Vec<&Parsed>) =
        match roots.iter().position(|r| *r == certs[n - 1]) {
            Some(p) => (n - 1, vec![&pinned[p]]),
            None => {
                let issuers: Vec<&Parsed> =
                    pinned.iter().filter(|r| r.subject == top.issuer).collect();
                if issuers.is_empty() {
                    return Err(if top.issuer == top.subject {
                        ChainError::UnpinnedRoot { index: n - 1 }
                    } else {
                        ChainError::NoPinnedIssuer
                    }
                    .into());
                }
                (n, issuers)
            }
        };
    for index in 0..below_anchor {
        let cert = &chain[index];
        if index + 1 < below_anchor {
            let issuer = &chain[index + 1];
            if cert.issuer != issuer.subject {
                return Err(ChainError::IssuerMismatch { index }.into());
            }
            check_signed_by(index, cert, issuer)?;
            check_issuer(index + 1, issuer, index)?;
        } else {
            // Signed by a pinned root (several may share a name, as when a root's key is
            // renewed): one of them must verify.
            let anchor = anchors
                .iter()
                .find(|a| a.subject == cert.issuer && check_signed_by(index, cert, a).is_ok());
            let Some(anchor) = anchor else {
                return Err(if anchors.iter().any(|a| a.subject == cert.issuer) {
                    ChainError::BadCertSignature { index }
                } else {
                    ChainError::IssuerMismatch { index }
                }
                .into());
            };
            check_issuer(index + 1, anchor, index)?;
        }
        check_validity(index, cert, now)?;
    }
    let leaf = &chain[0];
    if !leaf
        .ext_key_usage
        .as_ref()
        .is_some_and(|e| e.0.contains(&OID_CODE_SIGNING))
    {
        return Err(ChainError::NoCodeSigning.into());
    }
    if leaf
        .key_usage
        .as_ref()
        .is_some_and(|k| !k.digital_signature())
    {
        return Err(ChainError::NoDigitalSignature.into());
    }
    let sig = sm2::dsa::Signature::from_slice(&signed.signature)
        .map_err(|_| ManifestError::BadSignature)?;
    leaf.key
        .verify(&signed.manifest, &sig)
        .map_err(|_| ManifestError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keygen::{CertSpec, issue_sm2_cert, sm2_key_from_seed};
    use crate::manifest::{Trust, sha256, sign_ed25519, verify};
    use x509_cert::ext::Extension;
    use x509_cert::ext::pkix::KeyUsages;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;
    const ROOT: &str = "CN=Test SM2 root,O=Myriad test";
    const INTERMEDIATE: &str = "CN=Test SM2 intermediate,O=Myriad test";
    const LEAF: &str = "CN=Test SM2 signer,O=Myriad test";

    fn key(label: &str) -> sm2::dsa::SigningKey {
        sm2_key_from_seed(&[9; 32], label)
    }

    /// The specs of a good chain (root, intermediate, leaf) valid from a day before [`NOW`].
    fn specs() -> [CertSpec; 3] {
        let from = NOW - DAY;
        [
            CertSpec::ca(ROOT, ROOT, 1, from, None),
            CertSpec::ca(INTERMEDIATE, ROOT, 2, from, Some(0)),
            CertSpec::code_signing(LEAF, INTERMEDIATE, 3, from),
        ]
    }

    /// A test PKI: the three certificates as DER, made from `specs` edited by `edit`.
    struct Pki {
        root: Vec<u8>,
        intermediate: Vec<u8>,
        leaf: Vec<u8>,
    }

    fn pki(edit: impl FnOnce(&mut [CertSpec; 3])) -> Pki {
        let mut s = specs();
        edit(&mut s);
        let (rk, ik, lk) = (key("root"), key("intermediate"), key("leaf"));
        let issue = |spec, subject: &sm2::dsa::SigningKey, issuer| {
            issue_sm2_cert(spec, subject.verifying_key(), issuer).expect("issue")
        };
        Pki {
            root: issue(&s[0], &rk, &rk),
            intermediate: issue(&s[1], &ik, &rk),
            leaf: issue(&s[2], &lk, &ik),
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            target_version: "2.0.0".into(),
            hardware_type: "ecu-7".into(),
            image_size: 1_000_000,
            target_sha256: sha256(b"target"),
            security_counter: 3,
            ..Manifest::default()
        }
    }

    fn trust(root: &[u8]) -> Trust {
        Trust {
            sm2_roots: vec![root.to_vec()],
            now: NOW,
            hardware_type: "ecu-7".into(),
            installed_counter: 3,
            ..Trust::default()
        }
    }

    fn envelope(p: &Pki) -> Vec<u8> {
        sign_sm2(
            &manifest(),
            &key("leaf"),
            vec![p.leaf.clone(), p.intermediate.clone()],
        )
    }

    /// The refusal of the chain made by `edit`, checked at [`NOW`] against its own root.
    fn refusal(edit: impl FnOnce(&mut [CertSpec; 3])) -> ManifestError {
        let p = pki(edit);
        verify(&envelope(&p), &trust(&p.root)).expect_err("accepted")
    }

    fn chain_err(e: ChainError) -> ManifestError {
        ManifestError::Chain(e)
    }

    #[test]
    fn good_chain_verifies_with_or_without_the_root() {
        let p = pki(|_| ());
        assert_eq!(verify(&envelope(&p), &trust(&p.root)), Ok(manifest()));
        let with_root = sign_sm2(
            &manifest(),
            &key("leaf"),
            vec![p.leaf.clone(), p.intermediate.clone(), p.root.clone()],
        );
        assert_eq!(verify(&with_root, &trust(&p.root)), Ok(manifest()));
        // Another pinned root beside the right one does not matter.
        let other = pki(|s| s[0].subject = "CN=Other root".into());
        let mut t = trust(&other.root);
        t.sm2_roots.push(p.root.clone());
        assert_eq!(verify(&envelope(&p), &t), Ok(manifest()));
    }

    #[test]
    fn development_chain_verifies() {
        let chain = crate::keygen::sm2_dev_chain(&[4; 32], NOW).expect("chain");
        let certs = crate::keygen::load_certificates(chain.chain_pem.as_bytes()).expect("certs");
        let root = crate::keygen::load_certificates(chain.root_pem.as_bytes()).expect("root");
        let signer =
            crate::keygen::load_sm2_signing_key(chain.leaf_key_pem.as_bytes()).expect("key");
        let env = sign_sm2(&manifest(), &signer, certs);
        assert_eq!(verify(&env, &trust(&root[0])), Ok(manifest()));
        let end = NOW + crate::keygen::DEV_VALIDITY_SECS;
        let at = |now| Trust {
            now,
            ..trust(&root[0])
        };
        assert_eq!(verify(&env, &at(end)), Ok(manifest()), "last second");
        assert!(matches!(
            verify(&env, &at(end + 1)),
            Err(ManifestError::Chain(ChainError::Expired { index: 0, .. }))
        ));
    }

    proptest::proptest! {
        /// Arbitrary bytes as certificates (and as a pinned root) never verify and never
        /// panic.
        #[test]
        fn arbitrary_certificates_are_refused(
            certs in proptest::collection::vec(
                proptest::collection::vec(proptest::num::u8::ANY, 0..600), 1..5),
            root in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        ) {
            let p = pki(|_| ());
            let env = sign_sm2(&manifest(), &key("leaf"), certs.clone());
            proptest::prop_assert!(verify(&env, &trust(&p.root)).is_err());
            let mut with_good = vec![p.leaf.clone(), p.intermediate.clone()];
            with_good.truncate(MAX_CHAIN_CERTS - 1);
            with_good.push(certs[0].clone());
            let env = sign_sm2(&manifest(), &key("leaf"), with_good);
            proptest::prop_assert!(verify(&env, &trust(&p.root)).is_err());
            proptest::prop_assert!(verify(&envelope(&p), &trust(&root)).is_err());
        }
    }

    #[test]
    fn openssl_made_chain_verifies() {
        // testdata/openssl-sm2/README.md: made by OpenSSL 3.0 with the default ID.
        let load = crate::keygen::load_certificates;
        let root = load(include_bytes!("../testdata/openssl-sm2/root.pem")).expect("root");
        let int = load(include_bytes!("../testdata/openssl-sm2/intermediate.pem")).expect("int");
        let leaf = load(include_bytes!("../testdata/openssl-sm2/leaf.pem")).expect("leaf");
        let signer =
            crate::keygen::load_sm2_signing_key(include_bytes!("../testdata/openssl-sm2/leaf.key"))
                .expect("key");
        let env = sign_sm2(&manifest(), &signer, vec![leaf[0].clone(), int[0].clone()]);
        assert_eq!(verify(&env, &trust(&root[0])), Ok(manifest()));
        // 2037: past every notAfter; the leaf is checked first.
        let later = Trust {
            now: 2_130_000_000,
            ..trust(&root[0])
        };
        assert!(matches!(
            verify(&env, &later),
            Err(ManifestError::Chain(ChainError::Expired { index: 0, .. }))
        ));
        // Our development root does not anchor it.
        let ours = pki(|_| ());
        assert_eq!(
            verify(&env, &trust(&ours.root)),
            Err(chain_err(ChainError::NoPinnedIssuer))
        );
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let p = pki(|_| ());
        let env = envelope(&p);
        let t = trust(&p.root);
        // Where the manifest, the signature and each certificate sit in the envelope: a
        // flip inside the manifest or the signature is a bad signature, one inside a
        // certificate a chain refusal; anywhere else (protobuf tags and lengths, the
        // algorithm) some refusal.
        let find = |part: &[u8]| {
            let start = env
                .windows(part.len())
                .position(|w| w == part)
                .expect("part in envelope");
            start..start + part.len()
        };
        let signed = SignedManifest::decode(env.as_slice()).expect("decode");
        let manifest_at = find(&signed.manifest);
        let signature_at = find(&signed.signature);
        let certs_at = [find(&p.leaf), find(&p.intermediate)];
        for i in 0..env.len() {
            for flip in [0x01u8, 0x80] {
                let mut bad = env.clone();
                bad[i] ^= flip;
                let got = verify(&bad, &t);
                if manifest_at.contains(&i) || signature_at.contains(&i) {
                    assert_eq!(
                        got,
                        Err(ManifestError::BadSignature),
                        "byte {i} ^ {flip:#x}"
                    );
                } else if certs_at.iter().any(|c| c.contains(&i)) {
                    assert!(
                        matches!(got, Err(ManifestError::Chain(_))),
                        "byte {i} ^ {flip:#x}: {got:?}"
                    );
                } else {
                    assert!(got.is_err(), "byte {i} ^ {flip:#x} accepted");
                }
            }
        }
        for n in 0..env.len() {
            assert!(verify(&env[..n], &t).is_err(), "cut at {n} accepted");
        }
        // Flips in a pinned root the envelope carries are refused too.
        let with_root = sign_sm2(
            &manifest(),
            &key("leaf"),
            vec![p.leaf.clone(), p.intermediate.clone(), p.root.clone()],
        );
        let start = with_root
            .windows(p.root.len())
            .position(|w| w == p.root.as_slice())
            .expect("root in envelope");
        for i in start..start + p.root.len() {
            let mut bad = with_root.clone();
            bad[i] ^= 0x01;
            assert!(
                verify(&bad, &t).is_err(),
                "root byte {} accepted",
                i - start
            );
        }
    }

    #[test]
    fn flipped_certificate_bytes_are_chain_refusals() {
        // Each byte of the leaf and intermediate, flipped in place in the certificate list:
        // refused by the chain checks (parse, names, signatures), never by the manifest
        // signature alone.
        let p = pki(|_| ());
        let t = trust(&p.root);
        let signer = key("leaf");
        for which in 0..2 {
            let good = [p.leaf.clone(), p.intermediate.clone()];
            for i in 0..good[which].len() {
                let mut certs = good.clone();
                certs[which][i] ^= 0x01;
                let env = sign_sm2(&manifest(), &signer, certs.to_vec());
                match verify(&env, &t) {
                    Err(ManifestError::Chain(_)) => {}
                    other => panic!("cert {which} byte {i}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn validity_windows() {
        let expired = |s: &mut CertSpec| s.not_after = NOW - 1;
        let future = |s: &mut CertSpec| s.not_before = NOW + 1;
        assert_eq!(
            refusal(|s| expired(&mut s[2])),
            chain_err(ChainError::Expired {
                index: 0,
                not_after: NOW - 1
            })
        );
        assert_eq!(
            refusal(|s| future(&mut s[2])),
            chain_err(ChainError::NotYetValid {
                index: 0,
                not_before: NOW + 1
            })
        );
        assert_eq!(
            refusal(|s| expired(&mut s[1])),
            chain_err(ChainError::Expired {
                index: 1,
                not_after: NOW - 1
            })
        );
        assert_eq!(
            refusal(|s| future(&mut s[1])),
            chain_err(ChainError::NotYetValid {
                index: 1,
                not_before: NOW + 1
            })
        );
        // Both ends are inclusive.
        let p = pki(|s| {
            s[2].not_before = NOW;
            s[1].not_after = NOW;
        });
        assert!(verify(&envelope(&p), &trust(&p.root)).is_ok());
    }

    #[test]
    fn leaf_must_be_for_code_signing() {
        assert_eq!(
            refusal(|s| s[2].eku.clear()),
            chain_err(ChainError::NoCodeSigning)
        );
        let server_auth = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
        let any_eku = ObjectIdentifier::new_unwrap("2.5.29.37.0");
        assert_eq!(
            refusal(|s| s[2].eku = vec![server_auth, any_eku]),
            chain_err(ChainError::NoCodeSigning)
        );
        assert_eq!(
            refusal(|s| s[2].key_usage = Some(vec![KeyUsages::KeyEncipherment])),
            chain_err(ChainError::NoDigitalSignature)
        );
        // No keyUsage at all is allowed; codeSigning among others too.
        let p = pki(|s| {
            s[2].key_usage = None;
            s[2].eku = vec![server_auth, OID_CODE_SIGNING];
        });
        assert!(verify(&envelope(&p), &trust(&p.root)).is_ok());
    }

    #[test]
    fn issuers_must_be_cas() {
        assert_eq!(
            refusal(|s| s[1].ca = None),
            chain_err(ChainError::NotCa { index: 1 })
        );
        assert_eq!(
            refusal(|s| s[1].key_usage = Some(vec![KeyUsages::DigitalSignature])),
            chain_err(ChainError::NoKeyCertSign { index: 1 })
        );
        // The pinned root (index 2 = after the envelope's two certificates) too.
        assert_eq!(
            refusal(|s| s[0].ca = None),
            chain_err(ChainError::NotCa { index: 2 })
        );
        // A root limited to no intermediates, with one below it.
        assert_eq!(
            refusal(|s| s[0].ca = Some(Some(0))),
            chain_err(ChainError::PathLenExceeded { index: 2 })
        );
        let p = pki(|s| s[0].ca = Some(Some(1)));
        assert!(verify(&envelope(&p), &trust(&p.root)).is_ok(), "pathLen 1");
    }

    #[test]
    fn chain_must_reach_the_pinned_root() {
        let p = pki(|_| ());
        let signer = key("leaf");
        // A self-signed root that is not pinned, carried in the envelope.
        let fake = pki(|s| s[0].subject = "CN=Fake root".into());
        let other_trust = trust(&fake.root);
        let env = sign_sm2(
            &manifest(),
            &signer,
            vec![p.leaf.clone(), p.intermediate.clone(), p.root.clone()],
        );
        assert_eq!(
            verify(&env, &other_trust),
            Err(chain_err(ChainError::UnpinnedRoot { index: 2 }))
        );
        // The intermediate left out: the leaf's issuer is no pinned root.
        let env = sign_sm2(&manifest(), &signer, vec![p.leaf.clone()]);
        assert_eq!(
            verify(&env, &trust(&p.root)),
            Err(chain_err(ChainError::NoPinnedIssuer))
        );
        // A pinned root with the right name but another key.
        let rk = key("impostor");
        let impostor = issue_sm2_cert(&specs()[0], rk.verifying_key(), &rk).expect("issue");
        assert_eq!(
            verify(&envelope(&p), &trust(&impostor)),
            Err(chain_err(ChainError::BadCertSignature { index: 1 }))
        );
        // A leaf whose issuer name is not the intermediate's subject.
        assert_eq!(
            refusal(|s| s[2].issuer = "CN=Someone else".into()),
            chain_err(ChainError::IssuerMismatch { index: 0 })
        );
        // A leaf signed by the wrong key (the root's) under the intermediate's name.
        let rk = key("root");
        let wrong = issue_sm2_cert(&specs()[2], key("leaf").verifying_key(), &rk).expect("issue");
        let env = sign_sm2(&manifest(), &signer, vec![wrong, p.intermediate.clone()]);
        assert_eq!(
            verify(&env, &trust(&p.root)),
            Err(chain_err(ChainError::BadCertSignature { index: 0 }))
        );
        // A pinned root that is not a certificate is a configuration error.
        assert_eq!(
            verify(&envelope(&p), &trust(b"not a certificate")),
            Err(chain_err(ChainError::BadPinnedRoot(0)))
        );
    }

    #[test]
    fn only_sm2_with_sm3_is_accepted() {
        let ecdsa_sha256 = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
        assert_eq!(
            refusal(|s| s[2].signature_oid = ecdsa_sha256),
            chain_err(ChainError::WrongSignatureAlgorithm {
                index: 0,
                oid: "1.2.840.10045.4.3.2".into()
            })
        );
        assert!(matches!(
            refusal(|s| s[1].signature_oid = ecdsa_sha256),
            ManifestError::Chain(ChainError::WrongSignatureAlgorithm { index: 1, .. })
        ));
    }

    #[test]
    fn critical_extensions_must_be_known() {
        let private = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.55555.1");
        let ext = |critical| Extension {
            extn_id: private,
            critical,
            extn_value: der::asn1::OctetString::new(vec![5, 0]).expect("octets"),
        };
        assert_eq!(
            refusal(|s| s[2].extra.push(ext(true))),
            chain_err(ChainError::UnknownCriticalExtension {
                index: 0,
                oid: private.to_string()
            })
        );
        let p = pki(|s| s[2].extra.push(ext(false)));
        assert!(
            verify(&envelope(&p), &trust(&p.root)).is_ok(),
            "non-critical"
        );
        let twice = Extension {
            extn_id: OID_EXT_KEY_USAGE,
            critical: false,
            extn_value: der::asn1::OctetString::new(
                ExtendedKeyUsage(vec![OID_CODE_SIGNING])
                    .to_der()
                    .expect("der"),
            )
            .expect("octets"),
        };
        assert_eq!(
            refusal(|s| s[2].extra.push(twice)),
            chain_err(ChainError::DuplicateExtension {
                index: 0,
                oid: OID_EXT_KEY_USAGE.to_string()
            })
        );
    }

    /// A leaf padded with a non-critical extension to exactly `len` bytes.
    fn leaf_of_len(len: usize) -> Vec<u8> {
        let private = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.55555.2");
        let ik = key("intermediate");
        let make = |serial, pad| {
            let mut spec = specs()[2].clone();
            spec.serial = serial;
            spec.extra.push(Extension {
                extn_id: private,
                critical: false,
                extn_value: der::asn1::OctetString::new(vec![0u8; pad]).expect("octets"),
            });
            issue_sm2_cert(&spec, key("leaf").verifying_key(), &ik).expect("issue")
        };
        let base = make(3, 0).len();
        // The signature's DER length varies by a byte or two with the signed bytes: try
        // serial numbers until one lands exactly.
        for serial in 3..1000 {
            for pad in (len - base).saturating_sub(8)..=len - base {
                let der = make(serial, pad);
                if der.len() == len {
                    return der;
                }
            }
        }
        panic!("no certificate of {len} bytes");
    }

    #[test]
    fn limits_on_certificates() {
        let p = pki(|_| ());
        let t = trust(&p.root);
        let signer = key("leaf");
        let at_limit = leaf_of_len(MAX_CERT_DER);
        let env = sign_sm2(&manifest(), &signer, vec![at_limit, p.intermediate.clone()]);
        assert_eq!(verify(&env, &t), Ok(manifest()), "certificate at the limit");
        let over = leaf_of_len(MAX_CERT_DER + 1);
        let env = sign_sm2(&manifest(), &signer, vec![over, p.intermediate.clone()]);
        assert_eq!(
            verify(&env, &t),
            Err(chain_err(ChainError::CertTooLarge {
                index: 0,
                len: MAX_CERT_DER + 1
            }))
        );
        // Four certificates (leaf, two intermediates, root) pass; five are refused.
        let (rk, i1, i2, lk) = (key("root"), key("i1"), key("i2"), key("leaf"));
        let from = NOW - DAY;
        let root = issue_sm2_cert(
            &CertSpec::ca(ROOT, ROOT, 1, from, None),
            rk.verifying_key(),
            &rk,
        )
        .expect("issue");
        let int1 = issue_sm2_cert(
            &CertSpec::ca("CN=I1", ROOT, 2, from, Some(1)),
            i1.verifying_key(),
            &rk,
        )
        .expect("issue");
        let int2 = issue_sm2_cert(
            &CertSpec::ca("CN=I2", "CN=I1", 3, from, Some(0)),
            i2.verifying_key(),
            &i1,
        )
        .expect("issue");
        let leaf = issue_sm2_cert(
            &CertSpec::code_signing(LEAF, "CN=I2", 4, from),
            lk.verifying_key(),
            &i2,
        )
        .expect("issue");
        let four = vec![leaf.clone(), int2.clone(), int1.clone(), root.clone()];
        let t = trust(&root);
        assert_eq!(
            verify(&sign_sm2(&manifest(), &signer, four.clone()), &t),
            Ok(manifest())
        );
        let mut five = four;
        five.push(root);
        assert_eq!(
            verify(&sign_sm2(&manifest(), &signer, five), &t),
            Err(chain_err(ChainError::TooMany(5)))
        );
        assert_eq!(
            verify(&sign_sm2(&manifest(), &signer, Vec::new()), &t),
            Err(chain_err(ChainError::Empty))
        );
    }

    #[test]
    fn algorithms_must_be_trusted() {
        let p = pki(|_| ());
        let ed = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let ed_env = sign_ed25519(&manifest(), &ed);
        // Only SM2 trusted: an Ed25519 envelope is refused.
        assert_eq!(
            verify(&ed_env, &trust(&p.root)),
            Err(ManifestError::Unsupported(
                SignatureAlgorithm::Ed25519 as i32
            ))
        );
        // Only Ed25519 trusted: an SM2 envelope is refused.
        let ed_only = Trust {
            ed25519: vec![ed.verifying_key()],
            sm2_roots: Vec::new(),
            ..trust(&p.root)
        };
        assert_eq!(verify(&ed_env, &ed_only), Ok(manifest()));
        assert_eq!(
            verify(&envelope(&p), &ed_only),
            Err(ManifestError::Unsupported(
                SignatureAlgorithm::Sm2Sm3 as i32
            ))
        );
        // Both trusted: both pass.
        let both = Trust {
            ed25519: vec![ed.verifying_key()],
            ..trust(&p.root)
        };
        assert_eq!(verify(&ed_env, &both), Ok(manifest()));
        assert_eq!(verify(&envelope(&p), &both), Ok(manifest()));
    }

    #[test]
    fn manifest_signature_and_counter() {
        let p = pki(|_| ());
        let t = trust(&p.root);
        // Signed by a key that is not the leaf's.
        let env = sign_sm2(
            &manifest(),
            &key("intermediate"),
            vec![p.leaf.clone(), p.intermediate.clone()],
        );
        assert_eq!(verify(&env, &t), Err(ManifestError::BadSignature));
        // A lower security counter than installed.
        let older = Manifest {
            security_counter: 2,
            ..manifest()
        };
        let env = sign_sm2(
            &older,
            &key("leaf"),
            vec![p.leaf.clone(), p.intermediate.clone()],
        );
        assert_eq!(
            verify(&env, &t),
            Err(ManifestError::Rollback {
                got: 2,
                installed: 3
            })
        );
    }
}
