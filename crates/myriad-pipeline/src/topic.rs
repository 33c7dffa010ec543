//! MQTT topic filters as a rule's `FROM` clause holds them: validation and matching.
//!
//! Matching follows MQTT 5.0 section 4.7: `+` matches exactly one level, `#` (last level only)
//! matches the parent level and any number of levels below it, and a filter whose first level
//! is a wildcard never matches a topic starting with `$` (MQTT-4.7.2-1). Both walks are
//! iterative over the levels.

use thiserror::Error;

/// The longest topic filter a rule may name, in bytes (the broker's default
/// `mqtt.max_topic_length`).
pub const MAX_FILTER_BYTES: usize = 4096;

/// Why a topic filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterError {
    /// The filter is empty.
    #[error("topic filter is empty")]
    Empty,
    /// The filter is longer than [`MAX_FILTER_BYTES`].
    #[error("topic filter is {len} bytes, more than the limit of {limit}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// [`MAX_FILTER_BYTES`].
        limit: usize,
    },
    /// `+` or `#` shares a level with other characters, `#` is not the last level, or the
    /// filter holds a NUL character.
    #[error(
        "topic filter {0:?} is not a valid MQTT filter ('+' and '#' must fill a level, '#' must be last)"
    )]
    Invalid(String),
}

/// A validated MQTT topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter(String);

impl TopicFilter {
    /// Validates `filter`: 1 to [`MAX_FILTER_BYTES`] bytes, no NUL, `+`/`#` alone in their
    /// level, `#` only last.
    pub fn new(filter: &str) -> Result<TopicFilter, FilterError> {
        if filter.is_empty() {
            return Err(FilterError::Empty);
        }
        if filter.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLong {
                len: filter.len(),
                limit: MAX_FILTER_BYTES,
            });
        }
        let invalid = || FilterError::Invalid(filter.to_string());
        if filter.contains('\0') {
            return Err(invalid());
        }
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            let last = levels.peek().is_none();
            if level.contains('#') && (level != "#" || !last) {
                return Err(invalid());
            }
            if level.contains('+') && level != "+" {
                return Err(invalid());
            }
        }
        Ok(TopicFilter(filter.to_string()))
    }

    /// The filter text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the topic name `topic` matches this filter.
    pub fn matches(&self, topic: &str) -> bool {
        let filter = self.0.as_str();
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let mut f = filter.split('/');
        let mut t = topic.split('/');
        loop {
            match (f.next(), t.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(fl), Some(tl)) if fl == tl => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl std::fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        for ok in [
            "a",
            "a/b",
            "+",
            "#",
            "a/+/c",
            "a/#",
            "/",
            "+/+",
            "$shadow/+/update",
        ] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        for bad in ["a/#/b", "a#", "a+/b", "#/a", "a/b+", "x\0"] {
            assert!(
                matches!(TopicFilter::new(bad), Err(FilterError::Invalid(_))),
                "{bad}"
            );
        }
        assert_eq!(TopicFilter::new(""), Err(FilterError::Empty));
    }

    #[test]
    fn filter_length_limit_and_one_past() {
        assert!(TopicFilter::new(&"a".repeat(MAX_FILTER_BYTES)).is_ok());
        assert_eq!(
            TopicFilter::new(&"a".repeat(MAX_FILTER_BYTES + 1)),
            Err(FilterError::TooLong {
                len: MAX_FILTER_BYTES + 1,
                limit: MAX_FILTER_BYTES
            })
        );
    }

    #[test]
    fn matching() {
        let m = |f: &str, t: &str| TopicFilter::new(f).unwrap().matches(t);
        assert!(m("devices/+/telemetry", "devices/d1/telemetry"));
        assert!(!m("devices/+/telemetry", "devices/d1/x/telemetry"));
        assert!(!m("devices/+/telemetry", "devices/d1"));
        assert!(m("devices/#", "devices"));
        assert!(m("devices/#", "devices/a/b/c"));
        assert!(m("#", "a/b"));
        assert!(!m("#", "$shadow/a/update"));
        assert!(!m("+/a/update", "$shadow/a/update"));
        assert!(m("$shadow/+/update", "$shadow/a/update"));
        assert!(m("a/+", "a/"));
        assert!(!m("a/b", "a/b/c"));
        assert!(!m("a/b/c", "a/b"));
    }
}
