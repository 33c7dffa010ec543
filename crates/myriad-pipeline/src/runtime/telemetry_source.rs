//! The telemetry-store source: stored points of some devices' metrics, one record per point,
//! as a range read once or followed as new points arrive.
//!
//! ```toml
//! source = { type = "telemetry", devices = ["d1", "d2"], metrics = ["temp"],
//!            from = "2026-12-01T00:00:00Z", to = 1764979200000 }
//! source = { type = "telemetry", devices = ["d1"], follow = true, poll_ms = 1000 }
//! ```
//!
//! Each record has the topic `devices/{id}/telemetry` (so rules written for MQTT telemetry
//! select it) and the payload `{"device", "metric", "ts" (unix ms), "value", <metric>: value}`:
//! the metric's own name is a field too (`payload.temp`), unless it is one of the four other
//! names.
//!
//! # Reading
//!
//! Series (device, metric) are read one after the other, each by time, in chunks of at most
//! `in_flight` points ([`TelemetryStore::export`]; the store reads at most one day at a time
//! and jumps over empty time). `metrics` empty: every metric the device has (listed again at
//! each follow pass, so new metrics are picked up). A range (`follow = false`) reads
//! `from <= ts < to` (no `to`: everything stored from `from`) and then the pipeline is
//! `finished`. Follow reads each series from where it stopped up to now (a point timestamped
//! in the future is read once its time has come), then waits `poll_ms`.
//!
//! # Guarantees
//!
//! The checkpoint holds per series the time after the last point whose record (and every
//! record before it) is done; a restart (or kill -9) reads again at most the points handed
//! out and not done (at least once). A finished range is noted and not read again unless the
//! source's settings change. Follow sees points with a timestamp later than the last one read
//! from their series: a point stored later with an older timestamp (a device's
//! store-and-forward backlog arriving after newer points) is not seen; read such periods with
//! a range.
//!
//! # Limits
//!
//! | bound | value |
//! |---|---|
//! | `devices` | 1 ..= [`MAX_DEVICES`] ids, each 1 ..= [`MAX_DEVICE_BYTES`] bytes without `/`, `+`, `#`, NUL |
//! | `metrics` | at most [`MAX_METRICS`] names, each `[A-Za-z0-9_.:-]`, 1 ..= [`MAX_METRIC_BYTES`] bytes |
//! | series per pass | [`MAX_SERIES`] (the first ones) |
//! | `poll_ms` | [`MIN_POLL_MS`] ..= [`MAX_POLL_MS`] |
//! | points per read | `in_flight`, at most [`MAX_CHUNK_POINTS`] |

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::reader::{Produced, Read, Reader, fingerprint, load_checkpoint};

/// The most `devices`.
pub const MAX_DEVICES: usize = 1000;
/// The longest device id, in bytes (the registry's limit).
pub const MAX_DEVICE_BYTES: usize = 128;
/// The most `metrics`.
pub const MAX_METRICS: usize = 256;
/// The longest metric name, in bytes.
pub const MAX_METRIC_BYTES: usize = 128;
/// The most series read per pass.
pub const MAX_SERIES: usize = 100_000;
/// The shortest `poll_ms`.
pub const MIN_POLL_MS: u64 = 10;
/// The longest `poll_ms`: one hour.
pub const MAX_POLL_MS: u64 = 3_600_000;
/// The most points asked of the store at once.
pub const MAX_CHUNK_POINTS: usize = 10_000;

/// Points of one series read from the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetryChunk {
    /// `(ts, value)` by time; the value a JSON number or boolean.
    pub points: Vec<(i64, Value)>,
    /// Where to read on in this range, `None` when it is done.
    pub next: Option<i64>,
}

/// What a [`TelemetryStore`] call returns.
pub type StoreFuture<'a, T> =
    std::pin::Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// The telemetry store as the source reads it (implemented by the server over its
/// telemetry service).
pub trait TelemetryStore: Send + Sync + 'static {
    /// The names of `device`'s metrics.
    fn metrics<'a>(&'a self, device: &'a str) -> StoreFuture<'a, Vec<String>>;
    /// Up to `limit` points of `device`'s `metric` with `from <= ts < to`, by time.
    fn export<'a>(
        &'a self,
        device: &'a str,
        metric: &'a str,
        from: i64,
        to: i64,
        limit: usize,
    ) -> StoreFuture<'a, TelemetryChunk>;
}

/// `source = { type = "telemetry", ... }`, validated by
/// [`TelemetrySourceConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySourceConfig {
    /// The devices read.
    pub devices: Vec<String>,
    /// The metrics read; empty: all of each device's.
    pub metrics: Vec<String>,
    /// The first time read (unix ms, included).
    pub from: i64,
    /// The end of a range (unix ms, excluded); `None`: no end.
    pub to: Option<i64>,
    /// Follow new points instead of reading a range once.
    pub follow: bool,
    /// Follow: the wait when nothing is new.
    pub poll_ms: u64,
    /// Where the position is kept.
    pub checkpoint: PathBuf,
}

/// A metric name: `[A-Za-z0-9_.:-]`, 1 ..= [`MAX_METRIC_BYTES`] bytes.
fn valid_metric(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_METRIC_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// `s` as unix milliseconds: an integer, or an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<i64> {
    s.parse::<i64>()
        .ok()
        .or_else(|| super::postgres::parse_rfc3339(s).map(|us| us.div_euclid(1000)))
}

impl TelemetrySourceConfig {
    /// Checks the lists and ranges; the error starts with the key (`devices[0]: ...`).
    pub fn validate(&self) -> Result<(), String> {
        if self.devices.is_empty() || self.devices.len() > MAX_DEVICES {
            return Err(format!(
                "devices: {} ids, must be 1 to {MAX_DEVICES}",
                self.devices.len()
            ));
        }
        for (i, device) in self.devices.iter().enumerate() {
            if device.is_empty()
                || device.len() > MAX_DEVICE_BYTES
                || device.contains(['/', '+', '#', '\0'])
            {
                return Err(format!(
                    "devices[{i}]: {device:?} must be 1 to {MAX_DEVICE_BYTES} bytes without '/', '+', '#'"
                ));
            }
            if self.devices[..i].contains(device) {
                return Err(format!("devices[{i}]: {device:?} is listed twice"));
            }
        }
        if self.metrics.len() > MAX_METRICS {
            return Err(format!(
                "metrics: {} names, at most {MAX_METRICS}",
                self.metrics.len()
            ));
        }
        for (i, metric) in self.metrics.iter().enumerate() {
            if !valid_metric(metric) {
                return Err(format!(
                    "metrics[{i}]: {metric:?} must be 1 to {MAX_METRIC_BYTES} of [A-Za-z0-9_.:-]"
                ));
            }
            if self.metrics[..i].contains(metric) {
                return Err(format!("metrics[{i}]: {metric:?} is listed twice"));
            }
        }
        if let Some(to) = self.to {
            if self.follow {
                return Err("to: a followed source has no end (follow = true)".to_owned());
            }
            if to <= self.from {
                return Err(format!("to: {to} is not after from ({})", self.from));
            }
        }
        if !(MIN_POLL_MS..=MAX_POLL_MS).contains(&self.poll_ms) {
            return Err(format!(
                "poll_ms: {} is out of range ({MIN_POLL_MS} ..= {MAX_POLL_MS})",
                self.poll_ms
            ));
        }
        Ok(())
    }

    fn fingerprint(&self) -> String {
        let (from, to) = (
            self.from.to_string(),
            self.to.map_or(String::new(), |t| t.to_string()),
        );
        fingerprint(&[
            "telemetry",
            &self.devices.join("/"),
            &self.metrics.join("/"),
            &from,
            &to,
            if self.follow { "follow" } else { "range" },
        ])
    }
}

/// One point's record: (device, metric, time after it).
type Token = (Arc<str>, Arc<str>, i64);

/// See the module docs.
pub(crate) struct TelemetryReader {
    config: TelemetrySourceConfig,
    store: Arc<dyn TelemetryStore>,
    fingerprint: String,
    /// This pass's series, listed at its start.
    series: Vec<(Arc<str>, Arc<str>)>,
    /// The series being read; `series.len()`: the pass is over.
    at: usize,
    /// Whether `series` is listed for this pass.
    listed: bool,
    /// Per device and metric, where reading goes on.
    read: BTreeMap<String, BTreeMap<String, i64>>,
    /// Per device and metric, the time after the last point done (a prefix): the checkpoint.
    done: BTreeMap<String, BTreeMap<String, i64>>,
    handed_out: u64,
    done_count: u64,
    /// A range read to its end (or finished in an earlier run).
    exhausted: bool,
    already: bool,
}

impl TelemetryReader {
    /// A reader for `config` over `store`, resuming its checkpoint. Blocking: reads the
    /// checkpoint file.
    pub(crate) fn new(
        config: TelemetrySourceConfig,
        store: Arc<dyn TelemetryStore>,
    ) -> TelemetryReader {
        let fingerprint = config.fingerprint();
        let mut done = BTreeMap::new();
        let mut already = false;
        if let Some(c) = load_checkpoint(&config.checkpoint) {
            if c["fingerprint"] == fingerprint.as_str() {
                already = !config.follow && c["finished"] == true;
                if let Some(devices) = c["next"].as_object() {
                    for (device, metrics) in devices {
                        let Some(metrics) = metrics.as_object() else {
                            continue;
                        };
                        let entry: &mut BTreeMap<String, i64> =
                            done.entry(device.clone()).or_default();
                        for (metric, next) in metrics {
                            if let Some(next) = next.as_i64() {
                                entry.insert(metric.clone(), next);
                            }
                        }
                    }
                }
            } else {
                tracing::warn!(checkpoint = %config.checkpoint.display(), "telemetry source: the checkpoint is for other settings; reading from the start");
            }
        }
        TelemetryReader {
            read: done.clone(),
            done,
            config,
            store,
            fingerprint,
            series: Vec::new(),
            at: 0,
            listed: false,
            handed_out: 0,
            done_count: 0,
            exhausted: already,
            already,
        }
    }

    /// Lists this pass's series.
    async fn list(&mut self) -> Result<(), String> {
        let mut series = Vec::new();
        for device in &self.config.devices {
            let metrics = if self.config.metrics.is_empty() {
                self.store.metrics(device).await?
            } else {
                self.config.metrics.clone()
            };
            let device: Arc<str> = Arc::from(device.as_str());
            for metric in metrics {
                if series.len() == MAX_SERIES {
                    tracing::warn!(
                        "telemetry source: more than {MAX_SERIES} series; reading the first"
                    );
                    break;
                }
                series.push((device.clone(), Arc::from(metric.as_str())));
            }
        }
        self.series = series;
        self.at = 0;
        self.listed = true;
        Ok(())
    }

    fn position(&self, device: &str, metric: &str) -> i64 {
        self.read
            .get(device)
            .and_then(|m| m.get(metric))
            .copied()
            .unwrap_or(self.config.from)
            .max(self.config.from)
    }

    fn set_position(&mut self, device: &str, metric: &str, next: i64) {
        self.read
            .entry(device.to_owned())
            .or_default()
            .insert(metric.to_owned(), next);
    }
}

/// A point's record payload.
fn payload(device: &str, metric: &str, ts: i64, value: &Value) -> Bytes {
    let mut object = Map::new();
    object.insert("device".into(), Value::from(device));
    object.insert("metric".into(), Value::from(metric));
    object.insert("ts".into(), Value::from(ts));
    object.insert("value".into(), value.clone());
    if !matches!(metric, "device" | "metric" | "ts" | "value") {
        object.insert(metric.into(), value.clone());
    }
    Bytes::from(Value::Object(object).to_string())
}

impl Reader for TelemetryReader {
    type Token = Token;

    async fn read(&mut self, max: usize) -> Result<Read<Token>, String> {
        if self.exhausted {
            return Ok(Read::Finished);
        }
        if !self.listed {
            self.list().await?;
        }
        // Follow reads up to now: the store skips empty time only up to `to`, so the position
        // never moves past the present (a point stored later with a timestamp between the
        // last one read and now is still seen). A point timestamped in the future is read once
        // its time has come.
        let to = match self.config.to {
            Some(to) => to,
            None if self.config.follow => super::now_ms().saturating_add(1),
            None => i64::MAX,
        };
        let limit = max.clamp(1, MAX_CHUNK_POINTS);
        while let Some((device, metric)) = self.series.get(self.at).cloned() {
            let from = self.position(&device, &metric);
            let chunk = self.store.export(&device, &metric, from, to, limit).await?;
            let Some(&(last, _)) = chunk.points.last() else {
                match chunk.next {
                    Some(next) if next > from => self.set_position(&device, &metric, next),
                    _ => self.at += 1,
                }
                continue;
            };
            let after = last.saturating_add(1);
            self.set_position(&device, &metric, after);
            if chunk.next.is_none() {
                self.at += 1;
            }
            let topic = format!("devices/{device}/telemetry");
            let records: Vec<_> = chunk
                .points
                .iter()
                .map(|(ts, value)| Produced {
                    token: (device.clone(), metric.clone(), ts.saturating_add(1)),
                    topic: topic.clone(),
                    payload: payload(&device, &metric, *ts, value),
                    error: None,
                })
                .collect();
            self.handed_out += records.len() as u64;
            return Ok(Read::Records(records));
        }
        // The pass is over.
        self.listed = false;
        if self.config.follow {
            Ok(Read::Idle)
        } else {
            self.exhausted = true;
            Ok(Read::Finished)
        }
    }

    fn done(&mut self, (device, metric, next): Token) {
        self.done_count += 1;
        self.done
            .entry(device.to_string())
            .or_default()
            .insert(metric.to_string(), next);
    }

    fn checkpoint(&self) -> Value {
        serde_json::json!({
            "fingerprint": self.fingerprint,
            "next": self.done,
            "finished": self.already
                || (self.exhausted && self.done_count == self.handed_out),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A store of `(device, metric) -> points`, answering like the real one (by time, `limit`
    /// at most, `next` after a truncated chunk).
    #[derive(Default)]
    struct Fake(Mutex<BTreeMap<(String, String), Vec<i64>>>);

    impl Fake {
        fn add(&self, device: &str, metric: &str, ts: i64) {
            let mut m = self.0.lock().unwrap();
            let v = m.entry((device.into(), metric.into())).or_default();
            v.push(ts);
            v.sort();
        }
    }

    impl TelemetryStore for Fake {
        fn metrics<'a>(&'a self, device: &'a str) -> StoreFuture<'a, Vec<String>> {
            let names = self
                .0
                .lock()
                .unwrap()
                .keys()
                .filter(|(d, _)| d == device)
                .map(|(_, m)| m.clone())
                .collect();
            Box::pin(async move { Ok(names) })
        }
        fn export<'a>(
            &'a self,
            device: &'a str,
            metric: &'a str,
            from: i64,
            to: i64,
            limit: usize,
        ) -> StoreFuture<'a, TelemetryChunk> {
            let all: Vec<i64> = self
                .0
                .lock()
                .unwrap()
                .get(&(device.to_owned(), metric.to_owned()))
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|t| (from..to).contains(t))
                .collect();
            let more = all.len() > limit;
            let points: Vec<_> = all
                .into_iter()
                .take(limit)
                .map(|t| (t, Value::from(t as f64 / 10.0)))
                .collect();
            let next = if more {
                points.last().map(|p| p.0 + 1)
            } else {
                None
            };
            Box::pin(async move { Ok(TelemetryChunk { points, next }) })
        }
    }

    fn config(dir: &std::path::Path, follow: bool) -> TelemetrySourceConfig {
        TelemetrySourceConfig {
            devices: vec!["d1".into(), "d2".into()],
            metrics: vec![],
            from: 100,
            to: None,
            follow,
            poll_ms: 100,
            checkpoint: dir.join("t.checkpoint"),
        }
    }

    async fn read_all(reader: &mut TelemetryReader, max: usize) -> (Vec<Token>, bool) {
        let mut got = Vec::new();
        loop {
            match reader.read(max).await.unwrap() {
                Read::Records(r) => got.extend(r.into_iter().map(|p| p.token)),
                Read::Idle => return (got, false),
                Read::Finished => return (got, true),
                Read::Failed(e) => panic!("{e}"),
            }
        }
    }

    fn ts(tokens: &[Token]) -> Vec<(String, String, i64)> {
        tokens
            .iter()
            .map(|(d, m, t)| (d.to_string(), m.to_string(), t - 1))
            .collect()
    }

    #[tokio::test]
    async fn a_range_reads_every_series_in_chunks_then_finishes_and_stays_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Fake::default());
        for t in [50, 100, 101, 102, 200] {
            store.add("d1", "temp", t);
        }
        store.add("d2", "hum", 150);
        store.add("d3", "temp", 150); // not configured
        let mut c = config(dir.path(), false);
        c.to = Some(200);
        let mut reader = TelemetryReader::new(c.clone(), store.clone());
        let (got, finished) = read_all(&mut reader, 2).await;
        assert!(finished);
        assert_eq!(
            ts(&got),
            vec![
                ("d1".into(), "temp".into(), 100),
                ("d1".into(), "temp".into(), 101),
                ("d1".into(), "temp".into(), 102),
                ("d2".into(), "hum".into(), 150),
            ]
        );
        assert_eq!(reader.checkpoint()["finished"], false);
        for t in got {
            reader.done(t);
        }
        let cp = reader.checkpoint();
        assert_eq!(cp["finished"], true);
        assert_eq!(cp["next"]["d1"]["temp"], 103);
        super::super::reader::save_checkpoint(&c.checkpoint, &cp).unwrap();
        let mut again = TelemetryReader::new(c.clone(), store.clone());
        assert!(matches!(again.read(10).await.unwrap(), Read::Finished));
        // Other settings: the checkpoint is not theirs.
        c.to = Some(300);
        let mut other = TelemetryReader::new(c, store);
        let (got, _) = read_all(&mut other, 10).await;
        assert_eq!(got.len(), 5);
    }

    #[tokio::test]
    async fn follow_resumes_after_the_done_prefix_and_sees_new_points_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Fake::default());
        for t in [100, 110, 120] {
            store.add("d1", "temp", t);
        }
        let c = config(dir.path(), true);
        let mut reader = TelemetryReader::new(c.clone(), store.clone());
        let (got, finished) = read_all(&mut reader, 10).await;
        assert!(!finished);
        assert_eq!(got.len(), 3);
        // Only the first is done when the process dies.
        reader.done(got[0].clone());
        super::super::reader::save_checkpoint(&c.checkpoint, &reader.checkpoint()).unwrap();
        store.add("d1", "temp", 130);
        store.add("d2", "volt", 105);
        let mut again = TelemetryReader::new(c, store.clone());
        let (got, _) = read_all(&mut again, 10).await;
        assert_eq!(
            ts(&got),
            vec![
                ("d1".into(), "temp".into(), 110),
                ("d1".into(), "temp".into(), 120),
                ("d1".into(), "temp".into(), 130),
                ("d2".into(), "volt".into(), 105),
            ]
        );
        // Nothing new: idle, nothing read twice.
        let (got, _) = read_all(&mut again, 10).await;
        assert!(got.is_empty());
        store.add("d1", "temp", 140);
        let (got, _) = read_all(&mut again, 10).await;
        assert_eq!(ts(&got), vec![("d1".into(), "temp".into(), 140)]);
    }

    #[test]
    fn payload_has_the_metric_as_a_field_too() {
        let p: Value =
            serde_json::from_slice(&payload("d1", "temp", 5, &Value::from(21.5))).unwrap();
        assert_eq!(
            p,
            serde_json::json!({"device": "d1", "metric": "temp", "ts": 5, "value": 21.5, "temp": 21.5})
        );
        let p: Value = serde_json::from_slice(&payload("d1", "ts", 5, &Value::from(true))).unwrap();
        assert_eq!(p["ts"], 5);
    }

    #[test]
    fn config_bounds_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        assert!(config(dir.path(), true).validate().is_ok());
        let bad = |f: &dyn Fn(&mut TelemetrySourceConfig)| {
            let mut c = config(dir.path(), false);
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(&|c| c.devices.clear()).starts_with("devices:"));
        assert!(
            bad(&|c| c.devices = (0..=MAX_DEVICES).map(|i| i.to_string()).collect())
                .starts_with("devices:")
        );
        assert!(bad(&|c| c.devices[1] = "a/b".into()).starts_with("devices[1]:"));
        assert!(bad(&|c| c.devices[1] = "d1".into()).starts_with("devices[1]:"));
        assert!(
            bad(&|c| c.devices[0] = "d".repeat(MAX_DEVICE_BYTES + 1)).starts_with("devices[0]:")
        );
        assert!(bad(&|c| c.metrics = vec!["te mp".into()]).starts_with("metrics[0]:"));
        assert!(
            bad(&|c| c.metrics = (0..=MAX_METRICS).map(|i| format!("m{i}")).collect())
                .starts_with("metrics:")
        );
        assert!(bad(&|c| c.to = Some(100)).starts_with("to:"));
        assert!(
            bad(&|c| {
                c.follow = true;
                c.to = Some(1000);
            })
            .starts_with("to:")
        );
        assert!(bad(&|c| c.poll_ms = MAX_POLL_MS + 1).starts_with("poll_ms:"));
        assert_eq!(parse_time("1764936000123"), Some(1_764_936_000_123));
        assert_eq!(
            parse_time("2025-12-05T12:00:00.123Z"),
            Some(1_764_936_000_123)
        );
        assert_eq!(parse_time("yesterday"), None);
    }
}
