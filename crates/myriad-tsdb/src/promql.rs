//! A PromQL subset evaluated over the [`Db`]: what the Prometheus-compatible read API answers.
//!
//! Sans-IO like the rest of the engine: the caller (the telemetry writer thread) hands in the
//! [`Db`] and the times; nothing here reads a clock or a file. Queries are parsed with the
//! `promql-parser` crate, then compiled into a small plan ([`Query`]); nodes outside the subset
//! are refused with [`PromError::Unsupported`] naming them.
//!
//! # Series and labels
//!
//! A stored series `(device, metric, labels)` has the label set `__name__` = metric,
//! `device` = device id, `metric` = metric, plus its extra labels, so `temp{device="d1"}` and
//! `{device="d1",metric="temp"}` select the same series.
//!
//! Device labels come from outside the store (the registry, through a [`DeviceLabelSource`]):
//! `group` ([`GROUP_LABEL`]: the device's groups, sorted and comma-joined; `=`/`=~` hold when
//! one group or the joined value matches, `!=`/`!~` when none does) and one label per
//! attribute ([`attribute_label`] sanitises the keys). A selector is resolved in two steps:
//! [`candidates`] picks the series by the store's labels from the index's posting lists (on
//! the thread that owns the [`Db`]), [`finish`] applies the device-label matchers once the
//! candidates' devices' labels are read (by whoever can reach the registry). The label APIs
//! split the same way ([`series_candidates`] / [`series_finish`], [`index_labels`] /
//! [`label_names_finish`] / [`label_values_finish`]).
//!
//! # The subset
//!
//! * Instant vector selectors `m{l="v", l!="v", l=~"re", l!~"re"}`, with `offset`; `@` is
//!   refused. An instant selector at time `t` takes the newest point in `(t - 5m, t]`
//!   ([`LOOKBACK_MS`]) and reports it at `t`.
//! * Range vector selectors `m{..}[r]` as arguments of `rate`, `increase`, `irate`, `delta`,
//!   `avg_over_time`, `min_over_time`, `max_over_time`, `sum_over_time`, `count_over_time`,
//!   `last_over_time`, each over the window `(t - r, t]`; a bare range selector only in an
//!   instant query (the answer is then a matrix of raw points).
//! * `sum`, `avg`, `min`, `max`, `count` with optional `by (..)` / `without (..)` over any of
//!   the above.
//! * Number literals and arithmetic between numbers (`1+1`, Grafana's health check).
//!
//! Functions drop `__name__` (except `last_over_time`), as Prometheus does; `device` and
//! `metric` stay, so series stay distinct.
//!
//! `rate`, `increase` and `delta` follow Prometheus's `extrapolatedRate`: the change between
//! the window's first and last point (counter resets added back for `rate`/`increase`),
//! extrapolated towards the window's edges by at most half the average point spacing (and,
//! for counters, not below zero), `rate` divided by the window in seconds.
//!
//! # Limits (what one more does)
//!
//! | input | limit | one past |
//! |---|---|---|
//! | query text | [`PromLimits::max_query_len`] (8 KiB) | [`PromError::QueryTooLong`] (bad_data) |
//! | steps of a range query | 11,000 (`(end - start) / step`) | [`PromError::TooManyPoints`] (bad_data, Prometheus's message) |
//! | series one selector matches | [`PromLimits::max_series`] (10,000) | [`PromError::TooManySeries`] (execution) |
//! | points read plus points answered | [`PromLimits::max_samples`] (10,000,000) | [`PromError::TooManySamples`] (execution) |
//! | compiled regex | [`PromLimits::max_regex_bytes`] (1 MiB, `regex` `size_limit`) | [`PromError::Regex`] (bad_data) |
//! | range of `[r]` / offset | [`MAX_RANGE_MS`] (400 days) | [`PromError::Unsupported`] (bad_data) |
//! | series or devices examined per selector or label request (candidates of a selector with a device-label matcher, [`Db::has_data`] checks of a window, devices whose labels are read) | [`PromLimits::max_examined`] (100,000) | [`PromError::TooManyExamined`] (execution) |
//! | nesting of expressions | [`MAX_QUERY_DEPTH`] (128) | [`PromError::Unsupported`] (bad_data) |

use std::collections::BTreeMap;

use promql_parser::label::{MatchOp, Matcher, Matchers};
use promql_parser::parser::{self, Expr, LabelModifier, Offset, VectorSelector};
use regex::{Regex, RegexBuilder};

use crate::block::as_f64;
use crate::db::{Db, DbError};
use crate::index::{DEVICE_LABEL, METRIC_LABEL, SeriesId, SeriesIndex, SeriesKey};
use crate::value::Point;

/// How far back an instant selector looks for a point (Prometheus's default 5 minutes).
pub const LOOKBACK_MS: i64 = 300_000;
/// Most steps `(end - start) / step` of a range query (Prometheus's limit).
pub const MAX_STEPS: i64 = 11_000;
/// Longest range selector window or offset, 400 days.
pub const MAX_RANGE_MS: i64 = 400 * 86_400_000;
/// The label holding the metric name.
pub const NAME_LABEL: &str = "__name__";

/// The label set of a series (name -> value, sorted).
pub type Labels = BTreeMap<String, String>;

/// Bounds on one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromLimits {
    /// Longest query text, bytes.
    pub max_query_len: usize,
    /// Most series one selector may match.
    pub max_series: usize,
    /// Most points read from the store plus points in the answer, per query.
    pub max_samples: u64,
    /// `size_limit` of each compiled `=~` / `!~` regex, bytes.
    pub max_regex_bytes: usize,
    /// Most series or devices examined to resolve device labels or a `start`/`end` window: the
    /// candidate series of a selector with a device-label matcher, the series checked for
    /// data in a window ([`Db::has_data`]) and the devices whose labels are read, per selector
    /// or label request.
    pub max_examined: usize,
}

impl Default for PromLimits {
    fn default() -> Self {
        Self {
            max_query_len: 8 * 1024,
            max_series: 10_000,
            max_samples: 10_000_000,
            max_regex_bytes: 1024 * 1024,
            max_examined: 100_000,
        }
    }
}

/// Why a query was refused or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromError {
    /// The text does not parse.
    #[error("query: parse error: {0}")]
    Parse(String),
    /// A node outside the supported subset.
    #[error("query: {0} is not supported")]
    Unsupported(String),
    /// The text is longer than [`PromLimits::max_query_len`].
    #[error("query: {len} bytes, limit {limit}")]
    QueryTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A range query with more than [`MAX_STEPS`] steps.
    #[error(
        "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
    )]
    TooManyPoints,
    /// A regex matcher that does not compile within [`PromLimits::max_regex_bytes`].
    #[error("query: regex {pattern:?}: {reason}")]
    Regex {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// A bad parameter (`name: message`).
    #[error("{0}")]
    Param(String),
    /// A selector matched more than [`PromLimits::max_series`] series.
    #[error("query: a selector matches more than {limit} series")]
    TooManySeries {
        /// The limit.
        limit: usize,
    },
    /// More than [`PromLimits::max_samples`] points read and answered.
    #[error(
        "query processing would load too many samples into memory in query execution (limit {limit})"
    )]
    TooManySamples {
        /// The limit.
        limit: u64,
    },
    /// More than [`PromLimits::max_examined`] series or devices to examine.
    #[error(
        "more than {limit} series or devices would be examined to resolve device labels (group, attributes) or the start/end window; narrow the selector with a metric name or device matcher, or the window"
    )]
    TooManyExamined {
        /// The limit.
        limit: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The store could not be read (it stopped).
    #[error("{0}")]
    Unavailable(String),
}

impl PromError {
    /// Whether Prometheus would call this `bad_data` (HTTP 400) rather than `execution` (422).
    pub fn is_bad_data(&self) -> bool {
        !matches!(
            self,
            PromError::TooManySeries { .. }
                | PromError::TooManySamples { .. }
                | PromError::TooManyExamined { .. }
                | PromError::Db(_)
                | PromError::Unavailable(_)
        )
    }
}

/// One compiled label matcher.
#[derive(Debug, Clone)]
enum LabelMatch {
    Eq(String),
    Ne(String),
    Re(Regex),
    NotRe(Regex),
}

#[derive(Debug, Clone)]
struct Match {
    name: String,
    op: LabelMatch,
}

impl Match {
    fn is_match(&self, v: &str) -> bool {
        match &self.op {
            LabelMatch::Eq(s) => s == v,
            LabelMatch::Ne(s) => s != v,
            LabelMatch::Re(r) => r.is_match(v),
            LabelMatch::NotRe(r) => !r.is_match(v),
        }
    }
}

/// A compiled series selector (the matchers of `m{..}` and its offset).
#[derive(Debug, Clone)]
pub struct Selector {
    matchers: Vec<Match>,
    offset_ms: i64,
}

/// A `*_over_time`, `rate`-like function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeFn {
    Rate,
    Increase,
    Irate,
    Delta,
    Avg,
    Min,
    Max,
    Sum,
    Count,
    Last,
}

impl RangeFn {
    fn by_name(name: &str) -> Option<RangeFn> {
        Some(match name {
            "rate" => RangeFn::Rate,
            "increase" => RangeFn::Increase,
            "irate" => RangeFn::Irate,
            "delta" => RangeFn::Delta,
            "avg_over_time" => RangeFn::Avg,
            "min_over_time" => RangeFn::Min,
            "max_over_time" => RangeFn::Max,
            "sum_over_time" => RangeFn::Sum,
            "count_over_time" => RangeFn::Count,
            "last_over_time" => RangeFn::Last,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
}

#[derive(Debug, Clone)]
enum Grouping {
    All,
    By(Vec<String>),
    Without(Vec<String>),
}

#[derive(Debug, Clone)]
enum Node {
    Scalar(f64),
    Vector(Selector),
    Matrix(Selector, i64),
    Func(RangeFn, Selector, i64),
    Agg(AggOp, Grouping, Box<Node>),
}

/// A parsed and compiled query.
#[derive(Debug, Clone)]
pub struct Query {
    root: Node,
}

/// What an instant query answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Instant {
    /// A number.
    Scalar(f64),
    /// One value per series, all at the query time.
    Vector(Vec<(Labels, f64)>),
    /// Raw points per series (a bare range selector).
    Matrix(Vec<(Labels, Vec<(i64, f64)>)>),
}

/// Series of a range query: labels and `(ms, value)` per step with a value.
pub type Matrix = Vec<(Labels, Vec<(i64, f64)>)>;

fn parse_expr(text: &str, limits: &PromLimits) -> Result<Expr, PromError> {
    if text.len() > limits.max_query_len {
        return Err(PromError::QueryTooLong {
            len: text.len(),
            limit: limits.max_query_len,
        });
    }
    if text.trim().is_empty() {
        return Err(PromError::Parse("empty query".into()));
    }
    // The parser is third-party code: a panic on odd input must not take the caller with it.
    let parsed = std::panic::catch_unwind(|| parser::parse(text))
        .map_err(|_| PromError::Parse("the query could not be parsed".into()))?;
    let expr = parsed.map_err(PromError::Parse)?;
    // Compiling and evaluating recurse once per level: bound the depth before they run.
    if expr_depth(&expr) > MAX_QUERY_DEPTH {
        return Err(PromError::Unsupported(format!(
            "expressions nested more than {MAX_QUERY_DEPTH} deep"
        )));
    }
    Ok(expr)
}

/// Deepest nesting of expressions (parentheses, operators, calls, aggregations) a query may
/// have; a deeper one is [`PromError::Unsupported`]. 8 KiB of `(` would otherwise nest 4,000
/// levels, which the recursive compile overflowed a 2 MiB thread stack with.
pub const MAX_QUERY_DEPTH: usize = 128;

/// Nodes on the longest path from `expr` to a leaf, walked without recursion.
fn expr_depth(expr: &Expr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(expr, 1usize)];
    while let Some((e, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match e {
            Expr::Paren(p) => stack.push((&p.expr, depth + 1)),
            Expr::Unary(u) => stack.push((&u.expr, depth + 1)),
            Expr::Subquery(q) => stack.push((&q.expr, depth + 1)),
            Expr::Binary(b) => {
                stack.push((&b.lhs, depth + 1));
                stack.push((&b.rhs, depth + 1));
            }
            Expr::Aggregate(a) => {
                stack.push((&a.expr, depth + 1));
                if let Some(p) = &a.param {
                    stack.push((p, depth + 1));
                }
            }
            Expr::Call(c) => stack.extend(c.args.args.iter().map(|a| (a.as_ref(), depth + 1))),
            Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::VectorSelector(_)
            | Expr::MatrixSelector(_)
            | Expr::Extension(_) => {}
        }
    }
    deepest
}

impl Query {
    /// Parses and compiles `text`.
    pub fn parse(text: &str, limits: &PromLimits) -> Result<Query, PromError> {
        let expr = parse_expr(text, limits)?;
        Ok(Query {
            root: compile(&expr, limits)?,
        })
    }

    /// Whether the answer of a range query is defined (a bare range selector is not).
    fn check_range(&self) -> Result<(), PromError> {
        if let Node::Matrix(..) = self.root {
            return Err(PromError::Param(
                "query: invalid expression type \"range vector\" for range query, must be Scalar or instant Vector".into(),
            ));
        }
        Ok(())
    }
}

/// Parses a series selector (`match[]`): a bare instant vector selector.
pub fn parse_selector(text: &str, limits: &PromLimits) -> Result<Selector, PromError> {
    match parse_expr(text, limits)? {
        Expr::VectorSelector(vs) => selector(&vs, limits),
        other => Err(PromError::Param(format!(
            "match[]: {other} is not a series selector"
        ))),
    }
}

fn duration_ms(d: std::time::Duration, what: &str) -> Result<i64, PromError> {
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if ms > MAX_RANGE_MS {
        return Err(PromError::Unsupported(format!(
            "{what} longer than 400 days"
        )));
    }
    Ok(ms)
}

fn selector(vs: &VectorSelector, limits: &PromLimits) -> Result<Selector, PromError> {
    if vs.at.is_some() {
        return Err(PromError::Unsupported("the @ modifier".into()));
    }
    let offset_ms = match &vs.offset {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(*d, "offset")?,
        Some(Offset::Neg(d)) => -duration_ms(*d, "offset")?,
    };
    let Matchers {
        matchers,
        or_matchers,
    } = &vs.matchers;
    if !or_matchers.is_empty() {
        return Err(PromError::Unsupported("`or` inside a selector".into()));
    }
    let mut out = Vec::with_capacity(matchers.len() + 1);
    if let Some(name) = &vs.name {
        out.push(Match {
            name: NAME_LABEL.into(),
            op: LabelMatch::Eq(name.clone()),
        });
    }
    for m in matchers {
        out.push(compile_matcher(m, limits)?);
    }
    if !out.iter().any(|m| !m.is_match("")) {
        return Err(PromError::Param(
            "query: vector selector must contain at least one non-empty matcher".into(),
        ));
    }
    Ok(Selector {
        matchers: out,
        offset_ms,
    })
}

fn compile_matcher(m: &Matcher, limits: &PromLimits) -> Result<Match, PromError> {
    let re = |pattern: &str| {
        RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(limits.max_regex_bytes)
            .dfa_size_limit(limits.max_regex_bytes)
            .build()
            .map_err(|e| PromError::Regex {
                pattern: pattern.to_owned(),
                reason: match e {
                    regex::Error::CompiledTooBig(n) => {
                        format!("compiled regex exceeds the size limit of {n} bytes")
                    }
                    other => other.to_string(),
                },
            })
    };
    let op = match &m.op {
        MatchOp::Equal => LabelMatch::Eq(m.value.clone()),
        MatchOp::NotEqual => LabelMatch::Ne(m.value.clone()),
        MatchOp::Re(_) => LabelMatch::Re(re(&m.value)?),
        MatchOp::NotRe(_) => LabelMatch::NotRe(re(&m.value)?),
    };
    Ok(Match {
        name: m.name.clone(),
        op,
    })
}

fn compile(expr: &Expr, limits: &PromLimits) -> Result<Node, PromError> {
    Ok(match expr {
        Expr::Paren(p) => compile(&p.expr, limits)?,
        Expr::NumberLiteral(n) => Node::Scalar(n.val),
        Expr::Unary(u) => match compile(&u.expr, limits)? {
            Node::Scalar(v) => Node::Scalar(-v),
            _ => return Err(PromError::Unsupported("unary minus on a vector".into())),
        },
        Expr::Binary(b) => {
            let op = b.op.to_string();
            match (compile(&b.lhs, limits)?, compile(&b.rhs, limits)?) {
                (Node::Scalar(l), Node::Scalar(r)) => Node::Scalar(match op.as_str() {
                    "+" => l + r,
                    "-" => l - r,
                    "*" => l * r,
                    "/" => l / r,
                    "%" => l % r,
                    "^" => l.powf(r),
                    _ => {
                        return Err(PromError::Unsupported(format!("the binary operator {op}")));
                    }
                }),
                _ => {
                    return Err(PromError::Unsupported(format!(
                        "the binary operator {op} on vectors"
                    )));
                }
            }
        }
        Expr::VectorSelector(vs) => Node::Vector(selector(vs, limits)?),
        Expr::MatrixSelector(ms) => Node::Matrix(selector(&ms.vs, limits)?, range_ms(ms.range)?),
        Expr::Call(call) => {
            let name = call.func.name;
            let Some(f) = RangeFn::by_name(name) else {
                return Err(PromError::Unsupported(format!("the function {name}()")));
            };
            let [arg] = call.args.args.as_slice() else {
                return Err(PromError::Parse(format!("{name}() takes one argument")));
            };
            match arg.as_ref() {
                Expr::MatrixSelector(ms) => {
                    Node::Func(f, selector(&ms.vs, limits)?, range_ms(ms.range)?)
                }
                Expr::Subquery(_) => return Err(PromError::Unsupported("subqueries".into())),
                _ => {
                    return Err(PromError::Parse(format!(
                        "{name}() expects a range vector selector"
                    )));
                }
            }
        }
        Expr::Aggregate(a) => {
            let op_name = a.op.to_string();
            let op = match op_name.as_str() {
                "sum" => AggOp::Sum,
                "avg" => AggOp::Avg,
                "min" => AggOp::Min,
                "max" => AggOp::Max,
                "count" => AggOp::Count,
                _ => {
                    return Err(PromError::Unsupported(format!("the aggregation {op_name}")));
                }
            };
            if a.param.is_some() {
                return Err(PromError::Unsupported(format!("a parameter to {op_name}")));
            }
            let grouping = match &a.modifier {
                None => Grouping::All,
                Some(LabelModifier::Include(l)) => Grouping::By(l.labels.clone()),
                Some(LabelModifier::Exclude(l)) => Grouping::Without(l.labels.clone()),
            };
            let inner = compile(&a.expr, limits)?;
            if matches!(inner, Node::Scalar(_) | Node::Matrix(..)) {
                return Err(PromError::Parse(format!(
                    "{op_name} expects an instant vector"
                )));
            }
            Node::Agg(op, grouping, Box::new(inner))
        }
        Expr::Subquery(_) => return Err(PromError::Unsupported("subqueries".into())),
        Expr::StringLiteral(_) => return Err(PromError::Unsupported("string literals".into())),
        Expr::Extension(_) => return Err(PromError::Unsupported("extensions".into())),
    })
}

fn range_ms(d: std::time::Duration) -> Result<i64, PromError> {
    let ms = duration_ms(d, "a range")?;
    if ms <= 0 {
        return Err(PromError::Param("query: a range must be positive".into()));
    }
    Ok(ms)
}

/// The index label a PromQL label name is stored under.
fn index_label(name: &str) -> &str {
    if name == NAME_LABEL {
        METRIC_LABEL
    } else {
        name
    }
}

/// Whether `name` is answered by the store's index (the metric name, `device`, `metric` and any
/// label stored with series keys) rather than by the registry's device labels.
fn is_store_label(index: &SeriesIndex, name: &str) -> bool {
    name == NAME_LABEL || name == DEVICE_LABEL || name == METRIC_LABEL || index.has_label(name)
}

/// The value of store label `name` on `key` (`""` when it has none).
fn key_value<'k>(key: &'k SeriesKey, name: &str) -> &'k str {
    match name {
        NAME_LABEL | METRIC_LABEL => &key.metric,
        DEVICE_LABEL => &key.device,
        other => key.labels.get(other).map_or("", String::as_str),
    }
}

/// The label set of a series key.
fn key_labels(key: SeriesKey) -> Labels {
    let mut l = key.labels;
    l.insert(NAME_LABEL.into(), key.metric.clone());
    l.insert(METRIC_LABEL.into(), key.metric);
    l.insert(DEVICE_LABEL.into(), key.device);
    l
}

/// The label set of series `id` (its store labels only).
pub fn labels_of(index: &SeriesIndex, id: SeriesId) -> Option<Labels> {
    index.key(id).map(key_labels)
}

/// The label holding a device's groups on its series: the group names, sorted and joined with
/// `,` (absent for a device in no group).
pub const GROUP_LABEL: &str = "group";

/// The label name a registry attribute key shows as, or `None` when it is skipped.
///
/// Registry keys are 1 to 64 bytes of `[A-Za-z0-9_.:-]`; Prometheus label names are
/// `[a-zA-Z_][a-zA-Z0-9_]*`. Keys are sanitised as Prometheus's service discovery does: every
/// `.`, `:` and `-` becomes `_`, and a key starting with a digit gets a leading `_`
/// (`fw-version` -> `fw_version`, `2fa` -> `_2fa`). A name that then starts with `__`
/// (reserved in Prometheus) or is `device`, `metric` or `group` is skipped. When two keys of one
/// device give the same name, the key that needed no change wins, else the first key in byte
/// order ([`DeviceLabels::new`]).
pub fn attribute_label(key: &str) -> Option<String> {
    let mut name = String::with_capacity(key.len() + 1);
    if key.starts_with(|c: char| c.is_ascii_digit()) {
        name.push('_');
    }
    name.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    let reserved = name.is_empty()
        || name.starts_with("__")
        || [DEVICE_LABEL, METRIC_LABEL, GROUP_LABEL].contains(&name.as_str());
    (!reserved).then_some(name)
}

/// A device's labels from the registry: its groups and its attributes as label pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceLabels {
    /// Group names, sorted, without duplicates or empty names.
    groups: Vec<String>,
    /// Attribute label name ([`attribute_label`]) -> value; empty values are left out (an
    /// empty label is no label in Prometheus).
    attributes: Labels,
}

impl DeviceLabels {
    /// The labels of a device in `groups` with `attributes` (registry keys and values).
    pub fn new<G, A, K, V>(groups: G, attributes: A) -> DeviceLabels
    where
        G: IntoIterator,
        G::Item: Into<String>,
        A: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut groups: Vec<String> = groups
            .into_iter()
            .map(Into::into)
            .filter(|g| !g.is_empty())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let mut named: Vec<(String, bool, String, String)> = attributes
            .into_iter()
            .filter_map(|(k, v)| {
                let key = k.as_ref();
                let value: String = v.into();
                let name = attribute_label(key)?;
                (!value.is_empty()).then(|| (name.clone(), name != key, key.to_owned(), value))
            })
            .collect();
        // Per name: the unchanged key first, then by key.
        named.sort();
        let mut attributes = Labels::new();
        for (name, _, _, value) in named {
            attributes.entry(name).or_insert(value);
        }
        DeviceLabels { groups, attributes }
    }

    /// The group names, sorted.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    /// The attribute labels (label name -> value).
    pub fn attributes(&self) -> &Labels {
        &self.attributes
    }

    /// Whether `m` (on a label that is not the store's) holds for this device. For `group`, a
    /// device's values are each of its groups and their joined form (`""` for no group):
    /// `=` / `=~` hold when one of them matches, `!=` / `!~` when none matches the positive
    /// form. Other names take the attribute's value (`""` when absent).
    fn is_match(&self, m: &Match) -> bool {
        if m.name != GROUP_LABEL {
            return m.is_match(self.attributes.get(&m.name).map_or("", String::as_str));
        }
        let positive = |v: &str| match &m.op {
            LabelMatch::Eq(s) | LabelMatch::Ne(s) => s == v,
            LabelMatch::Re(r) | LabelMatch::NotRe(r) => r.is_match(v),
        };
        let joined = self.groups.join(",");
        let any = positive(&joined) || self.groups.iter().any(|g| positive(g));
        match m.op {
            LabelMatch::Eq(_) | LabelMatch::Re(_) => any,
            LabelMatch::Ne(_) | LabelMatch::NotRe(_) => !any,
        }
    }

    /// Adds these labels to a series' `labels` (the store's labels win on a clash).
    fn add_to(&self, labels: &mut Labels) {
        if !self.groups.is_empty() {
            labels
                .entry(GROUP_LABEL.into())
                .or_insert_with(|| self.groups.join(","));
        }
        for (k, v) in &self.attributes {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    /// Names of these labels.
    fn names(&self) -> impl Iterator<Item = &str> {
        (!self.groups.is_empty())
            .then_some(GROUP_LABEL)
            .into_iter()
            .chain(self.attributes.keys().map(String::as_str))
    }

    /// Values of label `name` (each group for `group`).
    fn values(&self, name: &str) -> Vec<&str> {
        if name == GROUP_LABEL {
            self.groups.iter().map(String::as_str).collect()
        } else {
            self.attributes
                .get(name)
                .map(String::as_str)
                .into_iter()
                .collect()
        }
    }
}

/// Where device labels come from: the registry (the telemetry service), or none.
pub trait DeviceLabelSource {
    /// The labels of each of `devices`, in the same order; a device the registry does not
    /// know has none ([`DeviceLabels::default`]).
    fn device_labels(&self, devices: &[&str]) -> Result<Vec<DeviceLabels>, PromError>;

    /// The devices whose device label `label` can be `value` (a superset is fine: every
    /// matcher is checked on the devices' labels later), from an index, or `None` when the
    /// source has no index for it or more than `max` devices would answer (the caller then
    /// examines the candidate series instead). The default has no index.
    fn devices_with(
        &self,
        label: &str,
        value: &str,
        max: usize,
    ) -> Result<Option<Vec<String>>, PromError> {
        let _ = (label, value, max);
        Ok(None)
    }
}

/// The device sets of `sel`'s `=` matchers on device labels (`group`, attributes) with a
/// non-empty value, from `source`'s index ([`DeviceLabelSource::devices_with`], at most
/// [`PromLimits::max_examined`] devices each): what [`candidates_within`] narrows the
/// candidate series by. `!=`, `=~` and `!~` matchers have none (their selectors examine the
/// candidate series, bounded by [`PromLimits::max_examined`]).
pub fn device_sets(
    sel: &Selector,
    source: &dyn DeviceLabelSource,
    limits: &PromLimits,
) -> Result<Vec<DeviceSet>, PromError> {
    let mut out = Vec::new();
    for m in &sel.matchers {
        let LabelMatch::Eq(v) = &m.op else {
            continue;
        };
        if v.is_empty() || [NAME_LABEL, DEVICE_LABEL, METRIC_LABEL].contains(&m.name.as_str()) {
            continue;
        }
        if let Some(devices) = source.devices_with(&m.name, v, limits.max_examined)? {
            out.push(DeviceSet {
                label: m.name.clone(),
                devices,
            });
        }
    }
    Ok(out)
}

/// No registry: no device has labels beyond the store's.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDeviceLabels;

impl DeviceLabelSource for NoDeviceLabels {
    fn device_labels(&self, devices: &[&str]) -> Result<Vec<DeviceLabels>, PromError> {
        Ok(vec![DeviceLabels::default(); devices.len()])
    }
}

/// A fixed table of device labels (tests, tools).
impl DeviceLabelSource for BTreeMap<String, DeviceLabels> {
    fn device_labels(&self, devices: &[&str]) -> Result<Vec<DeviceLabels>, PromError> {
        Ok(devices
            .iter()
            .map(|d| self.get(*d).cloned().unwrap_or_default())
            .collect())
    }
}

/// Labels of each distinct device of `devices` (sorted, deduplicated first).
fn lookup<'a>(
    devices: impl Iterator<Item = &'a str>,
    source: &dyn DeviceLabelSource,
) -> Result<BTreeMap<&'a str, DeviceLabels>, PromError> {
    let mut ids: Vec<&str> = devices.collect();
    ids.sort_unstable();
    ids.dedup();
    let labels = source.device_labels(&ids)?;
    Ok(ids.into_iter().zip(labels).collect())
}

/// The series a selector's store matchers (metric name, `device`, `metric`) select, before the
/// registry's device labels are applied: what [`candidates`] answers on the telemetry writer
/// thread, and [`finish`] completes with the labels of the devices (read elsewhere).
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    series: Vec<(SeriesId, SeriesKey)>,
    /// The selector's matchers on device labels (group, attributes).
    device_matchers: Vec<Match>,
}

impl Candidates {
    /// The devices of the candidate series (with repeats).
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.series.iter().map(|(_, k)| k.device.as_str())
    }

    /// Number of candidate series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// The series whose store labels satisfy `sel`'s store matchers and that `keep` keeps (the
/// `start`/`end` window of the label APIs), ascending by id.
///
/// Resolution goes through the index's postings: an equality matcher on a store label (or, if
/// none, the first store matcher that needs the label set) names the candidate posting lists.
/// Only when every non-empty matcher is on a device label (`{group="lab"}`) are all series
/// candidates, and then at most [`PromLimits::max_examined`] ([`PromError::TooManyExamined`]
/// one past). Bounds on the answer: [`PromLimits::max_series`] ([`PromError::TooManySeries`])
/// when `sel` has no device-label matcher (the candidates are the answer), else
/// [`PromLimits::max_examined`]; calls of `keep` count against [`PromLimits::max_examined`]
/// too.
pub fn candidates(
    index: &SeriesIndex,
    sel: &Selector,
    limits: &PromLimits,
    keep: Option<&dyn Fn(SeriesId) -> bool>,
) -> Result<Candidates, PromError> {
    candidates_within(index, sel, limits, keep, &[])
}

/// The devices a device-label matcher of a selector can hold for, from a device index (the
/// registry's group and attribute indexes): `label` is the matcher's label name, `devices` a
/// superset of the devices whose labels satisfy it (sorted or not, repeats allowed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceSet {
    /// The matcher's label name (`group` or an attribute label).
    pub label: String,
    /// Every device the matcher can hold for (and maybe more).
    pub devices: Vec<String>,
}

/// [`candidates`], with the devices some device-label matchers can hold for already known
/// (`sets`): the candidate series are then the postings of those devices (intersected across
/// sets, and with the store's equality matcher if any), not every series. A set whose label is
/// a store label here is ignored (the store's label wins). [`finish`] still applies every
/// matcher, so a set may be a superset.
pub fn candidates_within(
    index: &SeriesIndex,
    sel: &Selector,
    limits: &PromLimits,
    keep: Option<&dyn Fn(SeriesId) -> bool>,
    sets: &[DeviceSet],
) -> Result<Candidates, PromError> {
    let (store, device_matchers): (Vec<&Match>, Vec<&Match>) = sel
        .matchers
        .iter()
        .partition(|m| is_store_label(index, &m.name));
    let anchor = store
        .iter()
        .find(|m| matches!(&m.op, LabelMatch::Eq(v) if !v.is_empty()))
        .or_else(|| store.iter().find(|m| !m.is_match("")));
    // The devices every usable set allows.
    let mut allowed: Option<std::collections::BTreeSet<&str>> = None;
    for set in sets.iter().filter(|s| !is_store_label(index, &s.label)) {
        let these: std::collections::BTreeSet<&str> =
            set.devices.iter().map(String::as_str).collect();
        allowed = Some(match allowed {
            None => these,
            Some(before) => before.intersection(&these).copied().collect(),
        });
    }
    let by_devices = allowed.map(|devices| {
        let mut ids: Vec<SeriesId> = Vec::new();
        for d in devices {
            ids.extend_from_slice(index.postings(DEVICE_LABEL, d));
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    });
    let anchor_eq = anchor.and_then(|m| match &m.op {
        LabelMatch::Eq(v) => Some((m, v)),
        _ => None,
    });
    let ids: Vec<SeriesId> = match (by_devices, anchor_eq) {
        (Some(ids), Some((m, v))) => {
            // The shorter list, then the store matchers filter it below.
            let posted = index.postings(index_label(&m.name), v);
            if posted.len() < ids.len() {
                posted.to_vec()
            } else {
                ids
            }
        }
        (Some(ids), None) => ids,
        (None, _) => candidate_ids(index, anchor, &device_matchers, limits)?,
    };
    candidates_from(index, ids, store, device_matchers, limits, keep)
}

/// The candidate ids of [`candidates_within`] without device sets: the anchor's postings, or
/// every series (at most [`PromLimits::max_examined`]).
fn candidate_ids(
    index: &SeriesIndex,
    anchor: Option<&&Match>,
    device_matchers: &[&Match],
    limits: &PromLimits,
) -> Result<Vec<SeriesId>, PromError> {
    let examined_past = || PromError::TooManyExamined {
        limit: limits.max_examined,
    };
    Ok(match anchor {
        Some(anchor) => {
            let name = index_label(&anchor.name);
            match &anchor.op {
                LabelMatch::Eq(v) => index.postings(name, v).to_vec(),
                _ => {
                    let mut ids = Vec::new();
                    for v in index.label_values(name) {
                        if anchor.is_match(v) {
                            ids.extend_from_slice(index.postings(name, v));
                        }
                    }
                    ids.sort_unstable();
                    ids.dedup();
                    ids
                }
            }
        }
        None if device_matchers.iter().any(|m| !m.is_match("")) => {
            if index.len() > limits.max_examined {
                return Err(examined_past());
            }
            (0..index.len() as u32).map(SeriesId).collect()
        }
        None => {
            return Err(PromError::Param(
                "query: vector selector must contain at least one non-empty matcher".into(),
            ));
        }
    })
}

/// The end of [`candidates_within`]: `ids` filtered by the store matchers and `keep`.
fn candidates_from(
    index: &SeriesIndex,
    ids: Vec<SeriesId>,
    store: Vec<&Match>,
    device_matchers: Vec<&Match>,
    limits: &PromLimits,
    keep: Option<&dyn Fn(SeriesId) -> bool>,
) -> Result<Candidates, PromError> {
    let examined_past = || PromError::TooManyExamined {
        limit: limits.max_examined,
    };
    let mut kept = 0usize;
    let mut out = Vec::new();
    for id in ids {
        let Some(key) = index.key(id) else {
            continue;
        };
        if !store
            .iter()
            .all(|m| m.is_match(key_value(&key, index_label(&m.name))))
        {
            continue;
        }
        if let Some(keep) = keep {
            kept += 1;
            if kept > limits.max_examined {
                return Err(examined_past());
            }
            if !keep(id) {
                continue;
            }
        }
        if device_matchers.is_empty() {
            if out.len() >= limits.max_series {
                return Err(PromError::TooManySeries {
                    limit: limits.max_series,
                });
            }
        } else if out.len() >= limits.max_examined {
            return Err(examined_past());
        }
        out.push((id, key));
    }
    Ok(Candidates {
        series: out,
        device_matchers: device_matchers.into_iter().cloned().collect(),
    })
}

/// Completes [`candidates`]: reads the labels of their devices from `devices` (one call),
/// keeps the series whose device labels satisfy the selector's device-label matchers, and
/// answers them with their labels (store labels plus the device's `group` and attribute
/// labels), ascending by id; more than [`PromLimits::max_series`] is
/// [`PromError::TooManySeries`].
pub fn finish(
    candidates: Candidates,
    devices: &dyn DeviceLabelSource,
    limits: &PromLimits,
) -> Result<Vec<(SeriesId, Labels)>, PromError> {
    let Candidates {
        series,
        device_matchers,
    } = candidates;
    let by_device = lookup(series.iter().map(|(_, k)| k.device.as_str()), devices)?;
    let none = DeviceLabels::default();
    let mut keep = Vec::new();
    for (i, (_, key)) in series.iter().enumerate() {
        let dl = by_device.get(key.device.as_str()).unwrap_or(&none);
        if device_matchers.iter().all(|m| dl.is_match(m)) {
            if keep.len() >= limits.max_series {
                return Err(PromError::TooManySeries {
                    limit: limits.max_series,
                });
            }
            keep.push((i, dl.clone()));
        }
    }
    drop(by_device);
    let mut series: Vec<Option<(SeriesId, SeriesKey)>> = series.into_iter().map(Some).collect();
    Ok(keep
        .into_iter()
        .filter_map(|(i, dl)| {
            let (id, key) = series[i].take()?;
            let mut labels = key_labels(key);
            dl.add_to(&mut labels);
            Some((id, labels))
        })
        .collect())
}

/// The series `sel` matches by the store's labels only (device labels are unknown here: a
/// device-label matcher sees none), with their labels, ascending by id; more than
/// [`PromLimits::max_series`] is [`PromError::TooManySeries`]. [`candidates`] then [`finish`]
/// with [`NoDeviceLabels`].
pub fn select(
    index: &SeriesIndex,
    sel: &Selector,
    limits: &PromLimits,
) -> Result<Vec<(SeriesId, Labels)>, PromError> {
    finish(
        candidates(index, sel, limits, None)?,
        &NoDeviceLabels,
        limits,
    )
}

/// A [`Db`] with the labels of its devices from `devices`: a [`SeriesSource`] whose selectors
/// see device groups and attributes (the telemetry service's own source reads the store and
/// the registry in separate jobs).
pub struct WithDeviceLabels<'a> {
    /// The store.
    pub db: &'a Db,
    /// Where device labels come from.
    pub devices: &'a dyn DeviceLabelSource,
}

impl SeriesSource for WithDeviceLabels<'_> {
    fn select(
        &self,
        sel: &Selector,
        limits: &PromLimits,
    ) -> Result<Vec<(SeriesId, Labels)>, PromError> {
        let c = candidates(self.db.engine().index(), sel, limits, None)?;
        finish(c, self.devices, limits)
    }

    fn raw(&self, id: SeriesId, from: i64, to: i64) -> Result<Vec<Point>, PromError> {
        Ok(Db::raw(self.db, id, from, to)?)
    }
}

/// Where the evaluator reads series: the [`Db`] itself, or a reader that fetches each piece
/// separately (the telemetry service runs every call as its own job on the writer thread, so
/// writes go on between the series of a long query instead of waiting for all of it).
pub trait SeriesSource {
    /// The series `sel` matches, with their labels (as [`select`]).
    fn select(
        &self,
        sel: &Selector,
        limits: &PromLimits,
    ) -> Result<Vec<(SeriesId, Labels)>, PromError>;
    /// Points of series `id` with `from <= ts < to` (as [`Db::raw`]).
    fn raw(&self, id: SeriesId, from: i64, to: i64) -> Result<Vec<Point>, PromError>;
}

impl SeriesSource for Db {
    fn select(
        &self,
        sel: &Selector,
        limits: &PromLimits,
    ) -> Result<Vec<(SeriesId, Labels)>, PromError> {
        select(self.engine().index(), sel, limits)
    }

    fn raw(&self, id: SeriesId, from: i64, to: i64) -> Result<Vec<Point>, PromError> {
        Ok(Db::raw(self, id, from, to)?)
    }
}

/// Evaluation times `start, start + step, .. <= end`, in ms.
#[derive(Debug, Clone, Copy)]
struct Steps {
    start: i64,
    end: i64,
    step: i64,
}

impl Steps {
    fn iter(self) -> impl Iterator<Item = i64> {
        let Steps { start, end, step } = self;
        (0..)
            .map(move |i: i64| start.saturating_add(i.saturating_mul(step)))
            .take_while(move |t| *t <= end)
    }
}

struct Budget {
    used: u64,
    limit: u64,
}

impl Budget {
    fn take(&mut self, n: usize) -> Result<(), PromError> {
        self.used = self.used.saturating_add(n as u64);
        if self.used > self.limit {
            return Err(PromError::TooManySamples { limit: self.limit });
        }
        Ok(())
    }
}

/// Evaluates `query` at each step of a range query. `start`, `end` in ms, `step` in ms.
///
/// Refuses `end < start`, a step that is not positive and more than [`MAX_STEPS`] steps with
/// Prometheus's messages.
pub fn eval_range(
    db: &dyn SeriesSource,
    query: &Query,
    start: i64,
    end: i64,
    step: i64,
    limits: &PromLimits,
) -> Result<Matrix, PromError> {
    check_range_params(start, end, step)?;
    query.check_range()?;
    let mut budget = Budget {
        used: 0,
        limit: limits.max_samples,
    };
    let steps = Steps { start, end, step };
    match &query.root {
        Node::Scalar(v) => {
            let points: Vec<(i64, f64)> = steps.iter().map(|t| (t, *v)).collect();
            budget.take(points.len())?;
            Ok(vec![(Labels::new(), points)])
        }
        node => eval_vector(db, node, steps, limits, &mut budget),
    }
}

/// Checks the parameters of a range query as Prometheus does.
pub fn check_range_params(start: i64, end: i64, step: i64) -> Result<(), PromError> {
    if end < start {
        return Err(PromError::Param(
            "end: end timestamp must not be before start time".into(),
        ));
    }
    if step <= 0 {
        return Err(PromError::Param(
            "step: zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    if (end - start) / step > MAX_STEPS {
        return Err(PromError::TooManyPoints);
    }
    Ok(())
}

/// Evaluates `query` at time `t` (ms).
pub fn eval_instant(
    db: &dyn SeriesSource,
    query: &Query,
    t: i64,
    limits: &PromLimits,
) -> Result<Instant, PromError> {
    let mut budget = Budget {
        used: 0,
        limit: limits.max_samples,
    };
    match &query.root {
        Node::Scalar(v) => Ok(Instant::Scalar(*v)),
        Node::Matrix(sel, range) => {
            let mut out = Vec::new();
            for (id, labels) in db.select(sel, limits)? {
                let at = t.saturating_sub(sel.offset_ms);
                let pts = window_points(db, id, at.saturating_sub(*range), at, &mut budget)?;
                if !pts.is_empty() {
                    let pts = pts.iter().map(|p| (p.ts, as_f64(p.value))).collect();
                    out.push((labels, pts));
                }
            }
            Ok(Instant::Matrix(out))
        }
        node => {
            let steps = Steps {
                start: t,
                end: t,
                step: 1,
            };
            let m = eval_vector(db, node, steps, limits, &mut budget)?;
            Ok(Instant::Vector(
                m.into_iter()
                    .filter_map(|(l, pts)| pts.first().map(|(_, v)| (l, *v)))
                    .collect(),
            ))
        }
    }
}

/// Points of `id` with `lo < ts <= hi`.
fn window_points(
    db: &dyn SeriesSource,
    id: SeriesId,
    lo: i64,
    hi: i64,
    budget: &mut Budget,
) -> Result<Vec<Point>, PromError> {
    let pts = db.raw(id, lo.saturating_add(1), hi.saturating_add(1))?;
    budget.take(pts.len())?;
    Ok(pts)
}

fn eval_vector(
    db: &dyn SeriesSource,
    node: &Node,
    steps: Steps,
    limits: &PromLimits,
    budget: &mut Budget,
) -> Result<Matrix, PromError> {
    match node {
        Node::Vector(sel) => eval_series(db, sel, LOOKBACK_MS, None, steps, limits, budget),
        Node::Func(f, sel, range) => eval_series(db, sel, *range, Some(*f), steps, limits, budget),
        Node::Agg(op, grouping, inner) => {
            let m = eval_vector(db, inner, steps, limits, budget)?;
            Ok(aggregate(*op, grouping, m))
        }
        Node::Scalar(_) | Node::Matrix(..) => Err(PromError::Unsupported(
            "this expression in this position".into(),
        )),
    }
}

fn eval_series(
    db: &dyn SeriesSource,
    sel: &Selector,
    window: i64,
    f: Option<RangeFn>,
    steps: Steps,
    limits: &PromLimits,
    budget: &mut Budget,
) -> Result<Matrix, PromError> {
    let mut out = Vec::new();
    for (id, mut labels) in db.select(sel, limits)? {
        let lo = steps
            .start
            .saturating_sub(sel.offset_ms)
            .saturating_sub(window);
        let hi = steps.end.saturating_sub(sel.offset_ms);
        let pts = window_points(db, id, lo, hi, budget)?;
        if pts.is_empty() {
            continue;
        }
        let mut values = Vec::new();
        // The window (t - window, t] slides forward: [a, b) are its points.
        let (mut a, mut b) = (0usize, 0usize);
        for t in steps.iter() {
            let at = t.saturating_sub(sel.offset_ms);
            while b < pts.len() && pts[b].ts <= at {
                b += 1;
            }
            while a < b && pts[a].ts <= at.saturating_sub(window) {
                a += 1;
            }
            let w = &pts[a..b];
            let v = match f {
                None => w.last().map(|p| as_f64(p.value)),
                Some(f) => apply(f, w, at.saturating_sub(window), at, window),
            };
            if let Some(v) = v {
                values.push((t, v));
            }
        }
        if values.is_empty() {
            continue;
        }
        budget.take(values.len())?;
        if f.is_some_and(|f| f != RangeFn::Last) {
            labels.remove(NAME_LABEL);
        }
        out.push((labels, values));
    }
    Ok(out)
}

/// `f` over the points of the window `(lo, hi]`.
fn apply(f: RangeFn, w: &[Point], lo: i64, hi: i64, window: i64) -> Option<f64> {
    if w.is_empty() {
        return None;
    }
    let vals = || w.iter().map(|p| as_f64(p.value));
    match f {
        RangeFn::Avg => Some(vals().sum::<f64>() / w.len() as f64),
        RangeFn::Min => vals().reduce(f64::min),
        RangeFn::Max => vals().reduce(f64::max),
        RangeFn::Sum => Some(vals().sum()),
        RangeFn::Count => Some(w.len() as f64),
        RangeFn::Last => w.last().map(|p| as_f64(p.value)),
        RangeFn::Irate => {
            let [.., p, q] = w else { return None };
            let (a, b) = (as_f64(p.value), as_f64(q.value));
            let d = if b < a { b } else { b - a };
            Some(d * 1000.0 / (q.ts - p.ts) as f64)
        }
        RangeFn::Rate | RangeFn::Increase | RangeFn::Delta => extrapolated(w, lo, hi, window, f),
    }
}

/// Prometheus's `extrapolatedRate` over the window `(lo, hi]`.
fn extrapolated(w: &[Point], lo: i64, hi: i64, window: i64, f: RangeFn) -> Option<f64> {
    let (first, last) = (w.first()?, w.last()?);
    if w.len() < 2 {
        return None;
    }
    let counter = f != RangeFn::Delta;
    let (fv, lv) = (as_f64(first.value), as_f64(last.value));
    let mut result = lv - fv;
    if counter {
        for p in w.windows(2) {
            let (a, b) = (as_f64(p[0].value), as_f64(p[1].value));
            if b < a {
                result += a;
            }
        }
    }
    let mut to_start = (first.ts - lo) as f64 / 1000.0;
    let mut to_end = (hi - last.ts) as f64 / 1000.0;
    let sampled = (last.ts - first.ts) as f64 / 1000.0;
    let avg_gap = sampled / (w.len() - 1) as f64;
    if counter && result > 0.0 && fv >= 0.0 {
        let to_zero = sampled * (fv / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_gap * 1.1;
    let mut interval = sampled;
    if to_start >= threshold {
        to_start = avg_gap / 2.0;
    }
    interval += to_start;
    if to_end >= threshold {
        to_end = avg_gap / 2.0;
    }
    interval += to_end;
    let mut factor = interval / sampled;
    if f == RangeFn::Rate {
        factor /= window as f64 / 1000.0;
    }
    Some(result * factor)
}

#[derive(Debug, Clone, Copy)]
struct Acc {
    sum: f64,
    count: u64,
    min: f64,
    max: f64,
}

fn aggregate(op: AggOp, grouping: &Grouping, m: Matrix) -> Matrix {
    let mut groups: BTreeMap<Labels, BTreeMap<i64, Acc>> = BTreeMap::new();
    for (labels, points) in m {
        let key: Labels = match grouping {
            Grouping::All => Labels::new(),
            Grouping::By(names) => labels
                .into_iter()
                .filter(|(k, _)| names.iter().any(|n| n == k))
                .collect(),
            Grouping::Without(names) => labels
                .into_iter()
                .filter(|(k, _)| k != NAME_LABEL && !names.iter().any(|n| n == k))
                .collect(),
        };
        let g = groups.entry(key).or_default();
        for (t, v) in points {
            let a = g.entry(t).or_insert(Acc {
                sum: 0.0,
                count: 0,
                min: v,
                max: v,
            });
            a.sum += v;
            a.count += 1;
            a.min = a.min.min(v);
            a.max = a.max.max(v);
        }
    }
    groups
        .into_iter()
        .map(|(labels, accs)| {
            let points = accs
                .into_iter()
                .map(|(t, a)| {
                    let v = match op {
                        AggOp::Sum => a.sum,
                        AggOp::Avg => a.sum / a.count as f64,
                        AggOp::Min => a.min,
                        AggOp::Max => a.max,
                        AggOp::Count => a.count as f64,
                    };
                    (t, v)
                })
                .collect();
            (labels, points)
        })
        .collect()
}

/// The time window of the `series` and label APIs: `from <= ts < to` (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start, included.
    pub from: i64,
    /// End, excluded.
    pub to: i64,
}

impl Window {
    /// All time.
    pub const ALL: Window = Window {
        from: i64::MIN,
        to: i64::MAX,
    };
}

/// Phase one of [`series`] (on the telemetry writer thread): each selector's [`candidates`]
/// with data in `window` ([`Db::has_data`]; every series for [`Window::ALL`]).
pub fn series_candidates(
    db: &Db,
    selectors: &[Selector],
    window: Window,
    limits: &PromLimits,
) -> Result<Vec<Candidates>, PromError> {
    series_candidates_within(db, selectors, &[], window, limits)
}

/// [`series_candidates`] with each selector's [`device_sets`] (`sets[i]` for `selectors[i]`;
/// missing entries are no sets), as [`candidates_within`] takes them.
pub fn series_candidates_within(
    db: &Db,
    selectors: &[Selector],
    sets: &[Vec<DeviceSet>],
    window: Window,
    limits: &PromLimits,
) -> Result<Vec<Candidates>, PromError> {
    let in_window = |id: SeriesId| db.has_data(id, window.from, window.to);
    let keep: Option<&dyn Fn(SeriesId) -> bool> = if window == Window::ALL {
        None
    } else {
        Some(&in_window)
    };
    selectors
        .iter()
        .enumerate()
        .map(|(i, sel)| {
            let sets = sets.get(i).map_or(&[][..], Vec::as_slice);
            candidates_within(db.engine().index(), sel, limits, keep, sets)
        })
        .collect()
}

/// Phase two of [`series`]: the candidates' device labels applied, the union of the selectors'
/// series (deduplicated, by id); more than [`PromLimits::max_series`] is
/// [`PromError::TooManySeries`].
pub fn series_finish(
    candidates: Vec<Candidates>,
    devices: &dyn DeviceLabelSource,
    limits: &PromLimits,
) -> Result<Vec<Labels>, PromError> {
    let mut all: BTreeMap<SeriesId, Labels> = BTreeMap::new();
    for c in candidates {
        all.extend(finish(c, devices, limits)?);
        if all.len() > limits.max_series {
            return Err(PromError::TooManySeries {
                limit: limits.max_series,
            });
        }
    }
    Ok(all.into_values().collect())
}

/// Series matching any of `selectors` that have data in `window` (deduplicated, by id), with
/// their device labels from `devices`, or none when `selectors` is empty.
pub fn series(
    db: &Db,
    selectors: &[Selector],
    window: Window,
    devices: &dyn DeviceLabelSource,
    limits: &PromLimits,
) -> Result<Vec<Labels>, PromError> {
    series_finish(
        series_candidates(db, selectors, window, limits)?,
        devices,
        limits,
    )
}

/// What the index says about label names and values in a window, before the registry's device
/// labels are known: phase one of the label APIs without `match[]` ([`index_labels`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexLabels {
    /// Store label names of the series with data (`__name__` included).
    names: Vec<String>,
    /// Values of the requested label when it is a store label.
    values: Vec<String>,
    /// Devices with data, when device labels are asked for.
    devices: Vec<String>,
    /// Whether the requested label is a store label.
    store_label: bool,
}

impl IndexLabels {
    /// The devices whose labels [`label_names_finish`] / [`label_values_finish`] need.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }
}

/// Counts [`Db::has_data`] calls and looked-up devices against [`PromLimits::max_examined`].
struct Examined<'a> {
    db: &'a Db,
    window: Window,
    used: usize,
    limit: usize,
}

impl Examined<'_> {
    /// Whether one of `ids` has data in the window (every series does for [`Window::ALL`]).
    fn any(&mut self, ids: &[SeriesId]) -> Result<bool, PromError> {
        if self.window == Window::ALL {
            return Ok(!ids.is_empty());
        }
        for id in ids {
            self.used += 1;
            if self.used > self.limit {
                return Err(PromError::TooManyExamined { limit: self.limit });
            }
            if self.db.has_data(*id, self.window.from, self.window.to) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Phase one of the label APIs without `match[]` (on the telemetry writer thread): for `name`
/// (`None`: the label names), what the index holds with data in `window`.
///
/// Each label value is checked through its posting list until one series has data in the
/// window ([`Db::has_data`]), so a value costs one check when its first series has data. At
/// most [`PromLimits::max_examined`] checks, and (when device labels are involved: label names,
/// or a label that is not the store's) at most that many devices; one past is
/// [`PromError::TooManyExamined`]. [`Window::ALL`] checks nothing (the index answers).
pub fn index_labels(
    db: &Db,
    name: Option<&str>,
    window: Window,
    limits: &PromLimits,
) -> Result<IndexLabels, PromError> {
    let index = db.engine().index();
    let mut ex = Examined {
        db,
        window,
        used: 0,
        limit: limits.max_examined,
    };
    let mut out = IndexLabels::default();
    if let Some(name) = name
        && is_store_label(index, name)
    {
        let stored = index_label(name);
        out.store_label = true;
        for v in index.label_values(stored) {
            if ex.any(index.postings(stored, v))? {
                out.values.push(v.to_owned());
            }
        }
        return Ok(out);
    }
    // Devices with data: their labels come from the registry.
    let all_devices = index.label_values(DEVICE_LABEL);
    if window == Window::ALL && all_devices.len() > limits.max_examined {
        return Err(PromError::TooManyExamined {
            limit: limits.max_examined,
        });
    }
    for d in all_devices {
        if ex.any(index.postings(DEVICE_LABEL, d))? {
            if out.devices.len() >= limits.max_examined {
                return Err(PromError::TooManyExamined {
                    limit: limits.max_examined,
                });
            }
            out.devices.push(d.to_owned());
        }
    }
    if name.is_none() {
        if !out.devices.is_empty() {
            out.names.extend(
                [NAME_LABEL, DEVICE_LABEL, METRIC_LABEL]
                    .into_iter()
                    .map(String::from),
            );
        }
        for n in index.label_names() {
            if n == DEVICE_LABEL || n == METRIC_LABEL {
                continue;
            }
            for v in index.label_values(n) {
                if ex.any(index.postings(n, v))? {
                    out.names.push(n.to_owned());
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Phase two of [`label_names`] without `match[]`: the store's names and the device labels'
/// names of the devices with data, sorted.
pub fn label_names_finish(
    found: IndexLabels,
    devices: &dyn DeviceLabelSource,
) -> Result<Vec<String>, PromError> {
    let by_device = lookup(found.devices.iter().map(String::as_str), devices)?;
    let mut names: Vec<String> = found.names;
    for dl in by_device.values() {
        names.extend(dl.names().map(String::from));
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Phase two of [`label_values`] without `match[]`: the store label's values, or the device
/// label's values of the devices with data (each group name for `group`), sorted.
pub fn label_values_finish(
    name: &str,
    found: IndexLabels,
    devices: &dyn DeviceLabelSource,
) -> Result<Vec<String>, PromError> {
    if found.store_label {
        return Ok(found.values);
    }
    let by_device = lookup(found.devices.iter().map(String::as_str), devices)?;
    let mut values: Vec<String> = by_device
        .values()
        .flat_map(|dl| dl.values(name))
        .map(String::from)
        .collect();
    values.sort();
    values.dedup();
    Ok(values)
}

/// Label names in use (device labels from `devices` included): of the series matching
/// `selectors` with data in `window`, or, if `selectors` is empty, of every series with data
/// in `window` ([`index_labels`]).
pub fn label_names(
    db: &Db,
    selectors: &[Selector],
    window: Window,
    devices: &dyn DeviceLabelSource,
    limits: &PromLimits,
) -> Result<Vec<String>, PromError> {
    if selectors.is_empty() {
        return label_names_finish(index_labels(db, None, window, limits)?, devices);
    }
    Ok(names_of(series(db, selectors, window, devices, limits)?))
}

/// The label names of `series`, sorted.
pub fn names_of(series: Vec<Labels>) -> Vec<String> {
    let mut names: Vec<String> = series.into_iter().flat_map(|l| l.into_keys()).collect();
    names.sort();
    names.dedup();
    names
}

/// The values of label `name` on `series`, sorted (each group name for `group`, as a matcher
/// `group="x"` selects them).
pub fn values_of(name: &str, series: Vec<Labels>) -> Vec<String> {
    let mut values: Vec<String> = series
        .into_iter()
        .filter_map(|mut l| l.remove(name))
        .flat_map(|v| {
            if name == GROUP_LABEL {
                v.split(',').map(String::from).collect()
            } else {
                vec![v]
            }
        })
        .collect();
    values.sort();
    values.dedup();
    values
}

/// Values of label `name` (device labels from `devices` included): of the series matching
/// `selectors` with data in `window`, or, if `selectors` is empty, of every series with data
/// in `window` ([`index_labels`]).
pub fn label_values(
    db: &Db,
    name: &str,
    selectors: &[Selector],
    window: Window,
    devices: &dyn DeviceLabelSource,
    limits: &PromLimits,
) -> Result<Vec<String>, PromError> {
    if selectors.is_empty() {
        return label_values_finish(name, index_labels(db, Some(name), window, limits)?, devices);
    }
    Ok(values_of(
        name,
        series(db, selectors, window, devices, limits)?,
    ))
}

/// Parses a time parameter (`name` for the message): Unix seconds (a float) or RFC 3339;
/// answers ms.
pub fn parse_time(name: &str, s: &str) -> Result<i64, PromError> {
    if let Ok(secs) = s.parse::<f64>() {
        return secs_to_ms(secs).ok_or_else(|| {
            PromError::Param(format!("{name}: cannot parse {s:?} to a valid timestamp"))
        });
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| PromError::Param(format!("{name}: cannot parse {s:?} to a valid timestamp")))
}

/// Parses a duration parameter (`name` for the message): seconds (a float) or a Prometheus
/// duration such as `15s` or `1m30s`; answers ms.
pub fn parse_duration(name: &str, s: &str) -> Result<i64, PromError> {
    let bad = || PromError::Param(format!("{name}: cannot parse {s:?} to a valid duration"));
    if let Ok(secs) = s.parse::<f64>() {
        return secs_to_ms(secs).ok_or_else(bad);
    }
    // The crate's parser panics on negative floats; floats never reach it.
    let d = promql_parser::util::parse_duration(s).map_err(|_| bad())?;
    i64::try_from(d.as_millis()).map_err(|_| bad())
}

fn secs_to_ms(secs: f64) -> Option<i64> {
    // About ±292,000 years fit in i64 ms; refuse far beyond any real time.
    if !secs.is_finite() || secs.abs() > 1e12 {
        return None;
    }
    Some((secs * 1000.0).round() as i64)
}

/// A value as Prometheus writes it in JSON (`"1.5"`, `"NaN"`, `"+Inf"`, `"-Inf"`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DbConfig;
    use crate::value::Value;

    /// Device, metric and `(ms, value)` points of one test series.
    type Spec<'a> = (&'a str, &'a str, &'a [(i64, f64)]);

    fn db(series: &[Spec]) -> Db {
        let mut db = Db::new(DbConfig::default()).expect("db");
        let mut wal = Vec::new();
        for (device, metric, pts) in series {
            let id = db
                .engine_mut()
                .series(&SeriesKey::new(*device, *metric), &mut wal)
                .expect("series");
            let batch: Vec<_> = pts
                .iter()
                .map(|&(ts, v)| {
                    (
                        id,
                        Point {
                            ts,
                            value: Value::F64(v),
                        },
                    )
                })
                .collect();
            db.engine_mut().append(&batch, &mut wal).expect("append");
        }
        db
    }

    fn q(text: &str) -> Query {
        Query::parse(text, &PromLimits::default()).expect("parses")
    }

    fn range(db: &Db, text: &str, start: i64, end: i64, step: i64) -> Matrix {
        eval_range(db, &q(text), start, end, step, &PromLimits::default()).expect("evaluates")
    }

    const T0: i64 = 1_700_000_000_000;

    fn every_10s(n: i64, f: impl Fn(i64) -> f64) -> Vec<(i64, f64)> {
        (0..n).map(|i| (T0 + i * 10_000, f(i))).collect()
    }

    #[test]
    fn both_selector_forms_select_the_same_series() {
        let pts = every_10s(3, |i| i as f64);
        let d = db(&[
            ("d1", "temp", &pts),
            ("d2", "temp", &pts),
            ("d1", "hum", &pts),
        ]);
        let a = range(&d, r#"temp{device="d1"}"#, T0, T0 + 20_000, 10_000);
        let b = range(
            &d,
            r#"{device="d1",metric="temp"}"#,
            T0,
            T0 + 20_000,
            10_000,
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0["device"], "d1");
        assert_eq!(a[0].0["__name__"], "temp");
        assert_eq!(
            a[0].1,
            vec![(T0, 0.0), (T0 + 10_000, 1.0), (T0 + 20_000, 2.0)]
        );
        assert_eq!(range(&d, r#"temp{device!="d1"}"#, T0, T0, 1).len(), 1);
        assert_eq!(range(&d, r#"{device=~"d.*"}"#, T0, T0, 1).len(), 3);
        assert_eq!(
            range(&d, r#"{device=~"d.*",metric!~"te.*"}"#, T0, T0, 1).len(),
            1
        );
    }

    #[test]
    fn instant_selector_looks_back_five_minutes() {
        let d = db(&[("d1", "temp", &[(T0, 7.0)])]);
        let m = range(&d, "temp", T0 - 10_000, T0 + 400_000, 100_000);
        // Steps T0-10s (before the point), T0+90s, +190s, +290s (in lookback), +390s (out).
        let ts: Vec<i64> = m[0].1.iter().map(|p| p.0).collect();
        assert_eq!(ts, vec![T0 + 90_000, T0 + 190_000, T0 + 290_000]);
        assert!(m[0].1.iter().all(|p| p.1 == 7.0));
    }

    #[test]
    fn over_time_windows_are_left_open() {
        let pts = every_10s(7, |i| i as f64); // 0..6 at T0 .. T0+60s
        let d = db(&[("d1", "temp", &pts)]);
        let at = T0 + 60_000;
        let one = |f: &str| {
            let m = range(&d, &format!("{f}(temp[30s])"), at, at, 1);
            assert!(!m[0].0.contains_key("__name__") || f == "last_over_time");
            m[0].1[0].1
        };
        // (T0+30s, T0+60s]: values 4, 5, 6.
        assert_eq!(one("avg_over_time"), 5.0);
        assert_eq!(one("min_over_time"), 4.0);
        assert_eq!(one("max_over_time"), 6.0);
        assert_eq!(one("sum_over_time"), 15.0);
        assert_eq!(one("count_over_time"), 3.0);
        assert_eq!(one("last_over_time"), 6.0);
    }

    #[test]
    fn rate_matches_prometheus_extrapolation() {
        // A counter +1 per 10 s, samples aligned with the window end: (t-60s, t] holds 6
        // samples over 50 s; the 10 s gap to the window start is under 1.1 spacings, so the
        // change (5) is extrapolated to the whole 60 s: increase 6, rate 0.1.
        let pts = every_10s(13, |i| i as f64);
        let d = db(&[("d1", "c", &pts)]);
        let at = T0 + 120_000;
        let m = range(&d, "rate(c[1m])", at, at, 1);
        assert!((m[0].1[0].1 - 0.1).abs() < 1e-9, "{:?}", m);
        let m = range(&d, "increase(c[1m])", at, at, 1);
        assert!((m[0].1[0].1 - 6.0).abs() < 1e-9, "{:?}", m);
        // A reset counts the value before it.
        let pts = [(T0, 5.0), (T0 + 10_000, 8.0), (T0 + 20_000, 2.0)];
        let d = db(&[("d1", "c", &pts)]);
        let m = range(&d, "increase(c[30s])", T0 + 20_000, T0 + 20_000, 1);
        // Window (T0-10s, T0+20s]: increase 3 + 2 = 5 over 20 s sampled; the first point is
        // 10 s after the window start, under the 11 s threshold, and zero would be reached only
        // 20 s back, so the whole 10 s is added: 5 * 30 / 20.
        assert!((m[0].1[0].1 - 5.0 * 30.0 / 20.0).abs() < 1e-9, "{:?}", m);
    }

    #[test]
    fn aggregations_group_by_labels() {
        let d = db(&[
            ("d1", "temp", &[(T0, 1.0)]),
            ("d2", "temp", &[(T0, 3.0)]),
            ("d3", "temp", &[(T0, 8.0)]),
        ]);
        let one = |text: &str| range(&d, text, T0, T0, 1);
        assert_eq!(one("sum(temp)")[0].1, vec![(T0, 12.0)]);
        assert_eq!(one("avg(temp)")[0].1, vec![(T0, 4.0)]);
        assert_eq!(one("min(temp)")[0].1, vec![(T0, 1.0)]);
        assert_eq!(one("max(last_over_time(temp[1m]))")[0].1, vec![(T0, 8.0)]);
        assert_eq!(one("count(temp)")[0].1, vec![(T0, 3.0)]);
        let by = one("sum by (device) (temp)");
        assert_eq!(by.len(), 3);
        assert_eq!(by[0].0, Labels::from([("device".into(), "d1".into())]));
        let without = one("sum without (device) (temp)");
        assert_eq!(without.len(), 1);
        assert_eq!(
            without[0].0,
            Labels::from([("metric".into(), "temp".into())])
        );
    }

    #[test]
    fn instant_queries_answer_vectors_scalars_and_matrices() {
        let d = db(&[("d1", "temp", &every_10s(3, |i| i as f64))]);
        let l = PromLimits::default();
        let t = T0 + 25_000;
        assert_eq!(eval_instant(&d, &q("1+1"), t, &l), Ok(Instant::Scalar(2.0)));
        let Ok(Instant::Vector(v)) = eval_instant(&d, &q("temp"), t, &l) else {
            panic!("vector")
        };
        assert_eq!(v[0].1, 2.0);
        let Ok(Instant::Matrix(m)) = eval_instant(&d, &q("temp[20s]"), t, &l) else {
            panic!("matrix")
        };
        assert_eq!(m[0].1, vec![(T0 + 10_000, 1.0), (T0 + 20_000, 2.0)]);
        assert!(matches!(
            eval_range(&d, &q("temp[20s]"), t, t, 1, &l),
            Err(PromError::Param(_))
        ));
    }

    #[test]
    fn unsupported_and_bad_queries_are_refused_by_name() {
        let l = PromLimits::default();
        let err = |t: &str| Query::parse(t, &l).expect_err("refused");
        assert!(matches!(err("temp{"), PromError::Parse(_)));
        assert!(matches!(err(""), PromError::Parse(_)));
        assert!(
            err("histogram_quantile(0.9, temp)")
                .to_string()
                .contains("histogram_quantile")
        );
        assert!(err("topk(3, temp)").to_string().contains("topk"));
        assert!(err("temp + temp").to_string().contains("not supported"));
        assert!(err("rate(temp[5m:1m])").to_string().contains("subqueries"));
        assert!(err("temp @ 100").to_string().contains("@"));
        assert!(
            err(r#"{device=~".*"}"#)
                .to_string()
                .contains("non-empty matcher")
        );
        assert!(
            err(r#"temp{device="d1"} or temp"#)
                .to_string()
                .contains("not supported")
        );
        for e in [err("temp{"), err("topk(3, temp)")] {
            assert!(e.is_bad_data());
        }
    }

    #[test]
    fn limits_one_past_are_refused() {
        let d = db(&[("d1", "temp", &[(T0, 1.0)]), ("d2", "temp", &[(T0, 1.0)])]);
        let l = PromLimits::default();
        // Steps: 11,000 accepted, 11,001 refused.
        assert!(eval_range(&d, &q("temp"), 0, 11_000, 1, &l).is_ok());
        let e = eval_range(&d, &q("temp"), 0, 11_001, 1, &l).expect_err("too many");
        assert_eq!(e, PromError::TooManyPoints);
        assert!(
            e.to_string()
                .starts_with("exceeded maximum resolution of 11,000 points")
        );
        assert!(eval_range(&d, &q("temp"), 10, 0, 1, &l).is_err());
        assert!(eval_range(&d, &q("temp"), 0, 10, 0, &l).is_err());
        // Query text.
        let long = format!("temp{{device=\"{}\"}}", "x".repeat(l.max_query_len));
        assert!(matches!(
            Query::parse(&long, &l),
            Err(PromError::QueryTooLong { .. })
        ));
        let exact = format!("{:<width$}", "temp", width = l.max_query_len);
        assert!(Query::parse(&exact, &l).is_ok());
        // Series.
        let one = PromLimits { max_series: 1, ..l };
        assert!(eval_range(&d, &q(r#"temp{device="d1"}"#), T0, T0, 1, &one).is_ok());
        let e = eval_range(&d, &q("temp"), T0, T0, 1, &one).expect_err("two series");
        assert_eq!(e, PromError::TooManySeries { limit: 1 });
        assert!(!e.is_bad_data());
        // Samples: 2 read + 2 answered.
        let four = PromLimits {
            max_samples: 4,
            ..l
        };
        assert!(eval_range(&d, &q("temp"), T0, T0, 1, &four).is_ok());
        let three = PromLimits {
            max_samples: 3,
            ..l
        };
        assert!(matches!(
            eval_range(&d, &q("temp"), T0, T0, 1, &three),
            Err(PromError::TooManySamples { .. })
        ));
        // Regex size.
        let small = PromLimits {
            max_regex_bytes: 1_000,
            ..l
        };
        assert!(Query::parse(r#"{device=~"d1|d2"}"#, &small).is_ok());
        assert!(matches!(
            Query::parse(r#"{device=~"(abc|def){50}"}"#, &small),
            Err(PromError::Regex { .. })
        ));
    }

    #[test]
    fn series_and_labels() {
        let d = db(&[
            ("d1", "temp", &[(T0, 1.0)]),
            ("d2", "hum", &[(T0, 1.0)]),
            ("d3", "hum", &[(T0 + 3_600_000, 1.0)]),
        ]);
        let l = PromLimits::default();
        let all = Window::ALL;
        let none = &NoDeviceLabels;
        assert_eq!(
            label_names(&d, &[], all, none, &l).expect("names"),
            vec!["__name__", "device", "metric"]
        );
        assert_eq!(
            label_values(&d, "__name__", &[], all, none, &l).expect("values"),
            vec!["hum", "temp"]
        );
        let sel = parse_selector(r#"{device="d2"}"#, &l).expect("selector");
        let s = series(&d, std::slice::from_ref(&sel), all, none, &l).expect("series");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0]["__name__"], "hum");
        assert_eq!(
            label_values(&d, "device", &[sel], all, none, &l).expect("values"),
            vec!["d2"]
        );
        // A window keeps the series with data in it.
        let hum = parse_selector("hum", &l).expect("selector");
        let devices = |from, to| {
            let w = Window { from, to };
            label_values(&d, "device", std::slice::from_ref(&hum), w, none, &l).expect("values")
        };
        assert_eq!(devices(T0, T0 + 1), vec!["d2"]);
        assert_eq!(devices(T0 + 1, T0 + 3_600_001), vec!["d3"]);
        assert_eq!(devices(T0, T0 + 3_600_001), vec!["d2", "d3"]);
        assert!(devices(T0 + 1, T0 + 3_600_000).is_empty());
        assert!(parse_selector("rate(x[1m])", &l).is_err());
    }

    #[test]
    fn label_apis_without_match_honour_the_window() {
        let d = db(&[
            ("d1", "temp", &[(T0, 1.0)]),
            ("d2", "hum", &[(T0 + 3_600_000, 1.0)]),
        ]);
        let l = PromLimits::default();
        let reg = registry();
        let w = |from, to| Window { from, to };
        let values = |name, win| label_values(&d, name, &[], win, &reg, &l).expect("values");
        let names = |win| label_names(&d, &[], win, &reg, &l).expect("names");
        // All time: both.
        assert_eq!(values("__name__", Window::ALL), vec!["hum", "temp"]);
        assert_eq!(values("device", Window::ALL), vec!["d1", "d2"]);
        // Only d1's temp is in the first window, only d2's hum in the second.
        assert_eq!(values("__name__", w(T0, T0 + 1)), vec!["temp"]);
        assert_eq!(values("device", w(T0, T0 + 1)), vec!["d1"]);
        assert_eq!(values("metric", w(T0 + 1, i64::MAX)), vec!["hum"]);
        assert!(values("device", w(T0 + 1, T0 + 3_600_000)).is_empty());
        // Device labels follow the devices with data: d1 is in lab and roof at site ber, d2 in
        // lab at site muc.
        assert_eq!(values("site", Window::ALL), vec!["ber", "muc"]);
        assert_eq!(values("site", w(T0, T0 + 1)), vec!["ber"]);
        assert_eq!(values("group", w(T0, T0 + 1)), vec!["lab", "roof"]);
        assert_eq!(values("group", w(T0 + 1, i64::MAX)), vec!["lab"]);
        assert!(values("site", w(T0 + 1, T0 + 3_600_000)).is_empty());
        assert_eq!(
            names(w(T0, T0 + 1)),
            vec![
                "__name__",
                "device",
                "fw_version",
                "group",
                "metric",
                "site"
            ]
        );
        assert_eq!(
            names(w(T0 + 1, i64::MAX)),
            vec!["__name__", "device", "group", "metric", "site"]
        );
        assert!(names(w(T0 + 1, T0 + 3_600_000)).is_empty());
        // Series examined for the window: one check per value here; a limit below is refused.
        let one = PromLimits {
            max_examined: 1,
            ..l
        };
        let two = PromLimits {
            max_examined: 2,
            ..l
        };
        // hum's one series is checked first (no data in the window), then temp's: 2 checks.
        assert_eq!(
            label_values(&d, "__name__", &[], w(T0, T0 + 1), &reg, &two).expect("values"),
            vec!["temp"]
        );
        assert_eq!(
            label_values(&d, "__name__", &[], w(T0, T0 + 1), &reg, &one),
            Err(PromError::TooManyExamined { limit: 1 })
        );
        assert_eq!(
            label_values(&d, "device", &[], w(T0, T0 + 1), &reg, &one),
            Err(PromError::TooManyExamined { limit: 1 })
        );
        assert_eq!(
            label_values(&d, "device", &[], w(T0, T0 + 1), &reg, &two).expect("values"),
            vec!["d1"]
        );
        // All time checks no series, but reads at most max_examined devices' labels.
        assert_eq!(
            label_values(&d, "site", &[], Window::ALL, &reg, &one),
            Err(PromError::TooManyExamined { limit: 1 })
        );
        assert_eq!(
            label_values(&d, "site", &[], Window::ALL, &reg, &two).expect("values"),
            vec!["ber", "muc"]
        );
        assert!(!PromError::TooManyExamined { limit: 1 }.is_bad_data());
    }

    /// d1: groups lab and roof, site ber, fw-version 2; d2: group lab, site muc; d3: nothing.
    fn registry() -> BTreeMap<String, DeviceLabels> {
        BTreeMap::from([
            (
                "d1".to_owned(),
                DeviceLabels::new(["roof", "lab"], [("site", "ber"), ("fw-version", "2")]),
            ),
            (
                "d2".to_owned(),
                DeviceLabels::new(["lab"], [("site", "muc")]),
            ),
        ])
    }

    #[test]
    fn attribute_keys_become_label_names() {
        assert_eq!(attribute_label("site").as_deref(), Some("site"));
        assert_eq!(attribute_label("fw-version").as_deref(), Some("fw_version"));
        assert_eq!(attribute_label("a.b:c").as_deref(), Some("a_b_c"));
        assert_eq!(attribute_label("2fa").as_deref(), Some("_2fa"));
        for skipped in ["device", "metric", "group", "__name__", "__x", "_-y", ""] {
            assert_eq!(attribute_label(skipped), None, "{skipped}");
        }
        // The unchanged key wins a clash, else the first key; empty values are no labels.
        let dl = DeviceLabels::new(
            ["b", "a", "a", ""],
            [
                ("fw-v", "1"),
                ("fw_v", "2"),
                ("x.y", "3"),
                ("x:y", "4"),
                ("e", ""),
                ("device", "5"),
            ],
        );
        assert_eq!(dl.groups(), ["a", "b"]);
        assert_eq!(
            dl.attributes(),
            &Labels::from([("fw_v".into(), "2".into()), ("x_y".into(), "3".into())])
        );
    }

    #[test]
    fn device_groups_and_attributes_are_labels() {
        let d = db(&[
            ("d1", "temp", &[(T0, 1.0)]),
            ("d2", "temp", &[(T0, 3.0)]),
            ("d3", "temp", &[(T0, 8.0)]),
            ("d1", "hum", &[(T0, 50.0)]),
        ]);
        let reg = registry();
        let src = WithDeviceLabels {
            db: &d,
            devices: &reg,
        };
        let l = PromLimits::default();
        let one = |text: &str| {
            eval_range(&src, &q(text), T0, T0, 1, &l)
                .expect("evaluates")
                .into_iter()
                .map(|(labels, pts)| (labels, pts[0].1))
                .collect::<Vec<_>>()
        };
        let devices = |text: &str| {
            let mut v: Vec<String> = one(text)
                .into_iter()
                .map(|(l, _)| l["device"].clone())
                .collect();
            v.sort();
            v
        };
        // The labels on a series: groups sorted and comma-joined, attributes sanitised.
        let got = one(r#"temp{device="d1"}"#);
        assert_eq!(
            got[0].0,
            Labels::from([
                ("__name__".into(), "temp".into()),
                ("device".into(), "d1".into()),
                ("metric".into(), "temp".into()),
                ("group".into(), "lab,roof".into()),
                ("site".into(), "ber".into()),
                ("fw_version".into(), "2".into()),
            ])
        );
        assert_eq!(
            one(r#"temp{device="d3"}"#)[0].0.len(),
            3,
            "no registry labels"
        );
        // Group matchers: = and =~ hold when one group (or the joined value) matches.
        assert_eq!(devices(r#"temp{group="lab"}"#), vec!["d1", "d2"]);
        assert_eq!(devices(r#"temp{group="roof"}"#), vec!["d1"]);
        assert_eq!(devices(r#"temp{group="lab,roof"}"#), vec!["d1"]);
        assert_eq!(devices(r#"temp{group=~"ro.*"}"#), vec!["d1"]);
        assert_eq!(devices(r#"temp{group!="roof"}"#), vec!["d2", "d3"]);
        assert_eq!(devices(r#"temp{group!~"l.*"}"#), vec!["d3"]);
        assert_eq!(devices(r#"temp{group=""}"#), vec!["d3"]);
        // Without a metric name: every series of the devices in the group.
        assert_eq!(devices(r#"{group="roof"}"#), vec!["d1", "d1"]);
        assert_eq!(devices(r#"{site=~"b.*"}"#), vec!["d1", "d1"]);
        assert_eq!(devices(r#"temp{site!="ber",group="lab"}"#), vec!["d2"]);
        assert_eq!(devices(r#"temp{fw_version="2"}"#), vec!["d1"]);
        assert!(devices(r#"temp{site="nowhere"}"#).is_empty());
        // Aggregations by device labels.
        let by_site = one("sum by (site) (temp)");
        assert_eq!(
            by_site,
            vec![
                (Labels::new(), 8.0),
                (Labels::from([("site".into(), "ber".into())]), 1.0),
                (Labels::from([("site".into(), "muc".into())]), 3.0),
            ]
        );
        let by_group = one(r#"avg by (group) (temp{group="lab"})"#);
        assert_eq!(
            by_group,
            vec![
                (Labels::from([("group".into(), "lab".into())]), 3.0),
                (Labels::from([("group".into(), "lab,roof".into())]), 1.0),
            ]
        );
        // Series and label APIs see them too.
        let sel = parse_selector(r#"{group="lab"}"#, &l).expect("selector");
        let s = series(&d, std::slice::from_ref(&sel), Window::ALL, &reg, &l).expect("series");
        assert_eq!(s.len(), 3);
        assert_eq!(
            label_values(
                &d,
                "group",
                std::slice::from_ref(&sel),
                Window::ALL,
                &reg,
                &l
            )
            .expect("values"),
            vec!["lab", "roof"]
        );
        assert_eq!(
            label_names(&d, &[sel], Window::ALL, &reg, &l).expect("names"),
            vec![
                "__name__",
                "device",
                "fw_version",
                "group",
                "metric",
                "site"
            ]
        );
        // A registry change shows in the next query (nothing is cached here).
        let mut moved = registry();
        moved.insert("d3".into(), DeviceLabels::new(["lab"], [("site", "ber")]));
        let src = WithDeviceLabels {
            db: &d,
            devices: &moved,
        };
        let m = eval_range(&src, &q(r#"temp{group="lab"}"#), T0, T0, 1, &l).expect("evaluates");
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn device_label_selectors_are_bounded() {
        let d = db(&[
            ("d1", "temp", &[(T0, 1.0)]),
            ("d2", "temp", &[(T0, 3.0)]),
            ("d3", "temp", &[(T0, 8.0)]),
        ]);
        let reg = registry();
        let src = WithDeviceLabels {
            db: &d,
            devices: &reg,
        };
        let l = PromLimits::default();
        let limit = |n| PromLimits {
            max_examined: n,
            ..l
        };
        // Only device-label matchers: every series (3) is a candidate.
        let sel = r#"{group="lab"}"#;
        assert_eq!(
            eval_range(&src, &q(sel), T0, T0, 1, &limit(3)).map(|m| m.len()),
            Ok(2)
        );
        assert_eq!(
            eval_range(&src, &q(sel), T0, T0, 1, &limit(2)),
            Err(PromError::TooManyExamined { limit: 2 })
        );
        // With a metric name, the candidates are its series: 3 accepted, 2 refused.
        let sel = r#"temp{group="lab"}"#;
        assert!(eval_range(&src, &q(sel), T0, T0, 1, &limit(3)).is_ok());
        assert_eq!(
            eval_range(&src, &q(sel), T0, T0, 1, &limit(2)),
            Err(PromError::TooManyExamined { limit: 2 })
        );
        // The answer is still bounded by max_series after the device labels are applied.
        let two = PromLimits { max_series: 2, ..l };
        assert!(eval_range(&src, &q(sel), T0, T0, 1, &two).is_ok());
        let one = PromLimits { max_series: 1, ..l };
        assert_eq!(
            eval_range(&src, &q(sel), T0, T0, 1, &one),
            Err(PromError::TooManySeries { limit: 1 })
        );
        // A window filter counts its has_data checks.
        let tw = parse_selector("temp", &l).expect("selector");
        let w = Window {
            from: T0,
            to: T0 + 1,
        };
        assert_eq!(
            series(&d, std::slice::from_ref(&tw), w, &reg, &limit(3)).map(|s| s.len()),
            Ok(3)
        );
        assert_eq!(
            series(&d, std::slice::from_ref(&tw), w, &reg, &limit(2)),
            Err(PromError::TooManyExamined { limit: 2 })
        );
    }

    #[test]
    fn device_sets_narrow_the_candidates() {
        let d = db(&[
            ("d1", "temp", &[(T0, 1.0)]),
            ("d2", "temp", &[(T0, 3.0)]),
            ("d3", "temp", &[(T0, 8.0)]),
            ("d2", "hum", &[(T0, 5.0)]),
        ]);
        let one = PromLimits {
            max_examined: 1,
            ..PromLimits::default()
        };
        let set = |label: &str, devices: &[&str]| DeviceSet {
            label: label.into(),
            devices: devices.iter().map(|d| d.to_string()).collect(),
        };
        let devices_of = |c: Candidates| c.devices().map(String::from).collect::<Vec<_>>();
        let sel = parse_selector(r#"{group="lab"}"#, &one).expect("selector");
        let index = d.engine().index();
        // Without a set every series is a candidate: past max_examined.
        assert_eq!(
            candidates(index, &sel, &one, None).map(|c| c.len()),
            Err(PromError::TooManyExamined { limit: 1 })
        );
        // With one, only its devices' series.
        let c = candidates_within(index, &sel, &one, None, &[set("group", &["d1"])]);
        assert_eq!(devices_of(c.expect("candidates")), ["d1"]);
        // Sets intersect, and the metric name still filters.
        let sel = parse_selector(r#"temp{group="lab", site="x"}"#, &one).expect("selector");
        let sets = [set("group", &["d1", "d2"]), set("site", &["d2", "d3"])];
        let c = candidates_within(index, &sel, &one, None, &sets);
        assert_eq!(devices_of(c.expect("candidates")), ["d2"]);
        // A set on a store label is not used.
        let sel = parse_selector(r#"temp{device="d3"}"#, &one).expect("selector");
        let c = candidates_within(index, &sel, &one, None, &[set("device", &["d1"])]);
        assert_eq!(devices_of(c.expect("candidates")), ["d3"]);
        // device_sets asks the source for `=` matchers on device labels only.
        let reg = registry();
        let sel = parse_selector(r#"temp{group="lab", site=~"x"}"#, &one).expect("selector");
        assert_eq!(device_sets(&sel, &reg, &one), Ok(vec![]));
    }

    /// Timing, not a check: `cargo test --profile ci -p myriad-tsdb --lib promql::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let mut db = Db::new(DbConfig::default()).expect("db");
        let mut wal = Vec::new();
        // 1,000 devices, one point every 10 s for 6 hours (2,160 points each, 2.16 M in all).
        for d in 0..1_000 {
            let id = db
                .engine_mut()
                .series(&SeriesKey::new(format!("dev{d}"), "temp"), &mut wal)
                .expect("series");
            let batch: Vec<_> = (0..2_160)
                .map(|i| {
                    let value = Value::F64((d + i) as f64);
                    (
                        id,
                        Point {
                            ts: T0 + i * 10_000,
                            value,
                        },
                    )
                })
                .collect();
            db.engine_mut().append(&batch, &mut wal).expect("append");
            wal.clear();
        }
        db.seal().expect("seal");
        let l = PromLimits::default();
        for (text, step) in [
            ("avg_over_time(temp{device=\"dev7\"}[5m])", 60_000),
            ("avg by (device) (avg_over_time(temp[5m]))", 60_000),
            ("avg(rate(temp[5m]))", 60_000),
            ("sum(temp)", 15_000),
        ] {
            let started = std::time::Instant::now();
            let m = eval_range(&db, &q(text), T0, T0 + 6 * 3_600_000, step, &l).expect("ok");
            let points: usize = m.iter().map(|s| s.1.len()).sum();
            println!(
                "{text}: {} series, {points} points in {:?}",
                m.len(),
                started.elapsed()
            );
        }
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(parse_time("t", "1700000000.5"), Ok(1_700_000_000_500));
        assert_eq!(
            parse_time("t", "2023-11-14T22:13:20Z"),
            Ok(1_700_000_000_000)
        );
        assert!(parse_time("t", "yesterday").is_err());
        assert!(parse_time("t", "NaN").is_err());
        assert_eq!(parse_duration("step", "15s"), Ok(15_000));
        assert_eq!(parse_duration("step", "1m30s"), Ok(90_000));
        assert_eq!(parse_duration("step", "0.5"), Ok(500));
        assert_eq!(parse_duration("step", "-1"), Ok(-1_000));
        assert!(parse_duration("step", "fast").is_err());
        assert_eq!(format_value(2.0), "2");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
    }
}
