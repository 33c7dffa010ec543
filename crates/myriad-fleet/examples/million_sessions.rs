//! One million device sessions in one process, through the broker's real
//! session engine (the sans-IO core) over an in-process transport: no
//! sockets (this machine allows 20,000 open files per process), packets in
//! and out as values. Keep alive and presence run as in `myriad serve`: the
//! core checks every connection's keep alive, its presence events feed the
//! device layer's `PresenceTracker`.
//!
//! Phases:
//! 1. connect N devices (3.1.1, keep alive 60 s) and subscribe each to its
//!    `$commands/{id}/#`; report memory per session (RSS delta / N);
//! 2. one keep-alive period of heartbeats: every device sends PINGREQ, spread
//!    over 60 s of simulated time, with the core's timers running every
//!    simulated second; report CPU nanoseconds per heartbeat;
//! 3. 1% of the devices go silent: 90 s (1.5 x keep alive) after their last
//!    packet the core closes them and presence marks them offline; check
//!    the online count.
//!
//! `cargo run --release -p myriad-fleet --example million_sessions [N]`
//! prints one JSON line.

use std::time::{Duration, Instant};

use myriad_broker::hooks::Presence;
use myriad_broker::{Broker, BrokerConfig, Output};
use myriad_fleet::presence::{ConnectInfo, DisconnectReason, PresenceTracker};
use myriad_fleet::registry::DeviceId;
use myriad_mqtt::{
    Connect, Packet, PacketProperties, ProtocolVersion, QoS, Subscribe, SubscriptionOptions,
    SubscriptionRequest,
};

const KEEP_ALIVE: u16 = 60;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// CPU time of this process (user + system), from /proc.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// The in-process transport: what the core sends is counted and dropped;
/// presence events go to the tracker.
struct Transport {
    tracker: PresenceTracker,
    ids: Vec<DeviceId>,
    packets_out: u64,
    closed: u64,
    clock_ms: u64,
}

impl Transport {
    fn drain(&mut self, broker: &mut Broker) {
        while let Some(output) = broker.poll_output() {
            match output {
                Output::Send(..) => self.packets_out += 1,
                Output::Close(_) => self.closed += 1,
                Output::Presence(Presence::Online {
                    conn, keep_alive, ..
                }) => {
                    let info = ConnectInfo {
                        address: None,
                        protocol: 4,
                        keep_alive_secs: keep_alive,
                    };
                    let device = &self.ids[conn as usize];
                    self.tracker.connected(device, conn, self.clock_ms, &info);
                }
                Output::Presence(Presence::Offline { conn, .. }) => {
                    let device = &self.ids[conn as usize];
                    self.tracker.disconnected(
                        device,
                        conn,
                        self.clock_ms,
                        DisconnectReason::KeepAliveTimeout,
                    );
                }
                // Receipts are off in this example.
                Output::Delivered(_) => {}
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sessions: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |a| a.parse())?;
    let ids: Vec<DeviceId> = (0..sessions)
        .map(|i| DeviceId::new(format!("dev-{i:07}")))
        .collect::<Result<_, _>>()?;
    let mut broker = Broker::new(BrokerConfig::default());
    broker.set_presence_events(true);
    let mut transport = Transport {
        tracker: PresenceTracker::new(),
        ids,
        packets_out: 0,
        closed: 0,
        clock_ms: 1_700_000_000_000,
    };
    let start = Instant::now();
    let rss_before = rss_bytes();

    // 1. Connect and subscribe everyone.
    let connect_started = Instant::now();
    for conn in 0..sessions {
        let client_id = transport.ids[conn as usize].as_str().to_string();
        let connect = Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: KEEP_ALIVE,
            client_id: client_id.as_str().into(),
            will: None,
            username: None,
            password: None,
            properties: PacketProperties::new(),
        };
        broker.handle_connect(start, conn, connect);
        let subscribe = Subscribe {
            packet_id: 1,
            filters: vec![SubscriptionRequest {
                filter: format!("$commands/{client_id}/#").into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: PacketProperties::new(),
        };
        broker.handle_packet(start, conn, Packet::Subscribe(subscribe));
        transport.drain(&mut broker);
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let rss_connected = rss_bytes();
    let online_after_connect = transport.tracker.online_count();

    // 2. One keep-alive period of heartbeats, spread over 60 simulated seconds.
    let silent_every = 100; // 1% of devices stop sending
    let period = Duration::from_secs(u64::from(KEEP_ALIVE));
    let cpu_before = cpu_secs();
    let wall_before = Instant::now();
    let mut heartbeats = 0u64;
    let mut next_tick = start + Duration::from_secs(1);
    for conn in 0..sessions {
        let at = start + period.mul_f64(conn as f64 / sessions as f64);
        while next_tick <= at {
            broker.handle_timeout(next_tick);
            next_tick += Duration::from_secs(1);
        }
        transport.clock_ms = 1_700_000_000_000 + (at - start).as_millis() as u64;
        if conn % silent_every != 0 {
            broker.handle_packet(at, conn, Packet::PingReq);
            heartbeats += 1;
        }
        transport.drain(&mut broker);
    }
    let heartbeat_cpu = cpu_secs() - cpu_before;
    let heartbeat_wall = wall_before.elapsed().as_secs_f64();

    // 3. The silent ones (their last packet was at 0 s) must be closed at 90 s.
    let silent = sessions.div_ceil(silent_every);
    let deadline = start + period.mul_f64(1.5);
    while next_tick <= deadline {
        transport.clock_ms = 1_700_000_000_000 + (next_tick - start).as_millis() as u64;
        broker.handle_timeout(next_tick);
        transport.drain(&mut broker);
        next_tick += Duration::from_secs(1);
    }
    let online_at_end = transport.tracker.online_count();
    let rss_end = rss_bytes();
    let result = format!(
        concat!(
            "{{\"scenario\":\"million_sessions\",\"sessions\":{},\"connect_secs\":{:.3},",
            "\"sessions_per_sec\":{:.0},\"rss_before\":{},\"rss_connected\":{},",
            "\"bytes_per_session\":{},\"online_after_connect\":{},\"heartbeats\":{},",
            "\"heartbeat_cpu_secs\":{:.3},\"heartbeat_wall_secs\":{:.3},\"ns_per_heartbeat\":{:.0},",
            "\"heartbeat_cpu_share_at_60s_keepalive\":{:.4},\"silent\":{},",
            "\"closed_by_keep_alive\":{},\"online_at_end\":{},\"rss_end\":{},\"packets_out\":{},",
            "\"elapsed_secs\":{:.3}}}"
        ),
        sessions,
        connect_secs,
        sessions as f64 / connect_secs,
        rss_before,
        rss_connected,
        (rss_connected - rss_before) / sessions.max(1),
        online_after_connect,
        heartbeats,
        heartbeat_cpu,
        heartbeat_wall,
        heartbeat_cpu * 1e9 / heartbeats.max(1) as f64,
        heartbeat_cpu / period.as_secs_f64(),
        silent,
        transport.closed,
        online_at_end,
        rss_end,
        transport.packets_out,
        start.elapsed().as_secs_f64(),
    );
    println!("{result}");
    if online_at_end as u64 != sessions - silent || transport.closed != silent {
        return Err(format!(
            "expected {} online and {silent} closed, got {online_at_end} and {}",
            sessions - silent,
            transport.closed
        )
        .into());
    }
    Ok(())
}
