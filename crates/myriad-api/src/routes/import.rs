//! `POST /api/v1/devices/import`: streaming bulk provisioning.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use myriad_fleet::import::{ImportError, ImportOptions, import};
use myriad_fleet::service::devices::Revocation;
use myriad_fleet::service::now_ms;

use crate::blocking::blocking;
use crate::body_reader::bounded_reader;
use crate::dto::{ErrorBody, ImportParams, ImportReportBody};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::ApiState;

/// Largest import body, 512 MiB.
pub(crate) const IMPORT_BODY_LIMIT: u64 = 512 * 1024 * 1024;

/// Imports devices from a CSV or JSON-lines body, streamed: the body is
/// parsed as it arrives and inserted in batches of 1,000 rows, so memory
/// stays bounded whatever its size. Good rows land; bad rows are reported
/// by line (1-based line numbers of the file; a quoted CSV field may span
/// lines). With `upsert=true` a row whose id exists updates that device
/// (an updated device whose password changed or that was disabled loses
/// its open connection). CSV columns: `id` (required), `name`, `enabled`, `groups`
/// (`;`-separated), `attributes` (`k=v;k=v`), `password` or
/// `password_hash` (an Argon2 PHC string; prefer it for big files, a plain
/// password costs an Argon2 hash per row). JSON lines: the fields of a new
/// device plus `password` or `password_hash`.
#[utoipa::path(
    post,
    path = "/api/v1/devices/import",
    tag = "devices",
    params(ImportParams),
    request_body(
        description = "The file: CSV with a header row, or one JSON object a line",
        content((String = "text/csv"), (String = "application/x-ndjson"))
    ),
    responses(
        (status = 200, description = "What was imported, and the bad rows", body = ImportReportBody),
        (status = 400, description = "Bad format parameter, CSV header, or unreadable body", body = ErrorBody),
        (status = 413, description = "Body larger than 512 MiB", body = ErrorBody),
    )
)]
pub(crate) async fn import_devices(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<ImportParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ImportReportBody>, ApiError> {
    let format = params.format()?;
    let upsert = params.upsert()?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > IMPORT_BODY_LIMIT) {
        return Err(too_large());
    }
    let body = bounded_reader(body, IMPORT_BODY_LIMIT)?;
    let exceeded = body.exceeded;
    let reader = body.reader;
    let options = ImportOptions {
        hash_params: state.hash_params,
        upsert,
        ..ImportOptions::new(format, now_ms())
    };
    let admin = state.devices.clone();
    let outcome = blocking(move || Ok(import(&state.store, reader, &options))).await?;
    match outcome {
        Ok(mut report) => {
            // Updated devices whose password changed or that were disabled
            // lose their open connection, as with the single-device routes.
            for (device, disabled) in std::mem::take(&mut report.revoked) {
                let why = if disabled {
                    Revocation::Disabled
                } else {
                    Revocation::PasswordChanged
                };
                admin.revoke(&device, why).await;
            }
            Ok(Json(report.into()))
        }
        Err(_) if exceeded.load(Ordering::Relaxed) => Err(too_large()),
        Err(error @ (ImportError::Header(_) | ImportError::Read { .. })) => {
            Err(ApiError::BadRequest(error.to_string()))
        }
        Err(ImportError::Store { source, imported }) => Err(ApiError::Internal(format!(
            "store: {source} ({imported} devices imported before)"
        ))),
    }
}

/// The 413 of this route.
fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "the import body is larger than {} MiB",
        IMPORT_BODY_LIMIT / (1024 * 1024)
    ))
}
