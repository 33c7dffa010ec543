//! `serve` on a real socket, and its graceful shutdown.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::Harness;

#[tokio::test]
async fn serves_until_cancelled() {
    let h = Harness::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(myriad_api::serve(
        listener,
        h.state.clone(),
        shutdown.clone(),
    ));

    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("in time")
    .expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("{\"status\":\"ok\"}"), "{response}");

    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops in time")
        .expect("joined");
    assert!(result.is_ok(), "{result:?}");
}

/// Peak resident memory of this process, KiB (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Streams 200,000 JSON lines (about 20 MB, chunked encoding) to the import
/// route over a real socket and prints the rate and the peak memory.
/// `cargo test -p myriad-api --test api -- --ignored --nocapture big_import`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: about 20 MB through the import route"]
async fn big_import_over_tcp() {
    const ROWS: usize = 200_000;
    let h = Harness::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(myriad_api::serve(
        listener,
        h.state.clone(),
        shutdown.clone(),
    ));
    let before = peak_rss_kib();
    let start = std::time::Instant::now();
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let head = format!(
        "POST /api/v1/devices/import?format=jsonl HTTP/1.1\r\nHost: test\r\n\
         Authorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        crate::support::TOKEN
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut sent = 0usize;
    for block in 0..ROWS / 1000 {
        let mut chunk = String::new();
        for i in block * 1000..(block + 1) * 1000 {
            chunk.push_str(&format!(
                "{{\"id\":\"dev-{i:07}\",\"name\":\"Device {i}\",\"groups\":[\"g{}\"],\"attributes\":{{\"site\":\"s{}\"}}}}\n",
                i % 10,
                i % 7
            ));
        }
        sent += chunk.len();
        stream
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await
            .expect("write");
    }
    stream.write_all(b"0\r\n\r\n").await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let elapsed = start.elapsed();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(&format!("\"imported\":{ROWS}")),
        "{response}"
    );
    println!(
        "imported {ROWS} rows ({} MB) in {elapsed:.2?} ({:.0} rows/s); peak RSS {:?} KiB before, {:?} KiB after",
        sent / 1_000_000,
        ROWS as f64 / elapsed.as_secs_f64(),
        before,
        peak_rss_kib()
    );
    shutdown.cancel();
    let _ = server.await;
}
