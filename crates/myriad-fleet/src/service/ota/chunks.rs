//! Downloads over MQTT, for devices without HTTP: the device asks for one chunk at a time and
//! gets it as the raw payload of a message whose topic names it.
//!
//! - request, device -> platform: `$ota/{id}/chunk/get` with
//!   `{"artifact": "a…", "offset": n, "length": n}` (`length` 1..=[`MAX_CHUNK_BYTES`]; pick
//!   it below the connection's Maximum Packet Size);
//! - answer, platform -> device (QoS 1): `$ota/{id}/chunk/{artifact}/{offset}` with the bytes
//!   (shorter than asked at the end of the image), or `$ota/{id}/chunk/rejected` with
//!   `{"artifact", "offset", "message"}`.
//!
//! A device may fetch only the artifact of a rollout it has been notified of and not finished.
//! At most [`CHUNK_READS`] chunks are read and sent at once over all devices; a request beyond
//! that is rejected with `busy` (ask again a little later). Chunks count against the rollout's
//! bandwidth cap like HTTP downloads.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use myriad_mqtt::PacketProperties;
use serde::Deserialize;
use serde_json::json;

use super::OtaService;
use super::throttle::Throttle;

/// Largest chunk a device may ask for (bytes).
pub const MAX_CHUNK_BYTES: u32 = 64 * 1024;
/// Chunks read and sent at once, over all devices.
pub const CHUNK_READS: usize = 8;
/// Largest chunk request payload (bytes).
const MAX_REQUEST_BYTES: usize = 512;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunkRequest {
    artifact: String,
    offset: u64,
    length: u32,
}

impl OtaService {
    /// Answers one `$ota/{device}/chunk/get` request (the read and the send run in a task of
    /// their own, bounded by [`CHUNK_READS`]).
    pub(super) async fn serve_chunk(self: &Arc<Self>, device: &str, payload: &[u8]) {
        let request = match parse(payload) {
            Ok(request) => request,
            Err(message) => return self.reject_chunk(device, "", 0, message).await,
        };
        let size = match self.fetchable(device, &request.artifact) {
            Some(size) => size,
            None => {
                let message = "no update of yours uses this artifact";
                return self
                    .reject_chunk(device, &request.artifact, request.offset, message)
                    .await;
            }
        };
        if request.offset >= size {
            return self
                .reject_chunk(
                    device,
                    &request.artifact,
                    request.offset,
                    "offset past the image",
                )
                .await;
        }
        let Ok(permit) = self.chunk_reads.clone().try_acquire_owned() else {
            return self
                .reject_chunk(device, &request.artifact, request.offset, "busy")
                .await;
        };
        let length = u64::from(request.length).min(size - request.offset);
        let throttle = self.throttle_for(device, &request.artifact);
        let service = self.clone();
        let device = device.to_owned();
        tokio::spawn(async move {
            let _permit = permit;
            let path = service.file_path(&request.artifact);
            let offset = request.offset;
            let read = tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&path)?;
                let mut buffer = vec![0u8; length as usize];
                file.read_exact_at(&mut buffer, offset)?;
                Ok::<_, std::io::Error>(buffer)
            })
            .await;
            let bytes = match read {
                Ok(Ok(bytes)) => bytes,
                _ => {
                    return service
                        .reject_chunk(
                            &device,
                            &request.artifact,
                            offset,
                            "cannot read the artifact",
                        )
                        .await;
                }
            };
            if let Some(throttle) = throttle {
                tokio::time::sleep(throttle.reserve(length)).await;
            }
            let topic = format!("$ota/{device}/chunk/{}/{offset}", request.artifact);
            let _ = service
                .broker
                .publish_at_least_once(topic.into(), Bytes::from(bytes), PacketProperties::new())
                .await;
        });
    }

    async fn reject_chunk(&self, device: &str, artifact: &str, offset: u64, message: &str) {
        metrics::counter!("myriad_ota_chunks_rejected_total").increment(1);
        let body = json!({"artifact": artifact, "offset": offset, "message": message});
        let topic = format!("$ota/{device}/chunk/rejected");
        let _ = self
            .broker
            .publish_at_least_once(
                topic.into(),
                Bytes::from(body.to_string()),
                PacketProperties::new(),
            )
            .await;
    }

    /// The size of `artifact` (an artifact or delta id) if `device` is working on an update that
    /// offers it.
    fn fetchable(&self, device: &str, artifact: &str) -> Option<u64> {
        self.with_device_entry(device, artifact, |entry| entry.file_size(artifact))
    }

    /// The bandwidth cap of the rollout through which `device` fetches `artifact`.
    pub(super) fn throttle_for(&self, device: &str, artifact: &str) -> Option<Arc<Throttle>> {
        self.with_device_entry(device, artifact, |entry| entry.throttle.clone())
            .flatten()
    }
}

fn parse(payload: &[u8]) -> Result<ChunkRequest, &'static str> {
    if payload.len() > MAX_REQUEST_BYTES {
        return Err("request too large");
    }
    let request: ChunkRequest =
        serde_json::from_slice(payload).map_err(|_| "request is not {artifact, offset, length}")?;
    if request.length == 0 || request.length > MAX_CHUNK_BYTES {
        return Err("length: 1..=65536");
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_bounded() {
        assert!(parse(br#"{"artifact":"a1","offset":0,"length":65536}"#).is_ok());
        for bad in [
            &br#"{"artifact":"a1","offset":0,"length":65537}"#[..],
            br#"{"artifact":"a1","offset":0,"length":0}"#,
            br#"{"artifact":"a1","offset":-1,"length":5}"#,
            br#"{"artifact":"a1","offset":0,"length":5,"x":1}"#,
            b"\xff",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let long = format!(
            r#"{{"artifact":"{}","offset":0,"length":5}}"#,
            "a".repeat(600)
        );
        assert_eq!(parse(long.as_bytes()).err(), Some("request too large"));
    }
}
