//! Downloads over MQTT, for devices without HTTP: one `$ota/{id}/chunk/get` at a time
//! (`{"artifact", "offset", "length"}`), answered on `$ota/{id}/chunk/{artifact}/{offset}`
//! with the bytes or on `$ota/{id}/chunk/rejected`. A missing answer is asked for again after
//! [`CHUNK_TIMEOUT`], `busy` after [`BUSY_PAUSE`]; [`CHUNK_TRIES`] tries in a row without a
//! byte end the download (FAILED), as does any other rejection. A restart resumes from the
//! bytes already in the file.

use std::time::Duration;

use anyhow::anyhow;

use super::link::{ChunkAnswer, Inbox, Link};
use super::partial::Partial;
use super::{Stop, Wanted};

/// How long the agent waits for one chunk.
pub(super) const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a `busy` rejection.
const BUSY_PAUSE: Duration = Duration::from_millis(200);
/// Tries in a row without progress before the download fails.
pub(super) const CHUNK_TRIES: u32 = 20;

/// Downloads `want` (file id `file`) into `part`, `chunk_bytes` at a time.
pub(super) fn download(
    link: &Link,
    inbox: &mut Inbox,
    file: &str,
    chunk_bytes: u32,
    want: &Wanted<'_>,
    part: &mut Partial,
) -> Result<(), Stop> {
    if file.is_empty() {
        return Err(Stop::Failed(anyhow!(
            "the notification names no artifact id to fetch over MQTT"
        )));
    }
    let mut tries = 0;
    inbox.clear_chunks();
    while !part.complete() {
        if inbox.canceled(want.rollout) {
            return Err(Stop::Canceled);
        }
        if tries == CHUNK_TRIES {
            return Err(Stop::Failed(anyhow!(
                "no chunk at offset {} after {CHUNK_TRIES} tries",
                part.have
            )));
        }
        tries += 1;
        let length = u64::from(chunk_bytes).min(part.total - part.have) as u32;
        link.request_chunk(file, part.have, length);
        let Some(answer) = await_answer(inbox, file, part.have) else {
            tracing::warn!(offset = part.have, "no chunk answer, asking again");
            continue;
        };
        match answer {
            ChunkAnswer::Data { bytes, .. } => {
                if bytes.is_empty() || bytes.len() as u64 > u64::from(length) {
                    return Err(Stop::Failed(anyhow!(
                        "chunk at {} of {} bytes, asked for {length}",
                        part.have,
                        bytes.len()
                    )));
                }
                part.write(link, want.rollout, &bytes)
                    .map_err(Stop::Failed)?;
                tries = 0;
            }
            ChunkAnswer::Rejected { message, .. } if message == "busy" => {
                std::thread::sleep(BUSY_PAUSE);
            }
            ChunkAnswer::Rejected { message, .. } => {
                return Err(Stop::Failed(anyhow!("chunk refused: {message}")));
            }
        }
    }
    part.sync().map_err(Stop::Failed)
}

/// The answer for (`file`, `offset`), skipping late answers of earlier requests.
fn await_answer(inbox: &Inbox, file: &str, offset: u64) -> Option<ChunkAnswer> {
    let deadline = std::time::Instant::now() + CHUNK_TIMEOUT;
    loop {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        let answer = inbox.chunk(left)?;
        let (a, o) = match &answer {
            ChunkAnswer::Data {
                artifact, offset, ..
            }
            | ChunkAnswer::Rejected {
                artifact, offset, ..
            } => (artifact.as_str(), *offset),
        };
        // A rejection of a request that did not parse names no artifact.
        if (a == file && o == offset) || a.is_empty() {
            return Some(answer);
        }
    }
}
