//! Evaluation of a compiled plan on one record. Recursion is over the plan only, whose depth
//! the compiler bounded to [`super::MAX_NESTING`].

use std::borrow::Cow;
use std::cmp::Ordering;
use std::io::Write;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};

use super::compile::{Base, BinOp, CastTo, Expr, Func, Item, Lit, Plan, Seg};
use super::value::{Num, Val, compare, equals, parse_num};
use super::{EvalContext, EvalError};
use crate::record::Record;

struct Env<'r, A> {
    record: &'r Record<A>,
    /// The parsed payload; `None` when it is not JSON.
    json: Option<&'r Value>,
    ctx: EvalContext,
    max: usize,
    uuids: u64,
}

pub(crate) fn apply<'r, A>(
    plan: &'r Plan,
    record: &'r Record<A>,
    ctx: &EvalContext,
    max_output_bytes: usize,
) -> Result<Option<Value>, EvalError> {
    let json = record.json()?;
    let mut env = Env {
        record,
        json,
        ctx: *ctx,
        max: max_output_bytes,
        uuids: 0,
    };
    if let Some(filter) = &plan.filter
        && !matches!(eval(filter, &mut env)?, Val::Bool(true))
    {
        return Ok(None);
    }
    let mut out = Map::new();
    for item in &plan.items {
        match item {
            Item::Star => {
                if let Some(Value::Object(obj)) = json {
                    for (k, v) in obj {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            Item::Named(name, expr) => {
                if let Some(v) = eval(expr, &mut env)?.into_json() {
                    out.insert(name.clone(), v);
                }
            }
        }
    }
    let out = Value::Object(out);
    let mut counter = Counter {
        n: 0,
        max: max_output_bytes,
    };
    if serde_json::to_writer(&mut counter, &out).is_err() {
        return Err(EvalError::OutputTooLarge {
            limit: max_output_bytes,
        });
    }
    Ok(Some(out))
}

/// Counts serialized bytes and fails past the bound (no buffer is kept).
struct Counter {
    n: usize,
    max: usize,
}

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.n += buf.len();
        if self.n > self.max {
            return Err(std::io::Error::other("output too large"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn string<'r, A>(s: String, env: &Env<'r, A>) -> Result<Val<'r>, EvalError> {
    if s.len() > env.max {
        return Err(EvalError::OutputTooLarge { limit: env.max });
    }
    Ok(Val::Str(Cow::Owned(s)))
}

fn lit(l: &Lit) -> Val<'_> {
    match l {
        Lit::Null => Val::Null,
        Lit::Bool(b) => Val::Bool(*b),
        Lit::Int(i) => Val::Int(*i),
        Lit::Dec(d) => Val::Dec(*d),
        Lit::Str(s) => Val::Str(Cow::Borrowed(s)),
    }
}

/// One path step on a value.
fn step<'r>(v: Val<'r>, seg: Option<&str>, index: Option<&Val<'_>>) -> Val<'r> {
    let Val::Json(j) = v else {
        return Val::Undef;
    };
    match j {
        Cow::Borrowed(j) => {
            let found = match (j, seg, index) {
                (Value::Object(o), Some(k), _) => o.get(k),
                (Value::Object(o), None, Some(Val::Str(k))) => o.get(k.as_ref()),
                (Value::Array(a), None, Some(Val::Int(i))) => {
                    usize::try_from(*i).ok().and_then(|i| a.get(i))
                }
                _ => None,
            };
            found.map(Val::from_json).unwrap_or(Val::Undef)
        }
        Cow::Owned(j) => {
            let found = match (j, seg, index) {
                (Value::Object(mut o), Some(k), _) => o.remove(k),
                (Value::Object(mut o), None, Some(Val::Str(k))) => o.remove(k.as_ref()),
                (Value::Array(mut a), None, Some(Val::Int(i))) => usize::try_from(*i)
                    .ok()
                    .filter(|i| *i < a.len())
                    .map(|i| a.swap_remove(i)),
                _ => None,
            };
            match found {
                Some(v) => owned(v),
                None => Val::Undef,
            }
        }
    }
}

fn owned(v: Value) -> Val<'static> {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Val::Int(i),
            None => n.as_f64().map(Val::Dec).unwrap_or(Val::Undef),
        },
        Value::String(s) => Val::Str(Cow::Owned(s)),
        v => Val::Json(Cow::Owned(v)),
    }
}

fn payload<'r, A>(env: &Env<'r, A>) -> Val<'r> {
    match env.json {
        Some(v) => Val::from_json(v),
        None => match std::str::from_utf8(env.record.payload()) {
            Ok(s) => Val::Str(Cow::Borrowed(s)),
            Err(_) => Val::Undef,
        },
    }
}

fn eval<'r, A>(e: &'r Expr, env: &mut Env<'r, A>) -> Result<Val<'r>, EvalError> {
    Ok(match e {
        Expr::Lit(l) => lit(l),
        Expr::Path(base, segs) => {
            let mut v = match base {
                Base::Payload => payload(env),
                Base::Expr(x) => eval(x, env)?,
            };
            for seg in segs {
                if v.is_undef() {
                    break;
                }
                v = match seg {
                    Seg::Key(k) => step(v, Some(k), None),
                    Seg::Index(x) => {
                        let i = eval(x, env)?;
                        step(v, None, Some(&i))
                    }
                };
            }
            v
        }
        Expr::Neg(x) => match eval(x, env)?.to_num() {
            Some(Num::Int(i)) => match i.checked_neg() {
                Some(n) => Val::Int(n),
                None => Num::Dec(-(i as f64)).into_val(),
            },
            Some(Num::Dec(d)) => Num::Dec(-d).into_val(),
            None => Val::Undef,
        },
        Expr::Not(x) => match eval(x, env)?.to_bool() {
            Some(b) => Val::Bool(!b),
            None => Val::Undef,
        },
        Expr::Bin(op, l, r) => binary(*op, l, r, env)?,
        Expr::IsNull(x, negated) => match eval(x, env)? {
            Val::Undef => Val::Undef,
            v => Val::Bool(matches!(v, Val::Null) != *negated),
        },
        Expr::In(x, list, negated) => {
            let v = eval(x, env)?;
            if v.is_undef() {
                return Ok(Val::Undef);
            }
            let mut found = false;
            for item in list {
                if equals(&v, &eval(item, env)?) == Some(true) {
                    found = true;
                    break;
                }
            }
            Val::Bool(found != *negated)
        }
        Expr::Between(x, lo, hi, negated) => {
            let v = eval(x, env)?;
            let lo = eval(lo, env)?;
            let hi = eval(hi, env)?;
            match (compare(&v, &lo), compare(&v, &hi)) {
                (Some(a), Some(b)) => {
                    Val::Bool((a != Ordering::Less && b != Ordering::Greater) != *negated)
                }
                _ => Val::Undef,
            }
        }
        Expr::Case(operand, whens, otherwise) => {
            let operand = match operand {
                Some(o) => Some(eval(o, env)?),
                None => None,
            };
            for (cond, result) in whens {
                let c = eval(cond, env)?;
                let hit = match &operand {
                    Some(o) => equals(o, &c) == Some(true),
                    None => matches!(c, Val::Bool(true)),
                };
                if hit {
                    return eval(result, env);
                }
            }
            match otherwise {
                Some(x) => eval(x, env)?,
                None => Val::Undef,
            }
        }
        Expr::Cast(x, to) => cast(eval(x, env)?, *to, env)?,
        Expr::Call(f, args) => call(*f, args, env)?,
    })
}

fn binary<'r, A>(
    op: BinOp,
    l: &'r Expr,
    r: &'r Expr,
    env: &mut Env<'r, A>,
) -> Result<Val<'r>, EvalError> {
    // AND / OR: three-valued over Undefined, and a decided left side decides.
    if matches!(op, BinOp::And | BinOp::Or) {
        let a = eval(l, env)?.to_bool();
        let decided = if op == BinOp::And {
            Some(false)
        } else {
            Some(true)
        };
        if a == decided {
            return Ok(Val::Bool(a == Some(true)));
        }
        let b = eval(r, env)?.to_bool();
        if b == decided {
            return Ok(Val::Bool(b == Some(true)));
        }
        return Ok(match (a, b) {
            (Some(x), Some(y)) => Val::Bool(if op == BinOp::And { x && y } else { x || y }),
            _ => Val::Undef,
        });
    }
    let a = eval(l, env)?;
    let b = eval(r, env)?;
    Ok(match op {
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
            match (a.to_num(), b.to_num()) {
                (Some(x), Some(y)) => arith(op, x, y),
                _ => Val::Undef,
            }
        }
        BinOp::Concat => match (a.to_text(), b.to_text()) {
            (Some(x), Some(y)) => {
                if x.len() + y.len() > env.max {
                    return Err(EvalError::OutputTooLarge { limit: env.max });
                }
                string(format!("{x}{y}"), env)?
            }
            _ => Val::Undef,
        },
        BinOp::Eq => equals(&a, &b).map(Val::Bool).unwrap_or(Val::Undef),
        BinOp::NotEq => equals(&a, &b).map(|x| Val::Bool(!x)).unwrap_or(Val::Undef),
        BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq => match compare(&a, &b) {
            Some(o) => Val::Bool(match op {
                BinOp::Lt => o == Ordering::Less,
                BinOp::LtEq => o != Ordering::Greater,
                BinOp::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            }),
            None => Val::Undef,
        },
        BinOp::And | BinOp::Or => unreachable!("handled above"),
    })
}

/// Arithmetic on two numbers (see the module docs for the Int / Decimal rules).
pub(crate) fn arith<'r>(op: BinOp, x: Num, y: Num) -> Val<'r> {
    if let (Num::Int(a), Num::Int(b)) = (x, y) {
        let exact = match op {
            BinOp::Add => a.checked_add(b),
            BinOp::Sub => a.checked_sub(b),
            BinOp::Mul => a.checked_mul(b),
            BinOp::Div if b == 0 => return Val::Undef,
            BinOp::Div => a.checked_div(b),
            BinOp::Rem if b == 0 => return Val::Undef,
            BinOp::Rem => Some(a.checked_rem(b).unwrap_or(0)),
            _ => return Val::Undef,
        };
        if let Some(v) = exact {
            return Val::Int(v);
        }
    }
    let (a, b) = (x.as_f64(), y.as_f64());
    let v = match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div if b == 0.0 => return Val::Undef,
        BinOp::Div => a / b,
        BinOp::Rem if b == 0.0 => return Val::Undef,
        BinOp::Rem => a % b,
        _ => return Val::Undef,
    };
    Num::Dec(v).into_val()
}

fn cast<'r, A>(v: Val<'r>, to: CastTo, env: &Env<'r, A>) -> Result<Val<'r>, EvalError> {
    Ok(match to {
        CastTo::String => match v {
            Val::Str(_) | Val::Undef => v,
            other => match other.to_text() {
                Some(t) => string(t.into_owned(), env)?,
                None => Val::Undef,
            },
        },
        CastTo::Int => match v {
            Val::Bool(b) => Val::Int(b as i64),
            other => match other.to_num() {
                Some(Num::Int(i)) => Val::Int(i),
                Some(Num::Dec(d)) => to_int(d.trunc()),
                None => Val::Undef,
            },
        },
        CastTo::Decimal => match v {
            Val::Bool(b) => Val::Dec(if b { 1.0 } else { 0.0 }),
            other => match other.to_num() {
                Some(n) => Num::Dec(n.as_f64()).into_val(),
                None => Val::Undef,
            },
        },
        CastTo::Bool => match v {
            Val::Bool(b) => Val::Bool(b),
            Val::Int(i) => Val::Bool(i != 0),
            Val::Dec(d) => Val::Bool(d != 0.0),
            other => other.to_bool().map(Val::Bool).unwrap_or(Val::Undef),
        },
    })
}

/// A float to Int when it is integral and in range, else Undefined.
fn to_int<'r>(d: f64) -> Val<'r> {
    if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&d) {
        Val::Int(d as i64)
    } else {
        Val::Undef
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A version 4 UUID from `seed` and the call counter `n`.
pub(crate) fn uuid_v4(seed: u64, n: u64) -> String {
    let hi = splitmix64(seed ^ splitmix64(n.wrapping_mul(2)));
    let lo = splitmix64(seed.rotate_left(17) ^ splitmix64(n.wrapping_mul(2).wrapping_add(1)));
    let hi = (hi & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
    let lo = (lo & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

fn call<'r, A>(f: Func, args: &'r [Expr], env: &mut Env<'r, A>) -> Result<Val<'r>, EvalError> {
    // Functions that do not evaluate all their arguments first.
    match f {
        Func::Coalesce => {
            for a in args {
                let v = eval(a, env)?;
                if !matches!(v, Val::Undef | Val::Null) {
                    return Ok(v);
                }
            }
            return Ok(Val::Undef);
        }
        Func::EncodePayloadBase64 => {
            let p = env.record.payload();
            if p.len().div_ceil(3) * 4 > env.max {
                return Err(EvalError::OutputTooLarge { limit: env.max });
            }
            return string(B64.encode(p), env);
        }
        _ => {}
    }
    let mut vals = Vec::with_capacity(args.len());
    for a in args {
        vals.push(eval(a, env)?);
    }
    let arg = |i: usize| vals.get(i).unwrap_or(&Val::Undef);
    let num1 = |i: usize| arg(i).to_num();
    let str1 = |i: usize| arg(i).as_str();
    Ok(match f {
        Func::Topic => {
            let topic = env.record.topic();
            match vals.first() {
                None => Val::Str(Cow::Borrowed(topic)),
                Some(v) => match v.to_num() {
                    Some(Num::Int(n)) if n >= 1 => usize::try_from(n - 1)
                        .ok()
                        .and_then(|i| topic.split('/').nth(i))
                        .map(|s| Val::Str(Cow::Borrowed(s)))
                        .unwrap_or(Val::Undef),
                    _ => Val::Undef,
                },
            }
        }
        Func::ClientId => Val::Str(Cow::Borrowed(env.record.client_id())),
        Func::Timestamp => Val::Int(env.ctx.now_ms),
        Func::NewUuid => {
            env.uuids += 1;
            Val::Str(Cow::Owned(uuid_v4(env.ctx.random, env.uuids)))
        }
        Func::UserProperty => match str1(0).and_then(|n| env.record.user_properties().get(n)) {
            Some(v) => Val::Str(Cow::Borrowed(v)),
            None => Val::Undef,
        },
        Func::Abs => match num1(0) {
            Some(Num::Int(i)) => i
                .checked_abs()
                .map(Val::Int)
                .unwrap_or_else(|| Num::Dec((i as f64).abs()).into_val()),
            Some(Num::Dec(d)) => Val::Dec(d.abs()),
            None => Val::Undef,
        },
        Func::Ceil | Func::Floor | Func::Round => match num1(0) {
            Some(Num::Int(i)) => Val::Int(i),
            Some(Num::Dec(d)) => to_int(match f {
                Func::Ceil => d.ceil(),
                Func::Floor => d.floor(),
                _ => d.round(),
            }),
            None => Val::Undef,
        },
        Func::Sqrt => match num1(0) {
            Some(n) if n.as_f64() >= 0.0 => Num::Dec(n.as_f64().sqrt()).into_val(),
            _ => Val::Undef,
        },
        Func::Sign => match num1(0) {
            Some(Num::Int(i)) => Val::Int(i.signum()),
            Some(Num::Dec(0.0)) => Val::Int(0),
            Some(Num::Dec(d)) => Val::Int(if d > 0.0 { 1 } else { -1 }),
            None => Val::Undef,
        },
        Func::Mod => match (num1(0), num1(1)) {
            (Some(x), Some(y)) => arith(BinOp::Rem, x, y),
            _ => Val::Undef,
        },
        Func::Power => match (num1(0), num1(1)) {
            (Some(x), Some(y)) => Num::Dec(x.as_f64().powf(y.as_f64())).into_val(),
            _ => Val::Undef,
        },
        Func::Lower | Func::Upper => match str1(0) {
            Some(s) => {
                let t = if f == Func::Lower {
                    s.to_lowercase()
                } else {
                    s.to_uppercase()
                };
                string(t, env)?
            }
            None => Val::Undef,
        },
        Func::Trim | Func::Ltrim | Func::Rtrim => match str1(0) {
            Some(s) => {
                let t = match f {
                    Func::Trim => s.trim(),
                    Func::Ltrim => s.trim_start(),
                    _ => s.trim_end(),
                };
                Val::Str(Cow::Owned(t.to_string()))
            }
            None => Val::Undef,
        },
        Func::Length => match str1(0) {
            Some(s) => Val::Int(s.chars().count() as i64),
            None => Val::Undef,
        },
        Func::Concat => {
            if vals
                .iter()
                .all(|v| matches!(v, Val::Json(j) if j.is_array()))
            {
                let mut out = Vec::new();
                for v in &vals {
                    if let Val::Json(j) = v
                        && let Value::Array(a) = j.as_ref()
                    {
                        out.extend(a.iter().cloned());
                    }
                }
                let arr = Value::Array(out);
                let mut counter = Counter { n: 0, max: env.max };
                if serde_json::to_writer(&mut counter, &arr).is_err() {
                    return Err(EvalError::OutputTooLarge { limit: env.max });
                }
                Val::Json(Cow::Owned(arr))
            } else {
                let mut s = String::new();
                for v in &vals {
                    match v.to_text() {
                        Some(t) => {
                            if s.len() + t.len() > env.max {
                                return Err(EvalError::OutputTooLarge { limit: env.max });
                            }
                            s.push_str(&t);
                        }
                        None => return Ok(Val::Undef),
                    }
                }
                string(s, env)?
            }
        }
        Func::Substring => {
            // AWS: a number as the string is converted to its text; Decimal indexes are
            // rounded down.
            let text = match arg(0) {
                Val::Str(s) => Cow::Borrowed(s.as_ref()),
                v @ (Val::Int(_) | Val::Dec(_)) => match v.to_text() {
                    Some(t) => Cow::Owned(t.into_owned()),
                    None => return Ok(Val::Undef),
                },
                _ => return Ok(Val::Undef),
            };
            let index = |v: &Val<'_>| match v.to_num() {
                Some(Num::Int(i)) => Some(i),
                Some(Num::Dec(d)) => match to_int(d.floor()) {
                    Val::Int(i) => Some(i),
                    _ => None,
                },
                None => None,
            };
            let Some(start) = index(arg(1)) else {
                return Ok(Val::Undef);
            };
            let n = text.chars().count() as i64;
            let end = match vals.get(2) {
                None => n,
                Some(v) => match index(v) {
                    Some(e) => e,
                    None => return Ok(Val::Undef),
                },
            };
            let start = start.clamp(0, n);
            let end = end.clamp(start, n);
            let t: String = text
                .chars()
                .skip(start as usize)
                .take((end - start) as usize)
                .collect();
            Val::Str(Cow::Owned(t))
        }
        Func::Replace => match (str1(0), str1(1), str1(2)) {
            (Some(s), Some(from), Some(to)) if !from.is_empty() => {
                // Bound the result before building it.
                let hits = s.matches(from).count();
                let len =
                    (s.len() - hits * from.len()).saturating_add(hits.saturating_mul(to.len()));
                if len > env.max {
                    return Err(EvalError::OutputTooLarge { limit: env.max });
                }
                string(s.replace(from, to), env)?
            }
            (Some(s), Some(_), Some(_)) => Val::Str(Cow::Owned(s.to_string())),
            _ => Val::Undef,
        },
        Func::StartsWith | Func::EndsWith => match (str1(0), str1(1)) {
            (Some(s), Some(p)) => Val::Bool(if f == Func::StartsWith {
                s.starts_with(p)
            } else {
                s.ends_with(p)
            }),
            _ => Val::Undef,
        },
        Func::IndexOf => match (str1(0), str1(1)) {
            (Some(s), Some(t)) => Val::Int(match s.find(t) {
                Some(b) => s[..b].chars().count() as i64,
                None => -1,
            }),
            _ => Val::Undef,
        },
        Func::IsNull => Val::Bool(matches!(arg(0), Val::Null)),
        Func::IsNotNull => Val::Bool(!matches!(arg(0), Val::Null | Val::Undef)),
        Func::IsUndefined => Val::Bool(arg(0).is_undef()),
        Func::TypeOf => Val::Str(Cow::Borrowed(arg(0).type_name())),
        Func::Get => {
            let mut it = vals.into_iter();
            let base = it.next().unwrap_or(Val::Undef);
            let idx = it.next().unwrap_or(Val::Undef);
            let idx = match idx {
                Val::Str(s) => match parse_num(&s) {
                    Some(Num::Int(i)) if matches!(base, Val::Json(ref j) if j.is_array()) => {
                        Val::Int(i)
                    }
                    _ => Val::Str(s),
                },
                Val::Dec(d) if d.fract() == 0.0 => to_int(d),
                other => other,
            };
            step(base, None, Some(&idx))
        }
        Func::EncodeBase64 => match str1(0) {
            Some(s) => {
                if s.len().div_ceil(3) * 4 > env.max {
                    return Err(EvalError::OutputTooLarge { limit: env.max });
                }
                string(B64.encode(s.as_bytes()), env)?
            }
            None => Val::Undef,
        },
        Func::DecodeBase64 => match str1(0).and_then(|s| B64.decode(s.as_bytes()).ok()) {
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(s) => string(s, env)?,
                Err(_) => Val::Undef,
            },
            None => Val::Undef,
        },
        Func::Coalesce | Func::EncodePayloadBase64 | Func::CastTo(_) => {
            unreachable!("handled above or compiled to a cast")
        }
    })
}
