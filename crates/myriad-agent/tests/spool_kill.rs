//! kill -9 of a process appending to and acknowledging from the telemetry spool on a real
//! disk: after the restart every record whose append returned (and that was not
//! acknowledged) is there, in order, with its bytes; nothing acknowledged comes back.
//!
//! The test re-runs its own binary as the child (selected by an environment variable); the
//! child prints `seq N` after each append returns and `ack N` after each ack returns.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use myriad_agent::fs::RealFs;
use myriad_agent::spool::{Spool, SpoolConfig};

const CHILD: &str = "MYRIAD_SPOOL_KILL_CHILD";
const TEST: &str = "kill_9_while_appending_loses_nothing_returned";

fn config() -> SpoolConfig {
    SpoolConfig {
        max_total_bytes: 4 * 1024 * 1024,
        segment_bytes: 16 * 1024,
        max_record_bytes: 1024,
    }
}

/// The bytes of record `seq`.
fn payload(seq: u64) -> Vec<u8> {
    let len = 20 + (seq % 200) as usize;
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

fn child(dir: &Path) -> ! {
    let mut s = Spool::open(RealFs, dir, config()).unwrap();
    let mut n = 0u64;
    loop {
        let first = s.stats().next_seq;
        let k = 1 + n % 3;
        let records: Vec<Vec<u8>> = (first..first + k).map(payload).collect();
        let refs: Vec<(&[u8], u32)> = records.iter().map(|r| (r.as_slice(), 1)).collect();
        let range = s.append_batch(&refs).unwrap();
        assert_eq!(*range.start(), first);
        println!("seq {}", range.end());
        n += 1;
        if n.is_multiple_of(7) {
            let up_to = range.end().saturating_sub(20);
            if up_to > s.stats().acked {
                s.ack(up_to).unwrap();
                println!("ack {up_to}");
            }
        }
    }
}

#[test]
fn kill_9_while_appending_loses_nothing_returned() {
    if let Some(dir) = std::env::var_os(CHILD) {
        child(Path::new(&dir));
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let mut confirmed = 0u64;
    let mut acked = 0u64;
    for round in 0..4 {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
        let mut seen = 0;
        let want = 150 + round * 97;
        // Read until enough appends returned, kill -9, then read what was printed before.
        let parse = |line: &str, confirmed: &mut u64, acked: &mut u64| {
            if let Some(n) = line.strip_prefix("seq ") {
                *confirmed = n.parse().unwrap();
                true
            } else if let Some(n) = line.strip_prefix("ack ") {
                *acked = n.parse().unwrap();
                false
            } else {
                false
            }
        };
        for line in lines.by_ref() {
            if parse(&line.unwrap(), &mut confirmed, &mut acked) {
                seen += 1;
                if seen == want {
                    break;
                }
            }
        }
        c.kill().unwrap(); // SIGKILL
        for line in lines {
            parse(&line.unwrap(), &mut confirmed, &mut acked);
        }
        c.wait().unwrap();
        assert!(
            seen >= want,
            "round {round}: the child printed only {seen} appends"
        );

        let mut s = Spool::open(RealFs, &dir, config()).unwrap();
        let mut all = Vec::new();
        loop {
            let after = all
                .last()
                .map_or(0, |p: &myriad_agent::spool::Peeked| p.seq);
            let page = s.peek_after(after, 500, usize::MAX).unwrap();
            if page.is_empty() {
                break;
            }
            all.extend(page);
        }
        let st = s.stats();
        assert_eq!(st.dropped_records, 0);
        // Acknowledged records never come back; the first one left follows the cursor.
        assert!(st.acked >= acked, "round {round}");
        let first = all.first().map(|p| p.seq).unwrap_or(st.next_seq);
        assert!(
            first > acked,
            "round {round}: {first} was acknowledged ({acked})"
        );
        // Every confirmed record after the cursor is there, in order, with its bytes (and
        // at most the batch in flight at the kill after them).
        assert!(
            all.last().map_or(acked, |p| p.seq) >= confirmed,
            "round {round}: confirmed up to {confirmed}, spool ends at {:?}",
            all.last().map(|p| p.seq)
        );
        for w in all.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1, "round {round}");
        }
        for p in &all {
            assert_eq!(p.payload, payload(p.seq), "round {round}: record {}", p.seq);
        }
        assert!(all.last().map_or(0, |p| p.seq) <= confirmed + 3);
        confirmed = all.last().map_or(confirmed, |p| p.seq);
        acked = st.acked;
    }
}
