//! A progress line on stderr while a run is going.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Counters;

/// Prints `render(counters)` once a second on stderr until `stop` is cancelled:
/// rewritten in place on a terminal, one line every five seconds otherwise.
pub fn spawn(
    scenario: &'static str,
    counters: Arc<Counters>,
    quiet: bool,
    stop: CancellationToken,
    render: fn(&Counters) -> String,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if quiet {
            return;
        }
        let tty = std::io::stderr().is_terminal();
        let start = Instant::now();
        let period = if tty {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let mut ticker = tokio::time::interval_at(start + period, period);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let line = format!(
                "[{scenario} {:>5.1}s] {}",
                start.elapsed().as_secs_f64(),
                render(&counters)
            );
            let mut stderr = std::io::stderr().lock();
            let _ = if tty {
                write!(stderr, "\r\x1b[K{line}")
            } else {
                writeln!(stderr, "{line}")
            };
            let _ = stderr.flush();
        }
        if tty {
            let _ = writeln!(std::io::stderr());
        }
    })
}

/// A short status line for connection-oriented scenarios.
pub fn render_connections(c: &Counters) -> String {
    format!(
        "connected={} failed={} dropped={} pongs={}",
        Counters::get(&c.connected),
        Counters::get(&c.connect_failed),
        Counters::get(&c.dropped),
        Counters::get(&c.pongs),
    )
}

/// A short status line for publish/subscribe scenarios.
pub fn render_messages(c: &Counters) -> String {
    format!(
        "connected={} sent={} acked={} received={} failed={}",
        Counters::get(&c.connected),
        Counters::get(&c.sent),
        Counters::get(&c.acked),
        Counters::get(&c.received),
        Counters::get(&c.connect_failed),
    )
}
