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
//! | nesting of expressions | [`MAX_QUERY_DEPTH`] (128) | [`PromError::Unsupported`] (bad_data) |

use std::collections::BTreeMap;

use promql_parser::label::{MatchOp, Matcher, Matchers};
use promql_parser::parser::{self, Expr, LabelModifier, Offset, VectorSelector};
use regex::{Regex, RegexBuilder};

use crate::block::as_f64;
use crate::db::{Db, DbError};
use crate::index::{DEVICE_LABEL, METRIC_LABEL, SeriesId, SeriesIndex};
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
}

impl Default for PromLimits {
    fn default() -> Self {
        Self {
            max_query_len: 8 * 1024,
            max_series: 10_000,
            max_samples: 10_000_000,
            max_regex_bytes: 1024 * 1024,
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

/// The label set of series `id`.
pub fn labels_of(index: &SeriesIndex, id: SeriesId) -> Option<Labels> {
    let key = index.key(id)?;
    let mut l = key.labels;
    l.insert(NAME_LABEL.into(), key.metric.clone());
    l.insert(METRIC_LABEL.into(), key.metric);
    l.insert(DEVICE_LABEL.into(), key.device);
    Some(l)
}

/// The series `sel` matches, with their labels, ascending by id; more than
/// [`PromLimits::max_series`] is [`PromError::TooManySeries`].
pub fn select(
    index: &SeriesIndex,
    sel: &Selector,
    limits: &PromLimits,
) -> Result<Vec<(SeriesId, Labels)>, PromError> {
    // Candidates from the postings of one matcher that needs the label to be set: an equality
    // if there is one, else the first such matcher over the label's values.
    let anchor = sel
        .matchers
        .iter()
        .find(|m| matches!(&m.op, LabelMatch::Eq(v) if !v.is_empty()))
        .or_else(|| sel.matchers.iter().find(|m| !m.is_match("")));
    let Some(anchor) = anchor else {
        return Err(PromError::Param(
            "query: vector selector must contain at least one non-empty matcher".into(),
        ));
    };
    let name = index_label(&anchor.name);
    let mut candidates: Vec<SeriesId> = match &anchor.op {
        LabelMatch::Eq(v) => index.select(&[(name, v)]).unwrap_or_default(),
        _ => {
            let mut ids = Vec::new();
            for v in index.label_values(name) {
                if anchor.is_match(v) {
                    ids.extend(index.select(&[(name, v)]).unwrap_or_default());
                }
            }
            ids.sort_unstable();
            ids.dedup();
            ids
        }
    };
    let mut out = Vec::new();
    for id in candidates.drain(..) {
        let Some(labels) = labels_of(index, id) else {
            continue;
        };
        let all = sel
            .matchers
            .iter()
            .all(|m| m.is_match(labels.get(&m.name).map_or("", String::as_str)));
        if all {
            if out.len() >= limits.max_series {
                return Err(PromError::TooManySeries {
                    limit: limits.max_series,
                });
            }
            out.push((id, labels));
        }
    }
    Ok(out)
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

/// Series matching any of `selectors` that have data in `window` (deduplicated, by id), or
/// none when `selectors` is empty.
pub fn series(
    db: &Db,
    selectors: &[Selector],
    window: Window,
    limits: &PromLimits,
) -> Result<Vec<Labels>, PromError> {
    let mut all: BTreeMap<SeriesId, Labels> = BTreeMap::new();
    for sel in selectors {
        all.extend(
            select(db.engine().index(), sel, limits)?
                .into_iter()
                .filter(|(id, _)| {
                    window == Window::ALL || db.has_data(*id, window.from, window.to)
                }),
        );
        if all.len() > limits.max_series {
            return Err(PromError::TooManySeries {
                limit: limits.max_series,
            });
        }
    }
    Ok(all.into_values().collect())
}

/// Label names in use: of the series matching `selectors` with data in `window`, or of all
/// series (whatever the window) if `selectors` is empty.
pub fn label_names(
    db: &Db,
    selectors: &[Selector],
    window: Window,
    limits: &PromLimits,
) -> Result<Vec<String>, PromError> {
    if selectors.is_empty() {
        let index = db.engine().index();
        let mut names: Vec<String> = index.label_names().into_iter().map(String::from).collect();
        if !index.is_empty() {
            names.push(NAME_LABEL.into());
        }
        names.sort();
        names.dedup();
        return Ok(names);
    }
    let mut names: Vec<String> = series(db, selectors, window, limits)?
        .into_iter()
        .flat_map(|l| l.into_keys())
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Values of label `name`: of the series matching `selectors` with data in `window`, or of all
/// series (whatever the window) if `selectors` is empty.
pub fn label_values(
    db: &Db,
    name: &str,
    selectors: &[Selector],
    window: Window,
    limits: &PromLimits,
) -> Result<Vec<String>, PromError> {
    if selectors.is_empty() {
        return Ok(db
            .engine()
            .index()
            .label_values(index_label(name))
            .into_iter()
            .map(String::from)
            .collect());
    }
    let mut values: Vec<String> = series(db, selectors, window, limits)?
        .into_iter()
        .filter_map(|mut l| l.remove(name))
        .collect();
    values.sort();
    values.dedup();
    Ok(values)
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
    use crate::index::SeriesKey;
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
        assert_eq!(
            label_names(&d, &[], all, &l).expect("names"),
            vec!["__name__", "device", "metric"]
        );
        assert_eq!(
            label_values(&d, "__name__", &[], all, &l).expect("values"),
            vec!["hum", "temp"]
        );
        let sel = parse_selector(r#"{device="d2"}"#, &l).expect("selector");
        let s = series(&d, std::slice::from_ref(&sel), all, &l).expect("series");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0]["__name__"], "hum");
        assert_eq!(
            label_values(&d, "device", &[sel], all, &l).expect("values"),
            vec!["d2"]
        );
        // A window keeps the series with data in it.
        let hum = parse_selector("hum", &l).expect("selector");
        let devices = |from, to| {
            let w = Window { from, to };
            label_values(&d, "device", std::slice::from_ref(&hum), w, &l).expect("values")
        };
        assert_eq!(devices(T0, T0 + 1), vec!["d2"]);
        assert_eq!(devices(T0 + 1, T0 + 3_600_001), vec!["d3"]);
        assert_eq!(devices(T0, T0 + 3_600_001), vec!["d2", "d3"]);
        assert!(devices(T0 + 1, T0 + 3_600_000).is_empty());
        assert!(parse_selector("rate(x[1m])", &l).is_err());
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
