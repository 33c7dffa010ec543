//! Development signing keys, and loading keys and certificates from PEM or DER bytes.
//!
//! Sans-IO like the rest of the crate: the caller passes the randomness (a 32-byte `seed`
//! from the operating system's generator) and the time (`now`, unix seconds); the binary
//! (`myriad ctl ota keygen`) reads and writes the files. Every key is derived from the seed
//! with SM3 (`SM3("myriad-ota keygen" || label || counter || seed)`, the counter moving on
//! until the bytes are a valid SM2 scalar), so one seed gives one reproducible set of files.
//!
//! - [`ed25519_dev_keypair`]: an Ed25519 key pair, the private key as PKCS#8 PEM
//!   (`PRIVATE KEY`, RFC 8410) and the public key as SPKI PEM (`PUBLIC KEY`).
//! - [`sm2_dev_chain`]: a development SM2 CA chain (root CA, intermediate CA, code-signing
//!   leaf, each signed SM2-with-SM3, OID 1.2.156.10197.1.501) and the leaf's private key
//!   (PKCS#8 PEM). Every certificate is valid from `now` for [`DEV_VALIDITY_SECS`]. The CA
//!   keys are not kept: a development chain signs with its leaf until it expires, then a new
//!   chain is made (and pinned). Names, extensions and path lengths are in
//!   [`sm2_dev_chain`]'s documentation.
//! - [`issue_sm2_cert`]: one SM2 certificate from a [`CertSpec`] (what the chain above is
//!   built with, and what tests use to make good and bad chains).
//! - [`load_ed25519_signing_key`], [`load_ed25519_verifying_key`], [`load_sm2_signing_key`],
//!   [`load_certificates`]: parse what the functions above wrote (PEM, or DER), with a typed
//!   [`KeyError`]. Inputs above [`MAX_KEY_FILE`] bytes are refused.

use std::str::FromStr;

use der::asn1::{BitString, ObjectIdentifier, OctetString, UtcTime};
use der::{Decode, Encode, EncodePem};
use ed25519_dalek::SigningKey as Ed25519SigningKey;
use ed25519_dalek::VerifyingKey as Ed25519VerifyingKey;
use pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use sm2::dsa::SigningKey as Sm2SigningKey;
use sm2::dsa::signature::Signer;
use spki::{AlgorithmIdentifierOwned, DecodePublicKey, EncodePublicKey, SubjectPublicKeyInfoOwned};
use x509_cert::Certificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::sm2_chain::{
    OID_BASIC_CONSTRAINTS, OID_CODE_SIGNING, OID_EXT_KEY_USAGE, OID_KEY_USAGE, OID_SM2_WITH_SM3,
    SM2_DISTID,
};

/// How long a development certificate is valid from the `now` it was made at: 730 days.
pub const DEV_VALIDITY_SECS: u64 = 730 * 86_400;
/// Largest key or certificate file the loaders parse (bytes).
pub const MAX_KEY_FILE: usize = 64 * 1024;

/// Subject of the development root CA.
pub const DEV_ROOT_SUBJECT: &str = "CN=Myriad development SM2 root CA,O=Myriad development";
/// Subject of the development intermediate CA.
pub const DEV_INTERMEDIATE_SUBJECT: &str =
    "CN=Myriad development SM2 intermediate CA,O=Myriad development";
/// Subject of the development code-signing leaf.
pub const DEV_LEAF_SUBJECT: &str = "CN=Myriad development SM2 code signing,O=Myriad development";

/// Why a key or certificate could not be made or loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The input is larger than [`MAX_KEY_FILE`].
    #[error("{what} of {len} bytes, at most {MAX_KEY_FILE}")]
    TooLarge {
        /// What was being loaded.
        what: &'static str,
        /// Its size.
        len: usize,
    },
    /// The bytes are neither the expected PEM nor DER.
    #[error("{0}: not PEM or DER of the expected kind")]
    Encoding(&'static str),
    /// Well-formed, but another algorithm than the one asked for.
    #[error("{0}: wrong key algorithm")]
    Algorithm(&'static str),
    /// A PEM file with no certificate in it.
    #[error("no CERTIFICATE block found")]
    NoCertificate,
    /// A time outside what X.509 can encode, or a name that does not parse.
    #[error("cannot build the certificate: {0}")]
    Build(&'static str),
}

/// An Ed25519 key pair in PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ed25519Pem {
    /// The private key, PKCS#8 (`-----BEGIN PRIVATE KEY-----`, RFC 8410).
    pub private_pem: String,
    /// The public key, SPKI (`-----BEGIN PUBLIC KEY-----`).
    pub public_pem: String,
}

/// A development SM2 CA chain in PEM, and the leaf's private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sm2DevChain {
    /// The root CA certificate: what devices pin.
    pub root_pem: String,
    /// The intermediate CA certificate.
    pub intermediate_pem: String,
    /// The code-signing leaf certificate.
    pub leaf_pem: String,
    /// Leaf then intermediate: the certificates a signed manifest carries.
    pub chain_pem: String,
    /// The leaf's SM2 private key, PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
    pub leaf_key_pem: String,
}

/// Derives 32 key bytes for `label` from `seed` (see the module docs).
fn derive(seed: &[u8; 32], label: &str, counter: u32) -> [u8; 32] {
    use sm3::Digest;
    let mut h = sm3::Sm3::new();
    h.update(b"myriad-ota keygen");
    h.update(label.as_bytes());
    h.update(counter.to_be_bytes());
    h.update(seed);
    h.finalize().into()
}

/// The SM2 signing key (default distinguishing ID) derived from `seed` for `label`.
pub fn sm2_key_from_seed(seed: &[u8; 32], label: &str) -> Sm2SigningKey {
    let mut counter = 0u32;
    loop {
        // Fails only for 0 or a value >= the group order: about 2^-32 per try.
        if let Ok(key) = Sm2SigningKey::from_slice(SM2_DISTID, &derive(seed, label, counter)) {
            return key;
        }
        counter += 1;
    }
}

/// An Ed25519 key pair derived from `seed`, as PEM.
pub fn ed25519_dev_keypair(seed: &[u8; 32]) -> Result<Ed25519Pem, KeyError> {
    let key = Ed25519SigningKey::from_bytes(&derive(seed, "ed25519", 0));
    let pair = ed25519::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let private_pem = pair
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| KeyError::Encoding("Ed25519 private key"))?
        .to_string();
    let public_pem = ed25519::pkcs8::PublicKeyBytes(key.verifying_key().to_bytes())
        .to_public_key_pem(LineEnding::LF)
        .map_err(|_| KeyError::Encoding("Ed25519 public key"))?;
    Ok(Ed25519Pem {
        private_pem,
        public_pem,
    })
}

/// `key` as an SPKI PEM (`-----BEGIN PUBLIC KEY-----`), what devices pin.
pub fn ed25519_public_pem(key: &Ed25519VerifyingKey) -> Result<String, KeyError> {
    ed25519::pkcs8::PublicKeyBytes(key.to_bytes())
        .to_public_key_pem(LineEnding::LF)
        .map_err(|_| KeyError::Encoding("Ed25519 public key"))
}

/// What [`issue_sm2_cert`] puts in a certificate. Times are unix seconds.
#[derive(Debug, Clone)]
pub struct CertSpec {
    /// The subject, RFC 4514 (`CN=..,O=..`).
    pub subject: String,
    /// The issuer's subject, RFC 4514 (equal to `subject` for a self-signed root).
    pub issuer: String,
    /// Serial number (positive).
    pub serial: u64,
    /// Start of the validity window.
    pub not_before: u64,
    /// End of the validity window (inclusive).
    pub not_after: u64,
    /// `Some(path_len)`: a CA (basicConstraints cA, critical, with that pathLenConstraint);
    /// `None`: an end entity (basicConstraints cA false).
    pub ca: Option<Option<u8>>,
    /// keyUsage (critical), or `None` to leave the extension out.
    pub key_usage: Option<Vec<KeyUsages>>,
    /// extendedKeyUsage purposes; empty leaves the extension out.
    pub eku: Vec<ObjectIdentifier>,
    /// The signature algorithm written in the certificate (SM2-with-SM3 unless a test
    /// wants another); the signature is always SM2 with SM3.
    pub signature_oid: ObjectIdentifier,
    /// Further extensions, appended as given.
    pub extra: Vec<Extension>,
}

impl CertSpec {
    /// A CA certificate valid for [`DEV_VALIDITY_SECS`] from `now`, keyCertSign and cRLSign.
    pub fn ca(subject: &str, issuer: &str, serial: u64, now: u64, path_len: Option<u8>) -> Self {
        CertSpec {
            subject: subject.into(),
            issuer: issuer.into(),
            serial,
            not_before: now,
            not_after: now.saturating_add(DEV_VALIDITY_SECS),
            ca: Some(path_len),
            key_usage: Some(vec![KeyUsages::KeyCertSign, KeyUsages::CRLSign]),
            eku: Vec::new(),
            signature_oid: OID_SM2_WITH_SM3,
            extra: Vec::new(),
        }
    }

    /// A code-signing leaf valid for [`DEV_VALIDITY_SECS`] from `now`: digitalSignature,
    /// extended key usage codeSigning.
    pub fn code_signing(subject: &str, issuer: &str, serial: u64, now: u64) -> Self {
        CertSpec {
            subject: subject.into(),
            issuer: issuer.into(),
            serial,
            not_before: now,
            not_after: now.saturating_add(DEV_VALIDITY_SECS),
            ca: None,
            key_usage: Some(vec![KeyUsages::DigitalSignature]),
            eku: vec![OID_CODE_SIGNING],
            signature_oid: OID_SM2_WITH_SM3,
            extra: Vec::new(),
        }
    }
}

/// `TBSCertificate` (RFC 5280 §4.1), encoded here because x509-cert 0.3 keeps its fields
/// private to its own builder.
#[derive(der::Sequence)]
struct Tbs {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    version: u8,
    serial_number: SerialNumber,
    signature: AlgorithmIdentifierOwned,
    issuer: Name,
    validity: Validity,
    subject: Name,
    subject_public_key_info: SubjectPublicKeyInfoOwned,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    extensions: Option<Vec<Extension>>,
}

/// `Certificate` (RFC 5280 §4.1).
#[derive(der::Sequence)]
struct Cert {
    tbs_certificate: Tbs,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
}

fn time(unix: u64) -> Result<Time, KeyError> {
    let d = std::time::Duration::from_secs(unix);
    // RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
    match UtcTime::from_unix_duration(d) {
        Ok(t) if unix < 2_524_608_000 => Ok(Time::UtcTime(t)),
        _ => der::asn1::GeneralizedTime::from_unix_duration(d)
            .map(Time::GeneralTime)
            .map_err(|_| KeyError::Build("time out of range")),
    }
}

fn extension(
    oid: ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, KeyError> {
    let der = value.to_der().map_err(|_| KeyError::Build("extension"))?;
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(der).map_err(|_| KeyError::Build("extension"))?,
    })
}

/// Issues an SM2 certificate for `subject_key` as `spec` says, signed (SM2 with SM3,
/// default distinguishing ID) by `issuer_key`; its DER.
pub fn issue_sm2_cert(
    spec: &CertSpec,
    subject_key: &sm2::dsa::VerifyingKey,
    issuer_key: &Sm2SigningKey,
) -> Result<Vec<u8>, KeyError> {
    let name = |s: &str| Name::from_str(s).map_err(|_| KeyError::Build("name"));
    let algorithm = AlgorithmIdentifierOwned {
        oid: spec.signature_oid,
        parameters: None,
    };
    let spki_der = sm2::PublicKey::from(subject_key)
        .to_public_key_der()
        .map_err(|_| KeyError::Build("public key"))?;
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes())
        .map_err(|_| KeyError::Build("public key"))?;
    let mut extensions = vec![extension(
        OID_BASIC_CONSTRAINTS,
        true,
        &BasicConstraints {
            ca: spec.ca.is_some(),
            path_len_constraint: spec.ca.flatten(),
        },
    )?];
    if let Some(usages) = &spec.key_usage {
        let flags = usages
            .iter()
            .fold(der::flagset::FlagSet::default(), |f, u| f | *u);
        extensions.push(extension(OID_KEY_USAGE, true, &KeyUsage(flags))?);
    }
    if !spec.eku.is_empty() {
        extensions.push(extension(
            OID_EXT_KEY_USAGE,
            false,
            &ExtendedKeyUsage(spec.eku.clone()),
        )?);
    }
    extensions.extend(spec.extra.iter().cloned());
    let tbs = Tbs {
        version: 2,
        serial_number: SerialNumber::new(&spec.serial.to_be_bytes())
            .map_err(|_| KeyError::Build("serial"))?,
        signature: algorithm.clone(),
        issuer: name(&spec.issuer)?,
        validity: Validity::new(time(spec.not_before)?, time(spec.not_after)?),
        subject: name(&spec.subject)?,
        subject_public_key_info: spki,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(|_| KeyError::Build("encoding"))?;
    let signature: sm2::dsa::Signature = issuer_key.sign(&tbs_der);
    let cert = Cert {
        tbs_certificate: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(signature.to_der().as_bytes())
            .map_err(|_| KeyError::Build("signature"))?,
    };
    cert.to_der().map_err(|_| KeyError::Build("encoding"))
}

fn cert_pem(der: &[u8]) -> Result<String, KeyError> {
    Certificate::from_der(der)
        .and_then(|c| c.to_pem(LineEnding::LF))
        .map_err(|_| KeyError::Build("certificate PEM"))
}

/// A development SM2 chain derived from `seed`, valid for [`DEV_VALIDITY_SECS`] from `now`:
///
/// | certificate  | subject                      | basicConstraints      | keyUsage                  | extKeyUsage |
/// |--------------|------------------------------|-----------------------|---------------------------|-------------|
/// | root         | [`DEV_ROOT_SUBJECT`], self-signed | cA, critical     | keyCertSign, cRLSign      | —           |
/// | intermediate | [`DEV_INTERMEDIATE_SUBJECT`] | cA, pathLen 0, critical | keyCertSign, cRLSign    | —           |
/// | leaf         | [`DEV_LEAF_SUBJECT`]         | not a CA, critical    | digitalSignature          | codeSigning |
///
/// Serial numbers 1, 2 and 3; all signed SM2-with-SM3.
pub fn sm2_dev_chain(seed: &[u8; 32], now: u64) -> Result<Sm2DevChain, KeyError> {
    let root_key = sm2_key_from_seed(seed, "sm2 root");
    let intermediate_key = sm2_key_from_seed(seed, "sm2 intermediate");
    let leaf_key = sm2_key_from_seed(seed, "sm2 leaf");
    let root = issue_sm2_cert(
        &CertSpec::ca(DEV_ROOT_SUBJECT, DEV_ROOT_SUBJECT, 1, now, None),
        root_key.verifying_key(),
        &root_key,
    )?;
    let intermediate = issue_sm2_cert(
        &CertSpec::ca(DEV_INTERMEDIATE_SUBJECT, DEV_ROOT_SUBJECT, 2, now, Some(0)),
        intermediate_key.verifying_key(),
        &root_key,
    )?;
    let leaf = issue_sm2_cert(
        &CertSpec::code_signing(DEV_LEAF_SUBJECT, DEV_INTERMEDIATE_SUBJECT, 3, now),
        leaf_key.verifying_key(),
        &intermediate_key,
    )?;
    let leaf_pem = cert_pem(&leaf)?;
    let intermediate_pem = cert_pem(&intermediate)?;
    let secret = sm2::SecretKey::from(leaf_key.as_nonzero_scalar());
    let leaf_key_pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| KeyError::Encoding("SM2 private key"))?
        .to_string();
    Ok(Sm2DevChain {
        root_pem: cert_pem(&root)?,
        chain_pem: format!("{leaf_pem}{intermediate_pem}"),
        intermediate_pem,
        leaf_pem,
        leaf_key_pem,
    })
}

fn bounded<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a [u8], KeyError> {
    if bytes.len() > MAX_KEY_FILE {
        return Err(KeyError::TooLarge {
            what,
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

/// The DER of `bytes`: the first PEM block labelled `label` when the input is PEM text,
/// else the bytes themselves.
fn der_of(what: &'static str, label: &str, bytes: &[u8]) -> Result<Vec<u8>, KeyError> {
    let bytes = bounded(what, bytes)?;
    let trimmed = bytes.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN ") {
        return Ok(bytes.to_vec());
    }
    let (got, der) = der::pem::decode_vec(trimmed).map_err(|_| KeyError::Encoding(what))?;
    if got != label {
        return Err(KeyError::Encoding(what));
    }
    Ok(der)
}

/// Loads an Ed25519 private key (PKCS#8, PEM or DER).
pub fn load_ed25519_signing_key(bytes: &[u8]) -> Result<Ed25519SigningKey, KeyError> {
    const WHAT: &str = "Ed25519 private key";
    let der = der_of(WHAT, "PRIVATE KEY", bytes)?;
    let info =
        pkcs8::PrivateKeyInfoRef::try_from(der.as_slice()).map_err(|_| KeyError::Encoding(WHAT))?;
    if info.algorithm.oid != ed25519::pkcs8::ALGORITHM_OID {
        return Err(KeyError::Algorithm(WHAT));
    }
    let pair =
        ed25519::pkcs8::KeypairBytes::from_pkcs8_der(&der).map_err(|_| KeyError::Encoding(WHAT))?;
    Ok(Ed25519SigningKey::from_bytes(&pair.secret_key))
}

/// Loads an Ed25519 public key (SPKI, PEM or DER).
pub fn load_ed25519_verifying_key(bytes: &[u8]) -> Result<Ed25519VerifyingKey, KeyError> {
    const WHAT: &str = "Ed25519 public key";
    let der = der_of(WHAT, "PUBLIC KEY", bytes)?;
    let spki = spki::SubjectPublicKeyInfoRef::try_from(der.as_slice())
        .map_err(|_| KeyError::Encoding(WHAT))?;
    if spki.algorithm.oid != ed25519::pkcs8::ALGORITHM_OID {
        return Err(KeyError::Algorithm(WHAT));
    }
    let raw = ed25519::pkcs8::PublicKeyBytes::from_public_key_der(&der)
        .map_err(|_| KeyError::Encoding(WHAT))?;
    Ed25519VerifyingKey::from_bytes(&raw.0).map_err(|_| KeyError::Encoding(WHAT))
}

/// Loads an SM2 private key (PKCS#8, PEM or DER) as a signing key with the default
/// distinguishing ID ([`SM2_DISTID`]).
pub fn load_sm2_signing_key(bytes: &[u8]) -> Result<Sm2SigningKey, KeyError> {
    const WHAT: &str = "SM2 private key";
    let der = der_of(WHAT, "PRIVATE KEY", bytes)?;
    let info =
        pkcs8::PrivateKeyInfoRef::try_from(der.as_slice()).map_err(|_| KeyError::Encoding(WHAT))?;
    let curve = info
        .algorithm
        .parameters
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if info.algorithm.oid != crate::sm2_chain::OID_EC_PUBLIC_KEY
        || curve != Some(crate::sm2_chain::OID_SM2_CURVE)
    {
        return Err(KeyError::Algorithm(WHAT));
    }
    let secret = sm2::SecretKey::from_pkcs8_der(&der).map_err(|_| KeyError::Encoding(WHAT))?;
    Sm2SigningKey::new(SM2_DISTID, &secret).map_err(|_| KeyError::Encoding(WHAT))
}

/// Loads certificates: every `CERTIFICATE` block of a PEM file in order (other blocks are
/// skipped), or one DER certificate. Each is returned as DER; [`crate::manifest::verify`]
/// checks them, this only checks they decode.
pub fn load_certificates(bytes: &[u8]) -> Result<Vec<Vec<u8>>, KeyError> {
    const WHAT: &str = "certificate";
    let bytes = bounded(WHAT, bytes)?;
    let text = bytes.trim_ascii_start();
    let ders = if text.starts_with(b"-----BEGIN ") {
        let text = std::str::from_utf8(text).map_err(|_| KeyError::Encoding(WHAT))?;
        let mut ders = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("-----BEGIN ") {
            let block = &rest[start..];
            let end_marker = block.find("-----END ").ok_or(KeyError::Encoding(WHAT))?;
            let end = block[end_marker..]
                .find('\n')
                .map_or(block.len(), |n| end_marker + n + 1);
            let (label, der) = der::pem::decode_vec(&block.as_bytes()[..end])
                .map_err(|_| KeyError::Encoding(WHAT))?;
            if label == "CERTIFICATE" {
                ders.push(der);
            }
            rest = &block[end..];
        }
        ders
    } else {
        vec![bytes.to_vec()]
    };
    if ders.is_empty() {
        return Err(KeyError::NoCertificate);
    }
    for der in &ders {
        Certificate::from_der(der).map_err(|_| KeyError::Encoding(WHAT))?;
    }
    Ok(ders)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier as _;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn ed25519_pems_round_trip() {
        let pair = ed25519_dev_keypair(&[7; 32]).expect("keygen");
        assert!(
            pair.private_pem
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
        assert!(pair.public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let key = load_ed25519_signing_key(pair.private_pem.as_bytes()).expect("private");
        let public = load_ed25519_verifying_key(pair.public_pem.as_bytes()).expect("public");
        assert_eq!(key.verifying_key(), public);
        let sig = key.sign(b"m");
        assert!(public.verify(b"m", &sig).is_ok());
        // Same seed, same keys; another seed, another key.
        assert_eq!(ed25519_dev_keypair(&[7; 32]), Ok(pair.clone()));
        assert_ne!(ed25519_dev_keypair(&[8; 32]).expect("keygen"), pair);
    }

    #[test]
    fn sm2_chain_loads_back() {
        let chain = sm2_dev_chain(&[3; 32], NOW).expect("chain");
        let certs = load_certificates(chain.chain_pem.as_bytes()).expect("chain");
        assert_eq!(certs.len(), 2);
        assert_eq!(
            load_certificates(chain.leaf_pem.as_bytes()).expect("leaf")[0],
            certs[0]
        );
        let key = load_sm2_signing_key(chain.leaf_key_pem.as_bytes()).expect("key");
        assert_eq!(key, sm2_key_from_seed(&[3; 32], "sm2 leaf"));
        // DER works too.
        assert_eq!(
            load_certificates(&certs[1]).expect("der"),
            vec![certs[1].clone()]
        );
    }

    #[test]
    fn loaders_refuse_the_wrong_thing() {
        let ed = ed25519_dev_keypair(&[1; 32]).expect("keygen");
        let chain = sm2_dev_chain(&[1; 32], NOW).expect("chain");
        assert_eq!(
            load_sm2_signing_key(ed.private_pem.as_bytes()),
            Err(KeyError::Algorithm("SM2 private key"))
        );
        assert_eq!(
            load_ed25519_signing_key(chain.leaf_key_pem.as_bytes()).map(|_| ()),
            Err(KeyError::Algorithm("Ed25519 private key"))
        );
        assert_eq!(
            load_ed25519_verifying_key(ed.private_pem.as_bytes()).map(|_| ()),
            Err(KeyError::Encoding("Ed25519 public key"))
        );
        assert_eq!(
            load_certificates(ed.public_pem.as_bytes()),
            Err(KeyError::NoCertificate)
        );
        assert_eq!(
            load_certificates(b"\x30\x03\x02\x01\x01"),
            Err(KeyError::Encoding("certificate"))
        );
        let mut big = chain.root_pem.clone().into_bytes();
        big.resize(MAX_KEY_FILE, b'\n');
        assert!(load_certificates(&big).is_ok(), "at the limit");
        big.push(b'\n');
        assert_eq!(
            load_certificates(&big),
            Err(KeyError::TooLarge {
                what: "certificate",
                len: MAX_KEY_FILE + 1
            })
        );
    }
}
