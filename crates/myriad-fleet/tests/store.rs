//! The fleet store end to end, on a real file.

use std::collections::BTreeSet;

use myriad_fleet::acl::Principal;
use myriad_fleet::credentials::{HashParams, hash_password, verify_password};
use myriad_fleet::presence::{ConnectInfo, DisconnectReason, PresenceTracker};
use myriad_fleet::registry::{AppId, DeviceId, DevicePatch, DeviceQuery, NewAppClient, NewDevice};
use myriad_fleet::store::{FleetStore, FleetStoreError};

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn device(i: usize) -> NewDevice {
    let mut new = NewDevice::new(id(&format!("dev-{i:05}")));
    new.name = format!("Device {i}");
    new.attributes.insert(
        "site".into(),
        if i.is_multiple_of(3) { "ber" } else { "muc" }.into(),
    );
    if i.is_multiple_of(2) {
        new.groups.insert("even".into());
    }
    new.enabled = !i.is_multiple_of(5);
    new
}

fn all_pages(store: &FleetStore, mut query: DeviceQuery) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let page = store.list_devices(&query).unwrap();
        assert!(page.items.len() <= query.limit as usize);
        ids.extend(page.items.into_iter().map(|d| d.id.into_string()));
        match page.next {
            Some(next) => query.after = Some(next),
            None => return ids,
        }
    }
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let phc = hash_password("pw", &HashParams::INSECURE_FAST).unwrap();
    {
        let store = FleetStore::open(dir.path()).unwrap();
        store.create_device(&device(1), 100).unwrap();
        store.put_credential("dev-00001", &phc).unwrap();
        store.put_shadow(&id("dev-00001"), b"{\"v\":1}").unwrap();
        let mut tracker = PresenceTracker::new();
        tracker.connected(&id("dev-00001"), 7, 150, &ConnectInfo::default());
        store
            .put_presence(tracker.get(&id("dev-00001")).unwrap())
            .unwrap();
        store
            .create_app(
                &NewAppClient {
                    id: AppId::new("dash").unwrap(),
                    name: "Dashboard".into(),
                    publish: vec![],
                    subscribe: vec!["devices/+/telemetry".into()],
                    admin: false,
                },
                120,
            )
            .unwrap();
        store.close().unwrap();
    }
    let store = FleetStore::open(dir.path()).unwrap();
    let d = store.get_device(&id("dev-00001")).unwrap().unwrap();
    assert_eq!(d.name, "Device 1");
    assert_eq!(d.created_at, 100);
    assert_eq!(store.count_devices().unwrap(), 1);
    let stored = store.get_credential("dev-00001").unwrap().unwrap();
    assert!(verify_password(&stored, "pw").unwrap());
    assert_eq!(
        store.get_shadow(&id("dev-00001")).unwrap().as_deref(),
        Some(&b"{\"v\":1}"[..])
    );
    let presence = store.list_presence().unwrap();
    assert_eq!(presence.len(), 1);
    assert!(presence[0].online);
    // Start-up after a crash: the device recorded online goes offline.
    let (tracker, events) = PresenceTracker::recover(presence, 1_000);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, Some(DisconnectReason::ServerRestart));
    let changed: Vec<_> = events
        .iter()
        .filter_map(|e| tracker.get(&e.device).cloned())
        .collect();
    assert_eq!(store.put_presence_batch(&changed).unwrap(), 1);
    assert!(
        !store
            .get_presence(&id("dev-00001"))
            .unwrap()
            .unwrap()
            .online
    );
    let apps = store.list_apps().unwrap();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].subscribe, vec!["devices/+/telemetry".to_string()]);
}

#[test]
fn paging_returns_every_device_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(dir.path()).unwrap();
    let rows: Vec<_> = (0..1_234).map(|i| (device(i), None)).collect();
    let results = store.insert_devices_batch(&rows, 5).unwrap();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(store.count_devices().unwrap(), 1_234);

    for limit in [1, 7, 100, 1000] {
        let ids = all_pages(
            &store,
            DeviceQuery {
                limit,
                ..DeviceQuery::default()
            },
        );
        let expected: Vec<String> = (0..1_234).map(|i| format!("dev-{i:05}")).collect();
        assert_eq!(ids, expected, "limit {limit}");
    }

    // Filters: every match exactly once, in order.
    let query = DeviceQuery {
        attribute: Some(("site".into(), "ber".into())),
        group: Some("even".into()),
        enabled: Some(true),
        limit: 10,
        ..DeviceQuery::default()
    };
    let ids = all_pages(&store, query);
    let expected: Vec<String> = (0..1_234)
        .filter(|i| i % 3 == 0 && i % 2 == 0 && i % 5 != 0)
        .map(|i| format!("dev-{i:05}"))
        .collect();
    assert_eq!(ids, expected);
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());

    // Prefix: a range scan, with and without a cursor.
    let query = DeviceQuery {
        id_prefix: Some("dev-001".into()),
        limit: 30,
        ..DeviceQuery::default()
    };
    let ids = all_pages(&store, query.clone());
    let expected: Vec<String> = (100..200).map(|i| format!("dev-{i:05}")).collect();
    assert_eq!(ids, expected);
    let page = store
        .list_devices(&DeviceQuery {
            after: Some(id("dev-00001")),
            ..query.clone()
        })
        .unwrap();
    assert_eq!(page.items[0].id.as_str(), "dev-00100");
    let page = store
        .list_devices(&DeviceQuery {
            after: Some(id("dev-00500")),
            ..query
        })
        .unwrap();
    assert!(page.items.is_empty() && page.next.is_none());

    let name = all_pages(
        &store,
        DeviceQuery {
            name_contains: Some("Device 12".into()),
            ..DeviceQuery::default()
        },
    );
    assert_eq!(name.len(), 1 + 10 + 34); // 12, 120..=129, 1200..=1233

    assert!(matches!(
        store.list_devices(&DeviceQuery {
            limit: 0,
            ..DeviceQuery::default()
        }),
        Err(FleetStoreError::Invalid(_))
    ));
}

#[test]
fn delete_cascades() {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(dir.path()).unwrap();
    let phc = hash_password("pw", &HashParams::INSECURE_FAST).unwrap();
    let rows = vec![(device(1), Some(phc.clone())), (device(2), Some(phc))];
    store.insert_devices_batch(&rows, 1).unwrap();
    let d1 = id("dev-00001");
    store.put_shadow(&d1, b"s").unwrap();
    let mut tracker = PresenceTracker::new();
    tracker.connected(&d1, 1, 1, &ConnectInfo::default());
    store.put_presence(tracker.get(&d1).unwrap()).unwrap();

    let deleted = store.delete_device(&d1).unwrap();
    assert_eq!(deleted.id, d1);
    assert!(store.get_device(&d1).unwrap().is_none());
    assert!(store.get_credential("dev-00001").unwrap().is_none());
    assert!(store.get_shadow(&d1).unwrap().is_none());
    assert!(store.get_presence(&d1).unwrap().is_none());
    assert!(store.login_record("dev-00001").unwrap().is_none());
    // The other device is untouched.
    assert!(store.get_credential("dev-00002").unwrap().is_some());
    assert!(matches!(
        store.delete_device(&d1),
        Err(FleetStoreError::DeviceNotFound(_))
    ));
    // Nothing can be attached to a device that does not exist.
    assert!(matches!(
        store.put_shadow(&d1, b"s"),
        Err(FleetStoreError::DeviceNotFound(_))
    ));
    assert!(matches!(
        store.put_presence(tracker.get(&d1).unwrap()),
        Err(FleetStoreError::DeviceNotFound(_))
    ));
    assert!(matches!(
        store.put_credential(
            "dev-00001",
            &hash_password("x", &HashParams::INSECURE_FAST).unwrap()
        ),
        Err(FleetStoreError::PrincipalNotFound(_))
    ));
    assert_eq!(
        store
            .put_presence_batch(&[tracker.get(&d1).unwrap().clone()])
            .unwrap(),
        0
    );
}

#[test]
fn create_update_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(dir.path()).unwrap();
    store.create_device(&device(1), 1).unwrap();
    assert!(matches!(
        store.create_device(&device(1), 2),
        Err(FleetStoreError::DeviceExists(_))
    ));
    let patch: DevicePatch =
        serde_json::from_str(r#"{"name":"Renamed","attributes":{"site":null,"floor":"2"}}"#)
            .unwrap();
    let updated = store.update_device(&id("dev-00001"), &patch, 9).unwrap();
    assert_eq!(updated.name, "Renamed");
    assert_eq!(updated.updated_at, 9);
    assert_eq!(
        store.get_device(&id("dev-00001")).unwrap().unwrap(),
        updated
    );
    assert!(matches!(
        store.update_device(&id("nope"), &patch, 9),
        Err(FleetStoreError::DeviceNotFound(_))
    ));

    // Device ids and app ids share one namespace.
    let app = |name: &str, admin| NewAppClient {
        id: AppId::new(name).unwrap(),
        name: String::new(),
        publish: vec!["ops/#".into()],
        subscribe: vec![],
        admin,
    };
    assert!(matches!(
        store.create_app(&app("dev-00001", false), 1),
        Err(FleetStoreError::IdTaken { by: "a device", .. })
    ));
    store.create_app(&app("ops", true), 1).unwrap();
    assert!(matches!(
        store.create_app(&app("ops", true), 1),
        Err(FleetStoreError::AppExists(_))
    ));
    let mut clash = NewDevice::new(id("ops"));
    clash.name = "x".into();
    assert!(matches!(
        store.create_device(&clash, 1),
        Err(FleetStoreError::IdTaken {
            by: "an app client",
            ..
        })
    ));

    // Login records.
    let phc = hash_password("secret", &HashParams::INSECURE_FAST).unwrap();
    store.put_credential("ops", &phc).unwrap();
    let login = store.login_record("ops").unwrap().unwrap();
    assert_eq!(login.principal, Principal::Admin("ops".into()));
    assert!(login.enabled);
    assert!(!format!("{login:?}").contains("argon2"));
    assert!(verify_password(login.password_hash.as_deref().unwrap(), "secret").unwrap());
    let patch = DevicePatch {
        enabled: Some(false),
        ..DevicePatch::default()
    };
    store.update_device(&id("dev-00001"), &patch, 10).unwrap();
    let login = store.login_record("dev-00001").unwrap().unwrap();
    assert_eq!(login.principal, Principal::Device(id("dev-00001")));
    assert!(!login.enabled);
    assert!(login.password_hash.is_none());
    assert!(store.login_record("nobody").unwrap().is_none());
    assert!(store.login_record("a/b").unwrap().is_none());
    assert!(matches!(
        store.put_credential("ops", "plain-text"),
        Err(FleetStoreError::Credential(_))
    ));
    let deleted = store.delete_app(&AppId::new("ops").unwrap()).unwrap();
    assert!(deleted.admin);
    assert!(store.get_credential("ops").unwrap().is_none());
}

#[test]
fn batch_reports_each_row() {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(dir.path()).unwrap();
    store.create_device(&device(2), 1).unwrap();
    let mut too_long = device(3);
    too_long.name = "n".repeat(300);
    let rows = vec![
        (device(1), None),
        (device(2), None),
        (device(1), None),
        (too_long, None),
        (device(4), Some("$argon2id$garbage".to_string())),
        (device(5), None),
    ];
    let results = store.insert_devices_batch(&rows, 1).unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(FleetStoreError::DeviceExists(_))));
    assert!(matches!(results[2], Err(FleetStoreError::DeviceExists(_))));
    assert!(matches!(results[3], Err(FleetStoreError::Invalid(_))));
    assert!(matches!(results[4], Err(FleetStoreError::Credential(_))));
    assert!(results[5].is_ok());
    assert_eq!(store.count_devices().unwrap(), 3);
    // A failed row wrote nothing.
    assert!(store.get_device(&id("dev-00004")).unwrap().is_none());
}

#[test]
fn a_corrupt_record_is_an_error_naming_table_and_key() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FleetStore::open(dir.path()).unwrap();
        store.create_device(&device(1), 1).unwrap();
        store.create_device(&device(2), 1).unwrap();
        store.close().unwrap();
    }
    // Damage one record behind the store's back.
    {
        const DEVICES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("devices");
        let db = redb::Database::create(dir.path().join("fleet.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(DEVICES).unwrap();
            table
                .insert(&b"dev-00002"[..], &[1u8, 0xff, 0xff][..])
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = FleetStore::open(dir.path()).unwrap();
    assert!(store.get_device(&id("dev-00001")).unwrap().is_some());
    let err = store.get_device(&id("dev-00002")).unwrap_err();
    match &err {
        FleetStoreError::Corrupt { table, key, .. } => {
            assert_eq!(*table, "devices");
            assert_eq!(key, "dev-00002");
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("fleet.redb") && msg.contains("dev-00002"),
        "{msg}"
    );
    assert!(matches!(
        store.list_devices(&DeviceQuery::default()),
        Err(FleetStoreError::Corrupt { .. })
    ));
}

#[test]
fn a_file_that_is_not_a_store_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fleet.redb"), vec![0x5a; 8192]).unwrap();
    let err = FleetStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("fleet.redb"), "{err}");
}

#[test]
fn many_devices_are_read_by_id_in_the_order_asked() {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(dir.path()).unwrap();
    for i in 0..3 {
        store.create_device(&device(i), 1).unwrap();
    }
    let got = store
        .get_devices(&[
            "dev-00002",
            "nosuch",
            "dev-00000",
            "not a valid id",
            "dev-00002",
        ])
        .unwrap();
    let ids: Vec<Option<String>> = got
        .iter()
        .map(|d| d.as_ref().map(|d| d.id.as_str().to_owned()))
        .collect();
    assert_eq!(
        ids,
        vec![
            Some("dev-00002".into()),
            None,
            Some("dev-00000".into()),
            None,
            Some("dev-00002".into())
        ]
    );
    let first = got[2].as_ref().unwrap();
    assert_eq!(first.groups, BTreeSet::from(["even".to_owned()]));
    assert_eq!(first.attributes["site"], "ber");
    assert!(store.get_devices(&[]).unwrap().is_empty());
}

#[test]
fn groups_are_counted_in_name_order_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(dir.path()).unwrap();
    for (i, groups) in [vec!["b", "a"], vec!["a"], vec!["c"], vec![]]
        .into_iter()
        .enumerate()
    {
        let mut new = NewDevice::new(id(&format!("g-{i}")));
        new.groups = groups.into_iter().map(String::from).collect();
        store.create_device(&new, 1).unwrap();
    }
    let (all, next) = store.list_groups(None, 10).unwrap();
    assert_eq!(all, vec![("a".into(), 2), ("b".into(), 1), ("c".into(), 1)]);
    assert_eq!(next, None);
    let (first, next) = store.list_groups(None, 2).unwrap();
    assert_eq!(first, vec![("a".into(), 2), ("b".into(), 1)]);
    assert_eq!(next.as_deref(), Some("b"));
    let (rest, next) = store.list_groups(Some("b"), 2).unwrap();
    assert_eq!((rest, next), (vec![("c".into(), 1)], None));
}

#[test]
fn upsert_updates_fields_keeps_creation_and_reports_revocations() {
    use myriad_fleet::store::Upserted;
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(dir.path()).unwrap();
    let mut new = NewDevice::new(id("u-1"));
    new.name = "One".into();
    store.create_device(&new, 5).unwrap();
    let phc = hash_password("pw-123456", &HashParams::default()).unwrap();
    let mut changed = new.clone();
    changed.name = "Renamed".into();
    changed.enabled = false;
    let fresh = NewDevice::new(id("u-2"));
    let results = store
        .upsert_devices_batch(&[(changed, Some(phc)), (fresh, None)], 9)
        .unwrap();
    assert!(matches!(
        results[0],
        Ok(Upserted::Updated {
            password_changed: true,
            disabled: true
        })
    ));
    assert!(matches!(results[1], Ok(Upserted::Created)));
    let device = store.get_device(&id("u-1")).unwrap().unwrap();
    assert_eq!((device.name.as_str(), device.enabled), ("Renamed", false));
    assert_eq!((device.created_at, device.updated_at), (5, 9));
}

/// Every page of `page` (device ids, in order).
fn id_pages(
    page: impl Fn(Option<&str>) -> Result<(Vec<String>, Option<String>), FleetStoreError>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (ids, next) = page(after.as_deref()).unwrap();
        out.extend(ids);
        match next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

fn in_group(store: &FleetStore, g: &str) -> Vec<String> {
    id_pages(|after| store.devices_in_group(g, after, 2))
}

fn with_attr(store: &FleetStore, k: &str, v: &str) -> Vec<String> {
    id_pages(|after| store.devices_with_attribute(k, v, after, 2))
}

#[test]
fn group_and_attribute_indexes_follow_every_device_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(dir.path()).unwrap();
    for i in 0..6 {
        store.create_device(&device(i), 1).unwrap();
    }
    assert_eq!(
        in_group(&store, "even"),
        ["dev-00000", "dev-00002", "dev-00004"]
    );
    assert_eq!(with_attr(&store, "site", "ber"), ["dev-00000", "dev-00003"]);
    assert!(in_group(&store, "eve").is_empty());
    assert!(with_attr(&store, "site", "be").is_empty());
    // Update: dev-00000 leaves `even`, joins `odd`, moves to muc.
    let patch: DevicePatch =
        serde_json::from_str(r#"{"groups":["odd"],"attributes":{"site":"muc","fw":"2"}}"#).unwrap();
    store.update_device(&id("dev-00000"), &patch, 2).unwrap();
    assert_eq!(in_group(&store, "even"), ["dev-00002", "dev-00004"]);
    assert_eq!(in_group(&store, "odd"), ["dev-00000"]);
    assert_eq!(with_attr(&store, "site", "ber"), ["dev-00003"]);
    assert_eq!(with_attr(&store, "fw", "2"), ["dev-00000"]);
    // Delete.
    store.delete_device(&id("dev-00002")).unwrap();
    assert_eq!(in_group(&store, "even"), ["dev-00004"]);
    // Bulk insert and import (upsert): a new device, and an existing one replaced.
    let mut fresh = device(10);
    fresh.groups = BTreeSet::from(["odd".to_string()]);
    store.insert_devices_batch(&[(fresh, None)], 3).unwrap()[0]
        .as_ref()
        .unwrap();
    let mut replaced = device(4);
    replaced.groups.clear();
    replaced.attributes.insert("site".into(), "ber".into());
    store.upsert_devices_batch(&[(replaced, None)], 4).unwrap()[0]
        .as_ref()
        .unwrap();
    assert!(in_group(&store, "even").is_empty());
    assert_eq!(in_group(&store, "odd"), ["dev-00000", "dev-00010"]);
    assert_eq!(with_attr(&store, "site", "ber"), ["dev-00003", "dev-00004"]);
    // Groups come from the index, counts included; the empty group is gone.
    let (groups, next) = store.list_groups(None, 10).unwrap();
    assert_eq!((groups, next), (vec![("odd".into(), 2)], None));
    // list_devices by group or attribute walks the index, pages and all.
    let by_group = all_pages(
        &store,
        DeviceQuery {
            group: Some("odd".into()),
            limit: 1,
            ..DeviceQuery::default()
        },
    );
    assert_eq!(by_group, ["dev-00000", "dev-00010"]);
    let by_attr = all_pages(
        &store,
        DeviceQuery {
            attribute: Some(("site".into(), "ber".into())),
            id_prefix: Some("dev-00004".into()),
            ..DeviceQuery::default()
        },
    );
    assert_eq!(by_attr, ["dev-00004"]);
    // A 0x00 in a name matches nothing (it would span other entries).
    assert!(in_group(&store, "odd\0dev").is_empty());
    assert!(
        store
            .list_devices(&DeviceQuery {
                group: Some("odd\0dev".into()),
                ..DeviceQuery::default()
            })
            .unwrap()
            .items
            .is_empty()
    );
    // Attribute keys by prefix.
    assert_eq!(
        store.attribute_keys("", 10).unwrap(),
        (vec!["fw".to_string(), "site".to_string()], false)
    );
    assert_eq!(
        store.attribute_keys("", 1).unwrap(),
        (vec!["fw".to_string()], true)
    );
    assert_eq!(
        store.attribute_keys("s", 10).unwrap(),
        (vec!["site".to_string()], false)
    );
}

#[test]
fn indexes_are_built_at_open_for_a_file_written_without_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FleetStore::open(dir.path()).unwrap();
        for i in 0..6 {
            store.create_device(&device(i), 1).unwrap();
        }
        store.close().unwrap();
    }
    // What the previous version wrote: no index tables, no marker.
    {
        type Def = redb::TableDefinition<'static, &'static [u8], &'static [u8]>;
        let db = redb::Database::create(dir.path().join("fleet.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        for name in ["devices_by_group", "devices_by_attribute"] {
            assert!(txn.delete_table(Def::new(name)).unwrap());
        }
        txn.open_table(Def::new("meta"))
            .unwrap()
            .remove(b"device_indexes".as_slice())
            .unwrap()
            .expect("the marker was written");
        txn.commit().unwrap();
    }
    let store = FleetStore::open(dir.path()).unwrap();
    assert_eq!(
        in_group(&store, "even"),
        ["dev-00000", "dev-00002", "dev-00004"]
    );
    assert_eq!(with_attr(&store, "site", "ber"), ["dev-00000", "dev-00003"]);
    assert_eq!(
        store.list_groups(None, 10).unwrap(),
        (vec![("even".to_string(), 3)], None)
    );
    // Stale entries (a marker lost with tables kept) are dropped by the rebuild.
    store.delete_device(&id("dev-00000")).unwrap();
    store.close().unwrap();
    {
        type Def = redb::TableDefinition<'static, &'static [u8], &'static [u8]>;
        let db = redb::Database::create(dir.path().join("fleet.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(Def::new("devices_by_group"))
            .unwrap()
            .insert(b"even\0ghost".as_slice(), b"".as_slice())
            .unwrap();
        txn.open_table(Def::new("meta"))
            .unwrap()
            .remove(b"device_indexes".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = FleetStore::open(dir.path()).unwrap();
    assert_eq!(in_group(&store, "even"), ["dev-00002", "dev-00004"]);
}
