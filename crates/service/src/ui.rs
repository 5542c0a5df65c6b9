//! `GET /`: the web page to try the service and review a listing. Plain
//! HTML, CSS and JavaScript in `assets/ui/`, compiled into the binary, so
//! nothing is loaded from elsewhere and it works offline. The page is only
//! a client: it calls the same endpoints, with the same key and limits, as
//! any other. `--no-ui` leaves these routes out.

use std::sync::Arc;

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::api::AppState;
use crate::docs;

const INDEX: &str = include_str!("../assets/ui/index.html");
const SCRIPT: &str = include_str!("../assets/ui/app.js");
const STYLE: &str = include_str!("../assets/ui/app.css");
const ICON: &str = include_str!("../assets/ui/icon.svg");

/// Scripts and styles from this origin only, never inline; photos shown
/// from `blob:` URLs of the user's own files (a pasted URL is not loaded
/// by the browser at all); requests to this origin only; no framing, no
/// plugins, no `<base>`, forms nowhere.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { page(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/ui/icon.svg",
            get(|| async { page(ICON, "image/svg+xml") }),
        )
}

/// A static asset (as `/docs` serves its own) with the page's headers on top.
fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut response = docs::asset(body.as_bytes(), content_type);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    // Revalidated every time: a new binary must not run an old page.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}
