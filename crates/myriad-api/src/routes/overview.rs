//! `GET /api/v1/overview`: the platform's numbers now, the last hour of
//! samples and the last presence changes.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::console::{OverviewNow, OverviewPoint};
use crate::error::ApiError;
use crate::state::ApiState;

/// A presence change.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PresenceChangeBody {
    /// The device.
    device: String,
    /// Whether it went online.
    online: bool,
    /// When (unix ms).
    at_ms: u64,
    /// Why it went offline (`null` when online).
    reason: Option<String>,
}

/// The overview page's data.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OverviewBody {
    /// The numbers now.
    now: OverviewNow,
    /// The last hour, one sample every 5 s, oldest first.
    history: Vec<OverviewPoint>,
    /// The last 50 presence changes, newest first.
    recent_presence: Vec<PresenceChangeBody>,
}

/// Connections, sessions, devices online and registered, message rates, drops, store commit
/// latency and watchdog alerts now; one sample every 5 s over the last hour; the last 50
/// presence changes.
#[utoipa::path(
    get,
    path = "/api/v1/overview",
    tag = "console",
    responses((status = 200, description = "The overview", body = OverviewBody))
)]
pub(crate) async fn overview(
    State(state): State<ApiState>,
) -> Result<Json<OverviewBody>, ApiError> {
    let report = state.console.overview.overview();
    let recent_presence = state
        .console
        .journal
        .recent_presence()
        .into_iter()
        .map(|p| PresenceChangeBody {
            device: p.device,
            online: p.online,
            at_ms: p.at_ms,
            reason: p.reason,
        })
        .collect();
    Ok(Json(OverviewBody {
        now: report.now,
        history: report.history,
        recent_presence,
    }))
}
