//! Reading the PEM an operator registers. Each refusal names what is wrong
//! (the API answers it with 400).

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::MAX_PEM_BYTES;
use super::records::Fingerprint;

/// Why a PEM certificate or revocation list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The text is empty, too long or holds no PEM block of the kind asked for.
    #[error("not a PEM {kind}: {why}")]
    NotPem {
        /// `CERTIFICATE` or `X509 CRL`.
        kind: &'static str,
        /// What was found instead.
        why: String,
    },
    /// More than one PEM block where one is expected.
    #[error("{found} PEM blocks; give exactly one {kind}")]
    SeveralBlocks {
        /// `CERTIFICATE` or `X509 CRL`.
        kind: &'static str,
        /// How many there were.
        found: usize,
    },
    /// The block's contents are not a DER certificate or CRL.
    #[error("the {kind} block is not valid DER: {why}")]
    BadDer {
        /// `CERTIFICATE` or `X509 CRL`.
        kind: &'static str,
        /// The parser's complaint.
        why: String,
    },
    /// The certificate's validity has ended.
    #[error("the certificate expired at {not_after} (Unix time)")]
    Expired {
        /// End of validity, Unix seconds.
        not_after: i64,
    },
    /// A CA certificate was given as a device certificate.
    #[error("this is a CA certificate (basicConstraints CA:TRUE); register it as a CA instead")]
    IsCa,
    /// A device certificate was given as a CA.
    #[error("not a CA certificate (no basicConstraints CA:TRUE)")]
    NotCa,
    /// The certificate names no device the configured way.
    #[error("the certificate has no {wanted}")]
    NoIdentity {
        /// What was looked for (`subject CN`, `URI SAN starting with ...`).
        wanted: String,
    },
    /// The certificate names another device.
    #[error("the certificate's {place} names device '{named}', not '{device}'")]
    OtherDevice {
        /// Where the name came from (`subject CN`, `URI SAN`).
        place: &'static str,
        /// The name in the certificate.
        named: String,
        /// The device it was registered for.
        device: String,
    },
    /// A revocation list not issued by the CA it was given for.
    #[error("the CRL's issuer '{issuer}' is not this CA ('{ca}')")]
    CrlIssuer {
        /// The list's issuer.
        issuer: String,
        /// The CA's subject.
        ca: String,
    },
    /// A revocation list whose signature the CA's key does not verify.
    #[error("the CRL's signature does not verify with this CA's key")]
    CrlSignature,
}

/// A certificate read from PEM.
#[derive(Debug, Clone)]
pub struct ParsedCertificate {
    /// The DER encoding.
    pub der: Vec<u8>,
    /// SHA-256 of [`ParsedCertificate::der`].
    pub fingerprint: Fingerprint,
    /// The subject, as text.
    pub subject: String,
    /// The issuer, as text.
    pub issuer: String,
    /// The serial number, hex.
    pub serial: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Whether basicConstraints says CA:TRUE.
    pub is_ca: bool,
    /// The first subject CN, if any.
    pub common_name: Option<String>,
    /// The URI subject alternative names.
    pub uris: Vec<String>,
}

/// A CA certificate read from PEM (see [`ParsedCertificate`]).
#[derive(Debug, Clone)]
pub struct ParsedCa(pub ParsedCertificate);

/// A revocation list read from PEM and checked against its CA.
#[derive(Debug, Clone)]
pub struct ParsedCrl {
    /// The DER encoding.
    pub der: Vec<u8>,
    /// How many serial numbers it revokes.
    pub revoked: u64,
}

const CERTIFICATE: &str = "CERTIFICATE";
const CRL: &str = "X509 CRL";

/// The one PEM block of `label` in `pem`.
fn one_block(pem: &str, kind: &'static str) -> Result<Vec<u8>, CertificateError> {
    let not_pem = |why: &str| CertificateError::NotPem {
        kind,
        why: why.to_owned(),
    };
    if pem.len() > MAX_PEM_BYTES {
        return Err(not_pem(&format!("longer than {MAX_PEM_BYTES} bytes")));
    }
    let mut blocks = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        match block {
            Ok(block) => blocks.push(block),
            Err(error) if blocks.is_empty() => {
                return Err(not_pem(&format!("no readable PEM block ({error})")));
            }
            // Text after the last block (a trailing comment) is ignored.
            Err(_) => break,
        }
    }
    match blocks.len() {
        0 => Err(not_pem("no PEM block")),
        1 => {
            let block = blocks.remove(0);
            if block.label != kind {
                return Err(not_pem(&format!("the block is a '{}'", block.label)));
            }
            Ok(block.contents)
        }
        found => Err(CertificateError::SeveralBlocks { kind, found }),
    }
}

fn bad_der(kind: &'static str, why: impl std::fmt::Display) -> CertificateError {
    CertificateError::BadDer {
        kind,
        why: why.to_string(),
    }
}

impl ParsedCertificate {
    /// Reads one certificate from DER.
    pub fn from_der(der: &[u8]) -> Result<ParsedCertificate, CertificateError> {
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| bad_der(CERTIFICATE, e))?;
        if !rest.is_empty() {
            return Err(bad_der(
                CERTIFICATE,
                format!("{} bytes after the certificate", rest.len()),
            ));
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let uris = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(error) => return Err(bad_der(CERTIFICATE, error)),
        };
        Ok(ParsedCertificate {
            der: der.to_vec(),
            fingerprint: Fingerprint::of(der),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
            common_name,
            uris,
        })
    }

    /// Reads one certificate from PEM (exactly one `CERTIFICATE` block).
    pub fn from_pem(pem: &str) -> Result<ParsedCertificate, CertificateError> {
        ParsedCertificate::from_der(&one_block(pem, CERTIFICATE)?)
    }

    /// A device certificate: not a CA, not expired at `now_secs`.
    pub fn device_from_pem(
        pem: &str,
        now_secs: i64,
    ) -> Result<ParsedCertificate, CertificateError> {
        let cert = ParsedCertificate::from_pem(pem)?;
        if cert.is_ca {
            return Err(CertificateError::IsCa);
        }
        cert.check_not_expired(now_secs)?;
        Ok(cert)
    }

    fn check_not_expired(&self, now_secs: i64) -> Result<(), CertificateError> {
        if self.not_after < now_secs {
            return Err(CertificateError::Expired {
                not_after: self.not_after,
            });
        }
        Ok(())
    }
}

impl ParsedCa {
    /// A CA certificate: basicConstraints CA:TRUE, not expired at `now_secs`.
    pub fn from_pem(pem: &str, now_secs: i64) -> Result<ParsedCa, CertificateError> {
        let cert = ParsedCertificate::from_pem(pem)?;
        if !cert.is_ca {
            return Err(CertificateError::NotCa);
        }
        cert.check_not_expired(now_secs)?;
        Ok(ParsedCa(cert))
    }

    /// Reads a revocation list from PEM and checks that this CA issued and signed it.
    pub fn crl_from_pem(&self, pem: &str) -> Result<ParsedCrl, CertificateError> {
        let der = one_block(pem, CRL)?;
        let (rest, crl) = CertificateRevocationList::from_der(&der).map_err(|e| bad_der(CRL, e))?;
        if !rest.is_empty() {
            return Err(bad_der(CRL, format!("{} bytes after the CRL", rest.len())));
        }
        let (_, ca) =
            X509Certificate::from_der(&self.0.der).map_err(|e| bad_der(CERTIFICATE, e))?;
        if crl.issuer() != ca.subject() {
            return Err(CertificateError::CrlIssuer {
                issuer: crl.issuer().to_string(),
                ca: ca.subject().to_string(),
            });
        }
        crl.verify_signature(ca.public_key())
            .map_err(|_| CertificateError::CrlSignature)?;
        let revoked = crl.iter_revoked_certificates().count() as u64;
        Ok(ParsedCrl { der, revoked })
    }
}
