//! [`Operators`]: users, sessions and tokens kept in memory (every request
//! is authenticated without touching the disk) and written through to the
//! fleet store (every change is one fsync'd transaction).
//!
//! Methods that write the store or run Argon2 block: async callers run
//! them on the blocking pool. Lookups ([`Operators::session`],
//! [`Operators::token_user`], [`Operators::user`]) are in memory and cheap.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use base64::Engine as _;
use tracing::warn;

use super::model::*;
use super::throttle::{LoginLimits, LoginThrottle};
use crate::credentials::{CredentialError, HashParams, hash_password, verify_password};
use crate::store::{FleetStore, FleetStoreError, OperatorChange};

/// How [`Operators`] behaves.
#[derive(Debug, Clone, Copy)]
pub struct OperatorsConfig {
    /// How long a login session lasts, ms (config `api.session_ttl_secs`, default 12 h).
    pub session_ttl_ms: u64,
    /// Most audit entries kept (config `api.audit_max_entries`, default 100,000).
    pub audit_max_entries: u64,
    /// Login throttling.
    pub login: LoginLimits,
    /// Argon2 costs of new passwords.
    pub hash_params: HashParams,
    /// Most login sessions in total (default [`MAX_SESSIONS`]); the oldest end past it.
    pub max_sessions: usize,
}

impl Default for OperatorsConfig {
    fn default() -> Self {
        OperatorsConfig {
            session_ttl_ms: 12 * 3_600_000,
            audit_max_entries: 100_000,
            login: LoginLimits::default(),
            hash_params: HashParams::OWASP,
            max_sessions: MAX_SESSIONS,
        }
    }
}

/// Why an operator-account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// A name, password or token name breaks the rules.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The user name is taken.
    #[error("user {0} already exists")]
    UserExists(String),
    /// No such user.
    #[error("user {0} not found")]
    UserNotFound(String),
    /// No such token of this user.
    #[error("token {0} not found")]
    TokenNotFound(String),
    /// A limit on users or tokens is reached.
    #[error("{0}")]
    Limit(String),
    /// The current password given to change one's own password is wrong.
    #[error("the current password is wrong")]
    WrongPassword,
    /// Too many wrong passwords for this user: locked out for this many ms.
    #[error("too many failed password checks; retry in {} s", .0.div_ceil(1000).max(1))]
    Locked(u64),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] FleetStoreError),
    /// Hashing failed (or no random bytes).
    #[error("{0}")]
    Internal(String),
}

impl From<CredentialError> for OperatorError {
    fn from(error: CredentialError) -> Self {
        OperatorError::Internal(format!("password hashing: {error}"))
    }
}

/// A session just begun: the secret cookie value is shown once.
#[derive(Clone)]
pub struct NewSession {
    /// The cookie value (`myriad_session`).
    pub id: String,
    /// The CSRF token of the session.
    pub csrf_token: String,
    /// When it ends, unix ms.
    pub expires_ms: u64,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

/// A live session found by its cookie.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The BLAKE3 hash of its id (to end it).
    pub key: [u8; 32],
    /// Its CSRF token.
    pub csrf_token: String,
    /// When it ends, unix ms.
    pub expires_ms: u64,
    /// Its user, as now.
    pub user: UserView,
}

#[derive(Debug, Clone)]
struct TokenState {
    stored: StoredToken,
    last_used_ms: Option<u64>,
}

/// A user's sessions: (stored key, created at ms).
type UserSessions = Vec<([u8; 32], u64)>;

#[derive(Default)]
struct State {
    users: BTreeMap<String, StoredUser>,
    sessions: HashMap<[u8; 32], StoredSession>,
    tokens: HashMap<[u8; 32], TokenState>,
}

impl State {
    /// A copy of user `name` and its sessions, or `UserNotFound`.
    fn user_with_sessions(&self, name: &str) -> Result<(StoredUser, UserSessions), OperatorError> {
        let user = self
            .users
            .get(name)
            .cloned()
            .ok_or_else(|| OperatorError::UserNotFound(name.into()))?;
        Ok((user, self.sessions_of(name)))
    }

    fn sessions_of(&self, username: &str) -> UserSessions {
        self.sessions
            .iter()
            .filter(|(_, s)| s.username == username)
            .map(|(k, s)| (*k, s.created_ms))
            .collect()
    }

    fn tokens_of(&self, username: &str) -> Vec<[u8; 32]> {
        self.tokens
            .iter()
            .filter(|(_, t)| t.stored.username == username)
            .map(|(k, _)| *k)
            .collect()
    }
}

/// Operator users, login sessions, API tokens and the login throttle (see
/// the [module documentation](self)).
pub struct Operators {
    store: Arc<FleetStore>,
    config: OperatorsConfig,
    state: Mutex<State>,
    /// Serializes changes (taken on blocking threads only, around the
    /// store write; `state` is taken briefly inside it).
    writes: Mutex<()>,
    throttle: Mutex<LoginThrottle>,
    /// A hash verified for unknown users, so timing does not tell whether a name exists.
    dummy_hash: OnceLock<String>,
}

impl std::fmt::Debug for Operators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operators")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// 32 random bytes.
fn random_bytes() -> Result<[u8; 32], OperatorError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| OperatorError::Internal(format!("no random bytes: {e}")))?;
    Ok(bytes)
}

/// Base64url without padding.
fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The key a session id or token secret is stored under.
pub fn secret_key(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

/// Longest session id or token accepted for lookup, bytes (both are 43 or 47).
const MAX_SECRET_LEN: usize = 128;

impl Operators {
    /// Loads every user, session and token from `store`. Damaged records
    /// are skipped with a warning; expired sessions and the sessions and
    /// tokens of missing users are deleted.
    pub fn open(store: Arc<FleetStore>, config: OperatorsConfig) -> Result<Self, FleetStoreError> {
        let records = store.load_operators()?;
        for skipped in &records.skipped {
            warn!(record = %skipped, "skipping a damaged operator record in the fleet store");
        }
        let now = crate::service::now_ms();
        let mut state = State::default();
        for user in records.users {
            state.users.insert(user.username.clone(), user);
        }
        let mut stale = Vec::new();
        for (key, session) in records.sessions {
            if session.expires_ms <= now || !state.users.contains_key(&session.username) {
                stale.push(OperatorChange::DeleteSession(key));
            } else {
                state.sessions.insert(key, session);
            }
        }
        for (key, token) in records.tokens {
            if state.users.contains_key(&token.username) {
                state.tokens.insert(
                    key,
                    TokenState {
                        stored: token,
                        last_used_ms: None,
                    },
                );
            } else {
                stale.push(OperatorChange::DeleteToken(key));
            }
        }
        if !stale.is_empty() {
            store.apply_operator_changes(&stale)?;
        }
        Ok(Operators {
            store,
            config,
            state: Mutex::new(state),
            writes: Mutex::new(()),
            throttle: Mutex::new(LoginThrottle::new(config.login)),
            dummy_hash: OnceLock::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OperatorsConfig {
        &self.config
    }

    /// The store (for the audit log).
    pub fn store(&self) -> &Arc<FleetStore> {
        &self.store
    }

    /// User `name`, if it exists.
    pub fn user(&self, name: &str) -> Option<UserView> {
        lock(&self.state).users.get(name).map(UserView::from)
    }

    /// Users after `after` in name order, at most `limit`; and the cursor
    /// of the next page if there are more.
    pub fn users(&self, after: Option<&str>, limit: usize) -> (Vec<UserView>, Option<String>) {
        let state = lock(&self.state);
        let range = match after {
            Some(after) => state
                .users
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => state.users.range::<str, _>(..),
        };
        let mut items: Vec<UserView> = range.take(limit + 1).map(|(_, u)| u.into()).collect();
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|u| u.username.clone())
        } else {
            None
        };
        (items, next)
    }

    /// Creates user `name` (blocks: Argon2 and a store write).
    pub fn create_user(
        &self,
        name: &str,
        role: Role,
        password: &str,
        now: u64,
    ) -> Result<UserView, OperatorError> {
        validate_username(name)?;
        validate_password(password)?;
        if lock(&self.state).users.contains_key(name) {
            return Err(OperatorError::UserExists(name.into()));
        }
        let password_hash = hash_password(password, &self.config.hash_params)?;
        let _writes = lock(&self.writes);
        {
            let state = lock(&self.state);
            if state.users.contains_key(name) {
                return Err(OperatorError::UserExists(name.into()));
            }
            if state.users.len() >= MAX_USERS {
                return Err(OperatorError::Limit(format!("at most {MAX_USERS} users")));
            }
        }
        let user = StoredUser {
            username: name.into(),
            role,
            password_hash,
            disabled: false,
            created_ms: now,
            last_login_ms: None,
        };
        self.store
            .apply_operator_changes(&[OperatorChange::PutUser(user.clone())])?;
        let view = UserView::from(&user);
        lock(&self.state).users.insert(name.into(), user);
        Ok(view)
    }

    /// Changes user `name`'s role and/or disabled flag (blocks). Disabling
    /// ends its sessions.
    pub fn update_user(
        &self,
        name: &str,
        role: Option<Role>,
        disabled: Option<bool>,
    ) -> Result<UserView, OperatorError> {
        let _writes = lock(&self.writes);
        let (mut user, sessions) = lock(&self.state).user_with_sessions(name)?;
        if let Some(role) = role {
            user.role = role;
        }
        let mut changes = Vec::new();
        if let Some(disabled) = disabled {
            user.disabled = disabled;
            if disabled {
                changes.extend(
                    sessions
                        .iter()
                        .map(|(k, _)| OperatorChange::DeleteSession(*k)),
                );
            }
        }
        changes.push(OperatorChange::PutUser(user.clone()));
        self.store.apply_operator_changes(&changes)?;
        let view = UserView::from(&user);
        let mut state = lock(&self.state);
        if user.disabled {
            for (key, _) in &sessions {
                state.sessions.remove(key);
            }
        }
        state.users.insert(name.into(), user);
        Ok(view)
    }

    /// Deletes user `name` with its sessions and tokens (blocks).
    pub fn delete_user(&self, name: &str) -> Result<(), OperatorError> {
        let _writes = lock(&self.writes);
        let (sessions, tokens) = {
            let state = lock(&self.state);
            if !state.users.contains_key(name) {
                return Err(OperatorError::UserNotFound(name.into()));
            }
            (state.sessions_of(name), state.tokens_of(name))
        };
        let mut changes = vec![OperatorChange::DeleteUser(name.into())];
        changes.extend(
            sessions
                .iter()
                .map(|(k, _)| OperatorChange::DeleteSession(*k)),
        );
        changes.extend(tokens.iter().map(|k| OperatorChange::DeleteToken(*k)));
        self.store.apply_operator_changes(&changes)?;
        let mut state = lock(&self.state);
        state.users.remove(name);
        for (key, _) in &sessions {
            state.sessions.remove(key);
        }
        for key in &tokens {
            state.tokens.remove(key);
        }
        Ok(())
    }

    /// Sets user `name`'s password and ends its sessions (blocks: Argon2
    /// and a store write). With `current`, that must be its password now.
    pub fn set_password(
        &self,
        name: &str,
        current: Option<&str>,
        password: &str,
    ) -> Result<(), OperatorError> {
        validate_password(password)?;
        let Some(stored) = lock(&self.state).users.get(name).cloned() else {
            return Err(OperatorError::UserNotFound(name.into()));
        };
        if let Some(current) = current {
            // Wrong current passwords count as failed logins (and are refused while locked out).
            let now = crate::service::now_ms();
            if let Some(wait) = lock(&self.throttle).check(name, None, now) {
                return Err(OperatorError::Locked(wait));
            }
            if !verify_password(&stored.password_hash, current).unwrap_or(false) {
                lock(&self.throttle).failure(name, None, now);
                return Err(OperatorError::WrongPassword);
            }
        }
        let password_hash = hash_password(password, &self.config.hash_params)?;
        let _writes = lock(&self.writes);
        let (mut user, sessions) = lock(&self.state).user_with_sessions(name)?;
        user.password_hash = password_hash;
        let mut changes: Vec<_> = sessions
            .iter()
            .map(|(k, _)| OperatorChange::DeleteSession(*k))
            .collect();
        changes.push(OperatorChange::PutUser(user.clone()));
        self.store.apply_operator_changes(&changes)?;
        let mut state = lock(&self.state);
        for (key, _) in &sessions {
            state.sessions.remove(key);
        }
        state.users.insert(name.into(), user);
        Ok(())
    }

    /// Whether a login of `username` from `ip` is locked out now: `Some`
    /// milliseconds to wait.
    pub fn login_locked(&self, username: &str, ip: Option<IpAddr>, now: u64) -> Option<u64> {
        lock(&self.throttle).check(username, ip, now)
    }

    /// Checks `password` for `username` (blocks: Argon2, also for unknown
    /// or disabled users, against a dummy hash, so the answer time tells
    /// nothing). Records the outcome in the throttle. The user if it may log in.
    pub fn verify_login(
        &self,
        username: &str,
        password: &str,
        ip: Option<IpAddr>,
        now: u64,
    ) -> Option<UserView> {
        let stored = lock(&self.state).users.get(username).cloned();
        let ok = match &stored {
            Some(user) if password.len() <= MAX_PASSWORD_BYTES => {
                verify_password(&user.password_hash, password).unwrap_or(false) && !user.disabled
            }
            _ => {
                let dummy = self.dummy_hash.get_or_init(|| {
                    hash_password("not a password of anyone", &self.config.hash_params)
                        .unwrap_or_default()
                });
                let _ = verify_password(dummy, password);
                false
            }
        };
        let mut throttle = lock(&self.throttle);
        if ok {
            throttle.success(username);
            stored.as_ref().map(UserView::from)
        } else {
            throttle.failure(username, ip, now);
            None
        }
    }

    /// Begins a session for `username` after a successful login (blocks: a
    /// store write). Ends the user's oldest sessions past
    /// [`MAX_SESSIONS_PER_USER`] and the oldest of all past
    /// [`OperatorsConfig::max_sessions`].
    pub fn begin_session(&self, username: &str, now: u64) -> Result<NewSession, OperatorError> {
        let id = b64(&random_bytes()?);
        let csrf_token = b64(&random_bytes()?);
        let key = secret_key(&id);
        let expires_ms = now.saturating_add(self.config.session_ttl_ms);
        let session = StoredSession {
            username: username.into(),
            csrf_token: csrf_token.clone(),
            created_ms: now,
            expires_ms,
        };
        let _writes = lock(&self.writes);
        let (mut user, evicted) = {
            let state = lock(&self.state);
            let user = state
                .users
                .get(username)
                .cloned()
                .ok_or_else(|| OperatorError::UserNotFound(username.into()))?;
            let mut evicted: Vec<[u8; 32]> = state
                .sessions
                .iter()
                .filter(|(_, s)| s.expires_ms <= now)
                .map(|(k, _)| *k)
                .collect();
            let mut own: Vec<_> = state
                .sessions_of(username)
                .into_iter()
                .filter(|(k, _)| !evicted.contains(k))
                .collect();
            own.sort_by_key(|(_, created)| *created);
            let excess = (own.len() + 1).saturating_sub(MAX_SESSIONS_PER_USER);
            evicted.extend(own.iter().take(excess).map(|(k, _)| *k));
            let left = state.sessions.len().saturating_sub(evicted.len());
            let max_sessions = self.config.max_sessions.max(1);
            if left + 1 > max_sessions {
                let mut all: Vec<_> = state
                    .sessions
                    .iter()
                    .filter(|(k, _)| !evicted.contains(k))
                    .map(|(k, s)| (*k, s.created_ms))
                    .collect();
                all.sort_by_key(|(_, created)| *created);
                evicted.extend(all.iter().take(left + 1 - max_sessions).map(|(k, _)| *k));
            }
            (user, evicted)
        };
        user.last_login_ms = Some(now);
        let mut changes: Vec<_> = evicted
            .iter()
            .map(|k| OperatorChange::DeleteSession(*k))
            .collect();
        changes.push(OperatorChange::PutUser(user.clone()));
        changes.push(OperatorChange::PutSession(key, session.clone()));
        self.store.apply_operator_changes(&changes)?;
        let mut state = lock(&self.state);
        for k in &evicted {
            state.sessions.remove(k);
        }
        state.users.insert(username.into(), user);
        state.sessions.insert(key, session);
        Ok(NewSession {
            id,
            csrf_token,
            expires_ms,
        })
    }

    /// The live session whose cookie value is `id`, with its user; `None`
    /// if unknown, expired, or its user is gone or disabled.
    pub fn session(&self, id: &str, now: u64) -> Option<SessionInfo> {
        if id.is_empty() || id.len() > MAX_SECRET_LEN {
            return None;
        }
        let key = secret_key(id);
        let mut state = lock(&self.state);
        let session = state.sessions.get(&key)?.clone();
        if session.expires_ms <= now {
            // Deleted from the store with the next session change or at start.
            state.sessions.remove(&key);
            return None;
        }
        let user = state.users.get(&session.username)?;
        if user.disabled {
            return None;
        }
        Some(SessionInfo {
            key,
            csrf_token: session.csrf_token,
            expires_ms: session.expires_ms,
            user: user.into(),
        })
    }

    /// Ends the session stored under `key` (blocks: a store write).
    pub fn end_session(&self, key: [u8; 32]) -> Result<(), OperatorError> {
        let _writes = lock(&self.writes);
        self.store
            .apply_operator_changes(&[OperatorChange::DeleteSession(key)])?;
        lock(&self.state).sessions.remove(&key);
        Ok(())
    }

    /// How many sessions are live (in memory).
    pub fn session_count(&self) -> usize {
        lock(&self.state).sessions.len()
    }

    /// The user an API token `secret` (`myr_...`) acts as; `None` if
    /// unknown or the user is disabled. Notes the token's use.
    pub fn token_user(&self, secret: &str, now: u64) -> Option<UserView> {
        if !secret.starts_with(TOKEN_PREFIX) || secret.len() > MAX_SECRET_LEN {
            return None;
        }
        let key = secret_key(secret);
        let mut state = lock(&self.state);
        let token = state.tokens.get_mut(&key)?;
        token.last_used_ms = Some(now);
        let username = token.stored.username.clone();
        let user = state.users.get(&username)?;
        (!user.disabled).then(|| user.into())
    }

    /// `username`'s tokens, oldest first.
    pub fn tokens(&self, username: &str) -> Result<Vec<TokenView>, OperatorError> {
        let state = lock(&self.state);
        if !state.users.contains_key(username) {
            return Err(OperatorError::UserNotFound(username.into()));
        }
        let mut items: Vec<TokenView> = state
            .tokens
            .values()
            .filter(|t| t.stored.username == username)
            .map(|t| TokenView {
                id: t.stored.id.clone(),
                name: t.stored.name.clone(),
                created_ms: t.stored.created_ms,
                last_used_ms: t.last_used_ms,
            })
            .collect();
        items.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(items)
    }

    /// Creates an API token named `name` for `username` (blocks: a store
    /// write); returns it and its secret (shown once).
    pub fn create_token(
        &self,
        username: &str,
        name: &str,
        now: u64,
    ) -> Result<(TokenView, String), OperatorError> {
        validate_token_name(name)?;
        let secret = format!("{TOKEN_PREFIX}{}", b64(&random_bytes()?));
        let id_bytes = random_bytes()?;
        let id: String = id_bytes[..8].iter().map(|b| format!("{b:02x}")).collect();
        let key = secret_key(&secret);
        let _writes = lock(&self.writes);
        {
            let state = lock(&self.state);
            if !state.users.contains_key(username) {
                return Err(OperatorError::UserNotFound(username.into()));
            }
            if state.tokens_of(username).len() >= MAX_TOKENS_PER_USER {
                return Err(OperatorError::Limit(format!(
                    "at most {MAX_TOKENS_PER_USER} tokens per user"
                )));
            }
        }
        let stored = StoredToken {
            username: username.into(),
            id: id.clone(),
            name: name.into(),
            created_ms: now,
        };
        self.store
            .apply_operator_changes(&[OperatorChange::PutToken(key, stored.clone())])?;
        lock(&self.state).tokens.insert(
            key,
            TokenState {
                stored,
                last_used_ms: None,
            },
        );
        Ok((
            TokenView {
                id,
                name: name.into(),
                created_ms: now,
                last_used_ms: None,
            },
            secret,
        ))
    }

    /// Revokes `username`'s token `id` (blocks: a store write).
    pub fn revoke_token(&self, username: &str, id: &str) -> Result<(), OperatorError> {
        let _writes = lock(&self.writes);
        let key = {
            let state = lock(&self.state);
            state
                .tokens
                .iter()
                .find(|(_, t)| t.stored.username == username && t.stored.id == id)
                .map(|(k, _)| *k)
                .ok_or_else(|| OperatorError::TokenNotFound(id.into()))?
        };
        self.store
            .apply_operator_changes(&[OperatorChange::DeleteToken(key)])?;
        lock(&self.state).tokens.remove(&key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OperatorsConfig {
        OperatorsConfig {
            hash_params: HashParams::INSECURE_FAST,
            ..OperatorsConfig::default()
        }
    }

    #[test]
    fn users_sessions_tokens_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FleetStore::open(dir.path()).unwrap());
        let ops = Operators::open(store.clone(), config()).unwrap();
        let now = crate::service::now_ms();
        ops.create_user("alice", Role::Operator, "password1", 10)
            .unwrap();
        assert!(matches!(
            ops.create_user("alice", Role::Viewer, "password1", 10),
            Err(OperatorError::UserExists(_))
        ));
        assert!(
            ops.verify_login("alice", "wrong-password", None, 11)
                .is_none()
        );
        let user = ops.verify_login("alice", "password1", None, now).unwrap();
        assert_eq!(user.role, Role::Operator);
        let session = ops.begin_session("alice", now).unwrap();
        let (token, secret) = ops.create_token("alice", "ci", 13).unwrap();
        drop(ops);
        let ops = Operators::open(store.clone(), config()).unwrap();
        let found = ops.session(&session.id, now + 1).unwrap();
        assert_eq!(found.user.username, "alice");
        assert_eq!(found.user.last_login_ms, Some(now));
        assert_eq!(found.csrf_token, session.csrf_token);
        assert_eq!(ops.token_user(&secret, 15).unwrap().username, "alice");
        assert_eq!(ops.tokens("alice").unwrap()[0].id, token.id);
        // Disabling ends the session and refuses the token.
        ops.update_user("alice", None, Some(true)).unwrap();
        assert!(ops.session(&session.id, 16).is_none());
        assert!(ops.token_user(&secret, 16).is_none());
        ops.update_user("alice", None, Some(false)).unwrap();
        assert!(ops.token_user(&secret, 16).is_some());
        ops.revoke_token("alice", &token.id).unwrap();
        assert!(ops.token_user(&secret, 17).is_none());
        ops.delete_user("alice").unwrap();
        assert!(ops.user("alice").is_none());
    }

    #[test]
    fn sessions_per_user_are_capped_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FleetStore::open(dir.path()).unwrap());
        let ops = Operators::open(store, config()).unwrap();
        ops.create_user("bob", Role::Viewer, "password1", 0)
            .unwrap();
        let first = ops.begin_session("bob", 1).unwrap();
        for n in 0..MAX_SESSIONS_PER_USER as u64 {
            ops.begin_session("bob", 2 + n).unwrap();
        }
        assert_eq!(ops.session_count(), MAX_SESSIONS_PER_USER);
        assert!(ops.session(&first.id, 100).is_none());
        // Expired sessions are refused.
        let late = ops.config().session_ttl_ms + 100;
        assert!(
            ops.session(&ops.begin_session("bob", 50).unwrap().id, late)
                .is_none()
        );
    }

    #[test]
    fn sessions_in_total_are_capped_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FleetStore::open(dir.path()).unwrap());
        let ops = Operators::open(
            store.clone(),
            OperatorsConfig {
                max_sessions: 3,
                ..config()
            },
        )
        .unwrap();
        let now = crate::service::now_ms();
        let mut ids = Vec::new();
        for (n, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            ops.create_user(name, Role::Viewer, "password1", 0).unwrap();
            ids.push(ops.begin_session(name, now + n as u64).unwrap().id);
        }
        assert_eq!(ops.session_count(), 3);
        assert!(ops.session(&ids[0], now + 10).is_none(), "the oldest ended");
        assert!(
            ids[1..]
                .iter()
                .all(|id| ops.session(id, now + 10).is_some())
        );
        // Also in the store: a restart finds the same three.
        let ops = Operators::open(store, config()).unwrap();
        assert_eq!(ops.session_count(), 3);
    }

    #[test]
    fn a_damaged_user_record_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FleetStore::open(dir.path()).unwrap());
        let ops = Operators::open(store.clone(), config()).unwrap();
        ops.create_user("good", Role::Admin, "password1", 0)
            .unwrap();
        store
            .put_raw_operator_user("bad", &[1, 0xff, 0xff])
            .unwrap();
        store.put_raw_operator_user("worse", &[]).unwrap();
        let ops = Operators::open(store, config()).unwrap();
        assert!(ops.user("good").is_some());
        assert!(ops.user("bad").is_none());
        assert_eq!(ops.users(None, 10).0.len(), 1);
    }

    #[test]
    fn audit_is_capped_oldest_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let store = FleetStore::open(dir.path()).unwrap();
        let entry = |n: u64| AuditEntry {
            seq: 0,
            at_ms: n,
            actor: if n.is_multiple_of(2) {
                "even".into()
            } else {
                "odd".into()
            },
            via: "token".into(),
            role: "admin".into(),
            method: "POST".into(),
            path: format!("/api/v1/x/{n}"),
            status: 201,
            remote: "127.0.0.1:1".into(),
        };
        let batch: Vec<_> = (0..10).map(entry).collect();
        assert_eq!(
            store.append_audit(&batch, 6).unwrap(),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(store.audit_len().unwrap(), 6);
        let page = store.list_audit(None, 4, None).unwrap();
        let seqs: Vec<_> = page.items.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![10, 9, 8, 7]);
        assert_eq!(page.next, Some(7));
        let page = store.list_audit(page.next, 4, None).unwrap();
        let seqs: Vec<_> = page.items.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![6, 5]);
        assert_eq!(page.next, None);
        let odd = store.list_audit(None, 10, Some("odd")).unwrap();
        assert!(odd.items.iter().all(|e| e.actor == "odd"));
        assert_eq!(odd.items.len(), 3);
    }
}
