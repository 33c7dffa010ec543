//! `myriad ctl device-certs ...` and `myriad ctl cas ...`: device
//! certificates and certificate authorities in the registry. PEM files are
//! read here and sent in the JSON body.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::encode::percent_encode;
use super::request::{API_PREFIX, ApiRequest, Method};

/// `ctl device-certs ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCertsCommand {
    /// Pin a PEM certificate to a device (it then logs the device in over TLS).
    Add(DeviceCertAdd),
    /// List a device's certificates.
    List(DeviceIdArg),
    /// Revoke a device's certificate (its connection with it is closed).
    Revoke(DeviceCertRevoke),
}

/// `ctl device-certs add`
#[derive(Debug, Args)]
pub struct DeviceCertAdd {
    /// The device id.
    pub id: String,
    /// The PEM certificate file.
    pub pem: PathBuf,
}

/// A device id.
#[derive(Debug, Args)]
pub struct DeviceIdArg {
    /// The device id.
    pub id: String,
}

/// `ctl device-certs revoke`
#[derive(Debug, Args)]
pub struct DeviceCertRevoke {
    /// The device id.
    pub id: String,
    /// The certificate's SHA-256 fingerprint (64 hex digits).
    pub fingerprint: String,
}

/// `ctl cas ...`
#[derive(Debug, Subcommand)]
pub enum CasCommand {
    /// Register a CA whose certificates identify devices.
    Add(CaAdd),
    /// List the registered CAs.
    List,
    /// Give a CA a new revocation list (or remove it with `--remove`).
    SetCrl(CaSetCrl),
    /// Remove a CA.
    Delete(CaFingerprint),
}

/// `ctl cas add`
#[derive(Debug, Args)]
pub struct CaAdd {
    /// The PEM CA certificate file.
    pub pem: PathBuf,
    /// A PEM CRL file the CA signed.
    #[arg(long)]
    pub crl: Option<PathBuf>,
}

/// `ctl cas set-crl`
#[derive(Debug, Args)]
pub struct CaSetCrl {
    /// The CA's SHA-256 fingerprint.
    pub fingerprint: String,
    /// The PEM CRL file.
    #[arg(required_unless_present = "remove")]
    pub crl: Option<PathBuf>,
    /// Remove the CA's revocation list instead.
    #[arg(long, conflicts_with = "crl")]
    pub remove: bool,
}

/// A CA's fingerprint.
#[derive(Debug, Args)]
pub struct CaFingerprint {
    /// The CA's SHA-256 fingerprint.
    pub fingerprint: String,
}

fn read_pem(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn certificates_path(id: &str) -> String {
    format!("{API_PREFIX}/devices/{}/certificates", percent_encode(id))
}

/// The request a `device-certs` command sends.
pub fn device_certs_request(cmd: &DeviceCertsCommand) -> Result<ApiRequest> {
    Ok(match cmd {
        DeviceCertsCommand::Add(add) => ApiRequest::new(Method::Post, certificates_path(&add.id))
            .json(json!({ "pem": read_pem(&add.pem)? })),
        DeviceCertsCommand::List(arg) => ApiRequest::new(Method::Get, certificates_path(&arg.id)),
        DeviceCertsCommand::Revoke(revoke) => ApiRequest::new(
            Method::Delete,
            format!(
                "{}/{}",
                certificates_path(&revoke.id),
                percent_encode(&revoke.fingerprint)
            ),
        ),
    })
}

/// The request a `cas` command sends.
pub fn cas_request(cmd: &CasCommand) -> Result<ApiRequest> {
    let cas = format!("{API_PREFIX}/cas");
    Ok(match cmd {
        CasCommand::Add(add) => {
            let crl = match &add.crl {
                Some(path) => Value::String(read_pem(path)?),
                None => Value::Null,
            };
            ApiRequest::new(Method::Post, cas)
                .json(json!({ "pem": read_pem(&add.pem)?, "crl": crl }))
        }
        CasCommand::List => ApiRequest::new(Method::Get, cas),
        CasCommand::SetCrl(set) => {
            let crl = match (&set.crl, set.remove) {
                (Some(path), false) => Value::String(read_pem(path)?),
                _ => Value::Null,
            };
            ApiRequest::new(
                Method::Put,
                format!("{cas}/{}/crl", percent_encode(&set.fingerprint)),
            )
            .json(json!({ "crl": crl }))
        }
        CasCommand::Delete(arg) => ApiRequest::new(
            Method::Delete,
            format!("{cas}/{}", percent_encode(&arg.fingerprint)),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_cert_add_sends_the_file_as_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = dir.path().join("d.pem");
        fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").expect("write");
        let request = device_certs_request(&DeviceCertsCommand::Add(DeviceCertAdd {
            id: "d 1".into(),
            pem,
        }))
        .expect("request");
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.path, "/api/v1/devices/d%201/certificates");
        assert_eq!(
            request.body,
            super::super::request::ApiBody::Json(json!({"pem": "-----BEGIN CERTIFICATE-----\n"}))
        );
    }

    #[test]
    fn a_missing_file_fails_before_any_request() {
        let error = cas_request(&CasCommand::Add(CaAdd {
            pem: PathBuf::from("/nonexistent/ca.pem"),
            crl: None,
        }))
        .expect_err("missing file");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn set_crl_remove_sends_null() {
        let request = cas_request(&CasCommand::SetCrl(CaSetCrl {
            fingerprint: "ab".into(),
            crl: None,
            remove: true,
        }))
        .expect("request");
        assert_eq!(request.method, Method::Put);
        assert_eq!(request.path, "/api/v1/cas/ab/crl");
        assert_eq!(
            request.body,
            super::super::request::ApiBody::Json(json!({"crl": null}))
        );
    }
}
