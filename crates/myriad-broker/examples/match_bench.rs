//! Subscription-tree matching speed: ns per `SubscriptionTree::matches` on
//! device-shaped topics (fan-in's hot path). Prints one JSON line per case.
//!
//! `cargo run --release -p myriad-broker --example match_bench`

use std::time::Instant;

use myriad_broker::core::tree::{Subscription, SubscriptionTree};
use myriad_mqtt::{QoS, SubscriptionOptions};

fn sub() -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..SubscriptionOptions::default()
        },
        id: None,
    }
}

fn main() {
    const DEVICES: u64 = 10_000;
    const ROUNDS: u64 = 3_000_000;
    let mut tree = SubscriptionTree::new();
    for device in 0..DEVICES {
        tree.insert(
            &format!("devices/d{device}/commands/#"),
            None,
            device,
            sub(),
        );
        tree.insert(
            &format!("$shadow/d{device}/update/accepted"),
            None,
            device,
            sub(),
        );
    }
    tree.insert("devices/+/telemetry", None, DEVICES, sub());
    tree.insert("devices/+/telemetry", Some("workers"), DEVICES + 1, sub());
    tree.insert("devices/+/telemetry", Some("workers"), DEVICES + 2, sub());
    let topics: Vec<String> = (0..1024)
        .map(|i| format!("devices/d{}/telemetry", i * 7 % DEVICES))
        .collect();
    let deep: Vec<String> = (0..1024)
        .map(|i| {
            format!(
                "devices/d{}/commands/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q",
                i * 7 % DEVICES
            )
        })
        .collect();
    let online = |_| true;
    for (name, topics) in [("telemetry", &topics), ("deep_24_levels", &deep)] {
        let mut out = Vec::with_capacity(8);
        let mut matched = 0usize;
        let started = Instant::now();
        for round in 0..ROUNDS {
            out.clear();
            tree.matches(&topics[(round % 1024) as usize], &online, &mut out);
            matched += out.len();
        }
        let ns = started.elapsed().as_nanos() as f64 / ROUNDS as f64;
        println!(
            "{{\"bench\":\"match\",\"case\":\"{name}\",\"ns_per_match\":{ns:.1},\"matched_per_topic\":{}}}",
            matched as u64 / ROUNDS
        );
    }
}
