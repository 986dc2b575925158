//! A client for the Confluent schema-registry REST API: the subset the Confluent framing needs.
//!
//! `register` first asks whether the subject's latest version accepts the schema (the
//! compatibility check that keeps a new minor version from breaking readers), then registers it
//! and returns its id; registering a schema the subject already has returns the existing id.
//! `schema` fetches a writer schema by id. The core caches both answers in its `SchemaStore`.

use async_trait::async_trait;
use eventbus_core::config::redact_url;
use eventbus_core::{Error, ErrorKind, EventSchema, Result, SchemaRegistry};
use serde::Deserialize;
use serde_json::json;

use crate::settings::RegistrySettings;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// The registry's error code for a subject it does not know.
const SUBJECT_NOT_FOUND: i64 = 40401;

/// Talks to one schema registry.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    settings: RegistrySettings,
}

#[derive(Deserialize)]
struct Id {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaText {
    schema: String,
}

#[derive(Deserialize)]
struct Compatibility {
    is_compatible: bool,
    #[serde(default)]
    messages: Vec<String>,
}

#[derive(Deserialize, Default)]
struct RegistryError {
    #[serde(default)]
    error_code: i64,
    #[serde(default)]
    message: String,
}

impl RegistryClient {
    /// A client for the registry `settings` names.
    pub fn new(settings: RegistrySettings) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    "cannot build the schema-registry HTTP client",
                )
                .with_source(e)
            })?;
        url::Url::parse(&settings.url).map_err(|e| {
            Error::new(ErrorKind::Config, "the schema-registry URL is malformed")
                .with("setting", "EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL")
                .with("url", redact_url(&settings.url))
                .with_source(e)
        })?;
        Ok(Self { http, settings })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.settings.url.trim_end_matches('/'))
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, self.url(path))
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        match &self.settings.username {
            Some(user) => request.basic_auth(user, self.settings.password.as_deref()),
            None => request,
        }
    }

    /// Sends `request`; an answer other than 2xx becomes `Err` with the registry's error code.
    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        what: &'static str,
        request: reqwest::RequestBuilder,
    ) -> std::result::Result<T, (Option<i64>, Error)> {
        let url = redact_url(&self.settings.url);
        let response = request.send().await.map_err(|e| {
            let error = Error::new(
                ErrorKind::Connection,
                format!("the schema registry did not answer ({what}); check EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL"),
            )
            .with("url", &url)
            .with_source(e)
            .temporary();
            (None, error)
        })?;
        let status = response.status();
        if status.is_success() {
            return response.json::<T>().await.map_err(|e| {
                let error = Error::new(
                    ErrorKind::Connection,
                    format!("the schema registry sent an unreadable answer ({what})"),
                )
                .with("url", &url)
                .with_source(e);
                (None, error)
            });
        }
        let body: RegistryError = response.json().await.unwrap_or_default();
        let kind = if status == reqwest::StatusCode::UNAUTHORIZED
            || status == reqwest::StatusCode::FORBIDDEN
        {
            ErrorKind::Config
        } else {
            ErrorKind::Serialize
        };
        let mut error = Error::new(
            kind,
            format!(
                "the schema registry refused the request ({what}): {}",
                body.message
            ),
        )
        .with("url", &url)
        .with("status", status.as_u16())
        .with("error_code", body.error_code);
        if status.is_server_error() {
            error = error.temporary();
        }
        Err((Some(body.error_code), error))
    }
}

#[async_trait]
impl SchemaRegistry for RegistryClient {
    async fn register(&self, subject: &str, schema: &EventSchema) -> Result<u32> {
        let body = json!({ "schema": schema.json() });
        let check = self.request(
            reqwest::Method::POST,
            &format!("compatibility/subjects/{subject}/versions/latest"),
        );
        match self
            .send::<Compatibility>("compatibility check", check.json(&body))
            .await
        {
            Ok(c) if !c.is_compatible => {
                return Err(Error::new(
                    ErrorKind::Serialize,
                    "the event's schema is not compatible with the latest version registered under its subject; \
                     a new minor version may only add optional fields (with defaults)",
                )
                .with("subject", subject)
                .with("why", c.messages.join("; ")));
            }
            Ok(_) => {}
            // A new subject has nothing to be compatible with.
            Err((Some(SUBJECT_NOT_FOUND), _)) => {}
            Err((_, e)) => return Err(e.with("subject", subject)),
        }
        let register = self.request(
            reqwest::Method::POST,
            &format!("subjects/{subject}/versions"),
        );
        let id: Id = self
            .send("register", register.json(&body))
            .await
            .map_err(|(_, e)| e.with("subject", subject))?;
        tracing::info!(subject, id = id.id, "schema registered");
        Ok(id.id)
    }

    async fn schema(&self, id: u32) -> Result<EventSchema> {
        let request = self.request(reqwest::Method::GET, &format!("schemas/ids/{id}"));
        let text: SchemaText = self
            .send("fetch schema", request)
            .await
            .map_err(|(_, e)| e.with("schema_id", id))?;
        EventSchema::parse(&text.schema).map_err(|e| e.with("schema_id", id))
    }
}
