//! The router and its handlers: the Altum-compatible labelling endpoints and
//! what operators expect around them.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use bytes::{Bytes, BytesMut};
use metrics_exporter_prometheus::PrometheusHandle;
use photolabel_taxonomy::{decide, DecisionRules, Output, StageProbabilities};
use photolabel_vision::{
    prepare, prepare_measured, ImageError, ImageLimits, Prepared, Preprocessing,
};
use tower_http::catch_panic::CatchPanicLayer;

use crate::auth::{Caller, LabellingCaller};
use crate::docs;
use crate::error::{ApiError, MissingField};
use crate::fetch::Fetcher;
use crate::limits::{guard_request, BodyError, BodyLimits};
use crate::listing::{label_listing, ListingLimits, LISTING_PATH};
use crate::lockout::BadKeyLockout;
use crate::openapi;
use crate::store::{Endpoint, Recorded, Store};
use crate::telemetry::log_requests;
use crate::ui;
use crate::worker::{ModelState, WorkerHandle};

/// Largest JSON body `POST /labelling/url` reads; a URL is at most a few KB.
pub const URL_BODY_LIMIT: usize = 64 * 1024;

/// Everything the handlers share.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub worker: WorkerHandle,
    pub fetcher: Fetcher,
    pub image_limits: ImageLimits,
    pub rules: DecisionRules,
    pub body_limits: BodyLimits,
    pub listing: ListingLimits,
    pub bad_keys: BadKeyLockout,
    pub metrics: PrometheusHandle,
    /// Whether `GET /` serves the web page (`--no-ui` turns it off).
    pub ui: bool,
}

/// The whole HTTP API.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limits = state.body_limits;
    with_layers(routes(state), body_limits)
}

/// The routes, without the cross-cutting layers.
pub fn routes(state: Arc<AppState>) -> Router {
    let mut routes = Router::new();
    if state.ui {
        routes = routes.merge(ui::router());
    }
    routes
        .route("/labelling/img", post(label_upload))
        .route("/labelling/url", post(label_url))
        .route(LISTING_PATH, post(label_listing))
        .route("/labelling/openapi", get(openapi_document))
        .route("/credit", get(credit))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(docs::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The layers every route gets, outermost last: body limits and timeouts,
/// panic → 500, the request log and metrics.
pub fn with_layers(routes: Router, body_limits: BodyLimits) -> Router {
    routes
        // Our guard caps bodies; axum's own 2 MB default would answer first.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(body_limits, guard_request))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                tracing::error!("handler panicked");
                ApiError::internal("handler panicked").into_response()
            },
        ))
        .layer(middleware::from_fn(log_requests))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Label a photo upload.
///
/// Send the photo as `multipart/form-data` in the file field `image`
/// (JPEG or PNG).
#[utoipa::path(
    post,
    path = "/labelling/img",
    tag = "labelling",
    request_body(content = openapi::UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The labels", body = openapi::LabelResponse),
        (status = 400, description = "Not a decodable JPEG or PNG", body = openapi::Detail),
        (status = 401, description = "Unknown or revoked key", body = openapi::InvalidKey),
        (status = 403, description = "No `x-api-key` header", body = openapi::Message),
        (status = 413, description = "Body larger than the limit", body = openapi::Detail),
        (status = 422, description = "No `image` field", body = openapi::ValidationError),
        (status = 429, description = "Rate limit or quota spent, or this address sent too many invalid keys (with Retry-After)", body = openapi::Detail),
        (status = 500, description = "Unexpected error", body = openapi::Message),
        (status = 503, description = "Busy or model still loading; retry", body = openapi::Detail),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn label_upload(
    State(state): State<Arc<AppState>>,
    LabellingCaller(caller): LabellingCaller,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let bytes = upload_image(multipart).await?;
    let slot = state.worker.reserve()?;
    let prepared = prepare_off_thread(bytes, state.image_limits, slot.preprocessing(), false)
        .await
        .map_err(|e| {
            tracing::debug!(error = %e, "upload refused");
            ApiError::InvalidImage
        })?;
    let labelled = slot.label(prepared).await?;
    respond(
        &state,
        caller.id,
        Endpoint::LabelUpload,
        &labelled.probabilities,
    )
    .await
}

/// The photo of an upload: the bytes of the first `image` field of the
/// multipart body, or the contract's error. Also what the multipart fuzz
/// target drives, with the extractor run on arbitrary bodies.
pub async fn upload_image(
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Bytes, ApiError> {
    // A body that is not multipart at all has no `image` field either.
    let mut multipart = multipart.map_err(|_| ApiError::MissingField(MissingField::Image))?;
    read_image_field(&mut multipart).await
}

/// Reads the first `image` field; skips any other field.
async fn read_image_field(multipart: &mut Multipart) -> Result<Bytes, ApiError> {
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return Err(ApiError::MissingField(MissingField::Image)),
            Err(e) => {
                return Err(body_error(&e).unwrap_or(ApiError::MissingField(MissingField::Image)))
            }
        };
        if field.name() != Some("image") {
            continue;
        }
        let mut field = field;
        let mut bytes = BytesMut::new();
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                Ok(None) => return Ok(bytes.freeze()),
                // A broken field is not a decodable image.
                Err(e) => return Err(body_error(&e).unwrap_or(ApiError::InvalidImage)),
            }
        }
    }
}

pub(crate) fn body_error(error: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    BodyError::find(error).map(ApiError::from)
}

/// Label the photo at a URL.
///
/// The server downloads the image itself. Only public `http`/`https`
/// addresses are fetched (unless the operator allows private ones); at most
/// three redirects are followed.
#[utoipa::path(
    post,
    path = "/labelling/url",
    tag = "labelling",
    request_body(content = openapi::UrlRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The labels", body = openapi::LabelResponse),
        (status = 400, description = "URL refused, or it did not lead to a JPEG or PNG", body = openapi::Detail),
        (status = 401, description = "Unknown or revoked key", body = openapi::InvalidKey),
        (status = 403, description = "No `x-api-key` header", body = openapi::Message),
        (status = 413, description = "Body larger than the limit", body = openapi::Detail),
        (status = 422, description = "No `url` field, or the JSON is malformed", body = openapi::ValidationError),
        (status = 429, description = "Rate limit or quota spent, or this address sent too many invalid keys (with Retry-After)", body = openapi::Detail),
        (status = 500, description = "Unexpected error", body = openapi::Message),
        (status = 503, description = "Busy or model still loading; retry", body = openapi::Detail),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn label_url(
    State(state): State<Arc<AppState>>,
    LabellingCaller(caller): LabellingCaller,
    body: Body,
) -> Result<Response, ApiError> {
    let body = axum::body::to_bytes(body, URL_BODY_LIMIT)
        .await
        .map_err(|e| {
            body_error(&e).unwrap_or(ApiError::PayloadTooLarge {
                limit: URL_BODY_LIMIT,
            })
        })?;
    let url = parse_url_request(&body)?;
    let bytes = state.fetcher.fetch(&url).await.map_err(|e| {
        tracing::info!(reason = %e, "URL refused");
        ApiError::InvalidUrl
    })?;
    let slot = state.worker.reserve()?;
    let prepared = prepare_off_thread(bytes, state.image_limits, slot.preprocessing(), false)
        .await
        .map_err(|e| {
            tracing::info!(reason = %e, "URL did not lead to an image");
            ApiError::InvalidUrl
        })?;
    let labelled = slot.label(prepared).await?;
    respond(
        &state,
        caller.id,
        Endpoint::LabelUrl,
        &labelled.probabilities,
    )
    .await
}

/// `{"url": "<string>"}`; anything else is the contract's 422. (The URL
/// itself is checked by [`crate::fetch::validate_url`] when it is fetched.)
pub fn parse_url_request(body: &[u8]) -> Result<String, ApiError> {
    let missing = || ApiError::MissingField(MissingField::Url);
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| missing())?;
    match value.get("url") {
        Some(serde_json::Value::String(url)) => Ok(url.clone()),
        _ => Err(missing()),
    }
}

/// Why preparing a photo failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the decoder panicked")]
    Panicked,
}

/// Decodes and preprocesses on tokio's blocking pool, never on a model
/// thread, so decoding the next photo overlaps labelling this one. A
/// decoder panic on a hostile file is that file's 400, not a 500.
pub(crate) async fn prepare_off_thread(
    bytes: Bytes,
    limits: ImageLimits,
    preprocessing: Preprocessing,
    measure: bool,
) -> Result<Prepared, PrepareError> {
    let task = tokio::task::spawn_blocking(move || {
        if measure {
            prepare_measured(&bytes, &limits, &preprocessing)
        } else {
            prepare(&bytes, &limits, &preprocessing)
        }
    });
    match task.await {
        Ok(result) => Ok(result?),
        Err(e) => {
            tracing::error!(error = %e, "image preparation panicked");
            Err(PrepareError::Panicked)
        }
    }
}

/// Counts the call (committed before the answer leaves) and answers.
async fn respond(
    state: &AppState,
    key_id: i64,
    endpoint: Endpoint,
    probabilities: &StageProbabilities,
) -> Result<Response, ApiError> {
    let output = Output {
        output: decide(probabilities, &state.rules),
    };
    let body = serde_json::to_vec(&output).map_err(ApiError::internal)?;
    record_call(state, key_id, endpoint).await?;
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response())
}

/// Counts one successful call in the ledger, or refuses it when the key's
/// quota ran out meanwhile (the ledger's increment is the real check).
pub(crate) async fn record_call(
    state: &AppState,
    key_id: i64,
    endpoint: Endpoint,
) -> Result<(), ApiError> {
    match state.store.record_success(key_id, endpoint).await? {
        Recorded::Counted(_) => Ok(()),
        Recorded::QuotaExhausted => {
            let quota = state
                .store
                .usage(key_id)
                .await
                .ok()
                .flatten()
                .and_then(|u| u.quota)
                .unwrap_or(0);
            Err(ApiError::QuotaExhausted { quota })
        }
    }
}

/// The calling key's usage, like Altum's Credit API.
#[utoipa::path(
    get,
    path = "/credit",
    tag = "account",
    responses(
        (status = 200, description = "Successful calls made with this key", body = crate::store::Usage),
        (status = 401, description = "Unknown or revoked key", body = openapi::InvalidKey),
        (status = 403, description = "No `x-api-key` header", body = openapi::Message),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn credit(
    State(state): State<Arc<AppState>>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    let usage = state
        .store
        .usage(caller.id)
        .await?
        .ok_or(ApiError::InvalidKey)?;
    Ok(Json(usage).into_response())
}

/// Readiness: 200 once the model is loaded and the key database answers,
/// 503 otherwise (with the reason), so a load balancer sends no traffic to
/// a replica that would refuse it.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = openapi::Health),
        (status = 503, description = "Model loading or failed, or the key database unreachable", body = openapi::Health),
    )
)]
pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Response {
    let not_ready = |status: &str, reason: Option<String>| {
        let health = openapi::Health {
            status: status.into(),
            engine: None,
            replicas: None,
            reason,
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(health)).into_response()
    };
    let info = match state.worker.state() {
        ModelState::Ready(info) => info,
        ModelState::Loading => return not_ready("loading", None),
        ModelState::Failed(_) => return not_ready("failed", None),
    };
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "health: the key database does not answer");
        return not_ready("database_unreachable", Some(e.to_string()));
    }
    let health = openapi::Health {
        status: "ok".into(),
        engine: Some(info.engine),
        replicas: Some(info.replicas),
        reason: None,
    };
    (StatusCode::OK, Json(health)).into_response()
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.run_upkeep();
    metrics::gauge!("photolabel_queue_depth").set(state.worker.depth() as f64);
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(
    get,
    path = "/labelling/openapi",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
pub(crate) async fn openapi_document() -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        openapi::document_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_request_parsing() {
        assert_eq!(
            parse_url_request(br#"{"url": "https://x/y.jpg"}"#).ok(),
            Some("https://x/y.jpg".to_owned())
        );
        for bad in [&b"{}"[..], b"not json", b"{\"url\": 3}", b"[]", b""] {
            assert!(matches!(
                parse_url_request(bad),
                Err(ApiError::MissingField(MissingField::Url))
            ));
        }
    }
}
