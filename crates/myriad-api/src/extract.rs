//! Extractors whose rejections are [`ApiError`]s (so they answer in the
//! API's JSON error shape), and validated ids from the path.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use myriad_fleet::registry::{AppId, DeviceId};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body (`Content-Type: application/json`, at most the route's body
/// limit). Bad JSON or a wrong shape is a 400.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

/// A query string. A malformed one is a 400.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(value))
    }
}

/// The single `{id}` path parameter as a string.
async fn path_id<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, ApiError> {
    let Path(id) = Path::<String>::from_request_parts(parts, state).await?;
    Ok(id)
}

/// The `{id}` of a device route, validated (400 if not a valid id).
#[derive(Debug, Clone)]
pub(crate) struct DevicePath(pub DeviceId);

impl<S: Send + Sync> FromRequestParts<S> for DevicePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let id = path_id(parts, state).await?;
        DeviceId::new(id.as_str())
            .map(DevicePath)
            .map_err(|reason| ApiError::BadRequest(format!("device id {id:?} {reason}")))
    }
}

/// The `{id}` of an app client route, validated (400 if not a valid id).
#[derive(Debug, Clone)]
pub(crate) struct AppPath(pub AppId);

impl<S: Send + Sync> FromRequestParts<S> for AppPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let id = path_id(parts, state).await?;
        AppId::new(id.as_str())
            .map(AppPath)
            .map_err(|reason| ApiError::BadRequest(format!("app id {id:?} {reason}")))
    }
}
