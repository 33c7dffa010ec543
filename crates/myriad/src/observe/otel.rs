//! OpenTelemetry: the OTLP exporter (when `[tracing] otlp_endpoint` is
//! set) and the broker's [`PublishTracer`] that continues W3C traces
//! carried by MQTT 5.0 messages.
//!
//! Off by default: without an endpoint no provider is built, the broker
//! gets no tracer, and messages pass untouched. When on, every routed
//! PUBLISH that carries a valid `traceparent` gets one `mqtt.route` span
//! (child of the publisher's span), and every copy delivered to
//! subscribers carries `traceparent` = (same trace, the route span as
//! parent). Messages without one start a new trace with probability
//! `sample_ratio` (default 0). Each pipeline batch commit is a
//! `pipeline.batch` span ([`OtelBatchTracer`]) whose parent and links are
//! the trace contexts its records carried. `tracing` spans of the rest of the platform
//! (HTTP API requests, ...) are exported through the same provider.

use anyhow::{Context as _, Result};
use myriad_broker::trace::{PublishTracer, TraceParent};
use myriad_pipeline::runtime::trace::{BATCH_SPAN, BatchOutcome, BatchSpan, BatchTracer};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};

use crate::config::TracingConfig;

/// The name of the broker's routing span.
pub const ROUTE_SPAN: &str = "mqtt.route";

/// The sampler: follow the parent's decision; roots by `ratio`.
pub fn sampler(ratio: f64) -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
}

/// The OTLP/HTTP exporter's provider for `config`, or `None` when tracing
/// is off. Build it outside the async runtime (the HTTP client blocks).
pub fn provider(config: &TracingConfig) -> Result<Option<SdkTracerProvider>> {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .context("cannot build the OTLP exporter (tracing.otlp_endpoint)")?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler(config.sample_ratio))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    Ok(Some(provider))
}

/// Continues MQTT-carried traces with spans of `tracer`.
pub struct OtelPublishTracer {
    tracer: Tracer,
}

impl OtelPublishTracer {
    /// A tracer hook making its spans with `provider`.
    pub fn new(provider: &SdkTracerProvider) -> OtelPublishTracer {
        OtelPublishTracer {
            tracer: provider.tracer("myriad-broker"),
        }
    }
}

fn remote_parent(parent: &TraceParent, state: Option<&str>) -> Context {
    let state = state
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let context = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.parent_id),
        TraceFlags::new(parent.flags),
        true,
        state,
    );
    Context::new().with_remote_span_context(context)
}

impl PublishTracer for OtelPublishTracer {
    fn route(
        &self,
        topic: &str,
        parent: Option<&TraceParent>,
        state: Option<&str>,
    ) -> Option<TraceParent> {
        let parent_context = match parent {
            Some(parent) => remote_parent(parent, state),
            None => Context::new(),
        };
        let mut span = self
            .tracer
            .span_builder(ROUTE_SPAN)
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "mqtt"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", topic.to_string()),
            ])
            .start_with_context(&self.tracer, &parent_context);
        let context = span.span_context().clone();
        span.end();
        // An unsampled root stays untraced; a carried trace is always
        // continued (with its flags) so downstream spans stay connected.
        if parent.is_none() && !context.is_sampled() {
            return None;
        }
        Some(TraceParent {
            trace_id: context.trace_id().to_bytes(),
            parent_id: context.span_id().to_bytes(),
            flags: context.trace_flags().to_u8(),
        })
    }
}

/// Turns each pipeline batch commit into a `pipeline.batch` span (see
/// `myriad_pipeline::runtime::trace`): child of the first sampled trace
/// context its records carried (the broker's `mqtt.route` span when
/// tracing is on), linked to the others; a root span (sampled by
/// `sample_ratio`) when they carried none.
pub struct OtelBatchTracer {
    tracer: Tracer,
}

impl OtelBatchTracer {
    /// A batch tracer making its spans with `provider`.
    pub fn new(provider: &SdkTracerProvider) -> OtelBatchTracer {
        OtelBatchTracer {
            tracer: provider.tracer("myriad-pipeline"),
        }
    }
}

fn span_context(context: &TraceParent) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(context.trace_id),
        SpanId::from_bytes(context.parent_id),
        TraceFlags::new(context.flags),
        true,
        TraceState::default(),
    )
}

impl BatchTracer for OtelBatchTracer {
    fn batch(&self, batch: &BatchSpan<'_>) {
        let parent = match &batch.parent {
            Some(parent) => remote_parent(parent, None),
            None => Context::new(),
        };
        let mut attributes = vec![
            KeyValue::new("myriad.pipeline.name", batch.pipeline.to_string()),
            KeyValue::new("myriad.pipeline.sink", batch.sink),
            KeyValue::new("myriad.pipeline.outcome", batch.outcome.as_str()),
            KeyValue::new("myriad.pipeline.committed", batch.committed as i64),
            KeyValue::new("myriad.pipeline.attempts", i64::from(batch.attempts)),
            KeyValue::new("messaging.batch.message_count", batch.records as i64),
        ];
        if batch.dropped_links > 0 {
            attributes.push(KeyValue::new(
                "myriad.pipeline.dropped_links",
                batch.dropped_links as i64,
            ));
        }
        if let Some(error) = batch.error {
            attributes.push(KeyValue::new("error.message", error.to_string()));
        }
        let links = batch
            .links
            .iter()
            .map(|context| opentelemetry::trace::Link::with_context(span_context(context)))
            .collect();
        let mut span = self
            .tracer
            .span_builder(BATCH_SPAN)
            .with_kind(SpanKind::Consumer)
            .with_start_time(batch.start)
            .with_attributes(attributes)
            .with_links(links)
            .start_with_context(&self.tracer, &parent);
        if !matches!(
            batch.outcome,
            BatchOutcome::Committed | BatchOutcome::Partial
        ) {
            span.set_status(opentelemetry::trace::Status::error(batch.outcome.as_str()));
        }
        span.end_with_timestamp(batch.end);
    }
}

#[cfg(test)]
mod tests;
