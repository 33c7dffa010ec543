//! Reading a process's memory and CPU time from /proc (Linux).
//!
//! CPU times in /proc/PID/stat are in clock ticks of `USER_HZ`, which Linux
//! fixes at 100 for user space on every mainstream architecture.

use serde::Serialize;

use crate::error::{Result, SimError};

/// Clock ticks per second in /proc/PID/stat.
pub const USER_HZ: f64 = 100.0;

/// Memory figures from /proc/PID/status, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Memory {
    /// Resident set size (VmRSS).
    pub rss: u64,
    /// Anonymous resident memory (RssAnon): heap and stacks, no file mappings.
    pub rss_anon: u64,
}

/// Parses VmRSS and RssAnon (kB) out of the text of /proc/PID/status.
pub fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    let rss = field("VmRSS:")?;
    Some(Memory {
        rss,
        rss_anon: field("RssAnon:").unwrap_or(rss),
    })
}

/// Parses utime + stime (seconds) out of the text of /proc/PID/stat.
///
/// The command name (field 2) may contain spaces and parentheses, so fields
/// are counted from the last `)`.
pub fn parse_stat_cpu(text: &str) -> Option<f64> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After the name: state(3) ppid(4) ... utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

fn read(pid: u32, file: &'static str) -> Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|error| SimError::Proc {
        pid,
        file,
        reason: error.to_string(),
    })
}

/// The resident memory of process `pid`.
pub fn memory(pid: u32) -> Result<Memory> {
    parse_status(&read(pid, "status")?).ok_or(SimError::Proc {
        pid,
        file: "status",
        reason: "no VmRSS line".to_owned(),
    })
}

/// User plus system CPU seconds used so far by process `pid` (all threads).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    parse_stat_cpu(&read(pid, "stat")?).ok_or(SimError::Proc {
        pid,
        file: "stat",
        reason: "unexpected format".to_owned(),
    })
}

/// CPU seconds of this process (the simulator itself).
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds(std::process::id()).ok()
}

/// A process watched over a run: CPU and memory at the start, now, and the
/// peak resident memory seen by [`Watch::sample`].
#[derive(Debug, Clone)]
pub struct Watch {
    pid: u32,
    cpu_start: f64,
    /// Memory when the watch started.
    pub start: Memory,
    /// Highest VmRSS sampled.
    pub peak_rss: u64,
}

impl Watch {
    /// Starts watching `pid`.
    pub fn start(pid: u32) -> Result<Watch> {
        let start = memory(pid)?;
        Ok(Watch {
            pid,
            cpu_start: cpu_seconds(pid)?,
            start,
            peak_rss: start.rss,
        })
    }

    /// Samples memory now, updating the peak.
    pub fn sample(&mut self) -> Result<Memory> {
        let now = memory(self.pid)?;
        self.peak_rss = self.peak_rss.max(now.rss);
        Ok(now)
    }

    /// CPU seconds used since the watch started.
    pub fn cpu_since_start(&self) -> Result<f64> {
        Ok(cpu_seconds(self.pid)? - self.cpu_start)
    }

    /// Restarts the CPU counter from now.
    pub fn reset_cpu(&mut self) -> Result<()> {
        self.cpu_start = cpu_seconds(self.pid)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let text = "Name:\tmosquitto\nVmPeak:\t  9999 kB\nVmRSS:\t    5120 kB\nRssAnon:\t    2048 kB\nRssFile:\t 3072 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Memory {
                rss: 5120 * 1024,
                rss_anon: 2048 * 1024
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn stat_cpu_with_awkward_name() {
        let text = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu(text), Some(3.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
        assert_eq!(parse_stat_cpu("1 (x) S 1 2"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let watch = Watch::start(std::process::id()).expect("own /proc entry");
        assert!(watch.start.rss > 0);
        assert!(watch.cpu_since_start().expect("cpu") >= 0.0);
    }
}
