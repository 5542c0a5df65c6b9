//! `POST /labelling/listing`: a whole listing in one request — every photo
//! labelled as the single-photo endpoints would, then analysed together
//! ([`photolabel_listing`]: duplicates, quality, order, cover, checks).
//!
//! Photos are labelled as they arrive: each multipart field (or URL) is
//! handed to a task as soon as it is read, and at most `replicas + 1` photos
//! of one listing are being fetched, decoded or labelled at once — the
//! upload waits for them, so a 60-photo listing never holds 60 decoded
//! photos. Listing photos queue for the model with
//! [`crate::worker::WorkerHandle::reserve_for_listing`], which leaves half
//! of the queue to single calls.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::multipart::{Field, Multipart};
use axum::extract::{FromRequest, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{Bytes, BytesMut};
use photolabel_listing::{ListingConfig, ListingReport, PhotoFacts, PhotoOutcome};
use photolabel_taxonomy::decide;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::api::{body_error, prepare_off_thread, record_call, AppState};
use crate::auth::LabellingCaller;
use crate::error::{ApiError, MissingField};
use crate::openapi;
use crate::store::Endpoint;

pub const LISTING_PATH: &str = "/labelling/listing";
/// Largest JSON body of a URL listing: 60 URLs of up to 16 KB.
pub const LISTING_JSON_LIMIT: usize = 1024 * 1024;

/// The listing endpoint's settings.
#[derive(Debug, Clone)]
pub struct ListingLimits {
    /// Most photos in one listing (413 beyond).
    pub max_photos: usize,
    pub config: ListingConfig,
}

/// Label and analyse a whole listing.
///
/// Send the photos as `multipart/form-data`, each in a file field named
/// `image` (the field repeated), or `{"urls": ["…", …]}` as JSON. Every
/// photo gets its label, quality and duplicate, or its own error; the
/// listing gets the suggested order, the cover photo, the duplicate groups,
/// the inventory per leaf class and the failed checks. Each labelled photo
/// counts as one call.
#[utoipa::path(
    post,
    path = "/labelling/listing",
    tag = "labelling",
    request_body(
        content(
            (openapi::ListingForm = "multipart/form-data"),
            (openapi::ListingUrls = "application/json"),
        )
    ),
    responses(
        (status = 200, description = "The listing, with at least one photo labelled", body = openapi::ListingResponse),
        (status = 400, description = "No photo could be labelled: the first photo's error", body = openapi::Detail),
        (status = 401, description = "Unknown or revoked key", body = openapi::InvalidKey),
        (status = 403, description = "No `x-api-key` header", body = openapi::Message),
        (status = 413, description = "More photos than the limit, or a body larger than the listing limit", body = openapi::Detail),
        (status = 422, description = "No `image` field, or no `urls` array of strings", body = openapi::ValidationError),
        (status = 429, description = "Rate limit or quota spent before the first photo (with Retry-After where it applies)", body = openapi::Detail),
        (status = 503, description = "Model still loading; retry", body = openapi::Detail),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn label_listing(
    State(state): State<Arc<AppState>>,
    LabellingCaller(caller): LabellingCaller,
    request: Request,
) -> Result<Response, ApiError> {
    let json = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let mut run = ListingRun::new(state.clone(), caller.id, caller.rate_limit_per_minute);
    if json {
        for url in parse_urls(request.into_body(), state.listing.max_photos).await? {
            run.submit(url.clone(), Source::Url(url)).await;
        }
    } else {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|_| ApiError::MissingField(MissingField::Image))?;
        loop {
            let field = match multipart.next_field().await {
                Ok(Some(field)) => field,
                Ok(None) => break,
                Err(e) => {
                    return Err(
                        body_error(&e).unwrap_or(ApiError::MissingField(MissingField::Image))
                    )
                }
            };
            if field.name() != Some("image") {
                continue;
            }
            if run.len() == state.listing.max_photos {
                return Err(ApiError::TooManyPhotos {
                    max: state.listing.max_photos,
                });
            }
            let name = field.file_name().unwrap_or_default().to_owned();
            match read_photo(field, state.body_limits.max_bytes).await? {
                Ok(bytes) => run.submit(name, Source::Upload(bytes)).await,
                Err(refused) => run.refuse(name, refused),
            }
        }
        if run.len() == 0 {
            return Err(ApiError::MissingField(MissingField::Image));
        }
    }
    let mut photos = run.finish().await;
    // Counted only now, for the listing that is answered: a listing refused
    // half-way (one photo too many, a broken body) costs nothing. In
    // listing order, so a quota that runs out refuses the last photos.
    for (_, result) in &mut photos {
        if result.is_ok() {
            if let Err(refused) = record_call(&state, caller.id, Endpoint::LabelListing).await {
                *result = Err(refused);
            }
        }
    }
    if photos.iter().all(|(_, r)| r.is_err()) {
        // Nothing to analyse: the answer is the first photo's error.
        if let Some((_, Err(first))) = photos.into_iter().next() {
            return Err(first);
        }
        return Err(ApiError::MissingField(MissingField::Image));
    }
    let outcomes = photos
        .into_iter()
        .map(|(name, result)| {
            let outcome = match result {
                Ok(facts) => PhotoOutcome::Labelled(facts),
                Err(error) => {
                    if let ApiError::Internal(cause) = &error {
                        tracing::error!(%cause, photo = %name, "listing photo failed");
                    }
                    PhotoOutcome::Failed {
                        status: error.status().as_u16(),
                        body: error.body(),
                    }
                }
            };
            (name, outcome)
        })
        .collect();
    let report = ListingReport::build(outcomes, &state.listing.config);
    tracing::info!(
        photos = report.photos.len(),
        labelled = report.labelled(),
        duplicates = report.duplicates.len(),
        "listing analysed"
    );
    Ok(Json(report).into_response())
}

/// `{"urls": ["…", …]}` with 1 to `max` strings.
async fn parse_urls(body: Body, max: usize) -> Result<Vec<String>, ApiError> {
    let body = axum::body::to_bytes(body, LISTING_JSON_LIMIT)
        .await
        .map_err(|e| {
            body_error(&e).unwrap_or(ApiError::PayloadTooLarge {
                limit: LISTING_JSON_LIMIT,
            })
        })?;
    let missing = || ApiError::MissingField(MissingField::Urls);
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|_| missing())?;
    let urls = value
        .get("urls")
        .and_then(|u| u.as_array())
        .ok_or_else(missing)?;
    if urls.is_empty() {
        return Err(missing());
    }
    if urls.len() > max {
        return Err(ApiError::TooManyPhotos { max });
    }
    urls.iter()
        .map(|u| u.as_str().map(str::to_owned).ok_or_else(missing))
        .collect()
}

/// A photo field's bytes. The outer error ends the request (the body broke
/// or passed the listing's cap); the inner one is this photo's alone (it is
/// larger than a single upload may be; the rest of the field is skipped).
async fn read_photo(
    mut field: Field<'_>,
    max_bytes: usize,
) -> Result<Result<Bytes, ApiError>, ApiError> {
    let mut bytes = BytesMut::new();
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > max_bytes {
                    return Ok(Err(ApiError::PayloadTooLarge { limit: max_bytes }));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Ok(bytes.freeze())),
            Err(e) => return Err(body_error(&e).unwrap_or(ApiError::InvalidImage)),
        }
    }
}

enum Source {
    Upload(Bytes),
    Url(String),
}

/// The photos of one listing in flight, in the order they came.
struct ListingRun {
    state: Arc<AppState>,
    key_id: i64,
    rate_limit_per_minute: Option<u32>,
    in_flight: Arc<Semaphore>,
    names: Vec<String>,
    results: Vec<Option<Result<PhotoFacts, ApiError>>>,
    tasks: JoinSet<(usize, Result<PhotoFacts, ApiError>)>,
}

impl ListingRun {
    fn new(state: Arc<AppState>, key_id: i64, rate_limit_per_minute: Option<u32>) -> Self {
        // One photo per replica being labelled and one being decoded keeps
        // every replica busy; more would only hold memory.
        let in_flight = Arc::new(Semaphore::new(state.worker.replicas() + 1));
        Self {
            state,
            key_id,
            rate_limit_per_minute,
            in_flight,
            names: Vec::new(),
            results: Vec::new(),
            tasks: JoinSet::new(),
        }
    }

    fn len(&self) -> usize {
        self.names.len()
    }

    /// A photo that failed before it could be labelled.
    fn refuse(&mut self, name: String, error: ApiError) {
        self.names.push(name);
        self.results.push(Some(Err(error)));
    }

    /// Starts on a photo once fewer than `in_flight` are under way.
    async fn submit(&mut self, name: String, source: Source) {
        let index = self.len();
        self.names.push(name);
        self.results.push(None);
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            self.results[index] = Some(Err(ApiError::internal("listing stopped")));
            return;
        };
        let state = self.state.clone();
        let (key_id, rate) = (self.key_id, self.rate_limit_per_minute);
        self.tasks.spawn(async move {
            let _permit = permit;
            // The request's own rate-limit token paid for the first photo.
            let token = match rate {
                Some(per_minute) if index > 0 => {
                    match state.store.take_token(key_id, per_minute).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(retry_after_s)) => Err(ApiError::RateLimited {
                            per_minute,
                            retry_after_s,
                        }),
                        Err(unreachable) => Err(unreachable.into()),
                    }
                }
                _ => Ok(()),
            };
            let result = match token {
                Ok(()) => label_photo(&state, source).await,
                Err(refused) => Err(refused),
            };
            (index, result)
        });
    }

    /// Waits for every photo; results in listing order, with their names.
    async fn finish(mut self) -> Vec<(String, Result<PhotoFacts, ApiError>)> {
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok((index, result)) => self.results[index] = Some(result),
                Err(e) => tracing::error!(error = %e, "a listing photo's task failed"),
            }
        }
        self.names
            .into_iter()
            .zip(self.results)
            .map(|(name, result)| {
                let result =
                    result.unwrap_or_else(|| Err(ApiError::internal("photo was not labelled")));
                (name, result)
            })
            .collect()
    }
}

/// One photo, exactly as the single-photo endpoints would label it (same
/// fetcher, limits and errors), plus what the analysis needs.
async fn label_photo(state: &AppState, source: Source) -> Result<PhotoFacts, ApiError> {
    let (bytes, refused) = match source {
        Source::Upload(bytes) => (bytes, ApiError::InvalidImage),
        Source::Url(url) => {
            let bytes = state.fetcher.fetch(&url).await.map_err(|e| {
                tracing::info!(reason = %e, "listing URL refused");
                ApiError::InvalidUrl
            })?;
            (bytes, ApiError::InvalidUrl)
        }
    };
    let slot = state.worker.reserve_for_listing().await?;
    let prepared = prepare_off_thread(bytes, state.image_limits, slot.preprocessing(), true)
        .await
        .map_err(|e| {
            tracing::debug!(error = %e, "listing photo refused");
            refused
        })?;
    let stats = prepared
        .stats
        .ok_or_else(|| ApiError::internal("a listing photo was not measured"))?;
    let labelled = slot.label(prepared).await?;
    Ok(PhotoFacts {
        label: decide(&labelled.probabilities, &state.rules),
        embedding: labelled.embedding,
        stats,
    })
}
