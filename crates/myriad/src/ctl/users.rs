//! `myriad ctl users ...` (operator accounts: `/api/v1/users`) and
//! `myriad ctl audit` (`GET /api/v1/audit`).

use std::io::{BufRead, IsTerminal, Read, Write};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use serde_json::Value;

use super::encode::percent_encode;
use super::password::read_password;
use super::request::{API_PREFIX, ApiRequest, Method};
use super::table::Table;

/// `ctl users ...`
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List the operator users.
    List,
    /// Create a user; the password comes from `--password-stdin` or a prompt.
    Add {
        /// The user name (1 to 64 of A-Z a-z 0-9 . _ @ -).
        name: String,
        /// `admin`, `operator` or `viewer`.
        #[arg(long)]
        role: String,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Filled in from standard input or the prompt before sending.
        #[arg(skip)]
        password: Option<String>,
    },
    /// Change a user's role.
    SetRole {
        /// The user name.
        name: String,
        /// `admin`, `operator` or `viewer`.
        role: String,
    },
    /// Disable a user (ends its sessions; its tokens are refused).
    Disable {
        /// The user name.
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        /// The user name.
        name: String,
    },
    /// Delete a user with its sessions and tokens.
    Delete {
        /// The user name.
        name: String,
    },
    /// Set a user's password (ends its sessions); from `--password-stdin` or a prompt.
    SetPassword {
        /// The user name.
        name: String,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Filled in from standard input or the prompt before sending.
        #[arg(skip)]
        password: Option<String>,
    },
    /// List a user's API tokens (no secrets).
    Tokens {
        /// The user name.
        name: String,
    },
    /// Create an API token for a user; prints its secret (shown once).
    TokenAdd {
        /// The user name.
        name: String,
        /// The token's name.
        token_name: String,
    },
    /// Revoke a user's API token.
    TokenRevoke {
        /// The user name.
        name: String,
        /// The token's id.
        id: String,
    },
}

/// `ctl audit`: the audit log, newest first.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// At most this many entries (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Only this actor's entries (a user name or `bootstrap`).
    #[arg(long)]
    pub actor: Option<String>,
    /// Entries older than this sequence number (the `next` of a page).
    #[arg(long)]
    pub before: Option<u64>,
}

fn user_path(name: &str) -> String {
    format!("{API_PREFIX}/users/{}", percent_encode(name))
}

/// Whether the command answers 204 No Content.
pub fn no_content(command: &UsersCommand) -> bool {
    matches!(
        command,
        UsersCommand::Delete { .. }
            | UsersCommand::SetPassword { .. }
            | UsersCommand::TokenRevoke { .. }
    )
}

/// Reads the password of `add` / `set-password`: from `input` with
/// `--password-stdin` or when standard input is not a terminal, else from a
/// prompt on the terminal (echo off).
pub fn fill_password(command: &mut UsersCommand, input: impl Read) -> Result<()> {
    let (slot, from_stdin, name) = match command {
        UsersCommand::Add {
            password,
            password_stdin,
            name,
            ..
        }
        | UsersCommand::SetPassword {
            password,
            password_stdin,
            name,
        } => (password, *password_stdin, name.clone()),
        _ => return Ok(()),
    };
    *slot = Some(if from_stdin || !std::io::stdin().is_terminal() {
        read_password(input)?
    } else {
        prompt(&format!("Password for {name}: "))?
    });
    Ok(())
}

/// Asks for a password on the terminal with echo turned off (`stty`).
fn prompt(question: &str) -> Result<String> {
    let mut stderr = std::io::stderr();
    write!(stderr, "{question}")?;
    stderr.flush()?;
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
    };
    let _ = stty("-echo");
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    let _ = stty("echo");
    writeln!(stderr)?;
    read.context("reading the password")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

/// The request of a `users` command (passwords already filled in).
pub fn request(command: &UsersCommand) -> Result<ApiRequest> {
    let password = |p: &Option<String>| {
        p.clone()
            .context("the password was not read (internal error)")
    };
    Ok(match command {
        UsersCommand::List => {
            ApiRequest::new(Method::Get, format!("{API_PREFIX}/users")).param("limit", Some(1000))
        }
        UsersCommand::Add {
            name,
            role,
            password: p,
            ..
        } => ApiRequest::new(Method::Post, format!("{API_PREFIX}/users")).json(json!({
            "username": name, "role": role, "password": password(p)?,
        })),
        UsersCommand::SetRole { name, role } => {
            ApiRequest::new(Method::Patch, user_path(name)).json(json!({ "role": role }))
        }
        UsersCommand::Disable { name } => {
            ApiRequest::new(Method::Patch, user_path(name)).json(json!({ "disabled": true }))
        }
        UsersCommand::Enable { name } => {
            ApiRequest::new(Method::Patch, user_path(name)).json(json!({ "disabled": false }))
        }
        UsersCommand::Delete { name } => ApiRequest::new(Method::Delete, user_path(name)),
        UsersCommand::SetPassword {
            name, password: p, ..
        } => ApiRequest::new(Method::Put, format!("{}/password", user_path(name)))
            .json(json!({ "password": password(p)? })),
        UsersCommand::Tokens { name } => {
            ApiRequest::new(Method::Get, format!("{}/tokens", user_path(name)))
        }
        UsersCommand::TokenAdd { name, token_name } => {
            ApiRequest::new(Method::Post, format!("{}/tokens", user_path(name)))
                .json(json!({ "name": token_name }))
        }
        UsersCommand::TokenRevoke { name, id } => ApiRequest::new(
            Method::Delete,
            format!("{}/tokens/{}", user_path(name), percent_encode(id)),
        ),
    })
}

/// The columns of the list commands' tables: `users list`, `users tokens`, `audit`.
pub fn columns(command: &super::args::ApiCommand) -> Option<&'static [&'static str]> {
    use super::args::ApiCommand;
    match command {
        ApiCommand::Users(UsersCommand::List) => Some(&[
            "username",
            "role",
            "disabled",
            "created_ms",
            "last_login_ms",
        ]),
        ApiCommand::Users(UsersCommand::Tokens { .. }) => {
            Some(&["id", "name", "created_ms", "last_used_ms"])
        }
        ApiCommand::Audit(_) => Some(&[
            "seq", "at_ms", "actor", "via", "role", "method", "path", "status", "remote",
        ]),
        _ => None,
    }
}

/// `{"items":[..]}` as a table of `columns`.
pub fn table(columns: &[&str], body: &str) -> Result<String> {
    let list: Value = serde_json::from_str(body).context("the API answered with invalid JSON")?;
    let mut table = Table::new(columns);
    for item in list["items"].as_array().into_iter().flatten() {
        table.row(
            columns
                .iter()
                .map(|column| match &item[*column] {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        );
    }
    Ok(table.render())
}

/// The request of `ctl audit`.
pub fn audit_request(args: &AuditArgs) -> ApiRequest {
    ApiRequest::new(Method::Get, format!("{API_PREFIX}/audit"))
        .param("limit", Some(args.limit))
        .param("actor", args.actor.as_ref())
        .param("before", args.before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::request::ApiBody;

    #[test]
    fn list_tables() {
        let out = table(
            &["username", "role", "last_login_ms"],
            r#"{"items":[{"username":"al","role":"admin","last_login_ms":null}],"next":null}"#,
        )
        .unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[1].contains("al") && lines[1].contains("admin"),
            "{out}"
        );
    }

    #[test]
    fn requests() {
        let mut add = UsersCommand::Add {
            name: "a b".into(),
            role: "viewer".into(),
            password_stdin: true,
            password: None,
        };
        fill_password(&mut add, "pw-12345678\n".as_bytes()).unwrap();
        let r = request(&add).unwrap();
        assert_eq!((r.method, r.path.as_str()), (Method::Post, "/api/v1/users"));
        assert_eq!(
            r.body,
            ApiBody::Json(json!({"username": "a b", "role": "viewer", "password": "pw-12345678"}))
        );
        let r = request(&UsersCommand::TokenRevoke {
            name: "a b".into(),
            id: "x/y".into(),
        })
        .unwrap();
        assert_eq!(r.path, "/api/v1/users/a%20b/tokens/x%2Fy");
        let r = audit_request(&AuditArgs {
            limit: 5,
            actor: Some("bob".into()),
            before: None,
        });
        assert_eq!(
            r.query,
            vec![("limit".into(), "5".into()), ("actor".into(), "bob".into())]
        );
    }
}
