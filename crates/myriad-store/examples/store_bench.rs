//! Benchmarks of the embedded store; one JSON line per measurement.
//!
//! ```text
//! cargo run --release -p myriad-store --example store_bench [-- --quick] [--only-recovery] [--dir PATH]
//! ```
//!
//! 1. `store_commit`: QoS 1-like traffic. Each commit holds `batch` new
//!    messages (PutOutbound, spread over 100 sessions) and the acks of the
//!    previous commit's messages (DeleteOutbound). `batch: 1` is one commit
//!    per message, `batch: 256` is group commit; with fsync on and off.
//! 2. `store_recovery`: a store with 100,000 sessions (one subscription
//!    each) and 1,000,000 queued messages (64-byte payloads), built in large
//!    batches; then `open` + `load()` timed, after a clean close.
//! 3. `store_recovery_after_kill`: the same after a process kill in the
//!    middle of no-fsync traffic (redb repairs the file at open).
//! 4. `store_compact_at_open`: half of the sessions deleted, then the
//!    reopen that finds enough free space to compact.
//!
//! The page cache is warm in every recovery measurement (the file was just
//! written): these are CPU costs, not disk reads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use myriad_mqtt::{ByteString, PacketProperties, QoS, SubscriptionOptions};
use myriad_store::{
    Change, EmbeddedOptions, EmbeddedStore, MessageRecord, OutboundRecord, OutboundState,
    SessionRecord, SessionStore, SubscriptionRecord,
};

const COMMIT_SESSIONS: usize = 100;

struct Args {
    quick: bool,
    only_recovery: bool,
    dir: Option<PathBuf>,
    child_kill: Option<PathBuf>,
}

fn args() -> Args {
    let mut args = Args {
        quick: false,
        only_recovery: false,
        dir: None,
        child_kill: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--only-recovery" => args.only_recovery = true,
            "--dir" => args.dir = it.next().map(PathBuf::from),
            "--child-kill" => args.child_kill = it.next().map(PathBuf::from),
            // cargo bench / test harness flags
            _ => {}
        }
    }
    args
}

fn client(n: usize) -> ByteString {
    ByteString::from(format!("device-{n:06}"))
}

fn outbound(n: u64, payload: &Bytes) -> OutboundRecord {
    OutboundRecord {
        state: OutboundState::Queued,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Vec::new(),
        message: Some(MessageRecord {
            topic: ByteString::from(format!("devices/{}/telemetry", n % 1000)),
            payload: payload.clone(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: PacketProperties::new(),
            expires_at: None,
        }),
    }
}

fn session(client_id: ByteString) -> Change {
    Change::PutSession(SessionRecord {
        client_id,
        expiry_interval: 3600,
        expires_at: None,
    })
}

fn open(dir: &Path, fsync: bool) -> EmbeddedStore {
    EmbeddedStore::open(dir, EmbeddedOptions { fsync }).expect("open store")
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn bench_commit(root: &Path, fsync: bool, batch: usize, budget: Duration, max_msgs: u64) {
    let dir = root.join(format!("commit-{fsync}-{batch}"));
    let mut store = open(&dir, fsync);
    let clients: Vec<ByteString> = (0..COMMIT_SESSIONS).map(client).collect();
    let setup: Vec<Change> = clients.iter().cloned().map(session).collect();
    store.commit(&setup).expect("sessions");
    let payload = Bytes::from(vec![0x42; 64]);
    let mut changes = Vec::with_capacity(batch * 2);
    let mut previous: Vec<(usize, u64)> = Vec::new();
    let mut next = 0u64;
    let mut commits = 0u64;
    let start = Instant::now();
    while start.elapsed() < budget && next < max_msgs {
        changes.clear();
        let mut current = Vec::with_capacity(batch);
        for _ in 0..batch {
            let s = (next % COMMIT_SESSIONS as u64) as usize;
            changes.push(Change::PutOutbound {
                client_id: clients[s].clone(),
                seq: next,
                record: outbound(next, &payload),
            });
            current.push((s, next));
            next += 1;
        }
        for &(s, seq) in &previous {
            changes.push(Change::DeleteOutbound {
                client_id: clients[s].clone(),
                seq,
            });
        }
        store.commit(&changes).expect("commit");
        commits += 1;
        previous = current;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"store_commit\",\"fsync\":{fsync},\"batch\":{batch},\"msgs\":{next},\"commits\":{commits},\"secs\":{secs:.3},\"msgs_per_s\":{:.0},\"commits_per_s\":{:.0},\"file_bytes\":{}}}",
        next as f64 / secs,
        commits as f64 / secs,
        file_len(store.path()),
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Builds `sessions` sessions with one subscription each and `records`
/// queued messages spread evenly over them.
fn build(dir: &Path, sessions: usize, records: u64) -> f64 {
    let start = Instant::now();
    let mut store = open(dir, false);
    let payload = Bytes::from(vec![0x17; 64]);
    let mut batch = Vec::with_capacity(20_000);
    for n in 0..sessions {
        let client_id = client(n);
        batch.push(session(client_id.clone()));
        batch.push(Change::PutSubscription {
            client_id,
            subscription: SubscriptionRecord {
                filter: ByteString::from(format!("devices/{n}/commands/#")),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
                id: None,
            },
        });
        if batch.len() >= 20_000 {
            store.commit(&batch).expect("commit sessions");
            batch.clear();
        }
    }
    store.commit(&batch).expect("commit sessions");
    batch.clear();
    let clients: Vec<ByteString> = (0..sessions).map(client).collect();
    for seq in 0..records {
        let s = (seq % sessions as u64) as usize;
        batch.push(Change::PutOutbound {
            client_id: clients[s].clone(),
            seq,
            record: outbound(seq, &payload),
        });
        if batch.len() >= 20_000 {
            store.commit(&batch).expect("commit outbound");
            batch.clear();
        }
    }
    store.commit(&batch).expect("commit outbound");
    store.close().expect("close");
    start.elapsed().as_secs_f64()
}

/// Times open and load; returns (open secs, load secs, sessions, records).
fn recover(dir: &Path) -> (f64, f64, usize, usize, EmbeddedStore) {
    let start = Instant::now();
    let mut store = open(dir, true);
    let opened = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let snapshot = store.load().expect("load");
    let loaded = start.elapsed().as_secs_f64();
    let records = snapshot.sessions.iter().map(|s| s.outbound.len()).sum();
    let sessions = snapshot.sessions.len();
    // Dropping a million records takes time too; not part of the load.
    drop(snapshot);
    (opened, loaded, sessions, records, store)
}

/// The child of `store_recovery_after_kill`: no-fsync traffic, then abort.
fn child_kill(dir: &Path) -> ! {
    let mut store = open(dir, false);
    let payload = Bytes::from(vec![0x99; 64]);
    let clients: Vec<ByteString> = (0..1000).map(client).collect();
    for round in 0..50u64 {
        let batch: Vec<Change> = (0..256u64)
            .map(|i| {
                let seq = 10_000_000 + round * 256 + i;
                Change::PutOutbound {
                    client_id: clients[(seq % 1000) as usize].clone(),
                    seq,
                    record: outbound(seq, &payload),
                }
            })
            .collect();
        store.commit(&batch).expect("commit");
    }
    std::process::abort();
}

fn main() {
    let args = args();
    if let Some(dir) = &args.child_kill {
        child_kill(dir);
    }
    let temp = tempfile::TempDir::new_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))
        .expect("bench directory");
    let root = temp.path();

    let (budget, max_fsync, max_nofsync) = if args.quick {
        (Duration::from_millis(500), 500, 50_000)
    } else {
        (Duration::from_secs(3), 5_000, 2_000_000)
    };
    for fsync in [true, false] {
        if args.only_recovery {
            break;
        }
        for batch in [1, 256] {
            let max = if fsync && batch == 1 {
                max_fsync
            } else {
                max_nofsync
            };
            bench_commit(root, fsync, batch, budget, max);
        }
    }

    let (sessions, records) = if args.quick {
        (10_000, 100_000)
    } else {
        (100_000, 1_000_000)
    };
    let dir = root.join("recovery");
    let build_secs = build(&dir, sessions, records);
    let path = dir.join(myriad_store::embedded::FILE_NAME);
    let (open_s, load_s, got_sessions, got_records, store) = recover(&dir);
    assert_eq!((got_sessions, got_records as u64), (sessions, records));
    println!(
        "{{\"bench\":\"store_recovery\",\"sessions\":{sessions},\"records\":{records},\"build_secs\":{build_secs:.2},\"file_bytes\":{},\"open_ms\":{:.0},\"load_ms\":{:.0},\"total_ms\":{:.0},\"records_per_s\":{:.0}}}",
        file_len(&path),
        open_s * 1e3,
        load_s * 1e3,
        (open_s + load_s) * 1e3,
        records as f64 / (open_s + load_s),
    );
    store.close().expect("close");

    // After a kill in the middle of no-fsync traffic.
    let exe = std::env::current_exe().expect("bench binary");
    let status = std::process::Command::new(exe)
        .arg("--child-kill")
        .arg(&dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("spawn child");
    assert!(!status.success());
    let (open_s, load_s, _, got_records, store) = recover(&dir);
    println!(
        "{{\"bench\":\"store_recovery_after_kill\",\"sessions\":{sessions},\"records\":{got_records},\"file_bytes\":{},\"open_ms\":{:.0},\"load_ms\":{:.0},\"total_ms\":{:.0}}}",
        file_len(&path),
        open_s * 1e3,
        load_s * 1e3,
        (open_s + load_s) * 1e3,
    );
    drop(store);

    // Compaction at open: delete half of the sessions, reopen.
    let mut store = open(&dir, false);
    let deletes: Vec<Change> = (0..sessions)
        .step_by(2)
        .map(|n| Change::DeleteSession {
            client_id: client(n),
        })
        .collect();
    let start = Instant::now();
    for chunk in deletes.chunks(5_000) {
        store.commit(chunk).expect("delete");
    }
    let delete_s = start.elapsed().as_secs_f64();
    store.close().expect("close");
    let start = Instant::now();
    let store = open(&dir, true);
    let open_s = start.elapsed().as_secs_f64();
    let report = store.open_report();
    println!(
        "{{\"bench\":\"store_compact_at_open\",\"deleted_sessions\":{},\"delete_ms\":{:.0},\"compacted\":{},\"file_bytes_before\":{},\"file_bytes_after\":{},\"open_ms\":{:.0}}}",
        deletes.len(),
        delete_s * 1e3,
        report.compacted,
        report.file_len_before,
        report.file_len_after,
        open_s * 1e3,
    );
}
