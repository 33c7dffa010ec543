//! Topic names, topic filters and matching (MQTT 5.0 section 4.7).

/// Whether `name` is a valid topic name for PUBLISH: non-empty, no wildcards, no U+0000.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['+', '#', '\0'])
}

/// Whether `filter` is a valid topic filter: non-empty, no U+0000, `#` only as
/// the whole last level, `+` only as a whole level.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Whether `filter` contains a wildcard.
pub fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// A shared subscription filter `$share/{group}/{filter}` split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name.
    pub group: &'a str,
    /// The topic filter the group subscribes to.
    pub filter: &'a str,
}

/// Why a `$share/` filter is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid shared subscription filter")]
pub struct InvalidSharedFilter;

/// Splits a `$share/{group}/{filter}` filter. `Ok(None)` for a filter that is not shared.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, InvalidSharedFilter> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        if filter == "$share" {
            return Err(InvalidSharedFilter);
        }
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(InvalidSharedFilter);
    };
    if group.is_empty() || group.contains(['+', '#']) || !valid_topic_filter(inner) {
        return Err(InvalidSharedFilter);
    }
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

/// Whether `topic` matches `filter`. A filter starting with a wildcard never
/// matches a topic starting with `$` (MQTT-4.7.2-1).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic `inner` matches is also matched by `outer` (both valid filters).
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    // A leading wildcard does not match `$` topics (MQTT-4.7.2-1).
    if (outer.starts_with('+') || outer.starts_with('#')) && inner.starts_with('$') {
        return false;
    }
    let mut outer_levels = outer.split('/');
    let mut inner_levels = inner.split('/');
    loop {
        match (outer_levels.next(), inner_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(i)) if i != "#" => {}
            (Some(o), Some(i)) if o == i && o != "+" && o != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_validation() {
        for ok in [
            "a", "a/b", "+", "#", "a/+/b", "a/#", "+/+", "/", "$SYS/#", "a//b",
        ] {
            assert!(valid_topic_filter(ok), "{ok} should be valid");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "a/b+", "##", "a/\0"] {
            assert!(!valid_topic_filter(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn name_validation() {
        assert!(valid_topic_name("a/b"));
        assert!(valid_topic_name("/"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name("a/#"));
        assert!(!valid_topic_name("a\0"));
    }

    #[test]
    fn matching() {
        assert!(matches("a/b", "a/b"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a//b", "a//b"));
        assert!(matches("a/+/b", "a//b"));
    }

    #[test]
    fn covering_filters() {
        for (outer, inner) in [
            ("secret/#", "secret/#"),
            ("secret/#", "secret/+"),
            ("secret/#", "secret"),
            ("secret/#", "secret/a/b"),
            ("a/+", "a/b"),
            ("a/+", "a/+"),
            ("#", "a/#"),
            ("test/nosubscribe", "test/nosubscribe"),
        ] {
            assert!(filter_covers(outer, inner), "{outer} covers {inner}");
        }
        for (outer, inner) in [
            ("secret/#", "#"),
            ("secret/#", "+/plans"),
            ("a/+", "a/#"),
            ("a/+", "a/b/c"),
            ("a/b", "a/+"),
            ("#", "$SYS/x"),
            ("test/nosubscribe", "test/#"),
        ] {
            assert!(
                !filter_covers(outer, inner),
                "{outer} does not cover {inner}"
            );
        }
    }

    #[test]
    fn shared_filters() {
        assert_eq!(
            parse_shared("$share/g/a/+"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "a/+"
            }))
        );
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert!(parse_shared("$share/g").is_err());
        assert!(parse_shared("$share//a").is_err());
        assert!(parse_shared("$share/g+/a").is_err());
        assert!(parse_shared("$share/g/a#").is_err());
    }
}
