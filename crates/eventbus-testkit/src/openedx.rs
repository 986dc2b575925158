//! Open edX's own data shapes, for wire-compatibility tests of every backend.
//!
//! The types mirror openedx-events 10.x (`UserData`, `UserPersonalData` and the
//! `SESSION_LOGIN_COMPLETED` signal), and [`SAMPLE_LOGIN_DATUM`] is [`sample_login`] as the
//! bare Avro datum the Python producer writes, encoded by hand so that a test does not check the
//! encoder against itself.

use eventbus_core::{AvroRecord, Envelope, Event, EventMetadata, Headers, Message};
use serde::{Deserialize, Serialize};

/// Open edX's `UserPersonalData`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroRecord)]
pub struct UserPersonalData {
    /// The login name.
    pub username: String,
    /// The e-mail address.
    pub email: String,
    /// The full name.
    pub name: String,
}

/// Open edX's `UserData`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroRecord)]
pub struct UserData {
    /// The user id.
    pub id: i64,
    /// Whether the account is active.
    pub is_active: bool,
    /// Personal data.
    pub pii: UserPersonalData,
}

/// Open edX's `SESSION_LOGIN_COMPLETED` signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(type = "org.openedx.learning.auth.session.login.completed.v1")]
pub struct SessionLoginCompleted {
    /// Who logged in.
    pub user: UserData,
}

/// A login of user 7, `ada`.
pub fn sample_login() -> SessionLoginCompleted {
    SessionLoginCompleted {
        user: UserData {
            id: 7,
            is_active: true,
            pii: UserPersonalData {
                username: "ada".into(),
                email: "ada@example.org".into(),
                name: "Ada Lovelace".into(),
            },
        },
    }
}

/// [`sample_login`] as a bare Avro datum, from the Avro specification: zig-zag varint longs (7 is
/// `0x0e`), one byte per boolean, strings as a zig-zag length and UTF-8.
pub const SAMPLE_LOGIN_DATUM: &[u8] = b"\x0e\x01\x06ada\x1eada@example.org\x18Ada Lovelace";

/// The headers Open edX puts on every event on Kafka (and eventbus on Pulsar, as properties),
/// sorted by name.
pub const OPEN_EDX_HEADER_NAMES: [&str; 10] = [
    "ce_datacontenttype",
    "ce_id",
    "ce_minorversion",
    "ce_source",
    "ce_specversion",
    "ce_time",
    "ce_type",
    "content-type",
    "sourcehost",
    "sourcelib",
];

/// The headers of one [`sample_login`] as Open edX's Python producer writes them from the
/// `lms` service (openedx-events 10.5).
pub const SAMPLE_LOGIN_HEADERS: [(&str, &str); 10] = [
    ("ce_id", "6f5a0d0e-2f1c-4a57-9d7e-0b1f7f5d2c11"),
    (
        "ce_type",
        "org.openedx.learning.auth.session.login.completed.v1",
    ),
    ("ce_source", "openedx/lms/web"),
    ("ce_specversion", "1.0"),
    ("ce_time", "2026-11-22T05:20:27.505586+00:00"),
    ("ce_minorversion", "0"),
    ("sourcehost", "edx.devstack.lms"),
    ("sourcelib", "10.5.0"),
    ("content-type", "application/avro"),
    ("ce_datacontenttype", "application/avro"),
];

/// A login as a ready message, the way a producer of Open edX's services builds it: the
/// CloudEvents headers of a fresh event from `openedx/lms/web` and `payload` as its value (the
/// bare datum for Redis, the Confluent-framed one for Kafka). For benchmarks and wire tests.
pub fn sample_login_message(payload: Vec<u8>) -> Message {
    let mut metadata = EventMetadata::new(
        SessionLoginCompleted::EVENT_TYPE,
        0,
        "openedx/lms/web",
        "bench-host",
    );
    metadata.content_type = "application/avro".into();
    let mut headers = Headers::new();
    metadata.write_headers(&mut headers);
    Message {
        key: None,
        payload: payload.into(),
        headers,
    }
}

/// Checks that `got` is the login another client wrote with [`SAMPLE_LOGIN_HEADERS`] and
/// [`SAMPLE_LOGIN_DATUM`]: the event, and the id, source library and time of its headers.
pub fn assert_sample_login(got: &Envelope<SessionLoginCompleted>) {
    assert_eq!(got.event(), &sample_login());
    assert_eq!(
        got.metadata().id.to_string(),
        "6f5a0d0e-2f1c-4a57-9d7e-0b1f7f5d2c11"
    );
    assert_eq!(got.metadata().source_lib, "10.5.0");
    assert_eq!(
        got.metadata().time_string(),
        "2026-11-22T05:20:27.505586+00:00"
    );
}

/// Checks the headers (Kafka) or properties (Pulsar) of a login that eventbus published, by
/// name: exactly [`OPEN_EDX_HEADER_NAMES`] plus the W3C `traceparent` of the publish span (which
/// Open edX consumers pass over, as they do any header they do not read), the login's type and
/// source, CloudEvents 1.0, Avro content, a UUID id and a UTC time in Python's isoformat.
pub fn assert_published_login_headers(headers: &std::collections::BTreeMap<String, String>) {
    let names: Vec<&str> = headers
        .keys()
        .map(String::as_str)
        .filter(|n| *n != eventbus_core::telemetry::trace_context::TRACEPARENT)
        .collect();
    assert_eq!(names, OPEN_EDX_HEADER_NAMES);
    assert_traceparent(headers.get("traceparent").map(String::as_str));
    assert_eq!(headers["ce_type"], SessionLoginCompleted::EVENT_TYPE);
    assert_eq!(headers["ce_source"], "openedx/lms/web");
    assert_eq!(headers["ce_specversion"], "1.0");
    assert_eq!(headers["content-type"], "application/avro");
    assert!(uuid::Uuid::parse_str(&headers["ce_id"]).is_ok());
    assert!(
        headers["ce_time"].ends_with("+00:00"),
        "{}",
        headers["ce_time"]
    );
}

/// Checks that a published message carries a valid W3C `traceparent`.
pub fn assert_traceparent(value: Option<&str>) {
    let value = value.expect("a published message carries a traceparent");
    assert!(
        eventbus_core::TraceContext::parse(value, None).is_some(),
        "not a W3C traceparent: {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_headers_name_the_login_event_and_every_open_edx_header() {
        let (_, event_type) = SAMPLE_LOGIN_HEADERS[1];
        assert_eq!(event_type, SessionLoginCompleted::EVENT_TYPE);
        let mut names: Vec<&str> = SAMPLE_LOGIN_HEADERS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        assert_eq!(names, OPEN_EDX_HEADER_NAMES);
    }

    #[test]
    fn the_hand_written_datum_is_what_the_encoder_writes() {
        let schema = SessionLoginCompleted::schema().unwrap().avro();
        let value = apache_avro::to_value(sample_login()).unwrap();
        let datum = apache_avro::to_avro_datum(schema, value).unwrap();
        assert_eq!(datum, SAMPLE_LOGIN_DATUM);
    }
}
