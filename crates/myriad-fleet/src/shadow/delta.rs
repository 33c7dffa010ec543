//! The delta: what the device still has to change to match `desired`.

use serde_json::{Map, Value};

/// The fields of `desired` whose value differs from `reported`.
///
/// - a key missing from `reported` counts as different;
/// - when both sides hold an object, the comparison recurses and the delta
///   keeps the path (`{"a": {"b": 1}}`), listing only the differing leaves;
/// - anything else (scalars, arrays, an object against a non-object) is
///   compared whole and, when different, appears whole in the delta;
/// - keys only in `reported` never appear.
///
/// Values are compared as JSON values: `1` and `1.0` differ.
pub fn compute_delta(
    desired: &Map<String, Value>,
    reported: &Map<String, Value>,
) -> Map<String, Value> {
    let mut delta = Map::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (Value::Object(want), Some(Value::Object(have))) => {
                let sub = compute_delta(want, have);
                if !sub.is_empty() {
                    delta.insert(key.clone(), Value::Object(sub));
                }
            }
            (want, Some(have)) if want == have => {}
            (want, _) => {
                delta.insert(key.clone(), want.clone());
            }
        }
    }
    delta
}

/// The part of `desired_meta` (the metadata of `desired`) that covers the
/// fields of `delta`, for the `metadata` of a delta message.
pub(crate) fn delta_metadata(
    delta: &Map<String, Value>,
    desired_meta: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in delta {
        let Some(meta) = desired_meta.get(key) else {
            continue;
        };
        match (value, meta) {
            (Value::Object(sub_delta), Value::Object(sub_meta)) => {
                out.insert(
                    key.clone(),
                    Value::Object(delta_metadata(sub_delta, sub_meta)),
                );
            }
            _ => {
                out.insert(key.clone(), meta.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn delta(desired: Value, reported: Value) -> Value {
        Value::Object(compute_delta(&obj(desired), &obj(reported)))
    }

    #[test]
    fn missing_and_different_keys_are_in_delta() {
        assert_eq!(
            delta(
                json!({"color": "red", "power": true, "mode": "eco"}),
                json!({"color": "blue", "mode": "eco", "extra": 1})
            ),
            json!({"color": "red", "power": true})
        );
    }

    #[test]
    fn nested_objects_keep_their_paths() {
        assert_eq!(
            delta(
                json!({"a": {"b": 1, "c": 2, "d": {"e": 3, "f": 4}}}),
                json!({"a": {"b": 1, "c": 5, "d": {"e": 3}}})
            ),
            json!({"a": {"c": 2, "d": {"f": 4}}})
        );
    }

    #[test]
    fn arrays_are_compared_whole() {
        assert_eq!(
            delta(
                json!({"list": [1, 2, 3], "same": [1, {"x": 1}]}),
                json!({"list": [1, 2], "same": [1, {"x": 1}]})
            ),
            json!({"list": [1, 2, 3]})
        );
    }

    #[test]
    fn object_against_non_object_appears_whole() {
        assert_eq!(
            delta(json!({"a": {"b": 1, "c": 2}}), json!({"a": 7})),
            json!({"a": {"b": 1, "c": 2}})
        );
        assert_eq!(
            delta(json!({"a": 7}), json!({"a": {"b": 1}})),
            json!({"a": 7})
        );
    }

    #[test]
    fn no_delta_when_desired_equals_reported() {
        let doc = json!({"a": {"b": [1, 2]}, "c": "x", "d": null});
        assert_eq!(delta(doc.clone(), doc), json!({}));
        assert_eq!(delta(json!({}), json!({"a": 1})), json!({}));
    }

    #[test]
    fn numbers_compare_as_json_values() {
        assert_eq!(delta(json!({"n": 1}), json!({"n": 1.0})), json!({"n": 1}));
    }

    #[test]
    fn delta_metadata_follows_the_delta() {
        let meta = obj(json!({
            "a": {"b": {"timestamp": 1}, "c": {"timestamp": 2}},
            "d": {"timestamp": 3},
            "e": {"x": {"timestamp": 4}}
        }));
        let d = obj(json!({"a": {"c": 9}, "e": {"x": 1}}));
        assert_eq!(
            Value::Object(delta_metadata(&d, &meta)),
            json!({"a": {"c": {"timestamp": 2}}, "e": {"x": {"timestamp": 4}}})
        );
    }
}
