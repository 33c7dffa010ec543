//! `myriad ctl`: the operator's command line, a thin client of the
//! platform's HTTP API.
//!
//! - [`args`]: the commands and their options;
//! - [`request`]: each command as an [`request::ApiRequest`], built
//!   without I/O;
//! - [`client`]: sends requests (blocking, `ureq`);
//! - [`output`], [`lists`], [`table`]: what is printed;
//! - [`token`], [`password`]: credentials of the operator and of devices;
//! - [`users`]: operator users and API tokens, the audit log;
//! - [`ota`]: `ctl ota keygen`, development signing keys (offline);
//! - [`error`]: error lines and exit codes (0 ok, 1 API or local error,
//!   2 API unreachable).

mod args;
mod certs;
mod client;
mod commands;
mod debug;
mod encode;
mod error;
mod lists;
mod ota;
mod output;
mod password;
mod pipelines;
mod registry_certs;
mod request;
mod table;
mod telemetry;
mod token;
mod users;

use std::io::{self, Write};
use std::path::PathBuf;

use args::{ApiCommand, CtlCommand};
use client::Client;
use error::CtlError;
use output::OutputFormat;
use request::ApiRequest;

/// Options and command of `myriad ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// Where the API is and how to talk to it.
    #[command(flatten)]
    pub global: GlobalOptions,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Options of every `ctl` command.
#[derive(Debug, clap::Args)]
pub struct GlobalOptions {
    /// Base URL of the platform's HTTP API.
    #[arg(
        long,
        global = true,
        env = "MYRIAD_API",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api: String,
    /// API token (sent as `Authorization: Bearer`); if absent, read from
    /// the token file.
    #[arg(long, global = true, env = "MYRIAD_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA(s) an `https://` API's certificate must chain to
    /// (for instance `ca.pem` of `myriad ctl certs dev-ca`); without it the
    /// public web PKI roots are used.
    #[arg(long, global = true, env = "MYRIAD_API_CACERT")]
    pub cacert: Option<PathBuf>,
    /// File holding the API token [default: myriad-data/api-token].
    #[arg(long, global = true, env = "MYRIAD_API_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Output format [default: table for lists, pretty JSON for single
    /// objects]; `json` prints the server's JSON as received.
    #[arg(long, global = true, value_enum)]
    pub output: Option<OutputFormat>,
}

/// Runs a `ctl` command. Exits the process with 1 on an API or local
/// error and 2 when the API cannot be reached, after printing
/// `error: ...` to standard error.
pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let code = match execute(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    };
    if code != 0 {
        let _ = io::stdout().flush();
        std::process::exit(code);
    }
    Ok(())
}

/// Runs the command; its exit code when it did not fail outright.
fn execute(args: CtlArgs) -> Result<i32, CtlError> {
    let mut command = match args.command {
        CtlCommand::HashPassword(password) => {
            let password = password::password_of(&password, io::stdin().lock())?;
            print_out(&format!("{}\n", password::hash(&password)?))?;
            return Ok(0);
        }
        CtlCommand::Certs(command) => {
            print_out(&certs::run(&command)?)?;
            return Ok(0);
        }
        CtlCommand::Ota(command) => {
            if let Some(written) = ota::run(&command) {
                print_out(&written?)?;
                return Ok(0);
            }
            let Some(request) = ota::api_request(&command) else {
                return Ok(0);
            };
            let client = client(&args.global)?;
            let body = client.send(&request?)?;
            let shape = if body.trim().is_empty() {
                output::Shape::NoContent
            } else {
                output::Shape::Object
            };
            let rendered = output::render(shape, args.global.output, &[body])?;
            print_out(&rendered.stdout)?;
            return Ok(0);
        }
        CtlCommand::Api(command) => command,
    };
    password::fill_from_stdin(&mut command, io::stdin().lock())?;
    if let ApiCommand::Users(cmd) = &mut command {
        users::fill_password(cmd, io::stdin().lock())?;
    }
    if let ApiCommand::Telemetry(cmd) = &mut command {
        telemetry::fill_from_stdin(cmd, io::stdin().lock())?;
    }
    let request = request::request(&command)?;
    let client = client(&args.global)?;
    let streamed = match &command {
        ApiCommand::Telemetry(telemetry::TelemetryCommand::Export(_)) => true,
        ApiCommand::Debug(cmd) => cmd.streams(),
        _ => false,
    };
    if streamed {
        let mut stdout = io::stdout().lock();
        match client.stream_to(&request, &mut stdout) {
            Err(CtlError::Other(e))
                if e.chain().any(|c| {
                    c.downcast_ref::<io::Error>()
                        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
                }) => {}
            other => {
                other?;
            }
        }
        stdout.flush().ok();
        return Ok(0);
    }
    let bodies = fetch(&client, request, &command)?;
    if let (Some(columns), [body], None | Some(output::OutputFormat::Table)) = (
        users::columns(&command),
        bodies.as_slice(),
        args.global.output,
    ) {
        print_out(&users::table(columns, body)?)?;
        return Ok(0);
    }
    let rendered = output::render(output::shape(&command), args.global.output, &bodies)?;
    print_out(&rendered.stdout)?;
    for note in &rendered.notes {
        eprintln!("{note}");
    }
    Ok(if rendered.failed { 1 } else { 0 })
}

/// The API client the global options describe.
fn client(global: &GlobalOptions) -> Result<Client, CtlError> {
    let token = token::resolve_token(
        global.token.as_deref(),
        global.token_file.as_deref(),
        |path| std::fs::read_to_string(path),
    )?;
    Ok(match &global.cacert {
        Some(path) => Client::with_ca(&global.api, token, path)?,
        None => Client::new(&global.api, token),
    })
}

/// Sends `request`, and for `--all` the requests of the following pages;
/// the answer bodies in order.
fn fetch(
    client: &Client,
    mut request: ApiRequest,
    command: &ApiCommand,
) -> Result<Vec<String>, CtlError> {
    let mut bodies = vec![client.send(&request)?];
    if !request::follows_all_pages(command) {
        return Ok(bodies);
    }
    let mut after: Option<String> = None;
    while let Some(next) = bodies
        .last()
        .map(|b| output::page_next(b))
        .transpose()?
        .flatten()
    {
        if after.as_deref() == Some(next.as_str()) {
            return Err(
                anyhow::anyhow!("the API returned the same page cursor {next:?} twice").into(),
            );
        }
        request = request.with_param("after", &next);
        bodies.push(client.send(&request)?);
        after = Some(next);
    }
    Ok(bodies)
}

/// Writes to standard output; a closed pipe (`| head`) is not an error.
fn print_out(text: &str) -> Result<(), CtlError> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(anyhow::Error::from(e)
            .context("writing to standard output")
            .into()),
        _ => Ok(()),
    }
}
