//! A lock-free latency histogram: fixed upper bounds, one atomic per bucket, read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Prometheus's default buckets, in seconds: suited to HTTP request latency.
pub const HTTP_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counts of observations per bucket (not cumulative), with their count and sum.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A histogram at one instant: counts per bucket by upper bound (not cumulative: the encoder
/// accumulates), the last bucket `f64::INFINITY` holding what exceeded every bound.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSample {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

// === impl Histogram ===

impl<const N: usize> Histogram<N> {
    pub fn new(bounds: &'static [f64; N]) -> Self {
        Self {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = self.bounds.iter().position(|&upper| seconds <= upper) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sample(&self) -> HistogramSample {
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(&upper, n)| (upper, n.load(Ordering::Relaxed)))
            .collect();
        let count = self.count();
        let bounded: u64 = buckets.iter().map(|b| b.1).sum();
        buckets.push((f64::INFINITY, count.saturating_sub(bounded)));
        HistogramSample {
            buckets,
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_their_own_observations_and_inf_the_rest() {
        let h = Histogram::new(&HTTP_BUCKETS);
        h.record(Duration::from_millis(1));
        h.record(Duration::from_millis(30));
        h.record(Duration::from_secs(60));
        let s = h.sample();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.005, 1));
        assert_eq!(s.buckets[2], (0.025, 0));
        assert_eq!(s.buckets[3], (0.05, 1));
        assert_eq!(s.buckets[10], (10.0, 0));
        assert_eq!(s.buckets[11], (f64::INFINITY, 1));
        assert!((s.sum_seconds - 60.031).abs() < 1e-6);
    }
}
