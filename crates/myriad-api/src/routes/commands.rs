//! Commands: send to a device or fan out, read, list, cancel, follow a
//! batch, and the circuit breakers.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use myriad_fleet::commands::{BatchId, BatchProgress, Command, CommandId};
use myriad_fleet::registry::DeviceId;
use myriad_fleet::service::commands::Targets;
use serde_json::Value;

use super::devices::read_device;
use crate::blocking::blocking;
use crate::dto::{
    BatchAccepted, CommandListParams, CommandPage, ErrorBody, SendBatch, SendCommand, parse_limit,
};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, DevicePath};
use crate::schema::{BatchDoc, BreakersDoc, CommandDoc};
use crate::state::ApiState;

fn command_id(text: &str) -> Result<CommandId, ApiError> {
    CommandId::parse(text)
        .ok_or_else(|| ApiError::BadRequest(format!("command id {text:?} is not 32 hex digits")))
}

/// Sends a command to a device. Answers with the command as accepted: an
/// L1 command for an offline device is `queued`; an L2 read for an offline
/// device is answered from its shadow at once; an L3 command for an
/// offline device is `failed` (dropped). 429 with `Retry-After` when a rate
/// limit or the in-flight cap refuses it.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/commands",
    tag = "commands",
    params(("id" = String, Path, description = "The device id")),
    request_body = SendCommand,
    responses(
        (status = 201, description = "Accepted", body = CommandDoc),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
    )
)]
pub(crate) async fn send_command(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
    ApiJson(body): ApiJson<SendCommand>,
) -> Result<(StatusCode, Json<Command>), ApiError> {
    let command = state.commands.submit(&id, body.into_request()).await?;
    Ok((StatusCode::CREATED, Json(command)))
}

/// Sends a command to a list of devices or a group. Returns at once with a
/// batch id; the commands are created in the background at the pace the
/// rate limits allow. The batch is stored until every target is handled,
/// so a restart resumes it.
#[utoipa::path(
    post,
    path = "/api/v1/commands",
    tag = "commands",
    request_body = SendBatch,
    responses(
        (status = 202, description = "Accepted", body = BatchAccepted),
        (status = 400, description = "Invalid request", body = ErrorBody),
    )
)]
pub(crate) async fn send_batch(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<SendBatch>,
) -> Result<(StatusCode, Json<BatchAccepted>), ApiError> {
    let request = body.request();
    let targets = match (body.devices, body.group) {
        (Some(devices), None) => Targets::Devices(
            devices
                .into_iter()
                .map(|d| {
                    DeviceId::new(d.as_str())
                        .map_err(|reason| ApiError::BadRequest(format!("device id {d:?} {reason}")))
                })
                .collect::<Result<_, _>>()?,
        ),
        (None, Some(group)) => Targets::Group(group),
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of devices or group".into(),
            ));
        }
    };
    let batch = state.commands.submit_batch(targets, request)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(BatchAccepted {
            batch_id: batch.id.to_string(),
        }),
    ))
}

/// One command with its status and timestamps.
#[utoipa::path(
    get,
    path = "/api/v1/commands/{command_id}",
    tag = "commands",
    params(("command_id" = String, Path, description = "The command id")),
    responses(
        (status = 200, description = "The command", body = CommandDoc),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such command", body = ErrorBody),
    )
)]
pub(crate) async fn get_command(
    State(state): State<ApiState>,
    Path(text): Path<String>,
) -> Result<Json<Command>, ApiError> {
    let id = command_id(&text)?;
    let commands = state.commands.clone();
    let found = blocking(move || Ok(commands.get(&id)?)).await?;
    found
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("command {text} not found")))
}

/// Cancels a command that is not final yet.
#[utoipa::path(
    delete,
    path = "/api/v1/commands/{command_id}",
    tag = "commands",
    params(("command_id" = String, Path, description = "The command id")),
    responses(
        (status = 200, description = "Cancelled", body = CommandDoc),
        (status = 404, description = "No such command", body = ErrorBody),
        (status = 409, description = "Already final", body = ErrorBody),
    )
)]
pub(crate) async fn cancel_command(
    State(state): State<ApiState>,
    Path(text): Path<String>,
) -> Result<Json<Command>, ApiError> {
    let id = command_id(&text)?;
    Ok(Json(state.commands.cancel(&id).await?))
}

/// The commands of a device, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/commands",
    tag = "commands",
    params(("id" = String, Path, description = "The device id"), CommandListParams),
    responses(
        (status = 200, description = "One page", body = CommandPage),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn list_device_commands(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
    ApiQuery(params): ApiQuery<CommandListParams>,
) -> Result<Json<CommandPage>, ApiError> {
    let limit = parse_limit(params.limit.as_deref())? as usize;
    let before = match params.before.as_deref().filter(|b| !b.is_empty()) {
        Some(text) => Some(command_id(text)?),
        None => None,
    };
    let commands = state.commands.clone();
    read_device(state, id.clone()).await?;
    let items =
        blocking(move || Ok(commands.list_for_device(&id, before.as_ref(), limit)?)).await?;
    let next = if items.len() == limit {
        items.last().map(|c| c.id.to_string())
    } else {
        None
    };
    let items = items
        .iter()
        .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
        .collect();
    Ok(Json(CommandPage { items, next }))
}

/// Progress of a fan-out batch. A batch interrupted by a restart (kill -9
/// or SIGTERM) resumes when the server starts again: `targets`, `refused`
/// and `statuses` are rebuilt from the commands stored for it and the
/// targets not yet handled get their command (each target one command).
#[utoipa::path(
    get,
    path = "/api/v1/command-batches/{batch_id}",
    tag = "commands",
    params(("batch_id" = String, Path, description = "The batch id")),
    responses(
        (status = 200, description = "Its progress", body = BatchDoc),
        (status = 404, description = "No such batch", body = ErrorBody),
    )
)]
pub(crate) async fn get_batch(
    State(state): State<ApiState>,
    Path(text): Path<String>,
) -> Result<Json<BatchProgress>, ApiError> {
    let id = BatchId::parse(&text)
        .ok_or_else(|| ApiError::BadRequest(format!("batch id {text:?} is not 32 hex digits")))?;
    let commands = state.commands.clone();
    blocking(move || Ok(commands.batch(&id)?))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("batch {text} not found")))
}

/// Cancels a fan-out batch: its targets not yet handled get no command,
/// and its commands not final become `cancelled` with reason
/// `batch_cancelled`. Answers with the batch's progress (`cancelled`:
/// true); a batch cancelled is not resumed after a restart. Cancelling a
/// cancelled or finished batch cancels what is still open (nothing).
#[utoipa::path(
    delete,
    path = "/api/v1/command-batches/{batch_id}",
    tag = "commands",
    params(("batch_id" = String, Path, description = "The batch id")),
    responses(
        (status = 200, description = "Cancelled; its progress", body = BatchDoc),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
    )
)]
pub(crate) async fn cancel_batch(
    State(state): State<ApiState>,
    Path(text): Path<String>,
) -> Result<Json<BatchProgress>, ApiError> {
    let id = BatchId::parse(&text)
        .ok_or_else(|| ApiError::BadRequest(format!("batch id {text:?} is not 32 hex digits")))?;
    Ok(Json(state.commands.cancel_batch(&id).await?))
}

/// Circuit breaker states: per class, and per device where not closed.
#[utoipa::path(
    get,
    path = "/api/v1/commands/breakers",
    tag = "commands",
    responses((status = 200, description = "Breaker states", body = BreakersDoc))
)]
pub(crate) async fn breakers(State(state): State<ApiState>) -> Json<Value> {
    Json(serde_json::to_value(state.commands.breakers()).unwrap_or(Value::Null))
}
