//! A request body as a blocking, size-bounded [`BufRead`](std::io::BufRead),
//! for parsers that run on the blocking pool (bulk import).
//!
//! The body is pulled chunk by chunk as the parser reads: memory stays at
//! about one chunk, whatever the body's size.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::{Body, Bytes};
use futures_util::{Stream, StreamExt};
use tokio::runtime::Handle;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::error::ApiError;

/// The body passed the size limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than {limit} bytes")]
pub(crate) struct BodyTooLarge {
    /// The limit, bytes.
    pub limit: u64,
}

/// A body being read: the blocking reader and whether it went past the
/// limit (the reader then fails with an I/O error, which parsers may wrap
/// or rename, so the flag is what tells a 413 from another read error).
pub(crate) struct BoundedBody<R> {
    /// The blocking reader; use it on a blocking thread only.
    pub reader: R,
    /// Set once more than the limit was read.
    pub exceeded: Arc<AtomicBool>,
}

/// The blocking reader type of [`bounded_reader`].
pub(crate) type BlockingBody = SyncIoBridge<StreamReader<ChunkStream, Bytes>>;

/// The body's chunks as I/O results.
pub(crate) type ChunkStream = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Wraps `body` in a blocking `BufRead` that fails after `limit` bytes.
/// Call it on the runtime (it captures the runtime's handle); read from it
/// only on a blocking thread.
pub(crate) fn bounded_reader(
    body: Body,
    limit: u64,
) -> Result<BoundedBody<BlockingBody>, ApiError> {
    let handle = Handle::try_current()
        .map_err(|e| ApiError::Internal(format!("no async runtime to read the body: {e}")))?;
    let exceeded = Arc::new(AtomicBool::new(false));
    let flag = exceeded.clone();
    let mut seen: u64 = 0;
    let chunks = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(io::Error::other)?;
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > limit {
            flag.store(true, Ordering::Relaxed);
            return Err(io::Error::other(BodyTooLarge { limit }));
        }
        Ok(chunk)
    });
    let stream: ChunkStream = Box::pin(chunks);
    Ok(BoundedBody {
        reader: SyncIoBridge::new_with_handle(StreamReader::new(stream), handle),
        exceeded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    async fn read_all(body: Body, limit: u64) -> (io::Result<Vec<String>>, bool) {
        let bounded = bounded_reader(body, limit).expect("runtime");
        let exceeded = bounded.exceeded.clone();
        let lines = tokio::task::spawn_blocking(move || bounded.reader.lines().collect())
            .await
            .expect("joined");
        (lines, exceeded.load(Ordering::Relaxed))
    }

    fn chunked(chunks: &[&'static str]) -> Body {
        let stream = futures_util::stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, io::Error>(Bytes::from_static(c.as_bytes())))
                .collect::<Vec<_>>(),
        );
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn lines_across_chunks() {
        let (lines, exceeded) = read_all(chunked(&["a,b\nc", "d\n", "e"]), 100).await;
        assert_eq!(lines.expect("read"), ["a,b", "cd", "e"]);
        assert!(!exceeded);
    }

    #[tokio::test]
    async fn fails_past_the_limit() {
        let (lines, exceeded) = read_all(chunked(&["0123456789\n", "0123456789\n"]), 15).await;
        let error = lines.expect_err("too large");
        assert!(
            error.to_string().contains("larger than 15 bytes"),
            "{error}"
        );
        assert!(exceeded);
        let (lines, exceeded) = read_all(chunked(&["0123456789\n"]), 11).await;
        assert!(lines.is_ok() && !exceeded);
    }
}
