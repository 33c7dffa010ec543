//! Bodies and query strings of the presence routes.

use myriad_fleet::registry::DeviceId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Paging through the online devices.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PresenceListParams {
    /// Cursor: the `next` of the previous page.
    pub after: Option<String>,
    /// Page size, 1..=1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

/// One page of online device ids, in id order, and how many are online.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OnlinePage {
    /// Ids of online devices.
    #[schema(value_type = Vec<String>)]
    pub items: Vec<DeviceId>,
    /// The cursor of the next page; `null` on the last one.
    #[schema(value_type = Option<String>)]
    pub next: Option<DeviceId>,
    /// How many devices are online in all.
    pub online: u64,
}

/// How many devices are online, and how many are registered.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PresenceCount {
    /// Devices connected now.
    pub online: u64,
    /// Devices registered.
    pub devices: u64,
}
