//! Topic templates of the MQTT republish sink (`alerts/${device}`) and subject templates of
//! the NATS sink (`readings.${device}`), where `${name}` is replaced by the top-level field
//! `name` of the rule's output. One parser; the [`Syntax`] says which characters the
//! literal text and the rendered name may hold.

use serde_json::Value;
use thiserror::Error;

/// The longest template, and the longest topic it may render, in bytes.
pub const MAX_TOPIC_BYTES: usize = 4096;
/// The most `${field}` placeholders in one template.
pub const MAX_PLACEHOLDERS: usize = 16;
/// The longest field name in a placeholder, in bytes.
pub const MAX_FIELD_BYTES: usize = 64;

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    /// Empty, or longer than [`MAX_TOPIC_BYTES`].
    #[error("the topic template must be 1 ..= {MAX_TOPIC_BYTES} bytes")]
    Length,
    /// `${` without `}`, or a field name not `[A-Za-z0-9_]{1,64}`.
    #[error("bad placeholder at byte {0}: use ${{field}} with field [A-Za-z0-9_]{{1,64}}")]
    Placeholder(usize),
    /// More than [`MAX_PLACEHOLDERS`] placeholders.
    #[error("more than {MAX_PLACEHOLDERS} placeholders")]
    TooManyPlaceholders,
    /// The literal text holds `+`, `#` or NUL, or the template starts with `$`.
    #[error("a topic name may not contain '+', '#' or NUL, nor start with '$'")]
    Character,
    /// The literal text of a NATS subject holds `*`, `>`, whitespace or NUL, an empty token,
    /// or the template starts with `$`.
    #[error(
        "a NATS subject may not contain '*', '>', whitespace, NUL or an empty token, nor start with '$'"
    )]
    SubjectCharacter,
}

/// What a template renders: an MQTT topic name or a NATS subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// An MQTT topic name: no `+`, `#`, NUL, no leading `$`.
    Mqtt,
    /// A NATS subject: dot-separated non-empty tokens without `*`, `>`, whitespace or NUL,
    /// no leading `$` (the server's own `$JS`, `$SYS` subjects).
    Nats,
}

impl Syntax {
    /// Whether `s` (literal text or a whole rendered name) holds a character this syntax
    /// forbids.
    fn bad_chars(self, s: &str) -> bool {
        match self {
            Syntax::Mqtt => s.contains(['+', '#', '\0']),
            Syntax::Nats => {
                s.contains(|c: char| c == '*' || c == '>' || c == '\0' || c.is_whitespace())
            }
        }
    }

    /// Whether a whole rendered name is valid.
    fn valid_name(self, name: &str) -> bool {
        !name.is_empty()
            && !name.starts_with('$')
            && !self.bad_chars(name)
            && (self == Syntax::Mqtt || name.split('.').all(|token| !token.is_empty()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(String),
}

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    text: String,
    parts: Vec<Part>,
    syntax: Syntax,
}

impl TopicTemplate {
    /// Parses `text` as an MQTT topic template.
    pub fn parse(text: &str) -> Result<TopicTemplate, TemplateError> {
        TopicTemplate::parse_as(text, Syntax::Mqtt)
    }

    /// Parses `text` as a NATS subject template (`readings.${device}`).
    pub fn parse_subject(text: &str) -> Result<TopicTemplate, TemplateError> {
        TopicTemplate::parse_as(text, Syntax::Nats)
    }

    /// Parses `text` as a template of `syntax`.
    pub fn parse_as(text: &str, syntax: Syntax) -> Result<TopicTemplate, TemplateError> {
        let character = match syntax {
            Syntax::Mqtt => TemplateError::Character,
            Syntax::Nats => TemplateError::SubjectCharacter,
        };
        if text.is_empty() || text.len() > MAX_TOPIC_BYTES {
            return Err(TemplateError::Length);
        }
        if text.starts_with('$') && !text.starts_with("${") {
            return Err(character);
        }
        let mut parts = Vec::new();
        let mut rest = text;
        let mut at = 0;
        while let Some(open) = rest.find("${") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find('}')
                .ok_or(TemplateError::Placeholder(at + open))?;
            let name = &after[..close];
            let valid = !name.is_empty()
                && name.len() <= MAX_FIELD_BYTES
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(TemplateError::Placeholder(at + open));
            }
            parts.push(Part::Field(name.to_string()));
            if parts.iter().filter(|p| matches!(p, Part::Field(_))).count() > MAX_PLACEHOLDERS {
                return Err(TemplateError::TooManyPlaceholders);
            }
            let consumed = open + 2 + close + 1;
            at += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        if parts
            .iter()
            .any(|p| matches!(p, Part::Literal(l) if syntax.bad_chars(l)))
        {
            return Err(character);
        }
        if syntax == Syntax::Nats
            && (text.starts_with('.') || text.ends_with('.') || text.contains(".."))
        {
            return Err(character);
        }
        Ok(TopicTemplate {
            text: text.to_string(),
            parts,
            syntax,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The topic for `output` (a rule's output object), or why there is none: a field
    /// missing or not a string, number or boolean, or a rendered topic that is not a valid
    /// topic name (empty, too long, `+`, `#`, NUL, a leading `$`; for a NATS subject `*`,
    /// `>`, whitespace or an empty token).
    pub fn render(&self, output: &Value) -> Result<String, String> {
        let mut topic = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => topic.push_str(text),
                Part::Field(name) => match output.get(name) {
                    Some(Value::String(s)) => topic.push_str(s),
                    Some(Value::Number(n)) => topic.push_str(&n.to_string()),
                    Some(Value::Bool(b)) => topic.push_str(if *b { "true" } else { "false" }),
                    Some(_) => return Err(format!("topic field {name} is not a scalar")),
                    None => return Err(format!("topic field {name} is missing")),
                },
            }
            if topic.len() > MAX_TOPIC_BYTES {
                return Err(format!("topic longer than {MAX_TOPIC_BYTES} bytes"));
            }
        }
        if !self.syntax.valid_name(&topic) {
            return match self.syntax {
                Syntax::Mqtt => Err(format!("{topic:?} is not a valid topic name")),
                Syntax::Nats => Err(format!("{topic:?} is not a valid NATS subject")),
            };
        }
        Ok(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_fields() {
        let t = TopicTemplate::parse("alerts/${device}/${n}").unwrap();
        assert_eq!(
            t.render(&json!({"device": "d1", "n": 3})).unwrap(),
            "alerts/d1/3"
        );
        assert!(
            t.render(&json!({"device": "d1"}))
                .unwrap_err()
                .contains("n is missing")
        );
        assert!(t.render(&json!({"device": "+", "n": 1})).is_err());
        assert!(t.render(&json!({"device": {}, "n": 1})).is_err());
    }

    #[test]
    fn nats_subjects() {
        let t = TopicTemplate::parse_subject("readings.${device}").unwrap();
        assert_eq!(t.render(&json!({"device": "d1"})).unwrap(), "readings.d1");
        assert!(t.render(&json!({"device": "a b"})).is_err());
        assert!(t.render(&json!({"device": "*"})).is_err());
        assert!(t.render(&json!({"device": ""})).is_err());
        // MQTT's wildcards are ordinary characters in a subject, and the other way round.
        assert_eq!(t.render(&json!({"device": "a+b"})).unwrap(), "readings.a+b");
        assert!(TopicTemplate::parse("a/*/>").is_ok());
        for bad in ["a.*", "a.>", "a b", "a..b", ".a", "a.", "$JS.API.x"] {
            assert_eq!(
                TopicTemplate::parse_subject(bad),
                Err(TemplateError::SubjectCharacter),
                "{bad}"
            );
        }
        assert_eq!(
            TopicTemplate::parse_subject(&"a".repeat(MAX_TOPIC_BYTES + 1)),
            Err(TemplateError::Length)
        );
    }

    #[test]
    fn refuses_bad_templates() {
        assert_eq!(TopicTemplate::parse(""), Err(TemplateError::Length));
        assert_eq!(
            TopicTemplate::parse(&"a".repeat(MAX_TOPIC_BYTES + 1)),
            Err(TemplateError::Length)
        );
        assert!(TopicTemplate::parse(&"a".repeat(MAX_TOPIC_BYTES)).is_ok());
        assert_eq!(
            TopicTemplate::parse("a/${x"),
            Err(TemplateError::Placeholder(2))
        );
        assert_eq!(
            TopicTemplate::parse("a/${}"),
            Err(TemplateError::Placeholder(2))
        );
        assert_eq!(TopicTemplate::parse("a/+"), Err(TemplateError::Character));
        assert_eq!(
            TopicTemplate::parse("$SYS/x"),
            Err(TemplateError::Character)
        );
        let many = "${a}".repeat(MAX_PLACEHOLDERS);
        assert!(TopicTemplate::parse(&many).is_ok());
        assert_eq!(
            TopicTemplate::parse(&format!("{many}${{a}}")),
            Err(TemplateError::TooManyPlaceholders)
        );
    }
}
