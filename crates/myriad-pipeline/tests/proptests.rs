//! Property tests: no panic on arbitrary SQL or payloads; generated arithmetic / comparison /
//! logic expressions agree with a small reference evaluator.

use myriad_pipeline::record::Record;
use myriad_pipeline::sql::{EvalContext, Rule, RuleLimits};
use proptest::prelude::*;
use serde_json::{Value, json};

fn run(sql: &str, payload: &[u8]) {
    if let Ok(rule) = Rule::compile_with(
        sql,
        RuleLimits {
            max_output_bytes: 4096,
        },
    ) {
        let r = Record::new("devices/d1/telemetry", payload.to_vec(), ()).with_client_id("d1");
        let _ = rule.matches_topic(r.topic());
        let _ = rule.apply(&r, &EvalContext::new(7).with_random(3));
    }
}

const FRAGMENTS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IS",
    "NULL",
    "IN",
    "BETWEEN",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "CAST",
    "String",
    "Int",
    "*",
    ",",
    "(",
    ")",
    "[",
    "]",
    ".",
    "+",
    "-",
    "/",
    "%",
    "||",
    "=",
    "<>",
    "<",
    ">=",
    "'#'",
    "'a/+'",
    "\"x/#\"",
    "payload",
    "a",
    "b.c",
    "arr[0]",
    "1",
    "2.5",
    "'s'",
    "true",
    "topic",
    "abs",
    "concat",
    "substring",
    "get",
    "coalesce",
    "newuuid()",
    "timestamp()",
    "encode",
    "'base64'",
    "GROUP BY",
    "LIMIT 1",
    ";",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z0-9 ]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]{1,2}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_sql_text_never_panics(sql in "\\PC{0,200}") {
        run(&sql, b"{\"a\": 1}");
    }

    #[test]
    fn token_soup_never_panics(parts in prop::collection::vec(0..FRAGMENTS.len(), 0..40)) {
        let sql = parts.iter().map(|&i| FRAGMENTS[i]).collect::<Vec<_>>().join(" ");
        run(&sql, br#"{"a": 1, "b": {"c": "x"}, "arr": [1, 2]}"#);
        run(&format!("SELECT * FROM '#' WHERE {sql}"), b"{}");
        run(&format!("SELECT {sql} FROM '#'"), b"[1]");
    }

    #[test]
    fn arbitrary_payloads_never_panic(payload in prop::collection::vec(any::<u8>(), 0..256), v in json_value()) {
        let text = v.to_string();
        for sql in [
            "SELECT * FROM '#'",
            "SELECT payload AS p, a, a.b, arr[0], get(a, 'b'), typeof(a) AS t FROM '#' WHERE a IS NOT NULL OR true",
            "SELECT concat(a, b) AS c, a || b AS d, cast(a AS String) AS e, abs(a) AS f, a + b AS g, a = b AS h FROM '#'",
            "SELECT encode(*, 'base64') AS raw, substring(a, 1, 2) AS s, upper(a) AS u FROM '#'",
        ] {
            run(sql, &payload);
            run(sql, text.as_bytes());
        }
    }

    #[test]
    fn select_star_is_the_payload_object(v in json_value()) {
        let rule = Rule::compile("SELECT * FROM '#'").unwrap();
        let text = v.to_string();
        let r = Record::new("t", text.clone(), ());
        let out = rule.apply(&r, &EvalContext::new(0)).unwrap().unwrap();
        // Compared with the payload as serde_json reads it back: without its `float_roundtrip`
        // feature a float may come back one ulp off (the parser's, not the rule's, doing).
        let parsed: Value = serde_json::from_str(&text).unwrap();
        match &v {
            Value::Object(_) => prop_assert_eq!(out, parsed),
            _ => prop_assert_eq!(out, json!({})),
        }
    }
}

/// A generated expression over the payload fields `f0`..`f3` (ints, one of them missing).
#[derive(Debug, Clone)]
enum E {
    Int(i64),
    Field(usize),
    Arith(&'static str, Box<E>, Box<E>),
    Neg(Box<E>),
    Cmp(&'static str, Box<E>, Box<E>),
    Logic(&'static str, Box<E>, Box<E>),
    Not(Box<E>),
    Bool(bool),
}

fn expr() -> impl Strategy<Value = E> {
    let leaf = prop_oneof![
        (-20i64..20).prop_map(E::Int),
        (0usize..4).prop_map(E::Field),
        any::<bool>().prop_map(E::Bool),
    ];
    leaf.prop_recursive(5, 40, 2, |inner| {
        let arith = prop::sample::select(vec!["+", "-", "*", "/", "%"]);
        let cmp = prop::sample::select(vec!["=", "<>", "<", "<=", ">", ">="]);
        let logic = prop::sample::select(vec!["AND", "OR"]);
        prop_oneof![
            (arith, inner.clone(), inner.clone()).prop_map(|(o, a, b)| E::Arith(
                o,
                Box::new(a),
                Box::new(b)
            )),
            inner.clone().prop_map(|a| E::Neg(Box::new(a))),
            (cmp, inner.clone(), inner.clone()).prop_map(|(o, a, b)| E::Cmp(
                o,
                Box::new(a),
                Box::new(b)
            )),
            (logic, inner.clone(), inner.clone()).prop_map(|(o, a, b)| E::Logic(
                o,
                Box::new(a),
                Box::new(b)
            )),
            inner.prop_map(|a| E::Not(Box::new(a))),
        ]
    })
}

fn sql(e: &E) -> String {
    match e {
        E::Int(i) => format!("({i})"),
        E::Field(i) => format!("f{i}"),
        E::Bool(b) => b.to_string(),
        E::Arith(o, a, b) | E::Cmp(o, a, b) | E::Logic(o, a, b) => {
            format!("({} {o} {})", sql(a), sql(b))
        }
        E::Neg(a) => format!("(-{})", sql(a)),
        E::Not(a) => format!("(NOT {})", sql(a)),
    }
}

/// Reference values: Undefined, integers (wide, to see overflow), floats, booleans.
#[derive(Debug, Clone, Copy, PartialEq)]
enum R {
    U,
    I(i128),
    F(f64),
    B(bool),
}

fn num(r: R) -> Option<f64> {
    match r {
        R::I(i) => Some(i as f64),
        R::F(f) => Some(f),
        _ => None,
    }
}

/// Integer results outside i64 turn into floats, as the engine does.
fn int(i: i128) -> R {
    if i64::try_from(i).is_ok() {
        R::I(i)
    } else {
        R::F(i as f64)
    }
}

fn float(f: f64) -> R {
    if f.is_finite() { R::F(f) } else { R::U }
}

fn reference(e: &E, fields: &[Option<i64>; 4]) -> R {
    match e {
        E::Int(i) => R::I(*i as i128),
        E::Bool(b) => R::B(*b),
        E::Field(i) => fields[*i].map(|v| R::I(v as i128)).unwrap_or(R::U),
        E::Neg(a) => match reference(a, fields) {
            R::I(i) => int(-i),
            R::F(f) => float(-f),
            _ => R::U,
        },
        E::Arith(o, a, b) => match (reference(a, fields), reference(b, fields)) {
            (R::I(x), R::I(y)) => match *o {
                "+" => int(x + y),
                "-" => int(x - y),
                "*" => int(x * y),
                "/" if y == 0 => R::U,
                "/" => int(x / y),
                "%" if y == 0 => R::U,
                _ => int(x % y),
            },
            (x, y) => match (num(x), num(y)) {
                (Some(x), Some(y)) => match *o {
                    "+" => float(x + y),
                    "-" => float(x - y),
                    "*" => float(x * y),
                    "/" if y == 0.0 => R::U,
                    "/" => float(x / y),
                    "%" if y == 0.0 => R::U,
                    _ => float(x % y),
                },
                _ => R::U,
            },
        },
        E::Cmp(o, a, b) => {
            let (x, y) = (reference(a, fields), reference(b, fields));
            if x == R::U || y == R::U {
                return R::U;
            }
            let ord = match (x, y) {
                (R::I(x), R::I(y)) => Some(x.cmp(&y)),
                _ => match (num(x), num(y)) {
                    (Some(x), Some(y)) => x.partial_cmp(&y),
                    _ => None,
                },
            };
            match (*o, ord) {
                ("=", Some(o)) => R::B(o.is_eq()),
                ("<>", Some(o)) => R::B(o.is_ne()),
                ("<", Some(o)) => R::B(o.is_lt()),
                ("<=", Some(o)) => R::B(o.is_le()),
                (">", Some(o)) => R::B(o.is_gt()),
                (">=", Some(o)) => R::B(o.is_ge()),
                // Booleans, or a boolean against a number: equality only.
                ("=", None) => R::B(x == y),
                ("<>", None) => R::B(x != y),
                _ => R::U,
            }
        }
        E::Logic(o, a, b) => {
            let bo = |r: R| if let R::B(b) = r { Some(b) } else { None };
            let (x, y) = (bo(reference(a, fields)), bo(reference(b, fields)));
            let decided = *o == "OR";
            if x == Some(decided) || y == Some(decided) {
                return R::B(decided);
            }
            match (x, y) {
                (Some(x), Some(y)) => R::B(if *o == "AND" { x && y } else { x || y }),
                _ => R::U,
            }
        }
        E::Not(a) => match reference(a, fields) {
            R::B(b) => R::B(!b),
            _ => R::U,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn expressions_match_the_reference_evaluator(
        e in expr(),
        fields in prop::array::uniform4(prop::option::weighted(0.85, -1000i64..1000)),
    ) {
        let text = format!("SELECT {} AS v FROM '#'", sql(&e));
        let rule = Rule::compile(&text).unwrap();
        let mut payload = serde_json::Map::new();
        for (i, f) in fields.iter().enumerate() {
            if let Some(v) = f {
                payload.insert(format!("f{i}"), json!(v));
            }
        }
        let r = Record::new("t", Value::Object(payload).to_string(), ());
        let out = rule.apply(&r, &EvalContext::new(0)).unwrap().unwrap();
        let got = out.get("v").cloned();
        let want = match reference(&e, &fields) {
            R::U => None,
            R::I(i) => Some(json!(i64::try_from(i).unwrap())),
            R::F(f) => Some(json!(f)),
            R::B(b) => Some(json!(b)),
        };
        match (&got, &want) {
            (Some(Value::Number(g)), Some(Value::Number(w))) if g.is_f64() || w.is_f64() => {
                let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
                prop_assert!((g - w).abs() <= 1e-9 * w.abs().max(1.0), "{text}: got {g}, want {w}");
            }
            _ => prop_assert_eq!(got, want, "{}", text),
        }
    }
}
