//! The pipeline runtime on a real broker shell: file and MQTT sinks, dead letters, and
//! acknowledgements (nothing is redelivered once committed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use myriad_broker::BrokerConfig;
use myriad_broker::shell::{self, BrokerHandle, Hooks};
use myriad_mqtt::{PacketProperties, QoS};
use myriad_pipeline::runtime::{self, FileSinkConfig, PipelineConfig, SinkConfig, TopicTemplate};
use myriad_pipeline::sql::Rule;
use myriad_pipeline::transform::BatchConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SQL: &str = "SELECT payload.temp AS t, topic(2) AS device FROM 'devices/+/telemetry' WHERE payload.temp > 30";

struct Broker {
    handle: BrokerHandle,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), shell::ServeError>>,
}

async fn broker() -> Broker {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let (handle, events) = shell::channel();
    let task = tokio::spawn(shell::run(
        BrokerConfig::default(),
        None,
        Hooks::default(),
        listener,
        shutdown.clone(),
        handle.clone(),
        events,
    ));
    Broker {
        handle,
        shutdown,
        task,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("myriad-runtime-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &Path, sink: SinkConfig) -> PipelineConfig {
    PipelineConfig {
        source: runtime::SourceConfig::Mqtt,
        name: "hot".into(),
        rule: Rule::compile(SQL).expect("rule"),
        batch: BatchConfig {
            max_records: 500,
            max_bytes: 1 << 20,
            max_age_ms: 50,
        },
        in_flight: 100,
        sink,
        dead_letter: FileSinkConfig::new(dir.join("dead.jsonl")),
        deadline_ms: None,
        tracer: None,
    }
}

async fn publish(handle: &BrokerHandle, topic: &str, payload: &str) {
    handle
        .publish_at_least_once(
            topic.into(),
            Bytes::from(payload.to_string()),
            PacketProperties::new(),
        )
        .await
        .expect("publish");
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

async fn wait_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let got = lines(path);
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lines(path)
}

fn deep_payload() -> String {
    format!(
        "{{\"temp\": 50, \"x\": {}{}}}",
        "[".repeat(100),
        "]".repeat(100)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_writes_selected_records_and_dead_letters_and_acknowledges() {
    let dir = temp_dir("file");
    let out = dir.join("hot.jsonl");
    let broker = broker().await;
    let config = config(&dir, SinkConfig::File(FileSinkConfig::new(&out)));
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(runtime::run(
        config.clone(),
        broker.handle.clone(),
        stop.clone(),
        Duration::from_secs(5),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&broker.handle, "devices/d1/telemetry", r#"{"temp": 10}"#).await;
    publish(&broker.handle, "devices/d1/telemetry", r#"{"temp": 35}"#).await;
    publish(&broker.handle, "devices/d2/telemetry", &deep_payload()).await;
    publish(&broker.handle, "devices/d2/telemetry", r#"{"temp": 40}"#).await;
    publish(&broker.handle, "other/topic", r#"{"temp": 99}"#).await;

    let got = wait_lines(&out, 2).await;
    assert_eq!(
        got,
        [
            serde_json::json!({"t": 35, "device": "d1"}),
            serde_json::json!({"t": 40, "device": "d2"})
        ]
    );
    let dead = wait_lines(&dir.join("dead.jsonl"), 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["topic"], "devices/d2/telemetry");
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("rule: payload"),
        "{dead:?}"
    );
    assert!(dead[0]["payload"].is_string() && dead[0]["time"].is_i64());

    // Stop and run again on the same session: everything was acknowledged, nothing
    // comes back; a new message still flows.
    stop.cancel();
    pipeline.await.expect("join").expect("clean stop");
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(runtime::run(
        config,
        broker.handle.clone(),
        stop.clone(),
        Duration::from_secs(5),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&broker.handle, "devices/d3/telemetry", r#"{"temp": 31}"#).await;
    let got = wait_lines(&out, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_later = lines(&out);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got_later, got,
        "redelivered after a clean stop: {got_later:?}"
    );
    assert_eq!(got[2], serde_json::json!({"t": 31, "device": "d3"}));
    assert_eq!(lines(&dir.join("dead.jsonl")).len(), 1);
    stop.cancel();
    pipeline.await.expect("join").expect("clean stop");
    broker.shutdown.cancel();
    let _ = broker.task.await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_wait_for_the_next_run() {
    // A sink that cannot write (its directory is a file): nothing is acknowledged; once
    // the pipeline runs again with a working sink, the messages arrive.
    let dir = temp_dir("blocked");
    std::fs::create_dir_all(&dir).unwrap();
    let blocker = dir.join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    let broker = broker().await;
    let bad = config(
        &dir,
        SinkConfig::File(FileSinkConfig::new(blocker.join("hot.jsonl"))),
    );
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(runtime::run(
        bad.clone(),
        broker.handle.clone(),
        stop.clone(),
        Duration::from_millis(200),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for t in 31..34 {
        publish(
            &broker.handle,
            "devices/d/telemetry",
            &format!("{{\"temp\": {t}}}"),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    pipeline
        .await
        .expect("join")
        .expect("stops after the grace period");

    let out = dir.join("hot.jsonl");
    let good = config(&dir, SinkConfig::File(FileSinkConfig::new(&out)));
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(runtime::run(
        good,
        broker.handle.clone(),
        stop.clone(),
        Duration::from_secs(5),
    ));
    let got = wait_lines(&out, 3).await;
    let temps: Vec<_> = got.iter().map(|v| v["t"].as_i64().unwrap()).collect();
    assert_eq!(temps, [31, 32, 33]);
    stop.cancel();
    pipeline.await.expect("join").expect("clean stop");
    broker.shutdown.cancel();
    let _ = broker.task.await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sink_republishes_and_refuses_records_without_a_topic() {
    let dir = temp_dir("mqtt");
    let broker = broker().await;
    let mut subscriber = broker.handle.connect_internal("test-sub").await.unwrap();
    subscriber
        .subscribe("alerts/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut config = config(
        &dir,
        SinkConfig::Mqtt {
            topic: TopicTemplate::parse("alerts/${device}").unwrap(),
        },
    );
    config.rule = Rule::compile(
        "SELECT payload.temp AS t, payload.dev AS device FROM 'devices/+/telemetry' WHERE payload.temp > 30",
    )
    .unwrap();
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(runtime::run(
        config,
        broker.handle.clone(),
        stop.clone(),
        Duration::from_secs(5),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(
        &broker.handle,
        "devices/a/telemetry",
        r#"{"temp": 35, "dev": "a"}"#,
    )
    .await;
    publish(&broker.handle, "devices/b/telemetry", r#"{"temp": 36}"#).await;
    let got = tokio::time::timeout(Duration::from_secs(5), subscriber.recv())
        .await
        .expect("in time")
        .expect("a message");
    assert_eq!(&*got.topic, "alerts/a");
    let body: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(body, serde_json::json!({"t": 35, "device": "a"}));
    let dead = wait_lines(&dir.join("dead.jsonl"), 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "sink: topic field device is missing");
    stop.cancel();
    pipeline.await.expect("join").expect("clean stop");
    broker.shutdown.cancel();
    let _ = broker.task.await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_answers_once_every_line_is_committed_or_dead_lettered() {
    use myriad_pipeline::runtime::ingest::{HttpSourceConfig, IngestError};
    let dir = temp_dir("ingest");
    let out = dir.join("in.jsonl");
    let broker = broker().await;
    let http = HttpSourceConfig::new(64, 1 << 20);
    let handle = http.handle();
    let mut config = config(&dir, SinkConfig::File(FileSinkConfig::new(&out)));
    config.name = "in".into();
    config.rule =
        Rule::compile("SELECT payload.n AS n FROM 'http/in' WHERE payload.n <> 3").expect("rule");
    config.source = runtime::SourceConfig::Http(http);
    config.in_flight = 7;
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(runtime::run(
        config,
        broker.handle.clone(),
        stop.clone(),
        Duration::from_secs(5),
    ));
    // 500 lines in chunks of 13 bytes (lines cut across chunks), one too long, one not JSON.
    let mut body = String::new();
    for n in 0..500 {
        body.push_str(&format!("{{\"n\": {n}}}\n"));
    }
    body.push_str(&format!("{{\"n\": \"{}\"}}\nnope\n", "x".repeat(100)));
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> = body
        .as_bytes()
        .chunks(13)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let report = handle
        .ingest(futures_util::stream::iter(chunks))
        .await
        .expect("ingested");
    assert_eq!((report.accepted, report.dead_lettered), (500, 2));
    // Committed before the answer: 499 (n = 3 filtered out).
    let got = lines(&out);
    assert_eq!(got.len(), 499);
    assert_eq!(lines(&dir.join("dead.jsonl")).len(), 2);
    // Past max_body_bytes.
    let small = HttpSourceConfig::new(64, 10);
    let too_large = small
        .handle()
        .ingest(futures_util::stream::iter(vec![Ok::<_, String>(
            Bytes::from_static(b"{}\n{}\n{}\n{}\n"),
        )]))
        .await;
    assert!(matches!(
        too_large,
        Err(IngestError::TooLarge { limit: 10 })
    ));
    stop.cancel();
    pipeline.await.expect("joined").expect("stopped cleanly");
    broker.shutdown.cancel();
    let _ = broker.task.await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Keeps every batch span reported.
#[derive(Default)]
struct Spans(std::sync::Mutex<Vec<Recorded>>);

#[derive(Debug, Clone)]
struct Recorded {
    sink: &'static str,
    records: usize,
    committed: usize,
    outcome: runtime::BatchOutcome,
    parent: Option<runtime::trace::TraceParent>,
    links: Vec<runtime::trace::TraceParent>,
}

impl runtime::BatchTracer for Spans {
    fn batch(&self, span: &runtime::BatchSpan<'_>) {
        assert!(span.end >= span.start);
        assert_eq!(span.pipeline, "hot");
        self.0.lock().unwrap().push(Recorded {
            sink: span.sink,
            records: span.records,
            committed: span.committed,
            outcome: span.outcome,
            parent: span.parent,
            links: span.links.to_vec(),
        });
    }
}

/// A telemetry store of one device's `temp` points at ts 0..n, value ts.
struct Points(i64);

impl runtime::telemetry_source::TelemetryStore for Points {
    fn metrics<'a>(
        &'a self,
        _device: &'a str,
    ) -> runtime::telemetry_source::StoreFuture<'a, Vec<String>> {
        Box::pin(async { Ok(vec!["temp".to_owned()]) })
    }
    fn export<'a>(
        &'a self,
        device: &'a str,
        _metric: &'a str,
        from: i64,
        to: i64,
        limit: usize,
    ) -> runtime::telemetry_source::StoreFuture<'a, runtime::telemetry_source::TelemetryChunk> {
        let n = if device == "d1" { self.0 } else { 0 };
        let points: Vec<_> = (from.max(0)..to.min(n))
            .take(limit)
            .map(|t| (t, serde_json::Value::from(t)))
            .collect();
        let next = points
            .last()
            .map(|p| p.0 + 1)
            .filter(|&next| next < to.min(n));
        Box::pin(async move { Ok(runtime::telemetry_source::TelemetryChunk { points, next }) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_carry_user_properties_and_each_batch_reports_a_span_linked_to_their_traces() {
    let dir = temp_dir("trace");
    let out = dir.join("hot.jsonl");
    let broker = broker().await;
    let spans = std::sync::Arc::new(Spans::default());
    let mut config = config(&dir, SinkConfig::File(FileSinkConfig::new(&out)));
    config.rule = Rule::compile(
        "SELECT payload.temp AS t, get_user_property('site') AS site FROM 'devices/+/telemetry'",
    )
    .expect("rule");
    // One batch for the three messages.
    config.batch.max_records = 3;
    config.batch.max_age_ms = 60_000;
    config.tracer = Some(spans.clone());
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(runtime::run(
        config,
        broker.handle.clone(),
        stop.clone(),
        Duration::from_secs(5),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let traces = [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01",
        // A malformed one is no context.
        "00-zz-b7ad6b7169203331-01",
    ];
    for (i, trace) in traces.iter().enumerate() {
        let mut properties = PacketProperties::new();
        properties
            .user_properties
            .push(("site".into(), format!("s{i}").into()));
        properties
            .user_properties
            .push(("traceparent".into(), (*trace).into()));
        broker
            .handle
            .publish_at_least_once(
                "devices/d1/telemetry".into(),
                Bytes::from(format!("{{\"temp\": {i}}}")),
                properties,
            )
            .await
            .expect("publish");
    }
    let got = wait_lines(&out, 3).await;
    assert_eq!(
        got,
        [
            serde_json::json!({"t": 0, "site": "s0"}),
            serde_json::json!({"t": 1, "site": "s1"}),
            serde_json::json!({"t": 2, "site": "s2"}),
        ]
    );
    stop.cancel();
    pipeline.await.expect("join").expect("clean stop");
    let recorded = spans.0.lock().unwrap().clone();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let span = &recorded[0];
    assert_eq!((span.sink, span.records, span.committed), ("file", 3, 3));
    assert_eq!(span.outcome, runtime::BatchOutcome::Committed);
    let parse = |s: &str| myriad_broker::trace::TraceParent::parse(s).unwrap();
    // The sampled context is the parent, the other one a link.
    assert_eq!(span.parent, Some(parse(traces[1])));
    assert_eq!(span.links, vec![parse(traces[0])]);
    broker.shutdown.cancel();
    let _ = broker.task.await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_range_is_read_whole_then_the_pipeline_is_finished_and_stays_so() {
    let dir = temp_dir("telemetry-range");
    let out = dir.join("out.jsonl");
    let broker = broker().await;
    let mut config = config(&dir, SinkConfig::File(FileSinkConfig::new(&out)));
    // Fewer in flight than points: the range is read in pieces as records are done.
    config.in_flight = 7;
    config.source =
        runtime::SourceConfig::Telemetry(runtime::telemetry_source::TelemetrySourceConfig {
            devices: vec!["d1".into(), "d2".into()],
            metrics: vec![],
            from: 10,
            to: Some(90),
            follow: false,
            poll_ms: 10,
            checkpoint: dir.join("range.checkpoint"),
        });
    let store: std::sync::Arc<dyn runtime::telemetry_source::TelemetryStore> =
        std::sync::Arc::new(Points(100));
    let run = |config: PipelineConfig| {
        let status = std::sync::Arc::new(myriad_pipeline::status::PipelineStatus::new(
            "hot", "x", "file", 0,
        ));
        let fut = runtime::run_with_status(
            config,
            broker.handle.clone(),
            CancellationToken::new(),
            Duration::from_secs(5),
            status.clone(),
            Some(store.clone()),
        );
        async move {
            (
                tokio::time::timeout(Duration::from_secs(20), fut).await,
                status,
            )
        }
    };
    let (ended, status) = run(config.clone()).await;
    assert_eq!(
        ended.expect("finishes").expect("no error"),
        runtime::Ended::Finished
    );
    assert_eq!(
        status.snapshot().state,
        myriad_pipeline::status::PipelineState::Finished
    );
    // WHERE temp > 30: points 31..89 of d1, in order.
    let got: Vec<i64> = lines(&out)
        .iter()
        .map(|l| l["t"].as_i64().expect("t"))
        .collect();
    assert_eq!(got, (31..90).collect::<Vec<_>>());
    assert_eq!(status.snapshot().records[0], 80, "received");
    // Run again: the checkpoint says it is done; nothing is read.
    let (ended, status) = run(config).await;
    assert_eq!(
        ended.expect("finishes").expect("no error"),
        runtime::Ended::Finished
    );
    assert_eq!(status.snapshot().records[0], 0);
    assert_eq!(lines(&out).len(), 59);
    broker.shutdown.cancel();
    let _ = broker.task.await;
}
