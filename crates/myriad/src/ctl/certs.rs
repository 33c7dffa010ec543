//! `myriad ctl certs dev-ca`: a throwaway certificate authority, a server
//! certificate and device certificates, for trying TLS and mutual TLS
//! locally. Needs no server; never for production (the CA key sits in a
//! plain file next to the certificates).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};

use super::error::CtlError;

/// `ctl certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a throwaway CA, a server certificate and device certificates
    /// (files `ca.pem`, `server.pem`, `server.key`, `<device>.pem`,
    /// `<device>.key` in `--out`). For local trials only.
    DevCa(DevCaArgs),
    /// Write a certificate revocation list, signed by a `dev-ca` CA, that
    /// revokes the given certificates (for a listener's `client_crl`).
    Revoke(RevokeArgs),
}

/// `ctl certs revoke`
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The directory `dev-ca` wrote (its `ca.pem` and `ca.key` sign the list).
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// A PEM certificate to revoke; repeatable.
    #[arg(long = "cert", required = true)]
    pub certs: Vec<PathBuf>,
    /// Where to write the CRL (PEM).
    #[arg(long)]
    pub out: PathBuf,
}

/// `ctl certs dev-ca`
#[derive(Debug, Args)]
pub struct DevCaArgs {
    /// Directory to write into (created if missing; existing files are not overwritten).
    #[arg(long, default_value = "myriad-certs")]
    pub out: PathBuf,
    /// Names the server certificate is valid for (DNS names or IP addresses).
    #[arg(long = "server-name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
    pub server_names: Vec<String>,
    /// A device to issue a client certificate for (its id is the certificate's CN); repeatable.
    #[arg(long = "device")]
    pub devices: Vec<String>,
}

/// Runs a `ctl certs` command; prints the files written.
pub fn run(command: &CertsCommand) -> Result<String, CtlError> {
    match command {
        CertsCommand::DevCa(args) => dev_ca(args),
        CertsCommand::Revoke(args) => revoke(args),
    }
}

fn revoke(args: &RevokeArgs) -> Result<String, CtlError> {
    let read = |path: &Path| fs::read_to_string(path).map_err(|e| local(path, e));
    let ca_key = KeyPair::from_pem(&read(&args.ca_dir.join("ca.key"))?).map_err(rcgen_error)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&args.ca_dir.join("ca.pem"))?, ca_key)
        .map_err(rcgen_error)?;
    let now = time::OffsetDateTime::now_utc();
    let mut revoked = Vec::new();
    for path in &args.certs {
        let pem = fs::read(path).map_err(|e| local(path, e))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| {
            CtlError::Other(anyhow::anyhow!(
                "{}: not a PEM certificate: {e}",
                path.display()
            ))
        })?;
        let cert = pem.parse_x509().map_err(|e| {
            CtlError::Other(anyhow::anyhow!(
                "{}: not a certificate: {e}",
                path.display()
            ))
        })?;
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(cert.raw_serial()),
            revocation_time: now,
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(30),
        crl_number: SerialNumber::from(u64::try_from(now.unix_timestamp()).unwrap_or(1)),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer).map_err(rcgen_error)?;
    let pem = crl.pem().map_err(rcgen_error)?;
    Ok(format!(
        "{}\n",
        write_new(&args.out, &pem, false)?.display()
    ))
}

fn dev_ca(args: &DevCaArgs) -> Result<String, CtlError> {
    fs::create_dir_all(&args.out).map_err(|e| local(&args.out, e))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Myriad development CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(rcgen_error)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(rcgen_error)?;
    let mut written = Vec::new();
    written.push(write_new(&args.out.join("ca.pem"), &ca.pem(), false)?);
    written.push(write_new(&args.out.join("ca.key"), &ca_key_pem, true)?);

    let mut server = CertificateParams::new(args.server_names.clone()).map_err(rcgen_error)?;
    server.distinguished_name.push(
        DnType::CommonName,
        args.server_names.first().map_or("myriad", String::as_str),
    );
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().map_err(rcgen_error)?;
    let server_cert = server.signed_by(&server_key, &ca).map_err(rcgen_error)?;
    written.push(write_new(
        &args.out.join("server.pem"),
        &server_cert.pem(),
        false,
    )?);
    written.push(write_new(
        &args.out.join("server.key"),
        &server_key.serialize_pem(),
        true,
    )?);

    for device in &args.devices {
        if device.is_empty() || device.contains(['/', '\\']) || device.starts_with('.') {
            return Err(CtlError::Other(anyhow::anyhow!(
                "--device {device:?}: not usable as a file name"
            )));
        }
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, device.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.signed_by(&key, &ca).map_err(rcgen_error)?;
        written.push(write_new(
            &args.out.join(format!("{device}.pem")),
            &cert.pem(),
            false,
        )?);
        written.push(write_new(
            &args.out.join(format!("{device}.key")),
            &key.serialize_pem(),
            true,
        )?);
    }
    Ok(written
        .iter()
        .map(|path| format!("{}\n", path.display()))
        .collect())
}

/// Writes `text` to a file that must not exist yet; keys readable by the owner only.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<PathBuf, CtlError> {
    if secret {
        myriad_store::write_secret_file(path, text.as_bytes(), myriad_store::Existing::Refuse)
            .map_err(|e| local(path, e))?;
    } else {
        use std::io::Write;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| local(path, e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| local(path, e))?;
    }
    Ok(path.to_owned())
}

fn local(path: &Path, error: io::Error) -> CtlError {
    CtlError::Other(anyhow::anyhow!("{}: {error}", path.display()))
}

fn rcgen_error(error: rcgen::Error) -> CtlError {
    CtlError::Other(anyhow::anyhow!("cannot make the certificate: {error}"))
}
