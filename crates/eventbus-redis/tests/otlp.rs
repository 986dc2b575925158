//! OpenTelemetry export end to end (feature `otlp`), on memory and on a real Redis: spans go
//! over OTLP/HTTP to a collector in this process, and the exported spans are the ones the
//! messages' `traceparent` names. One trace reads request → publish → process → re-publish →
//! process, each span the parent of the next, and each receiver saw its publish span's id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use eventbus::otlp::{Otlp, OtlpSettings};
use eventbus::{AvroRecord, BusConfig, Envelope, Event};
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Clone, Serialize, Deserialize, AvroRecord)]
struct Order {
    id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.otlp.order.placed.v1", minor_version = 0)]
struct OrderPlaced {
    order: Order,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.otlp.order.billed.v1", minor_version = 0)]
struct OrderBilled {
    order: Order,
}

/// One exported span as the collector got it.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
    service: String,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Exported>>>);

impl Collector {
    fn take(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Exported {
                        name: span.name,
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| {
                                let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
                                (kv.key.clone(), text(value))
                            })
                            .collect(),
                        service: service.clone(),
                    });
                }
            }
        }
    }

    fn named(&self, name: &str) -> Vec<Exported> {
        let spans = self.0.lock().unwrap();
        spans.iter().filter(|s| s.name == name).cloned().collect()
    }
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn export(State(collector): State<Collector>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    collector.take(request);
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// The collector (an OTLP/HTTP server on a loopback port) and the pipeline, installed once per
/// test binary as the global subscriber.
fn pipeline() -> &'static (Collector, Otlp) {
    static PIPELINE: OnceLock<(Collector, Otlp)> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        let collector = Collector::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/v1/traces", post(export))
            .with_state(collector.clone());
        // The collector outlives every test's runtime: it has a thread of its own.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        let otlp =
            Otlp::start(OtlpSettings::new(format!("http://{addr}")).service_name("otlp-test"))
                .unwrap();
        let subscriber = tracing_subscriber::registry().with(otlp.layer());
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per binary");
        (collector, otlp)
    })
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn one_trace_across_the_bus(url: &str, topic: &str) {
    let (collector, otlp) = pipeline();
    eventbus::link_backends();
    let bus = eventbus::connect(BusConfig::new().url(url)).await.unwrap();
    let billing = format!("{topic}-billing");
    let seen: Arc<Mutex<HashMap<&str, String>>> = Arc::default();

    let producer = bus.producer().clone();
    let (billed_topic, seen_placed) = (billing.clone(), Arc::clone(&seen));
    let orders = bus
        .consumer(topic, "billing")
        .handle(move |e: Envelope<OrderPlaced>| {
            let (producer, topic, seen) =
                (producer.clone(), billed_topic.clone(), seen_placed.clone());
            async move {
                let parent = e.delivery().and_then(|d| d.headers().get("traceparent"));
                seen.lock()
                    .unwrap()
                    .insert("placed", parent.unwrap_or("").to_owned());
                producer
                    .send(
                        &topic,
                        &OrderBilled {
                            order: e.order.clone(),
                        },
                    )
                    .await
                    .map(drop)
            }
        })
        .start()
        .await
        .unwrap();
    let seen_billed = Arc::clone(&seen);
    let receipts = bus
        .consumer(&billing, "receipts")
        .handle(move |e: Envelope<OrderBilled>| {
            let seen = seen_billed.clone();
            async move {
                let parent = e.delivery().and_then(|d| d.headers().get("traceparent"));
                seen.lock()
                    .unwrap()
                    .insert("billed", parent.unwrap_or("").to_owned());
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();

    let request = tracing::info_span!("request", otel.kind = "server");
    bus.producer()
        .send(
            topic,
            &OrderPlaced {
                order: Order { id: 7 },
            },
        )
        .instrument(request)
        .await
        .unwrap();
    eventually("both receivers", || seen.lock().unwrap().len() == 2).await;
    orders.shutdown().await.unwrap();
    receipts.shutdown().await.unwrap();
    bus.close().await.unwrap();

    let by_topic = |name: &str, t: &str| {
        let matching: Vec<Exported> = collector
            .named(name)
            .into_iter()
            .filter(|s| {
                s.attributes
                    .get("messaging.destination.name")
                    .map(String::as_str)
                    == Some(t)
            })
            .collect();
        matching
    };
    let mut found = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while found.is_none() {
        otlp.flush().unwrap();
        let spans = (
            by_topic(&format!("publish {topic}"), topic),
            by_topic(&format!("process {topic}"), topic),
            by_topic(&format!("publish {billing}"), &billing),
            by_topic(&format!("process {billing}"), &billing),
        );
        if let ([a], [b], [c], [d]) = (&spans.0[..], &spans.1[..], &spans.2[..], &spans.3[..]) {
            found = Some((a.clone(), b.clone(), c.clone(), d.clone()));
        } else {
            assert!(Instant::now() < deadline, "spans not exported: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (publish, process, republish, reprocess) = found.unwrap();
    let requests: Vec<Exported> = collector
        .named("request")
        .into_iter()
        .filter(|r| r.span_id == publish.parent_span_id)
        .collect();
    assert_eq!(
        requests.len(),
        1,
        "the application's span is the publish's parent"
    );
    let trace = &requests[0].trace_id;

    // One trace, each span the parent of the next.
    for span in [&publish, &process, &republish, &reprocess] {
        assert_eq!(&span.trace_id, trace, "{span:#?}");
        assert_eq!(span.service, "otlp-test");
        assert_eq!(
            span.attributes.get("messaging.system").map(String::as_str),
            Some(bus_backend(url))
        );
    }
    assert_eq!(process.parent_span_id, publish.span_id);
    assert_eq!(republish.parent_span_id, process.span_id);
    assert_eq!(reprocess.parent_span_id, republish.span_id);
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    assert_eq!(process.kind, SpanKind::Consumer as i32);
    assert_eq!(
        process
            .attributes
            .get("messaging.consumer.group.name")
            .map(String::as_str),
        Some("billing")
    );
    assert_eq!(
        process
            .attributes
            .get("eventbus.outcome")
            .map(String::as_str),
        Some("handled")
    );

    // What each receiver found in its message's headers names the exported publish span.
    let seen = seen.lock().unwrap();
    assert_eq!(seen["placed"], format!("00-{trace}-{}-01", publish.span_id));
    assert_eq!(
        seen["billed"],
        format!("00-{trace}-{}-01", republish.span_id)
    );
}

fn bus_backend(url: &str) -> &'static str {
    if url.starts_with("redis") {
        "redis"
    } else {
        "memory"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_the_bus_on_memory() {
    one_trace_across_the_bus("memory://otlp", "otlp-memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_the_bus_on_redis() {
    let server = BrokerProcess::start(BrokerSpec::redis()).await.unwrap();
    one_trace_across_the_bus(&format!("redis://{}", server.addr()), "otlp-redis").await;
}
