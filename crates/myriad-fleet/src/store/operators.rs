//! Operator accounts: tables `operator_users` (user name -> user),
//! `operator_sessions` (BLAKE3 of the session id -> session),
//! `operator_tokens` (BLAKE3 of the token -> token) and `operator_audit`
//! (sequence number, 8 bytes big-endian -> audit entry). Values are the
//! version byte, then postcard. A record that does not decode is skipped
//! (and reported) by [`FleetStore::load_operators`], never fatal.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::FleetStore;
use super::codec::{decode, encode};
use super::error::{FileName, FleetStoreError};
use super::tables::Def;
use crate::operators::{AuditEntry, Role, StoredSession, StoredToken, StoredUser};

/// A raw table open for reading.
type RawReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

const USERS: Def = TableDefinition::new("operator_users");
const SESSIONS: Def = TableDefinition::new("operator_sessions");
const TOKENS: Def = TableDefinition::new("operator_tokens");
const AUDIT: Def = TableDefinition::new("operator_audit");

#[derive(Serialize, Deserialize)]
struct UserV1 {
    role: u8,
    password_hash: String,
    disabled: bool,
    created_ms: u64,
    last_login_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct SessionV1 {
    username: String,
    csrf_token: String,
    created_ms: u64,
    expires_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct TokenV1 {
    username: String,
    id: String,
    name: String,
    created_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct AuditV1 {
    at_ms: u64,
    actor: String,
    via: String,
    role: String,
    method: String,
    path: String,
    status: u16,
    remote: String,
}

/// One change to the operator tables; [`FleetStore::apply_operator_changes`]
/// writes a list of them in one transaction.
#[derive(Debug, Clone)]
pub enum OperatorChange {
    /// Creates or replaces a user.
    PutUser(StoredUser),
    /// Deletes a user (its sessions and tokens are separate changes).
    DeleteUser(String),
    /// Creates or replaces a session under the hash of its id.
    PutSession([u8; 32], StoredSession),
    /// Deletes a session.
    DeleteSession([u8; 32]),
    /// Creates a token under the hash of its secret.
    PutToken([u8; 32], StoredToken),
    /// Deletes a token.
    DeleteToken([u8; 32]),
}

/// Everything [`FleetStore::load_operators`] read.
#[derive(Debug, Default)]
pub struct OperatorRecords {
    /// The users.
    pub users: Vec<StoredUser>,
    /// The sessions, by the hash of their id.
    pub sessions: Vec<([u8; 32], StoredSession)>,
    /// The tokens, by the hash of their secret.
    pub tokens: Vec<([u8; 32], StoredToken)>,
    /// Records that did not decode and were skipped: table, key and why.
    pub skipped: Vec<String>,
}

/// A page of the audit log, newest first.
#[derive(Debug, Default)]
pub struct AuditPage {
    /// The entries.
    pub items: Vec<AuditEntry>,
    /// The `before` cursor of the next page (older entries), if there may be more.
    pub next: Option<u64>,
}

/// Most audit rows one [`FleetStore::list_audit`] call reads (matching or not).
pub const AUDIT_SCAN_BUDGET: usize = 100_000;

fn encode_user(user: &StoredUser) -> Result<Vec<u8>, FleetStoreError> {
    encode(&UserV1 {
        role: user.role.to_byte(),
        password_hash: user.password_hash.clone(),
        disabled: user.disabled,
        created_ms: user.created_ms,
        last_login_ms: user.last_login_ms,
    })
    .map_err(FleetStoreError::Encode)
}

fn decode_user(key: &[u8], value: &[u8]) -> Result<StoredUser, String> {
    let username = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    crate::operators::validate_username(username).map_err(|e| e.to_string())?;
    let v: UserV1 = decode(value)?;
    let role = Role::from_byte(v.role).ok_or_else(|| format!("unknown role {}", v.role))?;
    Ok(StoredUser {
        username: username.to_owned(),
        role,
        password_hash: v.password_hash,
        disabled: v.disabled,
        created_ms: v.created_ms,
        last_login_ms: v.last_login_ms,
    })
}

fn hash_key(key: &[u8]) -> Result<[u8; 32], String> {
    key.try_into()
        .map_err(|_| format!("key is {} bytes, not 32", key.len()))
}

fn decode_audit(key: &[u8], value: &[u8]) -> Result<AuditEntry, String> {
    let seq = u64::from_be_bytes(
        key.try_into()
            .map_err(|_| format!("key is {} bytes, not 8", key.len()))?,
    );
    let v: AuditV1 = decode(value)?;
    Ok(AuditEntry {
        seq,
        at_ms: v.at_ms,
        actor: v.actor,
        via: v.via,
        role: v.role,
        method: v.method,
        path: v.path,
        status: v.status,
        remote: v.remote,
    })
}

/// Opens a table for reading; a table never written reads as empty (`None`).
fn read_opt(
    txn: &redb::ReadTransaction,
    def: Def,
    file: &FileName,
) -> Result<Option<RawReadTable>, FleetStoreError> {
    match txn.open_table(def) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(file.engine(e)),
    }
}

fn apply(
    txn: &WriteTransaction,
    file: &FileName,
    changes: &[OperatorChange],
) -> Result<(), FleetStoreError> {
    let mut users = txn.open_table(USERS).map_err(|e| file.engine(e))?;
    let mut sessions = txn.open_table(SESSIONS).map_err(|e| file.engine(e))?;
    let mut tokens = txn.open_table(TOKENS).map_err(|e| file.engine(e))?;
    for change in changes {
        match change {
            OperatorChange::PutUser(user) => {
                let value = encode_user(user)?;
                users
                    .insert(user.username.as_bytes(), value.as_slice())
                    .map_err(|e| file.engine(e))?;
            }
            OperatorChange::DeleteUser(name) => {
                users.remove(name.as_bytes()).map_err(|e| file.engine(e))?;
            }
            OperatorChange::PutSession(hash, session) => {
                let value = encode(&SessionV1 {
                    username: session.username.clone(),
                    csrf_token: session.csrf_token.clone(),
                    created_ms: session.created_ms,
                    expires_ms: session.expires_ms,
                })
                .map_err(FleetStoreError::Encode)?;
                sessions
                    .insert(hash.as_slice(), value.as_slice())
                    .map_err(|e| file.engine(e))?;
            }
            OperatorChange::DeleteSession(hash) => {
                sessions
                    .remove(hash.as_slice())
                    .map_err(|e| file.engine(e))?;
            }
            OperatorChange::PutToken(hash, token) => {
                let value = encode(&TokenV1 {
                    username: token.username.clone(),
                    id: token.id.clone(),
                    name: token.name.clone(),
                    created_ms: token.created_ms,
                })
                .map_err(FleetStoreError::Encode)?;
                tokens
                    .insert(hash.as_slice(), value.as_slice())
                    .map_err(|e| file.engine(e))?;
            }
            OperatorChange::DeleteToken(hash) => {
                tokens.remove(hash.as_slice()).map_err(|e| file.engine(e))?;
            }
        }
    }
    Ok(())
}

impl FleetStore {
    /// Writes `changes` in one transaction (committed with `fsync`).
    pub fn apply_operator_changes(
        &self,
        changes: &[OperatorChange],
    ) -> Result<(), FleetStoreError> {
        let file = &self.file;
        let txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        match apply(&txn, file, changes) {
            Ok(()) => txn.commit().map_err(|e| file.engine(e)),
            Err(error) => {
                let _ = txn.abort();
                Err(error)
            }
        }
    }

    /// Every operator user, session and token. A record that does not decode
    /// is left out and described in [`OperatorRecords::skipped`].
    pub fn load_operators(&self) -> Result<OperatorRecords, FleetStoreError> {
        let file = &self.file;
        self.read(|txn| {
            let mut out = OperatorRecords::default();
            let skip = |table: &str, key: &[u8], why: String| {
                format!(
                    "table {table}, key {:?}: {why}",
                    String::from_utf8_lossy(key)
                )
            };
            let mut skipped = Vec::new();
            if let Some(table) = read_opt(txn, USERS, file)? {
                for row in table.iter().map_err(|e| file.engine(e))? {
                    let (key, value) = row.map_err(|e| file.engine(e))?;
                    match decode_user(key.value(), value.value()) {
                        Ok(user) => out.users.push(user),
                        Err(why) => skipped.push(skip("operator_users", key.value(), why)),
                    }
                }
            }
            if let Some(table) = read_opt(txn, SESSIONS, file)? {
                for row in table.iter().map_err(|e| file.engine(e))? {
                    let (key, value) = row.map_err(|e| file.engine(e))?;
                    let decoded = hash_key(key.value()).and_then(|hash| {
                        let v: SessionV1 = decode(value.value())?;
                        Ok((
                            hash,
                            StoredSession {
                                username: v.username,
                                csrf_token: v.csrf_token,
                                created_ms: v.created_ms,
                                expires_ms: v.expires_ms,
                            },
                        ))
                    });
                    match decoded {
                        Ok(session) => out.sessions.push(session),
                        Err(why) => skipped.push(skip("operator_sessions", key.value(), why)),
                    }
                }
            }
            if let Some(table) = read_opt(txn, TOKENS, file)? {
                for row in table.iter().map_err(|e| file.engine(e))? {
                    let (key, value) = row.map_err(|e| file.engine(e))?;
                    let decoded = hash_key(key.value()).and_then(|hash| {
                        let v: TokenV1 = decode(value.value())?;
                        Ok((
                            hash,
                            StoredToken {
                                username: v.username,
                                id: v.id,
                                name: v.name,
                                created_ms: v.created_ms,
                            },
                        ))
                    });
                    match decoded {
                        Ok(token) => out.tokens.push(token),
                        Err(why) => skipped.push(skip("operator_tokens", key.value(), why)),
                    }
                }
            }
            out.skipped = skipped;
            Ok(out)
        })
    }

    /// Appends `entries` to the audit log (their `seq` is assigned here,
    /// following the last stored one) and trims the oldest entries beyond
    /// `max_entries`, in one transaction. Returns the sequence numbers given.
    pub fn append_audit(
        &self,
        entries: &[AuditEntry],
        max_entries: u64,
    ) -> Result<Vec<u64>, FleetStoreError> {
        let file = &self.file;
        let txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        let result = (|| {
            let mut table = txn.open_table(AUDIT).map_err(|e| file.engine(e))?;
            let mut next = match table.last().map_err(|e| file.engine(e))? {
                Some((key, _)) => seq_of(key.value()).saturating_add(1),
                None => 1,
            };
            let mut seqs = Vec::with_capacity(entries.len());
            for entry in entries {
                let value = encode(&AuditV1 {
                    at_ms: entry.at_ms,
                    actor: entry.actor.clone(),
                    via: entry.via.clone(),
                    role: entry.role.clone(),
                    method: entry.method.clone(),
                    path: entry.path.clone(),
                    status: entry.status,
                    remote: entry.remote.clone(),
                })
                .map_err(FleetStoreError::Encode)?;
                table
                    .insert(next.to_be_bytes().as_slice(), value.as_slice())
                    .map_err(|e| file.engine(e))?;
                seqs.push(next);
                next += 1;
            }
            // Sequence numbers are contiguous (appended here, trimmed from
            // the front only), so the count is `next - first`.
            let max_entries = max_entries.max(1);
            loop {
                let first = match table.first().map_err(|e| file.engine(e))? {
                    Some((key, _)) => seq_of(key.value()),
                    None => break,
                };
                if next.saturating_sub(first) <= max_entries {
                    break;
                }
                table.pop_first().map_err(|e| file.engine(e))?;
            }
            Ok(seqs)
        })();
        match result {
            Ok(seqs) => {
                txn.commit().map_err(|e| file.engine(e))?;
                Ok(seqs)
            }
            Err(error) => {
                let _ = txn.abort();
                Err(error)
            }
        }
    }

    /// Audit entries newest first: those with `seq < before` (all if
    /// `None`), of `actor` if given, at most `limit`. Reads at most
    /// [`AUDIT_SCAN_BUDGET`] rows; a damaged row is skipped.
    pub fn list_audit(
        &self,
        before: Option<u64>,
        limit: usize,
        actor: Option<&str>,
    ) -> Result<AuditPage, FleetStoreError> {
        let file = &self.file;
        self.read(|txn| {
            let mut page = AuditPage::default();
            let Some(table) = read_opt(txn, AUDIT, file)? else {
                return Ok(page);
            };
            let end = before.unwrap_or(u64::MAX).to_be_bytes();
            let range = table
                .range::<&[u8]>(..end.as_slice())
                .map_err(|e| file.engine(e))?;
            let mut scanned = 0usize;
            for row in range.rev() {
                let (key, value) = row.map_err(|e| file.engine(e))?;
                scanned += 1;
                let seq = seq_of(key.value());
                match decode_audit(key.value(), value.value()) {
                    Ok(entry) if actor.is_none_or(|a| a == entry.actor) => {
                        page.items.push(entry);
                        if page.items.len() >= limit {
                            page.next = Some(seq);
                            return Ok(page);
                        }
                    }
                    Ok(_) => {}
                    Err(why) => {
                        tracing::warn!(seq, %why, "skipping a damaged audit entry");
                    }
                }
                if scanned >= AUDIT_SCAN_BUDGET {
                    page.next = Some(seq);
                    return Ok(page);
                }
            }
            Ok(page)
        })
    }

    /// How many entries the audit log holds.
    pub fn audit_len(&self) -> Result<u64, FleetStoreError> {
        let file = &self.file;
        self.read(|txn| {
            let Some(table) = read_opt(txn, AUDIT, file)? else {
                return Ok(0);
            };
            let first = table.first().map_err(|e| file.engine(e))?;
            let last = table.last().map_err(|e| file.engine(e))?;
            Ok(match (first, last) {
                (Some((a, _)), Some((b, _))) => {
                    seq_of(b.value()).saturating_sub(seq_of(a.value())) + 1
                }
                _ => 0,
            })
        })
    }

    /// Writes raw bytes as operator user `name`'s record (tests of damaged records).
    #[doc(hidden)]
    pub fn put_raw_operator_user(&self, name: &str, value: &[u8]) -> Result<(), FleetStoreError> {
        let file = &self.file;
        let txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        {
            let mut table = txn.open_table(USERS).map_err(|e| file.engine(e))?;
            table
                .insert(name.as_bytes(), value)
                .map_err(|e| file.engine(e))?;
        }
        txn.commit().map_err(|e| file.engine(e))
    }
}

/// The sequence number of an audit key (0 for a malformed key).
fn seq_of(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}
