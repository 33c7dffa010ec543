//! The store contract, held against both implementations: every test in
//! `conformance` runs on a `MemoryStore` and on an `EmbeddedStore` (with and
//! without fsync). Then what only the file store can do: survive a reopen
//! and a process kill, and refuse damaged files without panicking.

use std::path::Path;

use bytes::Bytes;
use myriad_mqtt::{ByteString, Properties, QoS, RetainHandling, SubscriptionOptions};
use myriad_store::{
    Change, EmbeddedOptions, EmbeddedStore, MemoryStore, MessageRecord, OutboundRecord,
    OutboundState, SessionRecord, SessionStore, Snapshot, StoreError, StoredSession,
    SubscriptionRecord,
};
use tempfile::TempDir;

fn id(s: &str) -> ByteString {
    ByteString::from(s)
}

fn put_session(client_id: &str, expiry_interval: u32) -> Change {
    Change::PutSession(SessionRecord {
        client_id: id(client_id),
        expiry_interval,
        expires_at: Some(1_700_000_000_000),
    })
}

fn delete_session(client_id: &str) -> Change {
    Change::DeleteSession {
        client_id: id(client_id),
    }
}

fn subscription(filter: &str) -> SubscriptionRecord {
    SubscriptionRecord {
        filter: id(filter),
        options: SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: false,
            retain_handling: RetainHandling::SendIfNew,
        },
        id: Some(42),
    }
}

fn put_subscription(client_id: &str, filter: &str) -> Change {
    Change::PutSubscription {
        client_id: id(client_id),
        subscription: subscription(filter),
    }
}

fn message(topic: &str, payload: &[u8]) -> MessageRecord {
    MessageRecord {
        topic: id(topic),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            content_type: Some("application/json".into()),
            correlation_data: Some(Bytes::from_static(b"\x00corr")),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        }
        .into(),
        expires_at: Some(1_800_000_000_000),
    }
}

fn outbound_record(payload: &[u8]) -> OutboundRecord {
    OutboundRecord {
        state: OutboundState::Queued,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![1, 2],
        message: Some(message("t/out", payload)),
    }
}

fn put_outbound(client_id: &str, seq: u64) -> Change {
    Change::PutOutbound {
        client_id: id(client_id),
        seq,
        record: outbound_record(&seq.to_be_bytes()),
    }
}

fn delete_outbound(client_id: &str, seq: u64) -> Change {
    Change::DeleteOutbound {
        client_id: id(client_id),
        seq,
    }
}

fn session_of<'a>(snapshot: &'a Snapshot, client_id: &str) -> Option<&'a StoredSession> {
    snapshot
        .sessions
        .iter()
        .find(|s| s.record.client_id == client_id)
}

fn open(dir: &Path, fsync: bool) -> EmbeddedStore {
    EmbeddedStore::open(dir, EmbeddedOptions { fsync }).expect("open store")
}

/// The shared suite: each function takes any store, empty.
mod conformance {
    use super::*;

    pub fn every_change_kind_puts_and_deletes(store: &mut impl SessionStore) {
        let will = message("will/topic", b"gone");
        let retained = MessageRecord {
            retain: true,
            ..message("r/1", b"kept")
        };
        store
            .commit(&[
                put_session("c", 60),
                put_subscription("c", "a/+"),
                put_subscription("c", "$share/g/b/#"),
                put_outbound("c", 1),
                Change::PutOutbound {
                    client_id: id("c"),
                    seq: 2,
                    record: OutboundRecord {
                        state: OutboundState::Released { packet_id: 9 },
                        qos: QoS::ExactlyOnce,
                        retain: false,
                        subscription_ids: Vec::new(),
                        message: None,
                    },
                },
                Change::PutInboundQos2 {
                    client_id: id("c"),
                    packet_id: 300,
                },
                Change::PutInboundQos2 {
                    client_id: id("c"),
                    packet_id: 2,
                },
                Change::PutWill {
                    client_id: id("c"),
                    due_at: 5_000,
                    message: will.clone(),
                },
                Change::PutRetained(retained.clone()),
            ])
            .expect("valid batch");
        let snapshot = store.load().expect("load");
        let expected = Snapshot {
            sessions: vec![StoredSession {
                record: SessionRecord {
                    client_id: id("c"),
                    expiry_interval: 60,
                    expires_at: Some(1_700_000_000_000),
                },
                subscriptions: vec![subscription("$share/g/b/#"), subscription("a/+")],
                outbound: vec![
                    (1, outbound_record(&1u64.to_be_bytes())),
                    (
                        2,
                        OutboundRecord {
                            state: OutboundState::Released { packet_id: 9 },
                            qos: QoS::ExactlyOnce,
                            retain: false,
                            subscription_ids: Vec::new(),
                            message: None,
                        },
                    ),
                ],
                inbound_qos2: vec![2, 300],
                will: Some((5_000, will)),
            }],
            retained: vec![retained],
        };
        assert_eq!(snapshot, expected);

        // Updates replace.
        store
            .commit(&[
                put_session("c", 120),
                Change::PutOutbound {
                    client_id: id("c"),
                    seq: 1,
                    record: OutboundRecord {
                        state: OutboundState::Published { packet_id: 4 },
                        ..outbound_record(b"x")
                    },
                },
            ])
            .expect("updates");
        let snapshot = store.load().expect("load");
        let c = session_of(&snapshot, "c").expect("session c");
        assert_eq!(c.record.expiry_interval, 120);
        assert_eq!(
            c.subscriptions.len(),
            2,
            "PutSession keeps what the session holds"
        );
        assert_eq!(
            c.outbound[0].1.state,
            OutboundState::Published { packet_id: 4 }
        );

        store
            .commit(&[
                Change::DeleteSubscription {
                    client_id: id("c"),
                    filter: id("a/+"),
                },
                delete_outbound("c", 1),
                delete_outbound("c", 2),
                Change::DeleteInboundQos2 {
                    client_id: id("c"),
                    packet_id: 300,
                },
                Change::DeleteWill { client_id: id("c") },
                Change::DeleteRetained { topic: id("r/1") },
                // Deleting what is not there is not an error.
                Change::DeleteRetained { topic: id("none") },
                delete_outbound("c", 77),
            ])
            .expect("deletes");
        let snapshot = store.load().expect("load");
        let c = session_of(&snapshot, "c").expect("session c");
        assert_eq!(c.subscriptions, vec![subscription("$share/g/b/#")]);
        assert!(c.outbound.is_empty());
        assert_eq!(c.inbound_qos2, vec![2]);
        assert_eq!(c.will, None);
        assert!(snapshot.retained.is_empty());
    }

    /// Client ids that are prefixes of each other, or hold a NUL, must not
    /// share rows.
    pub const TRICKY_IDS: [&str; 6] = ["", "a", "a\u{0}", "a\u{0}b", "ab", "a/b"];

    pub fn delete_session_removes_everything_it_holds(store: &mut impl SessionStore) {
        let mut batch = Vec::new();
        for client_id in TRICKY_IDS {
            batch.push(put_session(client_id, 10));
            batch.push(put_subscription(client_id, "x/#"));
            batch.push(put_subscription(client_id, "\u{ff}"));
            batch.push(put_outbound(client_id, 1));
            batch.push(put_outbound(client_id, u64::MAX));
            batch.push(Change::PutInboundQos2 {
                client_id: id(client_id),
                packet_id: 65535,
            });
            batch.push(Change::PutWill {
                client_id: id(client_id),
                due_at: 1,
                message: message("w", b""),
            });
        }
        store.commit(&batch).expect("valid batch");
        let before = store.load().expect("load");
        assert_eq!(before.sessions.len(), TRICKY_IDS.len());

        store.commit(&[delete_session("a")]).expect("delete a");
        let after = store.load().expect("load");
        assert!(session_of(&after, "a").is_none());
        let mut expected = before.clone();
        expected.sessions.retain(|s| s.record.client_id != "a");
        assert_eq!(after, expected, "other sessions untouched");

        // A new session under the same id starts empty.
        store.commit(&[put_session("a", 10)]).expect("recreate a");
        let again = store.load().expect("load");
        let a = session_of(&again, "a").expect("a");
        assert!(a.subscriptions.is_empty() && a.outbound.is_empty());
        assert!(a.inbound_qos2.is_empty() && a.will.is_none());

        // Deleting then recreating within one batch also starts empty.
        store
            .commit(&[
                put_subscription("ab", "y"),
                delete_session("ab"),
                put_session("ab", 3),
            ])
            .expect("delete and recreate");
        let snapshot = store.load().expect("load");
        let ab = session_of(&snapshot, "ab").expect("ab");
        assert_eq!(ab.record.expiry_interval, 3);
        assert!(ab.subscriptions.is_empty() && ab.outbound.is_empty() && ab.will.is_none());

        let all: Vec<Change> = TRICKY_IDS.iter().map(|c| delete_session(c)).collect();
        store.commit(&all).expect("delete all");
        assert_eq!(store.load().expect("load"), Snapshot::default());
    }

    pub fn outbound_comes_back_in_seq_order(store: &mut impl SessionStore) {
        let seqs = [
            70_000,
            1,
            256,
            255,
            65_536,
            2,
            u64::MAX,
            65_535,
            1 << 32,
            (1 << 32) - 1,
            257,
            0,
        ];
        store.commit(&[put_session("o", 1)]).expect("session");
        for seq in seqs {
            store.commit(&[put_outbound("o", seq)]).expect("put");
        }
        let snapshot = store.load().expect("load");
        let got: Vec<u64> = snapshot.sessions[0]
            .outbound
            .iter()
            .map(|(s, _)| *s)
            .collect();
        let mut want = seqs.to_vec();
        want.sort_unstable();
        assert_eq!(got, want);
        for (seq, record) in &snapshot.sessions[0].outbound {
            assert_eq!(record, &outbound_record(&seq.to_be_bytes()));
        }
    }

    pub fn a_bad_batch_changes_nothing(store: &mut impl SessionStore) {
        store
            .commit(&[put_session("a", 1), put_subscription("a", "t")])
            .expect("valid");
        let before = store.load().expect("load");
        let bad_batches: Vec<Vec<Change>> = vec![
            // Unknown session after valid changes.
            vec![
                put_subscription("a", "u"),
                Change::PutRetained(message("r", b"x")),
                put_session("b", 1),
                put_outbound("c", 1),
            ],
            // Deleted earlier in the batch.
            vec![delete_session("a"), put_subscription("a", "v")],
            // Created then deleted in the batch.
            vec![
                put_session("d", 1),
                delete_session("d"),
                Change::DeleteWill { client_id: id("d") },
            ],
            // Every kind of change on an unknown session is refused, deletes too.
            vec![Change::DeleteSubscription {
                client_id: id("zz"),
                filter: id("t"),
            }],
            vec![delete_outbound("zz", 1)],
            vec![Change::PutInboundQos2 {
                client_id: id("zz"),
                packet_id: 1,
            }],
            vec![Change::DeleteInboundQos2 {
                client_id: id("zz"),
                packet_id: 1,
            }],
            vec![Change::PutWill {
                client_id: id("zz"),
                due_at: 1,
                message: message("w", b""),
            }],
        ];
        for batch in bad_batches {
            match store.commit(&batch) {
                Err(StoreError::UnknownSession { .. }) => {}
                other => panic!("expected UnknownSession for {batch:?}, got {other:?}"),
            }
            assert_eq!(store.load().expect("load"), before, "after {batch:?}");
        }
        // Deleting then recreating in one batch makes later changes valid.
        store
            .commit(&[
                delete_session("a"),
                put_session("a", 2),
                put_subscription("a", "w"),
            ])
            .expect("recreated in batch");
        // Sessions and retained messages need no session; deleting unknown sessions is fine.
        store
            .commit(&[
                delete_session("nobody"),
                Change::DeleteRetained {
                    topic: id("nothing"),
                },
            ])
            .expect("no session needed");
        store.commit(&[]).expect("empty batch");
    }

    pub fn many_sessions_load_in_client_id_order(store: &mut impl SessionStore) {
        let mut batch = Vec::new();
        for n in (0..300u32).rev() {
            let client_id = format!("client-{n}");
            batch.push(put_session(&client_id, n));
            batch.push(put_subscription(&client_id, &format!("devices/{n}/#")));
            batch.push(put_outbound(&client_id, u64::from(n)));
        }
        store.commit(&batch).expect("valid");
        let snapshot = store.load().expect("load");
        assert_eq!(snapshot.sessions.len(), 300);
        let ids: Vec<&str> = snapshot
            .sessions
            .iter()
            .map(|s| &*s.record.client_id)
            .collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted);
        for s in &snapshot.sessions {
            let n: u32 = s.record.client_id["client-".len()..]
                .parse()
                .expect("number");
            assert_eq!(s.record.expiry_interval, n);
            assert_eq!(s.subscriptions[0].filter, format!("devices/{n}/#"));
            assert_eq!(s.outbound[0].0, u64::from(n));
        }
    }
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        mod memory_store {
            use super::*;
            $(#[test] fn $name() { conformance::$name(&mut MemoryStore::new()); })*
        }
        mod embedded_fsync {
            use super::*;
            $(#[test] fn $name() {
                let dir = TempDir::new().expect("tempdir");
                conformance::$name(&mut open(dir.path(), true));
            })*
        }
        mod embedded_no_fsync {
            use super::*;
            $(#[test] fn $name() {
                let dir = TempDir::new().expect("tempdir");
                conformance::$name(&mut open(dir.path(), false));
            })*
        }
        mod embedded_after_reopen {
            use super::*;
            /// Runs the suite through a store that is closed and reopened
            /// after every commit, so every load reads the file back.
            struct Reopening { dir: TempDir, store: Option<EmbeddedStore> }
            impl SessionStore for Reopening {
                fn load(&mut self) -> Result<Snapshot, StoreError> {
                    self.store.as_mut().expect("open").load()
                }
                fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
                    let result = self.store.as_mut().expect("open").commit(changes);
                    self.store.take().expect("open").close().expect("close");
                    self.store = Some(open(self.dir.path(), false));
                    result
                }
            }
            $(#[test] fn $name() {
                let dir = TempDir::new().expect("tempdir");
                let store = Some(open(dir.path(), false));
                conformance::$name(&mut Reopening { dir, store });
            })*
        }
    };
}

conformance_tests!(
    every_change_kind_puts_and_deletes,
    delete_session_removes_everything_it_holds,
    outbound_comes_back_in_seq_order,
    a_bad_batch_changes_nothing,
    many_sessions_load_in_client_id_order,
);

#[test]
fn open_creates_the_directory_and_reopen_returns_what_was_committed() {
    let root = TempDir::new().expect("tempdir");
    let dir = root.path().join("nested/store");
    for fsync in [true, false] {
        let mut store = open(&dir, fsync);
        assert_eq!(store.path(), dir.join("myriad.redb"));
        store
            .commit(&[
                put_session(&format!("s{fsync}"), 9),
                put_outbound(&format!("s{fsync}"), 300),
                Change::PutRetained(message(&format!("r{fsync}"), b"v")),
            ])
            .expect("commit");
        let expected = store.load().expect("load");
        drop(store);
        let mut reopened = open(&dir, fsync);
        assert_eq!(reopened.load().expect("load"), expected);
    }
    let mut store = open(&dir, true);
    let snapshot = store.load().expect("load");
    assert_eq!(snapshot.sessions.len(), 2);
    assert_eq!(snapshot.retained.len(), 2);
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = TempDir::new().expect("tempdir");
    let _first = open(dir.path(), true);
    let err =
        EmbeddedStore::open(dir.path(), EmbeddedOptions { fsync: true }).expect_err("second open");
    assert!(err.to_string().contains("myriad.redb"), "{err}");
}

// --- damaged files -------------------------------------------------------

fn filled_store(dir: &Path) -> std::path::PathBuf {
    let mut store = open(dir, true);
    let mut batch = vec![put_session("c", 1)];
    for seq in 0..2_000 {
        batch.push(put_outbound("c", seq));
    }
    store.commit(&batch).expect("fill");
    let path = store.path().to_path_buf();
    store.close().expect("close");
    path
}

/// Opens and loads; the error must name the file. Panics are failures.
fn open_and_load_error(dir: &Path, path: &Path) -> StoreError {
    let result = EmbeddedStore::open(dir, EmbeddedOptions { fsync: true })
        .and_then(|mut store| store.load().map(|_| ()));
    let err = result.expect_err("damaged file must not open and load cleanly");
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()),
        "error must name {}: {text}",
        path.display()
    );
    err
}

#[test]
fn a_truncated_file_is_an_error_naming_it() {
    let dir = TempDir::new().expect("tempdir");
    let path = filled_store(dir.path());
    let len = std::fs::metadata(&path).expect("metadata").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open file");
    file.set_len(len / 2).expect("truncate");
    drop(file);
    let err = open_and_load_error(dir.path(), &path);
    eprintln!("truncated: {err}");
}

#[test]
fn a_garbage_header_is_an_error_naming_it() {
    let dir = TempDir::new().expect("tempdir");
    let path = filled_store(dir.path());
    let mut bytes = std::fs::read(&path).expect("read");
    for (i, byte) in bytes.iter_mut().take(4096).enumerate() {
        *byte = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
    std::fs::write(&path, &bytes).expect("write");
    let err = open_and_load_error(dir.path(), &path);
    eprintln!("garbage header: {err}");
}

#[test]
fn a_file_that_is_not_a_database_is_an_error_naming_it() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("myriad.redb");
    std::fs::write(
        &path,
        b"this is not a database, just some text\n".repeat(200),
    )
    .expect("write");
    let err = open_and_load_error(dir.path(), &path);
    eprintln!("not a database: {err}");
}

#[test]
fn garbage_in_data_pages_is_an_error_naming_the_file() {
    let dir = TempDir::new().expect("tempdir");
    let path = filled_store(dir.path());
    let mut bytes = std::fs::read(&path).expect("read");
    let len = bytes.len();
    // Damage the middle of the file, past the header.
    for byte in &mut bytes[len / 3..len / 3 + 8192] {
        *byte ^= 0x5A;
    }
    std::fs::write(&path, &bytes).expect("write");
    let err = open_and_load_error(dir.path(), &path);
    eprintln!("damaged pages: {err}");
}

#[test]
fn an_undecodable_value_is_corrupt_naming_the_file_and_table() {
    let dir = TempDir::new().expect("tempdir");
    let path = filled_store(dir.path());
    {
        // Write a well-formed redb entry whose value is not one of ours.
        let db = redb::Database::create(&path).expect("redb open");
        let txn = db.begin_write().expect("write");
        {
            let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("outbound");
            let mut table = txn.open_table(def).expect("table");
            let key = [b'c', 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
            table
                .insert(key.as_slice(), [1u8, 9, 9].as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let mut store = open(dir.path(), true);
    let err = store.load().expect_err("corrupt value");
    match &err {
        StoreError::Corrupt { path: p, reason } => {
            assert_eq!(p, &path.display().to_string());
            assert!(reason.contains("outbound"), "{reason}");
            assert!(!reason.contains("seq"), "the key is well-formed: {reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A value from a future format version is refused the same way.
    drop(store);
    {
        let db = redb::Database::create(&path).expect("redb open");
        let txn = db.begin_write().expect("write");
        {
            let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("outbound");
            let mut table = txn.open_table(def).expect("table");
            let key = [b'c', 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
            table
                .insert(key.as_slice(), [2u8, 0, 0, 0].as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let err = open(dir.path(), true).load().expect_err("future version");
    assert!(err.to_string().contains("version"), "{err}");
}

// --- process kill ----------------------------------------------------------

const CHILD_ENV: &str = "MYRIAD_STORE_KILL_CHILD";

/// Not a test on its own: the child process of
/// `process_kill_keeps_what_each_mode_promises`. Commits ten batches (with a
/// flush after the fifth), then aborts as a `kill -9` would: no destructor runs.
#[test]
fn kill_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, fsync) = spec.rsplit_once('|').expect("spec");
    let mut store = open(Path::new(dir), fsync == "true");
    store.commit(&[put_session("k", 1)]).expect("session");
    for batch in 1..=10u64 {
        store
            .commit(&[
                put_outbound("k", batch * 2),
                put_outbound("k", batch * 2 + 1),
            ])
            .expect("commit");
        if batch == 5 {
            store.flush().expect("flush");
        }
    }
    std::process::abort();
}

fn run_killed_child(dir: &Path, fsync: bool) -> Vec<u64> {
    let exe = std::env::current_exe().expect("test binary");
    let status = std::process::Command::new(exe)
        .args(["--exact", "kill_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}|{fsync}", dir.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("spawn child");
    assert!(!status.success(), "child must die by abort");
    let mut store = open(dir, true);
    let snapshot = store.load().expect("load after kill");
    snapshot
        .sessions
        .first()
        .map(|s| s.outbound.iter().map(|(seq, _)| *seq).collect())
        .unwrap_or_default()
}

#[test]
fn process_kill_keeps_what_each_mode_promises() {
    // fsync: every batch that returned Ok is there.
    let dir = TempDir::new().expect("tempdir");
    let seqs = run_killed_child(dir.path(), true);
    assert_eq!(seqs, (2..=21).collect::<Vec<_>>());

    // No fsync: whole batches up to a checkpoint survive (here the flush
    // after batch 5, as the child runs well within CHECKPOINT_INTERVAL); the
    // rest is lost, and never half a batch.
    let dir = TempDir::new().expect("tempdir");
    let seqs = run_killed_child(dir.path(), false);
    assert_eq!(seqs.len() % 2, 0, "never half a batch: {seqs:?}");
    let batches = seqs.len() / 2;
    assert_eq!(seqs, (2..2 + seqs.len() as u64).collect::<Vec<_>>());
    assert!(batches >= 5, "the flush made batches 1-5 durable: {seqs:?}");
    eprintln!("no-fsync mode: {batches} of 10 batches survived the kill");
}

// --- random batches: EmbeddedStore behaves as MemoryStore -------------------

mod random {
    use super::*;
    use proptest::collection::vec;
    use proptest::option::of;
    use proptest::prelude::*;

    fn client_id() -> impl Strategy<Value = ByteString> {
        prop::sample::select(vec!["", "a", "a\u{0}", "a\u{0}b", "ab", "b"]).prop_map(id)
    }

    fn text() -> impl Strategy<Value = ByteString> {
        prop::sample::select(vec!["t", "t/#", "$share/g/t", "+/x", "\u{e9}t\u{0}"]).prop_map(id)
    }

    fn bytes() -> impl Strategy<Value = Bytes> {
        vec(any::<u8>(), 0..24).prop_map(Bytes::from)
    }

    fn qos() -> impl Strategy<Value = QoS> {
        prop::sample::select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
    }

    fn seq() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..4u64,
            Just(255),
            Just(256),
            Just(65_535),
            Just(65_536),
            Just(u64::MAX),
            any::<u64>(),
        ]
    }

    fn packet_id() -> impl Strategy<Value = u16> {
        prop_oneof![1..4u16, Just(256), any::<u16>()]
    }

    fn properties() -> impl Strategy<Value = Properties> {
        (
            (of(any::<bool>()), of(any::<u32>()), of(text()), of(text())),
            (of(bytes()), vec(1..=268_435_455u32, 0..3), of(any::<u32>())),
            (vec((text(), text()), 0..3), of(any::<u16>()), of(0..=2u8)),
        )
            .prop_map(
                |(
                    (
                        payload_format_indicator,
                        message_expiry_interval,
                        content_type,
                        response_topic,
                    ),
                    (correlation_data, subscription_identifiers, will_delay_interval),
                    (user_properties, topic_alias, maximum_qos),
                )| Properties {
                    payload_format_indicator,
                    message_expiry_interval,
                    content_type,
                    response_topic,
                    correlation_data,
                    subscription_identifiers,
                    will_delay_interval,
                    user_properties,
                    topic_alias,
                    maximum_qos,
                    ..Properties::default()
                },
            )
    }

    fn message() -> impl Strategy<Value = MessageRecord> {
        (
            text(),
            bytes(),
            qos(),
            any::<bool>(),
            properties(),
            of(any::<u64>()),
        )
            .prop_map(|(topic, payload, qos, retain, properties, expires_at)| {
                MessageRecord {
                    topic,
                    payload,
                    qos,
                    retain,
                    properties: properties.into(),
                    expires_at,
                }
            })
    }

    fn subscription() -> impl Strategy<Value = SubscriptionRecord> {
        (
            text(),
            qos(),
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec![
                RetainHandling::SendAtSubscribe,
                RetainHandling::SendIfNew,
                RetainHandling::DoNotSend,
            ]),
            of(any::<u32>()),
        )
            .prop_map(
                |(filter, qos, no_local, retain_as_published, retain_handling, id)| {
                    SubscriptionRecord {
                        filter,
                        options: SubscriptionOptions {
                            qos,
                            no_local,
                            retain_as_published,
                            retain_handling,
                        },
                        id,
                    }
                },
            )
    }

    fn outbound() -> impl Strategy<Value = OutboundRecord> {
        let state = prop_oneof![
            Just(OutboundState::Queued),
            packet_id().prop_map(|packet_id| OutboundState::Published { packet_id }),
            packet_id().prop_map(|packet_id| OutboundState::Released { packet_id }),
        ];
        (
            state,
            qos(),
            any::<bool>(),
            vec(any::<u32>(), 0..3),
            of(message()),
        )
            .prop_map(
                |(state, qos, retain, subscription_ids, message)| OutboundRecord {
                    state,
                    qos,
                    retain,
                    subscription_ids,
                    message,
                },
            )
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            4 => (client_id(), any::<u32>(), of(any::<u64>())).prop_map(
                |(client_id, expiry_interval, expires_at)| Change::PutSession(SessionRecord {
                    client_id,
                    expiry_interval,
                    expires_at,
                })
            ),
            1 => client_id().prop_map(|client_id| Change::DeleteSession { client_id }),
            2 => (client_id(), subscription()).prop_map(|(client_id, subscription)| {
                Change::PutSubscription { client_id, subscription }
            }),
            1 => (client_id(), text())
                .prop_map(|(client_id, filter)| Change::DeleteSubscription { client_id, filter }),
            3 => (client_id(), seq(), outbound())
                .prop_map(|(client_id, seq, record)| Change::PutOutbound { client_id, seq, record }),
            2 => (client_id(), seq())
                .prop_map(|(client_id, seq)| Change::DeleteOutbound { client_id, seq }),
            1 => (client_id(), packet_id())
                .prop_map(|(client_id, packet_id)| Change::PutInboundQos2 { client_id, packet_id }),
            1 => (client_id(), packet_id()).prop_map(|(client_id, packet_id)| {
                Change::DeleteInboundQos2 { client_id, packet_id }
            }),
            1 => (client_id(), any::<u64>(), message()).prop_map(|(client_id, due_at, message)| {
                Change::PutWill { client_id, due_at, message }
            }),
            1 => client_id().prop_map(|client_id| Change::DeleteWill { client_id }),
            1 => message().prop_map(Change::PutRetained),
            1 => text().prop_map(|topic| Change::DeleteRetained { topic }),
        ]
    }

    /// The session a change needs, if it needs one.
    fn needs_session(change: &Change) -> Option<&ByteString> {
        match change {
            Change::PutSubscription { client_id, .. }
            | Change::DeleteSubscription { client_id, .. }
            | Change::PutOutbound { client_id, .. }
            | Change::DeleteOutbound { client_id, .. }
            | Change::PutInboundQos2 { client_id, .. }
            | Change::DeleteInboundQos2 { client_id, .. }
            | Change::PutWill { client_id, .. }
            | Change::DeleteWill { client_id } => Some(client_id),
            _ => None,
        }
    }

    /// `batch` with a `PutSession` inserted before each change whose session
    /// would not exist at that point, given the sessions stored now.
    fn made_valid(batch: &[Change], stored: &Snapshot) -> Vec<Change> {
        let mut live: std::collections::BTreeSet<ByteString> = stored
            .sessions
            .iter()
            .map(|s| s.record.client_id.clone())
            .collect();
        let mut out = Vec::new();
        for change in batch {
            match change {
                Change::PutSession(record) => {
                    live.insert(record.client_id.clone());
                }
                Change::DeleteSession { client_id } => {
                    live.remove(client_id);
                }
                other => {
                    if let Some(client_id) = needs_session(other)
                        && live.insert(client_id.clone())
                    {
                        out.push(Change::PutSession(SessionRecord {
                            client_id: client_id.clone(),
                            expiry_interval: 1,
                            expires_at: None,
                        }));
                    }
                }
            }
            out.push(change.clone());
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// After every batch (valid or not) both stores agree on the outcome
        /// and on what they hold; the file still agrees after a reopen.
        #[test]
        fn embedded_store_matches_memory_store(
            batches in vec((vec(change(), 1..8), prop::bool::weighted(0.8)), 1..16)
        ) {
            let dir = TempDir::new().expect("tempdir");
            let mut embedded = open(dir.path(), false);
            let mut memory = MemoryStore::new();
            for (batch, valid) in &batches {
                // Mostly valid batches (so state builds up), some left as generated.
                let batch = if *valid {
                    made_valid(batch, &memory.load().expect("load"))
                } else {
                    batch.clone()
                };
                let want = memory.commit(&batch);
                let got = embedded.commit(&batch);
                match (&want, &got) {
                    (Ok(()), Ok(())) => {}
                    (
                        Err(StoreError::UnknownSession { client_id: a }),
                        Err(StoreError::UnknownSession { client_id: b }),
                    ) => prop_assert_eq!(a, b),
                    _ => prop_assert!(false, "memory {:?} vs embedded {:?}", want, got),
                }
                prop_assert_eq!(embedded.load().expect("load"), memory.load().expect("load"));
            }
            embedded.close().expect("close");
            let mut reopened = open(dir.path(), true);
            prop_assert_eq!(reopened.load().expect("load"), memory.load().expect("load"));
        }
    }
}
