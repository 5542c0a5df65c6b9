//! `GET /docs`: Swagger UI, vendored (see `assets/swagger-ui/README.md`) and
//! compiled into the binary, so nothing is loaded from a CDN.

use std::sync::Arc;

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::api::AppState;

const INDEX: &str = include_str!("../assets/swagger-ui/index.html");
const INITIALIZER: &str = include_str!("../assets/swagger-ui/swagger-initializer.js");
const BUNDLE: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/docs",
            get(|| async { asset(INDEX.as_bytes(), "text/html; charset=utf-8") }),
        )
        .route(
            "/docs/",
            get(|| async { asset(INDEX.as_bytes(), "text/html; charset=utf-8") }),
        )
        .route(
            "/docs/swagger-initializer.js",
            get(|| async { asset(INITIALIZER.as_bytes(), "text/javascript; charset=utf-8") }),
        )
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async { asset(BUNDLE, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/docs/swagger-ui.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
}

/// A static asset compiled into the binary (the web page's files too).
pub(crate) fn asset(body: &'static [u8], content_type: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
    )
        .into_response()
}
