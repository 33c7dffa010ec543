//! End-to-end tests of `myriad sim`: small, bounded runs of each scenario
//! against a real `myriad serve`, checking the final JSON line.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use myriad_sim::report::serde_json::{self, Value};

/// A `myriad serve` child in its own working directory, killed on drop.
struct Broker {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Broker {
    fn start(name: &str) -> Broker {
        let dir =
            std::env::temp_dir().join(format!("myriad-sim-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create broker dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_myriad"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn myriad serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .strip_prefix("MQTT listening on ")
                    .and_then(|addr| addr.rsplit(':').next())
                    .and_then(|port| port.trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                panic!("myriad serve did not print its listening line");
            }
        };
        Broker { child, port, dir }
    }

    /// Runs `myriad sim --broker ... --broker-pid ... ARGS` and returns its JSON report.
    fn sim(&self, args: &[&str]) -> Value {
        let output = Command::new(env!("CARGO_BIN_EXE_myriad"))
            .arg("sim")
            .arg("--quiet")
            .args(["--broker", &format!("127.0.0.1:{}", self.port)])
            .args(["--broker-pid", &self.child.id().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run myriad sim");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "myriad sim {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        let last = stdout.lines().last().expect("a report line");
        serde_json::from_str(last).unwrap_or_else(|error| panic!("bad JSON {last:?}: {error}"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn num(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {report}"))
}

fn assert_complete(report: &Value) {
    let sent = num(report, "sent");
    assert!(sent > 0, "{report}");
    assert_eq!(
        num(report, "delivered"),
        num(report, "expected"),
        "{report}"
    );
    assert_eq!(num(report, "lost"), 0, "{report}");
    assert_eq!(num(report, "duplicates"), 0, "{report}");
    assert!(
        report["errors"].as_array().is_some_and(Vec::is_empty),
        "{report}"
    );
}

#[test]
fn conn_reports_memory_per_connection() {
    let broker = Broker::start("conn");
    let report = broker.sim(&[
        "conn",
        "-n",
        "50",
        "--hold",
        "1.5",
        "--settle",
        "0.5",
        "--keepalive",
        "1",
        "--conns-per-source",
        "20",
    ]);
    assert_eq!(report["scenario"], "conn");
    assert_eq!(num(&report, "connected"), 50, "{report}");
    assert_eq!(num(&report, "failed"), 0, "{report}");
    assert_eq!(num(&report, "dropped"), 0, "{report}");
    assert_eq!(num(&report, "source_addresses"), 3, "{report}");
    assert!(num(&report, "pongs") > 0, "{report}");
    assert!(report["bytes_per_conn"].is_i64(), "{report}");
}

#[test]
fn fanin_qos1_delivers_everything_once() {
    let broker = Broker::start("fanin");
    let report = broker.sim(&[
        "fanin",
        "--publishers",
        "4",
        "--qos",
        "1",
        "--count",
        "500",
        "--duration",
        "5",
    ]);
    assert_eq!(report["scenario"], "fanin");
    assert_eq!(num(&report, "sent"), 2000, "{report}");
    assert_eq!(num(&report, "acked"), 2000, "{report}");
    assert_complete(&report);
    // /proc counts CPU time in 10 ms ticks: a run this short may show none,
    // and then there is no rate to report.
    let broker_cpu = report["broker_cpu_secs"].as_f64().unwrap_or(0.0);
    if broker_cpu > 0.0 {
        assert!(report["msgs_per_broker_cpu_sec"].is_number(), "{report}");
    } else {
        assert!(report["msgs_per_broker_cpu_sec"].is_null(), "{report}");
    }
    assert!(report["p99_ms"].is_number(), "{report}");
}

#[test]
fn p2p_qos1_at_a_fixed_rate_on_mqtt_311() {
    let broker = Broker::start("p2p");
    let report = broker.sim(&[
        "--mqtt",
        "3",
        "p2p",
        "--pairs",
        "20",
        "--qos",
        "1",
        "--rate",
        "50",
        "--count",
        "40",
        "--duration",
        "5",
    ]);
    assert_eq!(report["mqtt"], 4);
    assert_eq!(num(&report, "sent"), 800, "{report}");
    assert_complete(&report);
    assert_eq!(num(&report, "latency_samples"), 800, "{report}");
}

#[test]
fn fanout_and_shared_qos2() {
    let broker = Broker::start("fanout");
    let report = broker.sim(&[
        "fanout",
        "--subscribers",
        "20",
        "--qos",
        "2",
        "--count",
        "50",
        "--duration",
        "5",
    ]);
    assert_eq!(num(&report, "expected"), 1000, "{report}");
    assert_complete(&report);
    let report = broker.sim(&[
        "shared",
        "--publishers",
        "2",
        "--subscribers",
        "3",
        "--qos",
        "1",
        "--count",
        "300",
        "--duration",
        "5",
    ]);
    assert_eq!(num(&report, "expected"), 600, "{report}");
    assert_complete(&report);
}

#[test]
fn fleet_reconnect_storm_brings_every_device_back() {
    let broker = Broker::start("fleet");
    let report = broker.sim(&[
        "fleet",
        "-n",
        "50",
        "--duration",
        "4",
        "--telemetry-interval",
        "0.5",
        "--command-rate",
        "20",
        "--storm-after",
        "1.5",
        "--keepalive",
        "5",
    ]);
    assert_eq!(report["scenario"], "fleet");
    assert_eq!(num(&report, "online_at_end"), 50, "{report}");
    assert_eq!(num(&report, "reconnects"), 50, "{report}");
    assert!(num(&report, "telemetry_sent") > 0, "{report}");
    assert!(num(&report, "commands_answered") > 0, "{report}");
    let storm = &report["storm"];
    assert_eq!(num(storm, "online_before"), 50, "{report}");
    assert!(storm["reconnect_secs"].is_number(), "{report}");
    assert!(storm["peak_over_steady"].is_number(), "{report}");
}
