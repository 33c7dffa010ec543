//! Device certificates and certificate authorities (issue 16): register
//! and revoke a device's pinned certificates, register CAs whose
//! certificates identify devices, give a CA a revocation list. Bad PEM is
//! a 400 saying what is wrong. See `myriad_fleet::service::certs`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use myriad_fleet::certs::{CertificateAuthority, DeviceCertificate, Fingerprint};
use myriad_fleet::registry::DeviceId;
use myriad_fleet::service::certs::CertServiceError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::dto::ErrorBody;
use crate::error::ApiError;
use crate::extract::{ApiJson, DevicePath};
use crate::state::ApiState;

impl From<CertServiceError> for ApiError {
    fn from(error: CertServiceError) -> ApiError {
        match error {
            CertServiceError::Certificate(error) => ApiError::BadRequest(error.to_string()),
            CertServiceError::Store(error) => error.into(),
            CertServiceError::Listener(error) => ApiError::Internal(error.to_string()),
            CertServiceError::Stopped => ApiError::Internal(error.to_string()),
        }
    }
}

/// A PEM certificate to register for a device.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddCertificate {
    /// Exactly one `-----BEGIN CERTIFICATE-----` block (at most 64 KiB).
    pub pem: String,
}

/// A device certificate as the API shows it. Times are unix ms.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CertificateBody {
    /// SHA-256 of the DER, 64 hex digits.
    pub fingerprint: String,
    /// The device it logs in.
    pub device: String,
    /// `active` or `revoked`.
    pub status: String,
    /// Subject, as text.
    pub subject: String,
    /// Issuer, as text.
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: i64,
    /// End of validity.
    pub not_after: i64,
    /// When it was registered.
    pub created_at: u64,
    /// When it was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

impl From<DeviceCertificate> for CertificateBody {
    fn from(cert: DeviceCertificate) -> CertificateBody {
        CertificateBody {
            fingerprint: cert.fingerprint.to_string(),
            device: cert.device.to_string(),
            status: match cert.status {
                myriad_fleet::certs::CertificateStatus::Active => "active",
                myriad_fleet::certs::CertificateStatus::Revoked => "revoked",
            }
            .to_owned(),
            subject: cert.subject,
            issuer: cert.issuer,
            serial: cert.serial,
            not_before: cert.not_before.saturating_mul(1000),
            not_after: cert.not_after.saturating_mul(1000),
            created_at: cert.created_at,
            revoked_at: cert.revoked_at,
        }
    }
}

/// A device's certificates.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CertificateList {
    /// Active ones and revoked ones not yet expired.
    pub certificates: Vec<CertificateBody>,
}

/// A revoked certificate and whether the device's connection was closed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Revoked {
    /// The certificate, now `revoked`.
    pub certificate: CertificateBody,
    /// Whether the device was connected with it and was disconnected.
    pub disconnected: bool,
}

/// A CA to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddCa {
    /// The CA certificate: one `CERTIFICATE` block with basicConstraints CA:TRUE.
    pub pem: String,
    /// Its revocation list: one `X509 CRL` block it signed.
    #[serde(default)]
    pub crl: Option<String>,
}

/// A new revocation list for a CA.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetCrl {
    /// One `X509 CRL` block the CA signed; `null` removes the list.
    pub crl: Option<String>,
}

/// A CA as the API shows it. Times are unix ms.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CaBody {
    /// SHA-256 of the CA certificate's DER, 64 hex digits.
    pub fingerprint: String,
    /// Subject, as text.
    pub subject: String,
    /// Start of validity.
    pub not_before: i64,
    /// End of validity.
    pub not_after: i64,
    /// When it was registered.
    pub created_at: u64,
    /// Whether it has a revocation list.
    pub has_crl: bool,
    /// How many serial numbers its list revokes.
    pub crl_revoked: u64,
    /// When the list was last set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crl_updated_at: Option<u64>,
}

impl From<CertificateAuthority> for CaBody {
    fn from(ca: CertificateAuthority) -> CaBody {
        CaBody {
            fingerprint: ca.fingerprint.to_string(),
            subject: ca.subject,
            not_before: ca.not_before.saturating_mul(1000),
            not_after: ca.not_after.saturating_mul(1000),
            created_at: ca.created_at,
            has_crl: ca.crl.is_some(),
            crl_revoked: ca.crl_revoked,
            crl_updated_at: ca.crl_updated_at,
        }
    }
}

/// The registered CAs.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CaList {
    /// Every registered CA (at most 64).
    pub cas: Vec<CaBody>,
}

/// A CA changed or removed, and how many live connections no longer verified and were closed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CaChanged {
    /// The CA (as it was, when removed).
    pub ca: CaBody,
    /// Connections closed.
    pub disconnected: usize,
}

fn fingerprint(text: &str) -> Result<Fingerprint, ApiError> {
    text.parse()
        .map_err(|e: myriad_fleet::certs::FingerprintError| {
            ApiError::BadRequest(format!("{text:?}: {e}"))
        })
}

/// Pins a certificate to a device: it then logs the device in over a TLS
/// listener with `client_certs = "optional"` or `"require"`, even without a CA.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/certificates",
    tag = "certificates",
    params(("id" = String, Path, description = "Device id")),
    request_body = AddCertificate,
    responses(
        (status = 201, description = "Registered", body = CertificateBody),
        (status = 400, description = "Not one PEM certificate, a CA certificate, expired, or naming another device", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 409, description = "Already registered or revoked, or the device has 16 certificates", body = ErrorBody),
    )
)]
pub(crate) async fn add_device_certificate(
    State(state): State<ApiState>,
    DevicePath(device): DevicePath,
    ApiJson(body): ApiJson<AddCertificate>,
) -> Result<(StatusCode, Json<CertificateBody>), ApiError> {
    let cert = state
        .certs
        .add_device_certificate(&device, &body.pem)
        .await?;
    Ok((StatusCode::CREATED, Json(cert.into())))
}

/// A device's certificates.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/certificates",
    tag = "certificates",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "Its certificates", body = CertificateList),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn list_device_certificates(
    State(state): State<ApiState>,
    DevicePath(device): DevicePath,
) -> Result<Json<CertificateList>, ApiError> {
    let certs = state.certs.device_certificates(&device).await?;
    Ok(Json(CertificateList {
        certificates: certs.into_iter().map(Into::into).collect(),
    }))
}

/// Revokes a device's certificate: refused from now on (even if a
/// registered CA issued it); the device's connection is closed (DISCONNECT
/// 0x87) if it logged in with it.
#[utoipa::path(
    delete,
    path = "/api/v1/devices/{id}/certificates/{fingerprint}",
    tag = "certificates",
    params(
        ("id" = String, Path, description = "Device id"),
        ("fingerprint" = String, Path, description = "SHA-256 fingerprint, 64 hex digits"),
    ),
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = 400, description = "Not a fingerprint", body = ErrorBody),
        (status = 404, description = "The device has no such certificate", body = ErrorBody),
    )
)]
pub(crate) async fn revoke_device_certificate(
    State(state): State<ApiState>,
    Path((id, fp)): Path<(String, String)>,
) -> Result<Json<Revoked>, ApiError> {
    let device = DeviceId::new(id.as_str())
        .map_err(|reason| ApiError::BadRequest(format!("device id {id:?} {reason}")))?;
    let (cert, disconnected) = state
        .certs
        .revoke_device_certificate(&device, fingerprint(&fp)?)
        .await?;
    Ok(Json(Revoked {
        certificate: cert.into(),
        disconnected,
    }))
}

/// Registers a CA: every MQTT TLS listener that asks for client
/// certificates trusts it from the next connection on.
#[utoipa::path(
    post,
    path = "/api/v1/cas",
    tag = "certificates",
    request_body = AddCa,
    responses(
        (status = 201, description = "Registered", body = CaBody),
        (status = 400, description = "Not one PEM CA certificate, expired, or a CRL it did not sign", body = ErrorBody),
        (status = 409, description = "Already registered, or 64 CAs are", body = ErrorBody),
    )
)]
pub(crate) async fn add_ca(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<AddCa>,
) -> Result<(StatusCode, Json<CaBody>), ApiError> {
    let ca = state.certs.add_ca(&body.pem, body.crl.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(ca.into())))
}

/// The registered CAs.
#[utoipa::path(
    get,
    path = "/api/v1/cas",
    tag = "certificates",
    responses((status = 200, description = "The CAs", body = CaList))
)]
pub(crate) async fn list_cas(State(state): State<ApiState>) -> Result<Json<CaList>, ApiError> {
    let cas = state.certs.cas().await?;
    Ok(Json(CaList {
        cas: cas.into_iter().map(Into::into).collect(),
    }))
}

/// Replaces a CA's revocation list; live connections whose certificate it
/// revokes are closed.
#[utoipa::path(
    put,
    path = "/api/v1/cas/{fingerprint}/crl",
    tag = "certificates",
    params(("fingerprint" = String, Path, description = "The CA's SHA-256 fingerprint")),
    request_body = SetCrl,
    responses(
        (status = 200, description = "Set", body = CaChanged),
        (status = 400, description = "Not one PEM CRL signed by this CA", body = ErrorBody),
        (status = 404, description = "No such CA", body = ErrorBody),
    )
)]
pub(crate) async fn set_crl(
    State(state): State<ApiState>,
    Path(fp): Path<String>,
    ApiJson(body): ApiJson<SetCrl>,
) -> Result<Json<CaChanged>, ApiError> {
    let (ca, disconnected) = state
        .certs
        .set_crl(fingerprint(&fp)?, body.crl.as_deref())
        .await?;
    Ok(Json(CaChanged {
        ca: ca.into(),
        disconnected,
    }))
}

/// Removes a CA; live connections whose certificate no longer verifies are closed.
#[utoipa::path(
    delete,
    path = "/api/v1/cas/{fingerprint}",
    tag = "certificates",
    params(("fingerprint" = String, Path, description = "The CA's SHA-256 fingerprint")),
    responses(
        (status = 200, description = "Removed", body = CaChanged),
        (status = 404, description = "No such CA", body = ErrorBody),
    )
)]
pub(crate) async fn delete_ca(
    State(state): State<ApiState>,
    Path(fp): Path<String>,
) -> Result<Json<CaChanged>, ApiError> {
    let (ca, disconnected) = state.certs.delete_ca(fingerprint(&fp)?).await?;
    Ok(Json(CaChanged {
        ca: ca.into(),
        disconnected,
    }))
}
