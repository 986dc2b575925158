//! The events the Avro and Confluent targets decode into, and the schema store they decode with.
//!
//! Together they cover every shape of the Avro mapping: nested records, records inside arrays
//! and maps, arrays of arrays, unions (options) at every depth, bytes, doubles, and records
//! used twice (named references, which send decoding through apache-avro rather than the direct
//! decoder). `ProfileUpdated` comes in two minor versions, so that a reader of one decodes
//! the other's datum through apache-avro's schema resolution.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use eventbus_core::schema::Bytes;
use eventbus_core::serializer::{confluent_subject, AvroSerializer, ConfluentAvroSerializer};
use eventbus_core::{AvroRecord, Event, SchemaStore};
use eventbus_testkit::openedx::UserData;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The topic the targets decode from.
pub const TOPIC: &str = "fuzz-topic";

/// A line of an order: a record inside an array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroRecord)]
pub struct Item {
    /// Stock keeping unit.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// Unit price, when known.
    pub price: Option<f64>,
    /// Free labels.
    pub labels: BTreeMap<String, String>,
}

/// Every shape of the mapping without a named reference: read by the direct decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(type = "org.example.fuzz.catalog.v1", key = "id")]
pub struct Catalog {
    /// A UUID (a string on the wire).
    pub id: Uuid,
    /// A time (an ISO-8601 string on the wire).
    pub at: DateTime<Utc>,
    /// A boolean.
    pub active: bool,
    /// A double.
    pub ratio: f64,
    /// A long.
    pub count: i64,
    /// An array of strings.
    pub tags: Vec<String>,
    /// A map of longs.
    pub counts: BTreeMap<String, i64>,
    /// Avro bytes.
    pub blob: Bytes,
    /// An optional string.
    pub note: Option<String>,
    /// Records in an array.
    pub items: Vec<Item>,
    /// Arrays of optional longs in an array.
    pub matrix: Vec<Vec<Option<i64>>>,
    /// Maps in arrays in a map.
    pub groups: BTreeMap<String, Vec<BTreeMap<String, Option<bool>>>>,
}

/// Records in arrays and maps with a named reference (`Item` is used thrice): read by
/// apache-avro, after the core checked the datum's lengths and counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(type = "org.example.fuzz.shelf.v1")]
pub struct Shelf {
    /// Records in an array.
    pub items: Vec<Item>,
    /// An optional record, by name.
    pub featured: Option<Item>,
    /// Arrays of records in a map, by name.
    pub sections: BTreeMap<String, Vec<Item>>,
}

/// Open edX's course data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroRecord)]
pub struct CourseData {
    /// The course key.
    pub course_key: String,
    /// The course's name.
    pub display_name: String,
    /// When it starts.
    pub start: Option<DateTime<Utc>>,
    /// When it ends.
    pub end: Option<DateTime<Utc>>,
}

/// Open edX's enrollment data: `UserData` twice, the second time by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroRecord)]
pub struct CourseEnrollmentData {
    /// Who is enrolled.
    pub user: UserData,
    /// In what.
    pub course: CourseData,
    /// The enrollment mode.
    pub mode: String,
    /// Whether it is active.
    pub is_active: bool,
    /// When it was created.
    pub creation_date: DateTime<Utc>,
    /// Who created it (a named reference to `UserData`).
    pub created_by: Option<UserData>,
}

/// Open edX's `COURSE_ENROLLMENT_CREATED`, keyed by a long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(
    type = "org.openedx.learning.course.enrollment.created.v1",
    key = "enrollment.user.id"
)]
pub struct CourseEnrollmentCreated {
    /// The enrollment.
    pub enrollment: CourseEnrollmentData,
}

/// Minor version 0 of an event.
pub mod v0 {
    use super::*;

    /// A profile change, minor version 0.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    #[event(
        type = "org.example.fuzz.profile.updated.v1",
        minor_version = 0,
        key = "user_id"
    )]
    pub struct ProfileUpdated {
        /// The user.
        pub user_id: i64,
        /// The new name.
        pub name: String,
    }
}

/// Minor version 1 of the same event: an optional field more.
pub mod v1 {
    use super::*;

    /// A profile change, minor version 1.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    #[event(
        type = "org.example.fuzz.profile.updated.v1",
        minor_version = 1,
        key = "user_id"
    )]
    pub struct ProfileUpdated {
        /// The user.
        pub user_id: i64,
        /// The new name.
        pub name: String,
        /// The new locale, if it changed.
        pub locale: Option<String>,
    }
}

/// Confluent schema ids of the event schemas in [`store`].
pub mod ids {
    /// [`Catalog`](super::Catalog).
    pub const CATALOG: u32 = 1;
    /// [`CourseEnrollmentCreated`](super::CourseEnrollmentCreated).
    pub const ENROLLMENT: u32 = 2;
    /// [`v0::ProfileUpdated`](super::v0::ProfileUpdated).
    pub const PROFILE_V0: u32 = 3;
    /// [`v1::ProfileUpdated`](super::v1::ProfileUpdated).
    pub const PROFILE_V1: u32 = 4;
    /// The key schema of `Catalog` (a string).
    pub const CATALOG_KEY: u32 = 5;
    /// The key schema of `CourseEnrollmentCreated` (a long).
    pub const ENROLLMENT_KEY: u32 = 6;
    /// [`Shelf`](super::Shelf).
    pub const SHELF: u32 = 7;
}

/// The schema store shared by the targets' serializers: both minor versions of
/// `ProfileUpdated` as writer schemas, and every event and key schema registered under the ids
/// of [`ids`].
pub fn store() -> &'static Arc<SchemaStore> {
    static STORE: OnceLock<Arc<SchemaStore>> = OnceLock::new();
    STORE.get_or_init(|| {
        let store = SchemaStore::new();
        // The events' schemas are fixed at compile time; failing to build them is a bug here.
        let schema = |s: eventbus_core::Result<&'static eventbus_core::EventSchema>| {
            s.expect("a derived schema parses").clone()
        };
        let profile_v0 = schema(v0::ProfileUpdated::schema());
        let profile_v1 = schema(v1::ProfileUpdated::schema());
        store.add_writer_schema(v0::ProfileUpdated::EVENT_TYPE, 0, profile_v0.clone());
        store.add_writer_schema(v1::ProfileUpdated::EVENT_TYPE, 1, profile_v1.clone());
        let subject = |event_type| confluent_subject(TOPIC, event_type);
        store.add_registered(
            &subject(Catalog::EVENT_TYPE),
            ids::CATALOG,
            schema(Catalog::schema()),
        );
        store.add_registered(
            &subject(Shelf::EVENT_TYPE),
            ids::SHELF,
            schema(Shelf::schema()),
        );
        store.add_registered(
            &subject(CourseEnrollmentCreated::EVENT_TYPE),
            ids::ENROLLMENT,
            schema(CourseEnrollmentCreated::schema()),
        );
        // Both minor versions share a subject; the later registration is the one encoding uses.
        store.add_registered(
            &subject(v0::ProfileUpdated::EVENT_TYPE),
            ids::PROFILE_V0,
            profile_v0,
        );
        store.add_registered(
            &subject(v1::ProfileUpdated::EVENT_TYPE),
            ids::PROFILE_V1,
            profile_v1,
        );
        for (event_type, path, schema, id) in [
            (
                Catalog::EVENT_TYPE,
                "id",
                Catalog::schema(),
                ids::CATALOG_KEY,
            ),
            (
                CourseEnrollmentCreated::EVENT_TYPE,
                "enrollment.user.id",
                CourseEnrollmentCreated::schema(),
                ids::ENROLLMENT_KEY,
            ),
        ] {
            let key = store
                .key_schema(event_type, path, schema.expect("a derived schema parses"))
                .expect("the key field is a primitive");
            store.add_registered(&key.subject(TOPIC), id, key.schema().clone());
        }
        Arc::new(store)
    })
}

/// The schemaless Avro serializer over [`store`].
pub fn avro() -> &'static AvroSerializer {
    static AVRO: OnceLock<AvroSerializer> = OnceLock::new();
    AVRO.get_or_init(|| AvroSerializer::new(Arc::clone(store())))
}

/// The Confluent-framed Avro serializer over [`store`].
pub fn confluent() -> &'static ConfluentAvroSerializer {
    static CONFLUENT: OnceLock<ConfluentAvroSerializer> = OnceLock::new();
    CONFLUENT.get_or_init(|| ConfluentAvroSerializer::new(Arc::clone(store())))
}
