//! Page sizes given in query strings.

use myriad_fleet::registry::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};

use crate::error::ApiError;

/// Parses `limit`: absent or empty is [`DEFAULT_PAGE_LIMIT`]; otherwise an
/// integer in 1..=[`MAX_PAGE_LIMIT`], else a 400.
pub(crate) fn parse_limit(limit: Option<&str>) -> Result<u32, ApiError> {
    let Some(raw) = limit.filter(|l| !l.is_empty()) else {
        return Ok(DEFAULT_PAGE_LIMIT);
    };
    match raw.parse::<u32>() {
        Ok(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be an integer in 1..={MAX_PAGE_LIMIT}, got {raw:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(parse_limit(None).ok(), Some(100));
        assert_eq!(parse_limit(Some("")).ok(), Some(100));
        assert_eq!(parse_limit(Some("1000")).ok(), Some(1000));
        for bad in ["0", "1001", "-1", "ten", "1.5"] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
