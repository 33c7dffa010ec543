//! Device groups and attributes from the registry as PromQL labels on telemetry series.
//!
//! A series `(device, metric)` of the telemetry store carries `__name__`, `device` and
//! `metric`; its device's registry record adds `group` (the device's groups, sorted and
//! comma-joined) and one label per attribute (keys sanitised into label names, see
//! [`myriad_tsdb::promql::attribute_label`]). Selectors, `by (..)` / `without (..)` and the
//! label APIs see them.
//!
//! # How labels are resolved
//!
//! The registry keeps a group index and an attribute index (see
//! [`crate::store::FleetStore::devices_in_group`] and
//! [`crate::store::FleetStore::devices_with_attribute`]). A selector's `=` matchers with a
//! non-empty value on `group` or an attribute label take their devices from them first
//! ([`RegistryLabels`]'s [`DeviceLabelSource::devices_with`], [`promql::device_sets`]): the
//! candidate series are then those devices' series (the store's `device` postings), not every
//! series. `group="a,b"` (the joined form) looks up `a`; an attribute label looks up every
//! registry key that sanitises to it (found by the key's prefix before its first `_`, at most
//! [`MAX_ATTRIBUTE_KEYS`] distinct keys). Otherwise (`!=`, `=~`, `!~`, or an index answer past
//! [`PromLimits::max_examined`] devices) the store's series index selects the candidate series
//! by their store labels (metric name, `device`, `metric`: posting lists, no scan). Either way
//! the registry is then read by device id for the candidates' distinct devices
//! ([`crate::store::FleetStore::get_devices`]: point lookups in one read transaction), and
//! every device-label matcher is applied to those. Nothing is cached: a change to a device's
//! groups or attributes shows in the next query.
//!
//! The work is bounded by [`PromLimits::max_examined`] (100,000): devices an index answers per
//! matcher (past it: the bounded scan below), candidate series of a selector with a
//! device-label matcher (a selector whose only non-empty matchers are device labels and none
//! of them an indexed `=`, `{group=~"lab"}`, makes every series a candidate), series checked
//! for data in a `start`/`end` window, and devices looked up per label request; one past is a
//! 422 `execution` error asking to narrow the selector.
//!
//! The store's part runs as a job on the telemetry writer thread; the registry reads run on
//! the caller's thread (the blocking pool), so devices' writes are not held up by them.

use std::sync::Arc;

use myriad_tsdb::promql::{
    self, DeviceLabelSource, DeviceLabels, Labels, PromError, PromLimits, Selector, SeriesSource,
};
use myriad_tsdb::{Point, SeriesId};

use super::telemetry::SlicedReads;
use crate::store::{FleetStore, IdPage, MAX_INDEX_PAGE};

/// The registry as a [`DeviceLabelSource`]: each device's groups and attributes, read by id.
#[derive(Debug, Clone)]
pub struct RegistryLabels(pub Arc<FleetStore>);

impl DeviceLabelSource for RegistryLabels {
    fn device_labels(&self, devices: &[&str]) -> Result<Vec<DeviceLabels>, PromError> {
        let found = self
            .0
            .get_devices(devices)
            .map_err(|e| PromError::Unavailable(format!("the device registry failed: {e}")))?;
        Ok(found
            .into_iter()
            .map(|d| {
                d.map(|d| DeviceLabels::new(d.groups, d.attributes))
                    .unwrap_or_default()
            })
            .collect())
    }

    fn devices_with(
        &self,
        label: &str,
        value: &str,
        max: usize,
    ) -> Result<Option<Vec<String>>, PromError> {
        let failed = |e: crate::store::FleetStoreError| {
            PromError::Unavailable(format!("the device registry failed: {e}"))
        };
        if label == promql::GROUP_LABEL {
            // `a,b` is the joined form: the devices in `a` are a superset.
            let group = value.split(',').next().unwrap_or(value);
            return collect(max, |after| {
                self.0.devices_in_group(group, after, MAX_INDEX_PAGE)
            })
            .map_err(failed);
        }
        // The registry keys this label name can come from: sanitising keeps every character
        // before the first `_` (a name starting with `_` can come from any key).
        let prefix = label.split('_').next().unwrap_or("");
        let (keys, more) = self
            .0
            .attribute_keys(prefix, MAX_ATTRIBUTE_KEYS)
            .map_err(failed)?;
        if more {
            return Ok(None);
        }
        let mut out = Vec::new();
        for key in keys
            .iter()
            .filter(|k| promql::attribute_label(k).as_deref() == Some(label))
        {
            let left = max.saturating_sub(out.len());
            match collect(left, |after| {
                self.0
                    .devices_with_attribute(key, value, after, MAX_INDEX_PAGE)
            })
            .map_err(failed)?
            {
                Some(devices) => out.extend(devices),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }
}

/// Most distinct registry attribute keys looked at to find the keys of one attribute label
/// (more: the selector examines its candidate series instead).
pub const MAX_ATTRIBUTE_KEYS: usize = 1_000;

/// The ids of every page `page` answers (from the first), or `None` past `max`.
fn collect(
    max: usize,
    page: impl Fn(Option<&str>) -> Result<IdPage, crate::store::FleetStoreError>,
) -> Result<Option<Vec<String>>, crate::store::FleetStoreError> {
    let mut out: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (ids, next) = page(after.as_deref())?;
        out.extend(ids);
        if out.len() > max {
            return Ok(None);
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(Some(out)),
        }
    }
}

/// A PromQL [`SeriesSource`] over the telemetry store and the registry: each selector's
/// candidates are one job on the telemetry writer ([`promql::candidates`]), their devices'
/// labels are read from the registry on the calling thread ([`promql::finish`]), and points
/// are read series by series as [`SlicedReads`] does. Use it from the blocking pool only.
#[derive(Debug, Clone)]
pub struct LabelledReads {
    /// The store, read job by job.
    pub reads: SlicedReads,
    /// The registry.
    pub devices: RegistryLabels,
}

impl SeriesSource for LabelledReads {
    fn select(
        &self,
        sel: &Selector,
        limits: &PromLimits,
    ) -> Result<Vec<(SeriesId, Labels)>, PromError> {
        let (owned, l) = (sel.clone(), *limits);
        let sets = promql::device_sets(sel, &self.devices, limits)?;
        let candidates = self
            .reads
            .0
            .read_blocking(move |db| {
                promql::candidates_within(db.engine().index(), &owned, &l, None, &sets)
            })
            .map_err(|e| PromError::Unavailable(e.to_string()))??;
        promql::finish(candidates, &self.devices, limits)
    }

    fn raw(&self, id: SeriesId, from: i64, to: i64) -> Result<Vec<Point>, PromError> {
        self.reads.raw(id, from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{DeviceId, DevicePatch, NewDevice};
    use crate::service::now_ms;
    use crate::service::telemetry::{DeviceSamples, TelemetryConfig, TelemetryService};
    use crate::telemetry::{ParsedSample, Sample};

    /// Timing, not a check: `cargo test --profile ci -p myriad-fleet --lib
    /// telemetry_labels::tests::timing -- --ignored --nocapture`. 10,000 registered devices with
    /// one `temp` series each (and 90,000 more series of other metrics).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn timing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(FleetStore::open(&dir.path().join("fleet")).expect("store"));
        let rows: Vec<_> = (0..10_000)
            .map(|i| {
                let mut new = NewDevice::new(DeviceId::new(format!("dev{i:05}")).expect("id"));
                new.groups.insert(format!("g{}", i % 10));
                new.attributes.insert("site".into(), format!("s{}", i % 7));
                (new, None)
            })
            .collect();
        store.insert_devices_batch(&rows, 0).expect("insert");
        let svc =
            TelemetryService::open(dir.path().join("tsdb"), false, TelemetryConfig::default())
                .expect("open");
        let now = now_ms() as i64;
        let batches = (0..10_000)
            .map(|i| DeviceSamples {
                device: format!("dev{i:05}"),
                samples: (0..10)
                    .map(|m| ParsedSample {
                        metric: if m == 0 {
                            "temp".into()
                        } else {
                            format!("m{m}")
                        },
                        ts: now - 1_000,
                        value: Sample::Number(f64::from(i)),
                    })
                    .collect(),
            })
            .collect();
        svc.write_durable(batches).await.expect("write");
        let source = LabelledReads {
            reads: SlicedReads(svc.clone()),
            devices: RegistryLabels(store.clone()),
        };
        tokio::task::spawn_blocking(move || {
            let l = PromLimits::default();
            for text in [
                r#"temp{device="dev00007"}"#,
                "sum by (site) (temp)",
                r#"count(temp{group="g3"})"#,
                r#"count({group="g3"})"#,
            ] {
                let q = promql::Query::parse(text, &l).expect("parse");
                let started = std::time::Instant::now();
                let r = promql::eval_instant(&source, &q, now, &l);
                println!(
                    "{text}: {:?} in {:?}",
                    r.map(|v| match v {
                        promql::Instant::Vector(v) => v.len(),
                        _ => 0,
                    }),
                    started.elapsed()
                );
            }
        })
        .await
        .expect("join");
    }

    /// A telemetry store under `dir` holding one `temp` sample per `(device, value)` a second
    /// before the returned time, and a source reading it with `store`'s device labels.
    async fn temps(
        dir: &std::path::Path,
        store: &Arc<FleetStore>,
        values: impl Iterator<Item = (String, f64)>,
    ) -> (LabelledReads, i64) {
        let svc = TelemetryService::open(dir.join("tsdb"), false, TelemetryConfig::default())
            .expect("open");
        let now = now_ms() as i64;
        let batches = values
            .map(|(device, v)| DeviceSamples {
                device,
                samples: vec![ParsedSample {
                    metric: "temp".into(),
                    ts: now - 1_000,
                    value: Sample::Number(v),
                }],
            })
            .collect();
        svc.write_durable(batches).await.expect("write");
        let source = LabelledReads {
            reads: SlicedReads(svc.clone()),
            devices: RegistryLabels(store.clone()),
        };
        (source, now)
    }

    /// Through the service and a real registry: `{group=..}` and `sum by (site)` resolve from
    /// the registry, and a device's new groups show in the next query.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registry_groups_and_attributes_label_series() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(FleetStore::open(&dir.path().join("fleet")).expect("store"));
        for (id, groups, site) in [
            ("d1", vec!["lab"], "ber"),
            ("d2", vec!["lab", "roof"], "muc"),
            ("d3", vec![], "ber"),
        ] {
            let mut new = NewDevice::new(DeviceId::new(id).expect("id"));
            new.groups = groups.into_iter().map(String::from).collect();
            new.attributes.insert("site".into(), site.into());
            store.create_device(&new, 0).expect("create");
        }
        let (source, now) = temps(
            dir.path(),
            &store,
            (1..=3).map(|d| (format!("d{d}"), f64::from(d))),
        )
        .await;
        let eval = move |source: LabelledReads, text: &'static str| {
            tokio::task::spawn_blocking(move || {
                let l = PromLimits::default();
                let q = promql::Query::parse(text, &l).expect("parse");
                match promql::eval_instant(&source, &q, now, &l).expect("query") {
                    promql::Instant::Vector(v) => v,
                    other => panic!("a vector expected: {other:?}"),
                }
            })
        };
        let v = eval(source.clone(), r#"temp{group="lab"}"#)
            .await
            .expect("join");
        let mut got: Vec<(String, String)> = v
            .iter()
            .map(|(l, _)| (l["device"].clone(), l["group"].clone()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("d1".into(), "lab".into()),
                ("d2".into(), "lab,roof".into())
            ]
        );
        let v = eval(source.clone(), "sum by (site) (temp)")
            .await
            .expect("join");
        let sums: Vec<(String, f64)> = v.into_iter().map(|(l, x)| (l["site"].clone(), x)).collect();
        assert_eq!(sums, vec![("ber".into(), 4.0), ("muc".into(), 2.0)]);
        // d3 joins lab: the next query sees it.
        let patch: DevicePatch = serde_json::from_str(r#"{"groups":["lab"]}"#).expect("patch");
        store
            .update_device(&DeviceId::new("d3").expect("id"), &patch, 1)
            .expect("update");
        let v = eval(source, r#"count(temp{group="lab"})"#)
            .await
            .expect("join");
        assert_eq!(v[0].1, 3.0);
    }

    /// `=` matchers on groups and attributes pick their devices from the registry's indexes:
    /// with 40 devices outside the group and `max_examined` 10, selectors over a group of 3
    /// answer (before: every series, or every `temp` series, was examined: a 422). A group
    /// past `max_examined` devices falls back to examining the series, and is the 422.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_and_attribute_selectors_do_not_examine_other_devices() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(FleetStore::open(&dir.path().join("fleet")).expect("store"));
        let rows: Vec<_> = (0..54)
            .map(|i| {
                let mut new = NewDevice::new(DeviceId::new(format!("d{i:02}")).expect("id"));
                if i < 3 {
                    new.groups.insert("lab".into());
                    new.attributes.insert("fw-version".into(), "2".into());
                } else if i < 14 {
                    new.groups.insert("big".into());
                }
                (new, None)
            })
            .collect();
        store.insert_devices_batch(&rows, 0).expect("insert");
        let (source, now) = temps(
            dir.path(),
            &store,
            (0..54).map(|i| (format!("d{i:02}"), f64::from(i))),
        )
        .await;
        tokio::task::spawn_blocking(move || {
            let l = PromLimits {
                max_examined: 10,
                ..PromLimits::default()
            };
            let eval = |text: &str| {
                let q = promql::Query::parse(text, &l).expect("parse");
                promql::eval_instant(&source, &q, now, &l)
            };
            for text in [
                r#"{group="lab"}"#,
                r#"temp{group="lab"}"#,
                r#"temp{fw_version="2"}"#,
                r#"temp{group="lab", fw_version="2"}"#,
            ] {
                match eval(text) {
                    Ok(promql::Instant::Vector(v)) => {
                        let mut devices: Vec<String> =
                            v.iter().map(|(l, _)| l["device"].clone()).collect();
                        devices.sort();
                        assert_eq!(devices, ["d00", "d01", "d02"], "{text}");
                    }
                    other => panic!("{text}: {other:?}"),
                }
            }
            // No device has both: nothing, still without examining.
            match eval(r#"temp{group="lab", fw_version="3"}"#) {
                Ok(promql::Instant::Vector(v)) => assert!(v.is_empty()),
                other => panic!("{other:?}"),
            }
            // 11 devices in `big`, one past max_examined: the series are examined, a 422.
            assert!(matches!(
                eval(r#"temp{group="big"}"#),
                Err(PromError::TooManyExamined { limit: 10 })
            ));
            // A regex matcher keeps the bounded scan.
            assert!(matches!(
                eval(r#"temp{group=~"la."}"#),
                Err(PromError::TooManyExamined { limit: 10 })
            ));
        })
        .await
        .expect("join");
    }
}
