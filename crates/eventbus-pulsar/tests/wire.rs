//! What crosses the wire on Pulsar: an event we publish is read by a plain `pulsar` consumer as
//! Open edX's attributes in properties, the key as partition key and the bare Avro datum as
//! payload; a message written that way by another client is consumed as the typed event. Also
//! the errors a user meets first: an unreachable broker and a header Pulsar cannot carry.

use std::collections::BTreeMap;
use std::time::Duration;

use eventbus::{BusConfig, Envelope, ErrorKind, Message};
use eventbus_pulsar::PulsarSettings;
use eventbus_testkit::fixture::RefusingPort;
use eventbus_testkit::openedx::{
    assert_published_login_headers, assert_sample_login, sample_login, SessionLoginCompleted,
    SAMPLE_LOGIN_DATUM, SAMPLE_LOGIN_HEADERS,
};
use eventbus_testkit::pulsar_proxy::PulsarLite;
use futures::StreamExt;
use pulsar::consumer::InitialPosition;
use pulsar::{ConsumerOptions, Pulsar, SubType, TokioExecutor};
use tokio::sync::mpsc;

const TOPIC: &str = "persistent://public/default/dev-user-login";

async fn started() -> PulsarLite {
    PulsarLite::start()
        .await
        .expect("start pulsar-lite (pip install pulsar-lite)")
}

async fn bus(lite: &PulsarLite) -> eventbus::Bus {
    eventbus::connect(
        BusConfig::new()
            .url(lite.url())
            .topic_prefix("dev")
            .service_name("lms"),
    )
    .await
    .expect("connect to pulsar-lite")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_event_has_open_edx_properties_key_and_datum() {
    let lite = started().await;
    let bus = bus(&lite).await;
    bus.producer()
        .send("user-login", &sample_login())
        .await
        .unwrap();

    let client = Pulsar::builder(lite.url(), TokioExecutor)
        .build()
        .await
        .unwrap();
    let mut consumer: pulsar::Consumer<Vec<u8>, TokioExecutor> = client
        .consumer()
        .with_topic(TOPIC)
        .with_subscription("wire-reader")
        .with_subscription_type(SubType::Exclusive)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(15), consumer.next())
        .await
        .expect("a message in time")
        .unwrap()
        .unwrap();
    consumer.ack(&message).await.unwrap();

    let properties: BTreeMap<String, String> = message
        .metadata()
        .properties
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    assert_published_login_headers(&properties);
    // Open edX's login event has no key field.
    assert_eq!(message.key(), None);
    assert_eq!(message.payload.data, SAMPLE_LOGIN_DATUM);

    // A message key is the partition key, which Key_Shared groups and partitions go by.
    let keyed = Message {
        key: Some("7".into()),
        ..Message::default()
    };
    bus.transport()
        .publisher
        .publish("dev-user-login", vec![keyed])
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(15), consumer.next())
        .await
        .expect("the keyed message in time")
        .unwrap()
        .unwrap();
    assert_eq!(message.key().as_deref(), Some("7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_written_by_another_client_is_consumed_as_the_typed_event() {
    let lite = started().await;
    let bus = bus(&lite).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let consumer = bus
        .consumer("user-login", "wire-test")
        .handle(move |e: Envelope<SessionLoginCompleted>| {
            let tx = tx.clone();
            async move { tx.send(e).map_err(|_| std::io::Error::other("test over")) }
        })
        .start()
        .await
        .unwrap();

    let client = Pulsar::builder(lite.url(), TokioExecutor)
        .build()
        .await
        .unwrap();
    let mut producer = client.producer().with_topic(TOPIC).build().await.unwrap();
    let properties = SAMPLE_LOGIN_HEADERS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let message = pulsar::producer::Message {
        payload: SAMPLE_LOGIN_DATUM.to_vec(),
        properties,
        partition_key: Some("7".into()),
        ..Default::default()
    };
    producer
        .send_non_blocking(message)
        .await
        .unwrap()
        .await
        .unwrap();

    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("consumed in time")
        .unwrap();
    assert_sample_login(&got);
    consumer.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_broker_is_a_temporary_connection_error_naming_it() {
    let refusing = RefusingPort::new().unwrap();
    let port = refusing.port();
    let mut settings = PulsarSettings::new(format!("pulsar://127.0.0.1:{port}"));
    settings.connect_timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let err = eventbus_pulsar::connect(settings).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert!(err.is_temporary());
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_header_is_refused_before_it_reaches_the_broker() {
    let lite = started().await;
    let transport = eventbus_pulsar::connect(PulsarSettings::new(lite.url()))
        .await
        .unwrap();
    let mut message = Message::default();
    message.headers.append("ce_type", "a.v1");
    message.headers.append("ce_type", "b.v1");
    let err = transport
        .publisher
        .publish("repeated", vec![message])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidHeaders);
    assert!(err.to_string().contains("ce_type"), "{err}");
}
