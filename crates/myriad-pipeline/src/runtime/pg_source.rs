//! The PostgreSQL source: a query streamed once through a server-side cursor, or a table
//! followed by an increasing key. Each row is a record whose payload is a JSON object of its
//! columns (types: [`super::pg_value`]).
//!
//! ```toml
//! source = { type = "postgres", url = "postgres://myriad@127.0.0.1:5432/iot",
//!            query = "SELECT id, device, t FROM readings WHERE day = '2026-12-05'" }
//! source = { type = "postgres", url = "...", table = "readings", key = "id",
//!            columns = ["device", "t"], poll_ms = 1000 }
//! ```
//!
//! # Query (runs once)
//!
//! `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`, `DECLARE ... NO SCROLL CURSOR FOR
//! <query>`, then `FETCH fetch_rows` as the pipeline has room (at most `in_flight` rows not
//! done): memory stays within `fetch_rows` rows whatever the result's size. Records have the
//! topic `postgres/query`. When the last row is done the checkpoint notes the query as
//! finished and the pipeline's state becomes `finished`; it is not run again (also not after a
//! restart) unless the query text changes or the checkpoint file is deleted. A failure
//! mid-stream (the connection lost) ends the run as failed; the restart runs the query again
//! from its first row: at least once (with a PostgreSQL sink and a `key`, exactly once). The
//! transaction stays open while the query is read (a stalled sink holds back vacuum).
//!
//! # Follow
//!
//! `SELECT key, <columns or *> FROM table WHERE key > $last ORDER BY key LIMIT fetch_rows`,
//! again after `poll_ms` when nothing is new. Records have the topic `postgres/{table}`. The
//! checkpoint holds the last key whose row and every row before it are done (the key's value
//! as the server sent it, bound back as the parameter of the same type): a restart (or kill
//! -9) reads again at most the rows handed out and not done. The key must be unique and only
//! grow (an identity column, a sequence, a commit timestamp); a row committed later with a
//! smaller key than one already read (concurrent transactions drawing from a sequence) is not
//! seen. Rows with a NULL key are skipped.
//!
//! # Errors
//!
//! A row that does not convert (bad UTF-8, a value this side does not read), or whose JSON
//! is larger than `max_row_bytes`, goes to the dead-letter file with the reason; the rest go
//! on. A column of a type not read here ([`super::pg_value`]) fails the read with the
//! column's name (cast it in the query). Connection errors are retried with backoff.
//!
//! # Limits
//!
//! | bound | value |
//! |---|---|
//! | `url` | [`super::postgres::MAX_URL_BYTES`]; no TLS |
//! | `query` | 1 ..= [`MAX_QUERY_BYTES`] bytes, one statement |
//! | `table`, `key`, each column | 1 ..= [`super::postgres::MAX_IDENT_BYTES`] bytes, no NUL; `table` also without `/`, `+`, `#` (it is a topic level) |
//! | `columns` | at most [`super::postgres::MAX_COLUMNS`] |
//! | `fetch_rows` | 1 ..= [`MAX_FETCH_ROWS`] |
//! | `poll_ms` | [`MIN_POLL_MS`] ..= [`MAX_POLL_MS`] |
//! | `max_row_bytes` | 1 ..= [`MAX_ROW_BYTES`] (a row's JSON) |
//! | each statement | `statement_timeout` = [`super::postgres::STATEMENT_TIMEOUT`], and [`READ_TIMEOUT`] on this side |

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::pg_value::{Decoder, Raw, TimeFormat, decoder_for, row_object};
use super::postgres::{
    MAX_COLUMNS, STATEMENT_TIMEOUT, check_ident, connect_config, describe, quote,
};
use super::reader::{Produced, Read, Reader, fingerprint, load_checkpoint};

/// The longest `query`, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// The largest `fetch_rows`.
pub const MAX_FETCH_ROWS: usize = 10_000;
/// The shortest `poll_ms`.
pub const MIN_POLL_MS: u64 = 10;
/// The longest `poll_ms`: one hour.
pub const MAX_POLL_MS: u64 = 3_600_000;
/// The largest `max_row_bytes`: 16 MiB.
pub const MAX_ROW_BYTES: usize = 16 * 1024 * 1024;
/// How long one statement (connect included) may take on this side before the connection is
/// dropped and the read retried.
pub const READ_TIMEOUT: Duration = Duration::from_secs(40);

/// What the source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgSourceMode {
    /// A query, streamed once.
    Query {
        /// The `SELECT` (or `VALUES`, `TABLE`, `WITH ... SELECT`).
        query: String,
    },
    /// A table followed by an increasing key.
    Follow {
        /// The table (a plain name on the `search_path`; quoted).
        table: String,
        /// The increasing key column.
        key: String,
        /// The columns in each record; empty: every column (`*`).
        columns: Vec<String>,
    },
}

/// `source = { type = "postgres", ... }`, validated by [`PostgresSourceConfig::validate`].
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresSourceConfig {
    /// `postgres://user[:password]@host[:port]/db[?...]`.
    pub url: String,
    /// A query or a followed table.
    pub mode: PgSourceMode,
    /// Rows per `FETCH` / `SELECT`.
    pub fetch_rows: usize,
    /// Follow: how long to wait when nothing is new.
    pub poll_ms: u64,
    /// A row whose JSON is longer is dead-lettered.
    pub max_row_bytes: usize,
    /// How timestamps become JSON.
    pub timestamps: TimeFormat,
    /// Where the position is kept.
    pub checkpoint: PathBuf,
}

impl fmt::Debug for PostgresSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PostgresSourceConfig")
            .field("url", &"<redacted>")
            .field("mode", &self.mode)
            .field("fetch_rows", &self.fetch_rows)
            .field("poll_ms", &self.poll_ms)
            .finish_non_exhaustive()
    }
}

impl PostgresSourceConfig {
    /// Checks the URL, names and ranges; the error starts with the key (`fetch_rows: ...`).
    pub fn validate(&self) -> Result<(), String> {
        let settings = connect_config(&self.url)?;
        if settings.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err("url: sslmode=require: TLS is not supported by the PostgreSQL source yet (the sink has it)".into());
        }
        if !(1..=MAX_FETCH_ROWS).contains(&self.fetch_rows) {
            return Err(format!(
                "fetch_rows: {} is out of range (1 ..= {MAX_FETCH_ROWS})",
                self.fetch_rows
            ));
        }
        if !(MIN_POLL_MS..=MAX_POLL_MS).contains(&self.poll_ms) {
            return Err(format!(
                "poll_ms: {} is out of range ({MIN_POLL_MS} ..= {MAX_POLL_MS})",
                self.poll_ms
            ));
        }
        if !(1..=MAX_ROW_BYTES).contains(&self.max_row_bytes) {
            return Err(format!(
                "max_row_bytes: {} is out of range (1 ..= {MAX_ROW_BYTES})",
                self.max_row_bytes
            ));
        }
        match &self.mode {
            PgSourceMode::Query { query } => {
                if query.trim().is_empty() || query.len() > MAX_QUERY_BYTES {
                    return Err(format!(
                        "query: {} bytes, must be 1 to {MAX_QUERY_BYTES}",
                        query.len()
                    ));
                }
                if query.contains('\0') {
                    return Err("query: contains NUL".to_owned());
                }
            }
            PgSourceMode::Follow {
                table,
                key,
                columns,
            } => {
                check_ident(table).map_err(|e| format!("table: {e}"))?;
                if table.contains(['/', '+', '#']) {
                    return Err(format!(
                        "table: {table:?} is a topic level here: no '/', '+' or '#'"
                    ));
                }
                check_ident(key).map_err(|e| format!("key: {e}"))?;
                if columns.len() > MAX_COLUMNS {
                    return Err(format!(
                        "columns: {} columns, at most {MAX_COLUMNS}",
                        columns.len()
                    ));
                }
                for (i, column) in columns.iter().enumerate() {
                    check_ident(column).map_err(|e| format!("columns[{i}]: {e}"))?;
                    if columns[..i].contains(column) {
                        return Err(format!("columns[{i}]: {column:?} is listed twice"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The records' topic: `postgres/query` or `postgres/{table}`.
    pub fn topic(&self) -> String {
        match &self.mode {
            PgSourceMode::Query { .. } => "postgres/query".to_owned(),
            PgSourceMode::Follow { table, .. } => format!("postgres/{table}"),
        }
    }

    /// What the checkpoint belongs to: the query, or the table and key.
    fn fingerprint(&self) -> String {
        match &self.mode {
            PgSourceMode::Query { query } => fingerprint(&["query", query]),
            PgSourceMode::Follow { table, key, .. } => fingerprint(&["follow", table, key]),
        }
    }
}

/// A value bound as a parameter exactly as the server sent it (the followed key).
#[derive(Debug)]
struct RawParam(Vec<u8>);

impl ToSql for RawParam {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

/// An open connection.
struct Conn {
    client: Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn timed<T>(
    what: &str,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(READ_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", describe(&e))),
        Err(_) => Err(format!(
            "{what}: no answer within {} s",
            READ_TIMEOUT.as_secs()
        )),
    }
}

async fn connect(config: &PostgresSourceConfig) -> Result<Conn, String> {
    let settings = connect_config(&config.url)?;
    let (client, connection) = timed("connect", settings.connect(NoTls)).await?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "PostgreSQL source connection ended");
        }
    });
    let ms = STATEMENT_TIMEOUT.as_millis();
    timed(
        "set",
        client.batch_execute(&format!("SET statement_timeout = {ms}")),
    )
    .await?;
    Ok(Conn { client, driver })
}

/// The names and decoders of `columns[skip..]`; the error names the column.
fn shape(statement: &Statement, skip: usize) -> Result<(Vec<String>, Vec<Decoder>), String> {
    let mut names = Vec::new();
    let mut decoders = Vec::new();
    for column in statement.columns().iter().skip(skip) {
        let decoder =
            decoder_for(column.type_()).map_err(|e| format!("column {:?}: {e}", column.name()))?;
        names.push(column.name().to_owned());
        decoders.push(decoder);
    }
    Ok((names, decoders))
}

/// A row's columns from `skip` on as a JSON object payload, or the reason it cannot be one.
fn row_payload(
    row: &Row,
    skip: usize,
    names: &[String],
    decoders: &[Decoder],
    config: &PostgresSourceConfig,
) -> Result<Bytes, String> {
    let mut values = Vec::with_capacity(names.len());
    for i in skip..row.len() {
        let raw: Option<Raw<'_>> = row
            .try_get(i)
            .map_err(|e| format!("column {i}: {}", describe(&e)))?;
        values.push(raw.map(|r| r.0));
    }
    let object = row_object(names, decoders, &values, config.timestamps)?;
    let json = Value::Object(object).to_string();
    if json.len() > config.max_row_bytes {
        return Err(format!(
            "row of {} bytes as JSON, longer than max_row_bytes ({})",
            json.len(),
            config.max_row_bytes
        ));
    }
    Ok(Bytes::from(json))
}

/// A dead letter's payload: what is known of a row that did not convert.
fn bad_row(what: Value) -> Bytes {
    Bytes::from(what.to_string())
}

/// The query mode (see the module docs). Token: the row's index in the result.
pub(crate) struct QueryReader {
    config: PostgresSourceConfig,
    query: String,
    fingerprint: String,
    conn: Option<Conn>,
    fetch: Option<(Statement, Vec<String>, Vec<Decoder>)>,
    buffer: VecDeque<Row>,
    /// Rows handed out.
    handed_out: u64,
    /// Rows done (a prefix).
    done: u64,
    /// The cursor is exhausted (or the checkpoint says the query ran).
    exhausted: bool,
    /// Finished in an earlier run.
    already: bool,
}

impl QueryReader {
    /// A reader for `config` (query mode), resuming its checkpoint. Blocking: reads the
    /// checkpoint file.
    pub(crate) fn new(config: PostgresSourceConfig) -> QueryReader {
        let query = match &config.mode {
            PgSourceMode::Query { query } => query.clone(),
            PgSourceMode::Follow { .. } => String::new(),
        };
        let fingerprint = config.fingerprint();
        let already = load_checkpoint(&config.checkpoint)
            .is_some_and(|c| c["fingerprint"] == fingerprint.as_str() && c["finished"] == true);
        QueryReader {
            config,
            query,
            fingerprint,
            conn: None,
            fetch: None,
            buffer: VecDeque::new(),
            handed_out: 0,
            done: 0,
            exhausted: already,
            already,
        }
    }

    async fn open(&mut self) -> Result<(), String> {
        let conn = connect(&self.config).await?;
        timed(
            "begin",
            conn.client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        )
        .await?;
        // Extended protocol: one statement only (no `; ...` after the query).
        timed(
            "query",
            conn.client.execute(
                &format!("DECLARE myriad_source NO SCROLL CURSOR FOR {}", self.query),
                &[],
            ),
        )
        .await?;
        let fetch = timed(
            "fetch",
            conn.client.prepare(&format!(
                "FETCH FORWARD {} FROM myriad_source",
                self.config.fetch_rows
            )),
        )
        .await?;
        let (names, decoders) = shape(&fetch, 0)?;
        self.fetch = Some((fetch, names, decoders));
        self.conn = Some(conn);
        Ok(())
    }
}

impl Reader for QueryReader {
    type Token = u64;

    async fn read(&mut self, max: usize) -> Result<Read<u64>, String> {
        if self.exhausted {
            if self.already {
                tracing::info!(checkpoint = %self.config.checkpoint.display(), "postgres source: the query ran to its end before; not running it again");
            }
            return Ok(Read::Finished);
        }
        if self.buffer.is_empty() {
            if self.conn.is_none() {
                if self.handed_out > 0 {
                    // The cursor is gone with its connection: the run ends, the restart
                    // reads from the first row.
                    return Ok(Read::Failed(
                        "the connection was lost mid-query; running it again".to_owned(),
                    ));
                }
                if let Err(e) = self.open().await {
                    self.conn = None;
                    return Err(e);
                }
            }
            let (Some(conn), Some((fetch, _, _))) = (&self.conn, &self.fetch) else {
                return Err("not connected".to_owned());
            };
            let rows = match timed("fetch", conn.client.query(fetch, &[])).await {
                Ok(rows) => rows,
                Err(e) => {
                    self.conn = None;
                    return Err(e);
                }
            };
            if rows.is_empty() {
                if let Some(conn) = self.conn.take() {
                    let _ = timed("commit", conn.client.batch_execute("COMMIT")).await;
                }
                self.exhausted = true;
                return Ok(Read::Finished);
            }
            self.buffer.extend(rows);
        }
        let Some((_, names, decoders)) = &self.fetch else {
            return Err("not connected".to_owned());
        };
        let topic = self.config.topic();
        let n = max.min(self.buffer.len());
        let mut out = Vec::with_capacity(n);
        for row in self.buffer.drain(..n) {
            let index = self.handed_out;
            self.handed_out += 1;
            let (payload, error) = match row_payload(&row, 0, names, decoders, &self.config) {
                Ok(payload) => (payload, None),
                Err(e) => (bad_row(serde_json::json!({"row": index})), Some(e)),
            };
            out.push(Produced {
                token: index,
                topic: topic.clone(),
                payload,
                error,
            });
        }
        Ok(Read::Records(out))
    }

    fn done(&mut self, token: u64) {
        self.done = token + 1;
    }

    fn checkpoint(&self) -> Value {
        serde_json::json!({
            "fingerprint": self.fingerprint,
            "rows_done": self.done,
            "finished": self.already || (self.exhausted && self.done == self.handed_out),
        })
    }
}

/// The follow mode's statements and the record's columns.
struct Prepared {
    /// The first read (no key yet).
    first: Statement,
    /// The next reads (`key > $1`).
    next: Statement,
    names: Vec<String>,
    decoders: Vec<Decoder>,
}

/// The follow mode (see the module docs). Token: the row's key (raw, and as JSON).
pub(crate) struct FollowReader {
    config: PostgresSourceConfig,
    fingerprint: String,
    conn: Option<Conn>,
    /// The first read (no key yet), the next reads (`key > $1`), the key's type, the
    /// record's columns.
    statements: Option<Prepared>,
    key_decoder: Option<Decoder>,
    buffer: VecDeque<Row>,
    /// The key of the last row handed out.
    read: Option<Vec<u8>>,
    /// The key of the last row done (a prefix), and its JSON.
    done: Option<(Vec<u8>, Value)>,
    /// The key's type oid the checkpoint was written with.
    checkpoint_type: Option<u32>,
}

impl FollowReader {
    /// A reader for `config` (follow mode), resuming its checkpoint. Blocking: reads the
    /// checkpoint file.
    pub(crate) fn new(config: PostgresSourceConfig) -> FollowReader {
        let fingerprint = config.fingerprint();
        let mut done = None;
        let mut checkpoint_type = None;
        if let Some(c) = load_checkpoint(&config.checkpoint) {
            let last = c["last"]
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
            if c["fingerprint"] == fingerprint.as_str()
                && let Some(last) = last
            {
                checkpoint_type = c["key_type"].as_u64().and_then(|t| u32::try_from(t).ok());
                done = Some((last, c["last_value"].clone()));
            } else {
                tracing::warn!(checkpoint = %config.checkpoint.display(), "postgres source: the checkpoint is for another table or key; reading from the start");
            }
        }
        FollowReader {
            config,
            fingerprint,
            conn: None,
            statements: None,
            key_decoder: None,
            buffer: VecDeque::new(),
            read: done.as_ref().map(|(raw, _)| raw.clone()),
            done,
            checkpoint_type,
        }
    }

    async fn open(&mut self) -> Result<(), String> {
        let PgSourceMode::Follow {
            table,
            key,
            columns,
        } = &self.config.mode
        else {
            return Err("not a followed table".to_owned());
        };
        let conn = connect(&self.config).await?;
        let (table, key) = (quote(table), quote(key));
        let list = if columns.is_empty() {
            "*".to_owned()
        } else {
            columns
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let limit = self.config.fetch_rows;
        let first = timed(
            "prepare",
            conn.client.prepare(&format!(
                "SELECT {key}, {list} FROM {table} WHERE {key} IS NOT NULL ORDER BY {key} LIMIT {limit}"
            )),
        )
        .await?;
        let next = timed(
            "prepare",
            conn.client.prepare(&format!(
                "SELECT {key}, {list} FROM {table} WHERE {key} > $1 ORDER BY {key} LIMIT {limit}"
            )),
        )
        .await?;
        let key_type = first
            .columns()
            .first()
            .map(|c| c.type_().clone())
            .ok_or("no key column")?;
        let key_decoder = decoder_for(&key_type).map_err(|e| format!("key {key}: {e}"))?;
        if let Some(oid) = self.checkpoint_type
            && oid != key_type.oid()
            && self.done.is_some()
        {
            tracing::warn!(checkpoint = %self.config.checkpoint.display(), "postgres source: the key's type changed; reading from the start");
            self.done = None;
            self.read = None;
        }
        self.checkpoint_type = Some(key_type.oid());
        let (names, decoders) = shape(&first, 1)?;
        self.key_decoder = Some(key_decoder);
        self.statements = Some(Prepared {
            first,
            next,
            names,
            decoders,
        });
        self.conn = Some(conn);
        Ok(())
    }
}

impl Reader for FollowReader {
    type Token = (Vec<u8>, Value);

    async fn read(&mut self, max: usize) -> Result<Read<Self::Token>, String> {
        if self.buffer.is_empty() {
            if self.conn.as_ref().is_none_or(|c| c.client.is_closed())
                && let Err(e) = self.open().await
            {
                self.conn = None;
                return Err(e);
            }
            let (Some(conn), Some(Prepared { first, next, .. })) = (&self.conn, &self.statements)
            else {
                return Err("not connected".to_owned());
            };
            let rows = match &self.read {
                None => timed("select", conn.client.query(first, &[])).await,
                Some(last) => {
                    let param = RawParam(last.clone());
                    timed("select", conn.client.query(next, &[&param])).await
                }
            };
            match rows {
                Ok(rows) if rows.is_empty() => return Ok(Read::Idle),
                Ok(rows) => self.buffer.extend(rows),
                Err(e) => {
                    self.conn = None;
                    return Err(e);
                }
            }
        }
        let (
            Some(Prepared {
                names, decoders, ..
            }),
            Some(key_decoder),
        ) = (&self.statements, &self.key_decoder)
        else {
            return Err("not connected".to_owned());
        };
        let topic = self.config.topic();
        let n = max.min(self.buffer.len());
        let mut out = Vec::with_capacity(n);
        for row in self.buffer.drain(..n) {
            let key: Option<Raw<'_>> = row.try_get(0).map_err(|e| describe(&e))?;
            let Some(Raw(key)) = key else { continue };
            let key = key.to_vec();
            let key_json = super::pg_value::decode(key_decoder, &key, self.config.timestamps)
                .unwrap_or(Value::Null);
            self.read = Some(key.clone());
            let (payload, error) = match row_payload(&row, 1, names, decoders, &self.config) {
                Ok(payload) => (payload, None),
                Err(e) => (bad_row(serde_json::json!({"key": key_json})), Some(e)),
            };
            out.push(Produced {
                token: (key, key_json),
                topic: topic.clone(),
                payload,
                error,
            });
        }
        if out.is_empty() {
            return Ok(Read::Idle);
        }
        Ok(Read::Records(out))
    }

    fn done(&mut self, token: Self::Token) {
        self.done = Some(token);
    }

    fn checkpoint(&self) -> Value {
        match &self.done {
            Some((raw, value)) => serde_json::json!({
                "fingerprint": self.fingerprint,
                "key_type": self.checkpoint_type,
                "last": base64::engine::general_purpose::STANDARD.encode(raw),
                "last_value": value,
            }),
            None => serde_json::json!({"fingerprint": self.fingerprint}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow() -> PostgresSourceConfig {
        PostgresSourceConfig {
            url: "postgres://u@127.0.0.1:5432/db".into(),
            mode: PgSourceMode::Follow {
                table: "readings".into(),
                key: "id".into(),
                columns: vec![],
            },
            fetch_rows: 1000,
            poll_ms: 1000,
            max_row_bytes: 1024,
            timestamps: TimeFormat::Rfc3339,
            checkpoint: PathBuf::from("/nonexistent/x.checkpoint"),
        }
    }

    #[test]
    fn config_bounds_name_the_key() {
        assert!(follow().validate().is_ok());
        let bad = |f: &dyn Fn(&mut PostgresSourceConfig)| {
            let mut c = follow();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(&|c| c.fetch_rows = 0).starts_with("fetch_rows:"));
        assert!(bad(&|c| c.fetch_rows = MAX_FETCH_ROWS + 1).starts_with("fetch_rows:"));
        assert!(bad(&|c| c.poll_ms = 9).starts_with("poll_ms:"));
        assert!(bad(&|c| c.max_row_bytes = MAX_ROW_BYTES + 1).starts_with("max_row_bytes:"));
        assert!(bad(&|c| c.url = "mysql://x".into()).starts_with("url:"));
        let mode = |m: PgSourceMode| move |c: &mut PostgresSourceConfig| c.mode = m.clone();
        assert!(
            bad(&mode(PgSourceMode::Query {
                query: "x".repeat(MAX_QUERY_BYTES + 1)
            }))
            .starts_with("query:")
        );
        assert!(bad(&mode(PgSourceMode::Query { query: " ".into() })).starts_with("query:"));
        let follow_with = |table: &str, key: &str, columns: &[&str]| PgSourceMode::Follow {
            table: table.into(),
            key: key.into(),
            columns: columns.iter().map(|s| s.to_string()).collect(),
        };
        assert!(bad(&mode(follow_with("a/b", "id", &[]))).starts_with("table:"));
        assert!(bad(&mode(follow_with("t", "", &[]))).starts_with("key:"));
        assert!(bad(&mode(follow_with("t", "id", &["a", "a"]))).starts_with("columns[1]:"));
        assert!(bad(&mode(follow_with("t", "id", &[&"c".repeat(64)]))).starts_with("columns[0]:"));
    }

    #[test]
    fn topics_and_fingerprints() {
        let mut c = follow();
        assert_eq!(c.topic(), "postgres/readings");
        let f = c.fingerprint();
        c.mode = PgSourceMode::Query {
            query: "SELECT 1".into(),
        };
        assert_eq!(c.topic(), "postgres/query");
        assert_ne!(c.fingerprint(), f);
    }

    #[test]
    fn follow_checkpoint_resumes_only_its_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = follow();
        config.checkpoint = dir.path().join("p.checkpoint");
        let mut reader = FollowReader::new(config.clone());
        assert!(reader.read.is_none());
        reader.checkpoint_type = Some(20);
        reader.done((42i64.to_be_bytes().to_vec(), Value::from(42)));
        super::super::reader::save_checkpoint(&config.checkpoint, &reader.checkpoint()).unwrap();
        let again = FollowReader::new(config.clone());
        assert_eq!(again.read, Some(42i64.to_be_bytes().to_vec()));
        assert_eq!(again.checkpoint_type, Some(20));
        // Another key column: the checkpoint is not this one's.
        config.mode = PgSourceMode::Follow {
            table: "readings".into(),
            key: "seq".into(),
            columns: vec![],
        };
        assert!(FollowReader::new(config).read.is_none());
    }

    #[test]
    fn a_query_is_finished_only_when_every_row_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = follow();
        config.mode = PgSourceMode::Query {
            query: "SELECT 1".into(),
        };
        config.checkpoint = dir.path().join("q.checkpoint");
        let mut reader = QueryReader::new(config.clone());
        assert!(!reader.exhausted);
        reader.handed_out = 3;
        reader.exhausted = true;
        reader.done(1);
        assert_eq!(reader.checkpoint()["finished"], false);
        reader.done(2);
        assert_eq!(reader.checkpoint()["finished"], true);
        super::super::reader::save_checkpoint(&config.checkpoint, &reader.checkpoint()).unwrap();
        assert!(QueryReader::new(config.clone()).already);
        config.mode = PgSourceMode::Query {
            query: "SELECT 2".into(),
        };
        assert!(!QueryReader::new(config).already);
    }
}
