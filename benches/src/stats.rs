//! Latency samples and their summary. Percentiles are exact (the samples are
//! sorted), so no histogram crate is needed at these sample counts.

use std::time::Duration;

/// A latency summary in nanoseconds.
#[derive(Clone, Debug)]
pub struct Summary {
    pub samples: usize,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: u64,
    /// Operations per second over the wall time of the measurement.
    pub rate_per_s: f64,
}

impl Summary {
    /// Summarises `samples` (nanoseconds) measured over `wall`.
    pub fn new(mut samples: Vec<u64>, wall: Duration) -> Self {
        samples.sort_unstable();
        let n = samples.len();
        let pick = |q: f64| -> u64 {
            if n == 0 {
                return 0;
            }
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            samples[rank - 1]
        };
        let mean_ns = if n == 0 {
            0
        } else {
            (samples.iter().map(|&s| s as u128).sum::<u128>() / n as u128) as u64
        };
        Self {
            samples: n,
            p50_ns: pick(0.50),
            p99_ns: pick(0.99),
            p999_ns: pick(0.999),
            max_ns: samples.last().copied().unwrap_or(0),
            mean_ns,
            rate_per_s: if wall.is_zero() {
                0.0
            } else {
                n as f64 / wall.as_secs_f64()
            },
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "samples": self.samples,
            "p50_us": us(self.p50_ns),
            "p99_us": us(self.p99_ns),
            "p99_9_us": us(self.p999_ns),
            "max_us": us(self.max_ns),
            "mean_us": us(self.mean_ns),
            "rate_per_s": self.rate_per_s.round(),
        })
    }
}

/// Nanoseconds as microseconds with one decimal.
pub fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}
