//! `x-api-key` authentication, per-key rate limits and quotas. Addresses
//! that keep sending invalid keys are locked out ([`crate::lockout`]).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use crate::api::AppState;
use crate::error::ApiError;
use crate::keys::{KeyHash, MAX_KEY_LEN};
use crate::store::KeyRecord;

pub const API_KEY_HEADER: &str = "x-api-key";

/// Who made the request, as the request log shows it: the key's id and
/// name, never the key. Filled in by the extractors; read by the log layer.
#[derive(Debug, Clone, Default)]
pub struct CallerSlot(pub Arc<OnceLock<(i64, String)>>);

/// An authenticated key that may also make a labelling call now: not
/// revoked, within its rate limit and quota.
pub struct LabellingCaller(pub KeyRecord);

/// An authenticated key, without the rate limit (for `GET /credit`).
pub struct Caller(pub KeyRecord);

async fn authenticate(parts: &Parts, state: &AppState) -> Result<KeyRecord, ApiError> {
    let value = match parts.headers.get(API_KEY_HEADER) {
        None => return Err(ApiError::MissingKey),
        Some(v) if v.is_empty() => return Err(ApiError::MissingKey),
        Some(v) => v,
    };
    // An over-long or non-text header is no key at all: not hashed, never
    // looked up.
    let hash = Some(value)
        .filter(|v| v.len() <= MAX_KEY_LEN)
        .and_then(|v| v.to_str().ok())
        .map(|key| KeyHash::of(key.trim()));
    // The connection's peer, put there by the listener; absent only when
    // the router is driven in-process.
    let address = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    if let Some(address) = address {
        state
            .bad_keys
            .check(address, hash.as_ref())
            .map_err(|wait| ApiError::AddressLockedOut {
                retry_after_s: wait.as_secs_f64().ceil() as u64,
            })?;
    }
    let found = match hash {
        Some(hash) => state.store.find_key(hash).await?,
        None => None,
    };
    let Some(record) = found.filter(|record| !record.is_revoked()) else {
        if let Some(address) = address {
            state.bad_keys.record_failure(address, hash.as_ref());
        }
        return Err(ApiError::InvalidKey);
    };
    state.bad_keys.record_success(&record.hash);
    if let Some(slot) = parts.extensions.get::<CallerSlot>() {
        let _ = slot.0.set((record.id, record.name.clone()));
    }
    Ok(record)
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, state).await.map(Caller)
    }
}

impl FromRequestParts<Arc<AppState>> for LabellingCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let record = authenticate(parts, state).await?;
        if let Some(quota) = record.quota {
            // A cheap early refusal; the ledger's conditional increment is
            // what actually guarantees the quota under concurrency.
            if record.calls_used >= quota {
                return Err(ApiError::QuotaExhausted { quota });
            }
        }
        if let Some(per_minute) = record.rate_limit_per_minute {
            if let Err(retry_after_s) = state.store.take_token(record.id, per_minute).await? {
                return Err(ApiError::RateLimited {
                    per_minute,
                    retry_after_s,
                });
            }
        }
        Ok(LabellingCaller(record))
    }
}
