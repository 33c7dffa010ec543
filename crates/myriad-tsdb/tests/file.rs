//! The file-backed shell: data survives a drop without sealing and a seal; a torn or corrupt
//! WAL tail and a corrupt block are dropped, logged and reported, never a panic.

use myriad_tsdb::retention::RetentionPolicy;
use myriad_tsdb::{Agg, DbConfig, FileDb, HeadConfig, IndexLimits, Point, SeriesKey, Value};
use std::fs;

const H: i64 = 3_600_000;

fn cfg() -> DbConfig {
    DbConfig {
        index: IndexLimits::default(),
        head: HeadConfig {
            ooo_window_ms: 10 * H,
            max_ooo_points: 100_000,
        },
        partition_ms: H,
        ..DbConfig::default()
    }
}

/// The block files in `dir`, sorted.
fn block_files(d: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .filter(|n| n.ends_with(".blk"))
        .collect();
    v.sort();
    v
}

fn points(device: &str, from: i64, n: i64) -> Vec<(SeriesKey, Point)> {
    (0..n)
        .flat_map(|i| {
            let ts = from + i * 1_000;
            [
                (
                    SeriesKey::new(device, "temp"),
                    Point {
                        ts,
                        value: Value::F64(20.0 + (i % 7) as f64 * 0.5),
                    },
                ),
                (
                    SeriesKey::new(device, "on"),
                    Point {
                        ts,
                        value: Value::Bool(i % 2 == 0),
                    },
                ),
            ]
        })
        .collect()
}

/// Raw and 1-minute averages of both series of `device` over [0, 3 h).
fn answers(db: &FileDb, device: &str) -> (Vec<Point>, Vec<Point>, Vec<(i64, f64)>) {
    let idx = db.db().engine().index();
    let t = idx.get(&SeriesKey::new(device, "temp")).expect("temp");
    let o = idx.get(&SeriesKey::new(device, "on")).expect("on");
    (
        db.db().raw(t, 0, 3 * H).expect("raw"),
        db.db().raw(o, 0, 3 * H).expect("raw"),
        db.db()
            .aggregate(t, 0, 3 * H, 60_000, Agg::Avg)
            .expect("agg"),
    )
}

fn wal_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn reopen_without_seal_answers_the_same() {
    for fsync in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = {
            let (mut db, r) = FileDb::open(dir.path(), cfg(), fsync).expect("open");
            assert_eq!(r.segments, 0);
            // Several batches, spanning two partitions.
            for chunk in points("d1", H - 600_000, 1_200).chunks(300) {
                let rep = db.write(chunk).expect("write");
                assert_eq!(rep.accepted, chunk.len());
                assert!(rep.refused.is_empty());
            }
            answers(&db, "d1")
        };
        assert_eq!(before.0.len(), 1_200);
        assert!(!before.2.is_empty());
        let (db, r) = FileDb::open(dir.path(), cfg(), fsync).expect("reopen");
        assert_eq!(r.segments, 1);
        assert_eq!(r.series, 2);
        assert_eq!(r.points, 2_400);
        assert!(r.torn.is_empty());
        assert_eq!(answers(&db, "d1"), before);
    }
}

#[test]
fn seal_then_more_points_then_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = {
        let (mut db, _) = FileDb::open(dir.path(), cfg(), true).expect("open");
        db.write(&points("d1", 0, 2_000)).expect("write");
        let changed = db.seal().expect("seal");
        assert_eq!(changed, vec![0]);
        // Only the new segment (the checkpoint) is left.
        assert_eq!(wal_files(dir.path()).len(), 1);
        // Late points into the sealed partition and new ones in the next, not sealed.
        db.write(&points("d1", 2_000_500, 500)).expect("write");
        db.write(&points("d2", H + 10_000, 100)).expect("write");
        (answers(&db, "d1"), answers(&db, "d2"))
    };
    let (mut db, r) = FileDb::open(dir.path(), cfg(), true).expect("reopen");
    assert_eq!(r.blocks, 1);
    assert_eq!(r.series, 4);
    assert_eq!(r.points, 1_200);
    assert_eq!((answers(&db, "d1"), answers(&db, "d2")), before);
    // Sealing after recovery and reopening again still answers the same.
    assert_eq!(db.seal().expect("seal"), vec![0, H]);
    drop(db);
    let (mut db, r) = FileDb::open(dir.path(), cfg(), true).expect("reopen 2");
    assert_eq!(r.blocks, 3, "partition 0 in two generations, H in one");
    assert_eq!(r.points, 0);
    assert_eq!((answers(&db, "d1"), answers(&db, "d2")), before);
    // Once partition 0 is cold its two blocks merge into one file; nothing else to do after.
    assert!(
        db.compact_step(H).expect("compact").is_none(),
        "not cold yet"
    );
    let (plan, report) = db
        .compact_step(2 * H + 1)
        .expect("compact")
        .expect("a plan");
    assert_eq!((plan.partition, plan.inputs.len()), (0, 2));
    assert_eq!(
        report.points,
        (2_000 + 500) * 2,
        "every point of both blocks"
    );
    assert!(db.compact_step(2 * H + 1).expect("compact").is_none());
    assert_eq!(block_files(dir.path()).len(), 2);
    assert_eq!((answers(&db, "d1"), answers(&db, "d2")), before);
    drop(db);
    let (db, r) = FileDb::open(dir.path(), cfg(), true).expect("reopen 3");
    assert_eq!(r.blocks, 2);
    assert_eq!((answers(&db, "d1"), answers(&db, "d2")), before);
}

#[test]
fn torn_and_corrupt_wal_tails_are_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let whole = {
        let (mut db, _) = FileDb::open(dir.path(), cfg(), false).expect("open");
        db.write(&points("d1", 0, 100)).expect("write");
        answers(&db, "d1")
    };
    let wal = wal_files(dir.path()).pop().expect("segment");
    let good_len = fs::metadata(&wal).expect("meta").len();
    {
        let (mut db, _) = FileDb::open(dir.path(), cfg(), false).expect("open");
        db.write(&points("d1", 200_000, 100)).expect("write");
    }
    // Tear the second batch: cut its last 5 bytes.
    let len = fs::metadata(&wal).expect("meta").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open")
        .set_len(len - 5)
        .expect("cut");
    let (db, r) = FileDb::open(dir.path(), cfg(), false).expect("reopen torn");
    assert_eq!(r.torn.len(), 1);
    assert_eq!(r.torn[0].kept as u64, good_len);
    assert_eq!(r.torn[0].dropped as u64, len - 5 - good_len);
    assert_eq!(answers(&db, "d1"), whole);
    drop(db);
    // The file was truncated: a third session appends after the good records.
    assert_eq!(fs::metadata(&wal).expect("meta").len(), good_len);
    {
        let (mut db, r) = FileDb::open(dir.path(), cfg(), false).expect("reopen");
        assert!(r.torn.is_empty());
        db.write(&points("d1", 400_000, 10)).expect("write");
    }
    // Flip a byte in the last record's payload: its CRC fails, the record is dropped.
    let mut bytes = fs::read(&wal).expect("read");
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    // And append garbage after it.
    bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x01]);
    fs::write(&wal, &bytes).expect("write");
    let (db, r) = FileDb::open(dir.path(), cfg(), false).expect("reopen corrupt");
    assert_eq!(r.torn.len(), 1);
    assert_eq!(r.torn[0].kept as u64, good_len);
    assert!(r.torn[0].stop.is_some());
    assert_eq!(answers(&db, "d1"), whole);
}

#[test]
fn garbage_files_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let whole = {
        let (mut db, _) = FileDb::open(dir.path(), cfg(), true).expect("open");
        db.write(&points("d1", 0, 100)).expect("write");
        db.seal().expect("seal");
        db.write(&points("d1", 500_000, 100)).expect("write");
        answers(&db, "d1")
    };
    // A leftover temp file, an unrelated file and a garbage segment older than the real one.
    fs::write(dir.path().join("block-0.blk.tmp"), b"half").expect("tmp");
    fs::write(dir.path().join("notes.txt"), b"x").expect("txt");
    fs::write(dir.path().join("wal-0000000000000000.log"), [0xffu8; 64]).expect("wal");
    let (db, r) = FileDb::open(dir.path(), cfg(), true).expect("reopen");
    assert!(!dir.path().join("block-0.blk.tmp").exists());
    assert_eq!(r.torn.len(), 1);
    assert_eq!(r.torn[0].file, "wal-0000000000000000.log");
    assert_eq!(r.torn[0].kept, 0);
    assert_eq!(answers(&db, "d1"), whole);
    drop(db);
    // A corrupt block: renamed aside and reported; the WAL's points still answer.
    let name = block_files(dir.path()).remove(0);
    assert!(name.starts_with("block-0-"), "{name}");
    let block = dir.path().join(&name);
    let mut b = fs::read(&block).expect("read");
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    b.truncate(mid + 1);
    fs::write(&block, &b).expect("write");
    let (db, r) = FileDb::open(dir.path(), cfg(), true).expect("reopen bad block");
    assert_eq!(r.blocks, 0);
    assert_eq!(r.bad_blocks.len(), 1);
    assert!(dir.path().join(format!("{name}.corrupt")).exists());
    let t = db
        .db()
        .engine()
        .index()
        .get(&SeriesKey::new("d1", "temp"))
        .expect("temp");
    assert_eq!(db.db().raw(t, 0, 3 * H).expect("raw").len(), 100);
}

/// After a seal and a restart the head is empty, but it still knows each series' kind and newest
/// sealed timestamp: a point of another kind is refused (it could not be merged into the block),
/// and so is one older than the out-of-order window; one inside the window is merged at the next
/// seal, the newer value winning.
#[test]
fn a_restart_keeps_kinds_and_the_out_of_order_window() {
    use myriad_tsdb::{AppendError, PointError};
    let dir = tempfile::tempdir().expect("tempdir");
    let temp = SeriesKey::new("d1", "temp");
    {
        let (mut db, _) = FileDb::open(dir.path(), cfg(), true).expect("open");
        db.write(&points("d1", 20 * H, 100)).expect("write");
        db.seal().expect("seal");
    }
    let (mut db, _) = FileDb::open(dir.path(), cfg(), true).expect("reopen");
    let id = db.db().engine().index().get(&temp).expect("temp");
    let newest = 20 * H + 99_000;
    let late = |ts, value| (temp.clone(), Point { ts, value });
    let report = db
        .write(&[
            late(newest - 1_000, Value::Bool(true)),
            late(newest - 11 * H, Value::F64(1.0)),
            late(newest - 1_000, Value::F64(99.5)),
        ])
        .expect("write");
    assert_eq!(report.accepted, 1);
    let reasons: Vec<_> = report.refused.iter().map(|(_, e)| e.clone()).collect();
    assert!(
        matches!(
            reasons[0],
            PointError::Head(AppendError::KindMismatch { .. })
        ),
        "{reasons:?}"
    );
    assert!(
        matches!(reasons[1], PointError::Head(AppendError::TooOld { .. })),
        "{reasons:?}"
    );
    db.seal().expect("seal merges the late point");
    let raw = db.db().raw(id, 0, 30 * H).expect("raw");
    assert_eq!(raw.len(), 100);
    assert_eq!(
        raw.iter().find(|p| p.ts == newest - 1_000).map(|p| p.value),
        Some(Value::F64(99.5))
    );
    // The latest value still comes from the block until a newer point arrives.
    assert_eq!(
        db.db().latest(id).expect("latest").map(|p| p.ts),
        Some(newest)
    );
}

#[test]
fn retention_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut db, _) = FileDb::open(dir.path(), cfg(), true).expect("open");
        // Partitions 0, 1 and 2 (one hour each).
        db.write(&points("d", 0, 3 * 3_600)).expect("write");
        db.seal().expect("seal");
        assert_eq!(block_files(dir.path()).len(), 3);
        // Whole partition 0 expires, partition 1 keeps its rollups only.
        // Raw points kept 1 h after a partition ends, rollups 2 h; at 3 h partition 0 is gone
        // and partition 1 keeps its rollups only.
        db.set_retention(RetentionPolicy::new(vec![], H, 2 * H).expect("policy"));
        let r = db.apply_retention(3 * H).expect("retention");
        assert_eq!((r.dropped, r.rewritten), (vec![0], vec![H]));
        // A second call changes nothing.
        let r = db.apply_retention(3 * H).expect("retention");
        assert!(r.dropped.is_empty() && r.rewritten.is_empty());
    }
    assert_eq!(
        block_files(dir.path()),
        vec![
            format!("block-{}-{:016}.blk", H, 2),
            format!("block-{}-{:016}.blk", 2 * H, 3)
        ]
    );
    let (db, _) = FileDb::open(dir.path(), cfg(), true).expect("reopen");
    let (raw, _, avg) = answers(&db, "d");
    assert!(
        raw.iter().all(|p| p.ts >= 2 * H),
        "raw of expired partitions gone"
    );
    assert_eq!(raw.len(), 3_600);
    // Rollups of partition 1 answer 1-minute averages; partition 0 is gone.
    assert_eq!(avg.len(), 120);
    assert_eq!(avg[0].0, H);
}

/// Copies the files of `from` into `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("dir") {
        let e = e.expect("entry");
        fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

/// A data directory written by the version before block generations (`block-{partition}.blk`,
/// block format 1; made by sealing 2,000 points of two series across a day boundary) opens:
/// each old block is rewritten as a version 2 block of a new generation, the old file removed,
/// and every point answers as before, after a second restart too.
#[test]
fn version_1_blocks_are_rewritten_at_open() {
    const DAY: i64 = 86_400_000;
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1"),
        dir.path(),
    );
    let check = |db: &FileDb| {
        let idx = db.db().engine().index();
        let t = idx.get(&SeriesKey::new("v1-dev", "temp")).expect("temp");
        let c = idx.get(&SeriesKey::new("v1-dev", "count")).expect("count");
        let temp = db.db().raw(t, 0, 2 * DAY).expect("raw");
        let count = db.db().raw(c, 0, 2 * DAY).expect("raw");
        assert_eq!((temp.len(), count.len()), (2_000, 2_000));
        for (i, (p, q)) in temp.iter().zip(&count).enumerate() {
            let ts = DAY - 1_000_000 + i as i64 * 1_000;
            assert_eq!(p.ts, ts);
            assert_eq!(p.value, Value::F64(20.0 + (i % 9) as f64 / 10.0));
            assert_eq!(q.value, Value::I64(i as i64));
        }
    };
    let (db, r) = FileDb::open(dir.path(), DbConfig::default(), true).expect("open");
    assert_eq!((r.blocks, r.bad_blocks.len()), (2, 0));
    check(&db);
    let files = block_files(dir.path());
    assert_eq!(files.len(), 2);
    assert!(
        files.iter().all(|f| f.matches('-').count() == 2),
        "version 2 names only: {files:?}"
    );
    drop(db);
    let (db, r) = FileDb::open(dir.path(), DbConfig::default(), true).expect("reopen");
    assert_eq!(r.blocks, 2);
    check(&db);
}

/// A crash after a compaction renamed its block into place but before it deleted the other
/// inputs leaves them behind: queries answer the same (the merged block is the newest
/// generation), and the next compaction merges them away. After raw retention, such leftovers
/// are deleted at open, so a rollup never counts a point twice.
#[test]
fn compaction_leftovers_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let saved = tempfile::tempdir().expect("tempdir");
    let (mut db, _) = FileDb::open(dir.path(), cfg(), true).expect("open");
    for i in 0..4 {
        db.write(&points("d", i * 600_000, 600)).expect("write");
        db.seal().expect("seal");
    }
    // Four level 0 blocks of partition 0 (4 x 600 s of points, all in the first hour).
    assert_eq!(db.db().blocks()[&0].len(), 4);
    let want = answers(&db, "d");
    copy_dir(dir.path(), saved.path());
    let (plan, _) = db.compact_step(0).expect("compact").expect("level merge");
    assert_eq!((plan.inputs.len(), plan.level), (4, 1));
    assert_eq!(block_files(dir.path()).len(), 1);
    drop(db);
    // The crash: the three older inputs are back.
    for f in block_files(saved.path()) {
        if !dir.path().join(&f).exists() {
            fs::copy(saved.path().join(&f), dir.path().join(&f)).expect("copy");
        }
    }
    let (mut db, r) = FileDb::open(dir.path(), cfg(), true).expect("reopen");
    assert_eq!(r.blocks, 4);
    assert_eq!(answers(&db, "d"), want);
    db.compact_step(2 * H)
        .expect("compact")
        .expect("cold merge");
    assert_eq!(block_files(dir.path()).len(), 1);
    assert_eq!(answers(&db, "d"), want);
    let t = db
        .db()
        .engine()
        .index()
        .get(&SeriesKey::new("d", "temp"))
        .expect("temp");
    let rollups = db.db().rollups(t, 60_000, 0, H).expect("rollups");
    assert_eq!(rollups.iter().map(|r| r.count).sum::<u64>(), 2_400);

    // Raw retention, then a crash leaving an input of it behind: deleted at open.
    let saved = tempfile::tempdir().expect("tempdir");
    let before = block_files(dir.path());
    for f in &before {
        fs::copy(dir.path().join(f), saved.path().join(f)).expect("copy");
    }
    // A late point makes a second block, so the retention merge has two inputs (and takes the
    // late one's generation and file name; the older one is deleted).
    db.write(&points("d", 3_000_500, 1)).expect("write");
    db.seal().expect("seal");
    db.set_retention(RetentionPolicy::new(vec![], 1, H + 1).expect("policy"));
    let r = db.apply_retention(H + 1).expect("retention");
    assert_eq!(r.rewritten, vec![0]);
    assert_eq!(block_files(dir.path()).len(), 1);
    drop(db);
    for f in block_files(saved.path()) {
        if !dir.path().join(&f).exists() {
            fs::copy(saved.path().join(&f), dir.path().join(&f)).expect("copy");
        }
    }
    assert_eq!(block_files(dir.path()).len(), 2);
    let (db, _) = FileDb::open(dir.path(), cfg(), true).expect("reopen");
    assert_eq!(
        block_files(dir.path()).len(),
        1,
        "the superseded input is deleted"
    );
    let after = db.db().rollups(t, 60_000, 0, H).expect("rollups");
    assert_eq!(after.iter().map(|r| r.count).sum::<u64>(), 2_401);
    assert!(db.db().raw(t, 0, H).expect("raw").is_empty());
}

/// A compaction done in steps of one series lets writes and seals in between: a seal adds a
/// newer block to the partition being merged (it survives the merge and wins where it
/// rewrites a point), queries answer throughout, and a merge whose partition retention dropped
/// meanwhile is abandoned without leaving a file.
#[test]
fn stepwise_compaction_with_writes_in_between() {
    use myriad_tsdb::file::Work;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut db, _) = FileDb::open(dir.path(), cfg(), true).expect("open");
    for i in 0..4 {
        for d in ["a", "b", "c"] {
            db.write(&points(d, i * 600_000, 300)).expect("write");
        }
        db.seal().expect("seal");
    }
    let want = answers(&db, "b");
    // Six series (three devices x two metrics): the first step starts the merge.
    assert_eq!(db.compaction_work(0, 1).expect("work"), Work::Progress);
    assert!(db.compaction_running());
    // A rewrite of a merged point and a new one, sealed into a fifth block meanwhile.
    let temp = SeriesKey::new("b", "temp");
    db.write(&[
        (
            temp.clone(),
            Point {
                ts: 1_000,
                value: Value::F64(99.0),
            },
        ),
        (
            temp.clone(),
            Point {
                ts: 2_500_000,
                value: Value::F64(7.0),
            },
        ),
    ])
    .expect("write");
    db.seal().expect("seal");
    let mut steps = 1;
    let done = loop {
        assert_eq!(
            answers(&db, "a").0.len(),
            1_200,
            "queries answer during the merge"
        );
        match db.compaction_work(0, 1).expect("work") {
            Work::Progress => steps += 1,
            Work::Done(plan, report) => break (plan, report),
            other => panic!("{other:?}"),
        }
    };
    assert!(steps >= 5, "{steps} steps");
    assert_eq!((done.0.inputs.len(), done.1.series), (4, 6));
    assert_eq!(
        db.db().blocks()[&0].len(),
        2,
        "the merged block and the newer one"
    );
    let t = db.db().engine().index().get(&temp).expect("temp");
    let raw = db.db().raw(t, 0, H).expect("raw");
    assert_eq!(raw.len(), want.0.len() + 1);
    assert_eq!(
        raw[1],
        Point {
            ts: 1_000,
            value: Value::F64(99.0)
        }
    );

    // Level merges are done; a cold merge starts, then retention drops the partition.
    assert_eq!(db.compaction_work(2 * H, 1).expect("work"), Work::Progress);
    db.set_retention(RetentionPolicy::new(vec![], 1, 1).expect("policy"));
    let r = db.apply_retention(3 * H).expect("retention");
    assert_eq!(r.dropped, vec![0]);
    let end = loop {
        match db.compaction_work(2 * H, 1).expect("work") {
            Work::Progress => {}
            other => break other,
        }
    };
    assert!(matches!(end, Work::Abandoned(_)), "{end:?}");
    assert!(
        fs::read_dir(dir.path()).expect("dir").all(|e| !e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .contains(".blk")),
        "no block file left"
    );
}
