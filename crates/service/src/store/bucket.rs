//! The SQLite store's rate limits: token buckets in memory. One machine
//! owns an SQLite file, so its buckets need not be shared; the PostgreSQL
//! store keeps them in the database instead, for every replica.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Token buckets per key: a key with `N/min` may burst `N` requests and
/// then gets one more every `60/N` seconds. In memory: a restart refills
/// every bucket, which errs on the side of the customer.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<i64, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// Takes a token from the key's bucket, or says in how many whole
    /// seconds the next one will be there (for `Retry-After`).
    pub fn try_acquire(&self, key_id: i64, per_minute: u32) -> Result<(), u64> {
        self.try_acquire_at(key_id, per_minute, Instant::now())
    }

    fn try_acquire_at(&self, key_id: i64, per_minute: u32, now: Instant) -> Result<(), u64> {
        let capacity = f64::from(per_minute);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.entry(key_id).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * capacity / 60.0).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_s = (1.0 - bucket.tokens) * 60.0 / capacity;
            // At least 1: a client told "0" would retry at once and fail again.
            Err((wait_s.ceil() as u64).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_bursts_then_refills() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.try_acquire_at(1, 2, t0), Ok(()));
        assert_eq!(limiter.try_acquire_at(1, 2, t0), Ok(()));
        // 2/min: one token every 30 s, so the wait is 30 s.
        assert_eq!(limiter.try_acquire_at(1, 2, t0), Err(30));
        // Another key has its own bucket.
        assert_eq!(limiter.try_acquire_at(2, 2, t0), Ok(()));
        assert_eq!(
            limiter.try_acquire_at(1, 2, t0 + Duration::from_secs(29)),
            Err(1)
        );
        assert_eq!(
            limiter.try_acquire_at(1, 2, t0 + Duration::from_secs(31)),
            Ok(())
        );
    }
}
