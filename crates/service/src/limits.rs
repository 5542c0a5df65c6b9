//! Request limits: body size (413, refused early), body idle timeout (408)
//! and the whole-request timeout (503).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    /// The cap of `POST /labelling/listing`, which carries many photos.
    pub listing_max_bytes: usize,
    /// Longest silence between two pieces of the body.
    pub idle_timeout: Duration,
    /// The whole request, body and labelling included.
    pub request_timeout: Duration,
}

/// Why reading the request body stopped; found again in the error chain of
/// whatever was reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("request body stalled")]
    Timeout,
}

impl BodyError {
    /// Looks for a [`BodyError`] in `error` and its sources.
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<BodyError> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<BodyError>() {
                return Some(*found);
            }
            current = e.source();
        }
        None
    }
}

impl From<BodyError> for ApiError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::TooLarge(limit) => ApiError::PayloadTooLarge { limit },
            BodyError::Timeout => ApiError::BodyTimeout,
        }
    }
}

/// The request body, capped in size and cut off when it stalls. Nothing
/// beyond the cap is ever buffered: the frame that crosses it is an error.
struct GuardedBody {
    inner: Body,
    remaining: usize,
    limit: usize,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if data.len() > this.remaining {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit).into())));
                    }
                    this.remaining -= data.len();
                }
                let deadline = Instant::now() + this.idle_timeout;
                this.idle.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Timeout.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: refuses a declared oversize body at once (before reading a
/// byte of it), caps the streamed body, applies the idle and request
/// timeouts.
pub async fn guard_request(
    State(limits): State<BodyLimits>,
    request: Request,
    next: Next,
) -> Response {
    let max_bytes = if request.uri().path() == crate::listing::LISTING_PATH {
        limits.listing_max_bytes
    } else {
        limits.max_bytes
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_bytes as u64) {
        return ApiError::PayloadTooLarge { limit: max_bytes }.into_response();
    }
    let request = request.map(|inner| {
        Body::new(GuardedBody {
            inner,
            remaining: max_bytes,
            limit: max_bytes,
            idle_timeout: limits.idle_timeout,
            idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
        })
    });
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout.into_response(),
    }
}
