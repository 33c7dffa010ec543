//! The device registry's types: devices, application clients, searches and
//! pages.
//!
//! Everything here is plain data with validation; [`crate::store`] keeps it
//! on disk and the HTTP API (de)serializes it as JSON.
//!
//! - [`DeviceId`] / [`AppId`]: validated names, 1 to [`MAX_ID_LEN`] bytes of
//!   `[A-Za-z0-9_.:-]`. Device ids and app ids share one namespace in the
//!   store (a name is either a device or an app), so an MQTT username names
//!   exactly one principal.
//! - [`Device`], [`NewDevice`], [`DevicePatch`]: a device, what creates one,
//!   and a partial update.
//! - [`DeviceQuery`] and [`Page`]: searches with cursor paging.
//! - [`AppClient`] and [`NewAppClient`]: applications and admin clients that
//!   connect over MQTT with their own credentials and wider ACLs.
//!
//! # Limits
//!
//! | what | limit |
//! |---|---|
//! | id, app id, group name | 1..=[`MAX_ID_LEN`] bytes of `[A-Za-z0-9_.:-]` |
//! | device name | at most [`MAX_NAME_LEN`] bytes |
//! | attributes | at most [`MAX_ATTRIBUTES`]; keys 1..=[`MAX_ATTRIBUTE_KEY_LEN`] bytes of `[A-Za-z0-9_.:-]`; values at most [`MAX_ATTRIBUTE_VALUE_LEN`] bytes, no control characters |
//! | groups | at most [`MAX_GROUPS`] per device |
//! | app filters | at most [`MAX_APP_FILTERS`] per list, each a valid MQTT filter of at most [`MAX_FILTER_LEN`] bytes |
//! | page size | 1..=[`MAX_PAGE_LIMIT`], default [`DEFAULT_PAGE_LIMIT`] |

mod app;
mod device;
mod error;
mod id;
mod query;

pub use app::{AppClient, NewAppClient};
pub use device::{Device, DevicePatch, NewDevice};
pub use error::{IdError, ValidationError};
pub use id::{AppId, DeviceId, validate_name};
pub use query::{DEFAULT_PAGE_LIMIT, DeviceQuery, MAX_PAGE_LIMIT, Page};

/// Longest device id, app id or group name, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest device name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Most attributes (tags) a device may carry.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute key, in bytes.
pub const MAX_ATTRIBUTE_KEY_LEN: usize = 64;
/// Longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 256;
/// Most groups a device may be in.
pub const MAX_GROUPS: usize = 64;
/// Most filters in an app client's publish or subscribe list.
pub const MAX_APP_FILTERS: usize = 64;
/// Longest filter in an app client's lists, in bytes.
pub const MAX_FILTER_LEN: usize = 1024;
