//! One module per scenario, plus the pieces they share.

pub mod commands;
pub mod conn;
pub mod fanin;
pub mod fanout;
pub mod fleet;
pub mod p2p;
pub mod pubsub;
pub mod shared;
pub mod telemetry;

use std::time::Duration;

use tokio::time::Instant;

/// The start time of connection `index` when connecting at `rate` per second
/// (0 or less: all at once, limited only by the connect concurrency).
pub fn paced(start: Instant, index: usize, rate: f64) -> Instant {
    if rate > 0.0 && rate.is_finite() {
        start + Duration::from_secs_f64(index as f64 / rate)
    } else {
        start
    }
}

/// Bytes as a signed difference divided by a count, rounded (for "bytes per
/// connection"); `None` when the count is 0.
pub fn per_item(after: u64, before: u64, count: u64) -> Option<i64> {
    if count == 0 {
        return None;
    }
    let diff = after as i128 - before as i128;
    i64::try_from(diff / count as i128).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_item_handles_shrinking() {
        assert_eq!(per_item(3000, 1000, 2), Some(1000));
        assert_eq!(per_item(1000, 3000, 2), Some(-1000));
        assert_eq!(per_item(1, 1, 0), None);
    }
}
