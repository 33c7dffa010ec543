use super::*;
use crate::memfs::MemFs;
use proptest::prelude::*;

const ID: &str = "dev-1";

fn obj(v: Value) -> Object {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// The single publish in `actions`: (topic suffix, JSON).
fn published(actions: &[Action]) -> Vec<(String, Value)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { topic, payload } => Some((
                topic.strip_prefix("$shadow/dev-1/").unwrap().to_string(),
                serde_json::from_slice(payload).unwrap(),
            )),
            _ => None,
        })
        .collect()
}

fn token_of(v: &Value) -> String {
    v["clientToken"].as_str().unwrap().to_string()
}

fn msg(sync: &mut ShadowSync, suffix: &str, v: Value) -> Vec<Action> {
    sync.on_message(&format!("$shadow/{ID}/{suffix}"), v.to_string().as_bytes())
        .unwrap()
}

/// Connects and answers the get with the given document (the server's get/accepted form).
fn connect(sync: &mut ShadowSync, desired: Value, reported: Value, version: u64) -> Vec<Action> {
    let out = sync.on_connected(0xabc);
    let p = published(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, "get");
    let mut state = json!({"desired": desired, "reported": reported});
    let delta = crate_delta(
        &obj(state["desired"].clone()),
        &obj(state["reported"].clone()),
    );
    if !delta.is_empty() {
        state["delta"] = Value::Object(delta);
    }
    msg(
        sync,
        "get/accepted",
        json!({"state": state, "metadata": {"desired": {}, "reported": {}}, "version": version,
               "timestamp": 1, "clientToken": token_of(&p[0].1)}),
    )
}

/// The server's delta rule (desired fields that differ from reported), for the fixtures: the
/// same comparison as the module's own `not_told`.
fn crate_delta(desired: &Object, reported: &Object) -> Object {
    super::not_told(desired, reported)
}

#[test]
fn subscriptions_and_bad_device_ids() {
    let s = ShadowSync::new(ID).unwrap();
    assert_eq!(s.subscriptions().len(), 6);
    assert!(
        s.subscriptions()
            .contains(&"$shadow/dev-1/update/delta".to_string())
    );
    for bad in ["", "a/b", "a+", "#", &"d".repeat(MAX_DEVICE_ID + 1)] {
        assert!(
            matches!(ShadowSync::new(bad), Err(ShadowError::BadDevice(_))),
            "{bad}"
        );
    }
    ShadowSync::new(&"d".repeat(MAX_DEVICE_ID)).unwrap();
}

#[test]
fn a_delta_calls_the_application_and_its_report_goes_out_with_the_version() {
    let mut s = ShadowSync::new(ID).unwrap();
    let out = connect(&mut s, json!({"led": "on"}), json!({"led": "off"}), 4);
    assert_eq!(out, [Action::Apply(obj(json!({"led": "on"})))]);
    assert_eq!(s.version(), 4);
    // The application acts and reports.
    let out = s.report(obj(json!({"led": "on"}))).unwrap();
    let p = published(&out);
    assert_eq!(p[0].0, "update");
    assert_eq!(p[0].1["state"], json!({"reported": {"led": "on"}}));
    assert_eq!(p[0].1["version"], 4);
    // A second report waits for the answer to the first.
    assert!(s.report(obj(json!({"temp": 20}))).unwrap().is_empty());
    let out = msg(
        &mut s,
        "update/accepted",
        json!({"state": {"reported": {"led": "on"}}, "metadata": {}, "version": 5,
               "timestamp": 2, "clientToken": token_of(&p[0].1)}),
    );
    let p = published(&out);
    assert_eq!(p[0].1["state"], json!({"reported": {"temp": 20}}));
    assert_eq!(p[0].1["version"], 5);
    assert_eq!(s.reported(), obj(json!({"led": "on", "temp": 20})));
    // An operator's change arrives as a delta (the next version) and is applied.
    let out = msg(
        &mut s,
        "update/delta",
        json!({"state": {"fan": {"speed": 3}}, "metadata": {}, "version": 7, "timestamp": 3}),
    );
    assert_eq!(out, [Action::Apply(obj(json!({"fan": {"speed": 3}})))]);
    assert_eq!(s.desired(), &obj(json!({"led": "on", "fan": {"speed": 3}})));
    // A delta older than the copy is ignored.
    let out = msg(
        &mut s,
        "update/delta",
        json!({"state": {"fan": 1}, "version": 6}),
    );
    assert!(out.is_empty());
    // A redelivery of the same delta calls nobody.
    let out = msg(
        &mut s,
        "update/delta",
        json!({"state": {"fan": {"speed": 3}}, "version": 7}),
    );
    assert!(out.is_empty());
    assert_eq!(s.desired()["fan"], json!({"speed": 3}));
}

#[test]
fn offline_reports_merge_and_go_out_as_one_update_after_the_get() {
    let mut s = ShadowSync::new(ID).unwrap();
    assert!(
        s.report(obj(json!({"a": 1, "b": {"x": 1, "y": 2}, "c": 3})))
            .unwrap()
            .is_empty()
    );
    assert!(
        s.report(obj(json!({"a": 2, "b": {"y": null}, "c": null})))
            .unwrap()
            .is_empty()
    );
    assert!(s.report(obj(json!({"d": [1, 2]}))).unwrap().is_empty());
    assert!(s.has_unsent());
    let out = connect(&mut s, json!({}), json!({"c": 9, "old": true}), 10);
    let p = published(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].1["state"],
        json!({"reported": {"a": 2, "b": {"x": 1, "y": null}, "c": null, "d": [1, 2]}})
    );
    assert_eq!(p[0].1["version"], 10);
    assert_eq!(
        s.reported(),
        obj(json!({"a": 2, "b": {"x": 1}, "d": [1, 2], "old": true}))
    );
}

#[test]
fn a_version_conflict_reads_again_and_resends_merged_on_the_fresh_version() {
    let mut s = ShadowSync::new(ID).unwrap();
    connect(&mut s, json!({}), json!({}), 1);
    let p = published(&s.report(obj(json!({"a": 1}))).unwrap());
    let first = token_of(&p[0].1);
    // A newer report while the first is in flight.
    assert!(s.report(obj(json!({"b": 2, "a": 5}))).unwrap().is_empty());
    // Someone else wrote version 2 meanwhile: 409.
    let out = msg(
        &mut s,
        "update/rejected",
        json!({"code": 409, "message": "version conflict", "clientToken": first, "timestamp": 5}),
    );
    let p = published(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, "get");
    assert!(!out.iter().any(|a| matches!(a, Action::Rejected { .. })));
    // Reports made while the get is out wait too.
    assert!(s.report(obj(json!({"c": 3}))).unwrap().is_empty());
    let out = msg(
        &mut s,
        "get/accepted",
        json!({"state": {"desired": {"mode": "eco"}, "reported": {"z": 0}, "delta": {"mode": "eco"}},
               "metadata": {}, "version": 2, "timestamp": 6, "clientToken": token_of(&p[0].1)}),
    );
    assert!(
        out.contains(&Action::Apply(obj(json!({"mode": "eco"})))),
        "desired changed"
    );
    let p = published(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].1["state"],
        json!({"reported": {"a": 5, "b": 2, "c": 3}})
    );
    assert_eq!(p[0].1["version"], 2);
    assert_eq!(s.reported(), obj(json!({"z": 0, "a": 5, "b": 2, "c": 3})));
}

#[test]
fn disconnect_requeues_the_patch_in_flight_and_old_answers_are_ignored() {
    let mut s = ShadowSync::new(ID).unwrap();
    connect(&mut s, json!({}), json!({}), 1);
    let p = published(&s.report(obj(json!({"a": 1}))).unwrap());
    let old = token_of(&p[0].1);
    s.on_disconnected();
    assert!(s.report(obj(json!({"b": 1}))).unwrap().is_empty());
    // An answer to the old request after the reconnect is not taken for a new one.
    let out = s.on_connected(0xdef);
    let get = published(&out);
    assert!(
        msg(
            &mut s,
            "update/accepted",
            json!({"state": {"reported": {"a": 1}}, "version": 2, "clientToken": old})
        )
        .is_empty()
    );
    assert!(msg(&mut s, "get/accepted",
        json!({"state": {"desired": {}, "reported": {}}, "version": 9, "clientToken": "get-0-1"})).is_empty());
    let out = msg(
        &mut s,
        "get/accepted",
        json!({"state": {"desired": {}, "reported": {"a": 1}}, "version": 2,
               "clientToken": token_of(&get[0].1)}),
    );
    let p = published(&out);
    assert_eq!(p[0].1["state"], json!({"reported": {"a": 1, "b": 1}}));
    assert_eq!(p[0].1["version"], 2);
}

#[test]
fn other_writers_updates_apply_in_order_and_a_gap_reads_again() {
    let mut s = ShadowSync::new(ID).unwrap();
    connect(&mut s, json!({"x": 1}), json!({"x": 1}), 3);
    let out = msg(
        &mut s,
        "update/accepted",
        json!({"state": {"desired": {"x": 2, "y": null}, "reported": null}, "metadata": {},
               "version": 4, "timestamp": 1, "clientToken": "operator"}),
    );
    assert!(out.is_empty());
    assert_eq!((s.desired(), s.version()), (&obj(json!({"x": 2})), 4));
    assert!(s.reported().is_empty());
    let out = msg(
        &mut s,
        "update/accepted",
        json!({"state": {"desired": {"x": 3}}, "version": 6}),
    );
    assert_eq!(published(&out)[0].0, "get");
    // Delete: the copy is emptied at the deletion's version.
    msg(
        &mut s,
        "delete/accepted",
        json!({"version": 7, "timestamp": 1}),
    );
    assert!(s.desired().is_empty() && s.reported().is_empty());
    assert_eq!(s.version(), 7);
}

#[test]
fn other_rejections_drop_or_keep_the_patch() {
    let mut s = ShadowSync::new(ID).unwrap();
    connect(&mut s, json!({}), json!({}), 1);
    let p = published(&s.report(obj(json!({"a": 1}))).unwrap());
    let out = msg(
        &mut s,
        "update/rejected",
        json!({"code": 429, "message": "too many requests", "clientToken": token_of(&p[0].1)}),
    );
    assert_eq!(
        out,
        [Action::Rejected {
            code: 429,
            message: "too many requests".into(),
            kept: true
        }]
    );
    let p = published(&s.flush());
    assert_eq!(p[0].1["state"], json!({"reported": {"a": 1}}));
    let out = msg(
        &mut s,
        "update/rejected",
        json!({"code": 400, "message": "bad", "clientToken": token_of(&p[0].1)}),
    );
    assert!(matches!(
        out[0],
        Action::Rejected {
            code: 400,
            kept: false,
            ..
        }
    ));
    assert_eq!(published(&out)[0].0, "get");
    assert!(!s.has_unsent());
}

#[test]
fn limits_one_past() {
    let mut s = ShadowSync::new(ID).unwrap();
    // `{"k":"..."}` is 8 bytes plus the string.
    let fill = |n: usize| obj(json!({"k": "v".repeat(n - 8)}));
    assert!(matches!(
        s.report(fill(MAX_SECTION_BYTES + 1)),
        Err(ShadowError::TooLarge { bytes, .. }) if bytes == MAX_SECTION_BYTES + 1
    ));
    assert!(!s.has_unsent(), "nothing changed");
    s.report(fill(MAX_SECTION_BYTES)).unwrap();
    // Depth: six levels pass, seven do not.
    let deep = |levels: usize| {
        let mut v = json!(1);
        for _ in 1..levels {
            v = json!({ "n": v });
        }
        obj(json!({ "n": v }))
    };
    assert!(exceeds_depth(&deep(MAX_DEPTH + 1), MAX_DEPTH));
    assert!(!exceeds_depth(&deep(MAX_DEPTH), MAX_DEPTH));
    let mut s = ShadowSync::new(ID).unwrap();
    assert_eq!(s.report(deep(MAX_DEPTH + 1)), Err(ShadowError::TooDeep));
    s.report(deep(MAX_DEPTH)).unwrap();
    // A message nested too deep, or too long, is refused and changes nothing.
    let e = s
        .on_message(
            "$shadow/dev-1/update/delta",
            json!({"state": deep(MAX_DEPTH + 1), "version": 99})
                .to_string()
                .as_bytes(),
        )
        .unwrap_err();
    assert!(matches!(e, ShadowError::BadMessage { .. }), "{e}");
    let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
    assert!(s.on_message("$shadow/dev-1/update/delta", &big).is_err());
    assert_eq!(s.version(), 0);
    // Garbage on a shadow topic is an error, other topics are ignored.
    assert!(s.on_message("$shadow/dev-1/get/accepted", b"[1]").is_err());
    assert!(
        s.on_message("$shadow/other/update/delta", b"garbage")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_copy_and_what_waits_survive_a_restart() {
    let fs = MemFs::new(1);
    let store = ShadowStore::new(Path::new("/shadow"));
    assert!(store.load(&fs, ID).unwrap().is_none());
    let mut s = ShadowSync::new(ID).unwrap();
    connect(&mut s, json!({"m": 1}), json!({"r": 1}), 5);
    s.report(obj(json!({"r": 2}))).unwrap(); // in flight
    s.on_disconnected();
    s.report(obj(json!({"q": 3}))).unwrap(); // waiting
    assert!(s.is_dirty());
    store.save(&fs, &mut s).unwrap();
    assert!(!s.is_dirty());
    let mut t = store.load(&fs, ID).unwrap().unwrap();
    assert_eq!((t.desired(), t.version()), (s.desired(), 5));
    assert_eq!(t.reported(), s.reported());
    let out = connect(&mut t, json!({"m": 1}), json!({"r": 1}), 5);
    assert_eq!(
        published(&out)[0].1["state"],
        json!({"reported": {"r": 2, "q": 3}})
    );
    // Another device's file, or a damaged one, is an error naming it.
    assert!(matches!(
        store.load(&fs, "dev-2"),
        Err(ShadowStoreError::Damaged { .. })
    ));
    let p = Path::new("/shadow/shadow.json");
    let mut b = fs.contents(p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    fs.put(p, &b);
    let e = store.load(&fs, ID).unwrap_err();
    assert!(e.to_string().contains("shadow.json"), "{e}");
    fs.put(p, &vec![b'x'; MAX_SHADOW_FILE + 1]);
    assert!(matches!(
        store.load(&fs, ID),
        Err(ShadowStoreError::Damaged { .. })
    ));
}

#[test]
fn a_power_cut_during_a_save_keeps_the_old_or_the_new_copy() {
    let store = ShadowStore::new(Path::new("/shadow"));
    let mut n = 0;
    loop {
        let fs = MemFs::new(n);
        let mut s = ShadowSync::new(ID).unwrap();
        s.report(obj(json!({"v": 1}))).unwrap();
        store.save(&fs, &mut s).unwrap();
        s.report(obj(json!({"v": 2}))).unwrap();
        fs.cut_after(n);
        let done = store.save(&fs, &mut s).is_ok();
        fs.crash();
        let got = store.load(&fs, ID).unwrap().unwrap().reported();
        if done {
            assert_eq!(got["v"], 2, "cut at {n}: a save that returned is durable");
            break;
        }
        assert!(got["v"] == 1 || got["v"] == 2, "cut at {n}: {got:?}");
        n += 1;
    }
    assert!(n >= 3);
}

fn json_value(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        (0i64..3).prop_map(|i| json!(i)),
        Just(json!([1])),
    ];
    leaf.prop_recursive(depth, 24, 3, |inner| {
        proptest::collection::btree_map(prop_oneof![Just("a"), Just("b"), Just("c")], inner, 0..3)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    })
}

fn json_object() -> impl Strategy<Value = Object> {
    proptest::collection::btree_map(
        prop_oneof![Just("a"), Just("b"), Just("c")],
        json_value(3),
        0..3,
    )
    .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A stored document never holds nulls or empty objects: normalise one through the patch rules.
fn doc(o: Object) -> Object {
    let mut d = Map::new();
    apply_patch(&mut d, &o);
    d
}

proptest! {
    /// Sending the merged patch has the effect of sending the two in order.
    #[test]
    fn merged_patches_equal_the_patches_in_order(base in json_object(), p1 in json_object(), p2 in json_object()) {
        let base = doc(base);
        let mut in_order = base.clone();
        apply_patch(&mut in_order, &p1);
        apply_patch(&mut in_order, &p2);
        let mut merged = ops_from_patch(&p1);
        merge_ops(&mut merged, &ops_from_patch(&p2));
        // The operations themselves, and the patch sent for them against the base.
        let mut by_ops = base.clone();
        apply_ops(&mut by_ops, &merged);
        prop_assert_eq!(&by_ops, &in_order);
        let mut at_once = base.clone();
        apply_patch(&mut at_once, &ops_to_patch(&merged, Some(&base)));
        prop_assert_eq!(&at_once, &in_order);
        // The depth check of operations agrees with the patches', and merging never deepens.
        for d in 1..9 {
            prop_assert_eq!(ops_exceed_depth(&ops_from_patch(&p1), d), exceeds_depth(&p1, d));
            if !exceeds_depth(&p1, d) && !exceeds_depth(&p2, d) {
                prop_assert!(!ops_exceed_depth(&merged, d));
            }
        }
    }

    /// Any bytes on a shadow topic: an error or actions, never a panic; a report after it
    /// still works.
    #[test]
    fn any_message_is_handled(kind in 0usize..6, payload in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut s = ShadowSync::new(ID).unwrap();
        let _ = s.on_connected(1);
        let topics = s.subscriptions();
        let _ = s.on_message(&topics[kind], &payload);
        let ok = s.report(obj(json!({"ok": true}))).is_ok();
        prop_assert!(ok);
    }
}

/// The documents exactly as the platform's shadow code produces them (copied from
/// crates/myriad-fleet/src/shadow/tests.rs): an operator's first desired update
/// (`update/accepted`, `update/delta`, both with the operator's client token), then a get.
#[test]
fn documents_as_the_platform_sends_them() {
    let mut s = ShadowSync::new(ID).unwrap();
    let get = published(&s.on_connected(7));
    // Never written: the get answers version 0 with empty sections.
    let out = msg(
        &mut s,
        "get/accepted",
        json!({"state": {"desired": {}, "reported": {}}, "metadata": {"desired": {}, "reported": {}},
               "version": 0, "timestamp": 999, "clientToken": token_of(&get[0].1)}),
    );
    assert!(out.is_empty());
    let out = msg(
        &mut s,
        "update/accepted",
        json!({
            "state": {"desired": {"color": "red", "light": {"on": true}}},
            "metadata": {"desired": {"color": {"timestamp": 1000}, "light": {"on": {"timestamp": 1000}}}},
            "version": 1,
            "timestamp": 1000,
            "clientToken": "c1"
        }),
    );
    assert!(out.is_empty());
    assert_eq!(s.version(), 1);
    let out = msg(
        &mut s,
        "update/delta",
        json!({
            "state": {"color": "red", "light": {"on": true}},
            "metadata": {"color": {"timestamp": 1000}, "light": {"on": {"timestamp": 1000}}},
            "version": 1,
            "timestamp": 1000,
            "clientToken": "c1"
        }),
    );
    // The accepted document already brought desired up to version 1, but the application
    // has not seen it: the delta is handed over once.
    assert_eq!(
        out,
        [Action::Apply(obj(
            json!({"color": "red", "light": {"on": true}})
        ))]
    );
    assert_eq!(
        s.desired(),
        &obj(json!({"color": "red", "light": {"on": true}}))
    );
    // A get/accepted with metadata and a delta, as get_document writes it.
    let get = published(&s.resync());
    let out = msg(
        &mut s,
        "get/accepted",
        json!({
            "state": {
                "desired": {"cfg": {"rate": 20, "mode": "eco"}, "tags": [1, 2, 3], "fw": "1.0"},
                "reported": {"cfg": {"rate": 10, "mode": "eco"}, "tags": [1, 2], "fw": "1.0"},
                "delta": {"cfg": {"rate": 20}, "tags": [1, 2, 3]}
            },
            "metadata": {
                "desired": {"cfg": {"rate": {"timestamp": 20}, "mode": {"timestamp": 20}},
                            "tags": {"timestamp": 20}, "fw": {"timestamp": 20}},
                "reported": {"cfg": {"rate": {"timestamp": 10}, "mode": {"timestamp": 10}},
                             "tags": {"timestamp": 10}, "fw": {"timestamp": 10}}
            },
            "version": 2,
            "timestamp": 30,
            "clientToken": token_of(&get[0].1)
        }),
    );
    assert_eq!(
        out,
        [Action::Apply(obj(
            json!({"cfg": {"rate": 20}, "tags": [1, 2, 3]})
        ))]
    );
    assert_eq!(s.version(), 2);
    assert_eq!(s.reported()["tags"], json!([1, 2]));
    // The same delta again (another get, a redelivered delta): told already.
    let get = published(&s.resync());
    let again = json!({
        "state": {"desired": {"cfg": {"rate": 20, "mode": "eco"}, "tags": [1, 2, 3], "fw": "1.0"},
                  "reported": {"cfg": {"rate": 10, "mode": "eco"}, "tags": [1, 2], "fw": "1.0"},
                  "delta": {"cfg": {"rate": 20}, "tags": [1, 2, 3]}},
        "version": 2, "clientToken": token_of(&get[0].1)});
    assert!(msg(&mut s, "get/accepted", again.clone()).is_empty());
    let delta = json!({"state": {"cfg": {"rate": 20}, "tags": [1, 2, 3]}, "version": 2});
    assert!(msg(&mut s, "update/delta", delta).is_empty());
    // After a reconnect the application hears the whole delta again.
    let get = published(&s.on_connected(8));
    let mut again = again;
    again["clientToken"] = json!(token_of(&get[0].1));
    let out = msg(&mut s, "get/accepted", again);
    assert_eq!(
        out,
        [Action::Apply(obj(
            json!({"cfg": {"rate": 20}, "tags": [1, 2, 3]})
        ))]
    );
}

/// A platform shadow for the convergence test: the same merge rules, the version check
/// (409), and the messages in the order the platform publishes them (accepted, then delta).
#[derive(Default)]
struct Platform {
    desired: Object,
    reported: Object,
    version: u64,
    /// To the device (a persistent session: kept across disconnects), in order.
    to_device: std::collections::VecDeque<(String, Value)>,
}

impl Platform {
    fn send(&mut self, suffix: &str, v: Value) {
        self.to_device.push_back((suffix.to_string(), v));
    }

    fn update(&mut self, section: &str, patch: Object, version: Option<u64>, token: &str) {
        if version.is_some_and(|v| v != self.version) {
            self.send(
                "update/rejected",
                json!({"code": 409, "message": "version conflict", "clientToken": token}),
            );
            return;
        }
        let target = if section == "desired" {
            &mut self.desired
        } else {
            &mut self.reported
        };
        apply_patch(target, &patch);
        self.version += 1;
        self.send(
            "update/accepted",
            json!({"state": {section: patch}, "version": self.version, "clientToken": token}),
        );
        let delta = crate_delta(&self.desired, &self.reported);
        if section == "desired" && !delta.is_empty() {
            self.send(
                "update/delta",
                json!({"state": delta, "version": self.version}),
            );
        }
    }

    /// A request from the device.
    fn request(&mut self, topic: &str, payload: &[u8]) {
        let v: Value = serde_json::from_slice(payload).unwrap();
        let token = v["clientToken"].as_str().unwrap_or_default().to_string();
        match topic.strip_prefix("$shadow/dev-1/").unwrap() {
            "update" => {
                let patch = obj(v["state"]["reported"].clone());
                self.update("reported", patch, v["version"].as_u64(), &token);
            }
            "get" => {
                let delta = crate_delta(&self.desired, &self.reported);
                let mut state = json!({"desired": self.desired, "reported": self.reported});
                if !delta.is_empty() {
                    state["delta"] = Value::Object(delta);
                }
                let doc = json!({"state": state, "version": self.version, "clientToken": token});
                self.send("get/accepted", doc);
            }
            other => panic!("unexpected request {other}"),
        }
    }
}

#[derive(Debug, Clone)]
enum SyncOp {
    Report(Object),
    Operator(Object),
    ToPlatform,
    ToDevice,
    Disconnect(Vec<bool>),
    Connect(u64),
    Restart(u64),
}

fn sync_op() -> impl Strategy<Value = SyncOp> {
    prop_oneof![
        3 => json_object().prop_map(SyncOp::Report),
        2 => json_object().prop_map(SyncOp::Operator),
        4 => Just(SyncOp::ToPlatform),
        5 => Just(SyncOp::ToDevice),
        1 => proptest::collection::vec(any::<bool>(), 0..4).prop_map(SyncOp::Disconnect),
        1 => any::<u64>().prop_map(SyncOp::Connect),
        1 => any::<u64>().prop_map(SyncOp::Restart),
    ]
}

struct World {
    platform: Platform,
    device: ShadowSync,
    to_platform: std::collections::VecDeque<(String, Vec<u8>)>,
    online: bool,
    /// What the application was told of `desired`.
    app: Object,
    /// Every report the application made, applied in order: where `reported` must end.
    intended: Object,
    fs: MemFs,
    store: ShadowStore,
}

impl World {
    fn take(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Publish { topic, payload } => {
                    assert!(self.online, "published while offline");
                    self.to_platform.push_back((topic, payload));
                }
                Action::Apply(fields) => apply_patch(&mut self.app, &fields),
                Action::Rejected { code, .. } => panic!("rejected {code}"),
            }
        }
        self.store.save(&self.fs, &mut self.device).unwrap();
    }

    fn step(&mut self, op: SyncOp) {
        match op {
            SyncOp::Report(p) => {
                let out = self.device.report(p.clone()).unwrap();
                apply_patch(&mut self.intended, &p);
                self.take(out);
            }
            SyncOp::Operator(p) => {
                self.platform.update("desired", p, None, "operator");
            }
            SyncOp::ToPlatform => {
                if let Some((topic, payload)) = self.to_platform.pop_front() {
                    self.platform.request(&topic, &payload);
                }
            }
            SyncOp::ToDevice => {
                if !self.online {
                    return;
                }
                if let Some((suffix, v)) = self.platform.to_device.pop_front() {
                    let out = self
                        .device
                        .on_message(&format!("$shadow/dev-1/{suffix}"), v.to_string().as_bytes())
                        .unwrap();
                    self.take(out);
                }
            }
            SyncOp::Disconnect(keep) => {
                if !self.online {
                    return;
                }
                self.online = false;
                self.device.on_disconnected();
                // Requests in flight may or may not have reached the platform.
                let mut i = 0;
                self.to_platform.retain(|_| {
                    i += 1;
                    keep.get(i - 1).copied().unwrap_or(true)
                });
                while let Some((topic, payload)) = self.to_platform.pop_front() {
                    self.platform.request(&topic, &payload);
                }
                self.store.save(&self.fs, &mut self.device).unwrap();
            }
            SyncOp::Connect(nonce) => {
                if self.online {
                    return;
                }
                self.online = true;
                let out = self.device.on_connected(nonce);
                self.take(out);
            }
            SyncOp::Restart(nonce) => {
                self.step(SyncOp::Disconnect(vec![]));
                self.store.save(&self.fs, &mut self.device).unwrap();
                self.device = self.store.load(&self.fs, ID).unwrap().unwrap();
                self.step(SyncOp::Connect(nonce));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Reports, operator changes, lost requests, disconnects and restarts in any order, then
    /// quiet: the platform's `reported` is every report in order, the device's copy is the
    /// platform's, nothing waits, and the application was told the whole remaining delta.
    #[test]
    fn device_and_platform_converge(ops in proptest::collection::vec(sync_op(), 1..80)) {
        let fs = MemFs::new(1);
        let store = ShadowStore::new(Path::new("/shadow"));
        let mut w = World {
            platform: Platform::default(),
            device: ShadowSync::new(ID).unwrap(),
            to_platform: Default::default(),
            online: false,
            app: Map::new(),
            intended: Map::new(),
            fs,
            store,
        };
        for op in ops {
            w.step(op);
        }
        w.step(SyncOp::Connect(99));
        let quiet = |w: &mut World| {
            for _ in 0..10_000 {
                if w.to_platform.is_empty() && w.platform.to_device.is_empty() {
                    return true;
                }
                w.step(SyncOp::ToPlatform);
                w.step(SyncOp::ToDevice);
            }
            false
        };
        prop_assert!(quiet(&mut w), "never quiet");
        // The platform pushes a delta only when desired changes; a device that made
        // reported differ itself learns it with a get: afterwards the application knows all.
        let out = w.device.resync();
        w.take(out);
        prop_assert!(quiet(&mut w), "never quiet");
        prop_assert_eq!(&w.platform.reported, &w.intended);
        prop_assert_eq!(w.device.reported(), w.platform.reported.clone());
        prop_assert_eq!(w.device.desired(), &w.platform.desired);
        prop_assert_eq!(w.device.version(), w.platform.version);
        prop_assert!(!w.device.has_unsent());
        let delta = crate_delta(&w.platform.desired, &w.platform.reported);
        prop_assert_eq!(not_told(&delta, &w.app), Map::new());
    }
}
