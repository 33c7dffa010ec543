//! Bodies of the operator-account routes: login, session, users, tokens, audit.

use myriad_fleet::credentials::Secret;
use myriad_fleet::operators::{AuditEntry, TokenView, UserView};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    /// The user name.
    pub username: String,
    /// The password.
    #[schema(value_type = String, format = Password)]
    pub password: Secret,
}

/// The caller's session: `POST /api/v1/login` and `GET /api/v1/session`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionBody {
    /// The user name (`bootstrap` for the bootstrap token).
    pub username: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    /// The token to send as `X-CSRF-Token` with state-changing requests
    /// (empty for bearer callers, who need none).
    pub csrf_token: String,
    /// When the session ends, unix ms (0 for bearer callers).
    pub expires_ms: u64,
    /// `session`, `token` or `bootstrap` (absent in the login answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// An operator user.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserBody {
    /// The user name.
    pub username: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    /// Disabled users cannot log in; their tokens are refused.
    pub disabled: bool,
    /// When it was created, unix ms.
    pub created_ms: u64,
    /// Its last successful login, unix ms.
    pub last_login_ms: Option<u64>,
}

impl From<UserView> for UserBody {
    fn from(user: UserView) -> Self {
        UserBody {
            username: user.username,
            role: user.role.as_str().into(),
            disabled: user.disabled,
            created_ms: user.created_ms,
            last_login_ms: user.last_login_ms,
        }
    }
}

/// A page of users, in name order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserPage {
    /// The users.
    pub items: Vec<UserBody>,
    /// The `after` cursor of the next page, if there are more.
    pub next: Option<String>,
}

/// `GET /api/v1/users` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserListParams {
    /// Users whose name sorts after this one.
    pub after: Option<String>,
    /// At most this many (1..=1000, default 100).
    pub limit: Option<String>,
}

/// `POST /api/v1/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUser {
    /// 1 to 64 characters of `A-Z a-z 0-9 . _ @ -`.
    pub username: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    /// 8 to 256 bytes; stored only as an Argon2id hash.
    #[schema(value_type = String, format = Password)]
    pub password: Secret,
}

/// `PATCH /api/v1/users/{name}`: only the fields given change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateUser {
    /// A new role.
    pub role: Option<String>,
    /// Disable (ends its sessions) or enable.
    pub disabled: Option<bool>,
}

/// `PUT /api/v1/users/{name}/password`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetPassword {
    /// The password now: required when users change their own.
    #[schema(value_type = Option<String>, format = Password)]
    pub current_password: Option<Secret>,
    /// The new password, 8 to 256 bytes.
    #[schema(value_type = String, format = Password)]
    pub password: Secret,
}

/// An API token (without its secret).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenBody {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it was created, unix ms.
    pub created_ms: u64,
    /// When it last authenticated a request (since the server started), unix ms.
    pub last_used_ms: Option<u64>,
}

impl From<TokenView> for TokenBody {
    fn from(token: TokenView) -> Self {
        TokenBody {
            id: token.id,
            name: token.name,
            created_ms: token.created_ms,
            last_used_ms: token.last_used_ms,
        }
    }
}

/// A user's API tokens, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenList {
    /// The tokens.
    pub items: Vec<TokenBody>,
}

/// `POST /api/v1/users/{name}/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateToken {
    /// 1 to 64 characters, no control characters.
    pub name: String,
}

/// A token just created: its secret is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedToken {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The secret to send as `Authorization: Bearer`.
    pub token: String,
}

/// `GET /api/v1/audit` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    /// At most this many (1..=1000, default 100).
    pub limit: Option<String>,
    /// Entries with a smaller `seq` (the `next` of the previous page).
    pub before: Option<u64>,
    /// Only this actor's entries.
    pub actor: Option<String>,
}

/// One audit entry.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditBody {
    /// Its sequence number.
    pub seq: u64,
    /// When the request was answered, unix ms.
    pub at_ms: u64,
    /// Who (a user name, `bootstrap`, or the name a failed login gave).
    pub actor: String,
    /// `session`, `token`, `bootstrap` or `password` (login).
    pub via: String,
    /// The actor's role then (empty for a failed login).
    pub role: String,
    /// The HTTP method.
    pub method: String,
    /// The request path.
    pub path: String,
    /// The answer's HTTP status.
    pub status: u16,
    /// The client's address.
    pub remote: String,
}

impl From<AuditEntry> for AuditBody {
    fn from(e: AuditEntry) -> Self {
        AuditBody {
            seq: e.seq,
            at_ms: e.at_ms,
            actor: e.actor,
            via: e.via,
            role: e.role,
            method: e.method,
            path: e.path,
            status: e.status,
            remote: e.remote,
        }
    }
}

/// A page of the audit log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPageBody {
    /// The entries.
    pub items: Vec<AuditBody>,
    /// The `before` cursor of the next (older) page, if there may be more.
    pub next: Option<u64>,
}
