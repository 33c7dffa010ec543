//! OTA updates (issue 18): firmware artifacts (streamed uploads, list, get, delete, download
//! with Range requests) and rollouts (create, list, get, devices, pause / resume / cancel).
//! See `myriad_fleet::service::ota`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use myriad_fleet::service::now_ms;
use myriad_fleet::service::ota::artifacts::NewArtifact;
use myriad_fleet::service::ota::{
    NewRollout, OtaError, RolloutAction, RolloutView, TargetSpec, hex,
};
use myriad_fleet::store::ota::{ArtifactRecord, RolloutTarget};
use myriad_ota::rollout::{AbortThreshold, DeviceRecord, DeviceState, RolloutSpec, WavePlan};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use tower_http::services::ServeFile;
use utoipa::{IntoParams, ToSchema};

use crate::blocking::blocking;
use crate::body_reader::bounded_reader;
use crate::dto::ErrorBody;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::state::ApiState;

impl From<OtaError> for ApiError {
    fn from(error: OtaError) -> ApiError {
        match error {
            OtaError::BadRequest(message) => ApiError::BadRequest(message),
            OtaError::NotFound(message) => ApiError::NotFound(message),
            OtaError::Conflict(message) => ApiError::Conflict(message),
            OtaError::Busy(message) => ApiError::TooManyRequests {
                message,
                retry_after_secs: 5,
            },
            OtaError::TooLarge(_) => ApiError::PayloadTooLarge(error.to_string()),
            OtaError::Store(error) => error.into(),
            OtaError::Io { .. } => ApiError::Internal(error.to_string()),
        }
    }
}

/// What to record about an uploaded image.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadParams {
    /// The firmware version the image installs (1 to 64 of `A-Za-z0-9._+-`).
    pub version: String,
    /// The hardware type it is built for (1 to 64 of `A-Za-z0-9._+-`).
    pub hardware_type: String,
    /// Release notes (at most 4096 bytes).
    pub notes: Option<String>,
    /// Anti-rollback counter written into the manifest (default 0): a device refuses an
    /// image whose counter is below the one it runs.
    pub security_counter: Option<u64>,
}

/// A firmware artifact. Times are unix ms.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ArtifactBody {
    /// The artifact's id.
    pub id: String,
    /// Firmware version.
    pub version: String,
    /// Hardware type.
    pub hardware_type: String,
    /// Release notes.
    pub notes: String,
    /// Bytes of the image.
    pub size: u64,
    /// SHA-256 of the image, 64 hex digits.
    pub sha256: String,
    /// Anti-rollback counter.
    pub security_counter: u64,
    /// When it was uploaded.
    pub created_at: u64,
}

impl From<ArtifactRecord> for ArtifactBody {
    fn from(a: ArtifactRecord) -> Self {
        ArtifactBody {
            sha256: hex(&a.sha256),
            id: a.id,
            version: a.version,
            hardware_type: a.hardware_type,
            notes: a.notes,
            size: a.size,
            security_counter: a.security_counter,
            created_at: a.created_ms,
        }
    }
}

/// Every artifact.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ArtifactList {
    /// In id order.
    pub artifacts: Vec<ArtifactBody>,
}

/// Uploads a firmware image. The body is the raw image, streamed to disk (never held in
/// memory), hashed and counted on the way; the record is written once the file is complete
/// and `fsync`ed.
#[utoipa::path(
    post,
    path = "/api/v1/ota/artifacts",
    tag = "ota",
    params(UploadParams),
    request_body(description = "The image", content((String = "application/octet-stream"))),
    responses(
        (status = 201, description = "Stored", body = ArtifactBody),
        (status = 400, description = "Bad version, hardware_type or notes, or an empty body", body = ErrorBody),
        (status = 409, description = "ota.max_artifacts are stored", body = ErrorBody),
        (status = 413, description = "Larger than ota.max_artifact_bytes", body = ErrorBody),
        (status = 429, description = "ota.concurrent_uploads are running", body = ErrorBody),
    )
)]
pub(crate) async fn upload_artifact(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ArtifactBody>), ApiError> {
    let ota = state.ota.clone();
    let limit = ota.config().max_artifact_bytes;
    let meta = NewArtifact {
        version: params.version,
        hardware_type: params.hardware_type,
        notes: params.notes.unwrap_or_default(),
        security_counter: params.security_counter.unwrap_or(0),
    };
    meta.validate()?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(OtaError::TooLarge(limit).into());
    }
    let permit = ota.upload_permit()?;
    let body = bounded_reader(body, limit)?;
    let exceeded = body.exceeded;
    let mut reader = body.reader;
    let stored = blocking(move || {
        let _permit = permit;
        let stored = ota.store_artifact(meta, &mut reader, now_ms());
        if exceeded.load(Ordering::Relaxed) {
            return Err(OtaError::TooLarge(limit).into());
        }
        Ok(stored?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(stored.into())))
}

/// Lists every artifact.
#[utoipa::path(
    get,
    path = "/api/v1/ota/artifacts",
    tag = "ota",
    responses((status = 200, description = "Every artifact", body = ArtifactList))
)]
pub(crate) async fn list_artifacts(
    State(state): State<ApiState>,
) -> Result<Json<ArtifactList>, ApiError> {
    let artifacts = state
        .ota
        .artifacts()?
        .into_iter()
        .map(ArtifactBody::from)
        .collect();
    Ok(Json(ArtifactList { artifacts }))
}

/// One artifact.
#[utoipa::path(
    get,
    path = "/api/v1/ota/artifacts/{id}",
    tag = "ota",
    params(("id" = String, Path, description = "Artifact id")),
    responses(
        (status = 200, description = "The artifact", body = ArtifactBody),
        (status = 404, description = "No such artifact", body = ErrorBody),
    )
)]
pub(crate) async fn get_artifact(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ArtifactBody>, ApiError> {
    let artifact = state
        .ota
        .artifact(&id)?
        .ok_or_else(|| ApiError::NotFound(format!("artifact {id} not found")))?;
    Ok(Json(artifact.into()))
}

/// Deletes an artifact and its file; refused while a rollout that has not finished uses it.
#[utoipa::path(
    delete,
    path = "/api/v1/ota/artifacts/{id}",
    tag = "ota",
    params(("id" = String, Path, description = "Artifact id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such artifact", body = ErrorBody),
        (status = 409, description = "A rollout that has not finished uses it", body = ErrorBody),
    )
)]
pub(crate) async fn delete_artifact(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let ota = state.ota.clone();
    blocking(move || Ok(ota.delete_artifact(&id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Downloads an artifact's image; `Range` requests resume a broken download (206).
#[utoipa::path(
    get,
    path = "/api/v1/ota/artifacts/{id}/content",
    tag = "ota",
    params(("id" = String, Path, description = "Artifact id")),
    responses(
        (status = 200, description = "The whole image", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range", content_type = "application/octet-stream"),
        (status = 404, description = "No such artifact", body = ErrorBody),
        (status = 416, description = "Range outside the image"),
    )
)]
pub(crate) async fn artifact_content(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let artifact = state
        .ota
        .artifact(&id)?
        .ok_or_else(|| ApiError::NotFound(format!("artifact {id} not found")))?;
    serve_file(state.ota.artifact_path(&artifact.id), request, None).await
}

/// Serves the file at `path` (no extension: `application/octet-stream`) with Range support;
/// with `throttle`, each chunk of the body waits its turn in the rollout's bandwidth cap.
async fn serve_file(
    path: std::path::PathBuf,
    request: Request,
    throttle: Option<std::sync::Arc<myriad_fleet::service::ota::throttle::Throttle>>,
) -> Result<Response, ApiError> {
    let response = ServeFile::new(&path)
        .oneshot(request)
        .await
        .map_err(|error| ApiError::Internal(format!("cannot read {}: {error}", path.display())))?;
    let Some(throttle) = throttle else {
        return Ok(response.map(Body::new).into_response());
    };
    Ok(response
        .map(|body| {
            let chunks = Body::new(body).into_data_stream().then(move |chunk| {
                let throttle = throttle.clone();
                async move {
                    if let Ok(bytes) = &chunk {
                        tokio::time::sleep(throttle.reserve(bytes.len() as u64)).await;
                    }
                    chunk
                }
            });
            Body::from_stream(chunks)
        })
        .into_response())
}

/// Which devices a rollout targets: exactly one of the fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetsBody {
    /// These device ids, in this order.
    pub devices: Option<Vec<String>>,
    /// Every device of this group.
    pub group: Option<String>,
    /// Every device with this attribute value.
    pub attribute: Option<AttributeBody>,
}

/// An attribute key and value.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttributeBody {
    /// Attribute key.
    pub key: String,
    /// Attribute value.
    pub value: String,
}

/// How devices are split into waves: exactly one of the fields (default `{"percent": [100]}`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WavesBody {
    /// Each wave's share in percent (summing to at most 100); the rest form a final wave.
    pub percent: Option<Vec<u8>>,
    /// Each wave's number of devices; the rest form a final wave.
    pub count: Option<Vec<u32>>,
    /// Wave i has first * factor^i devices.
    pub exponential: Option<ExponentialBody>,
}

/// An exponential wave plan.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExponentialBody {
    /// Devices in the first wave.
    pub first: u32,
    /// Growth per wave (1..=100).
    pub factor: u32,
}

/// When a rollout aborts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AbortBody {
    /// Abort when failures are more than this share (percent) of finished devices ...
    pub max_failure_percent: u8,
    /// ... and at least this many devices finished.
    pub min_finished: u32,
}

/// A new rollout.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRollout {
    /// A name for people (at most 128 bytes).
    #[serde(default)]
    pub name: String,
    /// The artifact to install.
    pub artifact: String,
    /// Which devices.
    pub targets: TargetsBody,
    /// Waves (default one wave of every device).
    pub waves: Option<WavesBody>,
    /// Share of a wave (percent) that must finish before the next starts (default 100).
    pub advance_percent: Option<u8>,
    /// Abort threshold (default none).
    pub abort: Option<AbortBody>,
    /// A working device silent this long times out (seconds, default 3600).
    pub in_progress_timeout_secs: Option<u64>,
    /// A notified device that never starts times out after this long (seconds; default: wait).
    pub pending_timeout_secs: Option<u64>,
    /// Retries after a failure or timeout (default 0, at most 10).
    pub max_retries: Option<u32>,
    /// Download bandwidth cap over all the rollout's devices, HTTP and MQTT (bytes per second,
    /// at least 1024; default none).
    pub max_bytes_per_second: Option<u64>,
    /// Also offer the delta from this artifact (built first with `POST /api/v1/ota/deltas`) to
    /// devices running it; the full image stays available.
    pub delta_from: Option<String>,
}

fn seconds_to_ms(field: &str, secs: u64) -> Result<u64, ApiError> {
    secs.checked_mul(1000)
        .ok_or_else(|| ApiError::BadRequest(format!("{field}: too large")))
}

impl CreateRollout {
    fn into_new(self) -> Result<NewRollout, ApiError> {
        let targets = self.targets;
        let target = match (targets.devices, targets.group, targets.attribute) {
            (Some(devices), None, None) => TargetSpec::Devices(devices),
            (None, Some(group), None) => TargetSpec::Group(group),
            (None, None, Some(a)) => TargetSpec::Attribute {
                key: a.key,
                value: a.value,
            },
            _ => {
                return Err(ApiError::BadRequest(
                    "targets: exactly one of devices, group, attribute".into(),
                ));
            }
        };
        let defaults = RolloutSpec::default();
        let waves = match self.waves {
            None => defaults.waves.clone(),
            Some(w) => match (w.percent, w.count, w.exponential) {
                (Some(p), None, None) => WavePlan::Percent(p),
                (None, Some(c), None) => WavePlan::Count(c),
                (None, None, Some(e)) => WavePlan::Exponential {
                    first: e.first,
                    factor: e.factor,
                },
                _ => {
                    return Err(ApiError::BadRequest(
                        "waves: exactly one of percent, count, exponential".into(),
                    ));
                }
            },
        };
        let in_progress_timeout_ms = match self.in_progress_timeout_secs {
            Some(secs) => seconds_to_ms("in_progress_timeout_secs", secs)?,
            None => defaults.in_progress_timeout_ms,
        };
        let pending_timeout_ms = self
            .pending_timeout_secs
            .map(|secs| seconds_to_ms("pending_timeout_secs", secs))
            .transpose()?;
        let spec = RolloutSpec {
            waves,
            advance_percent: self.advance_percent.unwrap_or(defaults.advance_percent),
            abort: self.abort.map(|a| AbortThreshold {
                max_failure_percent: a.max_failure_percent,
                min_finished: a.min_finished,
            }),
            in_progress_timeout_ms,
            pending_timeout_ms,
            max_retries: self.max_retries.unwrap_or(defaults.max_retries),
        };
        spec.validate()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(NewRollout {
            name: self.name,
            artifact: self.artifact,
            target,
            spec,
            max_bytes_per_second: self.max_bytes_per_second,
            delta_from: self.delta_from,
        })
    }
}

/// A rollout. Times are unix ms.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RolloutBody {
    /// The rollout's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The artifact it installs.
    pub artifact: String,
    /// `RUNNING`, `PAUSED`, `COMPLETED`, `ABORTED` or `CANCELED`.
    pub status: String,
    /// How devices were chosen: `{"devices": n}`, `{"group": g}` or `{"attribute": {..}}`.
    #[schema(value_type = Object)]
    pub targets: serde_json::Value,
    /// Devices targeted.
    pub devices: u32,
    /// Waves started so far.
    pub waves_started: u32,
    /// Devices per state (every state, zeros included).
    pub counts: BTreeMap<String, u32>,
    /// Download bandwidth cap (bytes per second).
    pub max_bytes_per_second: Option<u64>,
    /// The delta offered beside the full image.
    pub delta: Option<String>,
    /// Created at.
    pub created_at: u64,
    /// Last changed at.
    pub updated_at: u64,
}

impl From<RolloutView> for RolloutBody {
    fn from(view: RolloutView) -> Self {
        let stored = view.stored;
        let targets = match stored.target {
            RolloutTarget::Devices => serde_json::json!({"devices": view.devices}),
            RolloutTarget::Group(group) => serde_json::json!({"group": group}),
            RolloutTarget::Attribute { key, value } => {
                serde_json::json!({"attribute": {"key": key, "value": value}})
            }
        };
        RolloutBody {
            id: stored.id,
            name: stored.name,
            artifact: stored.artifact,
            status: stored.planner.status.as_str().to_owned(),
            targets,
            devices: view.devices,
            waves_started: stored.planner.waves_started,
            counts: view
                .counts
                .into_iter()
                .map(|(state, n)| (state.as_str().to_owned(), n))
                .collect(),
            max_bytes_per_second: stored.max_bytes_per_second,
            delta: stored.delta.map(|d| d.id),
            created_at: stored.planner.created_ms,
            updated_at: stored.planner.updated_ms,
        }
    }
}

/// Every rollout.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RolloutList {
    /// In id order.
    pub rollouts: Vec<RolloutBody>,
}

/// Creates a rollout; devices are notified in waves from now on.
#[utoipa::path(
    post,
    path = "/api/v1/ota/rollouts",
    tag = "ota",
    request_body = CreateRollout,
    responses(
        (status = 201, description = "Created", body = RolloutBody),
        (status = 400, description = "Bad spec, unknown artifact or device, no devices", body = ErrorBody),
        (status = 409, description = "ota.max_active_rollouts have not finished", body = ErrorBody),
    )
)]
pub(crate) async fn create_rollout(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateRollout>,
) -> Result<(StatusCode, Json<RolloutBody>), ApiError> {
    let new = body.into_new()?;
    let ota = state.ota.clone();
    let view = blocking(move || Ok(ota.create_rollout(new, now_ms())?)).await?;
    Ok((StatusCode::CREATED, Json(view.into())))
}

/// Lists every rollout with its counts.
#[utoipa::path(
    get,
    path = "/api/v1/ota/rollouts",
    tag = "ota",
    responses((status = 200, description = "Every rollout", body = RolloutList))
)]
pub(crate) async fn list_rollouts(State(state): State<ApiState>) -> Json<RolloutList> {
    Json(RolloutList {
        rollouts: state
            .ota
            .rollouts()
            .into_iter()
            .map(RolloutBody::from)
            .collect(),
    })
}

/// One rollout with its counts per state.
#[utoipa::path(
    get,
    path = "/api/v1/ota/rollouts/{id}",
    tag = "ota",
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, description = "The rollout", body = RolloutBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
    )
)]
pub(crate) async fn get_rollout(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RolloutBody>, ApiError> {
    let view = state
        .ota
        .rollout(&id)
        .ok_or_else(|| ApiError::NotFound(format!("rollout {id} not found")))?;
    Ok(Json(view.into()))
}

/// Query of a rollout's device list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct RolloutDevicesParams {
    /// Only devices in this state (`QUEUED`, `NOTIFIED`, ... `ROLLED_BACK`).
    pub state: Option<String>,
    /// Skip this many (default 0).
    pub offset: Option<usize>,
    /// At most this many (1..=1000, default 100).
    pub limit: Option<String>,
}

/// One device in a rollout. Times are unix ms.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RolloutDeviceBody {
    /// Device id.
    pub device: String,
    /// Its state.
    pub state: String,
    /// Notifications sent to it.
    pub attempts: u32,
    /// When it entered its state or last reported.
    pub since: u64,
    /// Bytes downloaded, as reported.
    pub done: Option<u64>,
    /// Bytes to download, as reported.
    pub total: Option<u64>,
    /// Why its last attempt failed.
    pub reason: Option<String>,
}

/// A page of a rollout's devices.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RolloutDevicePage {
    /// In wave order.
    pub devices: Vec<RolloutDeviceBody>,
    /// Devices matching the query in all.
    pub total: usize,
}

/// A rollout's devices with their states, in wave order.
#[utoipa::path(
    get,
    path = "/api/v1/ota/rollouts/{id}/devices",
    tag = "ota",
    params(("id" = String, Path, description = "Rollout id"), RolloutDevicesParams),
    responses(
        (status = 200, description = "A page of devices", body = RolloutDevicePage),
        (status = 400, description = "Bad state or limit", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
    )
)]
pub(crate) async fn rollout_devices(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<RolloutDevicesParams>,
) -> Result<Json<RolloutDevicePage>, ApiError> {
    let filter = match params.state.as_deref().filter(|s| !s.is_empty()) {
        Some(name) => Some(
            DeviceState::parse(name)
                .ok_or_else(|| ApiError::BadRequest(format!("state: unknown state {name:?}")))?,
        ),
        None => None,
    };
    let limit = crate::dto::parse_limit(params.limit.as_deref())? as usize;
    let offset = params.offset.unwrap_or(0);
    let ota = state.ota.clone();
    // A finished rollout's devices are read from the store.
    let (devices, total) =
        blocking(move || Ok(ota.rollout_devices(&id, filter, offset, limit)?)).await?;
    let devices = devices
        .into_iter()
        .map(|(device, record)| device_body(device, record))
        .collect();
    Ok(Json(RolloutDevicePage { devices, total }))
}

fn device_body(device: String, record: DeviceRecord) -> RolloutDeviceBody {
    RolloutDeviceBody {
        device,
        state: record.state.as_str().to_owned(),
        attempts: record.attempts,
        since: record.since_ms,
        done: record.progress.map(|p| p.done),
        total: record.progress.map(|p| p.total),
        reason: record.reason,
    }
}

async fn control(
    state: ApiState,
    id: String,
    action: RolloutAction,
) -> Result<Json<RolloutBody>, ApiError> {
    let ota = state.ota.clone();
    let view = blocking(move || Ok(ota.control_rollout(&id, action, now_ms())?)).await?;
    Ok(Json(view.into()))
}

/// Pauses a running rollout: no device is notified until it resumes.
#[utoipa::path(
    post,
    path = "/api/v1/ota/rollouts/{id}/pause",
    tag = "ota",
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, description = "Paused", body = RolloutBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 409, description = "Not running", body = ErrorBody),
    )
)]
pub(crate) async fn pause_rollout(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RolloutBody>, ApiError> {
    control(state, id, RolloutAction::Pause).await
}

/// Resumes a paused rollout.
#[utoipa::path(
    post,
    path = "/api/v1/ota/rollouts/{id}/resume",
    tag = "ota",
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, description = "Running again", body = RolloutBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 409, description = "Not paused", body = ErrorBody),
    )
)]
pub(crate) async fn resume_rollout(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RolloutBody>, ApiError> {
    control(state, id, RolloutAction::Resume).await
}

/// Cancels a rollout: queued devices are canceled, notified ones told; devices already
/// installing finish.
#[utoipa::path(
    post,
    path = "/api/v1/ota/rollouts/{id}/cancel",
    tag = "ota",
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, description = "Canceled", body = RolloutBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody),
    )
)]
pub(crate) async fn cancel_rollout(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RolloutBody>, ApiError> {
    control(state, id, RolloutAction::Cancel).await
}

/// A device's signed download URL's query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DownloadParams {
    /// The device the URL was made for.
    pub device: String,
    /// Unix seconds after which the URL is refused.
    pub expires: u64,
    /// The URL's signature (64 hex digits).
    pub sig: String,
}

/// Downloads an artifact with the signed URL of a device's update notification (no bearer
/// token: the signature is the credential). `Range` requests resume a broken download.
#[utoipa::path(
    get,
    path = "/ota/v1/download/{artifact}",
    tag = "ota",
    params(("artifact" = String, Path, description = "Artifact id"), DownloadParams),
    responses(
        (status = 200, description = "The whole image", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range", content_type = "application/octet-stream"),
        (status = 403, description = "Bad or expired signature, disabled device, or no such artifact", body = ErrorBody),
        (status = 416, description = "Range outside the image"),
    )
)]
pub(crate) async fn device_download(
    State(state): State<ApiState>,
    Path(artifact): Path<String>,
    ApiQuery(params): ApiQuery<DownloadParams>,
    request: Request,
) -> Result<Response, ApiError> {
    let ota = state.ota.clone();
    let checked = blocking(move || {
        Ok(ota.check_download(
            &artifact,
            &params.device,
            params.expires,
            &params.sig,
            now_ms(),
        ))
    })
    .await?;
    let (path, throttle) = checked.map_err(|_| ApiError::Other {
        status: StatusCode::FORBIDDEN,
        message: "the download URL is not valid or has expired".into(),
    })?;
    serve_file(path, request, throttle).await
}

/// What devices pin to verify update manifests.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SigningKeyBody {
    /// `ed25519` or `sm2`.
    pub algorithm: String,
    /// Ed25519: the public key (SPKI PEM). SM2: the certificate chain (PEM, leaf first; pin its
    /// root).
    pub pem: String,
}

/// The manifest signing key's public half, for devices to pin.
#[utoipa::path(
    get,
    path = "/api/v1/ota/signing-key",
    tag = "ota",
    responses((status = 200, description = "The public key or chain", body = SigningKeyBody))
)]
pub(crate) async fn signing_key(State(state): State<ApiState>) -> Json<SigningKeyBody> {
    let (algorithm, pem) = state.ota.signing_key();
    Json(SigningKeyBody {
        algorithm: algorithm.to_owned(),
        pem,
    })
}

/// A delta to build.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateDelta {
    /// The base artifact (what devices run).
    pub from: String,
    /// The target artifact.
    pub to: String,
}

/// A delta patch between two artifacts. Times are unix ms.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeltaBody {
    /// `{from}-{to}`.
    pub id: String,
    /// Base artifact.
    pub from: String,
    /// Target artifact.
    pub to: String,
    /// `QUEUED`, `RUNNING`, `DONE` or `FAILED`.
    pub status: String,
    /// `queued`, `reading`, `diffing`, `writing`, `done` or `failed`.
    pub phase: String,
    /// Bytes of the patch (when done).
    pub size: u64,
    /// SHA-256 of the patch, 64 hex digits (when done).
    pub sha256: Option<String>,
    /// `xz` or `zstd` (when done).
    pub codec: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Asked for at.
    pub created_at: u64,
    /// Finished at.
    pub finished_at: Option<u64>,
}

impl From<myriad_fleet::store::ota::DeltaRecord> for DeltaBody {
    fn from(d: myriad_fleet::store::ota::DeltaRecord) -> Self {
        let done = d.status == myriad_fleet::store::ota::DeltaStatus::Done;
        DeltaBody {
            sha256: done.then(|| hex(&d.sha256)),
            codec: done.then(|| d.codec.clone()),
            error: (!d.error.is_empty()).then(|| d.error.clone()),
            finished_at: (d.finished_ms != 0).then_some(d.finished_ms),
            status: d.status.as_str().to_owned(),
            id: d.id,
            from: d.from,
            to: d.to,
            phase: d.phase,
            size: d.size,
            created_at: d.created_ms,
        }
    }
}

/// Every delta.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeltaList {
    /// In id order.
    pub deltas: Vec<DeltaBody>,
}

/// Asks for the delta patch between two artifacts of one hardware type: built in the
/// background (poll it), cached; asking again returns the same delta.
#[utoipa::path(
    post,
    path = "/api/v1/ota/deltas",
    tag = "ota",
    request_body = CreateDelta,
    responses(
        (status = 200, description = "Already built", body = DeltaBody),
        (status = 202, description = "Queued or being built", body = DeltaBody),
        (status = 400, description = "Unknown artifact, same artifact, other hardware type, image too large", body = ErrorBody),
        (status = 429, description = "Too many deltas waiting", body = ErrorBody),
    )
)]
pub(crate) async fn create_delta(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateDelta>,
) -> Result<(StatusCode, Json<DeltaBody>), ApiError> {
    let ota = state.ota.clone();
    let delta = blocking(move || Ok(ota.request_delta(&body.from, &body.to, now_ms())?)).await?;
    let status = if delta.status == myriad_fleet::store::ota::DeltaStatus::Done {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(delta.into())))
}

/// Lists every delta.
#[utoipa::path(
    get,
    path = "/api/v1/ota/deltas",
    tag = "ota",
    responses((status = 200, description = "Every delta", body = DeltaList))
)]
pub(crate) async fn list_deltas(
    State(state): State<ApiState>,
) -> Result<Json<DeltaList>, ApiError> {
    let deltas = state
        .ota
        .deltas()?
        .into_iter()
        .map(DeltaBody::from)
        .collect();
    Ok(Json(DeltaList { deltas }))
}

/// One delta: status and phase while it is built.
#[utoipa::path(
    get,
    path = "/api/v1/ota/deltas/{id}",
    tag = "ota",
    params(("id" = String, Path, description = "Delta id")),
    responses(
        (status = 200, description = "The delta", body = DeltaBody),
        (status = 404, description = "No such delta", body = ErrorBody),
    )
)]
pub(crate) async fn get_delta(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<DeltaBody>, ApiError> {
    let delta = state
        .ota
        .delta(&id)?
        .ok_or_else(|| ApiError::NotFound(format!("delta {id} not found")))?;
    Ok(Json(delta.into()))
}

/// Downloads a built delta patch (our container format); `Range` resumes.
#[utoipa::path(
    get,
    path = "/api/v1/ota/deltas/{id}/content",
    tag = "ota",
    params(("id" = String, Path, description = "Delta id")),
    responses(
        (status = 200, description = "The patch", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range", content_type = "application/octet-stream"),
        (status = 404, description = "No such delta, or not built yet", body = ErrorBody),
    )
)]
pub(crate) async fn delta_content(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let delta = state
        .ota
        .delta(&id)?
        .filter(|d| d.status == myriad_fleet::store::ota::DeltaStatus::Done);
    let delta = delta
        .ok_or_else(|| ApiError::NotFound(format!("delta {id} not found or not built yet")))?;
    serve_file(state.ota.delta_path(&delta.id), request, None).await
}
