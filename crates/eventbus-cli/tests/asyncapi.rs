//! Generated AsyncAPI documents validate against the official AsyncAPI 3.0.0 JSON schema (from
//! the npm package `@asyncapi/specs`, installed by `bash scripts/asyncapi-specs.sh`), and broken
//! ones do not, so that a validator that accepts everything cannot pass.

use std::path::PathBuf;
use std::sync::OnceLock;

use eventbus::Event;
use eventbus_cli::asyncapi::{
    document, Action, ChannelSpec, MessageSpec, OperationSpec, Server, Spec,
};
use eventbus_testkit::openedx::SessionLoginCompleted;
use serde_json::{json, Value};

/// The schema file: `EVENTBUS_ASYNCAPI_SCHEMA`, else where the install script puts it.
fn schema_path() -> PathBuf {
    match std::env::var_os("EVENTBUS_ASYNCAPI_SCHEMA") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/asyncapi-specs/node_modules/@asyncapi/specs/schemas/3.0.0.json"),
    }
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let path = schema_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the AsyncAPI 3.0.0 schema at {}: {e}; run \
                 `bash scripts/asyncapi-specs.sh` (or set EVENTBUS_ASYNCAPI_SCHEMA to the file)",
                path.display()
            )
        });
        let schema: Value = serde_json::from_str(&text).expect("the schema file is JSON");
        // Draft 7, every definition bundled under its own `$id`: nothing is fetched.
        jsonschema::draft7::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("the AsyncAPI schema compiles")
    })
}

/// Checks `doc` against the official AsyncAPI 3.0.0 schema; the error lists every violation
/// with where it is in the document.
pub fn validate(doc: &Value) -> Result<(), String> {
    let errors: Vec<String> = validator()
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

fn login() -> MessageSpec {
    let schema = SessionLoginCompleted::schema().unwrap();
    MessageSpec {
        event_type: SessionLoginCompleted::EVENT_TYPE.into(),
        minor_version: SessionLoginCompleted::MINOR_VERSION,
        avro_schema_json: schema.json().into(),
        key_field: Some("user.id".into()),
    }
}

fn spec(server: Server) -> Spec {
    let login_type = SessionLoginCompleted::EVENT_TYPE.to_owned();
    Spec {
        title: "lms".into(),
        version: "0.1.0".into(),
        description: Some("Open edX logins on the event bus.".into()),
        servers: vec![server],
        messages: vec![login()],
        channels: vec![
            ChannelSpec {
                topic: "dev-user-login".into(),
                event_types: vec![login_type.clone()],
            },
            ChannelSpec {
                topic: "dev/audit".into(),
                event_types: vec![login_type, "org.example.unregistered.v1".into()],
            },
        ],
        operations: vec![
            OperationSpec {
                name: "publish-login".into(),
                action: Action::Send,
                topic: "dev-user-login".into(),
                group: None,
            },
            OperationSpec {
                name: "audit".into(),
                action: Action::Receive,
                topic: "dev/audit".into(),
                group: Some("auditors".into()),
            },
        ],
    }
}

fn redis() -> Server {
    Server {
        name: "local".into(),
        url: "redis://127.0.0.1:6379/0".into(),
        protocol: "redis".into(),
    }
}

#[test]
fn redis_document_is_valid_asyncapi_3() {
    let doc = document(&spec(redis()));
    validate(&doc).unwrap_or_else(|e| panic!("{e}\n{doc:#}"));
    let message = &doc["components"]["messages"][SessionLoginCompleted::EVENT_TYPE];
    assert_eq!(message["payload"]["schema"]["name"], "CloudEvent");
}

#[test]
fn kafka_document_with_bindings_is_valid() {
    let kafka = Server {
        name: "kafka".into(),
        url: "kafka://broker-1:9092".into(),
        protocol: "kafka".into(),
    };
    let doc = document(&spec(kafka));
    let message = &doc["components"]["messages"][SessionLoginCompleted::EVENT_TYPE];
    assert_eq!(message["bindings"]["kafka"]["key"]["type"], "integer");
    assert!(doc["operations"]["audit"]["bindings"]["kafka"]["groupId"].is_object());
    validate(&doc).unwrap_or_else(|e| panic!("{e}\n{doc:#}"));

    // The bindings are checked too: a group id must be a schema, not a bare name.
    let mut broken = doc.clone();
    broken["operations"]["audit"]["bindings"]["kafka"]["groupId"] = json!("auditors");
    assert!(validate(&broken).is_err());
}

#[test]
fn yaml_round_trip_is_still_valid() {
    let doc = document(&spec(redis()));
    let yaml = eventbus_cli::asyncapi::to_yaml(&doc).unwrap();
    let back: Value = serde_norway::from_str(&yaml).unwrap();
    validate(&back).unwrap();
}

/// What a broken document breaks, how, and where the error must point.
type Breakage<'a> = (&'a str, fn(&mut Value), &'a str);

#[test]
fn broken_documents_are_rejected() {
    let good = document(&spec(redis()));
    let login = format!(
        "/components/messages/{}:",
        SessionLoginCompleted::EVENT_TYPE
    );
    // What breaks, how, and a piece of the error that shows it was caught where it was made.
    let breakages: [Breakage<'_>; 6] = [
        (
            "asyncapi 2.0.0",
            |d| d["asyncapi"] = json!("2.0.0"),
            "/asyncapi:",
        ),
        (
            "no info",
            |d| drop(d.as_object_mut().unwrap().remove("info")),
            "\"info\" is a required property",
        ),
        (
            "address a number",
            |d| d["channels"]["dev-user-login"]["address"] = json!(7),
            "/channels/dev-user-login:",
        ),
        (
            "server without host",
            |d| {
                drop(
                    d["servers"]["local"]
                        .as_object_mut()
                        .unwrap()
                        .remove("host"),
                )
            },
            "/servers/local:",
        ),
        (
            "unknown action",
            |d| d["operations"]["audit"]["action"] = json!("consume"),
            "/operations/audit:",
        ),
        (
            "Avro record without fields",
            |d| {
                let message = &mut d["components"]["messages"][SessionLoginCompleted::EVENT_TYPE];
                drop(
                    message["payload"]["schema"]
                        .as_object_mut()
                        .unwrap()
                        .remove("fields"),
                )
            },
            &login,
        ),
    ];
    for (what, breaks, caught_at) in breakages {
        let mut doc = good.clone();
        breaks(&mut doc);
        assert_ne!(doc, good, "{what}: the breakage changed nothing");
        let errors = validate(&doc).expect_err(what);
        assert!(
            errors.contains(caught_at),
            "{what}: not caught at {caught_at}:\n{errors}"
        );
    }
}

mod support;

/// The document the example service prints, as a user gets it: its event type, the topic its
/// routing table sends it to, and its named consumer.
#[test]
fn the_example_service_document_is_valid() {
    let routing = r#"{"org.example.order.placed.v1": {"orders": {"event_key_field": "order_id", "enabled": true}}}"#;
    let cli = support::Cli::new(support::orders_service_bin(), "redis://127.0.0.1:6379")
        .with_env("EVENT_BUS_PRODUCER_CONFIG", routing);
    let doc: Value = serde_json::from_str(&cli.ok(&["asyncapi", "--format", "json"], ""))
        .expect("JSON document");
    if let Err(errors) = validate(&doc) {
        panic!("the example's document is not valid AsyncAPI 3.0:\n{errors}\n{doc:#}");
    }
    let channel = &doc["channels"]["orders"];
    assert_eq!(channel["address"], "orders");
    let message = &doc["components"]["messages"]
        .as_object()
        .and_then(|m| m.values().next().cloned())
        .expect("one message");
    assert_eq!(
        message["payload"]["schemaFormat"],
        "application/vnd.apache.avro+json;version=1.9.0"
    );
    assert_eq!(message["payload"]["schema"]["name"], "CloudEvent");
    let actions: Vec<&str> = doc["operations"]
        .as_object()
        .expect("operations")
        .values()
        .filter_map(|o| o["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"send") && actions.contains(&"receive"),
        "{actions:?}"
    );
    assert_eq!(doc["servers"]["redis"]["host"], "127.0.0.1:6379");

    let yaml = cli.ok(&["asyncapi"], "");
    let from_yaml: Value = serde_norway::from_str(&yaml).expect("YAML document");
    assert_eq!(from_yaml, doc, "YAML and JSON say the same");
}
