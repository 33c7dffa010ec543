//! Running a configured program (the shadow's `apply` / `report`, the telemetry samplers):
//! stdin given or `/dev/null`, stdout read up to a bound, a timeout after which it is killed,
//! exit 0 required.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs `argv` with `stdin` (none: `/dev/null`), for at most `timeout_secs` (then it is
/// killed); its stdout (at most `max_output` bytes) when it exits 0.
pub(super) async fn run_program(
    argv: &[String],
    stdin: Option<Vec<u8>>,
    timeout_secs: u64,
    max_output: usize,
) -> Result<Vec<u8>> {
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("program {:?}", argv[0]))?;
    let mut input = child.stdin.take();
    let feed = async move {
        if let (Some(pipe), Some(data)) = (input.as_mut(), stdin) {
            // A program that does not read its stdin is fine.
            let _ = pipe.write_all(&data).await;
        }
        drop(input);
    };
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut out = Vec::new();
    let read = async {
        (&mut stdout)
            .take(max_output as u64 + 1)
            .read_to_end(&mut out)
            .await?;
        child.wait().await
    };
    let run = async {
        let ((), status) = tokio::join!(feed, read);
        status
    };
    let status = tokio::time::timeout(Duration::from_secs(timeout_secs), run)
        .await
        .map_err(|_| anyhow!("timed out after {timeout_secs} s"))??;
    if out.len() > max_output {
        bail!("output larger than {max_output} bytes");
    }
    if !status.success() {
        bail!("exited with {status}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 16 * 1024;

    #[tokio::test]
    async fn programs_are_bounded() {
        let sh = |script: &str| vec!["sh".to_string(), "-c".to_string(), script.to_string()];
        let out = run_program(&sh("cat"), Some(b"{\"a\":1}".to_vec()), 5, LIMIT)
            .await
            .unwrap();
        assert_eq!(out, b"{\"a\":1}");
        let e = run_program(&sh("exit 3"), None, 5, LIMIT)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exited"), "{e}");
        let e = run_program(&sh("sleep 5"), None, 1, LIMIT)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
        let big = format!("head -c {} /dev/zero", LIMIT + 1);
        let e = run_program(&sh(&big), None, 5, LIMIT).await.unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        let exact = format!("head -c {LIMIT} /dev/zero");
        assert_eq!(
            run_program(&sh(&exact), None, 5, LIMIT)
                .await
                .unwrap()
                .len(),
            LIMIT
        );
    }
}
