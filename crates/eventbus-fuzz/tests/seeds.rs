//! Writes the seed corpora of `fuzz/corpus/<target>/` from real encodings: events through the
//! project's serializers, headers as producers write them, Redis replies and Pulsar frames as
//! servers send them, configurations as the tests use them.
//!
//! Run it when a target or a wire format changes (`cargo test -p eventbus-fuzz --test seeds --
//! --ignored`), then minimise the corpora with `scripts/fuzz.sh`'s merge; it only adds or
//! overwrites files named `seed-*`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use eventbus_core::schema::Bytes;
use eventbus_core::serializer::{encode_event, KeyContext};
use eventbus_core::{Event, EventMetadata, Headers, Serializer};
use eventbus_fuzz::events::{self, v0, v1, Catalog, CourseData, CourseEnrollmentCreated};
use eventbus_fuzz::events::{CourseEnrollmentData, Item, Shelf, TOPIC};
use eventbus_testkit::openedx::{
    sample_login, SessionLoginCompleted, UserData, UserPersonalData, SAMPLE_LOGIN_DATUM,
    SAMPLE_LOGIN_HEADERS,
};
use eventbus_testkit::pulsar_proxy::__fuzz;

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn catalog() -> Catalog {
    Catalog {
        id: "6f5a0d0e-2f1c-4a57-9d7e-0b1f7f5d2c11".parse().unwrap(),
        at: "2026-11-22T05:20:27.505586Z".parse().unwrap(),
        active: true,
        ratio: 0.25,
        count: -42,
        tags: vec!["a".into(), "bb".into()],
        counts: BTreeMap::from([("x".into(), 1), ("y".into(), -300)]),
        blob: Bytes(vec![0, 1, 2, 255]),
        note: Some("note".into()),
        items: vec![item("sku-1", Some(9.5)), item("sku-2", None)],
        matrix: vec![vec![Some(1), None], vec![], vec![Some(-1)]],
        groups: BTreeMap::from([(
            "g".into(),
            vec![BTreeMap::from([
                ("on".into(), Some(true)),
                ("off".into(), None),
            ])],
        )]),
    }
}

fn item(sku: &str, price: Option<f64>) -> Item {
    Item {
        sku: sku.into(),
        quantity: 3,
        price,
        labels: BTreeMap::from([("colour".into(), "red".into())]),
    }
}

fn shelf() -> Shelf {
    Shelf {
        items: vec![item("sku-1", Some(9.5)), item("sku-2", None)],
        featured: Some(item("sku-3", Some(1.0))),
        sections: BTreeMap::from([("top".into(), vec![item("sku-4", None)])]),
    }
}

fn empty_catalog() -> Catalog {
    Catalog {
        tags: vec![],
        counts: BTreeMap::new(),
        blob: Bytes(vec![]),
        note: None,
        items: vec![],
        matrix: vec![],
        groups: BTreeMap::new(),
        ..catalog()
    }
}

fn enrollment(created_by: bool) -> CourseEnrollmentCreated {
    let user = UserData {
        id: 42,
        is_active: true,
        pii: UserPersonalData {
            username: "ada".into(),
            email: "ada@example.org".into(),
            name: "Ada Lovelace".into(),
        },
    };
    CourseEnrollmentCreated {
        enrollment: CourseEnrollmentData {
            user: user.clone(),
            course: CourseData {
                course_key: "course-v1:edX+DemoX+Demo_Course".into(),
                display_name: "Demo".into(),
                start: Some("2026-01-01T00:00:00Z".parse().unwrap()),
                end: None,
            },
            mode: "audit".into(),
            is_active: true,
            creation_date: "2026-11-22T05:20:27.505586Z".parse().unwrap(),
            created_by: created_by.then_some(user),
        },
    }
}

/// Every event seed, encoded with `serializer`.
fn encoded_events(serializer: &dyn Serializer) -> Vec<(&'static str, Vec<u8>)> {
    let v0 = v0::ProfileUpdated {
        user_id: 7,
        name: "Ada".into(),
    };
    let v1 = v1::ProfileUpdated {
        user_id: 8,
        name: "Bob".into(),
        locale: Some("fr".into()),
    };
    vec![
        (
            "catalog",
            encode_event(serializer, TOPIC, &catalog()).unwrap(),
        ),
        (
            "catalog-empty",
            encode_event(serializer, TOPIC, &empty_catalog()).unwrap(),
        ),
        ("shelf", encode_event(serializer, TOPIC, &shelf()).unwrap()),
        (
            "enrollment",
            encode_event(serializer, TOPIC, &enrollment(true)).unwrap(),
        ),
        (
            "enrollment-no-creator",
            encode_event(serializer, TOPIC, &enrollment(false)).unwrap(),
        ),
        ("profile-v0", encode_event(serializer, TOPIC, &v0).unwrap()),
        ("profile-v1", encode_event(serializer, TOPIC, &v1).unwrap()),
    ]
}

#[test]
#[ignore = "writes the seed corpora into fuzz/corpus/"]
fn write_seeds() {
    // Avro datums, and the Open edX login as the Python producer writes it.
    for (name, bytes) in encoded_events(events::avro()) {
        write("avro_datum", name, &bytes);
    }
    write("avro_datum", "openedx-login", SAMPLE_LOGIN_DATUM);
    let login = encode_event(events::avro(), TOPIC, &sample_login()).unwrap();
    assert_eq!(login, SAMPLE_LOGIN_DATUM);

    // Confluent-framed payloads and keys.
    let confluent = events::confluent();
    for (name, bytes) in encoded_events(confluent) {
        write("confluent_frame", name, &bytes);
    }
    let key = |event_type, schema, field, text| {
        let ctx = KeyContext {
            topic: TOPIC,
            event_type,
            schema,
            field: Some(field),
        };
        confluent.encode_key(text, &ctx).unwrap()
    };
    write(
        "confluent_frame",
        "key-long",
        &key(
            CourseEnrollmentCreated::EVENT_TYPE,
            CourseEnrollmentCreated::schema().unwrap(),
            "enrollment.user.id",
            "42",
        ),
    );
    write(
        "confluent_frame",
        "key-string",
        &key(
            Catalog::EVENT_TYPE,
            Catalog::schema().unwrap(),
            "id",
            "6f5a0d0e-2f1c-4a57-9d7e-0b1f7f5d2c11",
        ),
    );
    write("confluent_frame", "key-text", b"course-v1:edX+A+B");

    // CloudEvents headers: Open edX's, ours, and unusable ones.
    let encode_headers = |pairs: &[(&str, &[u8])]| {
        let parts: Vec<Vec<u8>> = pairs
            .iter()
            .map(|(n, v)| [n.as_bytes(), &[1], v].concat())
            .collect();
        parts.join(&[0u8][..])
    };
    let open_edx: Vec<(&str, &[u8])> = SAMPLE_LOGIN_HEADERS
        .iter()
        .map(|(n, v)| (*n, v.as_bytes()))
        .collect();
    write("cloudevents_headers", "openedx", &encode_headers(&open_edx));
    let mut meta = EventMetadata::new(
        SessionLoginCompleted::EVENT_TYPE,
        3,
        "openedx/lms/web",
        "web-1",
    );
    meta.content_type = "application/avro".into();
    let mut headers = Headers::new();
    meta.write_headers(&mut headers);
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    let ours: Vec<(&str, &[u8])> = headers.iter().collect();
    write("cloudevents_headers", "eventbus", &encode_headers(&ours));
    write(
        "cloudevents_headers",
        "two-types",
        &encode_headers(&[
            ("ce_id", b"6f5a0d0e-2f1c-4a57-9d7e-0b1f7f5d2c11"),
            ("ce_type", b"a"),
            ("ce_type", b"b"),
        ]),
    );
    write(
        "cloudevents_headers",
        "offset-time",
        &encode_headers(&[
            ("ce_id", b"6f5a0d0e-2f1c-4a57-9d7e-0b1f7f5d2c11"),
            ("ce_type", b"t"),
            ("ce_time", b"2026-11-22T05:20:27.5+05:30"),
            ("ce_minorversion", b"12"),
        ]),
    );

    // Redis replies, RESP2 and RESP3.
    let login_fields: Vec<(&str, &[u8])> = vec![
        ("id", b"6f5a0d0e-2f1c-4a57-9d7e-0b1f7f5d2c11"),
        ("type", SessionLoginCompleted::EVENT_TYPE.as_bytes()),
        ("source", b"openedx/lms/web"),
        ("time", b"2026-11-22T05:20:27.505586+00:00"),
        ("minorversion", b"0"),
        ("sourcehost", b"edx.devstack.lms"),
        ("sourcelib", b"10.5.0"),
        ("key", b"7"),
        ("event_data", SAMPLE_LOGIN_DATUM),
    ];
    let entry = |id: &str| {
        let mut fields = Vec::new();
        for (name, value) in &login_fields {
            fields.push(bulk(name.as_bytes()));
            fields.push(bulk(value));
        }
        array(&[bulk(id.as_bytes()), array(&fields)])
    };
    let entries = array(&[entry("1700000000000-0"), entry("1700000000001-3")]);
    let stream = bulk(b"dev-user-login");
    write(
        "redis_reply",
        "xreadgroup-resp2",
        &array(&[array(&[stream.clone(), entries.clone()])]),
    );
    write(
        "redis_reply",
        "xreadgroup-resp3",
        &[b"%1\r\n".as_slice(), &stream, &entries].concat(),
    );
    write("redis_reply", "xreadgroup-timeout", b"*-1\r\n");
    write("redis_reply", "xclaim", &entries);
    write(
        "redis_reply",
        "xautoclaim",
        &array(&[
            bulk(b"0-0"),
            array(&[entry("1-0"), array(&[bulk(b"1-1"), b"_\r\n".to_vec()])]),
            array(&[bulk(b"1-2")]),
        ]),
    );

    // Pulsar frames from the broker.
    let message = [
        0x08, 0x09, 0x4a, 0x08, 0x08, 0x01, 0x12, 0x04, 0x08, 0x05, 0x10, 0x07,
    ];
    let metadata = [
        &7u32.to_be_bytes()[..],
        &[0x0a, 0x01, b'p', 0x10, 0x00, 0x18, 0x01],
    ]
    .concat();
    let rest = [metadata.as_slice(), SAMPLE_LOGIN_DATUM].concat();
    let unchecked = pulsar_frame(&message, &rest);
    write("pulsar_frame", "message-without-checksum", &unchecked);
    let crc = [0x0e, 0x01, 0x12, 0x34, 0x56, 0x78];
    write(
        "pulsar_frame",
        "message-with-checksum",
        &pulsar_frame(&message, &[&crc[..], &rest].concat()),
    );
    let url = b"pulsar://127.0.0.1:6651";
    let mut response = [&[0x0a, url.len() as u8][..], url].concat();
    response.extend([0x12, url.len() as u8]);
    response.extend(url);
    response.extend([0x18, 0x01, 0x20, 0xac, 0x02, 0x28, 0x01, 0x40, 0x00]);
    let lookup = [
        &[0x08, 0x18, 0xc2, 0x01, response.len() as u8][..],
        &response,
    ]
    .concat();
    write(
        "pulsar_frame",
        "lookup-response",
        &pulsar_frame(&lookup, &[]),
    );
    let connected = [0x08, 0x03, 0x1a, 0x06, 0x0a, 0x02, b'2', b'.', 0x10, 0x15];
    let ping = [0x08, 0x12, 0x92, 0x01, 0x00];
    write(
        "pulsar_frame",
        "connected-ping-message",
        &[
            pulsar_frame(&connected, &[]),
            pulsar_frame(&ping, &[]),
            unchecked,
        ]
        .concat(),
    );

    // Configurations: `NAME \x01 VALUE` pairs separated by `\x00`.
    let config = |pairs: &[(&str, &str)]| {
        let parts: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}\u{1}{v}")).collect();
        parts.join("\0").into_bytes()
    };
    write(
        "config_url",
        "open-edx-redis",
        &config(&[
            ("EVENT_BUS_PRODUCER", "edx_event_bus_redis.create_producer"),
            (
                "EVENT_BUS_CONSUMER",
                "edx_event_bus_redis.RedisEventConsumer",
            ),
            (
                "EVENT_BUS_REDIS_CONNECTION_URL",
                "redis://u:hunter22@127.0.0.1:6379/0",
            ),
            ("EVENT_BUS_TOPIC_PREFIX", "dev"),
            ("EVENT_BUS_REDIS_STREAM_MAX_LEN", "50"),
            ("EVENT_BUS_REDIS_CONSUMER_POLL_TIMEOUT", "1"),
        ]),
    );
    write(
        "config_url",
        "routing-and-consumer",
        &config(&[
            (
                "EVENT_BUS_URL",
                "rediss://:s3cr3t-pw@redis.example.org:6380/2#insecure",
            ),
            (
                "EVENT_BUS_PRODUCER_CONFIG",
                r#"{"org.openedx.learning.auth.session.login.completed.v1": {"user-login": {"event_key_field": "user.id", "enabled": true}}}"#,
            ),
            ("EVENT_BUS_SERIALIZER", "confluent-avro"),
            ("EVENT_BUS_CONSUMER_MAX_ATTEMPTS", "5"),
            ("EVENT_BUS_CONSUMER_UNKNOWN_EVENT_TYPES", "skip"),
            ("EVENT_BUS_CONSUMER_HANDLER_TIMEOUT_MS", "250"),
            ("EVENT_BUS_KAFKA_API_SECRET", "hunter22"),
        ]),
    );
    write(
        "config_url",
        "kafka-by-scheme",
        &config(&[
            ("EVENT_BUS_URL", "kafka://a:9092,b:9092"),
            ("EVENT_BUS_BACKEND", "kafka"),
        ]),
    );
    // Values by place: EVENT_BUS_URL, EVENT_BUS_BACKEND.
    write("config_url", "by-place", b"redis://127.0.0.1:6379\0redis");

    // The seeds reach deep: they decode, parse and get fixed, as real traffic does.
    let read = eventbus_redis::__fuzz::read_reply(
        redis::parse_redis_value(&array(&[array(&[stream, entries])])).unwrap(),
    )
    .unwrap();
    assert_eq!(read[0].1.len(), 2);
    assert_eq!(read[0].1[0].1.payload.as_ref(), SAMPLE_LOGIN_DATUM);
    let mut buf = bytes::BytesMut::from(pulsar_frame(&message, &rest).as_slice());
    let frame = __fuzz::take_frame(&mut buf).unwrap().unwrap();
    let fixed = __fuzz::fix_frame(&frame, "pulsar://127.0.0.1:1").unwrap();
    assert!(matches!(fixed, __fuzz::Fix::Checksummed(_)), "{fixed:?}");
    let mut buf = bytes::BytesMut::from(pulsar_frame(&lookup, &[]).as_slice());
    let frame = __fuzz::take_frame(&mut buf).unwrap().unwrap();
    let fixed = __fuzz::fix_frame(&frame, "pulsar://127.0.0.1:1").unwrap();
    assert!(
        matches!(fixed, __fuzz::Fix::LookupRewritten(_)),
        "{fixed:?}"
    );
}

fn bulk(data: &[u8]) -> Vec<u8> {
    [format!("${}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat()
}

fn array(items: &[Vec<u8>]) -> Vec<u8> {
    [format!("*{}\r\n", items.len()).into_bytes(), items.concat()].concat()
}

fn pulsar_frame(command: &[u8], rest: &[u8]) -> Vec<u8> {
    let total = (4 + command.len() + rest.len()) as u32;
    let size = command.len() as u32;
    [&total.to_be_bytes()[..], &size.to_be_bytes(), command, rest].concat()
}
