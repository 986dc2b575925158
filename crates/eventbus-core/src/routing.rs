//! The routing table that makes `signal.send(event)` publish to the bus: event type → topics,
//! key field, enabled. It is the counterpart of Open edX's `EVENT_BUS_PRODUCER_CONFIG`, and reads
//! the same JSON shape:
//!
//! ```json
//! {"org.openedx.learning.auth.session.login.completed.v1":
//!     {"user-login": {"event_key_field": "user.id", "enabled": true}}}
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};
use crate::event::{Envelope, Event};
use crate::metadata::{host_name, source_for_service, EventMetadata};
use crate::producer::Producer;
use crate::transport::Position;

/// One topic an event type is published to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct TopicRoute {
    /// Topic, without prefix.
    #[serde(skip)]
    pub topic: String,
    /// Dotted path of the key field in the event (`user.id`); `None` uses the event's own key.
    #[serde(default, rename = "event_key_field")]
    pub key_field: Option<String>,
    /// A disabled route publishes nothing.
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

fn enabled_default() -> bool {
    true
}

impl TopicRoute {
    /// An enabled route to `topic` using the event's own key.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            key_field: None,
            enabled: true,
        }
    }

    /// Uses the value at the dotted path `field` as key.
    #[must_use]
    pub fn key_field(mut self, field: impl Into<String>) -> Self {
        self.key_field = Some(field.into());
        self
    }

    /// Enables or disables the route.
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }
}

/// Event type → routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingTable {
    routes: BTreeMap<String, Vec<TopicRoute>>,
}

impl RoutingTable {
    /// An empty table: signals publish nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an enabled route of `E` to `topic`.
    #[must_use]
    pub fn route<E: Event>(self, topic: impl Into<String>) -> Self {
        self.add(E::EVENT_TYPE, TopicRoute::new(topic))
    }

    /// Adds a route for the type name `event_type`.
    #[must_use]
    pub fn add(mut self, event_type: impl Into<String>, route: TopicRoute) -> Self {
        self.routes
            .entry(event_type.into())
            .or_default()
            .push(route);
        self
    }

    /// Reads Open edX's `EVENT_BUS_PRODUCER_CONFIG` JSON.
    pub fn from_json(json: &str) -> Result<Self> {
        let parsed: BTreeMap<String, BTreeMap<String, TopicRoute>> = serde_json::from_str(json).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                "the producer routing is not valid JSON of the form {event_type: {topic: {event_key_field, enabled}}}",
            )
            .with("setting", "EVENT_BUS_PRODUCER_CONFIG")
            .with_source(e)
        })?;
        let mut table = Self::new();
        for (event_type, topics) in parsed {
            for (topic, mut route) in topics {
                route.topic = topic;
                table = table.add(event_type.clone(), route);
            }
        }
        Ok(table)
    }

    /// The routes of `event_type`.
    pub fn routes(&self, event_type: &str) -> &[TopicRoute] {
        self.routes
            .get(event_type)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// A producer plus routing table installed for signals.
#[derive(Debug)]
pub(crate) struct Outbox {
    pub(crate) producer: Producer,
    pub(crate) table: RoutingTable,
}

static OUTBOX: RwLock<Option<Arc<Outbox>>> = RwLock::new(None);

pub(crate) fn install(outbox: Option<Outbox>) {
    if let Ok(mut slot) = OUTBOX.write() {
        *slot = outbox.map(Arc::new);
    }
}

pub(crate) fn installed() -> Option<Arc<Outbox>> {
    OUTBOX.read().ok().and_then(|slot| slot.clone())
}

/// Metadata for a signal sent with no bus installed.
pub(crate) fn default_metadata<E: Event>() -> EventMetadata {
    // Read once: the host name comes from a file, and signals may be sent in a hot loop.
    static SOURCE: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    let (source, host) = SOURCE.get_or_init(|| {
        let service =
            std::env::var("EVENTS_SERVICE_NAME").unwrap_or_else(|_| "eventbus".to_owned());
        (source_for_service(&service), host_name())
    });
    EventMetadata::new(E::EVENT_TYPE, E::MINOR_VERSION, source, host)
}

impl Outbox {
    pub(crate) fn metadata<E: Event>(&self) -> EventMetadata {
        self.producer.metadata::<E>()
    }

    pub(crate) async fn publish<E: Event>(
        &self,
        envelope: &Envelope<E>,
    ) -> Result<Vec<(String, Position)>> {
        let mut published = Vec::new();
        for route in self
            .table
            .routes(E::EVENT_TYPE)
            .iter()
            .filter(|r| r.enabled)
        {
            let key = match &route.key_field {
                Some(path) => key_at_path(envelope.event(), path)?,
                None => envelope.event().key(),
            };
            let position = self
                .producer
                .send_envelope(
                    &route.topic,
                    envelope,
                    key.as_deref(),
                    route.key_field.as_deref(),
                )
                .await?;
            published.push((route.topic.clone(), position));
        }
        Ok(published)
    }
}

/// Reads the value at a dotted path of a serialized event as a key.
fn key_at_path<E: Event>(event: &E, path: &str) -> Result<Option<String>> {
    let value = serde_json::to_value(event).map_err(|e| {
        Error::new(ErrorKind::Serialize, "cannot read the key field")
            .with("event_type", E::EVENT_TYPE)
            .with_source(e)
    })?;
    let mut at = &value;
    for part in path.split('.') {
        at = at.get(part).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "the event has no field at the configured key path",
            )
            .with("event_type", E::EVENT_TYPE)
            .with("event_key_field", path)
        })?;
    }
    Ok(match at {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_open_edx_producer_config() {
        let table = RoutingTable::from_json(
            r#"{"org.openedx.learning.auth.session.login.completed.v1":
                {"user-login": {"event_key_field": "user.id", "enabled": true},
                 "audit": {"enabled": false}}}"#,
        )
        .unwrap();
        let routes = table.routes("org.openedx.learning.auth.session.login.completed.v1");
        assert_eq!(routes.len(), 2);
        let login = routes.iter().find(|r| r.topic == "user-login").unwrap();
        assert_eq!(login.key_field.as_deref(), Some("user.id"));
        assert!(!routes.iter().find(|r| r.topic == "audit").unwrap().enabled);
    }

    #[test]
    fn bad_producer_config_names_the_setting() {
        let err = RoutingTable::from_json("[1]").unwrap_err();
        assert!(
            err.to_string().contains("EVENT_BUS_PRODUCER_CONFIG"),
            "{err}"
        );
    }
}
