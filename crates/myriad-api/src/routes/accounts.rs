//! Operator accounts: login, session, logout, users, API tokens and the
//! audit log (who may call which is in [`crate::policy`]).

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use myriad_fleet::operators::{MAX_USERNAME_LEN, Role, truncate};
use myriad_fleet::service::now_ms;

use crate::auth::{Principal, SESSION_COOKIE, Via, audit_entry};
use crate::blocking::blocking;
use crate::dto::{
    AuditPageBody, AuditParams, CreateToken, CreateUser, CreatedToken, ErrorBody, LoginBody,
    SessionBody, SetPassword, TokenList, UpdateUser, UserBody, UserListParams, UserPage,
    parse_limit,
};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::state::ApiState;

/// The client's address, if the server recorded it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Remote(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Remote {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Remote(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// The `Set-Cookie` value of a session (an empty value and `Max-Age=0` clears it).
fn session_cookie(value: &str, max_age_secs: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}{secure}"
    )
}

fn role_of(text: &str) -> Result<Role, ApiError> {
    Role::parse(text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "role must be admin, operator or viewer, got {text:?}"
        ))
    })
}

/// A slot for one Argon2 run (shared with device logins), or 503.
async fn password_slot(state: &ApiState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state
        .auth
        .password_check_slot()
        .await
        .ok_or_else(|| ApiError::Other {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "too many password checks at once; retry later".into(),
        })
}

/// Logs in with a user name and password: sets the session cookie.
#[utoipa::path(
    post,
    path = "/api/v1/login",
    tag = "accounts",
    request_body = LoginBody,
    security(()),
    responses(
        (status = 200, description = "Logged in; `Set-Cookie: myriad_session=...`", body = SessionBody),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 429, description = "Too many failed logins (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "Too many password checks at once", body = ErrorBody),
    )
)]
pub(crate) async fn login(
    State(state): State<ApiState>,
    Remote(remote): Remote,
    ApiJson(body): ApiJson<LoginBody>,
) -> Response {
    let now = now_ms();
    let ip = remote.map(|r| r.ip());
    // Longer names exist nowhere; the cut keeps the throttle's keys small.
    let username = truncate(&body.username, MAX_USERNAME_LEN + 1);
    if let Some(wait_ms) = state.operators.login_locked(&username, ip, now) {
        let secs = wait_ms.div_ceil(1000).max(1);
        return ApiError::TooManyRequests {
            message: format!("too many failed logins; retry in {secs} s"),
            retry_after_secs: secs,
        }
        .into_response();
    }
    let outcome = async {
        let permit = password_slot(&state).await?;
        let ops = state.operators.clone();
        let name = username.clone();
        let user = blocking(move || {
            let user = ops.verify_login(&name, body.password.expose(), ip, now);
            drop(permit);
            Ok(user)
        })
        .await?;
        let Some(user) = user else {
            return Err(ApiError::Other {
                status: StatusCode::UNAUTHORIZED,
                message: "wrong username or password".into(),
            });
        };
        let ops = state.operators.clone();
        let name = user.username.clone();
        let session = blocking(move || Ok(ops.begin_session(&name, now_ms())?)).await?;
        Ok((user, session))
    }
    .await;
    let remote_text = remote.map(|r| r.to_string()).unwrap_or_default();
    let (response, role) = match outcome {
        Ok((user, session)) => {
            let ttl_secs = state.operators.config().session_ttl_ms / 1000;
            let cookie = session_cookie(&session.id, ttl_secs, state.secure_cookies);
            let body = SessionBody {
                username: user.username.clone(),
                role: user.role.as_str().into(),
                csrf_token: session.csrf_token.clone(),
                expires_ms: session.expires_ms,
                via: None,
            };
            let mut response = Json(body).into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            (response, user.role.as_str())
        }
        Err(error) => (error.into_response(), ""),
    };
    let entry = audit_entry(
        &username,
        "password",
        role,
        &Method::POST,
        "/api/v1/login",
        response.status(),
        remote_text,
    );
    state.audit.record(entry).await;
    response
}

/// The caller: who, with which role, and (for the cookie) its CSRF token.
#[utoipa::path(
    get,
    path = "/api/v1/session",
    tag = "accounts",
    responses((status = 200, description = "The caller", body = SessionBody))
)]
pub(crate) async fn get_session(principal: Principal) -> Json<SessionBody> {
    let (csrf_token, expires_ms) = match &principal.session {
        Some(session) => (session.csrf_token.clone(), session.expires_ms),
        None => (String::new(), 0),
    };
    Json(SessionBody {
        username: principal.username,
        role: principal.role.as_str().into(),
        csrf_token,
        expires_ms,
        via: Some(principal.via.as_str().into()),
    })
}

/// Ends the caller's session (cookie callers) and clears the cookie.
#[utoipa::path(
    post,
    path = "/api/v1/logout",
    tag = "accounts",
    responses((status = 204, description = "Logged out"))
)]
pub(crate) async fn logout(
    State(state): State<ApiState>,
    principal: Principal,
) -> Result<Response, ApiError> {
    if let (Via::Session, Some(session)) = (principal.via, &principal.session) {
        let ops = state.operators.clone();
        let key = session.key;
        blocking(move || Ok(ops.end_session(key)?)).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&session_cookie("", 0, state.secure_cookies)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// Operator users, in name order (admin).
#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "accounts",
    params(UserListParams),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 403, description = "Not an admin", body = ErrorBody),
    )
)]
pub(crate) async fn list_users(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<UserListParams>,
) -> Result<Json<UserPage>, ApiError> {
    let limit = parse_limit(params.limit.as_deref())? as usize;
    let (items, next) = state.operators.users(params.after.as_deref(), limit);
    Ok(Json(UserPage {
        items: items.into_iter().map(UserBody::from).collect(),
        next,
    }))
}

/// Creates an operator user (admin).
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "accounts",
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserBody),
        (status = 400, description = "Invalid name, role or password", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    )
)]
pub(crate) async fn create_user(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<UserBody>), ApiError> {
    let role = role_of(&body.role)?;
    myriad_fleet::operators::validate_username(&body.username)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    myriad_fleet::operators::validate_password(body.password.expose())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let permit = password_slot(&state).await?;
    let ops = state.operators.clone();
    let user = blocking(move || {
        let user = ops.create_user(&body.username, role, body.password.expose(), now_ms());
        drop(permit);
        Ok(user?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// One user (admin, or the user itself).
#[utoipa::path(
    get,
    path = "/api/v1/users/{name}",
    tag = "accounts",
    params(("name" = String, Path, description = "The user name")),
    responses(
        (status = 200, description = "The user", body = UserBody),
        (status = 403, description = "Neither an admin nor this user", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub(crate) async fn get_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<UserBody>, ApiError> {
    state
        .operators
        .user(&name)
        .map(|u| Json(u.into()))
        .ok_or_else(|| ApiError::NotFound(format!("user {name} not found")))
}

/// Changes a user's role or disables/enables it (admin). Disabling ends its sessions.
#[utoipa::path(
    patch,
    path = "/api/v1/users/{name}",
    tag = "accounts",
    params(("name" = String, Path, description = "The user name")),
    request_body = UpdateUser,
    responses(
        (status = 200, description = "The user as changed", body = UserBody),
        (status = 400, description = "Invalid role", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub(crate) async fn update_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> Result<Json<UserBody>, ApiError> {
    let role = body.role.as_deref().map(role_of).transpose()?;
    let ops = state.operators.clone();
    let user = blocking(move || Ok(ops.update_user(&name, role, body.disabled)?)).await?;
    Ok(Json(user.into()))
}

/// Deletes a user with its sessions and tokens (admin).
#[utoipa::path(
    delete,
    path = "/api/v1/users/{name}",
    tag = "accounts",
    params(("name" = String, Path, description = "The user name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub(crate) async fn delete_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let ops = state.operators.clone();
    blocking(move || Ok(ops.delete_user(&name)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets a user's password (admin; or the user itself, giving its current
/// password). Ends the user's sessions.
#[utoipa::path(
    put,
    path = "/api/v1/users/{name}/password",
    tag = "accounts",
    params(("name" = String, Path, description = "The user name")),
    request_body = SetPassword,
    responses(
        (status = 204, description = "Set"),
        (status = 400, description = "Invalid password, or the current one is missing", body = ErrorBody),
        (status = 403, description = "Neither an admin nor this user, or the current password is wrong", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub(crate) async fn set_password(
    State(state): State<ApiState>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SetPassword>,
) -> Result<StatusCode, ApiError> {
    let own = principal.via != Via::Bootstrap && principal.username == name;
    if own && body.current_password.is_none() {
        return Err(ApiError::BadRequest(
            "current_password is required to change your own password".into(),
        ));
    }
    myriad_fleet::operators::validate_password(body.password.expose())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let permit = password_slot(&state).await?;
    let ops = state.operators.clone();
    blocking(move || {
        let current = if own {
            body.current_password.as_ref().map(|s| s.expose())
        } else {
            None
        };
        let result = ops.set_password(&name, current, body.password.expose());
        drop(permit);
        Ok(result?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's API tokens (admin, or the user itself).
#[utoipa::path(
    get,
    path = "/api/v1/users/{name}/tokens",
    tag = "accounts",
    params(("name" = String, Path, description = "The user name")),
    responses(
        (status = 200, description = "The tokens (no secrets)", body = TokenList),
        (status = 403, description = "Neither an admin nor this user", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub(crate) async fn list_tokens(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<TokenList>, ApiError> {
    let items = state.operators.tokens(&name)?;
    Ok(Json(TokenList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// Creates an API token for a user (admin, or the user itself); the secret is shown once.
#[utoipa::path(
    post,
    path = "/api/v1/users/{name}/tokens",
    tag = "accounts",
    params(("name" = String, Path, description = "The user name")),
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created", body = CreatedToken),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 403, description = "Neither an admin nor this user", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "The user has 32 tokens already", body = ErrorBody),
    )
)]
pub(crate) async fn create_token(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let ops = state.operators.clone();
    let (token, secret) =
        blocking(move || Ok(ops.create_token(&name, &body.name, now_ms())?)).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id: token.id,
            name: token.name,
            token: secret,
        }),
    ))
}

/// Revokes a user's API token (admin, or the user itself).
#[utoipa::path(
    delete,
    path = "/api/v1/users/{name}/tokens/{id}",
    tag = "accounts",
    params(
        ("name" = String, Path, description = "The user name"),
        ("id" = String, Path, description = "The token id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Neither an admin nor this user", body = ErrorBody),
        (status = 404, description = "No such user or token", body = ErrorBody),
    )
)]
pub(crate) async fn revoke_token(
    State(state): State<ApiState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let ops = state.operators.clone();
    blocking(move || Ok(ops.revoke_token(&name, &id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The audit log, newest first (admin).
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "accounts",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of audit entries", body = AuditPageBody),
        (status = 400, description = "Invalid limit", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    )
)]
pub(crate) async fn list_audit(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<AuditPageBody>, ApiError> {
    let limit = parse_limit(params.limit.as_deref())? as usize;
    let store = state.operators.store().clone();
    let page =
        blocking(move || Ok(store.list_audit(params.before, limit, params.actor.as_deref())?))
            .await?;
    Ok(Json(AuditPageBody {
        items: page.items.into_iter().map(Into::into).collect(),
        next: page.next,
    }))
}
