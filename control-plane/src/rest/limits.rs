//! Per-token rate limiting: a token bucket for each bearer token, refilled
//! at `per_second` up to `burst`. A request over the limit gets 429 with a
//! Retry-After saying when one would be admitted.
//!
//! Buckets are keyed by the token itself and only created for tokens that
//! authenticated, so an attacker cannot grow the table with made-up tokens.
//! A bucket that has been full for a minute is dropped on the next sweep.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::error::ApiError;

/// How many requests a token may make.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second. 0 disables limiting.
    pub per_second: f64,
    /// Requests that may arrive at once.
    pub burst: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The buckets of every token seen.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: DashMap<String, Bucket>,
    last_sweep: std::sync::Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter admitting `limit`.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: DashMap::new(),
            last_sweep: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Charges one request to `token`; `Err` carries the 429 to send.
    pub fn check(&self, token: &str) -> Result<(), ApiError> {
        self.check_at(token, Instant::now())
            .map_err(ApiError::rate_limited)
    }

    /// Charges one request at `now`; `Err` is how long until one is admitted.
    pub fn check_at(&self, token: &str, now: Instant) -> Result<(), Duration> {
        let RateLimit { per_second, burst } = self.limit;
        if per_second <= 0.0 {
            return Ok(());
        }
        let burst = burst.max(1.0);
        self.sweep(now);
        let mut bucket = match self.buckets.get_mut(token) {
            Some(bucket) => bucket,
            None => self.buckets.entry(token.to_owned()).or_insert(Bucket {
                tokens: burst,
                last: now,
            }),
        };
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }

    fn sweep(&self, now: Instant) {
        const IDLE: Duration = Duration::from_secs(60);
        {
            let Ok(mut last) = self.last_sweep.try_lock() else {
                return;
            };
            if now.saturating_duration_since(*last) < IDLE {
                return;
            }
            *last = now;
        }
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < IDLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 10.0,
            burst: 3.0,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("a", t0).is_ok());
        }
        let wait = limiter.check_at("a", t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(limiter.check_at("b", t0).is_ok(), "tokens have their own buckets");
        assert!(limiter.check_at("a", t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn zero_disables() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 0.0,
            burst: 0.0,
        });
        let t0 = Instant::now();
        assert!((0..1000).all(|_| limiter.check_at("a", t0).is_ok()));
    }
}
