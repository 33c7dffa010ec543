//! The self-test run after the trial boot: a configured command (argv) with a timeout; exit
//! status 0 passes. Process spawning sits behind [`Runner`] so tests can inject verdicts.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Most arguments in the self-test command (the program included).
pub const MAX_SELF_TEST_ARGS: usize = 64;
/// Longest single argument (bytes).
pub const MAX_SELF_TEST_ARG_BYTES: usize = 4096;
/// Longest self-test timeout.
pub const MAX_SELF_TEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// The configured self-test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfTest {
    argv: Vec<String>,
    timeout: Duration,
}

/// A self-test configuration over a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelfTestConfigError {
    /// More than [`MAX_SELF_TEST_ARGS`] arguments.
    #[error("self_test: {0} arguments, at most {MAX_SELF_TEST_ARGS}")]
    TooManyArgs(usize),
    /// An argument longer than [`MAX_SELF_TEST_ARG_BYTES`].
    #[error("self_test: argument {0} longer than {MAX_SELF_TEST_ARG_BYTES} bytes")]
    ArgTooLong(usize),
    /// A timeout of zero or over [`MAX_SELF_TEST_TIMEOUT`].
    #[error("self_test_timeout: must be 1 ms ..= {} s", MAX_SELF_TEST_TIMEOUT.as_secs())]
    Timeout,
}

impl SelfTest {
    /// A self-test running `argv` (empty: no self-test, every trial passes) for at most
    /// `timeout`.
    pub fn new(argv: Vec<String>, timeout: Duration) -> Result<SelfTest, SelfTestConfigError> {
        if argv.len() > MAX_SELF_TEST_ARGS {
            return Err(SelfTestConfigError::TooManyArgs(argv.len()));
        }
        if let Some(i) = argv.iter().position(|a| a.len() > MAX_SELF_TEST_ARG_BYTES) {
            return Err(SelfTestConfigError::ArgTooLong(i));
        }
        if timeout.is_zero() || timeout > MAX_SELF_TEST_TIMEOUT {
            return Err(SelfTestConfigError::Timeout);
        }
        Ok(SelfTest { argv, timeout })
    }

    /// The command.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The self-test's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Exit status 0 (or no self-test configured).
    Passed,
    /// Anything else, with the reason (exit status, signal, timeout, spawn error).
    Failed(String),
}

/// Runs a self-test command.
pub trait Runner {
    /// Runs `argv` for at most `timeout` and judges it.
    fn run(&self, argv: &[String], timeout: Duration) -> Verdict;
}

/// Runs the command as a child process (stdin, stdout and stderr to /dev/null), polling it
/// every 10 ms; past the timeout it is killed and reaped.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessRunner;

impl Runner for ProcessRunner {
    fn run(&self, argv: &[String], timeout: Duration) -> Verdict {
        let Some((program, args)) = argv.split_first() else {
            return Verdict::Passed;
        };
        let mut child = match Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return Verdict::Failed(format!("cannot start {program:?}: {e}")),
        };
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Verdict::Passed,
                Ok(Some(status)) => return Verdict::Failed(format!("{status}")),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Verdict::Failed(format!("timed out after {} ms", timeout.as_millis()));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Verdict::Failed(format!("waiting for {program:?}: {e}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(cmd: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), cmd.into()]
    }

    #[test]
    fn real_processes() {
        let t = Duration::from_secs(10);
        assert_eq!(ProcessRunner.run(&sh("exit 0"), t), Verdict::Passed);
        let Verdict::Failed(why) = ProcessRunner.run(&sh("exit 1"), t) else {
            panic!("exit 1 passed");
        };
        assert!(why.contains('1'), "{why}");
        let start = Instant::now();
        let v = ProcessRunner.run(&sh("sleep 30"), Duration::from_millis(200));
        assert!(
            matches!(v, Verdict::Failed(ref w) if w.contains("timed out")),
            "{v:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(10));
        let v = ProcessRunner.run(&["/nonexistent/self-test".to_string()], t);
        assert!(
            matches!(v, Verdict::Failed(ref w) if w.contains("cannot start")),
            "{v:?}"
        );
        assert_eq!(ProcessRunner.run(&[], t), Verdict::Passed);
    }

    #[test]
    fn limits_one_past() {
        let t = Duration::from_secs(1);
        assert!(SelfTest::new(vec!["x".into(); MAX_SELF_TEST_ARGS], t).is_ok());
        assert_eq!(
            SelfTest::new(vec!["x".into(); MAX_SELF_TEST_ARGS + 1], t),
            Err(SelfTestConfigError::TooManyArgs(MAX_SELF_TEST_ARGS + 1))
        );
        assert!(SelfTest::new(vec!["x".repeat(MAX_SELF_TEST_ARG_BYTES)], t).is_ok());
        assert_eq!(
            SelfTest::new(vec!["x".repeat(MAX_SELF_TEST_ARG_BYTES + 1)], t),
            Err(SelfTestConfigError::ArgTooLong(0))
        );
        assert!(SelfTest::new(vec![], MAX_SELF_TEST_TIMEOUT).is_ok());
        let over = MAX_SELF_TEST_TIMEOUT + Duration::from_millis(1);
        assert_eq!(
            SelfTest::new(vec![], over),
            Err(SelfTestConfigError::Timeout)
        );
        assert_eq!(
            SelfTest::new(vec![], Duration::ZERO),
            Err(SelfTestConfigError::Timeout)
        );
    }
}
