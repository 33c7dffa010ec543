//! Operator users, roles, API tokens, login sessions and audit entries, as
//! the service and the store see them, with their limits.

use serde::{Deserialize, Serialize};

/// Longest user name, in characters (`[A-Za-z0-9._@-]`).
pub const MAX_USERNAME_LEN: usize = 64;
/// Shortest password, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Longest password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 256;
/// Longest API token name, in characters.
pub const MAX_TOKEN_NAME_LEN: usize = 64;
/// Most API tokens of one user.
pub const MAX_TOKENS_PER_USER: usize = 32;
/// Most login sessions of one user (the oldest is ended past it).
pub const MAX_SESSIONS_PER_USER: usize = 16;
/// Most login sessions in total (the oldest is ended past it).
pub const MAX_SESSIONS: usize = 10_000;
/// Most operator users.
pub const MAX_USERS: usize = 10_000;
/// The actor name of the bootstrap token (`api.token`); no user may take it.
pub const BOOTSTRAP_ACTOR: &str = "bootstrap";
/// What API tokens start with.
pub const TOKEN_PREFIX: &str = "myr_";

/// What an operator may do; ordered: `Viewer < Operator < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything but users (other than self), others' tokens and the audit log.
    Viewer,
    /// Viewer, plus devices, shadows, commands, OTA and retained messages.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// The role's name as the API words it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role named `name` (`admin`, `operator`, `viewer`).
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The stored byte.
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Role::Viewer => 0,
            Role::Operator => 1,
            Role::Admin => 2,
        }
    }

    /// The role of a stored byte.
    pub(crate) fn from_byte(byte: u8) -> Option<Role> {
        match byte {
            0 => Some(Role::Viewer),
            1 => Some(Role::Operator),
            2 => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operator user as stored (with its password hash).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredUser {
    /// The user name (the key).
    pub username: String,
    /// Its role.
    pub role: Role,
    /// Its Argon2id PHC string.
    pub password_hash: String,
    /// Disabled users cannot log in; their tokens are refused.
    pub disabled: bool,
    /// When it was created, unix ms.
    pub created_ms: u64,
    /// Its last successful login, unix ms.
    pub last_login_ms: Option<u64>,
}

impl std::fmt::Debug for StoredUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredUser")
            .field("username", &self.username)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// An operator user as the API shows it (no hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    /// The user name.
    pub username: String,
    /// Its role.
    pub role: Role,
    /// Whether it is disabled.
    pub disabled: bool,
    /// When it was created, unix ms.
    pub created_ms: u64,
    /// Its last successful login, unix ms.
    pub last_login_ms: Option<u64>,
}

impl From<&StoredUser> for UserView {
    fn from(user: &StoredUser) -> Self {
        UserView {
            username: user.username.clone(),
            role: user.role,
            disabled: user.disabled,
            created_ms: user.created_ms,
            last_login_ms: user.last_login_ms,
        }
    }
}

/// A login session as stored (keyed by the BLAKE3 hash of its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Whose session.
    pub username: String,
    /// The token state-changing requests must carry in `X-CSRF-Token`.
    pub csrf_token: String,
    /// When it began, unix ms.
    pub created_ms: u64,
    /// When it ends, unix ms.
    pub expires_ms: u64,
}

/// An API token as stored (keyed by the BLAKE3 hash of its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// Whose token.
    pub username: String,
    /// Its public id (16 hex digits).
    pub id: String,
    /// Its name, given by its creator.
    pub name: String,
    /// When it was created, unix ms.
    pub created_ms: u64,
}

/// An API token as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it was created, unix ms.
    pub created_ms: u64,
    /// When it last authenticated a request (since this process started), unix ms.
    pub last_used_ms: Option<u64>,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Its sequence number (assigned when stored; increasing).
    pub seq: u64,
    /// When the request was answered, unix ms.
    pub at_ms: u64,
    /// Who: a user name, `bootstrap`, or the name a failed login gave.
    pub actor: String,
    /// How it authenticated: `session`, `token`, `bootstrap` or `password` (login).
    pub via: String,
    /// Its role then (empty for a failed login).
    pub role: String,
    /// The HTTP method.
    pub method: String,
    /// The request path (at most [`MAX_AUDIT_PATH_LEN`] bytes).
    pub path: String,
    /// The HTTP status of the answer.
    pub status: u16,
    /// The client's address (empty when unknown).
    pub remote: String,
}

/// Longest path kept in an audit entry, in bytes (longer ones are cut).
pub const MAX_AUDIT_PATH_LEN: usize = 1024;
/// Longest actor name kept in an audit entry (a failed login's name), in bytes.
pub const MAX_AUDIT_ACTOR_LEN: usize = 128;

/// Cuts `text` to at most `max` bytes at a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Why a user name, password or token name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// The user name breaks the rules.
    #[error("username must be 1 to 64 characters of A-Z a-z 0-9 . _ @ - (and not \"bootstrap\")")]
    Username,
    /// The password is too short or too long.
    #[error("password must be 8 to 256 bytes")]
    Password,
    /// The token name breaks the rules.
    #[error("token name must be 1 to 64 characters, no control characters")]
    TokenName,
}

/// Checks a user name: 1..=64 of `[A-Za-z0-9._@-]`, not [`BOOTSTRAP_ACTOR`].
pub fn validate_username(name: &str) -> Result<(), InvalidInput> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USERNAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
        && name != BOOTSTRAP_ACTOR;
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::Username)
    }
}

/// Checks a password's length: 8..=256 bytes.
pub fn validate_password(password: &str) -> Result<(), InvalidInput> {
    if (MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&password.len()) {
        Ok(())
    } else {
        Err(InvalidInput::Password)
    }
}

/// Checks a token name: 1..=64 characters, none a control character.
pub fn validate_token_name(name: &str) -> Result<(), InvalidInput> {
    let count = name.chars().count();
    if (1..=MAX_TOKEN_NAME_LEN).contains(&count) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(InvalidInput::TokenName)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(validate_username("alice.b-c_d@example").is_ok());
        assert!(validate_username(&"a".repeat(64)).is_ok());
        assert!(validate_username(&"a".repeat(65)).is_err());
        assert!(validate_username("").is_err());
        assert!(validate_username("a b").is_err());
        assert!(validate_username("bootstrap").is_err());
        assert!(validate_username("é").is_err());
    }

    #[test]
    fn passwords_and_roles() {
        assert!(validate_password("1234567").is_err());
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password(&"x".repeat(256)).is_ok());
        assert!(validate_password(&"x".repeat(257)).is_err());
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(Role::from_byte(role.to_byte()), Some(role));
        }
        assert_eq!(truncate("aé", 2), "a");
    }
}
