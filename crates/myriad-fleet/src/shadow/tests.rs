//! Behaviour of [`Shadow`] end to end, with exact JSON documents.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::merge::merge_section;
use super::*;

fn limits() -> ShadowLimits {
    ShadowLimits::default()
}

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn try_update(
    shadow: &mut Shadow,
    request: Value,
    now: u64,
) -> Result<UpdateAccepted, UpdateRejected> {
    let bytes = serde_json::to_vec(&request).expect("serializable");
    shadow.apply_update(&bytes, now, &limits())
}

fn accept(shadow: &mut Shadow, request: Value, now: u64) -> UpdateAccepted {
    try_update(shadow, request, now).unwrap_or_else(|e| panic!("rejected: {e}"))
}

fn reject(shadow: &mut Shadow, request: Value, now: u64) -> UpdateRejected {
    match try_update(shadow, request, now) {
        Ok(accepted) => panic!("accepted: {}", accepted.accepted),
        Err(rejected) => rejected,
    }
}

/// The state part of the `get` document (`state` and `metadata`).
fn state_of(shadow: &Shadow) -> Value {
    json!({
        "desired": shadow.desired(),
        "reported": shadow.reported(),
    })
}

#[test]
fn new_shadow_is_empty_at_version_zero() {
    let shadow = Shadow::new();
    assert_eq!(shadow.version(), 0);
    assert_eq!(shadow.updated_at(), 0);
    assert_eq!(shadow.delta_message(5), None);
    assert_eq!(
        shadow.get_document(None, 5),
        json!({
            "state": {"desired": {}, "reported": {}},
            "metadata": {"desired": {}, "reported": {}},
            "version": 0,
            "timestamp": 5
        })
    );
}

#[test]
fn first_desired_update_is_accepted_with_delta() {
    let mut shadow = Shadow::new();
    let out = accept(
        &mut shadow,
        json!({"state": {"desired": {"color": "red", "light": {"on": true}}}, "clientToken": "c1"}),
        1000,
    );
    assert_eq!(out.version, 1);
    assert_eq!(
        out.accepted,
        json!({
            "state": {"desired": {"color": "red", "light": {"on": true}}},
            "metadata": {"desired": {"color": {"timestamp": 1000}, "light": {"on": {"timestamp": 1000}}}},
            "version": 1,
            "timestamp": 1000,
            "clientToken": "c1"
        })
    );
    assert_eq!(
        out.delta,
        Some(json!({
            "state": {"color": "red", "light": {"on": true}},
            "metadata": {"color": {"timestamp": 1000}, "light": {"on": {"timestamp": 1000}}},
            "version": 1,
            "timestamp": 1000,
            "clientToken": "c1"
        }))
    );
    assert_eq!(shadow.version(), 1);
    assert_eq!(shadow.updated_at(), 1000);
}

#[test]
fn objects_merge_recursively() {
    let mut shadow = Shadow::new();
    accept(
        &mut shadow,
        json!({"state": {"desired": {"a": {"b": 1, "c": 2}, "d": 3}}}),
        10,
    );
    accept(
        &mut shadow,
        json!({"state": {"desired": {"a": {"c": 20, "e": {"f": 5}}}}}),
        20,
    );
    assert_eq!(
        state_of(&shadow),
        json!({"desired": {"a": {"b": 1, "c": 20, "e": {"f": 5}}, "d": 3}, "reported": {}})
    );
}

#[test]
fn metadata_timestamps_change_only_for_fields_sent() {
    let mut shadow = Shadow::new();
    accept(
        &mut shadow,
        json!({"state": {"desired": {"a": {"b": 1, "c": 2}, "d": 3}, "reported": {"d": 3}}}),
        10,
    );
    let out = accept(
        &mut shadow,
        json!({"state": {"desired": {"a": {"c": 20}}}}),
        20,
    );
    assert_eq!(
        out.accepted,
        json!({
            "state": {"desired": {"a": {"c": 20}}},
            "metadata": {"desired": {"a": {"c": {"timestamp": 20}}}},
            "version": 2,
            "timestamp": 20
        })
    );
    assert_eq!(
        shadow.get_document(None, 30)["metadata"],
        json!({
            "desired": {
                "a": {"b": {"timestamp": 10}, "c": {"timestamp": 20}},
                "d": {"timestamp": 10}
            },
            "reported": {"d": {"timestamp": 10}}
        })
    );
}

#[test]
fn null_deletes_a_top_level_key() {
    let mut shadow = Shadow::new();
    accept(
        &mut shadow,
        json!({"state": {"reported": {"a": 1, "b": 2}}}),
        10,
    );
    let out = accept(&mut shadow, json!({"state": {"reported": {"a": null}}}), 20);
    assert_eq!(
        state_of(&shadow),
        json!({"desired": {}, "reported": {"b": 2}})
    );
    assert_eq!(
        shadow.metadata().reported,
        obj(json!({"b": {"timestamp": 10}}))
    );
    // The accepted document echoes the delete, with its timestamp.
    assert_eq!(
        out.accepted,
        json!({
            "state": {"reported": {"a": null}},
            "metadata": {"reported": {"a": {"timestamp": 20}}},
            "version": 2,
            "timestamp": 20
        })
    );
}

#[test]
fn null_deletes_a_nested_key_and_keeps_its_siblings() {
    let mut shadow = Shadow::new();
    accept(
        &mut shadow,
        json!({"state": {"desired": {"a": {"b": 1, "c": 2}, "x": {"y": {"z": 1}}}}}),
        10,
    );
    accept(
        &mut shadow,
        json!({"state": {"desired": {"a": {"b": null}, "x": {"y": {"z": null}}, "missing": {"k": null}}}}),
        20,
    );
    // a keeps c; x.y and then x are left empty, so both are removed;
    // deleting under a missing key creates nothing.
    assert_eq!(
        state_of(&shadow),
        json!({"desired": {"a": {"c": 2}}, "reported": {}})
    );
    assert_eq!(
        shadow.metadata().desired,
        obj(json!({"a": {"c": {"timestamp": 10}}}))
    );
}

#[test]
fn null_section_deletes_the_whole_section() {
    let mut shadow = Shadow::new();
    accept(
        &mut shadow,
        json!({"state": {"desired": {"a": 1}, "reported": {"b": 2}}}),
        10,
    );
    let out = accept(&mut shadow, json!({"state": {"desired": null}}), 20);
    assert_eq!(
        state_of(&shadow),
        json!({"desired": {}, "reported": {"b": 2}})
    );
    assert_eq!(shadow.metadata().desired, Map::new());
    assert_eq!(
        out.accepted,
        json!({
            "state": {"desired": null},
            "metadata": {"desired": {"timestamp": 20}},
            "version": 2,
            "timestamp": 20
        })
    );
    assert_eq!(out.delta, None);
}

#[test]
fn arrays_and_scalars_replace_whole() {
    let mut shadow = Shadow::new();
    accept(
        &mut shadow,
        json!({"state": {"reported": {"list": [1, 2, 3], "obj": {"k": 1}, "s": "x"}}}),
        10,
    );
    accept(
        &mut shadow,
        json!({"state": {"reported": {"list": [9], "obj": [{"k": 2}], "s": {"now": "object"}}}}),
        20,
    );
    assert_eq!(
        state_of(&shadow),
        json!({"desired": {}, "reported": {"list": [9], "obj": [{"k": 2}], "s": {"now": "object"}}})
    );
    assert_eq!(
        shadow.metadata().reported,
        obj(json!({
            "list": {"timestamp": 20},
            "obj": {"timestamp": 20},
            "s": {"now": {"timestamp": 20}}
        }))
    );
}

#[test]
fn delta_keeps_nested_paths_and_whole_arrays() {
    let mut shadow = Shadow::new();
    accept(
        &mut shadow,
        json!({"state": {"reported": {"cfg": {"rate": 10, "mode": "eco"}, "tags": [1, 2], "fw": "1.0"}}}),
        10,
    );
    let out = accept(
        &mut shadow,
        json!({"state": {"desired": {"cfg": {"rate": 20, "mode": "eco"}, "tags": [1, 2, 3], "fw": "1.0"}}}),
        20,
    );
    assert_eq!(
        out.delta,
        Some(json!({
            "state": {"cfg": {"rate": 20}, "tags": [1, 2, 3]},
            "metadata": {"cfg": {"rate": {"timestamp": 20}}, "tags": {"timestamp": 20}},
            "version": 2,
            "timestamp": 20
        }))
    );
    assert_eq!(out.delta, shadow.delta_message(20));
    assert_eq!(
        shadow.get_document(Some("g"), 30),
        json!({
            "state": {
                "desired": {"cfg": {"rate": 20, "mode": "eco"}, "tags": [1, 2, 3], "fw": "1.0"},
                "reported": {"cfg": {"rate": 10, "mode": "eco"}, "tags": [1, 2], "fw": "1.0"},
                "delta": {"cfg": {"rate": 20}, "tags": [1, 2, 3]}
            },
            "metadata": {
                "desired": {
                    "cfg": {"rate": {"timestamp": 20}, "mode": {"timestamp": 20}},
                    "tags": {"timestamp": 20},
                    "fw": {"timestamp": 20}
                },
                "reported": {
                    "cfg": {"rate": {"timestamp": 10}, "mode": {"timestamp": 10}},
                    "tags": {"timestamp": 10},
                    "fw": {"timestamp": 10}
                }
            },
            "version": 2,
            "timestamp": 30,
            "clientToken": "g"
        })
    );
}

#[test]
fn no_delta_when_desired_equals_reported() {
    let mut shadow = Shadow::new();
    accept(
        &mut shadow,
        json!({"state": {"reported": {"a": {"b": [1]}, "c": 1}}}),
        10,
    );
    let out = accept(
        &mut shadow,
        json!({"state": {"desired": {"a": {"b": [1]}}}}),
        20,
    );
    assert_eq!(out.delta, None);
    assert_eq!(shadow.delta_message(30), None);
    assert!(
        shadow.get_document(None, 30)["state"]
            .get("delta")
            .is_none()
    );
}

#[test]
fn reported_only_update_sends_no_delta_message() {
    let mut shadow = Shadow::new();
    accept(
        &mut shadow,
        json!({"state": {"desired": {"a": 1, "b": 2}}}),
        10,
    );
    // Still differs on b, but the update did not touch desired.
    let out = accept(&mut shadow, json!({"state": {"reported": {"a": 1}}}), 20);
    assert_eq!(out.delta, None);
    assert_eq!(
        shadow.delta_message(30),
        Some(json!({
            "state": {"b": 2},
            "metadata": {"b": {"timestamp": 10}},
            "version": 2,
            "timestamp": 30
        }))
    );
}

#[test]
fn version_increments_on_each_accepted_update() {
    let mut shadow = Shadow::new();
    for expected in 1..=3 {
        let out = accept(
            &mut shadow,
            json!({"state": {"reported": {"n": expected}}}),
            expected,
        );
        assert_eq!(out.version, expected);
        assert_eq!(shadow.version(), expected);
    }
    // An update naming the current version is accepted.
    let out = accept(
        &mut shadow,
        json!({"state": {"reported": {"n": 0}}, "version": 3}),
        40,
    );
    assert_eq!(out.version, 4);
    // Even an empty state counts as an update.
    assert_eq!(accept(&mut shadow, json!({"state": {}}), 50).version, 5);
}

#[test]
fn version_conflict_is_409_and_leaves_the_shadow_unchanged() {
    let mut shadow = Shadow::new();
    accept(&mut shadow, json!({"state": {"desired": {"a": 1}}}), 10);
    let before = shadow.clone();
    let rejected = reject(
        &mut shadow,
        json!({"state": {"desired": {"a": 2}}, "version": 7, "clientToken": "tok"}),
        20,
    );
    assert_eq!(rejected.code, 409);
    assert_eq!(
        rejected.reason,
        ShadowError::VersionConflict {
            expected: 7,
            current: 1
        }
    );
    assert_eq!(
        rejected.to_json(20),
        json!({
            "code": 409,
            "message": "version conflict: the request expects version 7, the shadow is at version 1",
            "clientToken": "tok",
            "timestamp": 20
        })
    );
    assert_eq!(shadow, before);
}

#[test]
fn exhausted_version_is_409() {
    let mut stored = serde_json::to_value(Shadow::new()).expect("serializable");
    stored["version"] = json!(u64::MAX);
    let mut shadow: Shadow = serde_json::from_value(stored).expect("deserializable");
    let before = shadow.clone();
    let rejected = reject(&mut shadow, json!({"state": {"desired": {"a": 1}}}), 10);
    assert_eq!(rejected.code, 409);
    assert_eq!(shadow, before);
}

#[test]
fn section_too_large_is_413_and_leaves_the_shadow_unchanged() {
    let mut shadow = Shadow::new();
    let tight = ShadowLimits {
        max_desired_bytes: 20,
        max_reported_bytes: 20,
        ..limits()
    };
    // {"a":"0123456789"} = 18 bytes.
    shadow
        .apply_update(br#"{"state":{"desired":{"a":"0123456789"}}}"#, 10, &tight)
        .expect("fits");
    let before = shadow.clone();
    let rejected = shadow
        .apply_update(
            br#"{"state":{"desired":{"b":"0123456789"}},"clientToken":"big"}"#,
            20,
            &tight,
        )
        .expect_err("too large");
    assert_eq!(rejected.code, 413);
    assert_eq!(
        rejected.message,
        "state.desired would be 35 bytes after the update, the maximum is 20"
    );
    assert_eq!(rejected.client_token.as_deref(), Some("big"));
    assert_eq!(shadow, before);
    // Deleting makes room again: the size counted is the one after the update.
    shadow
        .apply_update(
            br#"{"state":{"desired":{"a":null,"b":"0123456789"}}}"#,
            30,
            &tight,
        )
        .expect("fits after the delete");
}

#[test]
fn a_full_reported_section_does_not_block_desired_updates() {
    let mut shadow = Shadow::new();
    let tight = ShadowLimits {
        max_desired_bytes: 20,
        max_reported_bytes: 20,
        ..limits()
    };
    // The device fills its reported section to the byte.
    shadow
        .apply_update(br#"{"state":{"reported":{"r":"01234567890"}}}"#, 10, &tight)
        .expect("reported fits");
    // The operator can still change desired, up to desired's own limit.
    shadow
        .apply_update(br#"{"state":{"desired":{"d":"0123456789"}}}"#, 20, &tight)
        .expect("desired has its own budget");
    let rejected = shadow
        .apply_update(br#"{"state":{"reported":{"s":1}}}"#, 30, &tight)
        .expect_err("reported is full");
    assert!(matches!(
        rejected.reason,
        ShadowError::DocumentTooLarge {
            section: Section::Reported,
            max: 20,
            ..
        }
    ));
}

#[test]
fn default_section_limits_are_8192_bytes_each() {
    let mut shadow = Shadow::new();
    // {"k":"…"} is 8 bytes + the string.
    let fits = "x".repeat(8192 - 8);
    accept(
        &mut shadow,
        json!({"state": {"desired": {"k": fits.clone()}}}),
        10,
    );
    accept(&mut shadow, json!({"state": {"reported": {"k": fits}}}), 20);
    let too_big = "x".repeat(8192 - 7);
    let rejected = reject(
        &mut shadow,
        json!({"state": {"desired": {"k": too_big}}}),
        30,
    );
    assert_eq!(rejected.code, 413);
    assert_eq!(shadow.version(), 2);
}

#[test]
fn request_too_large_is_413() {
    let mut shadow = Shadow::new();
    let payload = format!(
        r#"{{"state":{{"desired":{{"k":"{}"}}}}}}"#,
        "x".repeat(16384)
    );
    let rejected = shadow
        .apply_update(payload.as_bytes(), 10, &limits())
        .expect_err("too large");
    assert_eq!(rejected.code, 413);
    assert!(matches!(
        rejected.reason,
        ShadowError::RequestTooLarge { max: 16384, .. }
    ));
    assert_eq!(shadow, Shadow::new());
}

#[test]
fn too_deep_is_400_and_leaves_the_shadow_unchanged() {
    let mut shadow = Shadow::new();
    // Six levels inside desired: accepted.
    accept(
        &mut shadow,
        json!({"state": {"desired": {"l1": {"l2": {"l3": {"l4": {"l5": {"l6": 1}}}}}}}}),
        10,
    );
    let before = shadow.clone();
    let rejected = reject(
        &mut shadow,
        json!({"state": {"reported": {"l1": {"l2": {"l3": {"l4": {"l5": {"l6": {"l7": 1}}}}}}}}, "clientToken": "deep"}),
        20,
    );
    assert_eq!(
        rejected.to_json(20),
        json!({
            "code": 400,
            "message": "state.reported is nested more than 6 levels deep",
            "clientToken": "deep",
            "timestamp": 20
        })
    );
    // Arrays count as a level too.
    let rejected = reject(
        &mut shadow,
        json!({"state": {"desired": {"l1": {"l2": {"l3": {"l4": {"l5": {"l6": [1]}}}}}}}}),
        20,
    );
    assert_eq!(rejected.code, 400);
    assert_eq!(shadow, before);
}

#[test]
fn malformed_requests_are_400_and_leave_the_shadow_unchanged() {
    let mut shadow = Shadow::new();
    accept(&mut shadow, json!({"state": {"desired": {"a": 1}}}), 10);
    let before = shadow.clone();
    let cases: &[&[u8]] = &[
        b"garbage",
        br#"{"clientToken":"t"}"#,
        br#"{"state":"x"}"#,
        br#"{"state":{"desired":[1]}}"#,
        br#"{"state":{"reported":true}}"#,
        br#"{"state":{},"clientToken":["t"]}"#,
    ];
    for payload in cases {
        let rejected = shadow
            .apply_update(payload, 20, &limits())
            .expect_err("malformed");
        assert_eq!(rejected.code, 400, "{}", String::from_utf8_lossy(payload));
        assert_eq!(shadow, before);
    }
}

#[test]
fn client_token_is_echoed_everywhere() {
    let mut shadow = Shadow::new();
    let out = accept(
        &mut shadow,
        json!({"state": {"desired": {"a": 1}}, "clientToken": "abc"}),
        10,
    );
    assert_eq!(out.accepted["clientToken"], "abc");
    assert_eq!(
        out.delta.as_ref().map(|d| &d["clientToken"]),
        Some(&json!("abc"))
    );
    assert_eq!(out.documents["clientToken"], "abc");
    let rejected = reject(
        &mut shadow,
        json!({"state": {"desired": {"a": 1}}, "version": 0, "clientToken": "abc"}),
        20,
    );
    assert_eq!(rejected.to_json(20)["clientToken"], "abc");
    // No token: no key at all.
    let out = accept(&mut shadow, json!({"state": {"desired": {"a": 2}}}), 30);
    assert!(out.accepted.get("clientToken").is_none());
    let rejected = reject(&mut shadow, json!({"state": {}, "version": 0}), 40);
    assert_eq!(
        rejected.to_json(40),
        json!({
            "code": 409,
            "message": "version conflict: the request expects version 0, the shadow is at version 2",
            "timestamp": 40
        })
    );
}

#[test]
fn documents_hold_previous_and_current() {
    let mut shadow = Shadow::new();
    accept(&mut shadow, json!({"state": {"reported": {"a": 1}}}), 10);
    let out = accept(
        &mut shadow,
        json!({"state": {"desired": {"a": 2}}, "clientToken": "d"}),
        20,
    );
    assert_eq!(
        out.documents,
        json!({
            "previous": {
                "state": {"desired": {}, "reported": {"a": 1}},
                "metadata": {"desired": {}, "reported": {"a": {"timestamp": 10}}},
                "version": 1
            },
            "current": {
                "state": {"desired": {"a": 2}, "reported": {"a": 1}},
                "metadata": {"desired": {"a": {"timestamp": 20}}, "reported": {"a": {"timestamp": 10}}},
                "version": 2
            },
            "timestamp": 20,
            "clientToken": "d"
        })
    );
}

#[test]
fn update_desired_behaves_like_an_update_with_only_desired() {
    let mut via_api = Shadow::new();
    let mut via_mqtt = Shadow::new();
    let api = via_api
        .update_desired(json!({"a": {"b": 1}}), Some(0), 10, &limits())
        .expect("accepted");
    let mqtt = accept(
        &mut via_mqtt,
        json!({"state": {"desired": {"a": {"b": 1}}}, "version": 0}),
        10,
    );
    assert_eq!(api, mqtt);
    assert_eq!(via_api, via_mqtt);

    let rejected = via_api
        .update_desired(json!({"a": 2}), Some(0), 20, &limits())
        .expect_err("stale version");
    assert_eq!(rejected.code, 409);
    let rejected = via_api
        .update_desired(json!([1]), None, 20, &limits())
        .expect_err("not an object");
    assert_eq!(rejected.code, 400);
    assert_eq!(rejected.message, "state.desired must be an object or null");

    via_api
        .update_desired(Value::Null, None, 30, &limits())
        .expect("delete desired");
    assert_eq!(via_api.desired(), &Map::new());
    assert_eq!(via_api.version(), 2);

    via_api
        .update_reported(json!({"r": 1}), Some(2), 40, &limits())
        .expect("reported");
    assert_eq!(
        state_of(&via_api),
        json!({"desired": {}, "reported": {"r": 1}})
    );
}

#[test]
fn update_desired_checks_the_request_size() {
    let mut shadow = Shadow::new();
    let small = ShadowLimits {
        max_request_bytes: 20,
        ..limits()
    };
    let rejected = shadow
        .update_desired(json!({"key": "a long value"}), None, 10, &small)
        .expect_err("too large");
    assert_eq!(rejected.code, 413);
}

#[test]
fn shadow_serde_round_trip() {
    let mut shadow = Shadow::new();
    accept(
        &mut shadow,
        json!({"state": {"desired": {"a": {"b": [1, 2]}, "c": "x"}, "reported": {"c": "y"}}}),
        1234,
    );
    let bytes = serde_json::to_vec(&shadow).expect("serializable");
    let back: Shadow = serde_json::from_slice(&bytes).expect("deserializable");
    assert_eq!(back, shadow);
    assert_eq!(back.version(), 1);
    assert_eq!(back.updated_at(), 1234);
    assert_eq!(
        serde_json::to_value(&shadow).expect("serializable"),
        json!({
            "desired": {"a": {"b": [1, 2]}, "c": "x"},
            "reported": {"c": "y"},
            "metadata": {
                "desired": {"a": {"b": {"timestamp": 1234}}, "c": {"timestamp": 1234}},
                "reported": {"c": {"timestamp": 1234}}
            },
            "version": 1,
            "updated_at": 1234
        })
    );
}

#[test]
fn get_request_token_feeds_get_document() {
    let request = GetRequest::parse(br#"{"clientToken":"q"}"#, &limits()).expect("valid");
    let doc = Shadow::new().get_document(request.client_token.as_deref(), 9);
    assert_eq!(doc["clientToken"], "q");
}

// ---- properties ----

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-2i64..3).prop_map(|n| json!(n)),
        "[xy]{0,2}".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-d]", value(), 0..5).prop_map(|m| m.into_iter().collect())
}

/// Every path of `delta` exists in `desired`, and each delta value is either
/// the desired value itself or a sub-delta of a desired object.
fn assert_within_desired(delta: &Map<String, Value>, desired: &Map<String, Value>) {
    for (key, value) in delta {
        let want = desired.get(key);
        assert!(want.is_some(), "delta key {key:?} not in desired");
        if want != Some(value) {
            match (value, want) {
                (Value::Object(sub_delta), Some(Value::Object(sub_desired))) => {
                    assert_within_desired(sub_delta, sub_desired)
                }
                _ => panic!("delta {key:?} = {value} differs from desired {want:?}"),
            }
        }
    }
}

/// A shadow whose desired is `desired` and whose reported is `base` (when
/// `start_from_desired`, the same as desired) updated with `patch`, built
/// through updates so both are stored documents (no nulls, no empty objects).
fn shadow_from(
    desired: &Map<String, Value>,
    start_from_desired: bool,
    patch: &Map<String, Value>,
) -> Shadow {
    let big = ShadowLimits {
        max_desired_bytes: usize::MAX,
        max_reported_bytes: usize::MAX,
        max_depth: 64,
        max_request_bytes: usize::MAX,
    };
    let mut shadow = Shadow::new();
    let mut first = UpdateRequest {
        desired: SectionUpdate::Merge(desired.clone()),
        ..UpdateRequest::default()
    };
    if start_from_desired {
        first.reported = SectionUpdate::Merge(desired.clone());
    }
    shadow.apply_request(first, 1, &big).expect("accepted");
    let second = UpdateRequest {
        reported: SectionUpdate::Merge(patch.clone()),
        ..UpdateRequest::default()
    };
    shadow.apply_request(second, 2, &big).expect("accepted");
    shadow
}

/// Plain recursive merge: objects merge, everything else (`null` included)
/// is set as is. Unlike a shadow update it neither deletes nor drops empty
/// objects, so it applies to arbitrary JSON objects.
fn plain_merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match (value, target.get_mut(key)) {
            (Value::Object(sub_patch), Some(Value::Object(sub_target))) => {
                plain_merge(sub_target, sub_patch)
            }
            (Value::Object(sub_patch), _) => {
                let mut sub_target = Map::new();
                plain_merge(&mut sub_target, sub_patch);
                target.insert(key.clone(), Value::Object(sub_target));
            }
            (other, _) => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

proptest! {
    #[test]
    fn delta_keys_are_within_desired(desired in object(), reported in object()) {
        let delta = compute_delta(&desired, &reported);
        assert_within_desired(&delta, &desired);
    }

    /// On arbitrary objects (nulls and empty objects included), with a
    /// plain merge.
    #[test]
    fn merging_the_delta_into_reported_empties_it(desired in object(), reported in object()) {
        let delta = compute_delta(&desired, &reported);
        let mut reported = reported;
        plain_merge(&mut reported, &delta);
        prop_assert_eq!(compute_delta(&desired, &reported), Map::new());
    }

    /// On stored documents (built through updates), with the shadow's own
    /// merge: the device reporting the delta it was sent clears it.
    #[test]
    fn reporting_the_delta_empties_it(
        desired in object(),
        start_from_desired in any::<bool>(),
        patch in object(),
    ) {
        let shadow = shadow_from(&desired, start_from_desired, &patch);
        let delta = compute_delta(shadow.desired(), shadow.reported());
        assert_within_desired(&delta, shadow.desired());

        // Pure: reported := reported merged with delta.
        let mut reported = shadow.reported().clone();
        let mut meta = Map::new();
        merge_section(&mut reported, &mut meta, &delta, 3);
        prop_assert_eq!(compute_delta(shadow.desired(), &reported), Map::new());

        // Through the shadow: the device reports the delta it was sent.
        let mut shadow = shadow;
        let expected = shadow.delta_message(3);
        let out = shadow
            .update_reported(Value::Object(delta.clone()), None, 3, &ShadowLimits {
                max_desired_bytes: usize::MAX,
                max_reported_bytes: usize::MAX,
                max_depth: 64,
                max_request_bytes: usize::MAX,
            })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(out.delta, None);
        prop_assert_eq!(shadow.delta(), Map::new());
        prop_assert_eq!(shadow.delta_message(4), None);
        prop_assert_eq!(expected.is_some(), !delta.is_empty());
    }
}

#[test]
fn delete_keeps_the_version_growing_and_survives_serialization() {
    let mut shadow = Shadow::new();
    assert!(
        shadow.delete(Some("t"), 1).is_none(),
        "nothing to delete yet"
    );
    accept(&mut shadow, json!({"state": {"reported": {"a": 1}}}), 2);
    accept(&mut shadow, json!({"state": {"desired": {"b": 1}}}), 3);
    let deleted = shadow.delete(Some("t1"), 4).expect("deleted");
    assert_eq!(
        deleted,
        json!({"version": 3, "timestamp": 4, "clientToken": "t1"})
    );
    assert!(shadow.delete(None, 5).is_none(), "deleted already");
    assert!(shadow.desired().is_empty() && shadow.reported().is_empty());
    // Stored and read back: still deleted, still at version 3.
    let mut shadow: Shadow =
        serde_json::from_slice(&serde_json::to_vec(&shadow).expect("json")).expect("back");
    assert_eq!(shadow.version(), 3);
    assert!(!shadow.exists());
    let stale = reject(
        &mut shadow,
        json!({"state": {"reported": {"a": 2}}, "version": 2}),
        6,
    );
    assert_eq!(stale.code, 409);
    assert_eq!(
        accept(&mut shadow, json!({"state": {"reported": {"a": 2}}}), 7).version,
        4
    );
    assert!(shadow.exists());
}
