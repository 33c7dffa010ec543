//! Merging a section update into a section, keeping its metadata in step.

use serde_json::{Map, Value, json};

/// The metadata leaf for a value written at `now_ms`: `{"timestamp": now_ms}`.
pub(crate) fn stamp(now_ms: u64) -> Value {
    json!({ "timestamp": now_ms })
}

/// Merges `patch` into `target` (JSON merge-patch rules) and updates `meta`,
/// which mirrors `target`, for every field the patch sets.
///
/// - a `null` value deletes the key (and its metadata);
/// - an object value merges recursively into an existing object, or
///   replaces a non-object; an object left empty afterwards is removed, so
///   a stored document never holds an empty object;
/// - any other value (scalar or array) replaces the key whole and its
///   metadata becomes `{"timestamp": now_ms}`.
pub(crate) fn merge_section(
    target: &mut Map<String, Value>,
    meta: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    now_ms: u64,
) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
                meta.remove(key);
            }
            Value::Object(sub_patch) => {
                if !matches!(target.get(key), Some(Value::Object(_))) {
                    target.insert(key.clone(), Value::Object(Map::new()));
                    meta.insert(key.clone(), Value::Object(Map::new()));
                }
                if !matches!(meta.get(key), Some(Value::Object(_))) {
                    meta.insert(key.clone(), Value::Object(Map::new()));
                }
                let emptied = match (target.get_mut(key), meta.get_mut(key)) {
                    (Some(Value::Object(sub_target)), Some(Value::Object(sub_meta))) => {
                        merge_section(sub_target, sub_meta, sub_patch, now_ms);
                        sub_target.is_empty()
                    }
                    _ => false,
                };
                if emptied {
                    target.remove(key);
                    meta.remove(key);
                }
            }
            leaf => {
                target.insert(key.clone(), leaf.clone());
                meta.insert(key.clone(), stamp(now_ms));
            }
        }
    }
}

/// The metadata of the fields a patch sends, for `update/accepted`: the
/// patch's structure with every non-object value (deletes included) stamped
/// `{"timestamp": now_ms}`.
pub(crate) fn sent_metadata(patch: &Map<String, Value>, now_ms: u64) -> Map<String, Value> {
    patch
        .iter()
        .map(|(key, value)| {
            let meta = match value {
                Value::Object(sub) => Value::Object(sent_metadata(sub, now_ms)),
                _ => stamp(now_ms),
            };
            (key.clone(), meta)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn merged(target: Value, meta: Value, patch: Value, now: u64) -> (Value, Value) {
        let (mut target, mut meta) = (obj(target), obj(meta));
        merge_section(&mut target, &mut meta, &obj(patch), now);
        (Value::Object(target), Value::Object(meta))
    }

    #[test]
    fn object_replacing_scalar_gets_nested_metadata() {
        let (target, meta) = merged(
            json!({"a": 1}),
            json!({"a": {"timestamp": 1}}),
            json!({"a": {"b": 2}}),
            5,
        );
        assert_eq!(target, json!({"a": {"b": 2}}));
        assert_eq!(meta, json!({"a": {"b": {"timestamp": 5}}}));
    }

    #[test]
    fn scalar_replacing_object_gets_leaf_metadata() {
        let (target, meta) = merged(
            json!({"a": {"b": 2}}),
            json!({"a": {"b": {"timestamp": 1}}}),
            json!({"a": 3}),
            5,
        );
        assert_eq!(target, json!({"a": 3}));
        assert_eq!(meta, json!({"a": {"timestamp": 5}}));
    }

    #[test]
    fn empty_objects_are_never_stored() {
        let (target, meta) = merged(
            json!({"x": 1}),
            json!({}),
            json!({"a": {}, "b": {"c": {}}}),
            5,
        );
        assert_eq!(target, json!({"x": 1}));
        assert_eq!(meta, json!({}));
    }

    #[test]
    fn key_named_timestamp_is_plain_data() {
        let (target, meta) = merged(
            json!({}),
            json!({}),
            json!({"timestamp": {"timestamp": 9}}),
            5,
        );
        assert_eq!(target, json!({"timestamp": {"timestamp": 9}}));
        assert_eq!(meta, json!({"timestamp": {"timestamp": {"timestamp": 5}}}));
    }

    #[test]
    fn sent_metadata_stamps_deletes_and_leaves() {
        assert_eq!(
            Value::Object(sent_metadata(
                &obj(json!({"a": null, "b": {"c": [1], "d": 2}})),
                7
            )),
            json!({"a": {"timestamp": 7}, "b": {"c": {"timestamp": 7}, "d": {"timestamp": 7}}})
        );
    }
}
