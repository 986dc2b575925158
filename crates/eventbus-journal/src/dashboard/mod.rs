//! The dashboard: an axum router over the journal, rendered on the server (no JavaScript build
//! step). Pages: events with filters, one event with its payload and history, failures with
//! retrigger, consumers with start/stop, and a throughput chart per topic.
//!
//! ```no_run
//! # async fn demo(bus: eventbus::Bus, journal: eventbus_journal::Journal) -> std::io::Result<()> {
//! use eventbus_journal::dashboard::{Auth, Dashboard};
//!
//! let dashboard = Dashboard::new(journal, bus)
//!     .auth(Auth::Bearer("s3cret".into()))
//!     .consumer("billing", |bus| bus.consumer("orders", "billing"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8088").await?;
//! axum::serve(listener, dashboard.router()).await?;
//! # Ok(()) }
//! ```
//!
//! Every action that changes something (retrigger, start, stop) is a POST carrying the page's
//! CSRF token; a POST without it is refused.

mod chart;
mod consumers;
mod pages;

use std::fmt;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use eventbus::{Bus, Consumer};
use serde::Deserialize;

use crate::journal::{EventId, Journal};
use consumers::Consumers;

/// Who may see the dashboard.
#[derive(Clone)]
#[non_exhaustive]
pub enum Auth {
    /// Anyone who reaches it (bind it to a private address).
    None,
    /// `Authorization: Bearer TOKEN`.
    Bearer(String),
    /// HTTP basic authentication.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach a log.
        f.write_str(match self {
            Auth::None => "None",
            Auth::Bearer(_) => "Bearer(***)",
            Auth::Basic { .. } => "Basic(***)",
        })
    }
}

/// The dashboard of one journal and bus.
#[derive(Debug)]
pub struct Dashboard {
    journal: Journal,
    bus: Bus,
    auth: Auth,
    consumers: Consumers,
}

pub(crate) struct Shared {
    pub(crate) journal: Journal,
    pub(crate) bus: Bus,
    pub(crate) consumers: Consumers,
    pub(crate) csrf: String,
    auth: Auth,
}

type AppState = Arc<Shared>;

impl Dashboard {
    /// A dashboard over `journal`, retriggering through `bus`.
    pub fn new(journal: Journal, bus: Bus) -> Self {
        Self {
            journal,
            bus,
            auth: Auth::None,
            consumers: Consumers::default(),
        }
    }

    /// Asks for credentials.
    #[must_use]
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// A consumer the consumers page can start and stop, built by `build` each time it starts.
    #[must_use]
    pub fn consumer(
        mut self,
        name: impl Into<String>,
        build: impl Fn(&Bus) -> Consumer + Send + Sync + 'static,
    ) -> Self {
        self.consumers.add(name.into(), &self.bus, Arc::new(build));
        self
    }

    /// Starts every registered consumer (as a service does on boot).
    pub async fn start_consumers(&self) -> Result<(), String> {
        for name in self.consumers.names() {
            self.consumers.start(name, &self.bus).await?;
        }
        Ok(())
    }

    /// The router, to serve alone or nest in an application's own.
    pub fn router(self) -> Router {
        let state = Arc::new(Shared {
            journal: self.journal,
            bus: self.bus,
            consumers: self.consumers,
            csrf: uuid::Uuid::new_v4().simple().to_string(),
            auth: self.auth,
        });
        Router::new()
            .route("/", get(|| async { Redirect::to("events") }))
            .route("/events", get(events))
            .route("/events/{id}", get(event))
            .route("/events/{id}/retrigger", post(retrigger))
            .route("/failures", get(failures))
            .route("/consumers", get(consumers_page))
            .route("/consumers/{name}/{action}", post(consumer_action))
            .route("/throughput", get(throughput))
            .route(
                "/style.css",
                get(|| async { ([(header::CONTENT_TYPE, "text/css")], pages::STYLE) }),
            )
            .layer(middleware::from_fn_with_state(
                Arc::clone(&state),
                authenticate,
            ))
            .with_state(state)
    }
}

async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let allowed = match &state.auth {
        Auth::None => true,
        Auth::Bearer(token) => given.strip_prefix("Bearer ").is_some_and(|t| t == token),
        Auth::Basic { user, password } => given
            .strip_prefix("Basic ")
            .and_then(decode_base64)
            .is_some_and(|pair| pair == format!("{user}:{password}")),
    };
    if allowed {
        return next.run(request).await;
    }
    let mut response = (
        StatusCode::UNAUTHORIZED,
        "sign in to see the eventbus dashboard",
    )
        .into_response();
    if matches!(state.auth, Auth::Basic { .. }) {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"eventbus\""),
        );
    }
    response
}

/// Basic authentication's `user:password`.
fn decode_base64(text: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The filters of the events page, as the form sends them.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EventQuery {
    #[serde(rename = "type")]
    pub(crate) event_type: Option<String>,
    pub(crate) topic: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) since: Option<String>,
    pub(crate) until: Option<String>,
}

async fn events(State(state): State<AppState>, Query(query): Query<EventQuery>) -> Response {
    let filter = match pages::filter(&query) {
        Ok(filter) => filter,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    match state.journal.events(&filter.limit(200)).await {
        Ok(rows) => pages::events(&query, &rows).into_response(),
        Err(e) => failed(&e),
    }
}

#[derive(Debug, Deserialize)]
struct Flash {
    done: Option<String>,
}

async fn event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Response {
    match state.journal.history(&id).await {
        Ok(rows) if rows.is_empty() => {
            (StatusCode::NOT_FOUND, pages::not_found(&id)).into_response()
        }
        Ok(rows) => pages::event(&state, &id, &rows, flash.done.as_deref()).into_response(),
        Err(e) => failed(&e),
    }
}

#[derive(Debug, Deserialize)]
struct RetriggerForm {
    csrf: String,
    id: String,
}

async fn retrigger(
    State(state): State<AppState>,
    Path(event_id): Path<String>,
    Form(form): Form<RetriggerForm>,
) -> Response {
    if form.csrf != state.csrf {
        return forbidden();
    }
    let mode = if form.id == "same" {
        EventId::Same
    } else {
        EventId::New
    };
    match state.journal.retrigger(&state.bus, &event_id, mode).await {
        Ok(position) => Redirect::to(&format!(
            "/events/{event_id}?done=retriggered+at+{position}"
        ))
        .into_response(),
        Err(e) => failed(&e),
    }
}

async fn failures(State(state): State<AppState>) -> Response {
    let mut rows = Vec::new();
    for status in [
        crate::Status::DeadLettered,
        crate::Status::PublishFailed,
        crate::Status::Retried,
    ] {
        match state
            .journal
            .events(&crate::Filter::new().status(status).limit(200))
            .await
        {
            Ok(found) => rows.extend(found),
            Err(e) => return failed(&e),
        }
    }
    rows.sort_by_key(|row| std::cmp::Reverse(row.updated_at));
    pages::failures(&state, &rows).into_response()
}

async fn consumers_page(State(state): State<AppState>) -> Response {
    let statuses = state.consumers.statuses().await;
    let mut rows = Vec::new();
    for (status, group) in statuses {
        let lag = state
            .bus
            .transport()
            .subscriber
            .lag(&status.topics, &group)
            .await
            .ok()
            .map(|l| l.iter().map(|(_, n)| n).sum::<u64>());
        let last_error = state.journal.last_error(&group).await.ok().flatten();
        rows.push((status, lag, last_error));
    }
    pages::consumers(&state, &rows).into_response()
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn consumer_action(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if form.csrf != state.csrf {
        return forbidden();
    }
    let done = match action.as_str() {
        "start" => state.consumers.start(&name, &state.bus).await,
        "stop" => state.consumers.stop(&name).await,
        _ => return (StatusCode::NOT_FOUND, "consumers can be started or stopped").into_response(),
    };
    match done {
        Ok(()) => Redirect::to("/consumers").into_response(),
        Err(message) => (StatusCode::CONFLICT, message).into_response(),
    }
}

async fn throughput(State(state): State<AppState>) -> Response {
    let now = chrono::Utc::now();
    match state
        .journal
        .throughput(now - chrono::Duration::minutes(60))
        .await
    {
        Ok(rows) => pages::throughput(&chart::svg(&rows, now, 60), &rows).into_response(),
        Err(e) => failed(&e),
    }
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the form's CSRF token is missing or stale; reload the page and try again",
    )
        .into_response()
}

fn failed(error: &crate::JournalError) -> Response {
    tracing::warn!(error = %error, "a dashboard page failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the journal could not answer: {error}"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn basic_credentials_decode() {
        assert_eq!(
            super::decode_base64("YWRtaW46czNjcmV0").as_deref(),
            Some("admin:s3cret")
        );
        assert_eq!(super::decode_base64("YQ==").as_deref(), Some("a"));
        assert_eq!(super::decode_base64("!!"), None);
    }
}
