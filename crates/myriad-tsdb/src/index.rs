//! Series index: (device, metric, labels) -> [`SeriesId`], with inverted postings per label pair.
//!
//! The device and the metric are indexed as the labels `device` and `metric`, so one selector
//! form answers "which series match device=X / metric=Y / label=Z": the engine intersects the
//! sorted posting lists of the matchers, shortest first, without scanning all series.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Dense identifier of a series, assigned in creation order from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId(pub u32);

/// Label name under which the device id is indexed.
pub const DEVICE_LABEL: &str = "device";
/// Label name under which the metric name is indexed.
pub const METRIC_LABEL: &str = "metric";

/// What identifies a series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    /// Device id.
    pub device: String,
    /// Metric name.
    pub metric: String,
    /// Further labels (e.g. the device's groups and attributes), sorted by name.
    pub labels: BTreeMap<String, String>,
}

impl SeriesKey {
    /// A key with no extra labels.
    pub fn new(device: impl Into<String>, metric: impl Into<String>) -> Self {
        Self {
            device: device.into(),
            metric: metric.into(),
            labels: BTreeMap::new(),
        }
    }

    /// This key with one more label.
    pub fn with_label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(name.into(), value.into());
        self
    }

    /// All label pairs including `device` and `metric`.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        [
            (DEVICE_LABEL, self.device.as_str()),
            (METRIC_LABEL, self.metric.as_str()),
        ]
        .into_iter()
        .chain(self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// Limits on what the index accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexLimits {
    /// Most series the index holds; creating one more fails with [`IndexError::TooManySeries`].
    pub max_series: usize,
    /// Most extra labels per series (besides device and metric).
    pub max_labels: usize,
    /// Longest device id, metric, label name or label value, in bytes.
    pub max_text_len: usize,
}

impl Default for IndexLimits {
    fn default() -> Self {
        Self {
            max_series: 2_000_000,
            max_labels: 32,
            max_text_len: 256,
        }
    }
}

/// Why a series could not be created or looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The index already holds `max_series` series.
    #[error("series limit {limit} reached")]
    TooManySeries {
        /// The limit.
        limit: usize,
    },
    /// More extra labels than `max_labels`.
    #[error("{count} labels, limit {limit}")]
    TooManyLabels {
        /// Labels given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A device id, metric, label name or value longer than `max_text_len` bytes.
    #[error("{what} is {len} bytes, limit {limit}")]
    TooLong {
        /// Which text.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// An empty device id, metric or label name.
    #[error("empty {0}")]
    Empty(&'static str),
    /// An extra label named `device` or `metric`.
    #[error("label name {0:?} is reserved")]
    ReservedLabel(String),
    /// A replayed series id does not follow the last one.
    #[error("series id {got} replayed where {want} was expected")]
    IdOutOfSequence {
        /// The id that would be assigned next.
        want: u32,
        /// The id given.
        got: u32,
    },
    /// A selector without matchers (it would scan every series).
    #[error("a selector needs at least one matcher")]
    EmptySelector,
}

/// The series index.
///
/// Each key is stored once, in a compact canonical form (length-prefixed device, metric and
/// sorted label pairs) shared by the id -> key vector and the key -> id map.
#[derive(Debug, Clone, Default)]
pub struct SeriesIndex {
    limits: IndexLimits,
    by_key: HashMap<Arc<[u8]>, SeriesId>,
    keys: Vec<Arc<[u8]>>,
    /// label name -> label value -> series ids, ascending.
    postings: HashMap<String, HashMap<String, Vec<SeriesId>>>,
}

impl SeriesIndex {
    /// An empty index with these limits.
    pub fn new(limits: IndexLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Series in the index.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The id of `key`, if it exists.
    pub fn get(&self, key: &SeriesKey) -> Option<SeriesId> {
        self.by_key.get(encode_key(key).as_slice()).copied()
    }

    /// Whether series `id` exists.
    pub fn contains(&self, id: SeriesId) -> bool {
        (id.0 as usize) < self.keys.len()
    }

    /// The key of `id`, if it exists (decoded from the compact form).
    pub fn key(&self, id: SeriesId) -> Option<SeriesKey> {
        self.keys.get(id.0 as usize).and_then(|k| decode_key(k))
    }

    /// Checks a key against the limits.
    pub fn validate(&self, key: &SeriesKey) -> Result<(), IndexError> {
        let l = &self.limits;
        if key.labels.len() > l.max_labels {
            return Err(IndexError::TooManyLabels {
                count: key.labels.len(),
                limit: l.max_labels,
            });
        }
        let check = |what: &'static str, s: &str| {
            if s.is_empty() {
                Err(IndexError::Empty(what))
            } else if s.len() > l.max_text_len {
                Err(IndexError::TooLong {
                    what,
                    len: s.len(),
                    limit: l.max_text_len,
                })
            } else {
                Ok(())
            }
        };
        check("device id", &key.device)?;
        check("metric", &key.metric)?;
        for (k, v) in &key.labels {
            check("label name", k)?;
            if v.len() > l.max_text_len {
                return Err(IndexError::TooLong {
                    what: "label value",
                    len: v.len(),
                    limit: l.max_text_len,
                });
            }
            if k == DEVICE_LABEL || k == METRIC_LABEL {
                return Err(IndexError::ReservedLabel(k.clone()));
            }
        }
        Ok(())
    }

    /// The id of `key`, creating the series if it is new; the flag says whether it was created
    /// (the caller then logs it to the WAL before any of its points).
    pub fn get_or_create(&mut self, key: &SeriesKey) -> Result<(SeriesId, bool), IndexError> {
        if let Some(id) = self.get(key) {
            return Ok((id, false));
        }
        self.validate(key)?;
        if self.keys.len() >= self.limits.max_series {
            return Err(IndexError::TooManySeries {
                limit: self.limits.max_series,
            });
        }
        let id = SeriesId(self.keys.len() as u32);
        self.insert(id, key.clone());
        Ok((id, true))
    }

    /// Re-creates a series under a known id during WAL replay; `id` must be the next one.
    /// Replaying an existing (key, id) pair again is accepted and changes nothing.
    pub fn restore(&mut self, id: SeriesId, key: SeriesKey) -> Result<(), IndexError> {
        if self.get(&key) == Some(id) {
            return Ok(());
        }
        let want = self.keys.len() as u32;
        if id.0 != want {
            return Err(IndexError::IdOutOfSequence { want, got: id.0 });
        }
        self.validate(&key)?;
        if self.keys.len() >= self.limits.max_series {
            return Err(IndexError::TooManySeries {
                limit: self.limits.max_series,
            });
        }
        if self.get(&key).is_some() {
            return Err(IndexError::IdOutOfSequence { want, got: id.0 });
        }
        self.insert(id, key);
        Ok(())
    }

    fn insert(&mut self, id: SeriesId, key: SeriesKey) {
        for (k, v) in key.pairs() {
            // Ids are assigned ascending, so pushing keeps each list sorted.
            self.postings
                .entry(k.to_owned())
                .or_default()
                .entry(v.to_owned())
                .or_default()
                .push(id);
        }
        let compact: Arc<[u8]> = encode_key(&key).into();
        self.by_key.insert(compact.clone(), id);
        self.keys.push(compact);
    }

    /// Series whose labels equal every `(name, value)` matcher, ascending.
    pub fn select(&self, matchers: &[(&str, &str)]) -> Result<Vec<SeriesId>, IndexError> {
        if matchers.is_empty() {
            return Err(IndexError::EmptySelector);
        }
        let mut lists = Vec::with_capacity(matchers.len());
        for (name, value) in matchers {
            match self.postings.get(*name).and_then(|m| m.get(*value)) {
                Some(list) => lists.push(list.as_slice()),
                None => return Ok(Vec::new()),
            }
        }
        lists.sort_by_key(|l| l.len());
        let mut out: Vec<SeriesId> = lists[0].to_vec();
        for list in &lists[1..] {
            out.retain(|id| list.binary_search(id).is_ok());
            if out.is_empty() {
                break;
            }
        }
        Ok(out)
    }

    /// Whether some series has label `name` (`device` and `metric` once a series exists).
    pub fn has_label(&self, name: &str) -> bool {
        self.postings.contains_key(name)
    }

    /// The series with label `name` = `value`, ascending (a borrowed posting list; empty if
    /// none).
    pub fn postings(&self, name: &str, value: &str) -> &[SeriesId] {
        self.postings
            .get(name)
            .and_then(|m| m.get(value))
            .map_or(&[], Vec::as_slice)
    }

    /// Every label name in use, sorted (`device` and `metric` included once a series exists).
    pub fn label_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.postings.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Every value of label `name`, sorted.
    pub fn label_values(&self, name: &str) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .postings
            .get(name)
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }
}

fn put_part(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(s.as_bytes());
}

/// The canonical compact form of a key: device, metric, then each label name and value (sorted by
/// name), each as a LEB128 length and the UTF-8 bytes.
fn encode_key(key: &SeriesKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        8 + key.device.len()
            + key.metric.len()
            + key
                .labels
                .iter()
                .map(|(k, v)| 4 + k.len() + v.len())
                .sum::<usize>(),
    );
    put_part(&mut out, &key.device);
    put_part(&mut out, &key.metric);
    for (k, v) in &key.labels {
        put_part(&mut out, k);
        put_part(&mut out, v);
    }
    out
}

fn take_part(b: &mut &[u8]) -> Option<String> {
    let mut n = 0usize;
    for i in 0..5 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        n |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if n > b.len() {
                return None;
            }
            let (s, rest) = b.split_at(n);
            *b = rest;
            return String::from_utf8(s.to_vec()).ok();
        }
    }
    None
}

/// Inverse of [`encode_key`]; `None` for bytes it did not produce.
fn decode_key(mut b: &[u8]) -> Option<SeriesKey> {
    let mut key = SeriesKey::new(take_part(&mut b)?, take_part(&mut b)?);
    while !b.is_empty() {
        let k = take_part(&mut b)?;
        let v = take_part(&mut b)?;
        key.labels.insert(k, v);
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postings_and_has_label() {
        let mut index = SeriesIndex::new(IndexLimits::default());
        assert!(!index.has_label(DEVICE_LABEL));
        assert!(index.postings(DEVICE_LABEL, "d1").is_empty());
        let a = index
            .get_or_create(&SeriesKey::new("d1", "temp"))
            .expect("a")
            .0;
        let b = index
            .get_or_create(&SeriesKey::new("d2", "temp").with_label("zone", "z1"))
            .expect("b")
            .0;
        let c = index
            .get_or_create(&SeriesKey::new("d1", "hum"))
            .expect("c")
            .0;
        assert!(index.has_label(DEVICE_LABEL) && index.has_label(METRIC_LABEL));
        assert!(index.has_label("zone") && !index.has_label("group"));
        assert_eq!(index.postings(DEVICE_LABEL, "d1"), &[a, c]);
        assert_eq!(index.postings(METRIC_LABEL, "temp"), &[a, b]);
        assert_eq!(index.postings("zone", "z1"), &[b]);
        assert!(index.postings("zone", "z2").is_empty());
        assert!(index.postings("nosuch", "x").is_empty());
    }
}
