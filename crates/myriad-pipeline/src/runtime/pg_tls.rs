//! TLS for PostgreSQL connections (the sink and the source).
//!
//! `sslmode=require` in the URL turns TLS on; the server's certificate is then verified
//! against the Mozilla roots (webpki-roots) and the certificates of `ca_file` (PEM), and its
//! name against the URL's host: libpq's `verify-full`, which managed services (Amazon RDS,
//! Azure, Cloud SQL) document with their CA bundle. A server with a self-signed certificate
//! needs its CA in `ca_file`. Without `sslmode=require` (absent, `disable`, `prefer`) the
//! connection is plain, as before; `ca_file` without `sslmode=require` is refused at
//! start-up (it would be silently unused).
//!
//! | bound | value |
//! |---|---|
//! | `ca_file` | at most [`MAX_CA_FILE_BYTES`], at least one PEM certificate |

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The largest `ca_file` read.
pub const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// Reads the PEM certificates of `path` (the error starts with `ca_file:`).
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("ca_file: cannot read {}: {e}", path.display()))?
        .len();
    if size > MAX_CA_FILE_BYTES {
        return Err(format!(
            "ca_file: {} is {size} bytes, at most {MAX_CA_FILE_BYTES}",
            path.display()
        ));
    }
    let pem =
        std::fs::read(path).map_err(|e| format!("ca_file: cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ca_file: {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("ca_file: {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The TLS connector for `settings` (`None`: plain), trusting `extra_roots` beside the
/// Mozilla roots. The error starts with the config key it is about.
pub fn connector(
    settings: &tokio_postgres::Config,
    extra_roots: &[CertificateDer<'static>],
) -> Result<Option<MakeRustlsConnect>, String> {
    if settings.get_ssl_mode() != SslMode::Require {
        if !extra_roots.is_empty() {
            return Err("ca_file: set, but the url does not ask for TLS (sslmode=require)".into());
        }
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for (i, cert) in extra_roots.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| format!("ca_file: certificate {i} is not a usable CA: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("url: TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// Connects with `settings`, over TLS when `tls` is set: the client and the task driving
/// the connection (it ends when the client is dropped; abort it to end it at once).
pub async fn connect(
    settings: &tokio_postgres::Config,
    tls: Option<&MakeRustlsConnect>,
) -> Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error> {
    Ok(match tls {
        Some(tls) => drive(settings.connect(tls.clone()).await?),
        None => drive(settings.connect(tokio_postgres::NoTls).await?),
    })
}

/// Runs `connection`'s driver as a task.
fn drive<S, T>(
    (client, connection): (tokio_postgres::Client, tokio_postgres::Connection<S, T>),
) -> (tokio_postgres::Client, JoinHandle<()>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "PostgreSQL connection ended");
        }
    });
    (client, driver)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> tokio_postgres::Config {
        url.parse().expect("a valid url")
    }

    #[test]
    fn tls_only_with_sslmode_require() {
        assert!(
            connector(&settings("postgres://u@h/db"), &[])
                .expect("plain")
                .is_none()
        );
        assert!(
            connector(&settings("postgres://u@h/db?sslmode=require"), &[])
                .expect("tls")
                .is_some()
        );
    }

    #[test]
    fn a_ca_file_without_sslmode_require_is_refused() {
        let cert = CertificateDer::from(vec![0u8; 4]);
        let error = connector(&settings("postgres://u@h/db?sslmode=prefer"), &[cert])
            .err()
            .expect("refused");
        assert!(error.starts_with("ca_file:"), "{error}");
    }

    #[test]
    fn ca_files_are_bounded_and_must_hold_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").expect("write");
        let error = load_ca_file(&empty).expect_err("no certificate");
        assert!(error.contains("no certificate"), "{error}");
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_CA_FILE_BYTES as usize + 1]).expect("write");
        let error = load_ca_file(&big).expect_err("too big");
        assert!(error.contains("at most"), "{error}");
        let error = load_ca_file(&dir.path().join("missing.pem")).expect_err("missing");
        assert!(error.starts_with("ca_file: cannot read"), "{error}");
    }
}
