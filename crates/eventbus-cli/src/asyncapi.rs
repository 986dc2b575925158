//! AsyncAPI 3.0.0 documents of the event types, topics and consumers a program knows.
//!
//! Each event type becomes a message whose payload is its Avro schema (a multi-format schema
//! object) and whose headers are the CloudEvents attributes eventbus writes. Each topic becomes a
//! channel listing the messages it carries, and each producer or named consumer an operation on
//! one channel. The key field, consumer group and minor version, which AsyncAPI has no place
//! for, travel as `x-eventbus-*` extensions; on Kafka they also fill the Kafka bindings.
//!
//! ```
//! use eventbus_cli::asyncapi::{document, to_yaml, Action, ChannelSpec, OperationSpec, Spec};
//!
//! let spec = Spec {
//!     title: "orders".into(),
//!     version: "1.0.0".into(),
//!     channels: vec![ChannelSpec { topic: "dev-orders".into(), event_types: vec![] }],
//!     operations: vec![OperationSpec {
//!         name: "billing".into(),
//!         action: Action::Receive,
//!         topic: "dev-orders".into(),
//!         group: Some("billing".into()),
//!     }],
//!     ..Spec::default()
//! };
//! let doc = document(&spec);
//! assert_eq!(doc["operations"]["billing"]["channel"]["$ref"], "#/channels/dev-orders");
//! assert!(to_yaml(&doc).unwrap().starts_with("asyncapi: 3.0.0"));
//! ```

use std::collections::{HashMap, HashSet};

use eventbus::metadata::header;
use eventbus::serializer::KeySchema;
use eventbus::telemetry::trace_context::{TRACEPARENT, TRACESTATE};
use eventbus::EventSchema;
use serde_json::{json, Map, Value};

/// What a document describes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spec {
    /// `info.title`, e.g. the service name.
    pub title: String,
    /// `info.version`, the version of the service or of its event contracts.
    pub version: String,
    /// `info.description`.
    pub description: Option<String>,
    /// The brokers.
    pub servers: Vec<Server>,
    /// The event types.
    pub messages: Vec<MessageSpec>,
    /// The topics and the event types on each.
    pub channels: Vec<ChannelSpec>,
    /// What the program sends and receives.
    pub operations: Vec<OperationSpec>,
}

/// A broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Its key under `servers`, e.g. `production`.
    pub name: String,
    /// Its URL with any credentials already removed, e.g. `redis://127.0.0.1:6379/0`; only the
    /// host (with port) and the path go into the document.
    pub url: String,
    /// `kafka`, `redis`, `pulsar` or `memory`.
    pub protocol: String,
}

/// An event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSpec {
    /// Its type name, e.g. `org.openedx.learning.auth.session.login.completed.v1`.
    pub event_type: String,
    /// The minor version of the schema below.
    pub minor_version: u32,
    /// Its Avro schema as JSON text.
    pub avro_schema_json: String,
    /// The dotted path of the field that keys its events, e.g. `user.id`.
    pub key_field: Option<String>,
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    /// The full topic name, e.g. `dev-user-login`.
    pub topic: String,
    /// The types of the events it carries; each should have a [`MessageSpec`].
    pub event_types: Vec<String>,
}

/// Something the program does on a topic: publish, or consume as a named consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationSpec {
    /// Its key under `operations`, e.g. the consumer's name.
    pub name: String,
    /// Whether it sends or receives.
    pub action: Action,
    /// The full topic name.
    pub topic: String,
    /// The consumer group, for a receiving operation.
    pub group: Option<String>,
}

/// The direction of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// The program publishes to the channel.
    Send,
    /// The program consumes from the channel.
    Receive,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::Receive => "receive",
        }
    }
}

/// The AsyncAPI 3.0.0 document of `spec`.
///
/// Keys are made safe for AsyncAPI (`^[\w\d.\-_]+$`, other characters become `_`, and clashes get
/// a numeric suffix). A topic named only by an operation still gets a channel, and an event
/// type named by a channel without a [`MessageSpec`] gets a message without payload, so every
/// reference in the document resolves.
pub fn document(spec: &Spec) -> Value {
    let kafka = spec.servers.iter().any(|s| s.protocol == "kafka");

    let mut message_ids = Ids::default();
    let mut messages = Map::new();
    let mut message_id = HashMap::new();
    let known = spec
        .messages
        .iter()
        .map(|m| (m.event_type.as_str(), Some(m)));
    let named = spec.channels.iter().flat_map(|c| &c.event_types);
    for (event_type, message) in known.chain(named.map(|t| (t.as_str(), None))) {
        if message_id.contains_key(event_type) {
            continue;
        }
        let id = message_ids.unique(event_type);
        messages.insert(id.clone(), message_object(event_type, message, kafka));
        message_id.insert(event_type, id);
    }

    // Topic → event types, in the order topics first appear.
    let mut topics: Vec<(&str, Vec<&str>)> = Vec::new();
    let topic_names = spec
        .channels
        .iter()
        .map(|c| (c.topic.as_str(), &c.event_types[..]));
    let op_topics = spec.operations.iter().map(|o| (o.topic.as_str(), &[][..]));
    for (topic, types) in topic_names.chain(op_topics) {
        let at = match topics.iter().position(|(t, _)| *t == topic) {
            Some(at) => at,
            None => {
                topics.push((topic, Vec::new()));
                topics.len() - 1
            }
        };
        for t in types {
            if !topics[at].1.contains(&t.as_str()) {
                topics[at].1.push(t);
            }
        }
    }

    let mut channel_ids = Ids::default();
    let mut channels = Map::new();
    let mut channel_of = HashMap::new();
    for (topic, types) in &topics {
        let id = channel_ids.unique(topic);
        let refs: Map<String, Value> = types
            .iter()
            .filter_map(|t| message_id.get(t))
            .map(|m| (m.clone(), reference(&format!("#/components/messages/{m}"))))
            .collect();
        channels.insert(id.clone(), json!({"address": topic, "messages": refs}));
        channel_of.insert(*topic, (id, types));
    }

    let mut operation_ids = Ids::default();
    let mut operations = Map::new();
    for op in &spec.operations {
        let Some((channel, types)) = channel_of.get(op.topic.as_str()) else {
            continue;
        };
        let refs: Vec<Value> = types
            .iter()
            .filter_map(|t| message_id.get(t))
            .map(|m| reference(&format!("#/channels/{channel}/messages/{m}")))
            .collect();
        let mut operation = json!({
            "action": op.action.as_str(),
            "channel": reference(&format!("#/channels/{channel}")),
            "messages": refs,
        });
        if let Some(group) = &op.group {
            operation["x-eventbus-group"] = json!(group);
            if kafka {
                operation["bindings"] =
                    json!({"kafka": {"groupId": {"type": "string", "enum": [group]}}});
            }
        }
        operations.insert(operation_ids.unique(&op.name), operation);
    }

    let mut server_ids = Ids::default();
    let servers: Map<String, Value> = spec
        .servers
        .iter()
        .map(|s| (server_ids.unique(&s.name), server_object(s)))
        .collect();

    let mut info = json!({"title": spec.title, "version": spec.version});
    if let Some(description) = &spec.description {
        info["description"] = json!(description);
    }
    json!({
        "asyncapi": "3.0.0",
        "info": info,
        "defaultContentType": "application/avro",
        "servers": servers,
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    })
}

/// The document as YAML.
pub fn to_yaml(doc: &Value) -> Result<String, serde_norway::Error> {
    serde_norway::to_string(doc)
}

/// The document as indented JSON.
pub fn to_json(doc: &Value) -> String {
    format!("{doc:#}")
}

fn reference(to: &str) -> Value {
    json!({"$ref": to})
}

/// Hands out distinct keys that AsyncAPI accepts.
#[derive(Default)]
struct Ids(HashSet<String>);

impl Ids {
    fn unique(&mut self, raw: &str) -> String {
        let safe: String = raw
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
                _ => '_',
            })
            .collect();
        let safe = if safe.is_empty() {
            "_".to_owned()
        } else {
            safe
        };
        let mut id = safe.clone();
        let mut n = 1;
        while !self.0.insert(id.clone()) {
            n += 1;
            id = format!("{safe}_{n}");
        }
        id
    }
}

fn server_object(server: &Server) -> Value {
    let rest = server
        .url
        .split_once("://")
        .map_or(server.url.as_str(), |(_, rest)| rest);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    // A redacted URL may still carry a user name; the document has no place for it.
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = if host.is_empty() { "localhost" } else { host };
    let mut out = json!({"host": host, "protocol": server.protocol});
    if !path.is_empty() && path != "/" {
        out["pathname"] = json!(path);
    }
    out
}

fn message_object(event_type: &str, message: Option<&MessageSpec>, kafka: bool) -> Value {
    let minor = message.map_or(0, |m| m.minor_version);
    let mut out = json!({
        "name": event_type,
        "title": title(event_type),
        "contentType": "application/avro",
        "headers": headers(event_type, minor),
        "correlationId": {
            "description": "The event's unique id, which every retry and replay keeps.",
            "location": format!("$message.header#/{}", header::ID),
        },
    });
    let Some(message) = message else {
        out["description"] =
            json!("Events of this type travel here; this program does not know their schema.");
        return out;
    };
    out["x-eventbus-minor-version"] = json!(message.minor_version);
    match serde_json::from_str::<Value>(&message.avro_schema_json) {
        Ok(schema) => {
            out["payload"] = json!({
                "schemaFormat": "application/vnd.apache.avro+json;version=1.9.0",
                "schema": schema,
            });
        }
        Err(e) => {
            out["description"] = json!(format!("The event's Avro schema is not valid JSON: {e}"));
        }
    }
    if let Some(field) = &message.key_field {
        out["x-eventbus-key-field"] = json!(field);
        if let Some(key) = kafka
            .then(|| key_schema(&message.avro_schema_json, field))
            .flatten()
        {
            out["bindings"] = json!({"kafka": {"key": key}});
        }
    }
    out
}

/// A readable title from a type name: `org.example.order.placed.v1` gives `Order placed`.
fn title(event_type: &str) -> String {
    let is_version = |s: &&str| {
        s.strip_prefix('v')
            .is_some_and(|n| n.parse::<u32>().is_ok())
    };
    let mut words: Vec<&str> = event_type.split('.').collect();
    if words.last().is_some_and(is_version) {
        words.pop();
    }
    let words = words[words.len().saturating_sub(2)..]
        .join(" ")
        .replace('_', " ");
    let mut chars = words.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => event_type.to_owned(),
    }
}

/// The Kafka key as JSON Schema: the key field's type, which the Confluent framing writes as an
/// Avro datum of that field alone. `None` when the field is not a primitive the framing allows.
fn key_schema(avro_json: &str, field: &str) -> Option<Value> {
    let key = KeySchema::of(&EventSchema::parse(avro_json).ok()?, field).ok()?;
    let avro: Value = serde_json::from_str(key.json()).ok()?;
    let json_type = match avro.get("type")?.as_str()? {
        "boolean" => "boolean",
        "int" | "long" => "integer",
        "float" | "double" => "number",
        _ => "string",
    };
    Some(json!({
        "type": json_type,
        "description": format!("The `{field}` field, as an Avro datum in Confluent framing."),
    }))
}

/// The CloudEvents attributes as eventbus (and Open edX) write them, one header each.
fn headers(event_type: &str, minor: u32) -> Value {
    let avro = json!({"examples": ["application/avro"]});
    let attributes = [
        (
            header::ID,
            "Unique id of the event.",
            json!({"format": "uuid"}),
        ),
        (
            header::TYPE,
            "The event type.",
            json!({"const": event_type}),
        ),
        (
            header::SOURCE,
            "The producing service, `openedx/<service>/web`.",
            json!({"examples": ["openedx/orders/web"]}),
        ),
        (
            header::SPEC_VERSION,
            "The CloudEvents version.",
            json!({"const": "1.0"}),
        ),
        (
            header::TIME,
            "When the event happened: ISO 8601 with microseconds.",
            json!({"format": "date-time", "examples": ["2026-11-22T05:20:27.505586+00:00"]}),
        ),
        (
            header::MINOR_VERSION,
            "The minor version of the writer's schema; readers resolve other minor versions.",
            json!({"pattern": "^[0-9]+$", "examples": [minor.to_string()]}),
        ),
        (header::SOURCE_HOST, "Host name of the producer.", json!({})),
        (
            header::SOURCE_LIB,
            "Version of the producing library.",
            // Open edX consumers parse it into a tuple of integers.
            json!({"pattern": "^[0-9]+(\\.[0-9]+)*$"}),
        ),
        (
            header::CONTENT_TYPE,
            "Content type of the payload.",
            avro.clone(),
        ),
        (
            header::DATA_CONTENT_TYPE,
            "Content type of the payload, as a CloudEvents attribute.",
            avro,
        ),
        (
            TRACEPARENT,
            "W3C Trace Context of the span that published the event.",
            json!({"pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"}),
        ),
        (TRACESTATE, "W3C Trace Context vendor state.", json!({})),
    ];
    let properties: Map<String, Value> = attributes
        .into_iter()
        .map(|(name, description, mut schema)| {
            schema["type"] = json!("string");
            schema["description"] = json!(description);
            (name.to_owned(), schema)
        })
        .collect();
    json!({
        "type": "object",
        // What CloudEvents requires; eventbus writes the rest too, other producers may not.
        "required": [header::ID, header::TYPE, header::SOURCE, header::SPEC_VERSION],
        "properties": properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGIN: &str = "org.openedx.learning.auth.session.login.completed.v1";
    const SCHEMA: &str = r#"{"name":"CloudEvent","type":"record","namespace":"x","fields":[
        {"name":"user","type":{"name":"UserData","type":"record",
            "fields":[{"name":"id","type":"long"}]}}]}"#;

    fn spec(protocol: &str) -> Spec {
        Spec {
            title: "svc".into(),
            version: "1.2.3".into(),
            description: Some("d".into()),
            servers: vec![Server {
                name: "local dev".into(),
                url: format!("{protocol}://***@127.0.0.1:6379/0?tls=1"),
                protocol: protocol.into(),
            }],
            messages: vec![MessageSpec {
                event_type: LOGIN.into(),
                minor_version: 2,
                avro_schema_json: SCHEMA.into(),
                key_field: Some("user.id".into()),
            }],
            channels: vec![ChannelSpec {
                topic: "dev/user-login".into(),
                event_types: vec![LOGIN.into(), "org.example.unknown.v1".into()],
            }],
            operations: vec![
                OperationSpec {
                    name: "publish login".into(),
                    action: Action::Send,
                    topic: "dev/user-login".into(),
                    group: None,
                },
                OperationSpec {
                    name: "audit".into(),
                    action: Action::Receive,
                    topic: "other".into(),
                    group: Some("auditors".into()),
                },
            ],
        }
    }

    #[test]
    fn shape() {
        let doc = document(&spec("redis"));
        assert_eq!(doc["asyncapi"], "3.0.0");
        assert_eq!(doc["info"]["description"], "d");
        let server = &doc["servers"]["local_dev"];
        assert_eq!(
            *server,
            json!({"host": "127.0.0.1:6379", "protocol": "redis", "pathname": "/0"})
        );

        let channel = &doc["channels"]["dev_user-login"];
        assert_eq!(channel["address"], "dev/user-login");
        assert_eq!(
            channel["messages"][LOGIN]["$ref"],
            format!("#/components/messages/{LOGIN}")
        );
        assert_eq!(
            doc["channels"]["other"],
            json!({"address": "other", "messages": {}})
        );

        let send = &doc["operations"]["publish_login"];
        assert_eq!(send["action"], "send");
        assert_eq!(send["channel"]["$ref"], "#/channels/dev_user-login");
        assert_eq!(
            send["messages"][0]["$ref"],
            format!("#/channels/dev_user-login/messages/{LOGIN}")
        );
        assert_eq!(send["messages"].as_array().unwrap().len(), 2);
        let receive = &doc["operations"]["audit"];
        assert_eq!(receive["x-eventbus-group"], "auditors");
        assert!(receive.get("bindings").is_none());

        let message = &doc["components"]["messages"][LOGIN];
        assert_eq!(message["title"], "Login completed");
        assert_eq!(message["contentType"], "application/avro");
        assert_eq!(message["payload"]["schema"]["fields"][0]["name"], "user");
        assert_eq!(message["x-eventbus-key-field"], "user.id");
        assert_eq!(message["x-eventbus-minor-version"], 2);
        assert_eq!(message["headers"]["properties"]["ce_type"]["const"], LOGIN);
        assert_eq!(
            message["headers"]["properties"]["ce_minorversion"]["examples"][0],
            "2"
        );
        assert!(message.get("bindings").is_none());
        let unknown = &doc["components"]["messages"]["org.example.unknown.v1"];
        assert!(unknown.get("payload").is_none());
    }

    #[test]
    fn kafka_gets_bindings() {
        let doc = document(&spec("kafka"));
        let message = &doc["components"]["messages"][LOGIN];
        assert_eq!(message["bindings"]["kafka"]["key"]["type"], "integer");
        let receive = &doc["operations"]["audit"];
        assert_eq!(
            receive["bindings"]["kafka"]["groupId"]["enum"][0],
            "auditors"
        );
    }

    #[test]
    fn keys_are_safe_and_distinct() {
        let mut ids = Ids::default();
        assert_eq!(ids.unique("a/b"), "a_b");
        assert_eq!(ids.unique("a_b"), "a_b_2");
        assert_eq!(ids.unique(""), "_");
        assert_eq!(ids.unique("ü ï"), "___");
    }

    #[test]
    fn server_urls() {
        let host = |url: &str| {
            let s = Server {
                name: "s".into(),
                url: url.into(),
                protocol: "kafka".into(),
            };
            server_object(&s)
        };
        assert_eq!(host("b1:9092,b2:9092")["host"], "b1:9092,b2:9092");
        assert_eq!(host("memory://")["host"], "localhost");
        assert_eq!(host("pulsar://h:6650/")["pathname"], Value::Null);
    }

    #[test]
    fn yaml_and_json() {
        let doc = document(&spec("redis"));
        let yaml = to_yaml(&doc).unwrap();
        assert!(yaml.starts_with("asyncapi: 3.0.0\n"), "{yaml}");
        let back: Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back, doc);
        assert_eq!(serde_json::from_str::<Value>(&to_json(&doc)).unwrap(), doc);
    }
}
