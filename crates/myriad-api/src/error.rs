//! Errors as the API reports them: the HTTP status and
//! `{"status": <u16>, "message": ".."}`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use myriad_fleet::credentials::CredentialError;
use myriad_fleet::operators::OperatorError;
use myriad_fleet::registry::ValidationError;
use myriad_fleet::service::commands::CommandError;
use myriad_fleet::service::shadows::ShadowServiceError;
use myriad_fleet::store::FleetStoreError;

use crate::dto::ErrorBody;

/// Why a request failed. Each variant maps to one HTTP status; the message
/// is shown to the client as it is.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or breaks a limit.
    #[error("{0}")]
    BadRequest(String),
    /// 401: the bearer token is missing or wrong.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 404: the device, app client or shadow does not exist, or no such
    /// route.
    #[error("{0}")]
    NotFound(String),
    /// 409: the id is taken, or a shadow version conflict.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body (or a shadow document) is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 429: refused by a rate limit or under pressure; retry after this many seconds.
    #[error("{message}")]
    TooManyRequests {
        /// What refused it.
        message: String,
        /// Seconds to wait (the `Retry-After` header).
        retry_after_secs: u64,
    },
    /// Another client error with its own status (405, 415, ...).
    #[error("{message}")]
    Other {
        /// The status.
        status: StatusCode,
        /// What is wrong.
        message: String,
    },
    /// 500: the store or the server failed.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Other { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error for `status` with `message`, using the named variant when
    /// there is one.
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> ApiError {
        let message = message.into();
        match status {
            StatusCode::BAD_REQUEST => ApiError::BadRequest(message),
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized,
            StatusCode::NOT_FOUND => ApiError::NotFound(message),
            StatusCode::CONFLICT => ApiError::Conflict(message),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(message),
            s if s.is_server_error() => ApiError::Internal(message),
            status => ApiError::Other { status, message },
        }
    }

    /// A rejection of axum's: its status, but 422 (valid JSON of the wrong
    /// shape) becomes 400 like every other validation error.
    fn rejection(status: StatusCode, message: String) -> ApiError {
        let status = match status {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            other => other,
        };
        ApiError::with_status(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "API request failed");
        }
        let retry_after = match &self {
            ApiError::TooManyRequests {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        let body = ErrorBody {
            status: status.as_u16(),
            message: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<FleetStoreError> for ApiError {
    fn from(error: FleetStoreError) -> Self {
        let message = error.to_string();
        match error {
            FleetStoreError::DeviceExists(_)
            | FleetStoreError::AppExists(_)
            | FleetStoreError::IdTaken { .. }
            | FleetStoreError::CertificateConflict(_)
            | FleetStoreError::ArtifactInUse { .. } => ApiError::Conflict(message),
            FleetStoreError::DeviceNotFound(_)
            | FleetStoreError::AppNotFound(_)
            | FleetStoreError::PrincipalNotFound(_)
            | FleetStoreError::CertificateNotFound(_) => ApiError::NotFound(message),
            FleetStoreError::Invalid(_) => ApiError::BadRequest(message),
            FleetStoreError::Credential(error) => error.into(),
            FleetStoreError::Io { .. }
            | FleetStoreError::CorruptFile { .. }
            | FleetStoreError::Corrupt { .. }
            | FleetStoreError::Engine { .. }
            | FleetStoreError::Encode(_) => ApiError::Internal(format!("store: {message}")),
        }
    }
}

impl From<OperatorError> for ApiError {
    fn from(error: OperatorError) -> Self {
        let message = error.to_string();
        match error {
            OperatorError::Invalid(_) => ApiError::BadRequest(message),
            OperatorError::UserExists(_) | OperatorError::Limit(_) => ApiError::Conflict(message),
            OperatorError::UserNotFound(_) | OperatorError::TokenNotFound(_) => {
                ApiError::NotFound(message)
            }
            OperatorError::WrongPassword => ApiError::Other {
                status: StatusCode::FORBIDDEN,
                message,
            },
            OperatorError::Locked(wait_ms) => ApiError::TooManyRequests {
                message,
                retry_after_secs: wait_ms.div_ceil(1000).max(1),
            },
            OperatorError::Store(error) => error.into(),
            OperatorError::Internal(_) => ApiError::Internal(message),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        ApiError::BadRequest(error.to_string())
    }
}

impl From<CredentialError> for ApiError {
    fn from(error: CredentialError) -> Self {
        let message = error.to_string();
        match error {
            CredentialError::PasswordTooLong { .. }
            | CredentialError::Malformed(_)
            | CredentialError::Algorithm(_)
            | CredentialError::CostTooHigh { .. } => ApiError::BadRequest(message),
            CredentialError::Params(_) | CredentialError::Hash(_) => {
                ApiError::Internal(format!("password hashing: {message}"))
            }
        }
    }
}

impl From<ShadowServiceError> for ApiError {
    fn from(error: ShadowServiceError) -> Self {
        match error {
            ShadowServiceError::UnknownDevice(id) => {
                ApiError::NotFound(format!("device {id} not found"))
            }
            ShadowServiceError::NoShadow(id) => {
                ApiError::NotFound(format!("device {id} has no shadow"))
            }
            ShadowServiceError::Rejected(rejected) => {
                let status = StatusCode::from_u16(rejected.code).unwrap_or(StatusCode::BAD_REQUEST);
                ApiError::with_status(status, rejected.message)
            }
            ShadowServiceError::Store(error) => error.into(),
            ShadowServiceError::TooManyRequests { retry_after_ms } => ApiError::TooManyRequests {
                message: format!("too many shadow requests: retry in {retry_after_ms} ms"),
                retry_after_secs: retry_after_ms.div_ceil(1000).max(1),
            },
            other @ (ShadowServiceError::Corrupt { .. }
            | ShadowServiceError::CommitFailed(_)
            | ShadowServiceError::Stopped) => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        let message = error.to_string();
        match error {
            CommandError::UnknownDevice(_) | CommandError::NotFound(_) => {
                ApiError::NotFound(message)
            }
            CommandError::Invalid(_) => ApiError::BadRequest(message),
            CommandError::Refused(refused) => ApiError::TooManyRequests {
                message,
                retry_after_secs: refused.retry_after_ms().div_ceil(1000).max(1),
            },
            CommandError::AlreadyFinal(_) => ApiError::Conflict(message),
            CommandError::Store(error) => error.into(),
            CommandError::Stopped => ApiError::Internal(message),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::rejection(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::rejection(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::rejection(rejection.status(), rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(
            ApiError::with_status(StatusCode::CONFLICT, "x").status(),
            StatusCode::CONFLICT
        );
        assert_eq!(
            ApiError::rejection(StatusCode::UNPROCESSABLE_ENTITY, "x".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ApiError::with_status(StatusCode::METHOD_NOT_ALLOWED, "x").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert!(matches!(
            ApiError::with_status(StatusCode::BAD_GATEWAY, "x"),
            ApiError::Internal(_)
        ));
    }
}
