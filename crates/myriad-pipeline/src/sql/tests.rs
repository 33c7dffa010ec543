//! Unit tests: every operator and function, Undefined / Null semantics, compile errors.

use serde_json::{Value, json};

use super::*;
use crate::record::{Record, UserProperties};

const PAYLOAD: &str = r#"{"temp": 31.5, "n": 7, "s": "Hello", "num": "12", "t": "TRUE",
  "b": true, "z": null, "arr": [10, 20, {"x": 1}], "obj": {"a": {"b": 2}},
  "neg": -3, "big": 9223372036854775807, "sp": "  pad  ", "payload": {"inner": 1}}"#;

fn record() -> Record<()> {
    let mut props = UserProperties::new();
    props.push("trace", "abc").unwrap();
    Record::new("devices/d1/telemetry", PAYLOAD, ())
        .with_client_id("d1")
        .with_user_properties(props)
}

/// The value of `expr` on the test record, `None` when Undefined.
fn ev(expr: &str) -> Option<Value> {
    let rule = Rule::compile(&format!("SELECT {expr} AS v FROM '#'")).unwrap();
    let out = rule
        .apply(&record(), &EvalContext::new(1_000).with_random(42))
        .unwrap()
        .unwrap();
    out.get("v").cloned()
}

fn err(sql: &str) -> RuleError {
    Rule::compile(sql).unwrap_err()
}

#[test]
fn literals() {
    assert_eq!(ev("1"), Some(json!(1)));
    assert_eq!(ev("-1"), Some(json!(-1)));
    assert_eq!(ev("2.5"), Some(json!(2.5)));
    assert_eq!(ev("'x'"), Some(json!("x")));
    assert_eq!(ev("true"), Some(json!(true)));
    assert_eq!(ev("false"), Some(json!(false)));
    assert_eq!(ev("NULL"), Some(Value::Null));
}

#[test]
fn paths() {
    assert_eq!(ev("payload.temp"), Some(json!(31.5)));
    assert_eq!(ev("temp"), Some(json!(31.5)));
    assert_eq!(ev("payload.obj.a.b"), Some(json!(2)));
    assert_eq!(ev("obj.a.b"), Some(json!(2)));
    assert_eq!(ev("payload.arr[1]"), Some(json!(20)));
    assert_eq!(ev("arr[2].x"), Some(json!(1)));
    assert_eq!(ev("payload.arr[1 + 1].x"), Some(json!(1)));
    assert_eq!(ev("payload.arr[3]"), None);
    assert_eq!(ev("payload.arr[-1]"), None);
    assert_eq!(ev("payload.missing"), None);
    assert_eq!(ev("payload.missing.deeper"), None);
    assert_eq!(ev("payload.temp.x"), None);
    assert_eq!(ev("payload.z"), Some(Value::Null));
    assert_eq!(ev("\"payload\".inner"), Some(json!(1)));
    assert_eq!(ev("payload.payload.inner"), Some(json!(1)));
    assert_eq!(ev("payload").unwrap().get("n").cloned(), Some(json!(7)));
    assert_eq!(ev("get(arr, 0)"), Some(json!(10)));
    assert_eq!(ev("get(arr, '1')"), Some(json!(20)));
    assert_eq!(ev("get(obj, 'a')"), Some(json!({"b": 2})));
    assert_eq!(ev("get(get(obj, 'a'), 'b')"), Some(json!(2)));
    assert_eq!(ev("get(arr, 5)"), None);
    assert_eq!(ev("get(s, 0)"), None);
    assert_eq!(ev("get(payload.arr, 2).x"), Some(json!(1)));
}

#[test]
fn non_json_payload() {
    let rule = Rule::compile("SELECT payload AS p, payload.a AS a, * FROM '#'").unwrap();
    let r = Record::new("t", "plain text", ());
    assert_eq!(
        rule.apply(&r, &EvalContext::new(0)).unwrap(),
        Some(json!({"p": "plain text"}))
    );
    let r = Record::new("t", &[0xff, 0xfe][..], ());
    assert_eq!(
        rule.apply(&r, &EvalContext::new(0)).unwrap(),
        Some(json!({}))
    );
    let r = Record::new("t", "[1,2]", ());
    assert_eq!(
        rule.apply(&r, &EvalContext::new(0)).unwrap(),
        Some(json!({"p": [1, 2]}))
    );
}

#[test]
fn arithmetic() {
    assert_eq!(ev("n + 1"), Some(json!(8)));
    assert_eq!(ev("n - 10"), Some(json!(-3)));
    assert_eq!(ev("n * 2"), Some(json!(14)));
    assert_eq!(ev("n / 2"), Some(json!(3)));
    assert_eq!(ev("n % 4"), Some(json!(3)));
    assert_eq!(ev("neg % 2"), Some(json!(-1)));
    assert_eq!(ev("temp + 1"), Some(json!(32.5)));
    assert_eq!(ev("n / 2.0"), Some(json!(3.5)));
    assert_eq!(ev("temp % 2"), Some(json!(1.5)));
    assert_eq!(ev("-temp"), Some(json!(-31.5)));
    assert_eq!(ev("-n"), Some(json!(-7)));
    assert_eq!(ev("+n"), Some(json!(7)));
    assert_eq!(ev("1 + 2 * 3"), Some(json!(7)));
    assert_eq!(ev("(1 + 2) * 3"), Some(json!(9)));
    // Numeric strings convert; others are Undefined.
    assert_eq!(ev("num + 1"), Some(json!(13)));
    assert_eq!(ev("'1.5' * 2"), Some(json!(3.0)));
    assert_eq!(ev("s + 1"), None);
    assert_eq!(ev("b + 1"), None);
    assert_eq!(ev("z + 1"), None);
    assert_eq!(ev("arr + 1"), None);
    assert_eq!(ev("missing + 1"), None);
    assert_eq!(ev("-s"), None);
    // Division by zero and overflow.
    assert_eq!(ev("n / 0"), None);
    assert_eq!(ev("n % 0"), None);
    assert_eq!(ev("temp / 0.0"), None);
    assert_eq!(ev("big + 1"), Some(json!(9223372036854775808.0)));
    assert_eq!(ev("-9223372036854775807 - 1"), Some(json!(i64::MIN)));
    assert_eq!(
        ev("(-9223372036854775807 - 1) / -1"),
        Some(json!(9223372036854775808.0))
    );
    assert_eq!(ev("(-9223372036854775807 - 1) % -1"), Some(json!(0)));
}

#[test]
fn concat_operator() {
    assert_eq!(ev("s || '!'"), Some(json!("Hello!")));
    assert_eq!(ev("s || n"), Some(json!("Hello7")));
    assert_eq!(ev("'v' || temp"), Some(json!("v31.5")));
    assert_eq!(ev("'v' || b"), Some(json!("vtrue")));
    assert_eq!(ev("'v' || z"), Some(json!("vnull")));
    assert_eq!(ev("'v' || obj"), Some(json!(r#"v{"a":{"b":2}}"#)));
    assert_eq!(ev("s || missing"), None);
}

#[test]
fn comparisons() {
    assert_eq!(ev("temp > 30"), Some(json!(true)));
    assert_eq!(ev("temp < 30"), Some(json!(false)));
    assert_eq!(ev("n >= 7"), Some(json!(true)));
    assert_eq!(ev("n <= 6"), Some(json!(false)));
    assert_eq!(ev("n = 7"), Some(json!(true)));
    assert_eq!(ev("n = 7.0"), Some(json!(true)));
    assert_eq!(ev("n <> 7"), Some(json!(false)));
    assert_eq!(ev("n != 8"), Some(json!(true)));
    assert_eq!(ev("num = 12"), Some(json!(true)));
    assert_eq!(ev("num > 5"), Some(json!(true)));
    assert_eq!(ev("s = 'Hello'"), Some(json!(true)));
    assert_eq!(ev("s < 'World'"), Some(json!(true)));
    assert_eq!(ev("s = 1"), Some(json!(false)));
    assert_eq!(ev("s > 1"), None);
    assert_eq!(ev("b = true"), Some(json!(true)));
    assert_eq!(ev("b > 1"), None);
    assert_eq!(ev("z = NULL"), Some(json!(true)));
    assert_eq!(ev("z = 0"), Some(json!(false)));
    assert_eq!(ev("arr = arr"), Some(json!(true)));
    assert_eq!(ev("obj.a = obj.a"), Some(json!(true)));
    assert_eq!(ev("missing = 1"), None);
    assert_eq!(ev("missing <> 1"), None);
    assert_eq!(ev("missing > 1"), None);
}

#[test]
fn logic_three_valued() {
    assert_eq!(ev("true AND false"), Some(json!(false)));
    assert_eq!(ev("true AND true"), Some(json!(true)));
    assert_eq!(ev("false OR true"), Some(json!(true)));
    assert_eq!(ev("false OR false"), Some(json!(false)));
    assert_eq!(ev("NOT b"), Some(json!(false)));
    assert_eq!(ev("NOT t"), Some(json!(false)));
    assert_eq!(ev("t AND 'false'"), Some(json!(false)));
    assert_eq!(ev("NOT s"), None);
    assert_eq!(ev("NOT n"), None);
    assert_eq!(ev("false AND missing"), Some(json!(false)));
    assert_eq!(ev("missing AND false"), Some(json!(false)));
    assert_eq!(ev("true AND missing"), None);
    assert_eq!(ev("true OR missing"), Some(json!(true)));
    assert_eq!(ev("missing OR true"), Some(json!(true)));
    assert_eq!(ev("false OR missing"), None);
    assert_eq!(ev("n AND true"), None);
}

#[test]
fn is_null_in_between_case() {
    assert_eq!(ev("z IS NULL"), Some(json!(true)));
    assert_eq!(ev("n IS NULL"), Some(json!(false)));
    assert_eq!(ev("z IS NOT NULL"), Some(json!(false)));
    assert_eq!(ev("n IS NOT NULL"), Some(json!(true)));
    assert_eq!(ev("missing IS NULL"), None);
    assert_eq!(ev("missing IS NOT NULL"), None);
    assert_eq!(ev("n IN (1, 7, 9)"), Some(json!(true)));
    assert_eq!(ev("n IN (1, 2)"), Some(json!(false)));
    assert_eq!(ev("n NOT IN (1, 2)"), Some(json!(true)));
    assert_eq!(ev("s IN ('a', 'Hello')"), Some(json!(true)));
    assert_eq!(ev("num IN (12)"), Some(json!(true)));
    assert_eq!(ev("missing IN (1)"), None);
    assert_eq!(ev("n IN (missing, 7)"), Some(json!(true)));
    assert_eq!(ev("n BETWEEN 1 AND 7"), Some(json!(true)));
    assert_eq!(ev("n BETWEEN 8 AND 9"), Some(json!(false)));
    assert_eq!(ev("n NOT BETWEEN 8 AND 9"), Some(json!(true)));
    assert_eq!(ev("temp BETWEEN 31.5 AND 31.5"), Some(json!(true)));
    assert_eq!(ev("s BETWEEN 'A' AND 'Z'"), Some(json!(true)));
    assert_eq!(ev("missing BETWEEN 1 AND 2"), None);
    assert_eq!(ev("b BETWEEN 1 AND 2"), None);
    assert_eq!(
        ev("CASE WHEN temp > 40 THEN 'hot' WHEN temp > 30 THEN 'warm' ELSE 'cold' END"),
        Some(json!("warm"))
    );
    assert_eq!(ev("CASE WHEN temp > 40 THEN 'hot' END"), None);
    assert_eq!(
        ev("CASE n WHEN 1 THEN 'one' WHEN 7 THEN 'seven' END"),
        Some(json!("seven"))
    );
    assert_eq!(
        ev("CASE n WHEN 1 THEN 'one' ELSE 'other' END"),
        Some(json!("other"))
    );
    assert_eq!(ev("CASE WHEN missing THEN 1 ELSE 2 END"), Some(json!(2)));
    assert_eq!(ev("CASE missing WHEN 1 THEN 1 ELSE 2 END"), Some(json!(2)));
}

#[test]
fn context_functions() {
    assert_eq!(ev("topic()"), Some(json!("devices/d1/telemetry")));
    assert_eq!(ev("topic(1)"), Some(json!("devices")));
    assert_eq!(ev("topic(2)"), Some(json!("d1")));
    assert_eq!(ev("topic(3)"), Some(json!("telemetry")));
    assert_eq!(ev("topic(4)"), None);
    assert_eq!(ev("topic(0)"), None);
    assert_eq!(ev("topic('x')"), None);
    assert_eq!(ev("clientid()"), Some(json!("d1")));
    assert_eq!(ev("timestamp()"), Some(json!(1000)));
    assert_eq!(ev("get_user_property('trace')"), Some(json!("abc")));
    assert_eq!(ev("get_user_property('none')"), None);
    assert_eq!(ev("get_user_property(1)"), None);
}

#[test]
fn newuuid_is_v4_distinct_per_call_and_deterministic_per_seed() {
    let rule = Rule::compile("SELECT newuuid() AS a, newuuid() AS b FROM '#'").unwrap();
    let out = rule
        .apply(&record(), &EvalContext::new(0).with_random(7))
        .unwrap()
        .unwrap();
    let (a, b) = (out["a"].as_str().unwrap(), out["b"].as_str().unwrap());
    assert_ne!(a, b);
    for u in [a, b] {
        assert_eq!(u.len(), 36);
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{u}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{u}");
    }
    let again = rule
        .apply(&record(), &EvalContext::new(0).with_random(7))
        .unwrap()
        .unwrap();
    assert_eq!(out, again);
    let other = rule
        .apply(&record(), &EvalContext::new(0).with_random(8))
        .unwrap()
        .unwrap();
    assert_ne!(out["a"], other["a"]);
}

#[test]
fn numeric_functions() {
    assert_eq!(ev("abs(neg)"), Some(json!(3)));
    assert_eq!(ev("abs(-2.5)"), Some(json!(2.5)));
    assert_eq!(ev("abs('-5.123')"), Some(json!(5.123)));
    assert_eq!(ev("abs('x')"), None);
    assert_eq!(ev("abs(b)"), None);
    assert_eq!(
        ev("abs(-9223372036854775807 - 1)"),
        Some(json!(9223372036854775808.0))
    );
    assert_eq!(ev("ceil(1.2)"), Some(json!(2)));
    assert_eq!(ev("ceil(-1.2)"), Some(json!(-1)));
    assert_eq!(ev("ceil(n)"), Some(json!(7)));
    assert_eq!(ev("floor(1.8)"), Some(json!(1)));
    assert_eq!(ev("floor(-1.2)"), Some(json!(-2)));
    assert_eq!(ev("floor(s)"), None);
    assert_eq!(ev("round(1.5)"), Some(json!(2)));
    assert_eq!(ev("round(-1.5)"), Some(json!(-2)));
    assert_eq!(ev("round(1.4)"), Some(json!(1)));
    assert_eq!(ev("round(1e300)"), None);
    assert_eq!(ev("sqrt(9)"), Some(json!(3.0)));
    assert_eq!(ev("sqrt(-1)"), None);
    assert_eq!(ev("sign(-4)"), Some(json!(-1)));
    assert_eq!(ev("sign(0.0)"), Some(json!(0)));
    assert_eq!(ev("sign(2.5)"), Some(json!(1)));
    assert_eq!(ev("mod(8, 3)"), Some(json!(2)));
    assert_eq!(ev("mod(-8, 3)"), Some(json!(-2)));
    assert_eq!(ev("mod(8, 0)"), None);
    assert_eq!(ev("mod(8.5, 2)"), Some(json!(0.5)));
    assert_eq!(ev("power(2, 10)"), Some(json!(1024.0)));
    assert_eq!(ev("power(10, 400)"), None);
}

#[test]
fn string_functions() {
    assert_eq!(ev("lower(s)"), Some(json!("hello")));
    assert_eq!(ev("upper(s)"), Some(json!("HELLO")));
    assert_eq!(ev("lower(n)"), None);
    assert_eq!(ev("trim(sp)"), Some(json!("pad")));
    assert_eq!(ev("ltrim(sp)"), Some(json!("pad  ")));
    assert_eq!(ev("rtrim(sp)"), Some(json!("  pad")));
    assert_eq!(ev("trim(n)"), None);
    assert_eq!(ev("length(s)"), Some(json!(5)));
    assert_eq!(ev("char_length('héé')"), Some(json!(3)));
    assert_eq!(ev("length(n)"), None);
    assert_eq!(ev("concat(s, '-', n)"), Some(json!("Hello-7")));
    assert_eq!(ev("concat(s)"), Some(json!("Hello")));
    assert_eq!(ev("concat(s, missing)"), None);
    assert_eq!(
        ev("concat(arr, arr)"),
        Some(json!([10, 20, {"x": 1}, 10, 20, {"x": 1}]))
    );
    assert_eq!(ev("substring(s, 1)"), Some(json!("ello")));
    assert_eq!(ev("substring(s, 1, 3)"), Some(json!("el")));
    assert_eq!(ev("substring(s, 0, 100)"), Some(json!("Hello")));
    assert_eq!(ev("substring(s, 4, 2)"), Some(json!("")));
    assert_eq!(ev("substring(s, -3, 2)"), Some(json!("He")));
    assert_eq!(ev("substring('héllo', 1, 2)"), Some(json!("é")));
    assert_eq!(ev("substring(n, 0)"), Some(json!("7")));
    assert_eq!(ev("substring(b, 0)"), None);
    assert_eq!(ev("substring(s, 1.9, 3.2)"), Some(json!("el")));
    assert_eq!(ev("substring(s, 'x')"), None);
    assert_eq!(ev("replace(s, 'l', 'L')"), Some(json!("HeLLo")));
    assert_eq!(ev("replace(s, '', 'L')"), Some(json!("Hello")));
    assert_eq!(ev("replace(s, n, 'L')"), None);
    assert_eq!(ev("startswith(s, 'He')"), Some(json!(true)));
    assert_eq!(ev("startswith(s, 'he')"), Some(json!(false)));
    assert_eq!(ev("endswith(s, 'lo')"), Some(json!(true)));
    assert_eq!(ev("endswith(n, 'lo')"), None);
    assert_eq!(ev("indexof(s, 'l')"), Some(json!(2)));
    assert_eq!(ev("indexof('éa', 'a')"), Some(json!(1)));
    assert_eq!(ev("indexof(s, 'z')"), Some(json!(-1)));
}

#[test]
fn null_undefined_functions() {
    assert_eq!(ev("coalesce(missing, z, n)"), Some(json!(7)));
    assert_eq!(ev("coalesce(missing, z)"), None);
    assert_eq!(ev("isnull(z)"), Some(json!(true)));
    assert_eq!(ev("isnull(n)"), Some(json!(false)));
    assert_eq!(ev("isnull(missing)"), Some(json!(false)));
    assert_eq!(ev("isundefined(missing)"), Some(json!(true)));
    assert_eq!(ev("isundefined(z)"), Some(json!(false)));
    assert_eq!(ev("typeof(n)"), Some(json!("Int")));
    assert_eq!(ev("typeof(temp)"), Some(json!("Decimal")));
    assert_eq!(ev("typeof(s)"), Some(json!("String")));
    assert_eq!(ev("typeof(b)"), Some(json!("Boolean")));
    assert_eq!(ev("typeof(arr)"), Some(json!("Array")));
    assert_eq!(ev("typeof(obj)"), Some(json!("Object")));
    assert_eq!(ev("typeof(z)"), Some(json!("Null")));
    assert_eq!(ev("typeof(missing)"), Some(json!("Undefined")));
}

#[test]
fn casts() {
    assert_eq!(ev("cast(n AS String)"), Some(json!("7")));
    assert_eq!(ev("cast(temp AS String)"), Some(json!("31.5")));
    assert_eq!(ev("cast(b AS String)"), Some(json!("true")));
    assert_eq!(ev("cast(s AS Varchar)"), Some(json!("Hello")));
    assert_eq!(ev("cast(num AS Int)"), Some(json!(12)));
    assert_eq!(ev("cast(temp AS Int)"), Some(json!(31)));
    assert_eq!(ev("cast(-2.7 AS Integer)"), Some(json!(-2)));
    assert_eq!(ev("cast(b AS Int)"), Some(json!(1)));
    assert_eq!(ev("cast(s AS Int)"), None);
    assert_eq!(ev("cast(n AS Decimal)"), Some(json!(7.0)));
    assert_eq!(ev("cast('2.5' AS Double)"), Some(json!(2.5)));
    assert_eq!(ev("cast(false AS Decimal)"), Some(json!(0.0)));
    assert_eq!(ev("cast(arr AS Decimal)"), None);
    assert_eq!(ev("cast(t AS Bool)"), Some(json!(true)));
    assert_eq!(ev("cast(0 AS Boolean)"), Some(json!(false)));
    assert_eq!(ev("cast(2.5 AS Bool)"), Some(json!(true)));
    assert_eq!(ev("cast(s AS Bool)"), None);
    assert_eq!(ev("cast(missing AS String)"), None);
    assert_eq!(ev("cast(z AS String)"), Some(json!("null")));
}

#[test]
fn base64() {
    assert_eq!(ev("encode(s, 'base64')"), Some(json!("SGVsbG8=")));
    assert_eq!(ev("decode('SGVsbG8=', 'base64')"), Some(json!("Hello")));
    assert_eq!(ev("decode('!!', 'base64')"), None);
    assert_eq!(ev("decode('//79', 'base64')"), None);
    let rule = Rule::compile("SELECT encode(*, 'base64') AS raw FROM '#'").unwrap();
    let r = Record::new("t", &[0xff, 0x00][..], ());
    assert_eq!(
        rule.apply(&r, &EvalContext::new(0)).unwrap(),
        Some(json!({"raw": "/wA="}))
    );
    assert!(matches!(
        err("SELECT encode(s, 'hex') FROM '#'"),
        RuleError::BadArgument { .. }
    ));
}

#[test]
fn select_star_names_and_where() {
    let r = Record::new("devices/d1/telemetry", r#"{"a": 1, "b": {"c": 2}}"#, ());
    let ctx = EvalContext::new(5);
    let run = |sql: &str| Rule::compile(sql).unwrap().apply(&r, &ctx).unwrap();
    assert_eq!(
        run("SELECT * FROM '#'"),
        Some(json!({"a": 1, "b": {"c": 2}}))
    );
    assert_eq!(
        run("SELECT *, topic(2) AS dev FROM '#'"),
        Some(json!({"a": 1, "b": {"c": 2}, "dev": "d1"}))
    );
    assert_eq!(
        run("SELECT a + 1 AS a, * FROM '#'"),
        Some(json!({"a": 1, "b": {"c": 2}}))
    );
    assert_eq!(
        run("SELECT *, a + 1 AS a FROM '#'"),
        Some(json!({"a": 2, "b": {"c": 2}}))
    );
    assert_eq!(
        run("SELECT a, b.c, payload.b.c, topic(), abs(a), a + 1 FROM '#'"),
        Some(json!({"a": 1, "c": 2, "topic": "devices/d1/telemetry", "abs": 1, "a + 1": 2}))
    );
    assert_eq!(run("SELECT missing FROM '#'"), Some(json!({})));
    assert_eq!(run("SELECT a FROM '#' WHERE a = 1"), Some(json!({"a": 1})));
    assert_eq!(run("SELECT a FROM '#' WHERE a = 2"), None);
    assert_eq!(run("SELECT a FROM '#' WHERE missing = 2"), None);
    assert_eq!(run("SELECT a FROM '#' WHERE NULL"), None);
    assert_eq!(run("SELECT a FROM '#' WHERE 'true'"), None);
    assert_eq!(run("SELECT a FROM '#' WHERE 1"), None);
    assert_eq!(
        run("select A from \"devices/#\" where a = 1"),
        Some(json!({}))
    );
    assert_eq!(
        run("SELECT \"a\" AS \"my key\" FROM '#'"),
        Some(json!({"my key": 1}))
    );
}

#[test]
fn from_topic_filter_forms() {
    let rule = Rule::compile("SELECT * FROM 'devices/+/telemetry'").unwrap();
    assert_eq!(rule.topic_filter().as_str(), "devices/+/telemetry");
    assert!(rule.matches_topic("devices/x/telemetry"));
    assert!(!rule.matches_topic("devices/x/other"));
    let rule = Rule::compile("SELECT * FROM \"devices/#\"").unwrap();
    assert!(rule.matches_topic("devices/x/y"));
    let rule = Rule::compile("SELECT * FROM alerts").unwrap();
    assert!(rule.matches_topic("alerts"));
    assert!(!rule.matches_topic("alerts/x"));
    // A FROM inside a function call is not the rule's FROM.
    let rule = Rule::compile("SELECT trim(BOTH FROM s) AS x FROM 'a'");
    assert!(
        matches!(rule, Err(RuleError::Unsupported { .. })),
        "{rule:?}"
    );
    assert!(matches!(
        err("SELECT * FROM 'a/#/b'"),
        RuleError::TopicFilter(crate::topic::FilterError::Invalid(_))
    ));
    assert!(matches!(err("SELECT * FROM ''"), RuleError::TopicFilter(_)));
    assert!(matches!(err("SELECT 1"), RuleError::NotARule(_)));
    assert_eq!(rule_sql_roundtrip(), "SELECT * FROM 'x'");
}

fn rule_sql_roundtrip() -> String {
    Rule::compile("SELECT * FROM 'x'")
        .unwrap()
        .sql()
        .to_string()
}

#[test]
fn compile_errors_name_place_and_function() {
    match err("SELECT nosuch(1) FROM '#'") {
        RuleError::UnknownFunction { name, at } => {
            assert_eq!(name, "nosuch");
            assert_eq!((at.line, at.column), (1, 8));
        }
        e => panic!("{e:?}"),
    }
    match err("SELECT a,\n  abs(1, 2) FROM '#'") {
        RuleError::Arity {
            name,
            expected,
            got,
            at,
        } => {
            assert_eq!((name.as_str(), expected.as_str(), got), ("abs", "1", 2));
            assert_eq!(at.line, 2);
        }
        e => panic!("{e:?}"),
    }
    let e = err("SELECT topic(1, 2) FROM '#'");
    assert!(
        e.to_string()
            .contains("topic() takes 0 or 1 argument(s), got 2"),
        "{e}"
    );
    let e = err("SELECT concat() FROM '#'");
    assert!(e.to_string().contains("1 to 16"), "{e}");
    let seventeen = vec!["1"; MAX_VARIADIC_ARGS + 1].join(", ");
    assert!(matches!(
        err(&format!("SELECT concat({seventeen}) FROM '#'")),
        RuleError::Arity { got: 17, .. }
    ));
    let sixteen = vec!["'a'"; MAX_VARIADIC_ARGS].join(", ");
    assert!(Rule::compile(&format!("SELECT concat({sixteen}) FROM '#'")).is_ok());
    assert!(matches!(
        err("SELECT FROM WHERE"),
        RuleError::Parse(_) | RuleError::NotARule(_)
    ));
    assert!(matches!(err("SELECT FROM 'a'"), RuleError::NotARule(_)));
    assert!(matches!(
        err("SELECT 'unterminated FROM '#'"),
        RuleError::Parse(_) | RuleError::NotARule(_)
    ));
    assert!(matches!(
        err("SELECT * FROM '#' GROUP BY a"),
        RuleError::NotARule(_)
    ));
    assert!(matches!(
        err("SELECT * FROM '#' ORDER BY a"),
        RuleError::NotARule(_)
    ));
    assert!(matches!(
        err("SELECT * FROM '#' LIMIT 1"),
        RuleError::NotARule(_)
    ));
    assert!(matches!(
        err("SELECT DISTINCT a FROM '#'"),
        RuleError::NotARule(_)
    ));
    assert!(matches!(
        err("SELECT a FROM '#' AS x"),
        RuleError::NotARule(_)
    ));
    assert!(matches!(
        err("SELECT a FROM '#', 'b'"),
        RuleError::NotARule(_)
    ));
    assert!(matches!(
        err("SELECT a FROM '#'; SELECT b FROM '#'"),
        RuleError::NotARule(_)
    ));
    assert!(matches!(
        err("DELETE FROM '#'"),
        RuleError::NotARule(_) | RuleError::Parse(_)
    ));
    assert!(matches!(
        err("SELECT a LIKE 'x' FROM '#'"),
        RuleError::Unsupported { .. }
    ));
    assert!(matches!(
        err("SELECT (SELECT 1) FROM '#'"),
        RuleError::Unsupported { .. }
    ));
    assert!(matches!(
        err("SELECT count(*) OVER () FROM '#'"),
        RuleError::Unsupported { .. }
    ));
    assert!(matches!(
        err("SELECT cast(a AS DATE) FROM '#'"),
        RuleError::Unsupported { .. }
    ));
    assert!(matches!(
        err("SELECT 1e999 FROM '#'"),
        RuleError::BadNumber { .. }
    ));
    assert_eq!(ev("99999999999999999999"), Some(json!(1e20)));
}

#[test]
fn sql_length_at_the_limit_and_one_past() {
    let base = "SELECT a FROM '#' WHERE a = ''";
    let pad = MAX_SQL_BYTES - base.len();
    let at_limit = format!("SELECT a FROM '#' WHERE a = '{}'", "x".repeat(pad));
    assert_eq!(at_limit.len(), MAX_SQL_BYTES);
    assert!(Rule::compile(&at_limit).is_ok());
    let past = format!("SELECT a FROM '#' WHERE a = '{}'", "x".repeat(pad + 1));
    assert_eq!(
        Rule::compile(&past).unwrap_err(),
        RuleError::TooLong {
            len: MAX_SQL_BYTES + 1,
            limit: MAX_SQL_BYTES
        }
    );
}

/// `SELECT <expr> FROM '#'` where expr nests `n` levels of `form`.
fn nested(form: &str, n: usize) -> String {
    let e = match form {
        "paren" => format!("{}1{}", "(".repeat(n - 1), ")".repeat(n - 1)),
        "abs" => format!("{}1{}", "abs(".repeat(n - 1), ")".repeat(n - 1)),
        "not" => format!("{}true", "NOT ".repeat(n - 1)),
        "neg" => format!("{}n", "- ".repeat(n - 1)),
        "chain" => format!("1{}", " + 1".repeat(n - 1)),
        "case" => format!(
            "{}1{}",
            "CASE WHEN true THEN ".repeat(n - 1),
            " END".repeat(n - 1)
        ),
        _ => unreachable!(),
    };
    format!("SELECT {e} AS v FROM '#'")
}

#[test]
fn nesting_at_the_limit_and_one_past() {
    for form in ["paren", "abs", "not", "neg", "chain", "case"] {
        let ok = Rule::compile(&nested(form, MAX_NESTING));
        assert!(ok.is_ok(), "{form} at the limit: {ok:?}");
        let rule = ok.unwrap();
        assert!(rule.apply(&record(), &EvalContext::new(0)).is_ok());
        match Rule::compile(&nested(form, MAX_NESTING + 1)) {
            Err(RuleError::TooDeep { limit, .. }) => assert_eq!(limit, MAX_NESTING),
            other => panic!("{form} one past the limit: {other:?}"),
        }
    }
    // The WHERE clause is bounded the same way.
    let deep = format!(
        "SELECT a FROM '#' WHERE {}true{}",
        "(".repeat(MAX_NESTING),
        ")".repeat(MAX_NESTING)
    );
    assert!(matches!(
        Rule::compile(&deep),
        Err(RuleError::TooDeep { .. })
    ));
}

#[test]
fn huge_flat_inputs_do_not_overflow_the_stack() {
    // The longest left-deep chain the size limit allows: refused, without recursing.
    let chain = format!("SELECT 1{} FROM '#'", "+1".repeat((MAX_SQL_BYTES - 20) / 2));
    assert!(chain.len() <= MAX_SQL_BYTES);
    assert!(matches!(
        Rule::compile(&chain),
        Err(RuleError::TooDeep { .. })
    ));
    let parens = format!("SELECT {}1 FROM '#'", "(".repeat(MAX_SQL_BYTES - 20));
    assert!(Rule::compile(&parens).is_err());
    let nots = format!(
        "SELECT {}1 FROM '#'",
        "NOT ".repeat((MAX_SQL_BYTES - 20) / 4)
    );
    // The parser gives up (its recursion bound) and reports where.
    assert!(matches!(
        Rule::compile(&nots),
        Err(RuleError::TooDeep { .. } | RuleError::Parse(_))
    ));
    let subs = format!(
        "SELECT a{} FROM '#'",
        "[0]".repeat((MAX_SQL_BYTES - 20) / 3)
    );
    assert!(matches!(
        Rule::compile(&subs),
        Err(RuleError::TooDeep { .. })
    ));
    // Deep operands under an unsupported or unknown node, or without an alias: errors and
    // names never walk them recursively.
    let long = "+1".repeat((MAX_SQL_BYTES - 60) / 2);
    for sql in [
        format!("SELECT (1{long}) LIKE 'x' FROM '#'"),
        format!("SELECT nosuch(1{long}) FROM '#'"),
        format!("SELECT abs(1{long}, 2) FROM '#'"),
        format!("SELECT 1{long} FROM '#'"),
        format!("SELECT a FROM '#' WHERE 1{long} > 0"),
        format!(
            "SELECT a{} FROM '#'",
            " IS NULL".repeat((MAX_SQL_BYTES - 20) / 8)
        ),
        format!(
            "SELECT a{} FROM '#'",
            "::int".repeat((MAX_SQL_BYTES - 20) / 5)
        ),
        format!(
            "SELECT a{} FROM '#'",
            " || a".repeat((MAX_SQL_BYTES - 20) / 5)
        ),
    ] {
        assert!(sql.len() <= MAX_SQL_BYTES);
        assert!(Rule::compile(&sql).is_err(), "{}", &sql[..40]);
    }
}

#[test]
fn output_limit_at_the_limit_and_one_past() {
    // {"v":"xxx"}: 8 bytes of framing.
    let r = Record::new("t", r#"{"s": "abcd"}"#, ());
    let limits = |n| RuleLimits {
        max_output_bytes: n,
    };
    let rule = Rule::compile_with("SELECT s AS v FROM '#'", limits(12)).unwrap();
    assert_eq!(
        rule.apply(&r, &EvalContext::new(0)).unwrap(),
        Some(json!({"v": "abcd"}))
    );
    let rule = Rule::compile_with("SELECT s AS v FROM '#'", limits(11)).unwrap();
    assert_eq!(
        rule.apply(&r, &EvalContext::new(0)),
        Err(EvalError::OutputTooLarge { limit: 11 })
    );
    // SELECT * of a payload larger than the bound.
    let rule = Rule::compile_with("SELECT * FROM '#'", limits(12)).unwrap();
    assert_eq!(
        rule.apply(&r, &EvalContext::new(0)).unwrap(),
        Some(json!({"s": "abcd"}))
    );
    let rule = Rule::compile_with("SELECT * FROM '#'", limits(11)).unwrap();
    assert!(rule.apply(&r, &EvalContext::new(0)).is_err());
    // Intermediate strings are bounded too: a WHERE-only blow-up fails before allocating.
    let rule = Rule::compile_with(
        "SELECT 1 AS v FROM '#' WHERE length(replace(replace(s, 'a', s || s || s), 'b', s || s || s)) > 0",
        limits(20),
    )
    .unwrap();
    assert_eq!(
        rule.apply(&r, &EvalContext::new(0)),
        Err(EvalError::OutputTooLarge { limit: 20 })
    );
    for sql in [
        "SELECT 1 AS v FROM '#' WHERE length(concat(s, s, s, s, s, s)) > 0",
        "SELECT 1 AS v FROM '#' WHERE length(s || s || s || s || s || s) > 0",
        "SELECT 1 AS v FROM '#' WHERE length(encode(s || s || s, 'base64')) > 0",
        "SELECT 1 AS v FROM '#' WHERE length(upper(s || s || s || s || s || s)) > 0",
        "SELECT 1 AS v FROM '#' WHERE length(cast(payload AS String)) > 0",
        "SELECT 1 AS v FROM '#' WHERE length(encode(*, 'base64')) > 0",
    ] {
        let rule = Rule::compile_with(sql, limits(10)).unwrap();
        assert_eq!(
            rule.apply(&r, &EvalContext::new(0)),
            Err(EvalError::OutputTooLarge { limit: 10 }),
            "{sql}"
        );
    }
    assert!(matches!(
        Rule::compile_with("SELECT 1 FROM '#'", limits(0)),
        Err(RuleError::BadLimit { .. })
    ));
    assert!(Rule::compile_with("SELECT 1 FROM '#'", limits(MAX_OUTPUT_BYTES_CEILING)).is_ok());
    assert!(matches!(
        Rule::compile_with("SELECT 1 FROM '#'", limits(MAX_OUTPUT_BYTES_CEILING + 1)),
        Err(RuleError::BadLimit { .. })
    ));
}

#[test]
fn payload_too_deep_is_a_per_record_error() {
    let rule = Rule::compile("SELECT a FROM '#'").unwrap();
    let deep = format!(
        "{}1{}",
        "[".repeat(crate::record::MAX_JSON_DEPTH + 1),
        "]".repeat(crate::record::MAX_JSON_DEPTH + 1)
    );
    let r = Record::new("t", deep, ());
    assert!(matches!(
        rule.apply(&r, &EvalContext::new(0)),
        Err(EvalError::Payload(_))
    ));
    // The rule still works for the next record.
    let r = Record::new("t", r#"{"a": 1}"#, ());
    assert_eq!(
        rule.apply(&r, &EvalContext::new(0)).unwrap(),
        Some(json!({"a": 1}))
    );
}

#[test]
fn emqx_aliases() {
    assert_eq!(ev("is_null(z)"), Some(json!(true)));
    assert_eq!(ev("is_not_null(z)"), Some(json!(false)));
    assert_eq!(ev("is_not_null(missing)"), Some(json!(false)));
    assert_eq!(ev("is_not_null(n)"), Some(json!(true)));
    assert_eq!(ev("strlen(s)"), Some(json!(5)));
    assert_eq!(ev("base64_encode(s)"), Some(json!("SGVsbG8=")));
    assert_eq!(ev("base64_decode('SGVsbG8=')"), Some(json!("Hello")));
    assert_eq!(ev("length(uuid_v4())"), Some(json!(36)));
    assert_eq!(ev("str(n)"), Some(json!("7")));
    assert_eq!(ev("int(num)"), Some(json!(12)));
    assert_eq!(ev("float(n)"), Some(json!(7.0)));
    assert_eq!(ev("bool(t)"), Some(json!(true)));
    assert!(matches!(
        err("SELECT int(1, 2) FROM '#'"),
        RuleError::Arity { .. }
    ));
    assert!(matches!(
        err("SELECT base64_encode() FROM '#'"),
        RuleError::Arity { .. }
    ));
}

#[test]
fn is_undefined() {
    assert_eq!(ev("missing IS UNDEFINED"), Some(json!(true)));
    assert_eq!(ev("z IS UNDEFINED"), Some(json!(false)));
    assert_eq!(ev("missing IS NOT UNDEFINED"), Some(json!(false)));
    assert_eq!(ev("n is not undefined"), Some(json!(true)));
    // `undefined` elsewhere is a field name.
    let rule =
        Rule::compile("SELECT undefined AS u FROM '#' WHERE undefined IS NOT UNDEFINED").unwrap();
    let r = Record::new("t", r#"{"undefined": 1}"#, ());
    assert_eq!(
        rule.apply(&r, &EvalContext::new(0)).unwrap(),
        Some(json!({"u": 1}))
    );
    let r = Record::new("t", r#"{}"#, ());
    assert_eq!(rule.apply(&r, &EvalContext::new(0)).unwrap(), None);
}

#[test]
fn rules_and_records_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Rule>();
    send_sync::<Record<u64>>();
    send_sync::<RuleError>();
    send_sync::<EvalError>();
}
