//! One backend address with its conditions, and the live state that survives snapshot swaps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::Timeouts;

/// τ of the latency estimate's decay: after this long without a sample an estimate has fallen
/// to 1/e (linkerd2-proxy's default decay).
pub const LATENCY_DECAY_MS: u64 = 10_000;

/// One backend of a Service port, as compiled into a snapshot.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub conditions: EndpointConditions,
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// EndpointSlice topology hints, for kube-proxy's topology-aware routing.
    pub hints: TopologyHints,
    /// Live state, carried over by `compile` from the previous snapshot for the same address.
    pub stats: Arc<EndpointStats>,
}

/// `hints.forZones` and `hints.forNodes` of an EndpointSlice endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopologyHints {
    pub zones: Vec<Arc<str>>,
    pub nodes: Vec<Arc<str>>,
}

/// EndpointSlice conditions, with the API's defaults already applied
/// (`ready` nil → true, `serving` nil → `ready`, `terminating` nil → false).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointConditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// Counters and passive-health state of one endpoint. Shared by every snapshot that contains the
/// endpoint, so in-flight counts and ejections are never reset by a swap.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Connections currently open to this endpoint.
    pub in_flight: AtomicU64,
    /// Times this endpoint was chosen.
    pub chosen: AtomicU64,
    /// Failed connection attempts.
    pub connect_errors: AtomicU64,
    /// Consecutive failed connection attempts; reset by a success.
    pub consecutive_failures: AtomicU32,
    /// Monotonic milliseconds until which the endpoint is ejected (0: not ejected).
    pub ejected_until_ms: AtomicU64,
    /// Peak-EWMA of HTTP response latency in microseconds (0: no sample yet), for the ingress
    /// balancer.
    pub latency_ewma_us: AtomicU64,
    /// Monotonic milliseconds of the last latency sample: the balancer decays the estimate with
    /// the time since (see [`EndpointStats::decayed_latency_us`]).
    pub latency_observed_ms: AtomicU64,
    /// Consecutive 5xx responses and consecutive gateway errors (502, 503, 504, connect and
    /// protocol failures), for outlier ejection; reset by any other response.
    pub consecutive_5xx: AtomicU32,
    pub consecutive_gateway_errors: AtomicU32,
    /// Ejections for consecutive 5xx or gateway errors (outlier detection), for metrics.
    pub outlier_ejections: AtomicU64,
    /// Active health checking marked this endpoint down (see `ActiveHealthCheck`).
    pub unhealthy: AtomicBool,
    /// Monotonic milliseconds when the next active check is due (0: at once).
    pub next_check_ms: AtomicU64,
    /// Consecutive passing and failing active checks, against the thresholds.
    pub checks_passed: AtomicU32,
    pub checks_failed: AtomicU32,
    /// Up ↔ down transitions decided by active checks, for metrics.
    pub health_transitions: AtomicU64,
}

// === impl Endpoint ===

impl Endpoint {
    /// A ready endpoint at `addr` with no topology and fresh stats.
    pub fn ready(addr: SocketAddr) -> Self {
        Self {
            addr,
            conditions: EndpointConditions::READY,
            node_name: None,
            zone: None,
            hints: TopologyHints::default(),
            stats: Arc::default(),
        }
    }
}

// === impl EndpointConditions ===

impl EndpointConditions {
    pub const READY: Self = Self {
        ready: true,
        serving: true,
        terminating: false,
    };
}

// === impl EndpointStats ===

impl EndpointStats {
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Records a failed connect and ejects the endpoint for `timeouts.eject_base` doubled per
    /// consecutive failure, capped at `timeouts.eject_max`. Returns the ejection deadline.
    pub fn record_failure(&self, now_ms: u64, timeouts: &Timeouts) -> u64 {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        self.eject(now_ms, timeouts)
    }

    /// Ejects the endpoint after consecutive 5xx or gateway errors (outlier detection), with the
    /// same backoff as failed connects. Returns the ejection deadline.
    pub fn eject_outlier(&self, now_ms: u64, timeouts: &Timeouts) -> u64 {
        self.outlier_ejections.fetch_add(1, Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway_errors.store(0, Ordering::Relaxed);
        self.eject(now_ms, timeouts)
    }

    fn eject(&self, now_ms: u64, timeouts: &Timeouts) -> u64 {
        let base_ms = millis(timeouts.eject_base);
        let max_ms = millis(timeouts.eject_max);
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        let backoff = base_ms.saturating_mul(1u64 << failures.min(16)).min(max_ms);
        let until = now_ms.saturating_add(backoff);
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        until
    }

    /// Folds one response latency, observed at `now_ms`, into the peak-EWMA: a slower sample
    /// than the (decayed) estimate is taken at once (react to trouble immediately), a faster one
    /// moves it a quarter of the way.
    pub fn record_latency(&self, latency: Duration, now_ms: u64) {
        let sample = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let current = self.decayed_latency_us(now_ms);
        let next = if current == 0 || sample >= current {
            sample
        } else {
            current - (current - sample) / 4
        };
        self.latency_ewma_us.store(next, Ordering::Relaxed);
        self.latency_observed_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The latency estimate at `now_ms`, decayed towards zero with the time since its last
    /// sample: `estimate × e^(−elapsed/τ)`, τ = [`LATENCY_DECAY_MS`] (Finagle's and linkerd2's
    /// peak-EWMA). An endpoint that stopped being picked after one slow answer thus looks
    /// cheaper and cheaper until it is tried again. 0 means no sample yet.
    pub fn decayed_latency_us(&self, now_ms: u64) -> u64 {
        let estimate = self.latency_ewma_us.load(Ordering::Relaxed);
        if estimate == 0 {
            return 0;
        }
        let observed = self.latency_observed_ms.load(Ordering::Relaxed);
        let elapsed = now_ms.saturating_sub(observed) as f64;
        let decayed = estimate as f64 * (-elapsed / LATENCY_DECAY_MS as f64).exp();
        // Never 0 (that means "no sample"): a long-idle endpoint costs 1 µs.
        (decayed as u64).max(1)
    }

    /// Whether the endpoint may get traffic: not ejected and not marked down by active checks.
    pub fn is_available(&self, now_ms: u64) -> bool {
        !self.is_ejected(now_ms) && !self.unhealthy.load(Ordering::Relaxed)
    }

    /// Records a successful connect: the endpoint is healthy again.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

/// A duration in whole milliseconds, saturating: the unit of every monotonic deadline.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_backs_off_and_success_clears_it() {
        let t = &Timeouts {
            eject_base: Duration::from_millis(100),
            eject_max: Duration::from_millis(1_000),
            ..Timeouts::default()
        };
        let stats = EndpointStats::default();
        assert!(!stats.is_ejected(0));
        assert_eq!(stats.record_failure(1_000, t), 1_100);
        assert!(stats.is_ejected(1_099));
        assert!(!stats.is_ejected(1_100));
        assert_eq!(stats.record_failure(2_000, t), 2_200);
        assert_eq!(stats.record_failure(3_000, t), 3_400);
        for _ in 0..10 {
            stats.record_failure(5_000, t);
        }
        assert_eq!(
            stats.ejected_until_ms.load(Ordering::Relaxed),
            6_000,
            "capped"
        );
        stats.record_success();
        assert!(!stats.is_ejected(5_000));
        assert_eq!(stats.record_failure(7_000, t), 7_100, "backoff restarts");
        assert_eq!(stats.connect_errors.load(Ordering::Relaxed), 14);
    }

    #[test]
    fn latency_ewma_takes_peaks_at_once_and_decays_slowly() {
        let stats = EndpointStats::default();
        assert_eq!(stats.decayed_latency_us(5), 0, "no sample yet");
        stats.record_latency(Duration::from_micros(1_000), 10);
        assert_eq!(stats.latency_ewma_us.load(Ordering::Relaxed), 1_000);
        stats.record_latency(Duration::from_micros(200), 10);
        assert_eq!(stats.latency_ewma_us.load(Ordering::Relaxed), 800);
        stats.record_latency(Duration::from_micros(5_000), 10);
        assert_eq!(stats.latency_ewma_us.load(Ordering::Relaxed), 5_000);
        stats.record_latency(Duration::ZERO, 10);
        assert_eq!(
            stats.latency_ewma_us.load(Ordering::Relaxed),
            3_751,
            "samples count as at least 1 µs"
        );
    }

    #[test]
    fn latency_estimate_decays_with_time_since_its_last_sample() {
        let stats = EndpointStats::default();
        stats.record_latency(Duration::from_millis(10), 1_000);
        assert_eq!(stats.decayed_latency_us(1_000), 10_000);
        let one_tau = stats.decayed_latency_us(1_000 + LATENCY_DECAY_MS);
        assert!((3_670..=3_690).contains(&one_tau), "{one_tau}");
        assert_eq!(
            stats.decayed_latency_us(u64::MAX),
            1,
            "never reads as unsampled"
        );
        // A fast sample after a long silence replaces most of the old peak.
        stats.record_latency(Duration::from_millis(1), 1_000 + 5 * LATENCY_DECAY_MS);
        let after = stats.latency_ewma_us.load(Ordering::Relaxed);
        assert!(after < 1_100, "{after}");
    }
}
