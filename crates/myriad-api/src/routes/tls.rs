//! `POST /api/v1/tls/reload`: reads every TLS listener's certificate, key
//! and CAs again, as SIGHUP does, without touching connections already made.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use myriad_broker::shell::tls::TlsSetupError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::dto::ErrorBody;
use crate::error::ApiError;
use crate::state::ApiState;

/// Reloads the files of every TLS listener (the MQTT listeners' and the
/// HTTP API's own) and says how each went: what the server runs on SIGHUP.
pub type TlsReloader = Arc<dyn Fn() -> Vec<TlsReloadOutcome> + Send + Sync>;

/// How one listener's reload went.
#[derive(Debug)]
pub struct TlsReloadOutcome {
    /// The listener: its configured address, `api` for the HTTP API (the
    /// `listener` label of the TLS metrics).
    pub listener: String,
    /// `Err`: the file that did not load and why; the listener's settings
    /// in force stay.
    pub result: Result<(), TlsSetupError>,
}

/// The answer when every TLS listener reloaded.
#[derive(Debug, Serialize, ToSchema)]
pub struct TlsReloadReport {
    /// Every TLS listener, in configuration order (the HTTP API last);
    /// empty when none is configured.
    pub listeners: Vec<TlsListenerReloaded>,
}

/// One listener that reloaded.
#[derive(Debug, Serialize, ToSchema)]
pub struct TlsListenerReloaded {
    /// Its configured address, `api` for the HTTP API.
    pub listener: String,
    /// Always `true` here: new connections get the files read now.
    pub reloaded: bool,
}

/// Reads the certificate, key and CAs of every TLS listener again (the
/// MQTT listeners' and the HTTP API's own), as SIGHUP does. Connections
/// already made keep what they negotiated; new ones get the new files. A
/// listener whose files do not load keeps the settings in force, and the
/// answer is 500 naming the file and the problem (the other listeners are
/// reloaded all the same).
#[utoipa::path(
    post,
    path = "/api/v1/tls/reload",
    tag = "tls",
    responses(
        (status = 200, description = "Every TLS listener reloaded", body = TlsReloadReport),
        (status = 500, description = "A listener's files did not load (file and reason in the \
                                      message); its settings in force stay", body = ErrorBody),
    )
)]
pub(crate) async fn reload_tls(
    State(state): State<ApiState>,
) -> Result<Json<TlsReloadReport>, ApiError> {
    let reload = state.tls_reload.clone();
    // Reads files: keep it off the runtime's workers.
    let outcomes = tokio::task::spawn_blocking(move || reload())
        .await
        .map_err(|e| ApiError::Internal(format!("the TLS reload failed: {e}")))?;
    report(outcomes).map(Json)
}

/// The answer for `outcomes`: the report, or the error naming each failure.
fn report(outcomes: Vec<TlsReloadOutcome>) -> Result<TlsReloadReport, ApiError> {
    let mut failures = Vec::new();
    let mut reloaded = Vec::new();
    for outcome in outcomes {
        match outcome.result {
            Ok(()) => reloaded.push(outcome.listener),
            Err(error) => failures.push(format!("{}: {error}", outcome.listener)),
        }
    }
    if !failures.is_empty() {
        let reloaded = match reloaded.is_empty() {
            true => "none".to_owned(),
            false => reloaded.join(", "),
        };
        return Err(ApiError::Internal(format!(
            "TLS reload failed for listener {}; the settings in force stay there (reloaded: {reloaded})",
            failures.join("; listener ")
        )));
    }
    Ok(TlsReloadReport {
        listeners: reloaded
            .into_iter()
            .map(|listener| TlsListenerReloaded {
                listener,
                reloaded: true,
            })
            .collect(),
    })
}
