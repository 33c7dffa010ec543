//! Who is calling, and may they: every `/api/v1` request is authenticated
//! as a [`Principal`] by one of
//!
//! 1. `Authorization: Bearer {api.token}`: the bootstrap admin (`bootstrap`);
//! 2. `Authorization: Bearer myr_...`: a user's API token, acting as that user;
//! 3. the `myriad_session` cookie set by `POST /api/v1/login`.
//!
//! A state-changing request (not GET, HEAD or OPTIONS) authenticated by the
//! cookie must carry `X-CSRF-Token` equal to the session's CSRF token (403
//! otherwise). Then the route's rule in [`crate::policy`] decides (403
//! `role R may not METHOD PATH`). After the handler answers, every
//! state-changing request is appended to the audit log (waiting for the
//! commit), but the data plane's ingest POSTs and the query POSTs
//! ([`crate::policy::audited`]). Requests refused with 401 are not logged
//! (no actor; failed logins are, by the login route).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use myriad_fleet::operators::{
    AuditEntry, BOOTSTRAP_ACTOR, MAX_AUDIT_ACTOR_LEN, MAX_AUDIT_PATH_LEN, Role, SessionInfo,
    secrets_equal, truncate,
};
use myriad_fleet::service::now_ms;

use crate::error::ApiError;
use crate::policy;
use crate::state::ApiState;

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "myriad_session";
/// The header carrying the CSRF token.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// How a caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// The `api.token` bearer token.
    Bootstrap,
    /// A user's API token.
    Token,
    /// The session cookie.
    Session,
}

impl Via {
    /// As the API words it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Via::Bootstrap => "bootstrap",
            Via::Token => "token",
            Via::Session => "session",
        }
    }
}

/// The authenticated caller of a request (a request extension of every
/// `/api/v1` route behind [`authorize`]).
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    /// The user name (`bootstrap` for the bootstrap token).
    pub username: String,
    /// Its role now.
    pub role: Role,
    /// How it authenticated.
    pub via: Via,
    /// The session, when authenticated by the cookie.
    pub session: Option<SessionInfo>,
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// The value of the session cookie in `headers`, if any.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then_some(value.trim_matches('"'))
        })
}

/// The caller of a request with `headers`: a bearer token (the bootstrap
/// token or a user's API token) if there is an `Authorization` header,
/// else the session cookie.
pub(crate) fn resolve(state: &ApiState, headers: &HeaderMap, now: u64) -> Option<Principal> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value.to_str().ok().and_then(bearer_token)?;
        return principal_of_token(state, token, now);
    }
    let info = state.operators.session(session_cookie(headers)?, now)?;
    Some(Principal {
        username: info.user.username.clone(),
        role: info.user.role,
        via: Via::Session,
        session: Some(info),
    })
}

/// The caller a token (bootstrap or `myr_...`) authenticates.
fn principal_of_token(state: &ApiState, token: &str, now: u64) -> Option<Principal> {
    if !state.token.is_empty() && secrets_equal(token, &state.token) {
        return Some(Principal {
            username: BOOTSTRAP_ACTOR.into(),
            role: Role::Admin,
            via: Via::Bootstrap,
            session: None,
        });
    }
    let user = state.operators.token_user(token, now)?;
    Some(Principal {
        username: user.username,
        role: user.role,
        via: Via::Token,
        session: None,
    })
}

/// As [`resolve`], for the InfluxDB compatible write routes: the token may
/// also come as `Authorization: Token {token}` or as the password of
/// `Authorization: Basic` (the user name is ignored). No cookie.
fn resolve_influx(state: &ApiState, headers: &HeaderMap, now: u64) -> Option<Principal> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = match bearer_token(value) {
        Some(token) => token.to_owned(),
        None => influx_token(value)?,
    };
    principal_of_token(state, &token, now)
}

/// 403 with `message`.
fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::with_status(StatusCode::FORBIDDEN, message)
}

/// The middleware of every `/api/v1` route: authenticates (401), checks
/// CSRF and the route's rule (403), runs the handler and audits.
pub(crate) async fn authorize(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let principal = resolve(&state, request.headers(), now_ms());
    guard(state, principal, request, next).await
}

/// [`authorize`] for the InfluxDB compatible write routes (`/write`,
/// `/api/v2/write`): tokens in their InfluxDB forms too.
pub(crate) async fn authorize_influx(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let principal = resolve_influx(&state, request.headers(), now_ms());
    guard(state, principal, request, next).await
}

/// Lets any authenticated caller through (`/metrics` with
/// `metrics_require_token`); 401 otherwise.
pub(crate) async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    if resolve(&state, request.headers(), now_ms()).is_some() {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// The client address of a request (set by the server).
pub(crate) fn remote_of(request: &Request) -> String {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.to_string())
        .unwrap_or_default()
}

/// An audit entry for a request answered with `status`.
pub(crate) fn audit_entry(
    actor: &str,
    via: &str,
    role: &str,
    method: &Method,
    path: &str,
    status: StatusCode,
    remote: String,
) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at_ms: now_ms(),
        actor: truncate(actor, MAX_AUDIT_ACTOR_LEN),
        via: via.into(),
        role: role.into(),
        method: method.as_str().into(),
        path: truncate(path, MAX_AUDIT_PATH_LEN),
        status: status.as_u16(),
        remote,
    }
}

async fn guard(
    state: ApiState,
    principal: Option<Principal>,
    request: Request,
    next: Next,
) -> Response {
    let Some(principal) = principal else {
        return ApiError::Unauthorized.into_response();
    };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let remote = remote_of(&request);
    let (mut parts, body) = request.into_parts();
    let pattern = parts
        .extensions
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let path_name = match RawPathParams::from_request_parts(&mut parts, &state).await {
        Ok(params) => params
            .iter()
            .find(|(key, _)| *key == "name")
            .map(|(_, value)| value.to_owned()),
        Err(_) => None,
    };
    let checked = check(
        &principal,
        &parts.headers,
        &method,
        pattern.as_deref(),
        path_name.as_deref(),
        &path,
    );
    let response = match checked {
        Err(error) => error.into_response(),
        Ok(()) => {
            parts.extensions.insert(principal.clone());
            next.run(Request::from_parts(parts, body)).await
        }
    };
    if policy::audited(&method, pattern.as_deref()) {
        let entry = audit_entry(
            &principal.username,
            principal.via.as_str(),
            principal.role.as_str(),
            &method,
            &path,
            response.status(),
            remote,
        );
        state.audit.record(entry).await;
    }
    response
}

/// CSRF (cookie callers changing state) and the route's rule.
fn check(
    principal: &Principal,
    headers: &HeaderMap,
    method: &Method,
    pattern: Option<&str>,
    path_name: Option<&str>,
    path: &str,
) -> Result<(), ApiError> {
    if let Some(session) = &principal.session
        && policy::changes_state(method)
    {
        let given = headers
            .get(CSRF_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        if given.is_empty() || !secrets_equal(given, &session.csrf_token) {
            return Err(forbidden("missing or wrong CSRF token"));
        }
    }
    let Some(rule) = pattern.and_then(|pattern| policy::rule(method, pattern)) else {
        tracing::error!(%method, ?pattern, "no access policy for this route; refused");
        return Err(forbidden(format!("no access policy for {method} {path}")));
    };
    if policy::allows(rule, principal.role, &principal.username, path_name) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "role {} may not {method} {path}",
            principal.role
        )))
    }
}

/// The token of an InfluxDB-style `Authorization` value: `Token {token}`,
/// or the password of `Basic`.
fn influx_token(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("token") {
        return Some(rest.trim_matches(' ').to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

/// Whether `headers` carry `expected` as `Token {token}` or as a Basic password.
#[cfg(test)]
fn influx_token_matches(headers: &HeaderMap, expected: &str) -> bool {
    !expected.is_empty()
        && headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(influx_token)
            .is_some_and(|given| secrets_equal(&given, expected))
}

/// Whether `headers` carry the bearer token `expected`. The comparison
/// takes the same time wherever the tokens differ, and whatever their
/// lengths: it compares BLAKE3 digests, whose equality is constant-time.
/// An empty `expected` matches nothing.
#[cfg(test)]
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
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; myriad_session=abc; b=2"),
        );
        assert_eq!(session_cookie(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("x=1"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("myriad_session=\"q\""),
        );
        assert_eq!(session_cookie(&h), Some("q"));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("my_myriad_session=z"),
        );
        assert_eq!(session_cookie(&h), None);
        assert_eq!(session_cookie(&HeaderMap::new()), None);
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
