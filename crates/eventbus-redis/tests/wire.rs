//! Wire compatibility with Open edX's `edx-event-bus-redis`: an entry laid out field by field as
//! the Python producer writes it is consumed as the right typed event, and an event published
//! here is an entry with exactly Open edX's fields and an `event_data` the schema decodes.

use std::collections::BTreeMap;
use std::time::Duration;

mod support;
use support::raw;

use eventbus::{BusConfig, Envelope, Event};
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use eventbus_testkit::openedx::{
    sample_login as ada, SessionLoginCompleted, SAMPLE_LOGIN_DATUM as ADA_DATUM,
};
use tokio::sync::mpsc;

const OPEN_EDX_FIELDS: [&str; 8] = [
    "type",
    "id",
    "source",
    "time",
    "minorversion",
    "sourcehost",
    "sourcelib",
    "event_data",
];

async fn bus(server: &BrokerProcess) -> eventbus::Bus {
    eventbus::connect(
        BusConfig::new()
            .url(format!("redis://{}", server.addr()))
            .topic_prefix("dev")
            .service_name("lms"),
    )
    .await
    .expect("connect to the fixture's redis-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_written_as_open_edx_does_is_consumed_as_the_typed_event() {
    let server = BrokerProcess::start(BrokerSpec::redis()).await.unwrap();
    let bus = bus(&server).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let consumer = bus
        .consumer("user-login", "wire-test")
        .handle(move |e: Envelope<SessionLoginCompleted>| {
            let tx = tx.clone();
            async move { tx.send(e).map_err(|_| std::io::Error::other("test ended")) }
        })
        .start()
        .await
        .unwrap();

    // What edx-event-bus-redis 0.6 sends for prefix `dev` and topic `user-login`.
    let _: String = redis::cmd("XADD")
        .arg("dev-user-login")
        .arg("*")
        .arg("type")
        .arg(SessionLoginCompleted::EVENT_TYPE)
        .arg("id")
        .arg("6f5a0d0e-2f1c-4a57-9d7e-0b1f7f5d2c11")
        .arg("source")
        .arg("openedx/lms/web")
        .arg("time")
        .arg("2026-11-22T05:20:27.505586+00:00")
        .arg("minorversion")
        .arg("0")
        .arg("sourcehost")
        .arg("edx.devstack.lms")
        .arg("sourcelib")
        .arg("10.5.0")
        .arg("event_data")
        .arg(ADA_DATUM)
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();

    let got = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("the entry was consumed within 15 s")
        .unwrap();
    assert_eq!(got.event(), &ada());
    let m = got.metadata();
    assert_eq!(m.id.to_string(), "6f5a0d0e-2f1c-4a57-9d7e-0b1f7f5d2c11");
    assert_eq!(m.source, "openedx/lms/web");
    assert_eq!(m.time_string(), "2026-11-22T05:20:27.505586+00:00");
    assert_eq!(m.source_host, "edx.devstack.lms");
    assert_eq!(m.source_lib, "10.5.0");
    consumer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_event_has_exactly_open_edx_fields() {
    let server = BrokerProcess::start(BrokerSpec::redis()).await.unwrap();
    let bus = bus(&server).await;
    let position = bus.producer().send("user-login", &ada()).await.unwrap();

    let entries: Vec<(String, BTreeMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg("dev-user-login")
        .arg("-")
        .arg("+")
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    let [(id, fields)] = entries.as_slice() else {
        panic!("expected one entry, got {entries:?}")
    };
    assert_eq!(position.to_string(), *id);
    // Open edX's fields, and the publish span's traceparent, which Open edX consumers pass over.
    let mut names: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|n| *n != "traceparent")
        .collect();
    let mut want = OPEN_EDX_FIELDS.to_vec();
    names.sort_unstable();
    want.sort_unstable();
    assert_eq!(names, want, "the entry's fields");
    eventbus_testkit::openedx::assert_traceparent(
        fields
            .get("traceparent")
            .map(|v| std::str::from_utf8(v).unwrap()),
    );

    let text = |f: &str| String::from_utf8(fields[f].clone()).unwrap();
    assert_eq!(text("type"), SessionLoginCompleted::EVENT_TYPE);
    assert!(uuid::Uuid::parse_str(&text("id")).is_ok(), "{}", text("id"));
    assert_eq!(text("source"), "openedx/lms/web");
    assert_eq!(text("minorversion"), "0");
    // Python's isoformat: microseconds and an explicit +00:00.
    let time = text("time");
    assert!(
        chrono::DateTime::parse_from_rfc3339(&time).is_ok(),
        "{time}"
    );
    assert!(time.ends_with("+00:00") && time.len() == 32, "{time}");

    assert_eq!(fields["event_data"], ADA_DATUM, "the bare Avro datum");
    let schema = SessionLoginCompleted::schema().unwrap().avro();
    let value = apache_avro::from_avro_datum(schema, &mut &fields["event_data"][..], None).unwrap();
    let decoded: SessionLoginCompleted = apache_avro::from_value(&value).unwrap();
    assert_eq!(decoded, ada());
}
