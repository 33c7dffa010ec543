//! SQL text -> plan: the FROM filter taken out of the token stream, the statement parsed by
//! `sqlparser`, its expressions turned into [`Expr`] with the nesting bounded before each
//! recursion.

use sqlparser::ast::{
    self, AccessExpr, BinaryOperator, CastKind, CeilFloorKind, DateTimeField, FunctionArg,
    FunctionArgExpr, FunctionArguments, GroupByExpr, InTarget, SelectItem, SetExpr, Spanned,
    Statement, Subscript, TableFactor, UnaryOperator,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, Tokenizer};

use super::{MAX_NESTING, MAX_VARIADIC_ARGS, Position, RuleError};
use crate::topic::TopicFilter;

/// The identifier the FROM filter is replaced with before parsing.
const FROM_PLACEHOLDER: &str = "__myriad_rule_topic__";
/// The parser's own recursion bound: [`MAX_NESTING`] plus the levels the statement itself
/// takes (statement, query, select), so that our check, with its position, fires first.
const PARSER_RECURSION_LIMIT: usize = MAX_NESTING + 8;

/// A compiled rule body.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) items: Vec<Item>,
    pub(crate) filter: Option<Expr>,
}

/// One SELECT item.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// `*`: the payload's keys.
    Star,
    /// An expression and its output key.
    Named(String, Expr),
}

#[derive(Debug, Clone)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Concat,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CastTo {
    String,
    Int,
    Decimal,
    Bool,
}

/// A path step after a base value.
#[derive(Debug, Clone)]
pub(crate) enum Seg {
    Key(String),
    Index(Box<Expr>),
}

#[derive(Debug, Clone)]
pub(crate) enum Base {
    Payload,
    Expr(Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Topic,
    ClientId,
    Timestamp,
    NewUuid,
    UserProperty,
    Abs,
    Ceil,
    Floor,
    Round,
    Sqrt,
    Sign,
    Mod,
    Power,
    Lower,
    Upper,
    Trim,
    Ltrim,
    Rtrim,
    Length,
    Concat,
    Substring,
    Replace,
    StartsWith,
    EndsWith,
    IndexOf,
    Coalesce,
    IsNull,
    /// EMQX `is_not_null`: neither Null nor Undefined.
    IsNotNull,
    IsUndefined,
    TypeOf,
    /// EMQX's conversion functions `str`, `int`, `float`, `bool`: compiled to a cast.
    CastTo(CastTo),
    Get,
    /// `encode(s, 'base64')`.
    EncodeBase64,
    /// `encode(*, 'base64')`: the raw payload.
    EncodePayloadBase64,
    DecodeBase64,
}

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Lit(Lit),
    Path(Base, Vec<Seg>),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    IsNull(Box<Expr>, bool),
    In(Box<Expr>, Vec<Expr>, bool),
    Between(Box<Expr>, Box<Expr>, Box<Expr>, bool),
    Case(Option<Box<Expr>>, Vec<(Expr, Expr)>, Option<Box<Expr>>),
    Call(Func, Vec<Expr>),
    Cast(Box<Expr>, CastTo),
}

/// (name, min args, max args, function)
const FUNCTIONS: &[(&str, usize, usize, Func)] = &[
    ("topic", 0, 1, Func::Topic),
    ("clientid", 0, 0, Func::ClientId),
    ("timestamp", 0, 0, Func::Timestamp),
    ("newuuid", 0, 0, Func::NewUuid),
    ("get_user_property", 1, 1, Func::UserProperty),
    ("abs", 1, 1, Func::Abs),
    ("ceil", 1, 1, Func::Ceil),
    ("ceiling", 1, 1, Func::Ceil),
    ("floor", 1, 1, Func::Floor),
    ("round", 1, 1, Func::Round),
    ("sqrt", 1, 1, Func::Sqrt),
    ("sign", 1, 1, Func::Sign),
    ("mod", 2, 2, Func::Mod),
    ("power", 2, 2, Func::Power),
    ("lower", 1, 1, Func::Lower),
    ("upper", 1, 1, Func::Upper),
    ("trim", 1, 1, Func::Trim),
    ("ltrim", 1, 1, Func::Ltrim),
    ("rtrim", 1, 1, Func::Rtrim),
    ("length", 1, 1, Func::Length),
    ("char_length", 1, 1, Func::Length),
    ("concat", 1, MAX_VARIADIC_ARGS, Func::Concat),
    ("substring", 2, 3, Func::Substring),
    ("replace", 3, 3, Func::Replace),
    ("startswith", 2, 2, Func::StartsWith),
    ("endswith", 2, 2, Func::EndsWith),
    ("indexof", 2, 2, Func::IndexOf),
    ("coalesce", 1, MAX_VARIADIC_ARGS, Func::Coalesce),
    ("isnull", 1, 1, Func::IsNull),
    ("isundefined", 1, 1, Func::IsUndefined),
    // EMQX names for the same functions.
    ("is_null", 1, 1, Func::IsNull),
    ("is_not_null", 1, 1, Func::IsNotNull),
    ("strlen", 1, 1, Func::Length),
    ("base64_encode", 1, 1, Func::EncodeBase64),
    ("base64_decode", 1, 1, Func::DecodeBase64),
    ("uuid_v4", 0, 0, Func::NewUuid),
    ("str", 1, 1, Func::CastTo(CastTo::String)),
    ("int", 1, 1, Func::CastTo(CastTo::Int)),
    ("float", 1, 1, Func::CastTo(CastTo::Decimal)),
    ("bool", 1, 1, Func::CastTo(CastTo::Bool)),
    ("typeof", 1, 1, Func::TypeOf),
    ("get", 2, 2, Func::Get),
    ("encode", 2, 2, Func::EncodeBase64),
    ("decode", 2, 2, Func::DecodeBase64),
];

fn pos(l: Location) -> Position {
    Position {
        line: l.line,
        column: l.column,
    }
}

fn at<T: Spanned>(node: &T) -> Position {
    pos(node.span().start)
}

/// An unsupported expression: named by its kind, placed at its leftmost operand; neither
/// walks the subtree recursively (it may be an arbitrarily deep operator chain).
fn unsupported(node: &ast::Expr, what: &str) -> RuleError {
    RuleError::Unsupported {
        what: format!("{what} ({})", kind(node)),
        at: leftmost_start(node),
    }
}

fn unsupported_item(item: &SelectItem, what: &str) -> RuleError {
    let at = match item {
        SelectItem::QualifiedWildcard(_, opts) | SelectItem::Wildcard(opts) => {
            pos(opts.wildcard_token.0.span.start)
        }
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => leftmost_start(e),
        #[allow(unreachable_patterns)]
        _ => Position::default(),
    };
    RuleError::Unsupported {
        what: what.to_string(),
        at,
    }
}

/// A short name for an expression's kind, without walking it.
fn kind(e: &ast::Expr) -> String {
    match e {
        ast::Expr::BinaryOp { op, .. } => format!("operator {op}"),
        ast::Expr::UnaryOp { op, .. } => format!("operator {op}"),
        ast::Expr::Function(f) => format!("{}()", f.name),
        ast::Expr::Like { .. } | ast::Expr::ILike { .. } => "LIKE".into(),
        ast::Expr::Subquery(_) | ast::Expr::Exists { .. } => "subquery".into(),
        ast::Expr::In { .. } => "IN other than a list".into(),
        ast::Expr::Cast { data_type, .. } => format!("CAST to {data_type}"),
        ast::Expr::Value(v) => format!("literal {v}"),
        ast::Expr::Substring { .. } => "SUBSTRING FROM/FOR (use substring(s, start[, end]))".into(),
        ast::Expr::Trim { .. } => "TRIM with options (use trim, ltrim, rtrim)".into(),
        other => {
            // The variant name from Debug, cut at the first delimiter (Debug of the
            // whole node would recurse).
            let mut name = String::new();
            let _ = std::fmt::write(&mut LimitedWriter(&mut name, 48), format_args!("{other:?}"));
            name.split(['(', ' ', '{']).next().unwrap_or("").to_string()
        }
    }
}

/// Keeps the first bytes written and then fails, ending a Debug walk early.
struct LimitedWriter<'a>(&'a mut String, usize);

impl std::fmt::Write for LimitedWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.1.saturating_sub(self.0.len());
        if s.len() > room {
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.0.push_str(&s[..cut]);
            return Err(std::fmt::Error);
        }
        self.0.push_str(s);
        Ok(())
    }
}

/// Compiles the SQL text (its length already checked).
pub(crate) fn compile(sql: &str) -> Result<(TopicFilter, Plan), RuleError> {
    let dialect = GenericDialect {};
    let mut tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| RuleError::Parse(e.to_string()))?;

    // `x IS [NOT] UNDEFINED` is not SQL: the word becomes UNKNOWN (`IS [NOT] UNKNOWN` parses),
    // and both compile to isundefined(x).
    let is_word = |t: &Token, w: &str| matches!(t, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w));
    let mut prev: [Option<usize>; 2] = [None, None];
    for i in 0..tokens.len() {
        if matches!(tokens[i].token, Token::Whitespace(_)) {
            continue;
        }
        if is_word(&tokens[i].token, "undefined") {
            let after_is = match prev {
                [Some(p), _] if is_word(&tokens[p].token, "is") => true,
                [Some(p), Some(q)] => {
                    is_word(&tokens[p].token, "not") && is_word(&tokens[q].token, "is")
                }
                _ => false,
            };
            if after_is {
                tokens[i].token = Token::make_word("UNKNOWN", None);
            }
        }
        prev = [Some(i), prev[0]];
    }

    // Find the top-level FROM and take its quoted topic filter out of the stream.
    let mut depth = 0usize;
    let mut filter = None;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::Word(w)
                if depth == 0
                    && w.quote_style.is_none()
                    && w.value.eq_ignore_ascii_case("from") =>
            {
                let mut j = i + 1;
                while j < tokens.len() && matches!(tokens[j].token, Token::Whitespace(_)) {
                    j += 1;
                }
                let text = match tokens.get(j).map(|t| &t.token) {
                    Some(Token::SingleQuotedString(s)) => Some(s.clone()),
                    Some(Token::Word(w)) if w.quote_style == Some('"') => Some(w.value.clone()),
                    Some(Token::Word(w))
                        if w.quote_style.is_none() && w.keyword == Keyword::NoKeyword =>
                    {
                        Some(w.value.clone())
                    }
                    _ => None,
                };
                if let Some(text) = text {
                    if filter.is_some() {
                        return Err(RuleError::NotARule("more than one FROM".into()));
                    }
                    filter = Some(TopicFilter::new(&text)?);
                    tokens[j].token = Token::make_word(FROM_PLACEHOLDER, None);
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let filter = filter.ok_or_else(|| RuleError::NotARule("no FROM '<topic filter>'".into()))?;

    let mut parser = Parser::new(&dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .with_tokens_with_locations(tokens);
    let statements = parser.parse_statements().map_err(|e| match e {
        ParserError::RecursionLimitExceeded => RuleError::TooDeep {
            limit: MAX_NESTING,
            at: None,
        },
        other => RuleError::Parse(other.to_string()),
    })?;
    let [statement] = statements.as_slice() else {
        return Err(RuleError::NotARule(format!(
            "{} statements",
            statements.len()
        )));
    };
    let Statement::Query(query) = statement else {
        return Err(RuleError::NotARule("not a SELECT".into()));
    };
    if query.with.is_some()
        || query.order_by.is_some()
        || query.limit_clause.is_some()
        || query.fetch.is_some()
        || !query.locks.is_empty()
        || query.for_clause.is_some()
        || query.settings.is_some()
        || query.format_clause.is_some()
        || !query.pipe_operators.is_empty()
    {
        return Err(RuleError::NotARule(
            "WITH, ORDER BY, LIMIT and the like are not part of a rule".into(),
        ));
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(RuleError::NotARule("not a plain SELECT".into()));
    };
    let no_group = match &select.group_by {
        GroupByExpr::Expressions(e, m) => e.is_empty() && m.is_empty(),
        GroupByExpr::All(_) => false,
    };
    if select.distinct.is_some()
        || select.top.is_some()
        || select.into.is_some()
        || select.exclude.is_some()
        || select.select_modifiers.is_some()
        || !select.lateral_views.is_empty()
        || select.prewhere.is_some()
        || !select.connect_by.is_empty()
        || !no_group
        || !select.cluster_by.is_empty()
        || !select.distribute_by.is_empty()
        || !select.sort_by.is_empty()
        || select.having.is_some()
        || !select.named_window.is_empty()
        || select.qualify.is_some()
        || select.value_table_mode.is_some()
    {
        return Err(RuleError::NotARule(
            "DISTINCT, GROUP BY, HAVING and the like are not part of a rule".into(),
        ));
    }
    let from_ok = match select.from.as_slice() {
        [twj] => {
            twj.joins.is_empty()
                && matches!(&twj.relation, TableFactor::Table { name, alias: None, args: None, .. }
                    if name.to_string() == FROM_PLACEHOLDER)
        }
        _ => false,
    };
    if !from_ok {
        return Err(RuleError::NotARule(
            "FROM must name exactly one topic filter".into(),
        ));
    }

    if select.projection.is_empty() {
        return Err(RuleError::NotARule("SELECT names nothing".into()));
    }
    let mut items = Vec::with_capacity(select.projection.len());
    for item in &select.projection {
        match item {
            SelectItem::Wildcard(opts) => {
                if opts.opt_ilike.is_some()
                    || opts.opt_exclude.is_some()
                    || opts.opt_except.is_some()
                    || opts.opt_replace.is_some()
                    || opts.opt_rename.is_some()
                    || opts.opt_alias.is_some()
                {
                    return Err(unsupported_item(item, "wildcard options"));
                }
                items.push(Item::Star);
            }
            SelectItem::UnnamedExpr(e) => {
                // Converted first: it bounds the depth `default_name` may print.
                let expr = convert(e, 1)?;
                items.push(Item::Named(default_name(e), expr));
            }
            SelectItem::ExprWithAlias { expr, alias } => {
                items.push(Item::Named(alias.value.clone(), convert(expr, 1)?));
            }
            other => return Err(unsupported_item(other, "select item")),
        }
    }
    let filter_expr = match &select.selection {
        Some(e) => Some(convert(e, 1)?),
        None => None,
    };
    Ok((
        filter,
        Plan {
            items,
            filter: filter_expr,
        },
    ))
}

/// The output key of an item without `AS`.
fn default_name(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Identifier(i) => i.value.clone(),
        ast::Expr::CompoundIdentifier(ids) => {
            ids.last().map(|i| i.value.clone()).unwrap_or_default()
        }
        ast::Expr::CompoundFieldAccess { root, access_chain } => {
            for a in access_chain.iter().rev() {
                if let AccessExpr::Dot(ast::Expr::Identifier(i)) = a {
                    return i.value.clone();
                }
            }
            default_name(root)
        }
        ast::Expr::Function(f) => f.name.to_string().to_ascii_lowercase(),
        ast::Expr::Ceil { .. } => "ceil".into(),
        ast::Expr::Floor { .. } => "floor".into(),
        ast::Expr::Substring { .. } => "substring".into(),
        ast::Expr::Trim { .. } => "trim".into(),
        other => other.to_string(),
    }
}

fn too_deep(node: &ast::Expr) -> RuleError {
    RuleError::TooDeep {
        limit: MAX_NESTING,
        at: Some(leftmost_start(node)),
    }
}

/// Where an expression starts, found by walking down its leftmost operand iteratively:
/// `Spanned::span` recurses over the whole subtree, which a refused, arbitrarily deep
/// operator chain must not do.
fn leftmost_start(mut e: &ast::Expr) -> Position {
    loop {
        e = match e {
            ast::Expr::BinaryOp { left, .. } => left,
            ast::Expr::UnaryOp { expr, .. }
            | ast::Expr::IsNull(expr)
            | ast::Expr::IsNotNull(expr)
            | ast::Expr::IsTrue(expr)
            | ast::Expr::IsFalse(expr)
            | ast::Expr::IsNotTrue(expr)
            | ast::Expr::IsNotFalse(expr)
            | ast::Expr::IsUnknown(expr)
            | ast::Expr::IsNotUnknown(expr)
            | ast::Expr::In { expr, .. }
            | ast::Expr::Between { expr, .. }
            | ast::Expr::Like { expr, .. }
            | ast::Expr::ILike { expr, .. }
            | ast::Expr::SimilarTo { expr, .. }
            | ast::Expr::RLike { expr, .. }
            | ast::Expr::Cast { expr, .. }
            | ast::Expr::AtTimeZone {
                timestamp: expr, ..
            }
            | ast::Expr::Collate { expr, .. }
            | ast::Expr::Nested(expr) => expr,
            ast::Expr::IsDistinctFrom(l, _) | ast::Expr::IsNotDistinctFrom(l, _) => l,
            ast::Expr::CompoundFieldAccess { root, .. } => root,
            ast::Expr::Case { case_token, .. } => return pos(case_token.0.span.start),
            ast::Expr::Function(f) => return at(&f.name),
            ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_) | ast::Expr::Value(_) => {
                return at(e);
            }
            // Others are bounded by the parser's recursion limit.
            _ => return at(e),
        };
    }
}

fn boxed(e: &ast::Expr, depth: usize) -> Result<Box<Expr>, RuleError> {
    convert(e, depth).map(Box::new)
}

fn key_path(idents: &[ast::Ident]) -> Expr {
    let rest = match idents.first() {
        Some(first)
            if first.quote_style.is_none() && first.value.eq_ignore_ascii_case("payload") =>
        {
            &idents[1..]
        }
        _ => idents,
    };
    Expr::Path(
        Base::Payload,
        rest.iter().map(|i| Seg::Key(i.value.clone())).collect(),
    )
}

/// Converts one expression at nesting level `depth` (1 for a SELECT item or WHERE); the bound
/// is checked before recursing.
fn convert(e: &ast::Expr, depth: usize) -> Result<Expr, RuleError> {
    if depth > MAX_NESTING {
        return Err(too_deep(e));
    }
    let d = depth + 1;
    Ok(match e {
        ast::Expr::Identifier(i) => key_path(std::slice::from_ref(i)),
        ast::Expr::CompoundIdentifier(ids) => key_path(ids),
        ast::Expr::CompoundFieldAccess { root, access_chain } => {
            if access_chain.len() > MAX_NESTING {
                return Err(too_deep(e));
            }
            let (base, mut segs) = match convert(root, d)? {
                Expr::Path(base, segs) => (base, segs),
                other => (Base::Expr(Box::new(other)), Vec::new()),
            };
            for a in access_chain {
                match a {
                    AccessExpr::Dot(ast::Expr::Identifier(i)) => {
                        segs.push(Seg::Key(i.value.clone()))
                    }
                    AccessExpr::Subscript(Subscript::Index { index }) => {
                        segs.push(Seg::Index(boxed(index, d)?))
                    }
                    _ => return Err(unsupported(e, "field access")),
                }
            }
            Expr::Path(base, segs)
        }
        ast::Expr::Value(v) => Expr::Lit(match &v.value {
            ast::Value::Number(text, _) => number(text, at(e))?,
            ast::Value::SingleQuotedString(s) => Lit::Str(s.clone()),
            ast::Value::Boolean(b) => Lit::Bool(*b),
            ast::Value::Null => Lit::Null,
            _ => return Err(unsupported(e, "literal")),
        }),
        ast::Expr::Nested(inner) => convert(inner, d)?,
        ast::Expr::UnaryOp { op, expr } => match op {
            UnaryOperator::Minus => match convert(expr, d)? {
                Expr::Lit(Lit::Int(i)) if i != i64::MIN => Expr::Lit(Lit::Int(-i)),
                Expr::Lit(Lit::Dec(x)) => Expr::Lit(Lit::Dec(-x)),
                other => Expr::Neg(Box::new(other)),
            },
            UnaryOperator::Plus => Expr::Bin(
                BinOp::Add,
                Box::new(Expr::Lit(Lit::Int(0))),
                boxed(expr, d)?,
            ),
            UnaryOperator::Not => Expr::Not(boxed(expr, d)?),
            _ => return Err(unsupported(e, "operator")),
        },
        ast::Expr::BinaryOp { left, op, right } => {
            let op = match op {
                BinaryOperator::Plus => BinOp::Add,
                BinaryOperator::Minus => BinOp::Sub,
                BinaryOperator::Multiply => BinOp::Mul,
                BinaryOperator::Divide => BinOp::Div,
                BinaryOperator::Modulo => BinOp::Rem,
                BinaryOperator::StringConcat => BinOp::Concat,
                BinaryOperator::Eq => BinOp::Eq,
                BinaryOperator::NotEq => BinOp::NotEq,
                BinaryOperator::Lt => BinOp::Lt,
                BinaryOperator::LtEq => BinOp::LtEq,
                BinaryOperator::Gt => BinOp::Gt,
                BinaryOperator::GtEq => BinOp::GtEq,
                BinaryOperator::And => BinOp::And,
                BinaryOperator::Or => BinOp::Or,
                _ => return Err(unsupported(e, "operator")),
            };
            Expr::Bin(op, boxed(left, d)?, boxed(right, d)?)
        }
        ast::Expr::IsUnknown(x) => Expr::Call(Func::IsUndefined, vec![convert(x, d)?]),
        ast::Expr::IsNotUnknown(x) => Expr::Not(Box::new(Expr::Call(
            Func::IsUndefined,
            vec![convert(x, d)?],
        ))),
        ast::Expr::IsNull(x) => Expr::IsNull(boxed(x, d)?, false),
        ast::Expr::IsNotNull(x) => Expr::IsNull(boxed(x, d)?, true),
        ast::Expr::In {
            expr,
            target: InTarget::List(list),
            negated,
            global: false,
        } => {
            let list = list
                .iter()
                .map(|x| convert(x, d))
                .collect::<Result<Vec<_>, _>>()?;
            Expr::In(boxed(expr, d)?, list, *negated)
        }
        ast::Expr::Between {
            expr,
            negated,
            low,
            high,
        } => Expr::Between(boxed(expr, d)?, boxed(low, d)?, boxed(high, d)?, *negated),
        ast::Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            let operand = match operand {
                Some(o) => Some(boxed(o, d)?),
                None => None,
            };
            let mut whens = Vec::with_capacity(conditions.len());
            for w in conditions {
                whens.push((convert(&w.condition, d)?, convert(&w.result, d)?));
            }
            let else_result = match else_result {
                Some(x) => Some(boxed(x, d)?),
                None => None,
            };
            Expr::Case(operand, whens, else_result)
        }
        ast::Expr::Cast {
            kind: CastKind::Cast,
            expr,
            data_type,
            format: None,
        } => {
            let name = data_type.to_string().to_ascii_lowercase();
            let base = name.split(['(', ' ']).next().unwrap_or("");
            let to = match base {
                "string" | "text" | "varchar" | "char" | "character" | "nvarchar" => CastTo::String,
                "int" | "integer" | "bigint" | "smallint" | "tinyint" | "int64" | "long" => {
                    CastTo::Int
                }
                "decimal" | "numeric" | "double" | "float" | "real" | "dec" | "float64" => {
                    CastTo::Decimal
                }
                "bool" | "boolean" => CastTo::Bool,
                _ => return Err(unsupported(e, "cast type (String, Int, Decimal or Bool)")),
            };
            Expr::Cast(boxed(expr, d)?, to)
        }
        ast::Expr::Ceil {
            expr,
            field: CeilFloorKind::DateTimeField(DateTimeField::NoDateTime),
        } => Expr::Call(Func::Ceil, vec![convert(expr, d)?]),
        ast::Expr::Floor {
            expr,
            field: CeilFloorKind::DateTimeField(DateTimeField::NoDateTime),
        } => Expr::Call(Func::Floor, vec![convert(expr, d)?]),
        ast::Expr::Substring {
            expr,
            substring_from,
            substring_for,
            special: true,
            shorthand: false,
        } => {
            let mut args = vec![convert(expr, d)?];
            if let Some(x) = substring_from {
                args.push(convert(x, d)?);
            }
            if let Some(x) = substring_for {
                args.push(convert(x, d)?);
            }
            if args.len() < 2 {
                return Err(RuleError::Arity {
                    name: "substring".into(),
                    expected: "2 or 3".into(),
                    got: args.len(),
                    at: leftmost_start(e),
                });
            }
            Expr::Call(Func::Substring, args)
        }
        ast::Expr::Trim {
            expr,
            trim_where: None,
            trim_what: None,
            trim_characters: None,
        } => Expr::Call(Func::Trim, vec![convert(expr, d)?]),
        ast::Expr::Function(f) => function(e, f, d)?,
        _ => return Err(unsupported(e, "expression")),
    })
}

fn number(text: &str, at: Position) -> Result<Lit, RuleError> {
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Lit::Int(i));
    }
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(Lit::Dec(x)),
        _ => Err(RuleError::BadNumber {
            text: text.to_string(),
            at,
        }),
    }
}

fn function(e: &ast::Expr, f: &ast::Function, d: usize) -> Result<Expr, RuleError> {
    let name = f.name.to_string();
    let lower = name.to_ascii_lowercase();
    if f.over.is_some()
        || f.filter.is_some()
        || f.null_treatment.is_some()
        || !f.within_group.is_empty()
        || !matches!(f.parameters, FunctionArguments::None)
    {
        return Err(unsupported(e, "function modifiers"));
    }
    let args: &[FunctionArg] = match &f.args {
        FunctionArguments::None => &[],
        FunctionArguments::List(list) => {
            if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
                return Err(unsupported(e, "function argument clauses"));
            }
            &list.args
        }
        FunctionArguments::Subquery(_) => return Err(unsupported(e, "subquery")),
    };
    let Some(&(_, min, max, func)) = FUNCTIONS.iter().find(|(n, ..)| *n == lower) else {
        return Err(RuleError::UnknownFunction {
            name,
            at: leftmost_start(e),
        });
    };
    if args.len() < min || args.len() > max {
        let expected = if min == max {
            min.to_string()
        } else if max == min + 1 {
            format!("{min} or {max}")
        } else {
            format!("{min} to {max}")
        };
        return Err(RuleError::Arity {
            name: lower,
            expected,
            got: args.len(),
            at: leftmost_start(e),
        });
    }
    let mut func = func;
    let mut out = Vec::with_capacity(args.len());
    for (n, arg) in args.iter().enumerate() {
        match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => out.push(convert(x, d)?),
            FunctionArg::Unnamed(FunctionArgExpr::Wildcard)
                if n == 0 && func == Func::EncodeBase64 =>
            {
                func = Func::EncodePayloadBase64;
                out.push(Expr::Lit(Lit::Null));
            }
            _ => return Err(unsupported(e, "function argument")),
        }
    }
    if let Func::CastTo(to) = func {
        let arg = out.pop().unwrap_or(Expr::Lit(Lit::Null));
        return Ok(Expr::Cast(Box::new(arg), to));
    }
    if matches!(
        func,
        Func::EncodeBase64 | Func::EncodePayloadBase64 | Func::DecodeBase64
    ) && args.len() == 2
    {
        match out.get(1) {
            Some(Expr::Lit(Lit::Str(s))) if s.eq_ignore_ascii_case("base64") => {}
            _ => {
                return Err(RuleError::BadArgument {
                    name: lower,
                    message: "the second argument must be 'base64'".into(),
                    at: leftmost_start(e),
                });
            }
        }
    }
    Ok(Expr::Call(func, out))
}
