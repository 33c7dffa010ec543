//! The device's side of its shadow (docs/topics.md "Shadow documents"): a local copy of
//! `desired`, `reported` and the version, kept in step with the platform's through the
//! `$shadow/{id}/...` topics. Sans-IO: [`ShadowSync`] takes the messages received and the
//! application's reports and answers with [`Action`]s (publish this, call the application
//! with these fields); [`ShadowStore`] keeps the copy on disk.
//!
//! # What it does
//!
//! - **Delta** (`update/delta`, `{"state": {..}, "version": N}`): merged into the local
//!   `desired`, and [`Action::Apply`] hands the fields to the application, which acts and
//!   reports back. A delta older than the local version is ignored, and the fields the
//!   application was told since the connect are not handed again (a redelivery, or a delta
//!   a `get` answer carried already), whatever order `update/accepted`, `update/delta` and
//!   `get/accepted` arrive in.
//! - **Reports** ([`ShadowSync::report`]): a patch of `reported` (objects merge, `null`
//!   deletes, arrays and scalars replace, as on the platform). Patches wait in one merged
//!   pending patch (later values of a key win, `null` deletes) and go out as one
//!   `update` `{"state": {"reported": ..}, "version": N, "clientToken": ..}` when online and
//!   nothing else is in flight; offline they wait (and survive a restart, once saved).
//! - **Version conflict** (`update/rejected` with code 409): the patch in flight goes back in
//!   front of the pending one, the copy is read again (`get`), and the merged patch is sent on
//!   the fresh copy's version.
//! - **Reconnect** ([`ShadowSync::on_connected`]): a `get` first; its answer replaces the
//!   copy, hands the whole delta to the application again (it may have missed changes
//!   while offline) and then sends what waits.
//! - **Other writers** (an operator's update arrives on `update/accepted` with another client
//!   token): applied to the copy when it is the next version; a gap in versions triggers a
//!   `get`. `delete/accepted` empties the copy.
//! - **Other rejections**: 429 and 5xx put the patch back (call [`ShadowSync::flush`] later);
//!   400, 413 and other codes drop it and read the copy again. Both give
//!   [`Action::Rejected`].
//!
//! Waiting changes are kept as what they do (set, delete, merge) rather than as one merge
//! patch, because a key deleted or set to a scalar and then set to an object must end as
//! exactly that object, which a merge patch cannot say: the patch sent is built when it is
//! sent, against the platform's copy as known then (the object plus `null` for the keys the
//! copy holds under it), and built again after a 409. Sending it has the effect of the
//! reports in order (a proptest checks this, and another runs device and platform through
//! lost requests, disconnects and restarts until they agree).
//!
//! # Example
//!
//! ```
//! use myriad_agent::shadow::{Action, ShadowSync};
//! use serde_json::json;
//!
//! let mut shadow = ShadowSync::new("dev-1")?;
//! // Subscribe to shadow.subscriptions(), then:
//! let actions = shadow.on_connected(0x5eed);
//! let Action::Publish { topic, payload } = &actions[0] else { unreachable!() };
//! assert_eq!(topic, "$shadow/dev-1/get");
//! let token: serde_json::Value = serde_json::from_slice(payload).unwrap();
//! // The platform answers the get; the delta goes to the application.
//! let answer = json!({"state": {"desired": {"led": "on"}, "reported": {"led": "off"},
//!     "delta": {"led": "on"}}, "version": 3, "clientToken": token["clientToken"]});
//! let actions = shadow.on_message("$shadow/dev-1/get/accepted", answer.to_string().as_bytes())?;
//! assert!(matches!(&actions[0], Action::Apply(fields) if fields["led"] == "on"));
//! // The application switches the LED on and reports it.
//! let actions = shadow.report(json!({"led": "on"}).as_object().unwrap().clone())?;
//! let Action::Publish { topic, payload } = &actions[0] else { unreachable!() };
//! assert_eq!(topic, "$shadow/dev-1/update");
//! let update: serde_json::Value = serde_json::from_slice(payload).unwrap();
//! assert_eq!(update["state"], json!({"reported": {"led": "on"}}));
//! assert_eq!(update["version"], 3);
//! # Ok::<(), myriad_agent::shadow::ShadowError>(())
//! ```
//!
//! # Limits
//!
//! | limit | value | one past |
//! |---|---|---|
//! | `desired` / `reported` (compact JSON, each, after the change) | [`MAX_SECTION_BYTES`] (8 KiB, as the platform) | a report: [`ShadowError::TooLarge`], nothing changes; a message: [`ShadowError::BadMessage`], ignored |
//! | pending reported patch | [`MAX_SECTION_BYTES`] | [`ShadowError::TooLarge`] |
//! | nesting inside a section | [`MAX_DEPTH`] (6, as the platform), checked without recursion before any recursive walk | [`ShadowError::TooDeep`] / [`ShadowError::BadMessage`] |
//! | message received | [`MAX_MESSAGE_BYTES`] (64 KiB) | [`ShadowError::BadMessage`], ignored |
//! | device id | 1 ..= 128 bytes, no `/`, `+`, `#` | [`ShadowError::BadDevice`] |
//! | saved copy | [`MAX_SHADOW_FILE`] (64 KiB) | loading: [`ShadowStoreError::Damaged`] |

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::fs::LogFs;

/// Largest `desired` or `reported` section, serialized (bytes).
pub const MAX_SECTION_BYTES: usize = 8 * 1024;
/// Deepest nesting inside a section: a key directly in the section is level 1, every
/// object or array value adds one (the platform's rule).
pub const MAX_DEPTH: usize = 6;
/// Largest message accepted from the platform (bytes).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest device id (bytes).
pub const MAX_DEVICE_ID: usize = 128;
/// Largest saved copy (bytes).
pub const MAX_SHADOW_FILE: usize = 64 * 1024;

/// A JSON object.
pub type Object = Map<String, Value>;

/// Why a report or a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShadowError {
    /// A section (or the pending patch) would exceed [`MAX_SECTION_BYTES`].
    #[error("{what} would be {bytes} bytes, at most {MAX_SECTION_BYTES}")]
    TooLarge {
        /// `reported` or `pending reported patch`.
        what: &'static str,
        /// Its size.
        bytes: usize,
    },
    /// A patch nested deeper than [`MAX_DEPTH`].
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A message from the platform that is not what the topic promises (named).
    #[error("bad message on {topic}: {what}")]
    BadMessage {
        /// The topic.
        topic: String,
        /// What is wrong.
        what: String,
    },
    /// A device id that cannot name shadow topics.
    #[error("device id {0:?}: 1..={MAX_DEVICE_ID} bytes without '/', '+', '#'")]
    BadDevice(String),
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish `payload` on `topic` at QoS 1.
    Publish {
        /// The topic.
        topic: String,
        /// The JSON payload.
        payload: Vec<u8>,
    },
    /// Call the application's delta callback with these `desired` fields (nested paths
    /// kept); it acts on them and reports back with [`ShadowSync::report`].
    Apply(Object),
    /// The platform refused a request (logged by the caller). `kept`: the reported patch
    /// waits to be sent again ([`ShadowSync::flush`] after a pause); else it was dropped.
    Rejected {
        /// The code (400, 404, 409, 413, 429, 5xx).
        code: u64,
        /// The platform's message.
        message: String,
        /// Whether the patch was kept.
        kept: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct InFlight {
    token: String,
    /// What it does (put back in front of the pending changes if it fails).
    ops: Ops,
    /// The patch sent (applied to the copy when accepted).
    patch: Object,
}

/// The local shadow copy and its sync state.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowSync {
    device: String,
    desired: Object,
    /// The platform's `reported` as last known.
    reported: Object,
    version: u64,
    pending: Ops,
    in_flight: Option<InFlight>,
    getting: Option<String>,
    online: bool,
    /// The desired values handed to the application since the connect (so each
    /// change is handed once, whatever order the accepted, delta and get messages come in).
    told: Object,
    nonce: u64,
    counter: u64,
    dirty: bool,
}

/// What is saved: the copy and every reported change not confirmed.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    device: String,
    desired: Object,
    reported: Object,
    version: u64,
    pending: Ops,
}

fn serialized_len(v: &Object) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}

/// Whether `section` nests deeper than `max` levels (see [`MAX_DEPTH`]); iterative.
pub fn exceeds_depth(section: &Object, max: usize) -> bool {
    let mut stack: Vec<(&Value, usize)> = section.values().map(|v| (v, 1)).collect();
    while let Some((v, level)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Object(m) => Box::new(m.values()),
            Value::Array(a) => Box::new(a.iter()),
            _ => continue,
        };
        // A container at `level` puts its children one deeper.
        if level >= max {
            return true;
        }
        stack.extend(children.map(|c| (c, level + 1)));
    }
    false
}

/// Applies `f` to the object under `k` (made an object first if it is not one) and removes
/// the key when `f` leaves that object empty.
fn merge_child(doc: &mut Object, k: &str, f: impl FnOnce(&mut Object)) {
    if !matches!(doc.get(k), Some(Value::Object(_))) {
        doc.insert(k.to_owned(), Value::Object(Map::new()));
    }
    let empty = match doc.get_mut(k) {
        Some(Value::Object(target)) => {
            f(target);
            target.is_empty()
        }
        _ => false,
    };
    if empty {
        doc.remove(k);
    }
}

/// Merges `patch` into `doc` with the platform's rules: `null` deletes, objects merge
/// (an object left empty is removed), anything else replaces. Depth checked by the caller.
fn apply_patch(doc: &mut Object, patch: &Object) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                doc.remove(k);
            }
            Value::Object(sub) => merge_child(doc, k, |target| apply_patch(target, sub)),
            other => {
                doc.insert(k.clone(), other.clone());
            }
        }
    }
}

/// `obj` made into a replacement of `base`: `null` for every key of `base` it lacks, the
/// same inside nested objects both hold.
fn as_replacement(mut obj: Object, base: Option<&Object>) -> Object {
    if let Some(base) = base {
        for (k, bv) in base {
            match (obj.get_mut(k), bv) {
                (None, _) => {
                    obj.insert(k.clone(), Value::Null);
                }
                (Some(Value::Object(sub)), Value::Object(bsub)) => {
                    let taken = std::mem::take(sub);
                    *sub = as_replacement(taken, Some(bsub));
                }
                _ => {}
            }
        }
    }
    obj
}

/// A pending change of one key of `reported`, kept as what it does (not as a merge patch,
/// which cannot say "replace this object whole"), so the patch sent is built against the
/// platform's copy as known when it is sent (and built again after a 409).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Op {
    /// Set to this value whole (a scalar, an array, or an object replacing what was there).
    Set(Value),
    /// Delete the key.
    Delete,
    /// Merge these changes into the object there (created when missing).
    Merge(Ops),
}

/// Pending changes by key.
type Ops = std::collections::BTreeMap<String, Op>;

/// The operations of a merge patch. Depth checked by the caller.
fn ops_from_patch(patch: &Object) -> Ops {
    patch
        .iter()
        .map(|(k, v)| {
            let op = match v {
                Value::Null => Op::Delete,
                Value::Object(sub) => Op::Merge(ops_from_patch(sub)),
                other => Op::Set(other.clone()),
            };
            (k.clone(), op)
        })
        .collect()
}

/// Applies operations to a document (the platform's rules: an object left empty is
/// removed). Depth checked by the caller.
fn apply_ops(doc: &mut Object, ops: &Ops) {
    for (k, op) in ops {
        match op {
            Op::Delete => {
                doc.remove(k);
            }
            Op::Set(Value::Object(o)) if o.is_empty() => {
                doc.remove(k);
            }
            Op::Set(v) => {
                doc.insert(k.clone(), v.clone());
            }
            Op::Merge(sub) => merge_child(doc, k, |target| apply_ops(target, sub)),
        }
    }
}

/// Folds later operations into earlier ones: the result does what the two did in order.
/// Depth checked by the caller.
fn merge_ops(earlier: &mut Ops, later: &Ops) {
    for (k, op) in later {
        match (earlier.get_mut(k), op) {
            (Some(Op::Merge(e)), Op::Merge(l)) => merge_ops(e, l),
            (Some(Op::Set(Value::Object(o))), Op::Merge(l)) => apply_ops(o, l),
            (Some(prev @ (Op::Set(_) | Op::Delete)), Op::Merge(l)) => {
                // Deleted or replaced, then merged into: an object replacing whatever is there.
                let mut o = Map::new();
                apply_ops(&mut o, l);
                *prev = Op::Set(Value::Object(o));
            }
            (_, op) => {
                earlier.insert(k.clone(), op.clone());
            }
        }
    }
}

/// The merge patch that does `ops` to a document equal to `base`. Depth checked by the
/// caller.
fn ops_to_patch(ops: &Ops, base: Option<&Object>) -> Object {
    ops.iter()
        .map(|(k, op)| {
            let base_sub = base.and_then(|b| b.get(k)).and_then(Value::as_object);
            let v = match op {
                Op::Delete => Value::Null,
                Op::Set(Value::Object(o)) => Value::Object(as_replacement(o.clone(), base_sub)),
                Op::Set(v) => v.clone(),
                Op::Merge(sub) => Value::Object(ops_to_patch(sub, base_sub)),
            };
            (k.clone(), v)
        })
        .collect()
}

/// Whether operations nest deeper than `max` levels; iterative (for operations read from
/// disk, before any recursive walk).
fn ops_exceed_depth(ops: &Ops, max: usize) -> bool {
    let mut stack: Vec<(&Op, usize)> = ops.values().map(|op| (op, 1)).collect();
    while let Some((op, level)) = stack.pop() {
        match op {
            Op::Delete => {}
            Op::Set(v) => {
                let mut one = Map::new();
                one.insert(String::new(), v.clone());
                if exceeds_depth(&one, max + 1 - level.min(max)) {
                    return true;
                }
            }
            Op::Merge(sub) => {
                if level >= max {
                    return true;
                }
                stack.extend(sub.values().map(|op| (op, level + 1)));
            }
        }
    }
    false
}

/// The fields of `delta` whose values differ from `told`'s (nested objects compared field by
/// field). Depth checked by the caller.
pub(crate) fn not_told(delta: &Object, told: &Object) -> Object {
    let mut out = Map::new();
    for (k, v) in delta {
        match (v, told.get(k)) {
            (Value::Object(d), Some(Value::Object(t))) => {
                let sub = not_told(d, t);
                if !sub.is_empty() {
                    out.insert(k.clone(), Value::Object(sub));
                }
            }
            (v, Some(t)) if v == t => {}
            (v, _) => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

fn valid_device(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_DEVICE_ID && !id.contains(['/', '+', '#'])
}

impl ShadowSync {
    /// An empty copy (version 0) for device `device`, offline.
    pub fn new(device: &str) -> Result<ShadowSync, ShadowError> {
        if !valid_device(device) {
            return Err(ShadowError::BadDevice(device.to_string()));
        }
        Ok(ShadowSync {
            device: device.to_string(),
            desired: Map::new(),
            reported: Map::new(),
            version: 0,
            pending: Ops::new(),
            in_flight: None,
            getting: None,
            online: false,
            told: Map::new(),
            nonce: 0,
            counter: 0,
            dirty: false,
        })
    }

    /// The topic filters to subscribe to (QoS 1).
    pub fn subscriptions(&self) -> Vec<String> {
        [
            "update/delta",
            "update/accepted",
            "update/rejected",
            "get/accepted",
            "get/rejected",
            "delete/accepted",
        ]
        .iter()
        .map(|s| format!("$shadow/{}/{s}", self.device))
        .collect()
    }

    /// The local `desired`.
    pub fn desired(&self) -> &Object {
        &self.desired
    }

    /// The local `reported`: the platform's as last known with the changes in flight and
    /// waiting applied.
    pub fn reported(&self) -> Object {
        let mut r = self.reported.clone();
        if let Some(f) = &self.in_flight {
            apply_patch(&mut r, &f.patch);
        }
        apply_ops(&mut r, &self.pending);
        r
    }

    /// The version last seen.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether reported changes wait or are in flight.
    pub fn has_unsent(&self) -> bool {
        !self.pending.is_empty() || self.in_flight.is_some()
    }

    /// Whether the copy changed since the last [`ShadowStore::save`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    fn topic(&self, suffix: &str) -> String {
        format!("$shadow/{}/{suffix}", self.device)
    }

    fn token(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("{kind}-{:016x}-{}", self.nonce, self.counter)
    }

    fn get(&mut self) -> Action {
        let token = self.token("get");
        let payload = json!({ "clientToken": token }).to_string().into_bytes();
        self.getting = Some(token);
        Action::Publish {
            topic: self.topic("get"),
            payload,
        }
    }

    /// The connection is up (session resumed or not): asks for the whole shadow; what waits
    /// goes out after the answer. `nonce`: a random number, so answers meant for an
    /// earlier connection's requests are told apart.
    pub fn on_connected(&mut self, nonce: u64) -> Vec<Action> {
        self.online = true;
        self.nonce = nonce;
        self.told.clear();
        self.requeue_in_flight();
        vec![self.get()]
    }

    /// The connection is lost: the patch in flight waits again (in front of newer ones).
    pub fn on_disconnected(&mut self) {
        self.online = false;
        self.getting = None;
        self.requeue_in_flight();
    }

    fn requeue_in_flight(&mut self) {
        if let Some(f) = self.in_flight.take() {
            let mut merged = f.ops;
            merge_ops(&mut merged, &self.pending);
            self.pending = merged;
            self.dirty = true;
        }
    }

    /// Sends what waits, if online and nothing is in flight or being read.
    pub fn flush(&mut self) -> Vec<Action> {
        if !self.online
            || self.in_flight.is_some()
            || self.getting.is_some()
            || self.pending.is_empty()
        {
            return Vec::new();
        }
        let ops = std::mem::take(&mut self.pending);
        let patch = ops_to_patch(&ops, Some(&self.reported));
        let token = self.token("update");
        let payload = json!({
            "state": { "reported": patch },
            "version": self.version,
            "clientToken": token,
        })
        .to_string()
        .into_bytes();
        self.in_flight = Some(InFlight { token, ops, patch });
        vec![Action::Publish {
            topic: self.topic("update"),
            payload,
        }]
    }

    /// The application reports a change of `reported` (`null` deletes a key). Checked
    /// against the limits, merged into what waits, and sent when possible. Save the copy
    /// ([`ShadowStore::save`]) before publishing, so the change survives a restart.
    pub fn report(&mut self, patch: Object) -> Result<Vec<Action>, ShadowError> {
        if exceeds_depth(&patch, MAX_DEPTH) {
            return Err(ShadowError::TooDeep);
        }
        let mut base = self.reported.clone();
        if let Some(f) = &self.in_flight {
            apply_patch(&mut base, &f.patch);
        }
        let mut pending = self.pending.clone();
        merge_ops(&mut pending, &ops_from_patch(&patch));
        let bytes = serialized_len(&ops_to_patch(&pending, Some(&base)));
        if bytes > MAX_SECTION_BYTES {
            return Err(ShadowError::TooLarge {
                what: "pending reported patch",
                bytes,
            });
        }
        let mut view = base;
        apply_ops(&mut view, &pending);
        let bytes = serialized_len(&view);
        if bytes > MAX_SECTION_BYTES {
            return Err(ShadowError::TooLarge {
                what: "reported",
                bytes,
            });
        }
        self.pending = pending;
        self.dirty = true;
        Ok(self.flush())
    }

    /// A message on one of [`ShadowSync::subscriptions`]; other topics are ignored.
    pub fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<Vec<Action>, ShadowError> {
        let prefix = format!("$shadow/{}/", self.device);
        let Some(kind) = topic.strip_prefix(&prefix) else {
            return Ok(Vec::new());
        };
        let bad = |what: String| ShadowError::BadMessage {
            topic: topic.to_string(),
            what,
        };
        if payload.len() > MAX_MESSAGE_BYTES {
            return Err(bad(format!(
                "{} bytes, at most {MAX_MESSAGE_BYTES}",
                payload.len()
            )));
        }
        let doc: Object = match serde_json::from_slice(payload) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(bad("not a JSON object".into())),
            Err(e) => return Err(bad(format!("JSON: {e}"))),
        };
        let version = doc.get("version").and_then(Value::as_u64);
        let token = doc.get("clientToken").and_then(Value::as_str);
        // A section of a message: an object within the limits (absent: None).
        let section = |v: Option<&Value>, name: &str| -> Result<Option<Object>, ShadowError> {
            match v {
                None => Ok(None),
                Some(Value::Object(m)) => {
                    if exceeds_depth(m, MAX_DEPTH) {
                        return Err(bad(format!("{name} nested deeper than {MAX_DEPTH}")));
                    }
                    if serialized_len(m) > MAX_SECTION_BYTES {
                        return Err(bad(format!("{name} over {MAX_SECTION_BYTES} bytes")));
                    }
                    Ok(Some(m.clone()))
                }
                Some(Value::Null) => Ok(Some(Map::new())),
                Some(_) => Err(bad(format!("{name} is not an object"))),
            }
        };
        let state = doc.get("state");
        match kind {
            "update/delta" => {
                let version = version.ok_or_else(|| bad("no version".into()))?;
                let delta = section(state, "state")?.unwrap_or_default();
                if version < self.version {
                    return Ok(Vec::new());
                }
                let mut desired = self.desired.clone();
                apply_patch(&mut desired, &delta);
                if serialized_len(&desired) > MAX_SECTION_BYTES {
                    return Err(bad("desired over its limit".into()));
                }
                self.desired = desired;
                self.version = version;
                self.dirty = true;
                Ok(self.hand_over(&delta).into_iter().collect())
            }
            "update/accepted" => {
                let version = version.ok_or_else(|| bad("no version".into()))?;
                let ours = matches!((&self.in_flight, token), (Some(f), Some(t)) if f.token == t);
                if ours {
                    let f = self.in_flight.take().expect("matched above");
                    apply_patch(&mut self.reported, &f.patch);
                    self.version = self.version.max(version);
                    self.dirty = true;
                    return Ok(self.flush());
                }
                let sections = match state {
                    Some(Value::Object(s)) => s,
                    _ => return Err(bad("no state".into())),
                };
                let desired = section(sections.get("desired"), "state.desired")?;
                let reported = section(sections.get("reported"), "state.reported")?;
                if version <= self.version {
                    return Ok(Vec::new());
                }
                if version > self.version + 1 || self.getting.is_some() {
                    // Something was missed: read the whole copy.
                    return Ok(if self.online && self.getting.is_none() {
                        vec![self.get()]
                    } else {
                        Vec::new()
                    });
                }
                // The next version, written by someone else: apply what it sent.
                for (value, is_desired) in [(desired, true), (reported, false)] {
                    let target = if is_desired {
                        &mut self.desired
                    } else {
                        &mut self.reported
                    };
                    match (
                        value,
                        sections.get(if is_desired { "desired" } else { "reported" }),
                    ) {
                        (_, Some(Value::Null)) => target.clear(),
                        (Some(p), _) => apply_patch(target, &p),
                        (None, _) => {}
                    }
                }
                self.version = version;
                self.dirty = true;
                Ok(Vec::new())
            }
            "update/rejected" => {
                let ours = matches!((&self.in_flight, token), (Some(f), Some(t)) if f.token == t);
                if !ours {
                    return Ok(Vec::new());
                }
                let code = doc.get("code").and_then(Value::as_u64).unwrap_or(0);
                let message = doc
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .chars()
                    .take(1024)
                    .collect::<String>();
                let retry = code == 409 || code == 429 || code >= 500;
                let mut out = Vec::new();
                if retry {
                    self.requeue_in_flight();
                } else {
                    self.in_flight = None;
                    self.dirty = true;
                }
                if code != 409 {
                    out.push(Action::Rejected {
                        code,
                        message,
                        kept: retry,
                    });
                }
                if code == 409 || !retry {
                    // Read the copy again; what waits goes out on its version.
                    out.push(self.get());
                }
                Ok(out)
            }
            "get/accepted" => {
                let version = version.ok_or_else(|| bad("no version".into()))?;
                if self.getting.is_none() || token != self.getting.as_deref() {
                    // An answer to a request of an earlier connection (or not ours).
                    return Ok(Vec::new());
                }
                let sections = match state {
                    Some(Value::Object(s)) => s,
                    _ => return Err(bad("no state".into())),
                };
                let desired =
                    section(sections.get("desired"), "state.desired")?.unwrap_or_default();
                let reported =
                    section(sections.get("reported"), "state.reported")?.unwrap_or_default();
                let delta = section(sections.get("delta"), "state.delta")?.unwrap_or_default();
                self.getting = None;
                self.desired = desired;
                self.reported = reported;
                self.version = version;
                self.dirty = true;
                let mut out = Vec::new();
                out.extend(self.hand_over(&delta));
                out.extend(self.flush());
                Ok(out)
            }
            "get/rejected" => {
                if self.getting.is_none() || token != self.getting.as_deref() {
                    return Ok(Vec::new());
                }
                self.getting = None;
                let code = doc.get("code").and_then(Value::as_u64).unwrap_or(0);
                let message = doc
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .chars()
                    .take(1024)
                    .collect::<String>();
                // The caller asks again later ([`ShadowSync::resync`]).
                Ok(vec![Action::Rejected {
                    code,
                    message,
                    kept: !self.pending.is_empty(),
                }])
            }
            "delete/accepted" => {
                let version = version.ok_or_else(|| bad("no version".into()))?;
                if version < self.version {
                    return Ok(Vec::new());
                }
                self.desired.clear();
                self.reported.clear();
                self.version = version;
                self.dirty = true;
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The fields of a delta the application was not told yet, as an [`Action::Apply`].
    fn hand_over(&mut self, delta: &Object) -> Option<Action> {
        let new = not_told(delta, &self.told);
        if new.is_empty() {
            return None;
        }
        apply_patch(&mut self.told, &new);
        Some(Action::Apply(new))
    }

    /// Reads the whole copy again (after a `get/rejected`, or whenever the caller wants).
    pub fn resync(&mut self) -> Vec<Action> {
        if !self.online || self.getting.is_some() {
            return Vec::new();
        }
        vec![self.get()]
    }

    fn to_saved(&self) -> Saved {
        // What is in flight is not confirmed: saved as waiting, in front of the newer.
        let mut pending = self.pending.clone();
        if let Some(f) = &self.in_flight {
            pending = f.ops.clone();
            merge_ops(&mut pending, &self.pending);
        }
        Saved {
            device: self.device.clone(),
            desired: self.desired.clone(),
            reported: self.reported.clone(),
            version: self.version,
            pending,
        }
    }

    fn from_saved(s: Saved) -> Result<ShadowSync, String> {
        let mut sync = ShadowSync::new(&s.device).map_err(|e| e.to_string())?;
        for (name, section) in [("desired", &s.desired), ("reported", &s.reported)] {
            if exceeds_depth(section, MAX_DEPTH) || serialized_len(section) > MAX_SECTION_BYTES {
                return Err(format!("{name} over its limits"));
            }
        }
        if ops_exceed_depth(&s.pending, MAX_DEPTH)
            || serialized_len(&ops_to_patch(&s.pending, Some(&s.reported))) > MAX_SECTION_BYTES
        {
            return Err("pending over its limits".into());
        }
        sync.desired = s.desired;
        sync.reported = s.reported;
        sync.version = s.version;
        sync.pending = s.pending;
        Ok(sync)
    }
}

/// Why the saved copy could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ShadowStoreError {
    /// A file operation failed.
    #[error("shadow file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is damaged (magic, checksum, JSON, limits, another device).
    #[error("shadow file {path} is damaged: {what}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// The saved copy: `shadow.json` in a directory, written as magic `MYRSHDW1`, the JSON and
/// its CRC-32 (u32 LE), through a temp file, fsync, rename and directory fsync.
#[derive(Debug, Clone)]
pub struct ShadowStore {
    dir: PathBuf,
}

const SHADOW_MAGIC: &[u8; 8] = b"MYRSHDW1";

impl ShadowStore {
    /// The store in `dir` (created at the first save).
    pub fn new(dir: &Path) -> ShadowStore {
        ShadowStore {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("shadow.json")
    }

    /// Loads the saved copy of `device` (offline; `Ok(None)`: none saved).
    pub fn load(
        &self,
        fs: &impl LogFs,
        device: &str,
    ) -> Result<Option<ShadowSync>, ShadowStoreError> {
        let path = self.path();
        let damaged = |what: String| ShadowStoreError::Damaged {
            path: path.clone(),
            what,
        };
        let bytes = match fs.read_file(&path, MAX_SHADOW_FILE as u64) {
            Ok(None) => return Ok(None),
            Ok(Some(b)) => b,
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                return Err(damaged(format!("over {MAX_SHADOW_FILE} bytes")));
            }
            Err(source) => {
                return Err(ShadowStoreError::Io {
                    path: path.clone(),
                    source,
                });
            }
        };
        if bytes.len() < 12 || &bytes[..8] != SHADOW_MAGIC {
            return Err(damaged("bad magic or too short".into()));
        }
        let (body, sum) = bytes[8..].split_at(bytes.len() - 12);
        if crc32fast::hash(body).to_le_bytes() != sum {
            return Err(damaged("checksum mismatch".into()));
        }
        let saved: Saved =
            serde_json::from_slice(body).map_err(|e| damaged(format!("JSON: {e}")))?;
        if saved.device != device {
            return Err(damaged(format!("saved for device {:?}", saved.device)));
        }
        ShadowSync::from_saved(saved).map(Some).map_err(damaged)
    }

    /// Saves the copy (and what waits or is in flight) crash-safely; clears the dirty flag.
    pub fn save(&self, fs: &impl LogFs, sync: &mut ShadowSync) -> Result<(), ShadowStoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ShadowStoreError::Io { path, source }
        };
        fs.create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let body = serde_json::to_vec(&sync.to_saved()).map_err(|e| ShadowStoreError::Damaged {
            path: self.path(),
            what: e.to_string(),
        })?;
        let mut bytes = SHADOW_MAGIC.to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        let tmp = self.dir.join("shadow.json.tmp");
        fs.write_synced(&tmp, &bytes).map_err(io(&tmp))?;
        fs.rename(&tmp, &self.path()).map_err(io(&self.path()))?;
        fs.sync_dir(&self.dir).map_err(io(&self.dir))?;
        sync.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
#[path = "shadow_tests.rs"]
mod tests;
