//! Every error a client can see, written down once: its status and its body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// The contract's body for an upload that is not a decodable JPEG or PNG.
pub const INVALID_IMAGE_DETAIL: &str =
    "Please upload an image with one of the following formats: .jpg, .jpeg or .png";
/// The contract's body for every refused URL.
pub const INVALID_URL_DETAIL: &str = "The URL is not valid";
/// What an unknown or revoked key gets (the contract asks for a sentence).
pub const INVALID_KEY_OUTPUT: &str =
    "The API key in the x-api-key header is not valid: it is unknown or has been revoked.";

/// What an address gets while it is locked out for sending invalid keys.
/// The same for every such request (the wait is in `Retry-After`).
pub const ADDRESS_LOCKED_OUT_DETAIL: &str =
    "Too many requests with an invalid API key from this address; retry later";

/// The request field a 422 names in its `loc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingField {
    Image,
    Url,
    /// `POST /labelling/listing` with JSON: a non-empty array of strings.
    Urls,
}

impl MissingField {
    fn name(self) -> &'static str {
        match self {
            MissingField::Image => "image",
            MissingField::Url => "url",
            MissingField::Urls => "urls",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("upload is not a decodable image")]
    InvalidImage,
    #[error("URL refused or did not lead to an image")]
    InvalidUrl,
    #[error("unknown or revoked API key")]
    InvalidKey,
    #[error("no x-api-key header")]
    MissingKey,
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("listing of more than {max} photos")]
    TooManyPhotos { max: usize },
    #[error("request field `{}` missing or malformed", .0.name())]
    MissingField(MissingField),
    #[error("rate limit of {per_minute} requests per minute reached")]
    RateLimited {
        per_minute: u32,
        /// Until the key's next request is allowed.
        retry_after_s: u64,
    },
    #[error("quota of {quota} calls used up")]
    QuotaExhausted { quota: u64 },
    /// The client address sent too many invalid keys (see [`crate::lockout`]).
    #[error("too many invalid API keys from this address; locked out for {retry_after_s} s")]
    AddressLockedOut { retry_after_s: u64 },
    #[error("model queue full")]
    Overloaded,
    #[error("model not loaded yet")]
    NotReady,
    /// The key database does not answer (PostgreSQL down or cut off); the
    /// cause is logged, never sent.
    #[error("key database unreachable: {0}")]
    StoreUnavailable(String),
    #[error("request body arrived too slowly")]
    BodyTimeout,
    #[error("request took too long")]
    RequestTimeout,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Anything unexpected; the cause is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }

    /// Seconds for the `Retry-After` header, where one applies.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Overloaded
            | ApiError::NotReady
            | ApiError::RequestTimeout
            | ApiError::StoreUnavailable(_) => Some(1),
            ApiError::AddressLockedOut { retry_after_s }
            | ApiError::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidImage | ApiError::InvalidUrl => StatusCode::BAD_REQUEST,
            ApiError::InvalidKey => StatusCode::UNAUTHORIZED,
            ApiError::MissingKey => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } | ApiError::TooManyPhotos { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::MissingField(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. }
            | ApiError::QuotaExhausted { .. }
            | ApiError::AddressLockedOut { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded
            | ApiError::NotReady
            | ApiError::RequestTimeout
            | ApiError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body the client receives.
    pub fn body(&self) -> Value {
        match self {
            ApiError::InvalidImage => json!({ "detail": INVALID_IMAGE_DETAIL }),
            ApiError::InvalidUrl => json!({ "detail": INVALID_URL_DETAIL }),
            ApiError::InvalidKey => json!({ "Output": INVALID_KEY_OUTPUT }),
            ApiError::MissingKey => json!({ "message": "Missing Authentication Token" }),
            ApiError::PayloadTooLarge { limit } => json!({
                "detail": format!("The request body is larger than the limit of {limit} bytes")
            }),
            ApiError::TooManyPhotos { max } => json!({
                "detail": format!("A listing may have at most {max} photos")
            }),
            ApiError::MissingField(field) => json!({
                "detail": [{
                    "loc": ["body", field.name()],
                    "msg": "field required",
                    "type": "value_error.missing",
                }]
            }),
            ApiError::RateLimited { per_minute, .. } => json!({
                "detail": format!(
                    "Rate limit exceeded: this key may make {per_minute} requests per minute"
                )
            }),
            ApiError::QuotaExhausted { quota } => json!({
                "detail": format!("Quota exceeded: this key has used all of its {quota} calls")
            }),
            ApiError::AddressLockedOut { .. } => json!({ "detail": ADDRESS_LOCKED_OUT_DETAIL }),
            ApiError::Overloaded => json!({
                "detail": "The server is busy labelling other photos; retry shortly"
            }),
            ApiError::NotReady => json!({
                "detail": "The model is still loading; retry shortly"
            }),
            ApiError::StoreUnavailable(_) => json!({
                "detail": "The key database cannot be reached; retry shortly"
            }),
            ApiError::BodyTimeout => json!({
                "detail": "The request body was not received in time"
            }),
            ApiError::RequestTimeout => json!({
                "detail": "The request took too long to process; retry shortly"
            }),
            ApiError::NotFound => json!({ "detail": "Not Found" }),
            ApiError::MethodNotAllowed => json!({ "detail": "Method Not Allowed" }),
            ApiError::Internal(_) => json!({ "message": "Internal server error" }),
        }
    }
}

/// A database that does not answer is a 503 the client may retry; any
/// other database failure is a bug or corruption, a 500.
impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        if error.is_unavailable() {
            ApiError::StoreUnavailable(error.to_string())
        } else {
            ApiError::internal(error)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) => tracing::error!(%cause, "internal error"),
            ApiError::StoreUnavailable(cause) => {
                tracing::warn!(%cause, "key database unreachable")
            }
            _ => {}
        }
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_bodies() {
        assert_eq!(
            ApiError::MissingField(MissingField::Url).body().to_string(),
            r#"{"detail":[{"loc":["body","url"],"msg":"field required","type":"value_error.missing"}]}"#
        );
        assert_eq!(
            ApiError::MissingKey.body().to_string(),
            r#"{"message":"Missing Authentication Token"}"#
        );
        assert_eq!(
            ApiError::internal("x").body().to_string(),
            r#"{"message":"Internal server error"}"#
        );
    }
}
