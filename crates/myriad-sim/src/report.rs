//! The final result line: one JSON object on stdout, printed last.

use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Result, SimError};

/// Re-exported so programs that run `myriad sim` can parse its reports.
pub use serde_json;

/// Fields every report carries.
#[derive(Debug, Clone, Serialize)]
pub struct Header {
    /// Scenario name (`conn`, `fanin`, ...).
    pub scenario: &'static str,
    /// Free-form label given with `--label` (the broker's name in comparisons).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Broker address.
    pub broker: String,
    /// MQTT protocol level (4 = 3.1.1, 5 = 5.0).
    pub mqtt: u8,
    /// Broker PID, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_pid: Option<u32>,
    /// Wall-clock seconds of the whole run.
    pub elapsed_secs: f64,
    /// CPU seconds the simulator itself used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sim_cpu_secs: Option<f64>,
    /// Distinct errors seen (first few, with counts).
    pub errors: Vec<String>,
}

/// Builds the one JSON object of a report: the header's fields, then the
/// scenario's.
pub fn to_json<T: Serialize>(header: &Header, body: &T) -> Result<Value> {
    let mut object = match serde_json::to_value(header) {
        Ok(Value::Object(map)) => map,
        Ok(_) => Map::new(),
        Err(error) => return Err(SimError::Report(error.to_string())),
    };
    match serde_json::to_value(body) {
        Ok(Value::Object(map)) => object.extend(map),
        Ok(Value::Null) => {}
        Ok(other) => {
            object.insert("result".to_owned(), other);
        }
        Err(error) => return Err(SimError::Report(error.to_string())),
    }
    Ok(Value::Object(object))
}

/// Prints the report as the last line on stdout.
pub fn emit<T: Serialize>(header: &Header, body: &T) -> Result<()> {
    let line = to_json(header, body)?.to_string();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|error| SimError::Report(error.to_string()))
}

/// Collects error messages from many tasks, keeping a count per distinct
/// message (at most 16 distinct ones).
#[derive(Debug, Default)]
pub struct ErrorLog {
    entries: Mutex<Vec<(String, u64)>>,
}

impl ErrorLog {
    /// Records one error.
    pub fn add(&self, message: impl ToString) {
        let message = message.to_string();
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if let Some(entry) = entries.iter_mut().find(|(text, _)| *text == message) {
            entry.1 += 1;
        } else if entries.len() < 16 {
            entries.push((message, 1));
        }
    }

    /// `"message (xN)"` lines, most frequent first.
    pub fn summary(&self) -> Vec<String> {
        let Ok(entries) = self.entries.lock() else {
            return Vec::new();
        };
        let mut entries = entries.clone();
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        entries
            .into_iter()
            .map(|(text, count)| format!("{text} (x{count})"))
            .collect()
    }
}

/// Rounds to three decimals for readable reports.
pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Body {
        delivered: u64,
        p99_ms: f64,
    }

    #[test]
    fn header_and_body_are_one_flat_object() {
        let header = Header {
            scenario: "fanin",
            label: Some("mosquitto".to_owned()),
            broker: "127.0.0.1:1883".to_owned(),
            mqtt: 5,
            broker_pid: None,
            elapsed_secs: 1.5,
            sim_cpu_secs: Some(0.25),
            errors: vec![],
        };
        let value = to_json(
            &header,
            &Body {
                delivered: 10,
                p99_ms: 1.25,
            },
        )
        .expect("serializes");
        let text = value.to_string();
        assert!(!text.contains('\n'));
        assert_eq!(value["scenario"], "fanin");
        assert_eq!(value["label"], "mosquitto");
        assert_eq!(value["delivered"], 10);
        assert_eq!(value["p99_ms"], 1.25);
        assert!(value.get("broker_pid").is_none());
    }

    #[test]
    fn error_log_counts_distinct_messages() {
        let log = ErrorLog::default();
        log.add("refused");
        log.add("timeout");
        log.add("refused");
        assert_eq!(log.summary(), vec!["refused (x2)", "timeout (x1)"]);
        for i in 0..40 {
            log.add(i);
        }
        assert_eq!(log.summary().len(), 16);
    }

    #[test]
    fn rounding() {
        assert_eq!(round3(1.23456), 1.235);
    }
}
