//! What each command asks of the API, as a plain description
//! ([`ApiRequest`]) built without any I/O, so the mapping from arguments
//! to requests is testable on its own. [`super::client`] sends it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use super::args::{
    ApiCommand, AppsCommand, DeviceCreate, DeviceImport, DeviceList, DeviceUpdate, DevicesCommand,
    ImportFormat, PageArgs, PresenceCommand, ShadowCommand, TlsCommand,
};
use super::encode::{percent_encode, query_string};

/// The prefix of every API path.
pub const API_PREFIX: &str = "/api/v1";

/// An HTTP method the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `PATCH`
    Patch,
    /// `DELETE`
    Delete,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// The body of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiBody {
    /// No body.
    Empty,
    /// A JSON document (`Content-Type: application/json`).
    Json(Value),
    /// Bytes already in memory (`ctl telemetry write -`).
    Bytes {
        /// The body.
        data: Vec<u8>,
        /// Its `Content-Type`.
        content_type: &'static str,
    },
    /// A file uploaded as `application/octet-stream`, streamed from disk, with a progress
    /// bar on standard error when it is a terminal.
    Upload {
        /// The file.
        path: PathBuf,
    },
    /// A file, streamed from disk as it is sent.
    File {
        /// The file.
        path: PathBuf,
        /// Its `Content-Type`.
        content_type: &'static str,
    },
}

/// One API request, described: method, path (segments already
/// percent-encoded, starting with [`API_PREFIX`]), query pairs (not yet
/// encoded) and body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    /// The method.
    pub method: Method,
    /// The path, e.g. `/api/v1/devices/d1`.
    pub path: String,
    /// Query parameters in order, unencoded.
    pub query: Vec<(String, String)>,
    /// The body.
    pub body: ApiBody,
}

impl ApiRequest {
    pub(super) fn new(method: Method, path: String) -> Self {
        ApiRequest {
            method,
            path,
            query: Vec::new(),
            body: ApiBody::Empty,
        }
    }

    pub(super) fn json(mut self, body: Value) -> Self {
        self.body = ApiBody::Json(body);
        self
    }

    pub(super) fn param(mut self, key: &str, value: Option<impl ToString>) -> Self {
        if let Some(value) = value {
            self.query.push((key.to_string(), value.to_string()));
        }
        self
    }

    /// The same request with the query parameter `key` set to `value`
    /// (replacing any earlier value): how `--all` asks for the next page.
    pub fn with_param(mut self, key: &str, value: &str) -> Self {
        self.query.retain(|(k, _)| k != key);
        self.query.push((key.to_string(), value.to_string()));
        self
    }

    /// The full URL against the API's base URL (`http://host:port`,
    /// optionally with a path prefix; a trailing `/` is ignored).
    pub fn url(&self, base: &str) -> String {
        let mut url = format!("{}{}", base.trim_end_matches('/'), self.path);
        if !self.query.is_empty() {
            url.push('?');
            url.push_str(&query_string(&self.query));
        }
        url
    }
}

/// Whether the command asks to follow `next` through every page.
pub fn follows_all_pages(command: &ApiCommand) -> bool {
    match command {
        ApiCommand::Devices(DevicesCommand::List(list)) => list.page.all,
        ApiCommand::Presence(PresenceCommand::List(page)) => page.all,
        ApiCommand::Devices(DevicesCommand::Groups(page)) => page.all,
        _ => false,
    }
}

/// The request a command sends (the first one, for `--all`).
///
/// Fails only on what the arguments alone show to be wrong (an update that
/// changes nothing, an import file of unknown format) or on a password
/// still to be read from standard input (see [`super::password`]).
pub fn request(command: &ApiCommand) -> Result<ApiRequest> {
    Ok(match command {
        ApiCommand::Devices(cmd) => devices(cmd)?,
        ApiCommand::Presence(cmd) => presence(cmd),
        ApiCommand::Shadow(cmd) => shadow(cmd),
        ApiCommand::Apps(cmd) => apps(cmd)?,
        ApiCommand::Commands(cmd) => super::commands::request(cmd),
        ApiCommand::DeviceCerts(cmd) => super::registry_certs::device_certs_request(cmd)?,
        ApiCommand::Cas(cmd) => super::registry_certs::cas_request(cmd)?,
        ApiCommand::Telemetry(cmd) => super::telemetry::request(cmd)?,
        ApiCommand::Pipelines(cmd) => super::pipelines::request(cmd)?,
        ApiCommand::Users(cmd) => super::users::request(cmd)?,
        ApiCommand::Audit(args) => super::users::audit_request(args),
        ApiCommand::Debug(cmd) => super::debug::request(cmd),
        ApiCommand::Tls(TlsCommand::Reload) => {
            ApiRequest::new(Method::Post, format!("{API_PREFIX}/tls/reload"))
        }
    })
}

fn devices_path() -> String {
    format!("{API_PREFIX}/devices")
}

fn device_path(id: &str) -> String {
    format!("{API_PREFIX}/devices/{}", percent_encode(id))
}

fn devices(cmd: &DevicesCommand) -> Result<ApiRequest> {
    Ok(match cmd {
        DevicesCommand::Create(create) => device_create(create)?,
        DevicesCommand::Get(arg) => ApiRequest::new(Method::Get, device_path(&arg.id)),
        DevicesCommand::List(list) => device_list(list),
        DevicesCommand::Update(update) => device_update(update)?,
        DevicesCommand::Delete(arg) => ApiRequest::new(Method::Delete, device_path(&arg.id)),
        DevicesCommand::SetPassword(set) => {
            let password = required_password(set.password.password.as_deref())?;
            ApiRequest::new(Method::Put, format!("{}/password", device_path(&set.id)))
                .json(json!({ "password": password }))
        }
        DevicesCommand::Kick(arg) => {
            ApiRequest::new(Method::Post, format!("{}/disconnect", device_path(&arg.id)))
        }
        DevicesCommand::Import(import) => device_import(import)?,
        DevicesCommand::Groups(page) => {
            ApiRequest::new(Method::Get, format!("{API_PREFIX}/groups")).pages(page)
        }
    })
}

fn device_create(create: &DeviceCreate) -> Result<ApiRequest> {
    if create.password.password_stdin && create.password.password.is_none() {
        bail!("the password has not been read from standard input yet");
    }
    let attributes: BTreeMap<&str, &str> = create
        .attrs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut body = json!({
        "id": create.id,
        "name": create.name.as_deref().unwrap_or(""),
        "attributes": attributes,
        "groups": create.groups,
        "enabled": !create.disabled,
    });
    if let (Some(password), Value::Object(map)) = (&create.password.password, &mut body) {
        map.insert("password".into(), Value::String(password.clone()));
    }
    Ok(ApiRequest::new(Method::Post, devices_path()).json(body))
}

fn device_list(list: &DeviceList) -> ApiRequest {
    let attribute = list.attr.as_ref().map(|(k, v)| format!("{k}={v}"));
    ApiRequest::new(Method::Get, devices_path())
        .param("id_prefix", list.prefix.as_ref())
        .param("name_contains", list.name_contains.as_ref())
        .param("attribute", attribute)
        .param("group", list.group.as_ref())
        .param("enabled", list.enabled)
        .pages(&list.page)
}

impl ApiRequest {
    fn pages(self, page: &PageArgs) -> Self {
        self.param("limit", page.limit)
            .param("after", page.after.as_ref())
    }
}

fn device_update(update: &DeviceUpdate) -> Result<ApiRequest> {
    let mut patch = Map::new();
    if let Some(name) = &update.name {
        patch.insert("name".into(), json!(name));
    }
    if !update.attrs.is_empty() || !update.unset_attrs.is_empty() {
        let mut attributes = Map::new();
        for (key, value) in &update.attrs {
            attributes.insert(key.clone(), json!(value));
        }
        for key in &update.unset_attrs {
            if attributes.contains_key(key) {
                bail!("attribute {key:?} is both set (--attr) and removed (--unset-attr)");
            }
            attributes.insert(key.clone(), Value::Null);
        }
        patch.insert("attributes".into(), Value::Object(attributes));
    }
    if !update.groups.is_empty() || update.clear_groups {
        patch.insert("groups".into(), json!(update.groups));
    }
    if update.enable || update.disable {
        patch.insert("enabled".into(), json!(update.enable));
    }
    if patch.is_empty() {
        bail!(
            "nothing to update: give --name, --attr, --unset-attr, --group, --clear-groups, \
             --enable or --disable"
        );
    }
    Ok(ApiRequest::new(Method::Patch, device_path(&update.id)).json(Value::Object(patch)))
}

fn device_import(import: &DeviceImport) -> Result<ApiRequest> {
    let format = match import.format {
        Some(format) => format,
        None => format_from_extension(&import.file)?,
    };
    let mut request = ApiRequest::new(Method::Post, format!("{}/import", devices_path()))
        .param("format", Some(format.as_str()))
        .param("upsert", import.upsert.then_some("true"));
    request.body = ApiBody::File {
        path: import.file.clone(),
        content_type: format.content_type(),
    };
    Ok(request)
}

/// The import format a file's extension names (`.csv`; `.jsonl` or
/// `.ndjson`), case-insensitively.
pub fn format_from_extension(path: &Path) -> Result<ImportFormat> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("csv") => Ok(ImportFormat::Csv),
        Some("jsonl" | "ndjson") => Ok(ImportFormat::Jsonl),
        _ => bail!(
            "cannot tell the format of {} from its extension: give --format csv or --format jsonl",
            path.display()
        ),
    }
}

fn presence(cmd: &PresenceCommand) -> ApiRequest {
    match cmd {
        PresenceCommand::Get(arg) => {
            ApiRequest::new(Method::Get, format!("{}/presence", device_path(&arg.id)))
        }
        PresenceCommand::List(page) => {
            ApiRequest::new(Method::Get, format!("{API_PREFIX}/presence")).pages(page)
        }
        PresenceCommand::Count => {
            ApiRequest::new(Method::Get, format!("{API_PREFIX}/presence/count"))
        }
    }
}

fn shadow(cmd: &ShadowCommand) -> ApiRequest {
    let path = |id: &str| format!("{}/shadow", device_path(id));
    match cmd {
        ShadowCommand::Get(arg) => ApiRequest::new(Method::Get, path(&arg.id)),
        ShadowCommand::SetDesired(set) => {
            let mut body = Map::new();
            body.insert("desired".into(), set.desired.clone());
            if let Some(version) = set.version {
                body.insert("version".into(), json!(version));
            }
            if let Some(token) = &set.client_token {
                body.insert("clientToken".into(), json!(token));
            }
            ApiRequest::new(Method::Patch, path(&set.id)).json(Value::Object(body))
        }
        ShadowCommand::Delete(arg) => ApiRequest::new(Method::Delete, path(&arg.id)),
    }
}

fn apps(cmd: &AppsCommand) -> Result<ApiRequest> {
    let apps_path = format!("{API_PREFIX}/apps");
    let app_path = |id: &str| format!("{API_PREFIX}/apps/{}", percent_encode(id));
    Ok(match cmd {
        AppsCommand::Create(create) => {
            let password = required_password(create.password.password.as_deref())?;
            ApiRequest::new(Method::Post, apps_path).json(json!({
                "id": create.id,
                "name": create.name.as_deref().unwrap_or(""),
                "publish": create.publish,
                "subscribe": create.subscribe,
                "admin": create.admin,
                "password": password,
            }))
        }
        AppsCommand::List => ApiRequest::new(Method::Get, apps_path),
        AppsCommand::Get(arg) => ApiRequest::new(Method::Get, app_path(&arg.id)),
        AppsCommand::Update(update) => {
            let mut body = Map::new();
            if let Some(name) = &update.name {
                body.insert("name".into(), json!(name));
            }
            if !update.publish.is_empty() || update.clear_publish {
                body.insert("publish".into(), json!(update.publish));
            }
            if !update.subscribe.is_empty() || update.clear_subscribe {
                body.insert("subscribe".into(), json!(update.subscribe));
            }
            if update.admin || update.no_admin {
                body.insert("admin".into(), json!(update.admin));
            }
            if update.password.password_stdin && update.password.password.is_none() {
                bail!("the password has not been read from standard input yet");
            }
            if let Some(password) = &update.password.password {
                body.insert("password".into(), json!(password));
            }
            if body.is_empty() {
                bail!(
                    "nothing to change: give --name, --publish, --subscribe, --admin or a password"
                );
            }
            ApiRequest::new(Method::Patch, app_path(&update.id)).json(Value::Object(body))
        }
        AppsCommand::Delete(arg) => ApiRequest::new(Method::Delete, app_path(&arg.id)),
    })
}

fn required_password(password: Option<&str>) -> Result<&str> {
    password.context("a password is required: give --password or --password-stdin")
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
