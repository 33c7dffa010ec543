//! Telemetry for Linux gateways (`[telemetry]`): the spool and the pump
//! ([`myriad_agent::telemetry`]) on the device's connection, the samplers
//! (`[[telemetry.sample]]`: a command or a file read on a schedule) and the status line.
//!
//! A command's stdout is one JSON object of metrics (`{"temp": 20.5, "on": true}`, one point
//! stamped now) or the batch form (`{"points":[{"ts":1733350000000,"temp":20.5}]}`, a point
//! without `ts` is stamped now); at most [`MAX_SAMPLE_OUTPUT`] bytes, within its
//! `timeout_secs` (killed after). A file holds one number (at most 4 KiB read), multiplied by
//! `scale`, as the metric `metric`. A sample that fails is logged and skipped.
//!
//! Health (`health_every_secs`): points with the metrics `agent.uptime_s`, `sys.uptime_s`,
//! `mem.available_bytes`, `mem.total_bytes` (Linux `/proc`; left out where unreadable),
//! `spool.pending_records`, `spool.dropped_points` and `fw.counter` (the running image's
//! security counter), through the spool like every point.
//!
//! The status line (`telemetry status`, every `status_every_secs`) carries the counters:
//! points handed over, records sent and acknowledged, records and points dropped over the
//! spool's cap, records pending.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use myriad_agent::client::Client;
use myriad_agent::config::{MAX_SAMPLE_OUTPUT, SampleConfig, TelemetrySettings};
use myriad_agent::fs::RealFs;
use myriad_agent::spool::{MetricValue, Point, Spool};
use myriad_agent::telemetry::{Telemetry, TelemetryConfig};
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::program::run_program;

/// Most bytes read from a sampled file.
const MAX_FILE_BYTES: u64 = 4096;

/// Opens the spool and starts the pump, the samplers and the status line.
pub(super) fn start(
    rt: &Runtime,
    client: Client,
    id: &str,
    t: TelemetrySettings,
    fw_counter: u64,
    cancel: CancellationToken,
) -> Result<Vec<JoinHandle<()>>> {
    let spool = Spool::open(RealFs, &t.spool_dir, t.spool)
        .with_context(|| format!("telemetry.spool_dir {}", t.spool_dir.display()))?;
    let report = spool.open_report().clone();
    if report != Default::default() {
        tracing::warn!(?report, "telemetry spool repaired at open");
    }
    let config = TelemetryConfig {
        window: t.window,
        replay: t.replay,
        ..TelemetryConfig::new(id)
    };
    let _guard = rt.enter();
    let (telemetry, pump) = Telemetry::start(client, spool, config, cancel.clone())?;
    let mut tasks = vec![pump];
    if t.status_every_secs > 0 {
        tasks.push(rt.spawn(status(
            telemetry.clone(),
            Duration::from_secs(t.status_every_secs),
            cancel.clone(),
        )));
    }
    if t.health_every_secs > 0 {
        tasks.push(rt.spawn(health(
            telemetry.clone(),
            Duration::from_secs(t.health_every_secs),
            fw_counter,
            cancel.clone(),
        )));
    }
    for (i, s) in t.samplers.into_iter().enumerate() {
        tasks.push(rt.spawn(sampler(
            i,
            s,
            telemetry.clone(),
            t.handed_log.clone(),
            cancel.clone(),
        )));
    }
    Ok(tasks)
}

async fn status(telemetry: Telemetry<RealFs>, every: Duration, cancel: CancellationToken) {
    let mut tick = super::every(every);
    while super::next_tick(&mut tick, &cancel).await {
        let t = telemetry.clone();
        let Ok(s) = tokio::task::spawn_blocking(move || t.stats()).await else {
            return;
        };
        tracing::info!(
            points_in = s.points_in,
            sent = s.sent,
            acked = s.acked,
            refused = s.refused,
            dropped_records = s.spool.dropped_records,
            dropped_points = s.spool.dropped_points,
            pending = s.spool.pending_records,
            "telemetry status"
        );
    }
}

/// A `/proc/meminfo` field in bytes.
fn meminfo(text: &str, field: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// The health metrics now.
fn health_point(t: &Telemetry<RealFs>, started: std::time::Instant, fw_counter: u64) -> Point {
    let mut metrics = vec![(
        "agent.uptime_s".to_string(),
        MetricValue::F64(started.elapsed().as_secs_f64().floor()),
    )];
    if let Ok(up) = std::fs::read_to_string("/proc/uptime")
        && let Some(x) = up
            .split_whitespace()
            .next()
            .and_then(|x| x.parse::<f64>().ok())
    {
        metrics.push(("sys.uptime_s".into(), MetricValue::F64(x.floor())));
    }
    if let Ok(mem) = std::fs::read_to_string("/proc/meminfo") {
        for (field, name) in [
            ("MemAvailable:", "mem.available_bytes"),
            ("MemTotal:", "mem.total_bytes"),
        ] {
            if let Some(x) = meminfo(&mem, field) {
                metrics.push((name.into(), MetricValue::F64(x)));
            }
        }
    }
    let s = t.stats();
    metrics.push((
        "spool.pending_records".into(),
        MetricValue::F64(s.spool.pending_records as f64),
    ));
    metrics.push((
        "spool.dropped_points".into(),
        MetricValue::F64(s.spool.dropped_points as f64),
    ));
    metrics.push(("fw.counter".into(), MetricValue::F64(fw_counter as f64)));
    Point {
        ts_ms: now_ms(),
        metrics,
    }
}

async fn health(
    telemetry: Telemetry<RealFs>,
    every: Duration,
    fw_counter: u64,
    cancel: CancellationToken,
) {
    let started = std::time::Instant::now();
    let mut tick = super::every(every);
    while super::next_tick(&mut tick, &cancel).await {
        let t = telemetry.clone();
        let r = tokio::task::spawn_blocking(move || {
            let p = health_point(&t, started, fw_counter);
            t.send_points_blocking(&[p])
        })
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "health point not spooled"),
            Err(_) => return,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn sampler(
    index: usize,
    s: SampleConfig,
    telemetry: Telemetry<RealFs>,
    handed_log: Option<PathBuf>,
    cancel: CancellationToken,
) {
    let mut tick = super::every(Duration::from_secs(s.every_secs));
    while super::next_tick(&mut tick, &cancel).await {
        let points = tokio::select! {
            _ = cancel.cancelled() => return,
            r = sample(&s) => r,
        };
        let points = match points {
            Ok(p) if p.is_empty() => continue,
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(sampler = index, error = %format!("{e:#}"), "sample failed");
                continue;
            }
        };
        let t = telemetry.clone();
        let log = handed_log.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<()> {
            t.send_points_blocking(&points)?;
            if let Some(path) = log {
                let mut text = String::new();
                for p in &points {
                    let metrics: serde_json::Map<String, Value> = p
                        .metrics
                        .iter()
                        .map(|(k, v)| {
                            let v = match v {
                                MetricValue::F64(x) => serde_json::json!(x),
                                MetricValue::Bool(b) => Value::Bool(*b),
                            };
                            (k.clone(), v)
                        })
                        .collect();
                    text.push_str(
                        &serde_json::json!({"ts": p.ts_ms, "metrics": metrics}).to_string(),
                    );
                    text.push('\n');
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .and_then(|mut f| f.write_all(text.as_bytes()))
                    .with_context(|| format!("telemetry.handed_log {}", path.display()))?;
            }
            Ok(())
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(sampler = index, error = %format!("{e:#}"), "points not spooled")
            }
            Err(_) => return,
        }
    }
}

/// One sample: the command's or the file's points.
async fn sample(s: &SampleConfig) -> Result<Vec<Point>> {
    let now = now_ms();
    if let Some(path) = &s.file {
        let p = path.clone();
        let text = tokio::task::spawn_blocking(move || -> Result<String> {
            use std::io::Read;
            let mut text = String::new();
            std::fs::File::open(&p)
                .and_then(|f| f.take(MAX_FILE_BYTES).read_to_string(&mut text))
                .with_context(|| format!("{}", p.display()))?;
            Ok(text)
        })
        .await
        .map_err(|e| anyhow!("{e}"))??;
        let x: f64 = text
            .trim()
            .parse()
            .with_context(|| format!("{}: not a number", path.display()))?;
        let metric = s.metric.clone().unwrap_or_default();
        return Ok(vec![Point {
            ts_ms: now,
            metrics: vec![(metric, MetricValue::F64(x * s.scale))],
        }]);
    }
    let out = run_program(&s.command, None, s.timeout_secs, MAX_SAMPLE_OUTPUT)
        .await
        .context("command")?;
    let v: Value = serde_json::from_slice(&out).context("command output: not JSON")?;
    points_from_json(&v, now)
}

/// The points of one JSON object of metrics or of the batch form.
fn points_from_json(v: &Value, now: u64) -> Result<Vec<Point>> {
    let Some(obj) = v.as_object() else {
        bail!("not a JSON object");
    };
    let items: Vec<&serde_json::Map<String, Value>> = match obj.get("points") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| {
                p.as_object()
                    .ok_or_else(|| anyhow!("points: not all objects"))
            })
            .collect::<Result<_>>()?,
        Some(_) => bail!("points: not an array"),
        None => vec![obj],
    };
    let mut out = Vec::with_capacity(items.len());
    for p in items {
        let mut ts = now;
        let mut metrics = Vec::new();
        for (k, v) in p {
            match (k.as_str(), v) {
                ("ts", v) => {
                    ts = v
                        .as_u64()
                        .ok_or_else(|| anyhow!("ts: not unix milliseconds"))?
                }
                (_, Value::Bool(b)) => metrics.push((k.clone(), MetricValue::Bool(*b))),
                (_, Value::Number(n)) => {
                    let x = n.as_f64().ok_or_else(|| anyhow!("{k}: not a number"))?;
                    metrics.push((k.clone(), MetricValue::F64(x)));
                }
                _ => bail!("{k}: not a number or boolean"),
            }
        }
        out.push(Point { ts_ms: ts, metrics });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_in_bytes() {
        let text = "MemTotal:        2048 kB\nMemAvailable:    1024 kB\n";
        assert_eq!(meminfo(text, "MemTotal:"), Some(2048.0 * 1024.0));
        assert_eq!(meminfo(text, "MemAvailable:"), Some(1024.0 * 1024.0));
        assert_eq!(meminfo(text, "SwapTotal:"), None);
    }

    #[test]
    fn json_forms() {
        let p = points_from_json(&serde_json::json!({"temp": 20.5, "on": true}), 7).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].ts_ms, 7);
        assert_eq!(p[0].metrics.len(), 2);
        let p = points_from_json(
            &serde_json::json!({"points": [{"ts": 5, "a": 1}, {"b": 2}]}),
            9,
        )
        .unwrap();
        assert_eq!((p[0].ts_ms, p[1].ts_ms), (5, 9));
        assert!(points_from_json(&serde_json::json!({"a": "x"}), 1).is_err());
        assert!(points_from_json(&serde_json::json!([1]), 1).is_err());
        assert!(points_from_json(&serde_json::json!({"points": 1}), 1).is_err());
        assert!(points_from_json(&serde_json::json!({"ts": -1, "a": 1}), 1).is_err());
    }
}
