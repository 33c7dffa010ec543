//! Readings about the process itself: resident memory, open sockets and
//! the allocator's statistics (jemalloc is the global allocator).

/// Resident set size in bytes (Linux `/proc/self/status` VmRSS).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Open sockets of the process (Linux `/proc/self/fd`). One `readlink` per
/// open file: meant for a check every few seconds, not per request.
pub fn open_sockets() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    let mut sockets = 0;
    for entry in entries.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path())
            && target
                .as_os_str()
                .as_encoded_bytes()
                .starts_with(b"socket:")
        {
            sockets += 1;
        }
    }
    Some(sockets)
}

/// jemalloc's view of memory, in bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes allocated by the application.
    pub allocated: u64,
    /// Bytes in active pages (allocated plus fragmentation).
    pub active: u64,
    /// Bytes in physically resident pages the allocator maps.
    pub resident: u64,
    /// Bytes in chunks mapped by the allocator.
    pub mapped: u64,
}

/// The allocator's statistics now (refreshes jemalloc's cached numbers).
pub fn allocator_stats() -> Option<AllocatorStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(AllocatorStats {
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        mapped: stats::mapped::read().ok()? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_readings_are_plausible() {
        let rss = resident_bytes().expect("VmRSS on Linux");
        assert!(rss > 1024 * 1024, "{rss}");
        let before = open_sockets().expect("/proc/self/fd");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let after = open_sockets().expect("/proc/self/fd");
        // Other tests open sockets concurrently: at least ours is seen.
        assert!(after >= 1 && after + 64 >= before, "{before} -> {after}");
        drop(listener);
    }

    #[test]
    fn allocator_stats_follow_allocations() {
        let before = allocator_stats().expect("jemalloc stats");
        let block = std::hint::black_box(vec![1u8; 64 * 1024 * 1024]);
        let during = allocator_stats().expect("jemalloc stats");
        assert!(
            during.allocated >= before.allocated + 32 * 1024 * 1024,
            "{before:?} -> {during:?}"
        );
        assert!(during.active >= during.allocated);
        drop(block);
    }
}
