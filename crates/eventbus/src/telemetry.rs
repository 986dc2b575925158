//! An opt-in HTTP endpoint (feature `telemetry`): Prometheus text at `/metrics`, and
//! `/health/live`, `/health/ready` for orchestrators.
//!
//! ```no_run
//! # async fn demo() -> eventbus::Result<()> {
//! let bus = eventbus::connect_from_env().await?;
//! // Install the recorder before the first event, then serve it with the bus's health.
//! let endpoint = eventbus::telemetry::serve("127.0.0.1:9464", bus.health().clone()).await?;
//! println!("scrape http://{}/metrics", endpoint.local_addr());
//! # Ok(()) }
//! ```

pub use eventbus_core::telemetry::*;

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use eventbus_core::{Error, ErrorKind, Health, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Histogram buckets for the `_seconds` metrics: 0.5 ms to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

static RECORDER: OnceLock<std::result::Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder (once; later calls
/// return the same handle). Call it before the first event is published or consumed.
pub fn prometheus() -> Result<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            eventbus_core::telemetry::metrics::describe();
            Ok(handle)
        })
        .clone()
        .map_err(|why| {
            Error::new(
                ErrorKind::Config,
                format!("cannot install the Prometheus recorder: {why}; another metrics recorder may be installed already"),
            )
        })
}

#[derive(Clone)]
struct Served {
    health: Health,
    metrics: PrometheusHandle,
}

/// The endpoint's routes, to mount in an application's own axum server.
pub fn router(health: Health) -> Result<Router> {
    let served = Served {
        health,
        metrics: prometheus()?,
    };
    Ok(Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(served))
}

async fn metrics(State(s): State<Served>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn live(State(s): State<Served>) -> impl IntoResponse {
    if s.health.live() {
        (StatusCode::OK, "live\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not live\n")
    }
}

async fn ready(State(s): State<Served>) -> impl IntoResponse {
    let readiness = s.health.ready().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, readiness.to_string())
}

/// A running endpoint; dropping it stops it.
#[derive(Debug)]
pub struct Endpoint {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Where it listens (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and waits for the server to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Listens on `addr` and serves [`router`] until the endpoint is dropped or shut down.
pub async fn serve(addr: &str, health: Health) -> Result<Endpoint> {
    let app = router(health)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::new(
            ErrorKind::Config,
            "cannot listen for the telemetry endpoint; pick a free address",
        )
        .with("address", addr)
        .with_source(e)
    })?;
    let local_addr = listener.local_addr().map_err(|e| {
        Error::new(ErrorKind::Config, "the telemetry listener has no address").with_source(e)
    })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(e) = served.await {
            tracing::warn!(error = %e, "the telemetry endpoint stopped");
        }
    });
    tracing::info!(address = %local_addr, "telemetry endpoint serving /metrics, /health/live, /health/ready");
    Ok(Endpoint {
        local_addr,
        stop: Some(stop),
        task: Some(task),
    })
}
