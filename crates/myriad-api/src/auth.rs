//! The bearer token check in front of every `/api/v1` route.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::ApiState;

/// Lets the request through if it carries `Authorization: Bearer {token}`
/// with the configured token; answers 401 otherwise.
pub(crate) async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    if token_matches(request.headers(), &state.token) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// As [`require_token`], for the InfluxDB compatible write routes (`/write`, `/api/v2/write`):
/// also takes the token as `Authorization: Token {token}` (InfluxDB 2.x clients) or as the
/// password of `Authorization: Basic` (InfluxDB 1.x clients; the user name is ignored).
pub(crate) async fn require_influx_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    if token_matches(request.headers(), &state.token)
        || influx_token_matches(request.headers(), &state.token)
    {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Whether `headers` carry `expected` as `Token {token}` or as a Basic password.
fn influx_token_matches(headers: &HeaderMap, expected: &str) -> bool {
    if expected.is_empty() {
        return false;
    }
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, rest)) = value.split_once(' ') else {
        return false;
    };
    let given = if scheme.eq_ignore_ascii_case("token") {
        rest.trim_matches(' ').to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) else {
            return false;
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return false;
        };
        match text.split_once(':') {
            Some((_, password)) => password.to_owned(),
            None => return false,
        }
    } else {
        return false;
    };
    blake3::hash(given.as_bytes()) == blake3::hash(expected.as_bytes())
}

/// Whether `headers` carry the bearer token `expected`. The comparison
/// takes the same time wherever the tokens differ, and whatever their
/// lengths: it compares BLAKE3 digests, whose equality is constant-time.
/// An empty `expected` matches nothing.
fn token_matches(headers: &HeaderMap, expected: &str) -> bool {
    if expected.is_empty() {
        return false;
    }
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
    else {
        return false;
    };
    blake3::hash(given.as_bytes()) == blake3::hash(expected.as_bytes())
}

/// The token of an `Authorization: Bearer ..` value (the scheme is
/// case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_matches(' '))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("valid header"),
        );
        headers
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        assert!(token_matches(&headers("Bearer s3cret"), "s3cret"));
        assert!(token_matches(&headers("bearer s3cret"), "s3cret"));
        assert!(!token_matches(&headers("Bearer s3cre"), "s3cret"));
        assert!(!token_matches(&headers("Bearer s3cret2"), "s3cret"));
        assert!(!token_matches(&headers("Basic s3cret"), "s3cret"));
        assert!(!token_matches(&headers("s3cret"), "s3cret"));
        assert!(!token_matches(&HeaderMap::new(), "s3cret"));
        assert!(!token_matches(&headers("Bearer "), ""));
    }

    #[test]
    fn influx_schemes() {
        assert!(influx_token_matches(&headers("Token s3cret"), "s3cret"));
        // "u:s3cret"
        assert!(influx_token_matches(
            &headers("Basic dTpzM2NyZXQ="),
            "s3cret"
        ));
        assert!(!influx_token_matches(
            &headers("Basic dTpzM2NyZQ=="),
            "s3cret"
        ));
        assert!(!influx_token_matches(&headers("Token s3cre"), "s3cret"));
        assert!(!influx_token_matches(&headers("Token "), ""));
    }
}
