//! One trace from publisher to subscriber through a broker on real
//! sockets, its spans taken by the SDK's in-memory exporter.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use myriad_broker::BrokerConfig;
use myriad_broker::shell::{self, Hooks};
use myriad_broker::trace::{TRACEPARENT, TRACESTATE, TraceParent, find_traceparent};
use myriad_mqtt::{
    Connect, Packet, PacketProperties, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, SubscriptionRequest,
};
use opentelemetry::trace::SpanId;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{OtelPublishTracer, ROUTE_SPAN, sampler};

/// A bare MQTT 5.0 client on our own codec.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr, id: &str) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
        };
        raw.send(Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 30,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: PacketProperties::new(),
        })))
        .await;
        assert!(matches!(raw.recv().await, Packet::ConnAck(_)));
        raw
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        myriad_mqtt::encode(&packet, ProtocolVersion::V5, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    async fn recv(&mut self) -> Packet {
        loop {
            if let Some(packet) =
                myriad_mqtt::decode(&mut self.buf, ProtocolVersion::V5, 1 << 20).expect("decode")
            {
                return packet;
            }
            let read =
                tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("an answer within 5 s")
                    .expect("read");
            assert!(read > 0, "connection closed");
        }
    }

    async fn subscribe(&mut self, filter: &str) {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscriptionRequest {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: PacketProperties::new(),
        }))
        .await;
        assert!(matches!(self.recv().await, Packet::SubAck(_)));
    }

    /// Publishes at QoS 1 with these user properties, waits for the PUBACK.
    async fn publish(&mut self, topic: &str, user: Vec<(&str, &str)>) {
        self.send(Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: 9,
            payload: Bytes::from_static(b"21.5"),
            properties: Properties {
                user_properties: user
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
                ..Properties::default()
            }
            .into(),
        }))
        .await;
        assert!(matches!(self.recv().await, Packet::PubAck(_)));
    }

    /// The next PUBLISH's `traceparent`, if it has one (acknowledged).
    async fn delivered_context(&mut self) -> Option<TraceParent> {
        let Packet::Publish(publish) = self.recv().await else {
            panic!("expected a PUBLISH");
        };
        self.send(Packet::PubAck(myriad_mqtt::PublishAck::success(
            publish.packet_id,
        )))
        .await;
        find_traceparent(&publish.properties.user_properties)
    }
}

/// Runs a broker with the OTel tracer of `provider` around `test`.
async fn with_broker<F, Fut>(provider: &SdkTracerProvider, test: F)
where
    F: FnOnce(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let (handle, events) = shell::channel();
    let hooks = Hooks {
        tracer: Some(Arc::new(OtelPublishTracer::new(provider))),
        ..Hooks::default()
    };
    let broker = tokio::spawn(shell::run(
        BrokerConfig::default(),
        None,
        hooks,
        listener,
        shutdown.clone(),
        handle,
        events,
    ));
    test(addr).await;
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), broker).await;
    stopped.expect("stops").expect("join").expect("clean stop");
}

fn provider(ratio: f64) -> (SdkTracerProvider, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_sampler(sampler(ratio))
        .build();
    (provider, exporter)
}

fn route_spans(exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    let spans = exporter.get_finished_spans().expect("spans");
    spans.into_iter().filter(|s| s.name == ROUTE_SPAN).collect()
}

const PUBLISHER_SPAN: &str = "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01";

#[tokio::test]
async fn one_trace_spans_publish_to_delivery() {
    let (provider, exporter) = provider(0.0);
    with_broker(&provider, |addr| async move {
        let mut sub = Raw::connect(addr, "otel-sub").await;
        sub.subscribe("sensors/#").await;
        let mut publisher = Raw::connect(addr, "otel-pub").await;
        publisher
            .publish(
                "sensors/t1",
                vec![(TRACEPARENT, PUBLISHER_SPAN), (TRACESTATE, "vendor=abc")],
            )
            .await;
        let parent = TraceParent::parse(PUBLISHER_SPAN).expect("valid");
        let child = sub.delivered_context().await.expect("a traceparent");
        assert_eq!(child.trace_id, parent.trace_id, "same trace");
        assert_ne!(
            child.parent_id, parent.parent_id,
            "the broker's span is the parent"
        );
        assert!(child.sampled());

        let spans = route_spans(&exporter);
        assert_eq!(spans.len(), 1, "{spans:?}");
        let span = &spans[0];
        assert_eq!(span.span_context.trace_id().to_bytes(), parent.trace_id);
        assert_eq!(span.parent_span_id.to_bytes(), parent.parent_id);
        assert_eq!(span.span_context.span_id().to_bytes(), child.parent_id);
        assert_eq!(span.span_context.trace_state().header(), "vendor=abc");
        assert!(
            span.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "messaging.destination.name"
                    && kv.value.as_str() == "sensors/t1")
        );
    })
    .await;
}

#[tokio::test]
async fn unsampled_and_untraced_messages() {
    let (provider, exporter) = provider(0.0);
    with_broker(&provider, |addr| async move {
        let mut sub = Raw::connect(addr, "otel-sub2").await;
        sub.subscribe("s/#").await;
        let mut publisher = Raw::connect(addr, "otel-pub2").await;
        // Ratio 0: a message without context stays untraced and untouched.
        publisher.publish("s/plain", vec![]).await;
        assert_eq!(sub.delivered_context().await, None);
        // A carried trace the publisher did not sample is continued
        // (flags kept) but no span is recorded.
        let unsampled = "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-00";
        publisher
            .publish("s/x", vec![(TRACEPARENT, unsampled)])
            .await;
        let child = sub.delivered_context().await.expect("continued");
        assert!(!child.sampled());
        assert_eq!(
            child.trace_id,
            TraceParent::parse(unsampled).expect("ok").trace_id
        );
        assert!(route_spans(&exporter).is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_message_without_context_can_start_a_sampled_trace() {
    let (provider, exporter) = provider(1.0);
    with_broker(&provider, |addr| async move {
        let mut sub = Raw::connect(addr, "otel-sub3").await;
        sub.subscribe("r/#").await;
        let mut publisher = Raw::connect(addr, "otel-pub3").await;
        publisher.publish("r/1", vec![]).await;
        let started = sub.delivered_context().await.expect("a new trace");
        assert!(started.sampled());
        let spans = route_spans(&exporter);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
        assert_eq!(
            spans[0].span_context.span_id().to_bytes(),
            started.parent_id
        );
    })
    .await;
}

#[test]
fn a_batch_span_continues_the_sampled_context_and_links_the_others() {
    use myriad_pipeline::runtime::trace::{BATCH_SPAN, BatchOutcome, BatchSpan, BatchTracer};

    use super::OtelBatchTracer;

    let (provider, exporter) = provider(0.0);
    let tracer = OtelBatchTracer::new(&provider);
    let parent = TraceParent::parse("00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01")
        .expect("valid");
    let link = TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
        .expect("valid");
    let start = std::time::SystemTime::now();
    fn span(
        start: std::time::SystemTime,
        parent: Option<TraceParent>,
        links: &[TraceParent],
        outcome: BatchOutcome,
    ) -> BatchSpan<'_> {
        BatchSpan {
            pipeline: "hot",
            sink: "http",
            records: 3,
            committed: 2,
            attempts: 2,
            outcome,
            error: Some("503"),
            start,
            end: start + Duration::from_millis(5),
            parent,
            links,
            dropped_links: 0,
        }
    }
    tracer.batch(&span(start, Some(parent), &[link], BatchOutcome::Partial));
    // Without a carried context and with ratio 0: not sampled, not exported.
    tracer.batch(&span(start, None, &[], BatchOutcome::Committed));
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span.name, BATCH_SPAN);
    assert_eq!(span.span_context.trace_id().to_bytes(), parent.trace_id);
    assert_eq!(span.parent_span_id, SpanId::from_bytes(parent.parent_id));
    assert_eq!(span.links.links.len(), 1);
    assert_eq!(
        span.links.links[0].span_context.trace_id().to_bytes(),
        link.trace_id
    );
    assert_eq!(span.start_time, start);
    assert_eq!(span.end_time, start + Duration::from_millis(5));
    let attribute = |key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(attribute("myriad.pipeline.name").as_deref(), Some("hot"));
    assert_eq!(attribute("myriad.pipeline.sink").as_deref(), Some("http"));
    assert_eq!(
        attribute("myriad.pipeline.outcome").as_deref(),
        Some("partial")
    );
    assert_eq!(
        attribute("messaging.batch.message_count").as_deref(),
        Some("3")
    );
    assert_eq!(attribute("myriad.pipeline.attempts").as_deref(), Some("2"));
    assert_eq!(attribute("error.message").as_deref(), Some("503"));
}
