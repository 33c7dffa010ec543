//! Bulk import into a real store.

use std::io::Write;
use std::time::Instant;

use myriad_fleet::credentials::{HashParams, hash_password, verify_password};
use myriad_fleet::import::{ImportError, ImportFormat, ImportOptions, import};
use myriad_fleet::registry::{DeviceId, DeviceQuery};
use myriad_fleet::store::{FleetStore, LIST_SCAN_BUDGET};

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

/// `n` JSON lines; every 10th row carries a pre-made password hash.
fn jsonl(n: usize, phc: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 120);
    for i in 0..n {
        write!(
            out,
            r#"{{"id":"dev-{i:06}","name":"Device {i}","groups":["fleet-{}"],"attributes":{{"site":"s{}","hw":"rev2"}}"#,
            i % 10,
            i % 7
        )
        .unwrap();
        if i % 10 == 0 {
            write!(out, r#","password_hash":"{phc}""#).unwrap();
        }
        out.extend_from_slice(b"}\n");
    }
    out
}

fn import_jsonl(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(dir.path()).unwrap();
    let phc = hash_password("factory-secret", &HashParams::INSECURE_FAST).unwrap();
    let input = jsonl(n, &phc);
    let options = ImportOptions::new(ImportFormat::JsonLines, 1_700_000_000_000);
    let start = Instant::now();
    let report = import(&store, input.as_slice(), &options).unwrap();
    let elapsed = start.elapsed();
    println!(
        "import of {n} JSONL rows ({} MB, every 10th with password_hash): {elapsed:.2?} ({:.0} rows/s)",
        input.len() / 1_000_000,
        n as f64 / elapsed.as_secs_f64()
    );
    assert!(
        report.failed.is_empty(),
        "{:?}",
        &report.failed[..3.min(report.failed.len())]
    );
    assert!(!report.truncated_errors);
    assert_eq!(report.imported, n as u64);
    assert_eq!(store.count_devices().unwrap(), n as u64);

    let last = n - 1;
    for i in [0, 1, 4_321 % n, last] {
        let d = store
            .get_device(&id(&format!("dev-{i:06}")))
            .unwrap()
            .unwrap();
        assert_eq!(d.name, format!("Device {i}"));
        assert!(d.groups.contains(&format!("fleet-{}", i % 10)));
        assert_eq!(d.attributes["site"], format!("s{}", i % 7));
        assert!(d.enabled);
        assert_eq!(d.created_at, 1_700_000_000_000);
        let credential = store.get_credential(d.id.as_str()).unwrap();
        assert_eq!(credential.is_some(), i % 10 == 0, "{i}");
    }
    let stored = store.get_credential("dev-000000").unwrap().unwrap();
    assert!(verify_password(&stored, "factory-secret").unwrap());

    // A search matching nothing stops after the scan budget with a cursor.
    let query = DeviceQuery {
        name_contains: Some("no such name".into()),
        ..DeviceQuery::default()
    };
    let page = store.list_devices(&query).unwrap();
    assert!(page.items.is_empty());
    if n > LIST_SCAN_BUDGET {
        let next = page.next.expect("a cursor after the scan budget");
        assert_eq!(next.as_str(), format!("dev-{:06}", LIST_SCAN_BUDGET - 1));
    } else {
        assert!(page.next.is_none());
    }
}

#[test]
fn import_10k_jsonl_rows() {
    import_jsonl(10_000);
}

#[test]
fn import_100k_jsonl_rows() {
    import_jsonl(100_000);
}

#[test]
fn csv_good_rows_land_and_bad_rows_are_reported_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(dir.path()).unwrap();
    let phc = hash_password("pw-hash", &HashParams::INSECURE_FAST).unwrap();
    let csv = format!(
        "id,name,enabled,groups,attributes,password,password_hash\n\
         a1,Alpha,true,g1;g2,site=ber;floor=2,,\n\
         a/2,Bad id,,,,,\n\
         a3,With password,no,,,pw-plain,\n\
         a1,Duplicate,,,,,\n\
         a4,Both,,,,pw,\"{phc}\"\n\
         a5,Hash,,,,,\"{phc}\"\n\
         a6,Bad hash,,,,,$argon2id$nonsense\n\
         a7,Bad group,,a b,,,\n"
    );
    let mut options = ImportOptions::new(ImportFormat::Csv, 42);
    options.hash_params = HashParams::INSECURE_FAST;
    let report = import(&store, csv.as_bytes(), &options).unwrap();
    assert_eq!(report.imported, 3, "{:#?}", report.failed);
    let lines: Vec<(u64, Option<&str>)> = report
        .failed
        .iter()
        .map(|e| (e.line, e.id.as_deref()))
        .collect();
    assert_eq!(
        lines,
        [
            (3, Some("a/2")),
            (5, Some("a1")),
            (6, Some("a4")),
            (8, Some("a6")),
            (9, Some("a7"))
        ]
    );
    let messages: Vec<&str> = report.failed.iter().map(|e| e.message.as_str()).collect();
    assert!(messages[0].contains("'/'"), "{}", messages[0]);
    assert!(messages[1].contains("already exists"), "{}", messages[1]);
    assert!(messages[2].contains("not both"), "{}", messages[2]);
    assert!(messages[3].contains("password_hash"), "{}", messages[3]);
    assert!(messages[4].contains("group"), "{}", messages[4]);

    let a1 = store.get_device(&id("a1")).unwrap().unwrap();
    assert_eq!(a1.name, "Alpha");
    assert_eq!(a1.attributes["floor"], "2");
    let a3 = store.get_device(&id("a3")).unwrap().unwrap();
    assert!(!a3.enabled);
    let hashed = store.get_credential("a3").unwrap().unwrap();
    assert!(!hashed.contains("pw-plain"));
    assert!(verify_password(&hashed, "pw-plain").unwrap());
    let kept = store.get_credential("a5").unwrap().unwrap();
    assert!(verify_password(&kept, "pw-hash").unwrap());
}

#[test]
fn too_many_bad_rows_stop_the_import() {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(dir.path()).unwrap();
    let mut input = String::new();
    for i in 0..5 {
        input.push_str(&format!("{{\"id\":\"good-{i}\"}}\n"));
    }
    for _ in 0..10 {
        input.push_str("{\"id\":\"bad/id\"}\n");
    }
    for i in 5..10 {
        input.push_str(&format!("{{\"id\":\"good-{i}\"}}\n"));
    }
    let mut options = ImportOptions::new(ImportFormat::JsonLines, 1);
    options.max_errors = 3;
    options.batch_size = 2;
    let report = import(&store, input.as_bytes(), &options).unwrap();
    assert!(report.truncated_errors);
    assert_eq!(report.failed.len(), 3);
    assert_eq!(report.stopped_at_line, Some(9));
    assert_eq!(report.imported, 5);
    assert_eq!(store.count_devices().unwrap(), 5);
}

#[test]
fn duplicates_across_batches_count_against_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(dir.path()).unwrap();
    let input = "{\"id\":\"x\"}\n".repeat(10);
    let mut options = ImportOptions::new(ImportFormat::JsonLines, 1);
    options.max_errors = 4;
    options.batch_size = 3;
    let report = import(&store, input.as_bytes(), &options).unwrap();
    assert_eq!(report.imported, 1);
    assert_eq!(report.failed.len(), 4);
    assert!(report.truncated_errors);
    assert_eq!(report.failed[0].line, 2);
}

#[test]
fn a_bad_csv_header_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(dir.path()).unwrap();
    let options = ImportOptions::new(ImportFormat::Csv, 1);
    let err = import(&store, "id,passwrod\nd1,x\n".as_bytes(), &options).unwrap_err();
    assert!(matches!(err, ImportError::Header(_)), "{err}");
    assert_eq!(store.count_devices().unwrap(), 0);
}
