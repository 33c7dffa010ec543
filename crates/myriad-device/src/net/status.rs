//! The status message (`[mqtt] status_every_secs`): retained, QoS 1, on
//! `devices/{id}/status`, after each connect and every `status_every_secs`:
//!
//! ```json
//! {"ts": 1733350000000, "online": true, "uptime_s": 3600, "agent": "0.1.0",
//!  "firmware": {"version": "1.2.0", "counter": 7, "slot": "B"},
//!  "mem_available_bytes": 123456789, "disk_free_bytes": 987654321, "wifi_link_quality": 61}
//! ```
//!
//! Fields that cannot be read here are left out (`mem_available_bytes` from `/proc/meminfo`,
//! `disk_free_bytes` of the state directory's file system, `wifi_link_quality` from
//! `/proc/net/wireless` when the device has a wireless interface). Presence itself is the
//! platform's (`$events/presence/{id}`, from the connection and its keep alive); a subscriber
//! of `devices/{id}/status` gets the last message at once, being retained.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use myriad_agent::client::{Client, ConnState, Qos};
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The running image, as the status message names it.
#[derive(Debug, Clone)]
pub(super) struct Firmware {
    pub(super) version: String,
    pub(super) counter: u64,
    pub(super) slot: &'static str,
}

/// Starts the status task (none when `every_secs` is 0).
pub(super) fn start(
    rt: &Runtime,
    client: Client,
    id: &str,
    every_secs: u64,
    firmware: Firmware,
    state_dir: PathBuf,
    cancel: CancellationToken,
) -> Option<JoinHandle<()>> {
    if every_secs == 0 {
        return None;
    }
    let topic = format!("devices/{id}/status");
    Some(rt.spawn(run(
        client,
        topic,
        Duration::from_secs(every_secs),
        firmware,
        state_dir,
        cancel,
    )))
}

async fn run(
    client: Client,
    topic: String,
    every: Duration,
    firmware: Firmware,
    state_dir: PathBuf,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    let mut state = client.watch_state();
    let mut tick = super::every(every);
    let mut epoch = 0;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                match *state.borrow_and_update() {
                    ConnState::Up { epoch: e, .. } if e != epoch => epoch = e,
                    _ => continue,
                }
            }
            _ = tick.tick() => {
                if !matches!(*state.borrow(), ConnState::Up { .. }) {
                    continue;
                }
            }
        }
        let dir = state_dir.clone();
        let fw = firmware.clone();
        let Ok(body) =
            tokio::task::spawn_blocking(move || message(started.elapsed(), &fw, &dir)).await
        else {
            return;
        };
        if let Err(e) = client
            .publish_retained(topic.clone(), body.to_string(), Qos::AtLeastOnce)
            .await
        {
            tracing::warn!(error = %e, "status message not queued");
        }
    }
}

/// The status message now.
fn message(uptime: Duration, fw: &Firmware, state_dir: &std::path::Path) -> Value {
    let mut body = json!({
        "ts": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        "online": true,
        "uptime_s": uptime.as_secs(),
        "agent": env!("CARGO_PKG_VERSION"),
        "firmware": {"version": fw.version, "counter": fw.counter, "slot": fw.slot},
    });
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo")
        && let Some(bytes) = meminfo_available(&text)
    {
        body["mem_available_bytes"] = bytes.into();
    }
    if let Ok(stat) = rustix::fs::statvfs(state_dir) {
        body["disk_free_bytes"] = stat.f_bavail.saturating_mul(stat.f_frsize).into();
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/wireless")
        && let Some(quality) = wifi_link_quality(&text)
    {
        body["wifi_link_quality"] = quality.into();
    }
    body
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The first interface's link quality in `/proc/net/wireless` (two header lines, then
/// `wlan0: 0000   61.  -49.  -256 ...`).
fn wifi_link_quality(text: &str) -> Option<f64> {
    let line = text.lines().nth(2)?;
    let (_, rest) = line.split_once(':')?;
    rest.split_whitespace()
        .nth(1)?
        .trim_end_matches('.')
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let mem = "MemTotal:       16303608 kB\nMemFree:  1 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(meminfo_available(mem), Some(12_000_000 * 1024));
        assert_eq!(meminfo_available("MemTotal: 1 kB\n"), None);
        let wifi = "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n \
                    face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n \
                    wlan0: 0000   61.  -49.  -256        0      0      0      0     12        0\n";
        assert_eq!(wifi_link_quality(wifi), Some(61.0));
        assert_eq!(wifi_link_quality("header\nheader\n"), None);
    }

    #[test]
    fn message_names_the_firmware_and_reads_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let fw = Firmware {
            version: "1.2.0".into(),
            counter: 7,
            slot: "B",
        };
        let m = message(Duration::from_secs(90), &fw, dir.path());
        assert_eq!(m["uptime_s"], 90);
        assert_eq!(
            m["firmware"],
            json!({"version": "1.2.0", "counter": 7, "slot": "B"})
        );
        assert!(m["disk_free_bytes"].as_u64().unwrap() > 0, "{m}");
    }
}
