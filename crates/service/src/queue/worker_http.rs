//! The worker's `GET /health` and `GET /metrics` (`--metrics-bind`).
//!
//! `/health` is 200 while the model is loaded and the NATS connection is
//! up, 503 otherwise. `/metrics` is Prometheus text:
//!
//! | metric | what |
//! |---|---|
//! | `photolabel_queue_jobs_done_total` | jobs this worker labelled |
//! | `photolabel_queue_jobs_failed_total` | jobs this worker gave an error result |
//! | `photolabel_queue_jobs_retried_total` | transient failures handed back for a retry |
//! | `photolabel_queue_jobs_in_flight` | jobs this worker holds now |
//! | `photolabel_queue_lag` | jobs in the stream not yet delivered to any worker (the consumer's pending count; -1 when unknown) |
//! | `photolabel_queue_unacked` | jobs delivered to some worker and not yet acked (-1 when unknown) |

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::PullConsumer;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use super::worker::WorkerMetrics;
use crate::worker::{ModelState, WorkerHandle};

/// What the two endpoints read.
#[derive(Clone)]
pub struct MetricsState {
    pub metrics: Arc<WorkerMetrics>,
    pub client: async_nats::Client,
    pub consumer: PullConsumer,
    pub model: WorkerHandle,
}

/// Listens on `bind` and serves until `stop` turns true.
pub async fn serve(
    bind: SocketAddr,
    state: MetricsState,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind} (--metrics-bind)"))?;
    let address = listener.local_addr().unwrap_or(bind);
    tracing::info!(%address, "health and metrics listening");
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(state));
    Ok(tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %e, "health and metrics server failed");
        }
    }))
}

async fn health(State(state): State<Arc<MetricsState>>) -> impl IntoResponse {
    let connected = matches!(
        state.client.connection_state(),
        async_nats::connection::State::Connected
    );
    let loaded = matches!(state.model.state(), ModelState::Ready(_));
    let status = if connected && loaded {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({
            "status": if status == StatusCode::OK { "ok" } else { "unavailable" },
            "nats_connected": connected,
            "model_loaded": loaded,
        })),
    )
}

async fn metrics(State(state): State<Arc<MetricsState>>) -> impl IntoResponse {
    let mut consumer = state.consumer.clone();
    let (lag, unacked) = match tokio::time::timeout(Duration::from_secs(2), consumer.info()).await {
        Ok(Ok(info)) => (info.num_pending as i64, info.num_ack_pending as i64),
        _ => (-1, -1),
    };
    let m = &state.metrics;
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: i64| {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::SeqCst) as i64;
    metric(
        "photolabel_queue_jobs_done_total",
        "counter",
        "Jobs this worker labelled.",
        load(&m.done),
    );
    metric(
        "photolabel_queue_jobs_failed_total",
        "counter",
        "Jobs this worker gave an error result.",
        load(&m.failed),
    );
    metric(
        "photolabel_queue_jobs_retried_total",
        "counter",
        "Transient failures handed back for a retry.",
        load(&m.retried),
    );
    metric(
        "photolabel_queue_jobs_in_flight",
        "gauge",
        "Jobs this worker holds now.",
        load(&m.in_flight),
    );
    metric(
        "photolabel_queue_lag",
        "gauge",
        "Jobs in the stream not yet delivered to a worker (-1: unknown).",
        lag,
    );
    metric(
        "photolabel_queue_unacked",
        "gauge",
        "Jobs delivered to a worker and not yet acked (-1: unknown).",
        unacked,
    );
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
}
