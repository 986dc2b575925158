//! Layers, trace propagation, metrics and health end to end, on memory and on a real Redis (here,
//! not in the facade, so the facade needs no test fixtures and the quickstart builds without them):
//! a custom producer layer adds a header, a custom consumer layer sees it, the consumer's span
//! continues the producer's trace, a forced failure is retried then dead-lettered in the metrics
//! scraped over HTTP, and `/health/ready` follows the broker going away and coming back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use eventbus::consumer::{Context, Layer, Next, Outcome};
use eventbus::producer::{Outgoing, PublishLayer, PublishNext};
use eventbus::{async_trait, AvroRecord, BusConfig, Envelope, Event, Position, Result};
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};

#[derive(Debug, Clone, Serialize, Deserialize, AvroRecord)]
struct Probe {
    n: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.observability.ping.v1", minor_version = 0)]
struct Ping {
    probe: Probe,
    fail: bool,
}

/// Adds `tenant: acme` to every outgoing message.
struct AddTenant;

#[async_trait]
impl PublishLayer for AddTenant {
    fn name(&self) -> &str {
        "add-tenant"
    }
    async fn publish(&self, out: &mut Outgoing, next: PublishNext<'_>) -> Result<Vec<Position>> {
        for message in &mut out.messages {
            message.headers.insert("tenant", "acme");
        }
        next.run(out).await
    }
}

/// What the consumer layer saw: the tenant and traceparent headers of each delivery.
/// The `tenant` and `traceparent` headers of one delivery.
type HeadersSeen = (Option<String>, Option<String>);

#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Vec<HeadersSeen>>>);

#[async_trait]
impl Layer for Seen {
    fn name(&self) -> &str {
        "seen"
    }
    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        let tenant = ctx.headers().get("tenant").map(str::to_owned);
        let parent = ctx.headers().get("traceparent").map(str::to_owned);
        self.0.lock().unwrap().push((tenant, parent));
        next.run(ctx).await
    }
}

/// Spans by name with their fields, as a tracing subscriber layer records them.
/// A span's name and fields.
type SpanRecord = (String, HashMap<String, String>);

#[derive(Default, Clone)]
struct Spans(Arc<Mutex<HashMap<u64, SpanRecord>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: LayerContext<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0
            .lock()
            .unwrap()
            .insert(id.into_u64(), (attrs.metadata().name().to_owned(), fields));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: LayerContext<'_, S>) {
        if let Some((_, fields)) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
}

impl Spans {
    fn find(&self, name: &str, topic: &str) -> Vec<HashMap<String, String>> {
        self.0
            .lock()
            .unwrap()
            .values()
            .filter(|(n, f)| {
                n == name && f.get("messaging.destination.name").map(String::as_str) == Some(topic)
            })
            .map(|(_, f)| f.clone())
            .collect()
    }
}

fn spans() -> &'static Spans {
    static SPANS: OnceLock<Spans> = OnceLock::new();
    SPANS.get_or_init(|| {
        let spans = Spans::default();
        let subscriber = tracing_subscriber::registry().with(spans.clone());
        tracing::subscriber::set_global_default(subscriber)
            .expect("one subscriber per test binary");
        // The recorder goes in before any bus is built: metric handles are kept per topic.
        eventbus::telemetry::prometheus().expect("the Prometheus recorder installs");
        spans
    })
}

/// A plain HTTP/1.1 GET: status code and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the series `name` whose labels include every one of `labels`.
fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn layers_traces_and_metrics(url: &str, topic: &str) {
    let spans = spans();
    eventbus::link_backends();
    let bus = eventbus::connect(BusConfig::new().url(url))
        .await
        .unwrap()
        .producer_layer(AddTenant);
    let endpoint = eventbus::telemetry::serve("127.0.0.1:0", bus.health().clone())
        .await
        .unwrap();
    let seen = Seen::default();
    let consumer = bus
        .consumer(topic, "observers")
        .name("observer-1")
        .configure(|s| {
            s.retry.max_attempts = 2;
            s.retry.base = Duration::from_millis(10);
        })
        .layer(seen.clone())
        .handle(|e: Envelope<Ping>| async move {
            if e.fail {
                Err::<(), _>(std::io::Error::other("forced failure"))
            } else {
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let producer = bus.producer();
    producer
        .send(
            topic,
            &Ping {
                probe: Probe { n: 1 },
                fail: false,
            },
        )
        .await
        .unwrap();
    producer
        .send(
            topic,
            &Ping {
                probe: Probe { n: 2 },
                fail: true,
            },
        )
        .await
        .unwrap();

    let addr = endpoint.local_addr();
    let body = Arc::new(Mutex::new(String::new()));
    eventually(
        "the dead letter in /metrics",
        Duration::from_secs(20),
        || {
            let body = Arc::clone(&body);
            async move {
                let (status, text) = get(addr, "/metrics").await;
                assert_eq!(status, 200, "{text}");
                let done = metric(
                    &text,
                    "eventbus_dead_lettered_total",
                    &[("topic", topic), ("reason", "receiver-failed")],
                )
                .is_some();
                *body.lock().unwrap() = text;
                done
            }
        },
    )
    .await;
    let text = body.lock().unwrap().clone();
    let series = [("topic", topic), ("group", "observers")];
    assert_eq!(
        metric(&text, "eventbus_consumed_total", &series),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "eventbus_handled_total", &series),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "eventbus_retried_total", &series),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "eventbus_dead_lettered_total",
            &[
                ("topic", topic),
                ("group", "observers"),
                ("reason", "receiver-failed")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "eventbus_published_total", &[("topic", topic)]),
        Some(2.0),
        "{text}"
    );
    assert!(
        text.contains("eventbus_handler_duration_seconds_bucket"),
        "{text}"
    );
    // The handled event's age since its `ce_time`, once.
    assert_eq!(
        metric(&text, "eventbus_end_to_end_latency_seconds_count", &series),
        Some(1.0),
        "{text}"
    );

    // The consumer layer saw the producer layer's header on every attempt (2 + 1 retry).
    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen.iter()
            .all(|(tenant, _)| tenant.as_deref() == Some("acme")),
        "{seen:?}"
    );

    // Each process span continues its publish span: same trace, parent = the publish span.
    let publishes = spans.find("publish", topic);
    let processes = spans.find("process", topic);
    assert_eq!(publishes.len(), 2, "{publishes:?}");
    assert_eq!(processes.len(), 2, "{processes:?}");
    for process in &processes {
        let publish = publishes
            .iter()
            .find(|p| p["trace_id"] == process["trace_id"])
            .unwrap_or_else(|| panic!("no publish span in the trace of {process:?}"));
        assert_eq!(
            process["parent_span_id"], publish["span_id"],
            "{process:?} {publish:?}"
        );
        assert_eq!(process["messaging.consumer.group.name"], "observers");
        // The header the consumer saw is the publish span's context.
        let traceparent = format!("00-{}-{}-01", publish["trace_id"], publish["span_id"]);
        assert!(
            seen.iter()
                .any(|(_, p)| p.as_deref() == Some(traceparent.as_str())),
            "{traceparent} {seen:?}"
        );
    }
    // The dead letter is published from inside the failed delivery's span: same trace again.
    let dead = spans.find("publish", &format!("{topic}.dlq"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        processes
            .iter()
            .any(|p| p["trace_id"] == dead[0]["trace_id"]
                && p["span_id"] == dead[0]["parent_span_id"]),
        "{dead:?} {processes:?}"
    );

    consumer.shutdown().await.unwrap();
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_traces_and_metrics_on_memory() {
    layers_traces_and_metrics("memory://observability", "obs-memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_traces_and_metrics_on_redis() {
    let server = BrokerProcess::start(BrokerSpec::redis()).await.unwrap();
    layers_traces_and_metrics(&format!("redis://{}", server.addr()), "obs-redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker_of_a_running_consumer() {
    spans();
    let mut server = BrokerProcess::start(BrokerSpec::redis()).await.unwrap();
    let bus = eventbus::connect(BusConfig::new().url(format!("redis://{}", server.addr())))
        .await
        .unwrap();
    let endpoint = eventbus::telemetry::serve("127.0.0.1:0", bus.health().clone())
        .await
        .unwrap();
    let addr = endpoint.local_addr();
    let (status, body) = get(addr, "/health/live").await;
    assert_eq!(status, 200, "{body}");

    let consumer = bus
        .consumer("obs-health", "health")
        .name("health-1")
        .handle(|_: Envelope<Ping>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .unwrap();
    eventually(
        "ready with a running consumer",
        Duration::from_secs(10),
        || async { get(addr, "/health/ready").await.0 == 200 },
    )
    .await;
    let (_, body) = get(addr, "/health/ready").await;
    assert!(body.contains("consumer health/health-1: ok"), "{body}");

    server.stop().await.unwrap();
    eventually(
        "not ready while the broker is stopped",
        Duration::from_secs(10),
        || async { get(addr, "/health/ready").await.0 == 503 },
    )
    .await;
    let (_, body) = get(addr, "/health/ready").await;
    assert!(body.contains("FAIL"), "{body}");

    server.restart().await.unwrap();
    eventually(
        "ready again after the restart",
        Duration::from_secs(30),
        || async { get(addr, "/health/ready").await.0 == 200 },
    )
    .await;
    assert!(!consumer.is_finished());
    consumer.shutdown().await.unwrap();
    endpoint.shutdown().await;
}
