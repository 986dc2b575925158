//! Events: typed domain facts with a stable type name, a minor version, an Avro schema and a key.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::consumer::DeliveryInfo;
use crate::error::{Error, ErrorKind, Result};
use crate::metadata::EventMetadata;
use crate::signal::Signal;

/// A domain event. Derive it with `#[derive(Event)]`:
///
/// ```
/// use eventbus_core::{AvroRecord, Event};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, AvroRecord)]
/// struct UserData {
///     id: i64,
///     email: String,
/// }
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// #[event(type = "org.example.user.created.v1", minor_version = 0, key = "user.id")]
/// struct UserCreated {
///     user: UserData,
///     referrer: Option<String>,
/// }
///
/// let event = UserCreated { user: UserData { id: 7, email: "a@example.org".into() }, referrer: None };
/// assert_eq!(UserCreated::EVENT_TYPE, "org.example.user.created.v1");
/// assert_eq!(event.key().as_deref(), Some("7"));
/// assert!(UserCreated::schema().unwrap().json().contains("\"CloudEvent\""));
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable type name, e.g. `org.openedx.learning.auth.session.login.completed.v1`.
    const EVENT_TYPE: &'static str;
    /// The minor version of the schema; bumped when optional fields are added.
    const MINOR_VERSION: u32;
    /// The dotted path of the key field (`user.id`), the `key` of the derive. Its definition in
    /// the schema is the key schema of the Confluent framing.
    const KEY_FIELD: Option<&'static str> = None;

    /// The event's Avro schema (parsed once, then cached).
    fn schema() -> Result<&'static EventSchema>;

    /// The value that orders and partitions events (the `key` of the derive), if any.
    fn key(&self) -> Option<String>;

    /// The in-process signal of this event type.
    fn signal() -> &'static Signal<Self>;
}

/// An event's Avro schema, as JSON text and parsed.
#[derive(Clone)]
pub struct EventSchema {
    json: String,
    avro: apache_avro::Schema,
    has_refs: bool,
}

impl EventSchema {
    /// Parses a schema from its JSON form.
    pub fn parse(json: &str) -> Result<Self> {
        let avro = apache_avro::Schema::parse_str(json).map_err(|e| {
            Error::new(
                ErrorKind::Serialize,
                "the Avro schema is not valid; check the types of the event's fields",
            )
            .with("schema", json)
            .with_source(e)
        })?;
        Ok(Self {
            json: json.to_owned(),
            has_refs: has_refs(&avro),
            avro,
        })
    }

    /// Whether a named type is used again by name; such schemas need the slower encoding path
    /// that resolves names.
    pub(crate) fn has_refs(&self) -> bool {
        self.has_refs
    }

    /// Builds and caches the schema of a derived event. Used by the derive macro.
    #[doc(hidden)]
    pub fn cached(
        cell: &'static std::sync::OnceLock<std::result::Result<EventSchema, String>>,
        build: impl FnOnce() -> serde_json::Value,
    ) -> Result<&'static EventSchema> {
        cell.get_or_init(|| EventSchema::parse(&build().to_string()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|message| Error::new(ErrorKind::Serialize, message.clone()))
    }

    /// The schema as JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The parsed Avro schema.
    pub fn avro(&self) -> &apache_avro::Schema {
        &self.avro
    }
}

fn has_refs(schema: &apache_avro::Schema) -> bool {
    use apache_avro::Schema;
    match schema {
        Schema::Ref { .. } => true,
        Schema::Record(r) => r.fields.iter().any(|f| has_refs(&f.schema)),
        Schema::Array(a) => has_refs(&a.items),
        Schema::Map(m) => has_refs(&m.types),
        Schema::Union(u) => u.variants().iter().any(has_refs),
        _ => false,
    }
}

impl fmt::Debug for EventSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EventSchema").field(&self.json).finish()
    }
}

/// A value that can serve as an event key.
pub trait EventKey {
    /// The key as text, or `None` when the value is absent.
    fn event_key(&self) -> Option<String>;
}

macro_rules! display_key {
    ($($ty:ty),*) => {
        $(impl EventKey for $ty {
            fn event_key(&self) -> Option<String> {
                Some(self.to_string())
            }
        })*
    };
}

display_key!(
    String,
    str,
    i8,
    i16,
    i32,
    i64,
    u8,
    u16,
    u32,
    u64,
    isize,
    usize,
    bool,
    char,
    uuid::Uuid
);

impl<T: EventKey + ?Sized> EventKey for &T {
    fn event_key(&self) -> Option<String> {
        (**self).event_key()
    }
}

impl<T: EventKey> EventKey for Option<T> {
    fn event_key(&self) -> Option<String> {
        self.as_ref().and_then(EventKey::event_key)
    }
}

/// An event together with its metadata, as receivers get it, and the delivery that brought it
/// when it came from the bus. Cloning is cheap.
pub struct Envelope<E> {
    event: Arc<E>,
    /// Shared with the delivery it came in, which parsed it: a copy per envelope was six
    /// strings.
    metadata: Arc<EventMetadata>,
    delivery: Option<Arc<DeliveryInfo>>,
}

impl<E> Envelope<E> {
    /// Wraps an event and its metadata.
    pub fn new(event: E, metadata: EventMetadata) -> Self {
        Self::shared(event, Arc::new(metadata))
    }

    pub(crate) fn shared(event: E, metadata: Arc<EventMetadata>) -> Self {
        Self {
            event: Arc::new(event),
            metadata,
            delivery: None,
        }
    }

    pub(crate) fn with_delivery(mut self, delivery: Arc<DeliveryInfo>) -> Self {
        self.delivery = Some(delivery);
        self
    }

    /// The delivery that brought the event: topic, key, headers, attempt, position, publish
    /// time. `None` for an event sent in-process through a signal.
    pub fn delivery(&self) -> Option<&DeliveryInfo> {
        self.delivery.as_deref()
    }

    /// The event.
    pub fn event(&self) -> &E {
        &self.event
    }

    /// Its CloudEvents metadata.
    pub fn metadata(&self) -> &EventMetadata {
        &self.metadata
    }
}

impl<E> Clone for Envelope<E> {
    fn clone(&self) -> Self {
        Self {
            event: Arc::clone(&self.event),
            metadata: Arc::clone(&self.metadata),
            delivery: self.delivery.clone(),
        }
    }
}

impl<E> std::ops::Deref for Envelope<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.event
    }
}

impl<E: fmt::Debug> fmt::Debug for Envelope<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("event", &self.event)
            .field("metadata", &self.metadata)
            .finish()
    }
}
