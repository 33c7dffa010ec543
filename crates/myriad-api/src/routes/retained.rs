//! Retained messages: a page by topic prefix, and deleting one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::dto::ErrorBody;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::ApiState;

/// Largest page.
pub(crate) const MAX_RETAINED_LIMIT: usize = 1000;
/// Page size without `limit`.
const DEFAULT_RETAINED_LIMIT: usize = 100;
/// Longest `prefix`, `after` or `topic` (bytes): four times the broker's default
/// `mqtt.max_topic_length`, and short enough that the percent-encoded query fits a URI.
pub(crate) const MAX_TOPIC_BYTES: usize = 16_384;
/// Characters of a UTF-8 payload shown.
const UTF8_SHOWN_CHARS: usize = 256;
/// Bytes of a binary payload shown (base64).
const BINARY_SHOWN_BYTES: usize = 192;

/// Query of `GET /api/v1/retained`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RetainedParams {
    /// Only topics starting with this (a string prefix; default: all).
    prefix: Option<String>,
    /// The `next` of the previous page: topics after this one.
    after: Option<String>,
    /// Page size, 1..=1000 (default 100).
    limit: Option<String>,
}

/// One retained message.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RetainedBody {
    /// Its topic.
    topic: String,
    /// The QoS it was published with.
    qos: u8,
    /// Payload size in bytes.
    bytes: u64,
    /// The payload's first 256 characters, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_utf8: Option<String>,
    /// The payload's first 192 bytes in base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

/// A page of retained messages.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RetainedPageBody {
    /// In topic order.
    items: Vec<RetainedBody>,
    /// The `after` of the next page (`null`: last page).
    next: Option<String>,
}

/// Query of `DELETE /api/v1/retained`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RetainedTopic {
    /// The exact topic (`+` and `#` are plain characters here).
    topic: Option<String>,
}

/// 503: the broker no longer answers (the server is stopping).
pub(crate) fn broker_stopped(stopped: myriad_broker::shell::BrokerStopped) -> ApiError {
    ApiError::Other {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: stopped.to_string(),
    }
}

/// 400 unless `value` is at most [`MAX_TOPIC_BYTES`].
fn bounded(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.len() > MAX_TOPIC_BYTES => Err(ApiError::BadRequest(format!(
            "{name} is longer than {MAX_TOPIC_BYTES} bytes"
        ))),
        other => Ok(other),
    }
}

/// The retained messages whose topics start with `prefix`, in topic order, one page at a
/// time. Payloads are shown cut: the first 256 characters of UTF-8, else the first 192 bytes
/// in base64.
#[utoipa::path(
    get,
    path = "/api/v1/retained",
    tag = "console",
    params(RetainedParams),
    responses(
        (status = 200, description = "One page", body = RetainedPageBody),
        (status = 400, description = "Bad limit, or prefix/after too long", body = ErrorBody),
        (status = 503, description = "The broker has stopped", body = ErrorBody),
    )
)]
pub(crate) async fn list_retained(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<RetainedParams>,
) -> Result<Json<RetainedPageBody>, ApiError> {
    let limit = match params.limit.as_deref().filter(|l| !l.is_empty()) {
        None => DEFAULT_RETAINED_LIMIT,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_RETAINED_LIMIT).contains(&n) => n,
            _ => {
                let shown: String = raw.chars().take(32).collect();
                return Err(ApiError::BadRequest(format!(
                    "limit must be an integer in 1..={MAX_RETAINED_LIMIT}, got {shown:?}"
                )));
            }
        },
    };
    let prefix = bounded("prefix", params.prefix)?.unwrap_or_default();
    let after = bounded("after", params.after)?.filter(|a| !a.is_empty());
    let page = state
        .console
        .broker
        .retained(&prefix, after.as_deref(), limit)
        .await
        .map_err(super::retained::broker_stopped)?;
    let next = page
        .more
        .then(|| page.items.last().map(|m| m.topic.to_string()))
        .flatten();
    let items = page
        .items
        .iter()
        .map(|message| {
            let payload = &message.payload;
            let (payload_utf8, payload_base64) = match std::str::from_utf8(payload) {
                Ok(text) => (Some(text.chars().take(UTF8_SHOWN_CHARS).collect()), None),
                Err(_) => {
                    let shown = &payload[..payload.len().min(BINARY_SHOWN_BYTES)];
                    let encoded = base64::engine::general_purpose::STANDARD.encode(shown);
                    (None, Some(encoded))
                }
            };
            RetainedBody {
                topic: message.topic.to_string(),
                qos: message.qos as u8,
                bytes: payload.len() as u64,
                payload_utf8,
                payload_base64,
            }
        })
        .collect();
    Ok(Json(RetainedPageBody { items, next }))
}

/// Deletes the retained message of exactly `topic`, as an empty retained PUBLISH would (new
/// subscribers get nothing; stored with the broker's next commit).
#[utoipa::path(
    delete,
    path = "/api/v1/retained",
    tag = "console",
    params(RetainedTopic),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "No topic, or longer than 16,384 bytes", body = ErrorBody),
        (status = 404, description = "No retained message on that topic", body = ErrorBody),
        (status = 503, description = "The broker has stopped", body = ErrorBody),
    )
)]
pub(crate) async fn delete_retained(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<RetainedTopic>,
) -> Result<StatusCode, ApiError> {
    let Some(topic) = bounded("topic", params.topic)?.filter(|t| !t.is_empty()) else {
        return Err(ApiError::BadRequest("topic is required".into()));
    };
    let deleted = state
        .console
        .broker
        .delete_retained(&topic)
        .await
        .map_err(super::retained::broker_stopped)?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        let shown: String = topic.chars().take(128).collect();
        Err(ApiError::NotFound(format!(
            "no retained message on topic {shown:?}"
        )))
    }
}
