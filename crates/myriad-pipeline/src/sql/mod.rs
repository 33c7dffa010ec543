//! Rules: AWS IoT Rules / EMQX rule-engine SQL, compiled once and evaluated on each record.
//!
//! ```
//! use myriad_pipeline::record::Record;
//! use myriad_pipeline::sql::{EvalContext, Rule};
//!
//! let rule = Rule::compile(
//!     "SELECT payload.temp AS t, topic(2) AS device FROM 'devices/+/telemetry' WHERE payload.temp > 30",
//! )
//! .unwrap();
//! let record = Record::new("devices/d1/telemetry", &br#"{"temp": 31.5}"#[..], ());
//! assert!(rule.matches_topic(record.topic()));
//! let out = rule.apply(&record, &EvalContext::new(1_700_000_000_000)).unwrap();
//! assert_eq!(out, Some(serde_json::json!({"t": 31.5, "device": "d1"})));
//! ```
//!
//! # Parsing
//!
//! The text is tokenized and parsed by the `sqlparser` crate (generic dialect). SQL does not
//! allow a quoted string as a table name, so before parsing the token after a top-level `FROM`
//! is taken out when it is a single-quoted string (AWS: `FROM 'devices/+/telemetry'`) or a
//! double-quoted name (EMQX: `FROM "devices/#"`), validated as an MQTT topic filter and
//! replaced by a placeholder identifier; the parser never sees the filter. An unquoted name
//! (`FROM devices`) is a filter of one level.
//!
//! Only a single `SELECT ... FROM ... [WHERE ...]` is accepted: no joins, `GROUP BY`,
//! `ORDER BY`, `LIMIT`, `DISTINCT`, subqueries, window functions or second statements (each
//! refused at compile time with its position).
//!
//! # Grammar subset
//!
//! | form | meaning |
//! |---|---|
//! | `SELECT *` | the payload object's keys (a payload that is not a JSON object adds nothing) |
//! | `SELECT *, expr AS name` | the payload's keys, then `name` (a later key replaces an earlier one) |
//! | `expr AS name`, `expr` | key `name`; without `AS`: the last field name of a path (`payload.a.b` -> `b`), the function name of a call, else the expression's text |
//! | `payload` | the whole payload (JSON, or the payload as a string when it is UTF-8 but not JSON) |
//! | `payload.a.b`, `a.b`, `"a b"` | a field of the payload; a bare name is a payload field (AWS) |
//! | `payload.arr[0]`, `get(x, 0)`, `get(x, 'key')` | an array element (0-based) or object member |
//! | `1`, `2.5`, `'text'`, `true`, `false`, `NULL` | literals |
//! | `+ - * / %`, unary `-` | arithmetic |
//! | `\|\|` | string concatenation |
//! | `= <> != < <= > >=` | comparison |
//! | `AND OR NOT` | logic |
//! | `x IS [NOT] NULL` | null test (Undefined is not null: `isundefined(x)` tests that) |
//! | `x IS [NOT] UNDEFINED` | Undefined test (the word is rewritten to SQL's `UNKNOWN` before parsing, so `IS [NOT] UNKNOWN` means the same) |
//! | `x [NOT] IN (a, b, ...)`, `x [NOT] BETWEEN a AND b` | membership, range (inclusive) |
//! | `CASE [x] WHEN .. THEN .. [ELSE ..] END` | conditional |
//! | `cast(x AS String\|Int\|Decimal\|Bool)` | conversion (also `Varchar`, `Integer`, `Double`, `Boolean`, ...) |
//!
//! # Functions
//!
//! Names are case-insensitive; a wrong argument count is a compile error naming the function.
//!
//! | function | result |
//! |---|---|
//! | `topic()`, `topic(n)` | the topic; its `n`-th level (1-based), Undefined past the end |
//! | `clientid()` | the publisher's client id |
//! | `timestamp()` | [`EvalContext::now_ms`] (unix ms) |
//! | `newuuid()` | a random (version 4) UUID from [`EvalContext::random`] and a per-call counter |
//! | `get_user_property(name)` | the first MQTT 5 user property `name` |
//! | `abs(x)`, `ceil(x)`, `floor(x)`, `round(x)`, `sqrt(x)`, `sign(x)` | numeric (`ceil`/`floor`/`round` give Int; `round` rounds half away from zero) |
//! | `mod(x, y)`, `power(x, y)` | remainder (sign of `x`), power |
//! | `lower(s)`, `upper(s)`, `trim(s)`, `ltrim(s)`, `rtrim(s)` | string case and whitespace |
//! | `length(s)`, `char_length(s)` | length in characters |
//! | `concat(a, b, ...)` | 1 to 16 arguments: strings joined (others converted as `cast(x AS String)`); all arrays: arrays joined |
//! | `substring(s, start[, end])` | characters `start` (0-based) up to `end` (exclusive), both clamped; Decimal indexes rounded down, a number as `s` converted to its text |
//! | `replace(s, from, to)` | every occurrence replaced |
//! | `startswith(s, p)`, `endswith(s, p)` | prefix / suffix test |
//! | `indexof(s, t)` | character index of `t` in `s`, -1 when absent |
//! | `coalesce(a, b, ...)` | 1 to 16 arguments: the first that is neither Null nor Undefined |
//! | `isnull(x)`, `isundefined(x)` | whether `x` is Null (false for Undefined) / Undefined |
//! | `typeof(x)` | `Int`, `Decimal`, `String`, `Boolean`, `Array`, `Object`, `Null`, `Undefined` |
//! | `encode(*, 'base64')`, `encode(s, 'base64')` | the raw payload (or a string) in base64 |
//! | `decode(s, 'base64')` | base64 decoded, as a string (Undefined when not UTF-8) |
//!
//! EMQX names accepted for the same functions: `is_null`, `is_not_null` (neither Null nor
//! Undefined), `strlen`, `base64_encode(s)`, `base64_decode(s)`, `uuid_v4()`, and the
//! conversions `str(x)`, `int(x)`, `float(x)`, `bool(x)` (as `cast(x AS String|Int|Decimal|Bool)`).
//!
//! # Semantics
//!
//! They follow the AWS IoT SQL reference where it is clear:
//!
//! - **Undefined** is not a value: a missing field, an array index out of range, a function
//!   given the wrong types (`abs('x')`, `lower(1)`) or an operator given types it does not take
//!   (`true + 1`) yield Undefined, never an error. A SELECT item that is Undefined leaves its
//!   key out of the output. A WHERE that is not `true` (false, Null, Undefined, a non-boolean)
//!   drops the record.
//! - **Numbers** are `Int` (64-bit) or `Decimal` (64-bit float). Integer JSON numbers are Int.
//!   Int with Int stays Int (`/` truncates; an overflowing `+ - *` becomes Decimal); with a
//!   Decimal the result is Decimal. Division or remainder by zero is Undefined, and so is a
//!   Decimal result that is not finite.
//! - **Conversions**: arithmetic, comparisons and numeric functions convert numeric strings
//!   (`'5'`, `'-1.5'`) to numbers; AND / OR / NOT take booleans and the strings `"true"` and
//!   `"false"` (any case); anything else makes the result Undefined.
//! - **Comparisons**: `=`/`<>` of different types (other than numbers and numeric strings) is
//!   false / true; `<` and friends between non-numeric strings compare as text, other mixes
//!   are Undefined. `NULL = NULL` is true (JSON equality, unlike SQL's three-valued logic).
//!   Any comparison with Undefined is Undefined.
//! - **AND / OR** are three-valued over Undefined: `false AND x` is false and `true OR x` is
//!   true whatever `x` is.
//! - `x IN (...)` is true when some element equals `x`, Undefined when `x` is.
//!
//! # Limits
//!
//! | bound | value | past it |
//! |---|---|---|
//! | SQL text | [`MAX_SQL_BYTES`] = 16 KiB | [`RuleError::TooLong`] |
//! | expression nesting | [`MAX_NESTING`] = 64 levels | [`RuleError::TooDeep`] (checked before each recursion, in the parser too) |
//! | arguments of `concat` / `coalesce` | [`MAX_VARIADIC_ARGS`] = 16 | [`RuleError::Arity`] |
//! | topic filter | 4096 bytes, valid MQTT filter | [`RuleError::TopicFilter`] |
//! | output JSON | [`RuleLimits::max_output_bytes`], default 256 KiB | [`EvalError::OutputTooLarge`] for that record (so is any intermediate string longer than it) |
//! | payload JSON nesting | [`crate::record::MAX_JSON_DEPTH`] = 64 | [`EvalError::Payload`] for that record |
//!
//! Evaluation recurses over the compiled plan only, whose depth the compiler bounds; payload
//! values are never walked deeper than the payload bound.

mod compile;
mod eval;
mod value;

use thiserror::Error;

use crate::record::{PayloadError, Record};
use crate::topic::{FilterError, TopicFilter};

/// The longest SQL text [`Rule::compile`] accepts, in bytes.
pub const MAX_SQL_BYTES: usize = 16 * 1024;
/// The deepest expression nesting a rule may have (each operator, function call, parenthesis,
/// CASE and path subscript is a level).
pub const MAX_NESTING: usize = 64;
/// The most arguments a variadic function (`concat`, `coalesce`) takes.
pub const MAX_VARIADIC_ARGS: usize = 16;
/// The default bound on one record's output JSON, in bytes.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 256 * 1024;
/// The largest output bound [`RuleLimits`] may be set to, in bytes.
pub const MAX_OUTPUT_BYTES_CEILING: usize = 16 * 1024 * 1024;

/// A place in the SQL text (1-based), as the parser reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why a rule did not compile.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RuleError {
    /// The SQL text is longer than [`MAX_SQL_BYTES`].
    #[error("rule SQL is {len} bytes, more than the limit of {limit}")]
    TooLong {
        /// Its length.
        len: usize,
        /// [`MAX_SQL_BYTES`].
        limit: usize,
    },
    /// The tokenizer or parser refused the text (its message names the place).
    #[error("rule SQL does not parse: {0}")]
    Parse(String),
    /// Expressions nest deeper than [`MAX_NESTING`].
    #[error("rule SQL nests expressions deeper than {limit} levels{}", at.map(|p| format!(" (at {p})")).unwrap_or_default())]
    TooDeep {
        /// [`MAX_NESTING`].
        limit: usize,
        /// Where, when known.
        at: Option<Position>,
    },
    /// Valid SQL that rules do not support (a join, GROUP BY, a subquery, an operator...).
    #[error("unsupported in a rule at {at}: {what}")]
    Unsupported {
        /// What was found.
        what: String,
        /// Where.
        at: Position,
    },
    /// The statement is not a single `SELECT ... FROM '<filter>'`.
    #[error("a rule must be one SELECT ... FROM '<topic filter>' [WHERE ...]: {0}")]
    NotARule(String),
    /// The FROM topic filter is not a valid MQTT filter.
    #[error("FROM topic filter: {0}")]
    TopicFilter(#[from] FilterError),
    /// A function the rule language does not have.
    #[error("unknown function {name}() at {at}")]
    UnknownFunction {
        /// The name as written.
        name: String,
        /// Where.
        at: Position,
    },
    /// A function called with the wrong number of arguments.
    #[error("{name}() takes {expected} argument(s), got {got} at {at}")]
    Arity {
        /// The function.
        name: String,
        /// What it takes ("1", "0 or 1", "1 to 16").
        expected: String,
        /// What it was given.
        got: usize,
        /// Where.
        at: Position,
    },
    /// A function argument that must be a literal is not one of the accepted values.
    #[error("{name}() at {at}: {message}")]
    BadArgument {
        /// The function.
        name: String,
        /// What is wrong.
        message: String,
        /// Where.
        at: Position,
    },
    /// A numeric literal that does not fit a 64-bit integer or float.
    #[error("bad number {text:?} at {at}")]
    BadNumber {
        /// The literal.
        text: String,
        /// Where.
        at: Position,
    },
    /// A [`RuleLimits`] value out of range.
    #[error("rule limit {name} = {value} is out of range ({range})")]
    BadLimit {
        /// The limit's name.
        name: &'static str,
        /// The value given.
        value: usize,
        /// The accepted range.
        range: &'static str,
    },
}

/// Why one record could not be evaluated (the rule stays usable; the record goes to the
/// dead-letter sink with this reason).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EvalError {
    /// The output (or a string computed on the way) is larger than the configured bound.
    #[error("rule output exceeds {limit} bytes")]
    OutputTooLarge {
        /// [`RuleLimits::max_output_bytes`].
        limit: usize,
    },
    /// The payload could not be read (nested too deep).
    #[error("payload: {0}")]
    Payload(#[from] PayloadError),
}

/// Bounds on evaluation that a deployment may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleLimits {
    /// The largest output JSON of one record, in bytes (serialized, compact); also bounds every
    /// string computed while evaluating. 1 ..= [`MAX_OUTPUT_BYTES_CEILING`].
    pub max_output_bytes: usize,
}

impl Default for RuleLimits {
    fn default() -> Self {
        RuleLimits {
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// What evaluation needs from outside: time and randomness are passed in (the crate has no
/// clock and no random source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EvalContext {
    /// Now, unix milliseconds: what `timestamp()` returns.
    pub now_ms: i64,
    /// A random seed for `newuuid()` (each call in one evaluation mixes in a counter, so two
    /// calls differ; give a fresh value per record).
    pub random: u64,
}

impl EvalContext {
    /// A context at `now_ms` with seed 0 (`newuuid()` is then deterministic).
    pub fn new(now_ms: i64) -> EvalContext {
        EvalContext { now_ms, random: 0 }
    }

    /// The same context with the random seed `random`.
    pub fn with_random(mut self, random: u64) -> EvalContext {
        self.random = random;
        self
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    sql: String,
    filter: TopicFilter,
    plan: compile::Plan,
    limits: RuleLimits,
}

impl Rule {
    /// Compiles `sql` with the default [`RuleLimits`].
    pub fn compile(sql: &str) -> Result<Rule, RuleError> {
        Rule::compile_with(sql, RuleLimits::default())
    }

    /// Compiles `sql` with `limits`.
    pub fn compile_with(sql: &str, limits: RuleLimits) -> Result<Rule, RuleError> {
        if !(1..=MAX_OUTPUT_BYTES_CEILING).contains(&limits.max_output_bytes) {
            return Err(RuleError::BadLimit {
                name: "max_output_bytes",
                value: limits.max_output_bytes,
                range: "1 ..= 16777216",
            });
        }
        if sql.len() > MAX_SQL_BYTES {
            return Err(RuleError::TooLong {
                len: sql.len(),
                limit: MAX_SQL_BYTES,
            });
        }
        let (filter, plan) = compile::compile(sql)?;
        Ok(Rule {
            sql: sql.to_string(),
            filter,
            plan,
            limits,
        })
    }

    /// The SQL text it was compiled from.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The FROM topic filter.
    pub fn topic_filter(&self) -> &TopicFilter {
        &self.filter
    }

    /// The limits it evaluates with.
    pub fn limits(&self) -> RuleLimits {
        self.limits
    }

    /// Whether records on `topic` go through this rule (the FROM filter matches it).
    pub fn matches_topic(&self, topic: &str) -> bool {
        self.filter.matches(topic)
    }

    /// Evaluates the rule on `record`: `Ok(None)` when WHERE is not true, else the SELECT
    /// output object. The topic is not checked here (see [`Rule::matches_topic`]).
    pub fn apply<A>(
        &self,
        record: &Record<A>,
        ctx: &EvalContext,
    ) -> Result<Option<serde_json::Value>, EvalError> {
        eval::apply(&self.plan, record, ctx, self.limits.max_output_bytes)
    }
}

#[cfg(test)]
mod tests;
