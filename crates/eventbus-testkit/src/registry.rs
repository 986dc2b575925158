//! A schema-registry fixture: the part of the Confluent REST API that producers and consumers
//! of the Confluent framing use, served on a free loopback port, in memory.
//!
//! No Confluent registry can be installed on the project's machines, so Kafka tests run
//! against this one. It behaves as the real one does for:
//!
//! - `POST /subjects/{subject}/versions` `{"schema": …}` → `{"id": n}`. The same schema text
//!   gets the same id everywhere; a subject refuses (409) a schema its latest version cannot be
//!   read with (BACKWARD compatibility, checked with apache-avro);
//! - `POST /compatibility/subjects/{subject}/versions/latest` → `{"is_compatible": bool}`, or
//!   404 with `error_code` 40401 for an unknown subject;
//! - `GET /schemas/ids/{id}` → `{"schema": …}`, or 404 with 40403;
//! - `GET /subjects` and `GET /subjects/{subject}/versions/latest`;
//! - optional HTTP basic auth (401 without it).
//!
//! It counts requests, so tests can check that clients cache.

// The handlers' early returns carry a ready HTTP response; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use eventbus_core::{Error, ErrorKind, Result};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

#[derive(Debug, Default)]
struct Registry {
    /// Schema text by id; ids start at 1.
    schemas: Vec<String>,
    /// Ids of each subject's versions, oldest first.
    subjects: BTreeMap<String, Vec<u32>>,
}

#[derive(Debug)]
struct Shared {
    registry: Mutex<Registry>,
    requests: AtomicUsize,
    /// The expected `Authorization` header value, if auth is on.
    authorization: Option<String>,
}

/// A running registry fixture; it stops when dropped.
#[derive(Debug)]
pub struct RegistryServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl RegistryServer {
    /// Starts a registry without authentication.
    pub async fn start() -> Result<Self> {
        Self::launch(None).await
    }

    /// Starts a registry that wants HTTP basic auth with `user` and `password`.
    pub async fn start_with_auth(user: &str, password: &str) -> Result<Self> {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Self::launch(Some(format!("Basic {token}"))).await
    }

    async fn launch(authorization: Option<String>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Connection, "cannot bind the registry fixture").with_source(e)
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::new(ErrorKind::Connection, "no local address").with_source(e))?;
        let shared = Arc::new(Shared {
            registry: Mutex::default(),
            requests: AtomicUsize::new(0),
            authorization,
        });
        let app = Router::new()
            .route("/subjects", get(list_subjects))
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}/versions/latest", get(latest))
            .route(
                "/compatibility/subjects/{subject}/versions/latest",
                post(compatibility),
            )
            .route("/schemas/ids/{id}", get(schema_by_id))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "registry fixture stopped");
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests served so far, refused ones included.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The subjects and the ids of their versions.
    pub fn subjects(&self) -> BTreeMap<String, Vec<u32>> {
        self.lock().subjects.clone()
    }

    /// The schema text registered with `id`.
    pub fn schema(&self, id: u32) -> Option<String> {
        self.lock()
            .schemas
            .get(id.checked_sub(1)? as usize)
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.shared
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error(status: StatusCode, code: i64, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error_code": code, "message": message.into() })),
    )
        .into_response()
}

/// Counts the request and checks its credentials.
fn admit(shared: &Shared, headers: &HeaderMap) -> std::result::Result<(), Response> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    match &shared.authorization {
        Some(expected)
            if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected) =>
        {
            Err(error(StatusCode::UNAUTHORIZED, 401, "Unauthorized"))
        }
        _ => Ok(()),
    }
}

fn schema_text(body: &Value) -> std::result::Result<(String, Schema), Response> {
    let text = body["schema"].as_str().ok_or_else(|| {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "no schema in the body",
        )
    })?;
    let schema = Schema::parse_str(text).map_err(|e| {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("invalid schema: {e}"),
        )
    })?;
    Ok((text.to_owned(), schema))
}

/// Whether data written with the subject's latest schema can be read with `reader`.
fn check(
    registry: &Registry,
    subject: &str,
    reader: &Schema,
) -> Option<std::result::Result<(), String>> {
    let latest = *registry.subjects.get(subject)?.last()?;
    let writer_text = &registry.schemas[latest as usize - 1];
    let writer = Schema::parse_str(writer_text).ok()?;
    Some(SchemaCompatibility::can_read(&writer, reader).map_err(|e| e.to_string()))
}

async fn register(
    State(shared): State<Arc<Shared>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(refused) = admit(&shared, &headers) {
        return refused;
    }
    let (text, schema) = match schema_text(&body) {
        Ok(parsed) => parsed,
        Err(refused) => return refused,
    };
    let mut registry = shared.registry.lock().unwrap_or_else(|p| p.into_inner());
    let existing = registry
        .schemas
        .iter()
        .position(|s| *s == text)
        .map(|i| i as u32 + 1);
    if let Some(id) = existing {
        if registry
            .subjects
            .get(&subject)
            .is_some_and(|ids| ids.contains(&id))
        {
            return Json(json!({ "id": id })).into_response();
        }
    }
    if let Some(Err(why)) = check(&registry, &subject, &schema) {
        return error(
            StatusCode::CONFLICT,
            409,
            format!("incompatible with the latest version: {why}"),
        );
    }
    let id = existing.unwrap_or_else(|| {
        registry.schemas.push(text);
        registry.schemas.len() as u32
    });
    registry.subjects.entry(subject).or_default().push(id);
    Json(json!({ "id": id })).into_response()
}

async fn compatibility(
    State(shared): State<Arc<Shared>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(refused) = admit(&shared, &headers) {
        return refused;
    }
    let schema = match schema_text(&body) {
        Ok((_, schema)) => schema,
        Err(refused) => return refused,
    };
    let registry = shared.registry.lock().unwrap_or_else(|p| p.into_inner());
    match check(&registry, &subject, &schema) {
        None => error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        ),
        Some(Ok(())) => Json(json!({ "is_compatible": true })).into_response(),
        Some(Err(why)) => {
            Json(json!({ "is_compatible": false, "messages": [why] })).into_response()
        }
    }
}

async fn schema_by_id(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<u32>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = admit(&shared, &headers) {
        return refused;
    }
    let registry = shared.registry.lock().unwrap_or_else(|p| p.into_inner());
    match id
        .checked_sub(1)
        .and_then(|i| registry.schemas.get(i as usize))
    {
        Some(text) => Json(json!({ "schema": text })).into_response(),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn list_subjects(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(refused) = admit(&shared, &headers) {
        return refused;
    }
    let registry = shared.registry.lock().unwrap_or_else(|p| p.into_inner());
    Json(registry.subjects.keys().collect::<Vec<_>>()).into_response()
}

async fn latest(
    State(shared): State<Arc<Shared>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = admit(&shared, &headers) {
        return refused;
    }
    let registry = shared.registry.lock().unwrap_or_else(|p| p.into_inner());
    match registry.subjects.get(&subject) {
        Some(ids) if !ids.is_empty() => {
            let id = ids[ids.len() - 1];
            Json(json!({
                "subject": subject,
                "version": ids.len(),
                "id": id,
                "schema": registry.schemas[id as usize - 1],
            }))
            .into_response()
        }
        _ => error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        ),
    }
}
