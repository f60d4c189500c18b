//! Per-token rate limiting: a token bucket for each bearer token, refilled
//! at `per_second` up to `burst`. A request over the limit gets 429 with a
//! Retry-After saying when one would be admitted.
//!
//! Buckets are keyed by the token itself and only created for tokens that
//! authenticated, so an attacker cannot grow the table with made-up tokens.
//! A bucket that has been full for a minute is dropped on the next sweep.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::error::ApiError;

/// How many requests a token may make.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second. 0 disables limiting.
    pub per_second: f64,
    /// Requests that may arrive at once.
    pub burst: f64,
}

/// The per-token limiter (governor's keyed GCRA limiter).
pub struct RateLimiter {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("enabled", &self.limiter.is_some())
            .finish()
    }
}

impl RateLimiter {
    /// A limiter admitting `limit`.
    pub fn new(limit: RateLimit) -> Self {
        let limiter = (limit.per_second > 0.0).then(|| {
            let burst = NonZeroU32::new(limit.burst.max(1.0) as u32).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(Duration::from_secs_f64(1.0 / limit.per_second))
                .expect("a positive rate has a non-zero period")
                .allow_burst(burst);
            DefaultKeyedRateLimiter::keyed(quota)
        });
        Self {
            limiter,
            clock: DefaultClock::default(),
        }
    }

    /// Charges one request to `token`; `Err` carries the 429 to send.
    pub fn check(&self, token: &str) -> Result<(), ApiError> {
        self.check_wait(token).map_err(ApiError::rate_limited)
    }

    /// Charges one request; `Err` is how long until one would be admitted.
    pub fn check_wait(&self, token: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        match limiter.check_key(&token.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                // Forget idle tokens now and then so the table stays small.
                if limiter.len() > 10_000 {
                    limiter.retain_recent();
                }
                Err(not_until.wait_time_from(self.clock.now()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_wait() {
        // A slow refill, so that no token comes back during the test.
        let limiter = RateLimiter::new(RateLimit {
            per_second: 0.01,
            burst: 3.0,
        });
        for _ in 0..3 {
            assert!(limiter.check_wait("a").is_ok());
        }
        let wait = limiter.check_wait("a").unwrap_err();
        assert!(
            wait > Duration::from_secs(90) && wait <= Duration::from_secs(100),
            "{wait:?}"
        );
        assert!(limiter.check_wait("b").is_ok(), "tokens have their own buckets");
    }

    #[test]
    fn zero_disables() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 0.0,
            burst: 0.0,
        });
        assert!((0..1000).all(|_| limiter.check_wait("a").is_ok()));
    }
}
