//! Prometheus metrics and the one-line-per-request log.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::auth::CallerSlot;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use. If another
/// recorder was installed first, ours still renders (empty) rather than
/// failing the server.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("photolabel_batch_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
                    )
                });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            handle
        })
        .clone()
}

/// Logs one line per request (key id and name, never the key; endpoint;
/// status; latency) and records the request metrics.
pub async fn log_requests(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // The route template, not the raw path: bounded metric cardinality.
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let caller = CallerSlot::default();
    request.extensions_mut().insert(caller.clone());

    let response = next.run(request).await;

    let latency = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    let labels = [
        ("endpoint", endpoint.clone()),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!("photolabel_requests_total", &labels).increment(1);
    metrics::histogram!(
        "photolabel_request_duration_seconds",
        &[("endpoint", endpoint.clone())]
    )
    .record(latency);
    match caller.0.get() {
        Some((key_id, key_name)) => tracing::info!(
            target: "photolabel::request",
            %method, endpoint, status, latency_ms = latency * 1000.0, key_id, key_name,
            "request"
        ),
        None => tracing::info!(
            target: "photolabel::request",
            %method, endpoint, status, latency_ms = latency * 1000.0,
            "request"
        ),
    }
    response
}
