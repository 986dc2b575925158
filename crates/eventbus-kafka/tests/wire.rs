//! Wire compatibility with Open edX's `edx-event-bus-kafka`: what we publish carries the Open
//! edX headers and a Confluent-framed Avro value that decodes with the registered schema, and a
//! message laid out as the Python producer writes it is consumed as the typed event.

use std::collections::BTreeMap;
use std::time::Duration;

use eventbus::{BusConfig, Envelope, Event, Serializer as _};
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use eventbus_testkit::openedx::{
    assert_published_login_headers, assert_sample_login, sample_login, SessionLoginCompleted,
    SAMPLE_LOGIN_DATUM, SAMPLE_LOGIN_HEADERS,
};
use eventbus_testkit::registry::RegistryServer;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

const SUBJECT: &str =
    "dev-user-login-org.openedx.learning.auth.session.login.completed.v1.CloudEvent";

async fn bus(broker: &BrokerProcess, registry: &RegistryServer) -> eventbus::Bus {
    eventbus::connect(
        BusConfig::new()
            .url(format!("kafka://{}", broker.addr()))
            .option("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL", registry.url())
            .option("EVENT_BUS_KAFKA_TOPIC_PARTITIONS", "1")
            // tansu 0.6 cannot fetch from inside a record batch (see tests/conformance.rs).
            .option("EVENT_BUS_KAFKA_PRODUCER_BATCH_NUM_MESSAGES", "1")
            .topic_prefix("dev")
            .service_name("lms"),
    )
    .await
    .expect("connect to tansu")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_event_has_open_edx_headers_and_a_framed_value() {
    let broker = BrokerProcess::start(BrokerSpec::tansu()).await.unwrap();
    let registry = RegistryServer::start().await.unwrap();
    let bus = bus(&broker, &registry).await;
    bus.producer()
        .send("user-login", &sample_login())
        .await
        .unwrap();

    let message = first_login_message(&broker, "wire-reader");

    let headers: BTreeMap<String, String> = message
        .headers()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h.key.to_owned(),
                String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
            )
        })
        .collect();
    assert_published_login_headers(&headers);
    assert_eq!(headers["ce_datacontenttype"], "application/avro");

    let value = message.payload().unwrap();
    assert_eq!(value[0], 0, "Confluent magic byte");
    let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
    assert_eq!(
        registry.subjects()[SUBJECT],
        vec![id],
        "registered under topic-record naming"
    );
    let schema = apache_avro::Schema::parse_str(&registry.schema(id).unwrap()).unwrap();
    assert_eq!(&value[5..], SAMPLE_LOGIN_DATUM);
    let decoded = apache_avro::from_avro_datum(&schema, &mut &value[5..], None).unwrap();
    let event: SessionLoginCompleted = apache_avro::from_value(&decoded).unwrap();
    assert_eq!(event, sample_login());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_written_as_open_edx_does_is_consumed_as_the_typed_event() {
    let broker = BrokerProcess::start(BrokerSpec::tansu()).await.unwrap();
    let registry = RegistryServer::start().await.unwrap();
    let bus = bus(&broker, &registry).await;
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

    // The Python producer registers the schema (openedx-events' own JSON) and frames the datum.
    let schema_json = SessionLoginCompleted::schema().unwrap().json().to_owned();
    let id: serde_json::Value = reqwest_register(&registry.url(), &schema_json).await;
    let id = id["id"].as_u64().unwrap() as u32;
    let mut value = vec![0u8];
    value.extend_from_slice(&id.to_be_bytes());
    value.extend_from_slice(SAMPLE_LOGIN_DATUM);
    let headers = SAMPLE_LOGIN_HEADERS
        .iter()
        .fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(*v),
            })
        });
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to("dev-user-login")
                .key("7")
                .payload(&value)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("consumed in time")
        .unwrap();
    assert_sample_login(&got);
    consumer.shutdown().await.unwrap();
}

/// The first message of `dev-user-login`, read by a plain rdkafka consumer in `group`.
fn first_login_message(broker: &BrokerProcess, group: &str) -> rdkafka::message::OwnedMessage {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("dev-user-login", 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    loop {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            break m.unwrap().detach();
        }
    }
}

/// `POST /subjects/{subject}/versions` the way the Python client does it.
async fn reqwest_register(url: &str, schema: &str) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("{url}/subjects/{SUBJECT}/versions"))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(&serde_json::json!({ "schema": schema }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Open edX's key for `event_key_field: user.id`, written out from the specifications: the key
/// schema `{"name": "id", "type": "long"}` is the first schema the fresh registry sees (the
/// Python producer serializes the key before the value), so it has id 1; Confluent framing is
/// the magic byte 0 and the id as four big-endian bytes; the Avro long 42 is zig-zag encoded
/// (42 × 2 = 84) as the one varint byte 0x54.
const OPEN_EDX_KEY_42: &[u8] = &[0x00, 0x00, 0x00, 0x00, 0x01, 0x54];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_written_as_open_edx_writes_them_and_read_in_both_forms() {
    let broker = BrokerProcess::start(BrokerSpec::tansu()).await.unwrap();
    let registry = RegistryServer::start().await.unwrap();
    let bus = bus(&broker, &registry).await;
    let producer = bus.producer();
    let mut login = sample_login();
    login.user.id = 42;
    let envelope = Envelope::new(login, producer.metadata::<SessionLoginCompleted>());
    producer
        .send_envelope("user-login", &envelope, Some("42"), Some("user.id"))
        .await
        .unwrap();

    assert_eq!(registry.subjects()["dev-user-login-long"], vec![1]);
    assert_eq!(
        registry.schema(1).unwrap(),
        r#"{"name": "id", "type": "long"}"#,
        "the key field's definition, as json.dumps(sort_keys=True) writes it"
    );
    assert_eq!(registry.subjects()[SUBJECT], vec![2]);

    let message = first_login_message(&broker, "key-reader");
    assert_eq!(message.key(), Some(OPEN_EDX_KEY_42), "byte for byte");
    assert_eq!(&message.payload().unwrap()[..5], &[0, 0, 0, 0, 2]);

    // Both forms read back as the key's text: framed Avro, once its schema is learnt by id (as
    // a consumer in another process learns it), and the UTF-8 text other producers write.
    let store = std::sync::Arc::new(eventbus::SchemaStore::new());
    let reader = eventbus::serializer::ConfluentAvroSerializer::new(store.clone());
    let unknown = reader.decode_key(OPEN_EDX_KEY_42).unwrap_err();
    assert!(unknown.is_temporary(), "{unknown}");
    eventbus::SchemaIds::new(store, registry_client(&registry))
        .learn(OPEN_EDX_KEY_42)
        .await
        .unwrap();
    assert_eq!(reader.decode_key(OPEN_EDX_KEY_42).unwrap(), "42");
    assert_eq!(reader.decode_key(b"42").unwrap(), "42");
}

fn registry_client(registry: &RegistryServer) -> std::sync::Arc<dyn eventbus::SchemaRegistry> {
    let settings = eventbus_kafka::RegistrySettings::new(registry.url());
    std::sync::Arc::new(eventbus_kafka::RegistryClient::new(settings).unwrap())
}
