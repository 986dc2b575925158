//! The Avro targets: schemaless datums and the Confluent framing.

use std::fmt;

use eventbus_core::serializer::{
    confluent_frame as frame, confluent_unframe, decode_event, encode_event, KeyContext,
};
use eventbus_core::{Event, Serializer};

use crate::events::{self, ids, v0, v1, Catalog, CourseEnrollmentCreated, Shelf, TOPIC};

/// Schemaless Avro (Open edX's Redis `event_data`), decoded into five event types: one the
/// direct decoder reads (every shape of the mapping), two with named references (apache-avro's
/// path, one of them Open edX's enrollment), and each minor version of an event read from the
/// other's datum (apache-avro's schema resolution). Whatever decodes must encode, and its encoding must decode to the same bytes
/// again.
pub fn avro_datum(data: &[u8]) {
    let avro = events::avro();
    round_trip::<Catalog>(avro, data, None);
    round_trip::<Shelf>(avro, data, None);
    round_trip::<CourseEnrollmentCreated>(avro, data, None);
    round_trip::<v1::ProfileUpdated>(avro, data, Some(0));
    round_trip::<v0::ProfileUpdated>(avro, data, Some(1));
}

/// A Confluent-framed payload or key (Kafka's values and keys): the framing must give back the
/// bytes it was cut from, a payload whose schema id is known decodes into each event type (with
/// the same round trip as [`avro_datum`]), and a key decodes to text that encodes and decodes to
/// the same text.
pub fn confluent_frame(data: &[u8]) {
    let confluent = events::confluent();
    let id = match confluent_unframe(data) {
        Ok((id, datum)) => {
            assert_eq!(frame(id, datum), data, "framing gives back the bytes");
            Some(id)
        }
        Err(_) => None,
    };
    round_trip::<Catalog>(confluent, data, None);
    round_trip::<Shelf>(confluent, data, None);
    round_trip::<CourseEnrollmentCreated>(confluent, data, None);
    round_trip::<v1::ProfileUpdated>(confluent, data, Some(0));
    round_trip::<v0::ProfileUpdated>(confluent, data, Some(1));
    let Ok(key) = confluent.decode_key(data) else {
        return;
    };
    let again = match id {
        Some(ids::CATALOG_KEY) => key_round_trip::<Catalog>(&key),
        Some(ids::ENROLLMENT_KEY) => key_round_trip::<CourseEnrollmentCreated>(&key),
        _ => return,
    };
    assert_eq!(again, key, "a decoded key encodes and decodes to itself");
}

/// Decodes `data` as `E`; when that works, checks that the event encodes and decodes to itself.
/// Events are compared by their `Debug` text, in which a NaN equals itself; their bytes are not
/// compared, since apache-avro writes map entries in no fixed order.
fn round_trip<E: Event + fmt::Debug>(serializer: &dyn Serializer, data: &[u8], minor: Option<u32>) {
    let Ok(event) = decode_event::<E>(serializer, TOPIC, data, minor) else {
        return;
    };
    let bytes = match encode_event(serializer, TOPIC, &event) {
        Ok(bytes) => bytes,
        Err(e) => panic!(
            "a decoded {} does not encode: {e}; {event:?}",
            E::EVENT_TYPE
        ),
    };
    let back = match decode_event::<E>(serializer, TOPIC, &bytes, None) {
        Ok(back) => back,
        Err(e) => panic!(
            "an encoded {} does not decode: {e}; {event:?}",
            E::EVENT_TYPE
        ),
    };
    assert_eq!(
        format!("{back:?}"),
        format!("{event:?}"),
        "{} decodes to what it encoded",
        E::EVENT_TYPE
    );
}

/// The text of `key` after a trip through the key framing of `E`.
fn key_round_trip<E: Event>(key: &str) -> String {
    let confluent = events::confluent();
    let schema = match E::schema() {
        Ok(schema) => schema,
        Err(e) => panic!("the schema of {} does not build: {e}", E::EVENT_TYPE),
    };
    let ctx = KeyContext {
        topic: TOPIC,
        event_type: E::EVENT_TYPE,
        schema,
        field: E::KEY_FIELD,
    };
    let bytes = match confluent.encode_key(key, &ctx) {
        Ok(bytes) => bytes,
        Err(e) => panic!("a decoded key of {} does not encode: {e}", E::EVENT_TYPE),
    };
    match confluent.decode_key(&bytes) {
        Ok(text) => text,
        Err(e) => panic!("an encoded key of {} does not decode: {e}", E::EVENT_TYPE),
    }
}
