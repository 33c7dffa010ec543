//! How `myriad ctl` fails: an error answer of the API (exit 1), no
//! connection to it (exit 2), or anything else (exit 1).

use std::fmt;

use serde::Deserialize;

/// Exit code of an API error or of a local failure.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code when the API could not be reached.
pub const EXIT_UNREACHABLE: i32 = 2;

/// Why a `ctl` command failed.
#[derive(Debug)]
pub enum CtlError {
    /// The API answered with an error status.
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's message (or, for a body that is not the API's
        /// error document, a short description of it).
        message: String,
    },
    /// The API could not be reached (or the connection broke).
    Unreachable {
        /// The URL of the request.
        url: String,
        /// What went wrong.
        source: ureq::Error,
    },
    /// Anything else: bad arguments, unreadable files, unexpected answers.
    Other(anyhow::Error),
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Unreachable { .. } => EXIT_UNREACHABLE,
            CtlError::Api { .. } | CtlError::Other(_) => EXIT_FAILURE,
        }
    }

    /// The error of an answer with status `status` and body `body`: the
    /// API's `{"status": u16, "message": ".."}`, or else the start of the
    /// body (proxies and crashes answer with other things).
    pub fn from_response(status: u16, body: &str) -> Self {
        #[derive(Deserialize)]
        struct ErrorBody {
            status: Option<u16>,
            message: String,
        }
        match serde_json::from_str::<ErrorBody>(body) {
            Ok(parsed) => CtlError::Api {
                status: parsed.status.unwrap_or(status),
                message: parsed.message,
            },
            Err(_) => CtlError::Api {
                status,
                message: summarize_body(body),
            },
        }
    }
}

/// The first line of a non-API error body, shortened, or a placeholder.
fn summarize_body(body: &str) -> String {
    const MAX: usize = 200;
    let line = body.lines().map(str::trim).find(|l| !l.is_empty());
    match line {
        None => "(no error message)".to_string(),
        Some(line) if line.chars().count() > MAX => {
            format!("{}...", line.chars().take(MAX).collect::<String>())
        }
        Some(line) => line.to_string(),
    }
}

impl fmt::Display for CtlError {
    /// The line printed to standard error, after `error: `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Api { status, message } => write!(f, "{status} {message}"),
            CtlError::Unreachable { url, source } => {
                write!(f, "cannot reach the Myriad API at {url}: {source}")
            }
            CtlError::Other(error) => write!(f, "{error:#}"),
        }
    }
}

impl std::error::Error for CtlError {}

impl From<anyhow::Error> for CtlError {
    fn from(error: anyhow::Error) -> Self {
        CtlError::Other(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_body_is_formatted_as_status_and_message() {
        let error = CtlError::from_response(404, r#"{"status":404,"message":"no device d1"}"#);
        assert_eq!(error.to_string(), "404 no device d1");
        assert_eq!(error.exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn status_in_the_body_wins_and_missing_status_falls_back() {
        let error = CtlError::from_response(400, r#"{"status":409,"message":"exists"}"#);
        assert_eq!(error.to_string(), "409 exists");
        let error = CtlError::from_response(401, r#"{"message":"bad token"}"#);
        assert_eq!(error.to_string(), "401 bad token");
    }

    #[test]
    fn other_bodies_are_summarized() {
        let error = CtlError::from_response(502, "\n<html>Bad Gateway</html>\nmore\n");
        assert_eq!(error.to_string(), "502 <html>Bad Gateway</html>");
        let error = CtlError::from_response(500, "");
        assert_eq!(error.to_string(), "500 (no error message)");
        let long = "x".repeat(500);
        let error = CtlError::from_response(500, &long);
        assert_eq!(error.to_string(), format!("500 {}...", "x".repeat(200)));
    }

    #[test]
    fn unreachable_names_the_url_and_exits_2() {
        let error = CtlError::Unreachable {
            url: "http://127.0.0.1:9/api/v1/devices".into(),
            source: ureq::Error::ConnectionFailed,
        };
        assert_eq!(error.exit_code(), EXIT_UNREACHABLE);
        let text = error.to_string();
        assert!(
            text.starts_with("cannot reach the Myriad API at http://127.0.0.1:9/api/v1/devices: "),
            "{text}"
        );
    }

    #[test]
    fn other_errors_show_their_chain() {
        let error = CtlError::from(anyhow::anyhow!("inner").context("outer"));
        assert_eq!(error.to_string(), "outer: inner");
        assert_eq!(error.exit_code(), EXIT_FAILURE);
    }
}
