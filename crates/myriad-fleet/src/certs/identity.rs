//! Which device a certificate names (config `auth.certificate_identity`).

use super::parse::{CertificateError, ParsedCertificate};

/// Where a certificate names its device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CertificateIdentity {
    /// The first subject common name is the device id (the default, as
    /// Mosquitto's `use_identity_as_username` and EMQX's `peer_cert_as_username = cn`).
    #[default]
    CommonName,
    /// The first URI subject alternative name starting with `prefix`, less
    /// the prefix, is the device id (`urn:myriad:device:` by default).
    SanUri {
        /// The URI prefix.
        prefix: String,
    },
}

/// The default URI prefix of [`CertificateIdentity::SanUri`].
pub const DEFAULT_URI_PREFIX: &str = "urn:myriad:device:";

impl CertificateIdentity {
    /// The device id `cert` names, or why it names none.
    pub fn device_name<'c>(
        &self,
        cert: &'c ParsedCertificate,
    ) -> Result<&'c str, CertificateError> {
        let found = match self {
            CertificateIdentity::CommonName => cert.common_name.as_deref(),
            CertificateIdentity::SanUri { prefix } => cert
                .uris
                .iter()
                .find_map(|uri| uri.strip_prefix(prefix.as_str())),
        };
        found.ok_or_else(|| CertificateError::NoIdentity {
            wanted: self.describe(),
        })
    }

    /// Checks that `cert` names `device`.
    pub fn check_names(
        &self,
        cert: &ParsedCertificate,
        device: &str,
    ) -> Result<(), CertificateError> {
        let named = self.device_name(cert)?;
        if named != device {
            return Err(CertificateError::OtherDevice {
                place: self.source(),
                named: named.to_owned(),
                device: device.to_owned(),
            });
        }
        Ok(())
    }

    fn source(&self) -> &'static str {
        match self {
            CertificateIdentity::CommonName => "subject CN",
            CertificateIdentity::SanUri { .. } => "URI SAN",
        }
    }

    fn describe(&self) -> String {
        match self {
            CertificateIdentity::CommonName => "subject CN".to_owned(),
            CertificateIdentity::SanUri { prefix } => format!("URI SAN starting with '{prefix}'"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::records::Fingerprint;

    fn cert(cn: Option<&str>, uris: &[&str]) -> ParsedCertificate {
        ParsedCertificate {
            der: Vec::new(),
            fingerprint: Fingerprint([0; 32]),
            subject: String::new(),
            issuer: String::new(),
            serial: String::new(),
            not_before: 0,
            not_after: 0,
            is_ca: false,
            common_name: cn.map(str::to_owned),
            uris: uris.iter().map(|u| (*u).to_owned()).collect(),
        }
    }

    #[test]
    fn common_name_names_the_device() {
        let id = CertificateIdentity::CommonName;
        assert_eq!(id.device_name(&cert(Some("dev-1"), &[])), Ok("dev-1"));
        assert!(matches!(
            id.device_name(&cert(None, &["urn:myriad:device:dev-1"])),
            Err(CertificateError::NoIdentity { .. })
        ));
        assert!(matches!(
            id.check_names(&cert(Some("dev-2"), &[]), "dev-1"),
            Err(CertificateError::OtherDevice { .. })
        ));
    }

    #[test]
    fn san_uri_takes_the_first_uri_with_the_prefix() {
        let id = CertificateIdentity::SanUri {
            prefix: DEFAULT_URI_PREFIX.to_owned(),
        };
        let c = cert(
            Some("ignored"),
            &["spiffe://x/y", "urn:myriad:device:dev-7"],
        );
        assert_eq!(id.device_name(&c), Ok("dev-7"));
        assert!(
            id.device_name(&cert(Some("dev-7"), &["spiffe://x"]))
                .is_err()
        );
    }
}
