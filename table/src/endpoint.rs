//! One backend address with its conditions, and the live state that survives snapshot swaps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::Timeouts;

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
        let base_ms = millis(timeouts.eject_base);
        let max_ms = millis(timeouts.eject_max);
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        let backoff = base_ms.saturating_mul(1u64 << failures.min(16)).min(max_ms);
        let until = now_ms.saturating_add(backoff);
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        until
    }

    /// Folds one response latency into the peak-EWMA: a slower sample is taken at once (react
    /// to trouble immediately), a faster one moves the average a quarter of the way.
    pub fn record_latency(&self, latency: Duration) {
        let sample = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let current = self.latency_ewma_us.load(Ordering::Relaxed);
        let next = if current == 0 || sample >= current {
            sample
        } else {
            current - (current - sample) / 4
        };
        self.latency_ewma_us.store(next, Ordering::Relaxed);
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
        stats.record_latency(Duration::from_micros(1_000));
        assert_eq!(stats.latency_ewma_us.load(Ordering::Relaxed), 1_000);
        stats.record_latency(Duration::from_micros(200));
        assert_eq!(stats.latency_ewma_us.load(Ordering::Relaxed), 800);
        stats.record_latency(Duration::from_micros(5_000));
        assert_eq!(stats.latency_ewma_us.load(Ordering::Relaxed), 5_000);
        stats.record_latency(Duration::ZERO);
        assert_eq!(
            stats.latency_ewma_us.load(Ordering::Relaxed),
            3_751,
            "samples count as at least 1 µs"
        );
    }
}
