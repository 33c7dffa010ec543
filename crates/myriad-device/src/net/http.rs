//! Downloads over HTTP: a `GET` of the notification's signed URL (relative to `[mqtt] api`),
//! resumed with `Range` after a broken connection (up to [`DOWNLOAD_ATTEMPTS`] per
//! notification) and after a restart.

use std::io::Read;
use std::time::Duration;

use anyhow::anyhow;

use super::link::{Inbox, Link};
use super::partial::Partial;
use super::{Stop, Wanted};

/// Download attempts per notification (each resumes where the last one broke).
pub(super) const DOWNLOAD_ATTEMPTS: u32 = 5;

/// The HTTP client: no redirects, bounded connect and response waits.
pub(super) fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .max_redirects(0)
        .build()
        .new_agent()
}

/// Why one attempt stopped.
enum Fetch {
    /// The connection or the body broke: resume with a `Range` request.
    Transport(anyhow::Error),
    /// The server refused, the disk failed, or the rollout was canceled: give up.
    Final(Stop),
}

/// Downloads `want` into `part` from `api`.
pub(super) fn download(
    http: &ureq::Agent,
    link: &Link,
    inbox: &mut Inbox,
    api: &str,
    want: &Wanted<'_>,
    part: &mut Partial,
) -> Result<(), Stop> {
    if !want.url.starts_with('/') {
        return Err(Stop::Failed(anyhow!(
            "url: not a path relative to the API base"
        )));
    }
    let full = format!("{}{}", api.trim_end_matches('/'), want.url);
    let mut attempt = 1;
    loop {
        match fetch(http, link, inbox, &full, want.rollout, part) {
            Ok(()) => return Ok(()),
            Err(Fetch::Transport(e)) if attempt < DOWNLOAD_ATTEMPTS => {
                tracing::warn!(error = %format!("{e:#}"), attempt, have = part.have, "download broken, resuming");
                std::thread::sleep(Duration::from_millis(500 * u64::from(attempt)));
                attempt += 1;
            }
            Err(Fetch::Transport(e)) => return Err(Stop::Failed(e)),
            Err(Fetch::Final(stop)) => return Err(stop),
        }
    }
}

/// One GET from `part.have` (a `Range` request past 0), appending to the file.
fn fetch(
    http: &ureq::Agent,
    link: &Link,
    inbox: &mut Inbox,
    full: &str,
    rollout: &str,
    part: &mut Partial,
) -> Result<(), Fetch> {
    let disk = |e: anyhow::Error| Fetch::Final(Stop::Failed(e));
    let mut req = http.get(full);
    if part.have > 0 {
        req = req.header("Range", format!("bytes={}-", part.have));
    }
    let resp = req
        .call()
        .map_err(|e| Fetch::Transport(anyhow::Error::new(e).context("GET")))?;
    match resp.status().as_u16() {
        206 if part.have > 0 => {}
        200 => part
            .restart()
            .map_err(|e| disk(anyhow::Error::new(e).context("download file")))?,
        s => return Err(Fetch::Final(Stop::Failed(anyhow!("HTTP status {s}")))),
    }
    let mut body = resp.into_body().into_reader().take(part.total - part.have);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if inbox.canceled(rollout) {
            return Err(Fetch::Final(Stop::Canceled));
        }
        let n = match body.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                part.sync().map_err(disk)?;
                return Err(Fetch::Transport(
                    anyhow::Error::new(e).context("reading the body"),
                ));
            }
        };
        if n == 0 {
            break;
        }
        part.write(link, rollout, &buf[..n]).map_err(disk)?;
    }
    part.sync().map_err(disk)?;
    if !part.complete() {
        return Err(Fetch::Transport(anyhow!(
            "{} of {} bytes received",
            part.have,
            part.total
        )));
    }
    Ok(())
}
