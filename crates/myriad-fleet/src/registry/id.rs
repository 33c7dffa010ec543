//! Validated names: [`DeviceId`], [`AppId`], and the rule they share with
//! group names and attribute keys.
//!
//! The allowed characters, `[A-Za-z0-9_.:-]`, are all fine inside an MQTT
//! topic level and exclude `/`, `+`, `#` and `$`, so an id can be pasted
//! into a topic (`devices/{id}/telemetry`) without escaping and can never
//! act as a wildcard or a level separator.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::MAX_ID_LEN;
use super::error::IdError;

/// Checks that `s` is 1..=`max` bytes of `[A-Za-z0-9_.:-]`.
pub fn validate_name(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { len: s.len(), max });
    }
    if let Some((at, ch)) = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(IdError::BadChar { ch, at });
    }
    Ok(())
}

macro_rules! validated_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `id`: 1 to 128 bytes of `[A-Za-z0-9_.:-]`.
            pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                validate_name(&id, MAX_ID_LEN)?;
                Ok($name(id))
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as a `String`.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(id: String) -> Result<Self, IdError> {
                $name::new(id)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(id: &str) -> Result<Self, IdError> {
                $name::new(id)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

validated_id!(
    /// A device's id, also its MQTT client id and username: 1 to 128 bytes
    /// of `[A-Za-z0-9_.:-]`. Serializes as a plain JSON string.
    DeviceId
);

validated_id!(
    /// An application client's id, also its MQTT username: the same rules
    /// as [`DeviceId`], and in the same namespace (see the
    /// [module documentation](super)).
    AppId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        for ok in ["a", "A-9", "dev_01.eu:west", "-", &"x".repeat(128)] {
            assert!(DeviceId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn says_why_an_id_is_bad() {
        assert_eq!(DeviceId::new(""), Err(IdError::Empty));
        assert_eq!(
            DeviceId::new("x".repeat(129)),
            Err(IdError::TooLong { len: 129, max: 128 })
        );
        for (bad, ch, at) in [
            ("a/b", '/', 1),
            ("+", '+', 0),
            ("ab#", '#', 2),
            ("$sys", '$', 0),
            ("a b", ' ', 1),
            ("é", 'é', 0),
            ("a\0", '\0', 1),
        ] {
            assert_eq!(
                DeviceId::new(bad),
                Err(IdError::BadChar { ch, at }),
                "{bad}"
            );
        }
        let msg = DeviceId::new("a/b").unwrap_err().to_string();
        assert!(msg.contains("'/'") && msg.contains("byte 1"), "{msg}");
    }

    #[test]
    fn serde_is_a_plain_validated_string() {
        let id = DeviceId::new("dev-1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"dev-1\"");
        let back: DeviceId = serde_json::from_str("\"dev-1\"").unwrap();
        assert_eq!(back, id);
        let err = serde_json::from_str::<DeviceId>("\"a/b\"").unwrap_err();
        assert!(err.to_string().contains("'/'"), "{err}");
    }
}
