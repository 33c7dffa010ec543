//! Idempotency keys of the NATS and HTTP sinks: `key = ["device", "seq"]` names top-level
//! fields of the rule's output; a record's key is those fields' values as a compact JSON
//! array with non-ASCII characters escaped (`["d1",42]`), so it is printable ASCII and fits
//! a NATS `Nats-Msg-Id` or an HTTP `Idempotency-Key` header as it is.
//!
//! The same output always gives the same key, so a redelivered record (after a retry, a
//! crash or a kill -9) carries the key of its first delivery and the receiver can drop it.

use serde_json::Value;

/// The most fields in a `key`.
pub const MAX_KEY_FIELDS: usize = 8;
/// The longest rendered key, in bytes; a record whose key is longer is refused (dead letter).
pub const MAX_KEY_BYTES: usize = 512;
/// The longest field name, in bytes.
pub const MAX_KEY_FIELD_BYTES: usize = 64;

/// The fields an idempotency key is made of (may be empty: no key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFields(Vec<String>);

impl KeyFields {
    /// Checks `fields`: at most [`MAX_KEY_FIELDS`], each `[A-Za-z0-9_]{1,64}`, no repeats.
    pub fn new(fields: &[String]) -> Result<KeyFields, String> {
        if fields.len() > MAX_KEY_FIELDS {
            return Err(format!("at most {MAX_KEY_FIELDS} fields"));
        }
        for (i, field) in fields.iter().enumerate() {
            let valid = !field.is_empty()
                && field.len() <= MAX_KEY_FIELD_BYTES
                && field
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!(
                    "{field:?} must match [A-Za-z0-9_]{{1,{MAX_KEY_FIELD_BYTES}}}"
                ));
            }
            if fields[..i].contains(field) {
                return Err(format!("{field:?} is named twice"));
            }
        }
        Ok(KeyFields(fields.to_vec()))
    }

    /// Whether no field is named (records carry no key).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The field names.
    pub fn fields(&self) -> &[String] {
        &self.0
    }

    /// The key of `output`: `None` without key fields, else the key or why there is none (a
    /// field missing or not a string, number or boolean, or a key past [`MAX_KEY_BYTES`]).
    pub fn render(&self, output: &Value) -> Option<Result<String, String>> {
        if self.0.is_empty() {
            return None;
        }
        let mut values = Vec::with_capacity(self.0.len());
        for name in &self.0 {
            match output.get(name) {
                Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
                    values.push(v.clone())
                }
                Some(_) => return Some(Err(format!("key field {name} is not a scalar"))),
                None => return Some(Err(format!("key field {name} is missing"))),
            }
        }
        let json = Value::Array(values).to_string();
        let mut key = String::with_capacity(json.len());
        for c in json.chars() {
            if c.is_ascii() {
                key.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    key.push_str(&format!("\\u{unit:04x}"));
                }
            }
            if key.len() > MAX_KEY_BYTES {
                return Some(Err(format!("key longer than {MAX_KEY_BYTES} bytes")));
            }
        }
        Some(Ok(key))
    }
}

/// A 128-bit FNV-1a digest of `parts` (each followed by a newline), as 32 hex digits: the
/// key of a whole batch (HTTP sink, one request per batch) from its records' keys. Not a
/// cryptographic hash: it names a batch, it does not protect one.
pub fn digest<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut hash = OFFSET;
    for part in parts {
        for &b in part.as_bytes().iter().chain(b"\n") {
            hash ^= u128::from(b);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    format!("{hash:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(names: &[&str]) -> Result<KeyFields, String> {
        KeyFields::new(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn keys_are_printable_ascii_json() {
        let key = fields(&["device", "seq"]).unwrap();
        assert_eq!(
            key.render(&json!({"device": "d1", "seq": 42, "t": 1})),
            Some(Ok(r#"["d1",42]"#.to_string()))
        );
        assert_eq!(
            key.render(&json!({"device": "é\n", "seq": true})),
            Some(Ok(r#"["\u00e9\n",true]"#.to_string()))
        );
        assert!(
            key.render(&json!({"device": "d1"}))
                .unwrap()
                .unwrap_err()
                .contains("seq is missing")
        );
        assert!(
            key.render(&json!({"device": [], "seq": 1}))
                .unwrap()
                .is_err()
        );
        assert_eq!(fields(&[]).unwrap().render(&json!({})), None);
    }

    #[test]
    fn keys_are_bounded() {
        let key = fields(&["k"]).unwrap();
        // `["` + n + `"]`: 4 bytes around the value.
        let fits = "a".repeat(MAX_KEY_BYTES - 4);
        assert_eq!(
            key.render(&json!({ "k": fits })).unwrap().unwrap().len(),
            MAX_KEY_BYTES
        );
        let over = "a".repeat(MAX_KEY_BYTES - 3);
        assert!(key.render(&json!({ "k": over })).unwrap().is_err());
        let eight: Vec<String> = (0..MAX_KEY_FIELDS).map(|i| format!("f{i}")).collect();
        assert!(KeyFields::new(&eight).is_ok());
        let nine: Vec<String> = (0..=MAX_KEY_FIELDS).map(|i| format!("f{i}")).collect();
        assert!(KeyFields::new(&nine).is_err());
        assert!(fields(&["a-b"]).is_err());
        assert!(fields(&["a", "a"]).is_err());
        assert!(fields(&[&"a".repeat(MAX_KEY_FIELD_BYTES + 1)]).is_err());
    }

    #[test]
    fn batch_digest_depends_on_every_key_and_order() {
        let a = digest(["x", "y"]);
        assert_eq!(a.len(), 32);
        assert_eq!(a, digest(["x", "y"]));
        assert_ne!(a, digest(["y", "x"]));
        assert_ne!(a, digest(["xy"]));
    }
}
