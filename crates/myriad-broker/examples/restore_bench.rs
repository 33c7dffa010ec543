//! Recovery time of the whole broker state: a store holding 100,000
//! persistent sessions (one subscription each) and 1,000,000 queued QoS 1
//! messages is opened, loaded and turned back into a running broker core.
//!
//! `cargo run --release -p myriad-broker --example restore_bench [sessions] [messages]`
//! prints one JSON line.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use myriad_broker::{Broker, BrokerConfig};
use myriad_mqtt::{PacketProperties, QoS, SubscriptionOptions};
use myriad_store::{
    Change, EmbeddedOptions, EmbeddedStore, MessageRecord, OutboundRecord, OutboundState,
    SessionRecord, SessionStore, SubscriptionRecord,
};

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let sessions: u64 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let messages: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let per_session = messages.div_ceil(sessions.max(1));
    let dir = std::env::temp_dir().join(format!("myriad-restore-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // Fill the store in large batches, as a long-running broker would have.
    let build_started = Instant::now();
    {
        let mut store = EmbeddedStore::open(&dir, EmbeddedOptions { fsync: false })?;
        let payload = Bytes::from(vec![b'x'; 64]);
        let mut batch = Vec::with_capacity(20_000);
        let mut queued = 0u64;
        for s in 0..sessions {
            let client_id: myriad_mqtt::ByteString = format!("device-{s:07}").into();
            batch.push(Change::PutSession(SessionRecord {
                client_id: client_id.clone(),
                expiry_interval: u32::MAX,
                expires_at: None,
            }));
            batch.push(Change::PutSubscription {
                client_id: client_id.clone(),
                subscription: SubscriptionRecord {
                    filter: format!("devices/{s}/cmd/#").into(),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..SubscriptionOptions::default()
                    },
                    id: None,
                },
            });
            for seq in 1..=per_session {
                if queued == messages {
                    break;
                }
                queued += 1;
                batch.push(Change::PutOutbound {
                    client_id: client_id.clone(),
                    seq,
                    record: OutboundRecord {
                        state: OutboundState::Queued,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        subscription_ids: Vec::new(),
                        message: Some(MessageRecord {
                            topic: format!("devices/{s}/cmd/set").into(),
                            payload: payload.clone(),
                            qos: QoS::AtLeastOnce,
                            retain: false,
                            properties: PacketProperties::new(),
                            expires_at: None,
                        }),
                    },
                });
            }
            if batch.len() >= 20_000 {
                store.commit(&batch)?;
                batch.clear();
            }
        }
        store.commit(&batch)?;
        store.close()?;
    }
    let build_ms = build_started.elapsed().as_millis();

    let rss_before = rss_bytes();
    let started = Instant::now();
    let mut store = EmbeddedStore::open(&dir, EmbeddedOptions { fsync: true })?;
    let opened = started.elapsed();
    let snapshot = store.load()?;
    let loaded = started.elapsed();
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)?
        .as_millis()
        .try_into()?;
    let broker = Broker::restore(BrokerConfig::default(), snapshot, Instant::now(), now_unix);
    let restored = started.elapsed();
    let rss_after = rss_bytes();
    println!(
        "{{\"bench\":\"broker_restore\",\"sessions\":{},\"queued_messages\":{},\"subscriptions\":{},\
\"open_ms\":{},\"load_ms\":{},\"restore_ms\":{},\"total_ms\":{},\"rss_bytes_after_restore\":{},\
\"rss_growth_bytes\":{},\"build_ms\":{}}}",
        broker.session_count(),
        messages,
        broker.subscription_count(),
        opened.as_millis(),
        (loaded - opened).as_millis(),
        (restored - loaded).as_millis(),
        restored.as_millis(),
        rss_after,
        rss_after.saturating_sub(rss_before),
        build_ms
    );
    drop(broker);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
