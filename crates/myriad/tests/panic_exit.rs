//! A panic in the broker's core ends `myriad serve` promptly with a
//! non-zero exit and the panic in the log, so a supervisor restarts it.
//!
//! The binary built for tests has the broker's `fault-injection` feature
//! (see this crate's dev-dependencies): `MYRIAD_FAULT_CORE_PANIC_TOPIC`
//! names a topic whose PUBLISH makes the core task panic.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_core_panic_ends_the_process_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("myriad.toml");
    std::fs::write(
        &config,
        "[store]\nbackend = \"memory\"\n[api]\nenabled = false\n",
    )
    .expect("config");
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_myriad"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("MYRIAD_FAULT_CORE_PANIC_TOPIC", "fault/boom")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("log"))
        .spawn()
        .expect("spawn myriad serve");
    // Killed by its PID (through the handle) whatever happens below.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Reap(child);
    let mut port = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if let Some(rest) = line.strip_prefix("MQTT listening on ") {
            port = rest
                .rsplit(':')
                .next()
                .and_then(|p| p.trim().parse::<u16>().ok());
            break;
        }
    }
    let port = port.expect("listening line");
    let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // CONNECT (3.1.1, clean session, client id "p"), then CONNACK.
    socket
        .write_all(&[
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 1, b'p',
        ])
        .expect("connect");
    let mut connack = [0u8; 4];
    socket.read_exact(&mut connack).expect("connack");
    assert_eq!(connack[0], 0x20);
    // QoS 0 PUBLISH on fault/boom.
    let topic = b"fault/boom";
    let mut publish = vec![0x30, (2 + topic.len() + 1) as u8, 0, topic.len() as u8];
    publish.extend_from_slice(topic);
    publish.push(b'!');
    socket.write_all(&publish).expect("publish");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still running 10 s after the core panicked"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(!status.success(), "exit status {status}; log:\n{log}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?} to exit",
        started.elapsed()
    );
    assert!(
        log.contains("panic") && log.contains("fault injection"),
        "log:\n{log}"
    );
}
