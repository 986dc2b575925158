//! Events, schemas and serializers: the Open edX mapping, round trips in every format, and
//! readers one minor version behind or ahead.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::types::Value;
use chrono::{DateTime, Utc};
use eventbus_core::serializer::{
    confluent_subject, decode_event, encode_event, AvroSerializer, ConfluentAvroSerializer,
    JsonSerializer, SchemaContext,
};
use eventbus_core::{AvroRecord, Event, EventSchema, SchemaStore, Serializer};
use eventbus_testkit::openedx::{UserData, UserPersonalData};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroRecord)]
struct CourseData {
    course_key: String,
    display_name: String,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroRecord)]
struct CourseEnrollmentData {
    user: UserData,
    course: CourseData,
    mode: String,
    is_active: bool,
    creation_date: DateTime<Utc>,
    created_by: Option<UserData>,
}

/// Open edX's COURSE_ENROLLMENT_CREATED.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(
    type = "org.openedx.learning.course.enrollment.created.v1",
    key = "enrollment.user.id"
)]
struct CourseEnrollmentCreated {
    enrollment: CourseEnrollmentData,
}

/// The schema openedx-events 10.x generates for that signal (its test fixture
/// `org+openedx+learning+course+enrollment+created+v1_schema.avsc`), written out compactly.
const OPEN_EDX_ENROLLMENT_SCHEMA: &str = r#"{"name":"CloudEvent","type":"record","namespace":"org.openedx.learning.course.enrollment.created.v1",
 "fields":[{"name":"enrollment","type":{"name":"CourseEnrollmentData","type":"record","fields":[
  {"name":"user","type":{"name":"UserData","type":"record","fields":[{"name":"id","type":"long"},{"name":"is_active","type":"boolean"},
    {"name":"pii","type":{"name":"UserPersonalData","type":"record","fields":[{"name":"username","type":"string"},{"name":"email","type":"string"},{"name":"name","type":"string"}]}}]}},
  {"name":"course","type":{"name":"CourseData","type":"record","fields":[{"name":"course_key","type":"string"},{"name":"display_name","type":"string"},
    {"name":"start","type":["null","string"],"default":null},{"name":"end","type":["null","string"],"default":null}]}},
  {"name":"mode","type":"string"},{"name":"is_active","type":"boolean"},{"name":"creation_date","type":"string"},
  {"name":"created_by","type":["null","UserData"],"default":null}]}}]}"#;

fn enrollment() -> CourseEnrollmentCreated {
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
            created_by: Some(user),
        },
    }
}

#[test]
fn derived_schema_matches_open_edx() {
    let ours = CourseEnrollmentCreated::schema().unwrap();
    let theirs = EventSchema::parse(OPEN_EDX_ENROLLMENT_SCHEMA).unwrap();
    assert_eq!(ours.avro().canonical_form(), theirs.avro().canonical_form());
    let json: serde_json::Value = serde_json::from_str(ours.json()).unwrap();
    let fields = &json["fields"][0]["type"]["fields"];
    let created_by = fields
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "created_by")
        .unwrap();
    assert_eq!(
        created_by["default"],
        serde_json::Value::Null,
        "optional fields default to null"
    );
    assert_eq!(
        created_by["type"][1], "UserData",
        "a record is defined once, then named"
    );
}

#[test]
fn key_follows_the_dotted_path() {
    assert_eq!(enrollment().key().as_deref(), Some("42"));
}

/// `encode_event`, checked against the serializer's type-erased `encode`: the Avro serializers
/// write a typed event's datum from its own type, and it must be the same bytes.
fn encode_both_ways<E: Event>(serializer: &dyn Serializer, topic: &str, event: &E) -> Vec<u8> {
    let typed = encode_event(serializer, topic, event).unwrap();
    let ctx = SchemaContext {
        topic,
        event_type: E::EVENT_TYPE,
        schema: E::schema().unwrap(),
        minor_version: E::MINOR_VERSION,
        message_minor_version: None,
    };
    let erased = serializer.encode(event, &ctx).unwrap();
    assert_eq!(
        typed,
        erased,
        "{}: typed and type-erased",
        serializer.name()
    );
    typed
}

fn roundtrip(serializer: &dyn Serializer) -> Vec<u8> {
    let event = enrollment();
    let bytes = encode_both_ways(serializer, "dev-enrollments", &event);
    let back: CourseEnrollmentCreated =
        decode_event(serializer, "dev-enrollments", &bytes, Some(0)).unwrap();
    assert_eq!(back, event, "{} round trip", serializer.name());
    bytes
}

#[test]
fn avro_json_and_confluent_round_trip() {
    let store = Arc::new(SchemaStore::new());
    let datum = roundtrip(&AvroSerializer::new(Arc::clone(&store)));
    let json = roundtrip(&JsonSerializer);
    assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());

    let subject = confluent_subject("dev-enrollments", CourseEnrollmentCreated::EVENT_TYPE);
    assert_eq!(
        subject,
        "dev-enrollments-org.openedx.learning.course.enrollment.created.v1.CloudEvent"
    );
    store.add_registered(
        &subject,
        7,
        CourseEnrollmentCreated::schema().unwrap().clone(),
    );
    let framed = roundtrip(&ConfluentAvroSerializer::new(Arc::clone(&store)));
    assert_eq!(&framed[..5], &[0, 0, 0, 0, 7]);
    assert_eq!(
        &framed[5..],
        &datum[..],
        "the framed datum is the plain Avro datum"
    );
}

#[test]
fn confluent_without_a_registered_id_says_what_to_do() {
    let serializer = ConfluentAvroSerializer::new(Arc::new(SchemaStore::new()));
    let err = encode_event(&serializer, "t", &enrollment()).unwrap_err();
    assert!(
        err.to_string()
            .contains("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL"),
        "{err}"
    );
    let err = decode_event::<CourseEnrollmentCreated>(&serializer, "t", &[1, 2], None).unwrap_err();
    assert!(err.to_string().contains("Confluent framing"), "{err}");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(type = "org.example.typed.values.v1", key = "id")]
struct TypedValues {
    id: Uuid,
    at: DateTime<Utc>,
    tags: Vec<String>,
    counts: HashMap<String, i32>,
    ratio: f32,
    small: u8,
    note: Option<String>,
}

#[test]
fn uuids_and_times_travel_as_strings() {
    let event = TypedValues {
        id: Uuid::new_v4(),
        at: Utc::now(),
        tags: vec!["a".into(), "b".into()],
        counts: HashMap::from([("x".into(), 3)]),
        ratio: 0.5,
        small: 7,
        note: None,
    };
    let serializer = AvroSerializer::new(Arc::new(SchemaStore::new()));
    let bytes = encode_event(&serializer, "t", &event).unwrap();
    let schema = TypedValues::schema().unwrap();
    let value = apache_avro::from_avro_datum(schema.avro(), &mut &bytes[..], None).unwrap();
    let Value::Record(fields) = value else {
        panic!("not a record")
    };
    assert_eq!(fields[0].1, Value::String(event.id.to_string()));
    assert!(
        matches!(&fields[1].1, Value::String(s) if s.starts_with(&event.at.format("%Y-%m-%d").to_string()))
    );
    let back: TypedValues = decode_event(&serializer, "t", &bytes, None).unwrap();
    assert_eq!(back, event);

    // The direct decoder (no named references here) also reads present options and big maps.
    let fuller = TypedValues {
        note: Some("n".repeat(300)),
        counts: (0..100).map(|i| (format!("k{i}"), -i)).collect(),
        ..event
    };
    let bytes = encode_both_ways(&serializer, "t", &fuller);
    assert_eq!(
        decode_event::<TypedValues>(&serializer, "t", &bytes, None).unwrap(),
        fuller
    );
    for cut in [1, bytes.len() / 2, bytes.len() - 1] {
        let err = decode_event::<TypedValues>(&serializer, "t", &bytes[..cut], None).unwrap_err();
        assert_eq!(err.kind(), eventbus_core::ErrorKind::Deserialize, "{err}");
    }
}

mod v0 {
    use super::*;
    /// Minor version 0 of an event.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    #[event(
        type = "org.example.profile.updated.v1",
        minor_version = 0,
        key = "user_id"
    )]
    pub(super) struct ProfileUpdated {
        pub(super) user_id: i64,
        pub(super) name: String,
    }
}

mod v1 {
    use super::*;
    /// Minor version 1 adds an optional field.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    #[event(
        type = "org.example.profile.updated.v1",
        minor_version = 1,
        key = "user_id"
    )]
    pub(super) struct ProfileUpdated {
        pub(super) user_id: i64,
        pub(super) name: String,
        pub(super) locale: Option<String>,
    }
}

#[test]
fn readers_one_minor_version_apart_still_decode() {
    let store = Arc::new(SchemaStore::new());
    let avro = AvroSerializer::new(Arc::clone(&store));
    let new = v1::ProfileUpdated {
        user_id: 1,
        name: "Ada".into(),
        locale: Some("fr".into()),
    };
    let old = v0::ProfileUpdated {
        user_id: 2,
        name: "Bob".into(),
    };

    for serializer in [&avro as &dyn Serializer, &JsonSerializer] {
        // An older reader reads a newer writer: the added field is left unread.
        let bytes = encode_event(serializer, "t", &new).unwrap();
        let read: v0::ProfileUpdated = decode_event(serializer, "t", &bytes, Some(1)).unwrap();
        assert_eq!(
            read,
            v0::ProfileUpdated {
                user_id: 1,
                name: "Ada".into()
            },
            "{}",
            serializer.name()
        );
    }

    // A newer reader of an older Avro writer resolves with the writer's schema when it has it.
    let bytes = encode_event(&avro, "t", &old).unwrap();
    store.add_writer_schema(
        "org.example.profile.updated.v1",
        0,
        v0::ProfileUpdated::schema().unwrap().clone(),
    );
    let read: v1::ProfileUpdated = decode_event(&avro, "t", &bytes, Some(0)).unwrap();
    assert_eq!(
        read,
        v1::ProfileUpdated {
            user_id: 2,
            name: "Bob".into(),
            locale: None
        }
    );

    let json = encode_event(&JsonSerializer, "t", &old).unwrap();
    let read: v1::ProfileUpdated = decode_event(&JsonSerializer, "t", &json, Some(0)).unwrap();
    assert_eq!(read.locale, None);
}

#[test]
fn garbage_is_a_decode_error_not_a_panic() {
    let avro = AvroSerializer::new(Arc::new(SchemaStore::new()));
    let err = decode_event::<CourseEnrollmentCreated>(&avro, "t", &[0xff, 0xff, 0xff], Some(0))
        .unwrap_err();
    assert_eq!(err.kind(), eventbus_core::ErrorKind::Deserialize);
    assert!(
        err.to_string()
            .contains(CourseEnrollmentCreated::EVENT_TYPE),
        "{err}"
    );
    let err = decode_event::<CourseEnrollmentCreated>(&JsonSerializer, "t", b"{not json", None)
        .unwrap_err();
    assert_eq!(err.kind(), eventbus_core::ErrorKind::Deserialize);
}

#[test]
fn registry_finds_signals_by_type_name() {
    let entry = eventbus_core::signal::find_signal(CourseEnrollmentCreated::EVENT_TYPE)
        .expect("registered by the derive");
    assert_eq!(entry.event_type, CourseEnrollmentCreated::EVENT_TYPE);
    assert!(eventbus_core::signal::find_signal("org.example.nobody.v1").is_none());
}
