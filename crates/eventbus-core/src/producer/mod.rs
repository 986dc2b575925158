//! The producer: typed events in, messages with Open edX headers out, through a stack of
//! [`PublishLayer`]s to the backend.

pub(crate) mod layer;

use self::layer::PublishDefaults;
pub use self::layer::{Outgoing, ProducerStack, PublishLayer, PublishNext};

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};
use crate::event::{Envelope, Event};
use crate::metadata::{source_for_service, EventMetadata, SharedAttributes};
use crate::schema_registry::SchemaIds;
use crate::serializer::{encode_event, encode_event_into, KeyContext, Serializer};
use crate::transport::{Headers, Message, Position, Publisher};

/// Who is producing, and where topics live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerSettings {
    /// Prepended to every topic as `<prefix>-<topic>` (`EVENT_BUS_TOPIC_PREFIX`).
    pub topic_prefix: Option<String>,
    /// CloudEvents `source`, `openedx/<service>/web`.
    pub source: String,
    /// The `sourcehost` header.
    pub source_host: String,
}

impl ProducerSettings {
    /// Settings for `service` on `host`.
    pub fn new(service: &str, host: &str) -> Self {
        Self {
            topic_prefix: None,
            source: source_for_service(service),
            source_host: host.to_owned(),
        }
    }

    /// Sets the topic prefix.
    #[must_use]
    pub fn with_topic_prefix(mut self, prefix: Option<String>) -> Self {
        self.topic_prefix = prefix.filter(|p| !p.is_empty());
        self
    }

    /// The full topic name of `topic`.
    pub fn full_topic(&self, topic: &str) -> String {
        self.topic_name(topic).into_owned()
    }

    /// [`ProducerSettings::full_topic`], borrowed when there is no prefix: a send then makes
    /// one copy of the name (the one its batch carries to the backend), not two.
    fn topic_name<'a>(&self, topic: &'a str) -> Cow<'a, str> {
        match &self.topic_prefix {
            Some(prefix) => Cow::Owned(format!("{prefix}-{topic}")),
            None => Cow::Borrowed(topic),
        }
    }
}

/// Publishes typed events (and raw messages). Cheap to clone; all clones share one backend
/// publisher.
#[derive(Clone)]
pub struct Producer {
    publisher: Arc<dyn Publisher>,
    serializer: Arc<dyn Serializer>,
    settings: Arc<ProducerSettings>,
    schema_ids: Option<SchemaIds>,
    /// The stack as the application sees and edits it, outermost first.
    layers: Arc<[Arc<dyn PublishLayer>]>,
    /// The same stack as it runs: the default layers, where untouched, fused into one.
    running: Arc<[Arc<dyn PublishLayer>]>,
    defaults: PublishDefaults,
    backend: &'static str,
    /// The settings' attributes as header values, built once.
    attributes: Arc<SharedAttributes>,
}

/// What [`Producer::send_with`] adds to an event: a key of the caller's choice and headers.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    key: Option<String>,
    headers: Headers,
}

impl SendOptions {
    /// No key override, no extra headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys the event with `key` instead of its key field (partitioning and per-key order
    /// follow it).
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header. CloudEvents attribute names (`ce_*`, `content-type`, `sourcehost`,
    /// `sourcelib`) are the producer's own; `send_with` refuses them.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.headers.append(name.into(), value);
        self
    }
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("publisher", &self.publisher)
            .field("serializer", &self.serializer.name())
            .field("settings", &self.settings)
            .field("layers", &self.layer_names())
            .finish()
    }
}

impl Producer {
    /// A producer over a backend publisher.
    pub fn new(
        publisher: Arc<dyn Publisher>,
        serializer: Arc<dyn Serializer>,
        settings: ProducerSettings,
    ) -> Self {
        let attributes = SharedAttributes::new(
            &settings.source,
            &settings.source_host,
            serializer.content_type(),
        );
        let defaults = PublishDefaults::default();
        let layers = defaults.layers();
        Self {
            publisher,
            serializer,
            attributes: Arc::new(attributes),
            settings: Arc::new(settings),
            schema_ids: None,
            running: defaults.fuse(&layers),
            layers,
            defaults,
            backend: "unknown",
        }
    }

    fn set_layers(&mut self, layers: Arc<[Arc<dyn PublishLayer>]>) {
        self.running = self.defaults.fuse(&layers);
        self.layers = layers;
    }

    /// Names the backend (the `messaging.system` of spans).
    #[must_use]
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.backend = backend;
        self
    }

    /// Adds `layer` innermost, just before the backend: it sees every outgoing batch, dead
    /// letters included.
    #[must_use]
    pub fn layer(mut self, layer: impl PublishLayer + 'static) -> Self {
        let mut layers = self.layers.to_vec();
        layers.push(Arc::new(layer));
        self.set_layers(layers.into());
        self
    }

    /// Edits the layer stack: reorder, replace, remove or insert layers by name; fails when an
    /// edit names a layer that is not in the stack.
    pub fn layers(mut self, edit: impl FnOnce(&mut ProducerStack) -> Result<()>) -> Result<Self> {
        let mut stack = ProducerStack::new();
        for layer in self.layers.iter() {
            stack.push(Arc::clone(layer));
        }
        edit(&mut stack)?;
        self.set_layers(stack.into_layers());
        Ok(self)
    }

    /// The layer names, outermost first.
    pub fn layer_names(&self) -> Vec<&str> {
        self.layers.iter().map(|l| l.name()).collect()
    }

    /// Registers each event type's schema through `ids` before its first send to a topic (the
    /// Confluent framing needs the id in every message).
    #[must_use]
    pub fn with_schema_ids(mut self, ids: SchemaIds) -> Self {
        self.schema_ids = Some(ids);
        self
    }

    /// The schema ids this producer registers through, if its wire format has ids.
    pub fn schema_ids(&self) -> Option<&SchemaIds> {
        self.schema_ids.as_ref()
    }

    /// Registers the key schema (first, as confluent-kafka does: a fresh registry then gives
    /// the same ids as to a Python producer) and the event schema.
    async fn register<E: Event>(&self, full_topic: &str, key_field: Option<&str>) -> Result<()> {
        if let Some(ids) = &self.schema_ids {
            if let Some(field) = key_field {
                ids.register_key::<E>(full_topic, field)
                    .await
                    .map_err(|e| e.with("topic", full_topic))?;
            }
            ids.register::<E>(full_topic)
                .await
                .map_err(|e| e.with("topic", full_topic))?;
        }
        Ok(())
    }

    /// The settings.
    pub fn settings(&self) -> &ProducerSettings {
        &self.settings
    }

    /// The serializer in use.
    pub fn serializer(&self) -> &Arc<dyn Serializer> {
        &self.serializer
    }

    /// Fresh metadata for a new event of type `E`.
    pub fn metadata<E: Event>(&self) -> EventMetadata {
        let mut meta = EventMetadata::new(
            E::EVENT_TYPE,
            E::MINOR_VERSION,
            &self.settings.source,
            &self.settings.source_host,
        );
        meta.content_type = self.serializer.content_type().into();
        meta
    }

    /// Encodes an event and its metadata into a message for the full topic `full_topic`, with the
    /// key already in its wire form (see [`Producer::encode_key`]).
    pub fn encode<E: Event>(
        &self,
        full_topic: &str,
        event: &E,
        metadata: &EventMetadata,
        key: Option<Bytes>,
    ) -> Result<Message> {
        let mut message = self.encode_payload(full_topic, event, key)?;
        metadata.write_headers(&mut message.headers);
        Ok(message)
    }

    /// The message without its headers yet, with room for them.
    fn encode_payload<E: Event>(
        &self,
        full_topic: &str,
        event: &E,
        key: Option<Bytes>,
    ) -> Result<Message> {
        let payload = encode_event(self.serializer.as_ref(), full_topic, event)
            .map_err(|e| e.with("topic", full_topic))?;
        Ok(Message {
            key,
            payload: payload.into(),
            headers: event_headers(),
        })
    }

    /// The wire form of the key whose text is `key`, taken from the field at `key_field` of `E`
    /// (its type decides the Confluent key schema). The field's schema must have been registered
    /// for `full_topic` when the format has ids; the `send` methods do that.
    pub fn encode_key<E: Event>(
        &self,
        full_topic: &str,
        key: Option<&str>,
        key_field: Option<&str>,
    ) -> Result<Option<Bytes>> {
        let Some(key) = key else { return Ok(None) };
        let ctx = KeyContext {
            topic: full_topic,
            event_type: E::EVENT_TYPE,
            schema: E::schema()?,
            field: key_field,
        };
        self.serializer
            .encode_key(key, &ctx)
            .map(|bytes| Some(bytes.into()))
            .map_err(|e| e.with("topic", full_topic))
    }

    fn encode_keyed<E: Event>(
        &self,
        full_topic: &str,
        event: &E,
        metadata: &EventMetadata,
        key: Option<&str>,
        key_field: Option<&str>,
    ) -> Result<Message> {
        let key = self.encode_key::<E>(full_topic, key, key_field)?;
        self.encode(full_topic, event, metadata, key)
    }

    /// New events, each keyed by its own key field. Their attributes go from the settings into
    /// the headers, shared: an [`EventMetadata`] would first copy each into a `String` of its
    /// own. The payloads and each event's own texts (`ce_id`, `ce_time`) are written one after
    /// another into one buffer that the messages hold slices of: a batch allocates it once,
    /// where a buffer per payload and per pair of texts cost three allocations an event (the
    /// payload's shared count the third). The buffer lives while any of the messages does.
    fn encode_new<E: Event>(&self, full_topic: &str, events: &[E]) -> Result<Vec<Message>> {
        let mut buffer = Vec::with_capacity(NEW_EVENT_ROOM);
        let mut ends = Vec::with_capacity(events.len());
        for event in events {
            ends.push(self.append_new(full_topic, event, &mut buffer)?);
            if ends.len() == 1 {
                // Events of one type encode to about the same size: one growth, not a doubling
                // series that copies the buffer each time. Capped, so that a large first event
                // of a long batch does not reserve far more than the rest need.
                let rest = buffer.len().saturating_mul(events.len() - 1);
                buffer.reserve(rest.min(BATCH_RESERVE_CAP));
            }
        }
        let buffer = Bytes::from(buffer);
        let mut start = 0;
        events
            .iter()
            .zip(ends)
            .map(|(event, (payload_end, end))| {
                let message = self.new_message(
                    full_topic,
                    event,
                    &buffer,
                    start..payload_end,
                    payload_end..end,
                );
                start = end;
                message
            })
            .collect()
    }

    /// [`Producer::encode_new`] of one event, for a single send.
    fn encode_one<E: Event>(&self, full_topic: &str, event: &E) -> Result<Message> {
        let mut buffer = Vec::with_capacity(NEW_EVENT_ROOM);
        let (payload_end, end) = self.append_new(full_topic, event, &mut buffer)?;
        let buffer = Bytes::from(buffer);
        self.new_message(full_topic, event, &buffer, 0..payload_end, payload_end..end)
    }

    /// Appends a new event's payload, then its own texts, to `buffer`; says where the payload
    /// ends and where the texts do.
    #[inline]
    fn append_new<E: Event>(
        &self,
        full_topic: &str,
        event: &E,
        buffer: &mut Vec<u8>,
    ) -> Result<(usize, usize)> {
        encode_event_into(self.serializer.as_ref(), full_topic, event, buffer)
            .map_err(|e| e.with("topic", full_topic))?;
        let payload_end = buffer.len();
        SharedAttributes::append_new(buffer);
        Ok((payload_end, buffer.len()))
    }

    /// The message of a new event whose payload and own texts are the slices `payload` and
    /// `own` of `buffer`.
    #[inline]
    fn new_message<E: Event>(
        &self,
        full_topic: &str,
        event: &E,
        buffer: &Bytes,
        payload: Range<usize>,
        own: Range<usize>,
    ) -> Result<Message> {
        let key = self.encode_key::<E>(full_topic, event.key().as_deref(), E::KEY_FIELD)?;
        let mut headers = event_headers();
        self.attributes
            .write(buffer, own, E::EVENT_TYPE, E::MINOR_VERSION, &mut headers);
        Ok(Message {
            key,
            payload: buffer.slice(payload),
            headers,
        })
    }

    /// Publishes one event to `topic` (the prefix is added); returns once the broker has it.
    pub async fn send<E: Event>(&self, topic: &str, event: &E) -> Result<Position> {
        let full = self.settings.topic_name(topic);
        self.register::<E>(&full, E::KEY_FIELD).await?;
        let message = self.encode_one(&full, event)?;
        self.publish_one(full.into_owned(), message).await
    }

    /// Publishes one event to `topic` with a key and headers of the caller's choice.
    pub async fn send_with<E: Event>(
        &self,
        topic: &str,
        event: &E,
        options: SendOptions,
    ) -> Result<Position> {
        let full = self.settings.topic_name(topic);
        if let Some((name, _)) = options
            .headers
            .iter()
            .find(|(name, _)| crate::metadata::header::is_reserved(name))
        {
            return Err(Error::new(
                ErrorKind::Config,
                "this header carries a CloudEvents attribute the producer writes itself; choose another name",
            )
            .with("header", name)
            .with("topic", &full));
        }
        self.register::<E>(&full, E::KEY_FIELD).await?;
        let key = options.key.or_else(|| event.key());
        let metadata = self.metadata::<E>();
        let mut message =
            self.encode_keyed(&full, event, &metadata, key.as_deref(), E::KEY_FIELD)?;
        for (name, value) in options.headers.iter() {
            message.headers.append(name, value);
        }
        self.publish_one(full.into_owned(), message).await
    }

    /// Publishes a message that is not a typed event (bytes, JSON) to `topic`, with the topic
    /// prefix applied as `send` does; the message goes out as it is, through the layers.
    pub async fn send_raw(&self, topic: &str, message: Message) -> Result<Position> {
        let full = self.settings.topic_name(topic);
        self.publish_one(full.into_owned(), message).await
    }

    /// Publishes several raw messages to `topic` (prefix applied) in one batch, in order.
    pub async fn send_raw_batch(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Position>> {
        let full = self.settings.topic_name(topic);
        self.publish_to(full.into_owned(), messages, all).await
    }

    /// Publishes an event that already has metadata (from a signal) with an explicit key: the
    /// text of the value at `key_field`, or of the event type's own key field when `None`.
    pub async fn send_envelope<E: Event>(
        &self,
        topic: &str,
        envelope: &Envelope<E>,
        key: Option<&str>,
        key_field: Option<&str>,
    ) -> Result<Position> {
        let full = self.settings.topic_name(topic);
        let field = key_field.or(E::KEY_FIELD);
        self.register::<E>(&full, field.filter(|_| key.is_some()))
            .await?;
        let message =
            self.encode_keyed(&full, envelope.event(), envelope.metadata(), key, field)?;
        self.publish_one(full.into_owned(), message).await
    }

    /// Publishes several events to `topic` in one batch, in order.
    pub async fn send_batch<E: Event>(&self, topic: &str, events: &[E]) -> Result<Vec<Position>> {
        let full = self.settings.topic_name(topic);
        self.register::<E>(&full, E::KEY_FIELD).await?;
        let messages = self.encode_new(&full, events)?;
        self.publish_to(full.into_owned(), messages, all).await
    }

    /// Publishes ready messages to a full topic name (no prefix added), through the layers.
    pub async fn publish(&self, full_topic: &str, messages: Vec<Message>) -> Result<Vec<Position>> {
        self.publish_to(full_topic.to_owned(), messages, all).await
    }

    /// [`Producer::publish`] of a topic name the batch can take as it is; `take` reads the
    /// positions (with the topic, for its errors).
    async fn publish_to<T>(
        &self,
        full_topic: String,
        messages: Vec<Message>,
        take: impl FnOnce(Vec<Position>, &str) -> Result<T>,
    ) -> Result<T> {
        let mut out = Outgoing {
            topic: full_topic,
            messages,
            backend: self.backend,
        };
        match PublishNext::new(&self.running, self.publisher.as_ref())
            .run(&mut out)
            .await
        {
            Ok(positions) => take(positions, &out.topic),
            Err(e) => Err(e.with("topic", &out.topic)),
        }
    }

    /// Publishes one message; its position once the broker has it.
    async fn publish_one(&self, full_topic: String, message: Message) -> Result<Position> {
        self.publish_to(full_topic, vec![message], single).await
    }

    /// Waits until everything sent so far is with the broker.
    pub async fn flush(&self) -> Result<()> {
        self.publisher.flush().await
    }

    /// Flushes and closes; later sends fail with [`ErrorKind::Closed`].
    pub async fn close(&self) -> Result<()> {
        self.publisher.close().await
    }
}

/// An event's header list before its headers are written, with room for all of them: the ten
/// CloudEvents attributes, `traceparent` and `tracestate`.
fn event_headers() -> Headers {
    Headers::with_capacity(12)
}

/// The most a batch's buffer reserves up front for the events after its first; past it, the
/// buffer grows as it is written.
const BATCH_RESERVE_CAP: usize = 4 << 20;

/// The room a buffer of new events starts with: a small event's payload and its texts, so that
/// a single send seldom grows it.
const NEW_EVENT_ROOM: usize = 256;

fn all(positions: Vec<Position>, _topic: &str) -> Result<Vec<Position>> {
    Ok(positions)
}

fn single(mut positions: Vec<Position>, topic: &str) -> Result<Position> {
    positions.pop().ok_or_else(|| {
        Error::new(
            ErrorKind::Publish,
            "the backend confirmed no message; this is a backend bug",
        )
        .with("topic", topic)
    })
}
