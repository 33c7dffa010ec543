//! The PostgreSQL sink: each batch goes to a table by binary `COPY`, in one transaction.
//!
//! ```toml
//! sink = { type = "postgres", url = "postgres://myriad@127.0.0.1:5432/iot", table = "readings",
//!          columns = ["device", "seq", "t"], key = ["device", "seq"] }
//! ```
//!
//! # How a batch is written
//!
//! - The connection is opened on the first write (and again after any failure), with
//!   [`CONNECT_TIMEOUT`] and `statement_timeout` = [`STATEMENT_TIMEOUT`]; a whole batch
//!   must finish within [`WRITE_TIMEOUT`]. The table's columns and their types are read
//!   from the catalog (`pg_attribute`) once per connection.
//! - Each output field is converted to its column's type here ([`convert`]); a record with
//!   a value that does not convert is refused (dead letter) and the rest of the batch goes
//!   on. Columns: `columns` when set (missing fields are NULL, other fields ignored), else
//!   the output's fields (a field that names no column refuses the record).
//! - Without `key` and when every column has a binary encoding here: `COPY target (...)
//!   FROM STDIN (FORMAT binary)` in a transaction. At least once: a batch redelivered after
//!   a crash between the commit and the acknowledgement is written twice.
//! - With `key` (or when a column is converted by a text cast, e.g. `numeric`, `date`, an
//!   enum or a domain): `COPY` into a session temporary staging table
//!   (`CREATE TEMP TABLE ... ON COMMIT DELETE ROWS AS SELECT <columns> FROM target WITH NO
//!   DATA`: same types, no constraints, text for cast columns), then `INSERT INTO target
//!   (...) SELECT ... FROM staging [ON CONFLICT (key) DO NOTHING]` and `COMMIT`. With a key,
//!   a redelivered record is skipped by the server: exactly once end to end. The key needs
//!   a unique index (or primary key) on exactly those columns; a record without a key field
//!   is refused.
//! - The server refusing the batch for a record's data (SQLSTATE class 22, data exception,
//!   or 23, integrity constraint violation: NOT NULL, CHECK, a unique index other than the
//!   key) rolls it back; then each record is inserted in its own statement (pipelined on the
//!   connection) and only those the server refuses are dead-lettered, with its message.
//! - Anything else (connection refused or lost, timeout, the table missing, no unique index
//!   for the key, ...) fails the batch as transient: the worker retries it with backoff,
//!   reconnecting and reading the catalog again.
//!
//! # Types
//!
//! | column type | JSON accepted |
//! |---|---|
//! | `int2`, `int4`, `int8` | an integer in range (or a number with no fraction) |
//! | `float4`, `float8` | a number (`float4`: within its range) |
//! | `bool` | `true` / `false` |
//! | `text`, `varchar`, `char`, `name` | a string (no NUL); numbers and booleans as their JSON text, arrays and objects as JSON |
//! | `json`, `jsonb` | any value, as JSON |
//! | `timestamptz`, `timestamp` | unix milliseconds (a number) or an RFC 3339 string (`timestamp` is UTC) |
//! | `uuid` | a string, 32 hex digits with or without hyphens |
//! | anything else (`numeric`, `date`, enums, domains, ...) | a string or a number, cast by the server (`'...'::type`) |
//!
//! JSON `null` and a missing field are SQL NULL.
//!
//! # Limits
//!
//! | bound | value |
//! |---|---|
//! | `url` | [`MAX_URL_BYTES`]; `sslmode=require`: TLS, verified (see [`super::pg_tls`]) |
//! | `table`, each column | 1 ..= [`MAX_IDENT_BYTES`] bytes, no NUL (quoted, so any other character) |
//! | `columns` | at most [`MAX_COLUMNS`] |
//! | `key` | 1 ..= [`MAX_KEY_COLUMNS`] columns, each in `columns` when that is set |
//! | connect / statement / batch | [`CONNECT_TIMEOUT`] / [`STATEMENT_TIMEOUT`] / [`WRITE_TIMEOUT`] |

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::future::join_all;
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::pg_tls;
use super::sink::{Pending, SinkError, Verdict};

/// The longest `url`, in bytes.
pub const MAX_URL_BYTES: usize = 4096;
/// The longest table or column name, in bytes (PostgreSQL's `NAMEDATALEN` - 1).
pub const MAX_IDENT_BYTES: usize = 63;
/// The most `columns` (PostgreSQL's limit per table).
pub const MAX_COLUMNS: usize = 1600;
/// The most `key` columns (PostgreSQL's `INDEX_MAX_KEYS`).
pub const MAX_KEY_COLUMNS: usize = 32;
/// How long connecting may take (unless the URL sets `connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The session's `statement_timeout`.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long writing one batch may take, everything included; past it the connection is
/// dropped and the batch retried.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// The session's staging table (temporary: one per connection).
const STAGE: &str = "myriad_stage";

/// `sink = { type = "postgres", ... }`, validated by [`PostgresSinkConfig::validate`].
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresSinkConfig {
    /// `postgres://user[:password]@host[:port]/db[?...]` or `key=value` pairs.
    pub url: String,
    /// The target table (a plain name, looked up on the `search_path`).
    pub table: String,
    /// The columns written, each from the output field of the same name; empty: the
    /// output's fields.
    pub columns: Vec<String>,
    /// Idempotency key columns (a unique index on exactly these); empty: none (at least
    /// once).
    pub key: Vec<String>,
    /// Certificates trusted beside the Mozilla roots when the URL says `sslmode=require`
    /// (read from `ca_file` by [`super::pg_tls::load_ca_file`]).
    pub ca_certs: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for PostgresSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PostgresSinkConfig")
            .field("url", &"<redacted>")
            .field("table", &self.table)
            .field("columns", &self.columns)
            .field("key", &self.key)
            .finish()
    }
}

/// Checks an identifier: 1 ..= [`MAX_IDENT_BYTES`] bytes, no NUL.
pub(crate) fn check_ident(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IDENT_BYTES || name.contains('\0') {
        return Err(format!(
            "{name:?} must be 1 to {MAX_IDENT_BYTES} bytes without NUL"
        ));
    }
    Ok(())
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PostgresSinkConfig {
    /// Checks the URL, names and counts; the error starts with the key (`table: ...`).
    pub fn validate(&self) -> Result<(), String> {
        let settings = self.connect_config()?;
        pg_tls::connector(&settings, &self.ca_certs)?;
        check_ident(&self.table).map_err(|e| format!("table: {e}"))?;
        if self.columns.len() > MAX_COLUMNS {
            return Err(format!(
                "columns: {} columns, at most {MAX_COLUMNS}",
                self.columns.len()
            ));
        }
        for (i, column) in self.columns.iter().enumerate() {
            check_ident(column).map_err(|e| format!("columns[{i}]: {e}"))?;
            if self.columns[..i].contains(column) {
                return Err(format!("columns[{i}]: {column:?} is listed twice"));
            }
        }
        if self.key.len() > MAX_KEY_COLUMNS {
            return Err(format!(
                "key: {} columns, at most {MAX_KEY_COLUMNS}",
                self.key.len()
            ));
        }
        for (i, column) in self.key.iter().enumerate() {
            check_ident(column).map_err(|e| format!("key[{i}]: {e}"))?;
            if self.key[..i].contains(column) {
                return Err(format!("key[{i}]: {column:?} is listed twice"));
            }
            if !self.columns.is_empty() && !self.columns.contains(column) {
                return Err(format!("key[{i}]: {column:?} is not one of the columns"));
            }
        }
        Ok(())
    }

    /// The connection settings: the URL with the default timeouts. The error never quotes
    /// the URL (it may hold a password).
    fn connect_config(&self) -> Result<tokio_postgres::Config, String> {
        connect_config(&self.url)
    }
}

/// The connection settings of `url` with the default timeouts (the sink's and the source's).
/// The error starts with `url:` and never quotes the URL (it may hold a password).
pub(crate) fn connect_config(url: &str) -> Result<tokio_postgres::Config, String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!("url: {} bytes, at most {MAX_URL_BYTES}", url.len()));
    }
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("url: not a PostgreSQL connection string ({e})"))?;
    if config.get_hosts().is_empty() {
        return Err("url: no host".to_string());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("myriad-pipeline");
    }
    Ok(config)
}

/// How a column's values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    Text,
    Json,
    Jsonb,
    Timestamptz,
    Timestamp,
    Uuid,
    /// Sent as text, cast by the server (numeric, date, enums, domains, ...).
    Cast,
}

impl Kind {
    fn of(ty: &Type) -> Kind {
        match *ty {
            Type::INT2 => Kind::Int2,
            Type::INT4 => Kind::Int4,
            Type::INT8 => Kind::Int8,
            Type::FLOAT4 => Kind::Float4,
            Type::FLOAT8 => Kind::Float8,
            Type::BOOL => Kind::Bool,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => Kind::Text,
            Type::JSON => Kind::Json,
            Type::JSONB => Kind::Jsonb,
            Type::TIMESTAMPTZ => Kind::Timestamptz,
            Type::TIMESTAMP => Kind::Timestamp,
            Type::UUID => Kind::Uuid,
            _ => Kind::Cast,
        }
    }
}

/// One value, encoded in PostgreSQL's binary format for its column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    /// text, varchar, json, a cast column's text.
    Text(String),
    /// jsonb (version byte 1, then the text).
    Jsonb(String),
    /// Microseconds since 2000-01-01 UTC.
    Time(i64),
    Uuid([u8; 16]),
}

impl ToSql for Cell {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Cell::Null => return Ok(IsNull::Yes),
            Cell::I16(v) => out.put_i16(*v),
            Cell::I32(v) => out.put_i32(*v),
            Cell::I64(v) | Cell::Time(v) => out.put_i64(*v),
            Cell::F32(v) => out.put_f32(*v),
            Cell::F64(v) => out.put_f64(*v),
            Cell::Bool(v) => out.put_u8(u8::from(*v)),
            Cell::Text(v) => out.put_slice(v.as_bytes()),
            Cell::Jsonb(v) => {
                out.put_u8(1);
                out.put_slice(v.as_bytes());
            }
            Cell::Uuid(v) => out.put_slice(v),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        // The column's type was checked by `convert`.
        true
    }

    to_sql_checked!();
}

/// Microseconds from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Converts `value` (None: the field is missing) for a column of `kind`; the error says why
/// not.
pub(crate) fn convert(value: Option<&Value>, kind: Kind) -> Result<Cell, String> {
    let Some(value) = value else {
        return Ok(Cell::Null);
    };
    if value.is_null() {
        return Ok(Cell::Null);
    }
    let int = |value: &Value| -> Option<i64> {
        value.as_i64().or_else(|| {
            let f = value.as_f64()?;
            (f.fract() == 0.0 && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f))
                .then_some(f as i64)
        })
    };
    let text = |value: &Value| -> Result<String, String> {
        let s = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if s.contains('\0') {
            return Err("a string with a NUL character".to_string());
        }
        Ok(s)
    };
    let wrong = || format!("{} is not {}", short(value), kind_name(kind));
    Ok(match kind {
        Kind::Int2 => Cell::I16(
            int(value)
                .and_then(|v| i16::try_from(v).ok())
                .ok_or_else(wrong)?,
        ),
        Kind::Int4 => Cell::I32(
            int(value)
                .and_then(|v| i32::try_from(v).ok())
                .ok_or_else(wrong)?,
        ),
        Kind::Int8 => Cell::I64(int(value).ok_or_else(wrong)?),
        Kind::Float8 => Cell::F64(value.as_f64().ok_or_else(wrong)?),
        Kind::Float4 => {
            let v = value.as_f64().ok_or_else(wrong)?;
            let narrow = v as f32;
            if narrow.is_infinite() {
                return Err(wrong());
            }
            Cell::F32(narrow)
        }
        Kind::Bool => Cell::Bool(value.as_bool().ok_or_else(wrong)?),
        Kind::Text | Kind::Cast => Cell::Text(text(value)?),
        Kind::Json => Cell::Text(value.to_string()),
        Kind::Jsonb => Cell::Jsonb(value.to_string()),
        Kind::Timestamptz | Kind::Timestamp => {
            let unix_micros = match value {
                Value::Number(n) => n.as_i64().and_then(|ms| ms.checked_mul(1000)).or_else(|| {
                    let micros = n.as_f64()? * 1000.0;
                    (micros.is_finite() && micros.abs() < 9.2e18).then_some(micros as i64)
                }),
                Value::String(s) => parse_rfc3339(s),
                _ => None,
            }
            .ok_or_else(wrong)?;
            Cell::Time(unix_micros.checked_sub(PG_EPOCH_MICROS).ok_or_else(wrong)?)
        }
        Kind::Uuid => Cell::Uuid(value.as_str().and_then(parse_uuid).ok_or_else(wrong)?),
    })
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Int2 => "an int2 (integer from -32768 to 32767)",
        Kind::Int4 => "an int4 (32-bit integer)",
        Kind::Int8 => "an int8 (64-bit integer)",
        Kind::Float4 => "a float4 (number within +-3.4e38)",
        Kind::Float8 => "a float8 (number)",
        Kind::Bool => "a bool (true or false)",
        Kind::Text => "text",
        Kind::Json | Kind::Jsonb => "JSON",
        Kind::Timestamptz | Kind::Timestamp => {
            "a timestamp (unix milliseconds or an RFC 3339 string)"
        }
        Kind::Uuid => "a uuid (32 hex digits)",
        Kind::Cast => "text",
    }
}

/// `value` as JSON, cut to 64 bytes for a reason.
fn short(value: &Value) -> String {
    let mut s = value.to_string();
    if s.len() > 64 {
        let mut end = 61;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` as microseconds since 1970.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b.len() > 40 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter()
            .try_fold(0i64, |acc, d| Some(acc * 10 + i64::from(d - b'0')))
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        for _ in digits..6 {
            micros *= 10;
        }
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let offset = h * 3600 + m * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000 + micros)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// 32 hex digits, with the four hyphens of the usual form or none.
pub(crate) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = match s.len() {
        32 => s.bytes().collect(),
        36 => {
            let b = s.as_bytes();
            if [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
                return None;
            }
            s.bytes().filter(|&c| c != b'-').collect()
        }
        _ => return None,
    };
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// A column of the target table.
#[derive(Debug)]
struct Column {
    name: String,
    /// `format_type()`: the type as SQL, for casts.
    sql_type: String,
    kind: Kind,
    /// The type the value is sent as (text for cast columns).
    wire: Type,
}

/// An open connection with what it knows of the table.
struct Conn {
    client: Client,
    driver: tokio::task::JoinHandle<()>,
    columns: Vec<Column>,
    by_name: HashMap<String, usize>,
    /// Whether the staging table exists in this session.
    staged: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Why a write failed: a record's data (fall back to one statement per record), or
/// anything else (transient).
enum Failure {
    Data(tokio_postgres::Error),
    Other(String),
}

fn classify(error: tokio_postgres::Error) -> Failure {
    match error.code().map(SqlState::code) {
        Some(code) if code.starts_with("22") || code.starts_with("23") => Failure::Data(error),
        _ => Failure::Other(describe(&error)),
    }
}

/// The server's message (with its SQLSTATE) or the client error.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                s.push_str(": ");
                s.push_str(detail);
            }
            s
        }
        None => {
            // The cause (a refused certificate, a reset connection) is in the source chain.
            let mut s = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !s.ends_with(&text) {
                    s.push_str(": ");
                    s.push_str(&text);
                }
                source = cause.source();
            }
            s
        }
    }
}

/// See the module docs.
pub(crate) struct PostgresSink {
    config: PostgresSinkConfig,
    connect: Result<tokio_postgres::Config, String>,
    tls: Result<Option<MakeRustlsConnect>, String>,
    conn: Option<Conn>,
    target: String,
}

impl PostgresSink {
    /// A sink for `config`; it connects on the first write.
    pub(crate) fn new(config: &PostgresSinkConfig) -> PostgresSink {
        let connect = config.connect_config();
        PostgresSink {
            tls: (connect.as_ref())
                .map_err(Clone::clone)
                .and_then(|settings| pg_tls::connector(settings, &config.ca_certs)),
            connect,
            target: quote(&config.table),
            config: config.clone(),
            conn: None,
        }
    }

    /// Writes `batch`; see the module docs.
    pub(crate) async fn write(&mut self, batch: &[Pending]) -> Result<Vec<Verdict>, SinkError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.write_inner(batch)).await {
            Ok(Ok(verdicts)) => Ok(verdicts),
            Ok(Err(error)) => {
                self.conn = None;
                Err(SinkError::Transient(format!("PostgreSQL: {error}")))
            }
            Err(_) => {
                self.conn = None;
                Err(SinkError::Transient(format!(
                    "PostgreSQL: the batch took longer than {} s",
                    WRITE_TIMEOUT.as_secs()
                )))
            }
        }
    }

    async fn open(&self) -> Result<Conn, String> {
        let config = self.connect.clone()?;
        let tls = self.tls.clone()?;
        let (client, driver) = pg_tls::connect(&config, tls.as_ref())
            .await
            .map_err(|e| describe(&e))?;
        let ms = STATEMENT_TIMEOUT.as_millis();
        client
            .batch_execute(&format!("SET statement_timeout = {ms}"))
            .await
            .map_err(|e| describe(&e))?;
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid \
                 FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 \
                 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
                &[&self.target],
            )
            .await
            .map_err(|e| describe(&e))?;
        let mut columns = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get(0).map_err(|e| describe(&e))?;
            let sql_type: String = row.try_get(1).map_err(|e| describe(&e))?;
            let oid: u32 = row.try_get(2).map_err(|e| describe(&e))?;
            let kind = Type::from_oid(oid).map_or(Kind::Cast, |ty| Kind::of(&ty));
            let wire = match kind {
                Kind::Cast => Type::TEXT,
                _ => Type::from_oid(oid).unwrap_or(Type::TEXT),
            };
            columns.push(Column {
                name,
                sql_type,
                kind,
                wire,
            });
        }
        let by_name: HashMap<String, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        for name in self.config.columns.iter().chain(&self.config.key) {
            if !by_name.contains_key(name) {
                return Err(format!(
                    "table {} has no column {}",
                    self.target,
                    quote(name)
                ));
            }
        }
        Ok(Conn {
            client,
            driver,
            columns,
            by_name,
            staged: false,
        })
    }

    async fn write_inner(&mut self, batch: &[Pending]) -> Result<Vec<Verdict>, String> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = Some(self.open().await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err("not connected".to_string());
        };
        let mut verdicts = vec![Verdict::Committed; batch.len()];
        // The columns written: `columns`, or every field some record of the batch has.
        let mut used: Vec<usize> = if self.config.columns.is_empty() {
            let mut used = vec![false; conn.columns.len()];
            for (item, verdict) in batch.iter().zip(verdicts.iter_mut()) {
                let Some(fields) = item.output.as_object() else {
                    *verdict = Verdict::Refused("sink: the output is not an object".into());
                    continue;
                };
                let unknown = fields.keys().find(|k| !conn.by_name.contains_key(*k));
                if let Some(field) = unknown {
                    *verdict = Verdict::Refused(format!(
                        "sink: table {} has no column {}",
                        self.target,
                        quote(field)
                    ));
                    continue;
                }
                for field in fields.keys() {
                    used[conn.by_name[field]] = true;
                }
            }
            (0..used.len()).filter(|&i| used[i]).collect()
        } else {
            self.config
                .columns
                .iter()
                .filter_map(|c| conn.by_name.get(c).copied())
                .collect()
        };
        used.sort_unstable();
        let key_missing = |output: &Value| {
            self.config
                .key
                .iter()
                .find(|k| output.get(k.as_str()).is_none_or(Value::is_null))
        };
        // Each accepted record's cells, in `used` order.
        let mut rows: Vec<(usize, Vec<Cell>)> = Vec::with_capacity(batch.len());
        for (i, item) in batch.iter().enumerate() {
            if verdicts[i] != Verdict::Committed {
                continue;
            }
            if !item.output.is_object() {
                verdicts[i] = Verdict::Refused("sink: the output is not an object".into());
                continue;
            }
            if let Some(key) = key_missing(&item.output) {
                verdicts[i] =
                    Verdict::Refused(format!("sink: key field {} is missing or null", quote(key)));
                continue;
            }
            let mut cells = Vec::with_capacity(used.len());
            let mut refused = None;
            for &c in &used {
                let column = &conn.columns[c];
                match convert(item.output.get(&column.name), column.kind) {
                    Ok(cell) => cells.push(cell),
                    Err(reason) => {
                        refused = Some(format!(
                            "sink: column {} ({}): {reason}",
                            quote(&column.name),
                            column.sql_type
                        ));
                        break;
                    }
                }
            }
            match refused {
                Some(reason) => verdicts[i] = Verdict::Refused(reason),
                None => rows.push((i, cells)),
            }
        }
        if rows.is_empty() || used.is_empty() {
            return Ok(verdicts);
        }
        let staged =
            !self.config.key.is_empty() || used.iter().any(|&c| conn.columns[c].kind == Kind::Cast);
        let names: Vec<String> = used.iter().map(|&c| quote(&conn.columns[c].name)).collect();
        let list = names.join(", ");
        let conflict = if self.config.key.is_empty() {
            String::new()
        } else {
            let key: Vec<String> = self.config.key.iter().map(|k| quote(k)).collect();
            format!(" ON CONFLICT ({}) DO NOTHING", key.join(", "))
        };
        let types: Vec<Type> = used.iter().map(|&c| conn.columns[c].wire.clone()).collect();
        if staged && !conn.staged {
            let select: Vec<String> = conn
                .columns
                .iter()
                .map(|c| match c.kind {
                    Kind::Cast => format!("{}::text AS {}", quote(&c.name), quote(&c.name)),
                    _ => quote(&c.name),
                })
                .collect();
            conn.client
                .batch_execute(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {STAGE} ON COMMIT DELETE ROWS AS \
                     SELECT {} FROM {} WITH NO DATA",
                    select.join(", "),
                    self.target
                ))
                .await
                .map_err(|e| describe(&e))?;
            conn.staged = true;
        }
        let copy = format!(
            "COPY {} ({list}) FROM STDIN (FORMAT binary)",
            if staged { STAGE } else { &self.target }
        );
        let values: Vec<String> = used
            .iter()
            .map(|&c| {
                let column = &conn.columns[c];
                match column.kind {
                    Kind::Cast => format!("{}::{}", quote(&column.name), column.sql_type),
                    _ => quote(&column.name),
                }
            })
            .collect();
        let insert = format!(
            "INSERT INTO {} ({list}) SELECT {} FROM {STAGE}{conflict}",
            self.target,
            values.join(", ")
        );
        let batch_result = async {
            let tx = conn.client.transaction().await?;
            let sink = tx.copy_in(&copy).await?;
            let writer = BinaryCopyInWriter::new(sink, &types);
            let mut writer = std::pin::pin!(writer);
            for (_, cells) in &rows {
                let refs: Vec<&(dyn ToSql + Sync)> =
                    cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
                writer.as_mut().write(&refs).await?;
            }
            writer.finish().await?;
            if staged {
                tx.execute(insert.as_str(), &[]).await?;
            }
            tx.commit().await
        }
        .await;
        match batch_result.map_err(classify) {
            Ok(()) => Ok(verdicts),
            Err(Failure::Other(error)) => Err(error),
            Err(Failure::Data(error)) => {
                tracing::debug!(error = %describe(&error), "PostgreSQL refused the batch; writing its records one by one");
                // One statement per record, pipelined; each commits on its own.
                let params: Vec<String> = used
                    .iter()
                    .enumerate()
                    .map(|(n, &c)| {
                        let column = &conn.columns[c];
                        match column.kind {
                            Kind::Cast => format!("${}::text::{}", n + 1, column.sql_type),
                            _ => format!("${}", n + 1),
                        }
                    })
                    .collect();
                let single = format!(
                    "INSERT INTO {} ({list}) VALUES ({}){conflict}",
                    self.target,
                    params.join(", ")
                );
                let statement = conn
                    .client
                    .prepare_typed(&single, &types)
                    .await
                    .map_err(|e| describe(&e))?;
                let client = &conn.client;
                let results = join_all(rows.iter().map(|(_, cells)| {
                    let refs: Vec<&(dyn ToSql + Sync)> =
                        cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
                    let statement = &statement;
                    async move { client.execute(statement, &refs).await }
                }))
                .await;
                for ((i, _), result) in rows.iter().zip(results) {
                    if let Err(error) = result {
                        match classify(error) {
                            Failure::Data(error) => {
                                verdicts[*i] = Verdict::Refused(format!(
                                    "sink: PostgreSQL refused the record: {}",
                                    describe(&error)
                                ));
                            }
                            Failure::Other(error) => return Err(error),
                        }
                    }
                }
                Ok(verdicts)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> PostgresSinkConfig {
        PostgresSinkConfig {
            url: "postgres://u@127.0.0.1:5432/db".into(),
            table: "readings".into(),
            columns: vec![],
            key: vec![],
            ca_certs: vec![],
        }
    }

    #[test]
    fn config_bounds_name_the_key() {
        assert_eq!(config().validate(), Ok(()));
        let check = |f: &dyn Fn(&mut PostgresSinkConfig), key: &str| {
            let mut c = config();
            f(&mut c);
            let error = c.validate().unwrap_err();
            assert!(error.starts_with(key), "{error}");
        };
        check(&|c| c.table = "t".repeat(64), "table:");
        let mut ok = config();
        ok.table = "t".repeat(63);
        assert_eq!(ok.validate(), Ok(()));
        check(&|c| c.table = String::new(), "table:");
        check(&|c| c.table = "a\0b".into(), "table:");
        check(&|c| c.url = "nope://".into(), "url:");
        check(&|c| c.url = "x".repeat(MAX_URL_BYTES + 1), "url:");
        let mut tls = config();
        tls.url = "postgres://u@h/db?sslmode=require".into();
        assert_eq!(tls.validate(), Ok(()));
        check(
            &|c| c.ca_certs = vec![CertificateDer::from(vec![1u8, 2, 3])],
            "ca_file:",
        );
        check(
            &|c| c.columns = (0..=MAX_COLUMNS).map(|i| format!("c{i}")).collect(),
            "columns:",
        );
        let mut ok = config();
        ok.columns = (0..MAX_COLUMNS).map(|i| format!("c{i}")).collect();
        assert_eq!(ok.validate(), Ok(()));
        check(&|c| c.columns = vec!["a".into(), "a".into()], "columns[1]:");
        check(
            &|c| {
                c.columns = vec!["a".into()];
                c.key = vec!["b".into()];
            },
            "key[0]:",
        );
        check(
            &|c| c.key = (0..=MAX_KEY_COLUMNS).map(|i| format!("k{i}")).collect(),
            "key:",
        );
        assert!(!format!("{:?}", config()).contains("127.0.0.1"));
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote(r#"we"ird"#), r#""we""ird""#);
    }

    #[test]
    fn conversions() {
        let c = |v: Value, k| convert(Some(&v), k);
        assert_eq!(c(json!(7), Kind::Int2), Ok(Cell::I16(7)));
        assert_eq!(c(json!(7.0), Kind::Int4), Ok(Cell::I32(7)));
        assert!(c(json!(7.5), Kind::Int4).is_err());
        assert!(c(json!(40000), Kind::Int2).is_err());
        assert!(c(json!("7"), Kind::Int8).is_err());
        assert_eq!(c(json!(u64::MAX), Kind::Int8).ok(), None);
        assert_eq!(c(json!(1.5), Kind::Float8), Ok(Cell::F64(1.5)));
        assert!(c(json!(1e300), Kind::Float4).is_err());
        assert_eq!(c(json!(true), Kind::Bool), Ok(Cell::Bool(true)));
        assert!(c(json!(1), Kind::Bool).is_err());
        assert_eq!(c(json!("a"), Kind::Text), Ok(Cell::Text("a".into())));
        assert_eq!(c(json!(12), Kind::Text), Ok(Cell::Text("12".into())));
        assert!(c(json!("a\u{0}b"), Kind::Text).is_err());
        assert_eq!(
            c(json!({"a": [1]}), Kind::Jsonb),
            Ok(Cell::Jsonb(r#"{"a":[1]}"#.into()))
        );
        assert_eq!(
            c(json!(946_684_800_123i64), Kind::Timestamptz),
            Ok(Cell::Time(123_000))
        );
        assert_eq!(
            c(json!("2000-01-01T01:00:00.5+01:00"), Kind::Timestamptz),
            Ok(Cell::Time(500_000))
        );
        assert!(c(json!("2000-02-30T00:00:00Z"), Kind::Timestamptz).is_err());
        assert!(c(json!(true), Kind::Timestamptz).is_err());
        assert_eq!(
            c(json!("00112233-4455-6677-8899-aabbccddeeff"), Kind::Uuid),
            Ok(Cell::Uuid([
                0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ]))
        );
        assert!(c(json!("0011-2233"), Kind::Uuid).is_err());
        assert_eq!(c(json!(1.25), Kind::Cast), Ok(Cell::Text("1.25".into())));
        assert_eq!(c(Value::Null, Kind::Int4), Ok(Cell::Null));
        assert_eq!(convert(None, Kind::Int4), Ok(Cell::Null));
        let long = c(json!("x".repeat(500)), Kind::Int4).unwrap_err();
        assert!(long.len() < 200, "{long}");
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-12-05 13:00:00.000001z"),
            Some(1_796_475_600_000_001)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00-00:30"),
            Some(1_709_166_600_000_000)
        );
        assert_eq!(parse_rfc3339("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2023-01-01T24:00:00Z"), None);
        assert_eq!(parse_rfc3339("2023-01-01T00:00:00"), None);
        assert_eq!(parse_rfc3339("2023-01-01T00:00:00.Z"), None);
    }
}
