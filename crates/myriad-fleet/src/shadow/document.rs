//! The shadow document of one device and the updates applied to it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::delta::{compute_delta, delta_metadata};
use super::error::{Section, ShadowError, UpdateRejected};
use super::merge::{merge_section, sent_metadata, stamp};
use super::request::{SectionUpdate, ShadowLimits, UpdateRequest, exceeds_depth, serialized_len};

/// Per-field timestamps of a shadow, mirroring the structure of its
/// `desired` and `reported` objects: every non-object value (scalar or
/// array) maps to `{"timestamp": unix_millis}` of its last write.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ShadowMetadata {
    /// Timestamps of `desired`.
    pub desired: Map<String, Value>,
    /// Timestamps of `reported`.
    pub reported: Map<String, Value>,
}

/// The shadow of one device: its desired and reported state, their
/// per-field timestamps and a version incremented by every accepted update.
///
/// Serializable with serde so a store can persist it as bytes. Sans-IO:
/// every method takes the current time (`now_ms`, unix milliseconds) as an
/// argument.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Shadow {
    desired: Map<String, Value>,
    reported: Map<String, Value>,
    metadata: ShadowMetadata,
    version: u64,
    updated_at: u64,
    /// Deleted ([`Shadow::delete`]): no state, but the version stays, so
    /// the next shadow starts above it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

/// The outcome of an accepted update: the messages to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateAccepted {
    /// The shadow's version after the update.
    pub version: u64,
    /// The `update/accepted` document:
    /// `{"state": {what was sent}, "metadata": {timestamps of the fields sent},
    /// "version": v, "timestamp": now_ms, "clientToken"?}`.
    pub accepted: Value,
    /// The `update/delta` document to push to the device, present when the
    /// update touched `desired` and `desired` still differs from `reported`
    /// (the whole current delta, as [`Shadow::delta_message`], plus the
    /// request's `clientToken`).
    pub delta: Option<Value>,
    /// The `update/documents` document: `{"previous": {..}, "current": {..},
    /// "timestamp": now_ms, "clientToken"?}`, each side being
    /// `{"state": {"desired", "reported"}, "metadata": {"desired", "reported"}, "version"}`.
    pub documents: Value,
}

impl Shadow {
    /// An empty shadow at version 0.
    pub fn new() -> Self {
        Shadow::default()
    }

    /// The current version: 0 for a new shadow, +1 per accepted update.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When the last accepted update happened (unix milliseconds; 0 if never).
    pub fn updated_at(&self) -> u64 {
        self.updated_at
    }

    /// The desired state.
    pub fn desired(&self) -> &Map<String, Value> {
        &self.desired
    }

    /// The reported state.
    pub fn reported(&self) -> &Map<String, Value> {
        &self.reported
    }

    /// The per-field timestamps.
    pub fn metadata(&self) -> &ShadowMetadata {
        &self.metadata
    }

    /// The current delta (see [`compute_delta`]).
    pub fn delta(&self) -> Map<String, Value> {
        compute_delta(&self.desired, &self.reported)
    }

    /// Parses and applies an AWS-format update request
    /// (`{"state": {"desired": .., "reported": ..}, "version": N, "clientToken": ".."}`).
    ///
    /// On success the version is incremented and `updated_at` set to
    /// `now_ms`. On rejection the shadow is unchanged: see
    /// [`UpdateRequest::parse`] and [`Shadow::apply_request`] for the rules.
    pub fn apply_update(
        &mut self,
        request_bytes: &[u8],
        now_ms: u64,
        limits: &ShadowLimits,
    ) -> Result<UpdateAccepted, UpdateRejected> {
        let request = UpdateRequest::parse(request_bytes, limits)?;
        self.apply_request(request, now_ms, limits)
    }

    /// Applies an already parsed update request.
    ///
    /// Checks, in order: the depth of each section sent (400), the
    /// expected `version` (409 when it differs from the current one) and the
    /// size of the resulting document (413). A rejection leaves the shadow
    /// unchanged and echoes the request's `clientToken`.
    pub fn apply_request(
        &mut self,
        request: UpdateRequest,
        now_ms: u64,
        limits: &ShadowLimits,
    ) -> Result<UpdateAccepted, UpdateRejected> {
        let UpdateRequest {
            desired,
            reported,
            version,
            client_token,
        } = request;
        let reject = |reason: ShadowError| UpdateRejected::new(reason, client_token.clone());

        for (section, update) in [(Section::Desired, &desired), (Section::Reported, &reported)] {
            if let SectionUpdate::Merge(patch) = update
                && exceeds_depth(patch, limits.max_depth)
            {
                return Err(reject(ShadowError::TooDeep {
                    section,
                    max: limits.max_depth,
                }));
            }
        }
        if let Some(expected) = version
            && expected != self.version
        {
            return Err(reject(ShadowError::VersionConflict {
                expected,
                current: self.version,
            }));
        }
        let new_version = self
            .version
            .checked_add(1)
            .ok_or_else(|| reject(ShadowError::VersionExhausted))?;

        // Build the new sections aside, so a rejection changes nothing.
        let new_desired = apply_section(&self.desired, &self.metadata.desired, &desired, now_ms);
        let new_reported =
            apply_section(&self.reported, &self.metadata.reported, &reported, now_ms);
        // Each section against its own limit, and only the sections this
        // update changes: one that was within a limit since lowered never
        // blocks updates to the other.
        for (section, changed, max) in [
            (Section::Desired, &new_desired, limits.max_desired_bytes),
            (Section::Reported, &new_reported, limits.max_reported_bytes),
        ] {
            if let Some((state, _)) = changed {
                let size = serialized_len(state);
                if size > max {
                    return Err(reject(ShadowError::DocumentTooLarge { section, size, max }));
                }
            }
        }

        let previous = self.snapshot();
        if let Some((state, meta)) = new_desired {
            self.desired = state;
            self.metadata.desired = meta;
        }
        if let Some((state, meta)) = new_reported {
            self.reported = state;
            self.metadata.reported = meta;
        }
        self.version = new_version;
        self.updated_at = now_ms;
        self.deleted = false;

        let touched_desired = !desired.is_keep();
        let mut state = Map::new();
        let mut metadata = Map::new();
        for (section, update) in [(Section::Desired, desired), (Section::Reported, reported)] {
            let (sent, sent_meta) = match update {
                SectionUpdate::Keep => continue,
                SectionUpdate::Delete => (Value::Null, stamp(now_ms)),
                SectionUpdate::Merge(patch) => {
                    let meta = sent_metadata(&patch, now_ms);
                    (Value::Object(patch), Value::Object(meta))
                }
            };
            state.insert(section.key().into(), sent);
            metadata.insert(section.key().into(), sent_meta);
        }
        let accepted = envelope(
            json!({
                "state": state,
                "metadata": metadata,
                "version": new_version,
                "timestamp": now_ms,
            }),
            client_token.as_deref(),
        );
        let delta = if touched_desired {
            self.delta_message(now_ms)
                .map(|message| envelope(message, client_token.as_deref()))
        } else {
            None
        };
        let documents = envelope(
            json!({
                "previous": previous,
                "current": self.snapshot(),
                "timestamp": now_ms,
            }),
            client_token.as_deref(),
        );
        Ok(UpdateAccepted {
            version: new_version,
            accepted,
            delta,
            documents,
        })
    }

    /// Sets `desired` as an update `{"state": {"desired": desired}, "version": expected_version}`
    /// would (for the HTTP API): `desired` is an object to merge or `null`
    /// to delete the section, with the same checks, including
    /// `limits.max_request_bytes` on its serialized size.
    pub fn update_desired(
        &mut self,
        desired: Value,
        expected_version: Option<u64>,
        now_ms: u64,
        limits: &ShadowLimits,
    ) -> Result<UpdateAccepted, UpdateRejected> {
        self.update_section(Section::Desired, desired, expected_version, now_ms, limits)
    }

    /// Sets `reported` as an update `{"state": {"reported": reported}, "version": expected_version}`
    /// would; see [`Shadow::update_desired`].
    pub fn update_reported(
        &mut self,
        reported: Value,
        expected_version: Option<u64>,
        now_ms: u64,
        limits: &ShadowLimits,
    ) -> Result<UpdateAccepted, UpdateRejected> {
        self.update_section(
            Section::Reported,
            reported,
            expected_version,
            now_ms,
            limits,
        )
    }

    fn update_section(
        &mut self,
        section: Section,
        value: Value,
        expected_version: Option<u64>,
        now_ms: u64,
        limits: &ShadowLimits,
    ) -> Result<UpdateAccepted, UpdateRejected> {
        let mut request = Map::new();
        request.insert("state".into(), json!({ section.key(): value }));
        if let Some(version) = expected_version {
            request.insert("version".into(), json!(version));
        }
        let size = serialized_len(&request);
        if size > limits.max_request_bytes {
            return Err(ShadowError::RequestTooLarge {
                size,
                max: limits.max_request_bytes,
            }
            .into());
        }
        let request = UpdateRequest::from_value(Value::Object(request))?;
        self.apply_request(request, now_ms, limits)
    }

    /// The `get/accepted` document:
    /// `{"state": {"desired", "reported", "delta"?}, "metadata": {"desired", "reported"},
    /// "version", "timestamp": now_ms, "clientToken"?}`.
    /// `desired` and `reported` are always present (possibly `{}`); `delta`
    /// only when not empty.
    pub fn get_document(&self, client_token: Option<&str>, now_ms: u64) -> Value {
        let mut state = Map::new();
        state.insert("desired".into(), Value::Object(self.desired.clone()));
        state.insert("reported".into(), Value::Object(self.reported.clone()));
        let delta = self.delta();
        if !delta.is_empty() {
            state.insert("delta".into(), Value::Object(delta));
        }
        envelope(
            json!({
                "state": state,
                "metadata": {
                    "desired": self.metadata.desired,
                    "reported": self.metadata.reported,
                },
                "version": self.version,
                "timestamp": now_ms,
            }),
            client_token,
        )
    }

    /// The `update/delta` document for the current delta, or `None` when
    /// `desired` and `reported` agree:
    /// `{"state": {delta}, "metadata": {timestamps of the delta's fields in desired},
    /// "version", "timestamp": now_ms}`.
    /// Push it to a device that (re)connects.
    pub fn delta_message(&self, now_ms: u64) -> Option<Value> {
        let delta = self.delta();
        if delta.is_empty() {
            return None;
        }
        let metadata = delta_metadata(&delta, &self.metadata.desired);
        Some(json!({
            "state": delta,
            "metadata": metadata,
            "version": self.version,
            "timestamp": now_ms,
        }))
    }

    /// Whether there is a shadow to delete: written at least once and not
    /// deleted since.
    pub fn exists(&self) -> bool {
        self.version > 0 && !self.deleted
    }

    /// Deletes the shadow's state (AWS IoT's shadow delete). The deletion
    /// is itself a version: the version goes up by one and stays, so a
    /// client still holding the deleted shadow's version gets 409, and the
    /// next update starts above it. Returns the `delete/accepted` document
    /// `{"version", "timestamp": now_ms, "clientToken"?}`, or `None` when
    /// there is no shadow ([`Shadow::exists`]).
    pub fn delete(&mut self, client_token: Option<&str>, now_ms: u64) -> Option<Value> {
        if !self.exists() {
            return None;
        }
        self.desired.clear();
        self.reported.clear();
        self.metadata = ShadowMetadata::default();
        self.version = self.version.saturating_add(1);
        self.updated_at = now_ms;
        self.deleted = true;
        Some(envelope(
            json!({"version": self.version, "timestamp": now_ms}),
            client_token,
        ))
    }

    /// `{"state": {"desired", "reported"}, "metadata": {..}, "version"}`.
    fn snapshot(&self) -> Value {
        json!({
            "state": {"desired": self.desired, "reported": self.reported},
            "metadata": {"desired": self.metadata.desired, "reported": self.metadata.reported},
            "version": self.version,
        })
    }
}

/// The new (state, metadata) of a section after `update`, or `None` when
/// the update leaves it alone.
fn apply_section(
    state: &Map<String, Value>,
    meta: &Map<String, Value>,
    update: &SectionUpdate,
    now_ms: u64,
) -> Option<(Map<String, Value>, Map<String, Value>)> {
    match update {
        SectionUpdate::Keep => None,
        SectionUpdate::Delete => Some((Map::new(), Map::new())),
        SectionUpdate::Merge(patch) => {
            let (mut state, mut meta) = (state.clone(), meta.clone());
            merge_section(&mut state, &mut meta, patch, now_ms);
            Some((state, meta))
        }
    }
}

/// Adds `"clientToken"` to a response object when there is one.
fn envelope(mut message: Value, client_token: Option<&str>) -> Value {
    if let (Some(token), Value::Object(map)) = (client_token, &mut message) {
        map.insert("clientToken".into(), Value::String(token.to_owned()));
    }
    message
}
