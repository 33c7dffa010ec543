//! Percent-encoding of path segments and query strings.

/// Percent-encodes everything but RFC 3986's unreserved characters
/// (`A-Za-z0-9-._~`), so the result is safe as a path segment or as a
/// query key or value.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `k1=v1&k2=v2`, each key and value percent-encoded; empty for no pairs.
pub fn query_string(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_characters_stay() {
        assert_eq!(percent_encode("Ab-9._~"), "Ab-9._~");
    }

    #[test]
    fn everything_else_is_encoded() {
        assert_eq!(percent_encode("a b/c?d=e&f"), "a%20b%2Fc%3Fd%3De%26f");
        assert_eq!(percent_encode("dev:1"), "dev%3A1");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode("+%#"), "%2B%25%23");
    }

    #[test]
    fn query_strings() {
        assert_eq!(query_string(&[]), "");
        let pairs = vec![
            ("attribute".to_string(), "site=berlin".to_string()),
            ("limit".to_string(), "10".to_string()),
        ];
        assert_eq!(query_string(&pairs), "attribute=site%3Dberlin&limit=10");
    }
}
