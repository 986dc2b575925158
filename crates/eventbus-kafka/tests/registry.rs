//! The schema-registry client against the registry fixture: ids, caching by the core,
//! compatibility checks before a new version, basic auth, and clear errors.

use eventbus::{ErrorKind, Event, EventSchema, SchemaRegistry};
use eventbus_kafka::{RegistryClient, RegistrySettings};
use eventbus_testkit::openedx::SessionLoginCompleted;
use eventbus_testkit::registry::RegistryServer;

fn login_schema() -> EventSchema {
    SessionLoginCompleted::schema().unwrap().clone()
}

/// The login schema with one more field, optional or required.
fn login_schema_with(field: &str) -> EventSchema {
    let mut json: serde_json::Value = serde_json::from_str(login_schema().json()).unwrap();
    let extra: serde_json::Value = serde_json::from_str(field).unwrap();
    json["fields"].as_array_mut().unwrap().push(extra);
    EventSchema::parse(&json.to_string()).unwrap()
}

const SUBJECT: &str =
    "dev-user-login-org.openedx.learning.auth.session.login.completed.v1.CloudEvent";

#[tokio::test]
async fn registers_fetches_and_checks_compatibility() {
    let server = RegistryServer::start().await.unwrap();
    let client = RegistryClient::new(RegistrySettings::new(server.url())).unwrap();

    let id = client.register(SUBJECT, &login_schema()).await.unwrap();
    assert_eq!(
        client.register(SUBJECT, &login_schema()).await.unwrap(),
        id,
        "same schema, same id"
    );
    let fetched = client.schema(id).await.unwrap();
    assert_eq!(
        fetched.avro().canonical_form(),
        login_schema().avro().canonical_form()
    );

    // A new minor version may add an optional field...
    let optional = login_schema_with(r#"{"name":"via","type":["null","string"],"default":null}"#);
    let v2 = client.register(SUBJECT, &optional).await.unwrap();
    assert_ne!(v2, id);
    assert_eq!(server.subjects()[SUBJECT], vec![id, v2]);

    // ...but not a required one: old messages could not be read.
    let required = login_schema_with(r#"{"name":"ip","type":"string"}"#);
    let err = client.register(SUBJECT, &required).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialize);
    assert!(err.to_string().contains("not compatible"), "{err}");
    assert!(err.to_string().contains(SUBJECT), "{err}");
    assert_eq!(server.subjects()[SUBJECT].len(), 2, "nothing registered");

    let err = client.schema(9999).await.unwrap_err();
    assert!(err.to_string().contains("9999"), "{err}");
}

#[tokio::test]
async fn basic_auth_is_sent_and_its_absence_explained() {
    let server = RegistryServer::start_with_auth("key", "secret")
        .await
        .unwrap();
    let anonymous = RegistryClient::new(RegistrySettings::new(server.url())).unwrap();
    let err = anonymous
        .register(SUBJECT, &login_schema())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("401"), "{err}");
    assert!(!err.is_temporary());

    let client =
        RegistryClient::new(RegistrySettings::new(server.url()).basic_auth("key", "secret"))
            .unwrap();
    client.register(SUBJECT, &login_schema()).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_registry_is_a_temporary_error_naming_the_setting() {
    let refusing = eventbus_testkit::fixture::RefusingPort::new().unwrap();
    let port = refusing.port();
    let client =
        RegistryClient::new(RegistrySettings::new(format!("http://127.0.0.1:{port}"))).unwrap();
    let err = client.schema(1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert!(err.is_temporary());
    assert!(
        err.to_string()
            .contains("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL"),
        "{err}"
    );

    let err = RegistryClient::new(RegistrySettings::new("not a url")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}
