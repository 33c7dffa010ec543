//! One module per scenario, plus the pieces they share.

pub mod commands;
pub mod conn;
pub mod fanin;
pub mod fanout;
pub mod fleet;
pub mod ota;
pub mod p2p;
pub mod pubsub;
pub mod shared;
pub mod telemetry;

use std::net::SocketAddr;
use std::time::Duration;

use myriad_mqtt::QoS;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ConnectOptions};
use crate::metrics::Counters;
use crate::report::ErrorLog;

/// Connects one simulated device of a platform scenario (`commands`, `telemetry`): up to three
/// attempts, 200 ms and 400 ms apart, each under one of `permits` (the connect concurrency);
/// with `subscribe`, subscribing to it at QoS 1 is part of the attempt. Errors go to `errors`;
/// the outcome is counted in `counters.connected` or `counters.connect_failed`. `None` when
/// every attempt failed, or (uncounted) when the run stopped or the permits closed meanwhile.
pub async fn connect_device(
    broker: SocketAddr,
    options: &ConnectOptions,
    permits: &Semaphore,
    stop: &CancellationToken,
    subscribe: Option<String>,
    counters: &Counters,
    errors: &ErrorLog,
) -> Option<Client> {
    for attempt in 0..3u64 {
        if attempt > 0 {
            sleep(Duration::from_millis(200 * attempt)).await;
        }
        let connected = {
            let _permit = permits.acquire().await.ok()?;
            if stop.is_cancelled() {
                return None;
            }
            match Client::connect(broker, options).await {
                Ok((mut client, _)) => match &subscribe {
                    Some(filter) => client
                        .subscribe(
                            &[(filter.clone(), QoS::AtLeastOnce)],
                            Duration::from_secs(30),
                        )
                        .await
                        .map(|()| client),
                    None => Ok(client),
                },
                Err(error) => Err(error),
            }
        };
        match connected {
            Ok(mut client) => {
                Counters::inc(&counters.connected);
                client.shrink();
                return Some(client);
            }
            Err(error) => errors.add(format!("device connect: {error}")),
        }
    }
    Counters::inc(&counters.connect_failed);
    None
}

/// Waits until every one of `total` devices connected or failed (see [`connect_device`]), or
/// until `deadline`.
pub async fn wait_for_connections(counters: &Counters, total: u64, deadline: Instant) {
    while Instant::now() < deadline {
        let done = Counters::get(&counters.connected) + Counters::get(&counters.connect_failed);
        if done >= total {
            return;
        }
        sleep(Duration::from_millis(50)).await;
    }
}

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
