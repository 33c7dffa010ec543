//! Request and response bodies and query strings of the API that are not
//! the fleet's own types (those are documented by [`crate::schema`]).

mod accounts;
mod app;
mod command;
mod device;
mod import;
mod paging;
mod presence;
mod shadow;

pub(crate) use accounts::{
    AuditPageBody, AuditParams, CreateToken, CreateUser, CreatedToken, LoginBody, SessionBody,
    SetPassword, TokenList, UpdateUser, UserBody, UserListParams, UserPage,
};
pub(crate) use app::{AppList, CreateApp, UpdateApp};
pub(crate) use command::{BatchAccepted, CommandListParams, CommandPage, SendBatch, SendCommand};
pub(crate) use device::{
    CreateDevice, DeviceListParams, Disconnected, GroupCount, GroupListParams, GroupPage,
    PasswordBody, check_password,
};
pub(crate) use import::{ImportParams, ImportReportBody};
pub(crate) use paging::parse_limit;
pub(crate) use presence::{OnlinePage, PresenceCount, PresenceListParams};
pub(crate) use shadow::ShadowPatch;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error response: `{"status": 404, "message": "device d1 not found"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The HTTP status, again.
    pub status: u16,
    /// What went wrong, in plain words.
    pub message: String,
}

/// The health check's answer: `{"status": "ok"}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Health {
    /// Always `"ok"`.
    pub status: &'static str,
}

/// Treats an empty query value (`?group=`) like an absent one.
pub(crate) fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}
