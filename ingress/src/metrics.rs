//! Lock-free counters of the ingress plane that belong to no route (per-route counters live in
//! the snapshot's [`capstan_table::RouteStats`]); read by the agent's collector at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

use capstan_table::{STATUS_CLASSES, status_class};

/// Why a request or connection was refused before reaching a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A request head larger than the limit, or too many headers (431).
    HeadersTooLarge,
    /// A request line or header hyper could not parse (400).
    Malformed,
    /// No or an invalid `Host`/`:authority` (400).
    InvalidHost,
    /// The request head did not arrive within the header timeout.
    HeaderTimeout,
    /// The TLS handshake failed or timed out.
    TlsHandshake,
    /// A trusted peer sent a malformed PROXY protocol header, or none in time.
    ProxyProtocol,
}

/// Every ingress counter that is not per route.
#[derive(Debug, Default)]
pub struct IngressMetrics {
    refused: [AtomicU64; REFUSALS.len()],
    faults: [AtomicU64; crate::plan::FAULTS.len()],
    /// Responses by status class for requests that matched no route (404s, redirects, 400s).
    unrouted: [AtomicU64; 5],
    /// Connections accepted, by listener: plain, TLS.
    pub connections: [AtomicU64; 2],
    pub active_connections: AtomicU64,
    /// Connections that switched protocols (WebSocket) and are being relayed.
    pub upgraded: AtomicU64,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: AtomicU64,
    /// Attempts sent again under a route's retry policy.
    pub retries: AtomicU64,
}

const REFUSALS: [Refusal; 6] = [
    Refusal::HeadersTooLarge,
    Refusal::Malformed,
    Refusal::InvalidHost,
    Refusal::HeaderTimeout,
    Refusal::TlsHandshake,
    Refusal::ProxyProtocol,
];

// === impl Refusal ===

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::Malformed => "malformed",
            Refusal::InvalidHost => "invalid_host",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::ProxyProtocol => "proxy_protocol",
        }
    }

    /// Its position in `REFUSALS` (the declaration order).
    fn index(self) -> usize {
        self as usize
    }
}

// === impl IngressMetrics ===

impl IngressMetrics {
    pub fn refuse(&self, refusal: Refusal) {
        self.refused[refusal.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request answered by Capstan instead of forwarded.
    pub fn record_fault(&self, fault: crate::plan::Fault) {
        self.faults[fault.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered instead of forwarded, by fault.
    pub fn faults(&self) -> impl Iterator<Item = (crate::plan::Fault, u64)> + '_ {
        crate::plan::FAULTS
            .into_iter()
            .map(|f| (f, self.faults[f.index()].load(Ordering::Relaxed)))
    }

    pub fn record_unrouted(&self, status: u16) {
        self.unrouted[status_class(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// `(reason, count)` for every refusal reason.
    pub fn refusals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        REFUSALS
            .iter()
            .map(|r| (r.as_str(), self.refused[r.index()].load(Ordering::Relaxed)))
    }

    /// `(class, count)`: `1xx` … `5xx` for unrouted responses.
    pub fn unrouted(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        STATUS_CLASSES
            .into_iter()
            .zip(&self.unrouted)
            .map(|(class, n)| (class, n.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_own_counter() {
        let metrics = IngressMetrics::default();
        for (i, refusal) in REFUSALS.iter().enumerate() {
            assert_eq!(refusal.index(), i, "REFUSALS follows the declaration order");
            metrics.refuse(*refusal);
        }
        assert!(metrics.refusals().all(|(_, n)| n == 1));
    }
}
