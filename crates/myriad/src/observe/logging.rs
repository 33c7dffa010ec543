//! Log lines on stderr (human-readable or JSON lines), filtered by
//! `MYRIAD_LOG`, else the config's `log.filter`, else `info`; plus the
//! OpenTelemetry layer when tracing export is on.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;

type Base = Layered<EnvFilter, Registry>;

/// Installs the global subscriber with `filter` unless `MYRIAD_LOG` gives
/// one. `otel`: export `tracing` spans through this provider too.
pub fn init(format: LogFormat, filter: Option<&str>, otel: Option<&SdkTracerProvider>) {
    let filter = EnvFilter::try_from_env("MYRIAD_LOG")
        .unwrap_or_else(|_| EnvFilter::new(filter.unwrap_or("info")));
    let mut layers: Vec<Box<dyn Layer<Base> + Send + Sync>> = Vec::new();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    layers.push(match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    });
    if let Some(provider) = otel {
        let tracer = provider.tracer("myriad");
        layers.push(tracing_opentelemetry::layer().with_tracer(tracer).boxed());
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .init();
}
