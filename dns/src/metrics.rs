//! Lock-free DNS counters, updated per query and read by the agent's metrics collector at scrape
//! time (names follow CoreDNS's: requests by type and rcode, request duration, cache hits/misses).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use capstan_table::{Histogram, HistogramSample};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// Transport a query arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

const PROTOS: [&str; 2] = ["udp", "tcp"];
const TYPES: [&str; 11] = [
    "A", "AAAA", "SRV", "PTR", "TXT", "CNAME", "NS", "SOA", "ANY", "HTTPS", "other",
];
const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];
/// Upper bounds of the duration histogram, in seconds (CoreDNS's exponential buckets).
const BUCKETS: [f64; 14] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048,
];

/// Every per-query counter of the DNS plane.
#[derive(Debug)]
pub struct DnsMetrics {
    requests: [[[AtomicU64; RCODES.len()]; TYPES.len()]; PROTOS.len()],
    duration: Histogram<{ BUCKETS.len() }>,
    /// Answers served from the forwarding cache: positive and negative.
    pub cache_hits_success: AtomicU64,
    pub cache_hits_denial: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Packets that did not parse (answered FORMERR, or ignored when headerless).
    pub malformed: AtomicU64,
    /// Forwarded queries refused because too many were already in flight.
    pub forward_rejected: AtomicU64,
    /// Queries recognised as Capstan's own forwarded queries coming back (resolver loops).
    pub loops: AtomicU64,
}

/// One request counter sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSample {
    pub proto: &'static str,
    pub qtype: &'static str,
    pub rcode: &'static str,
    pub count: u64,
}

// === impl DnsMetrics ===

impl Default for DnsMetrics {
    fn default() -> Self {
        Self {
            requests: Default::default(),
            duration: Histogram::new(&BUCKETS),
            cache_hits_success: AtomicU64::new(0),
            cache_hits_denial: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            forward_rejected: AtomicU64::new(0),
            loops: AtomicU64::new(0),
        }
    }
}

impl DnsMetrics {
    /// Counts one answered query.
    pub fn record(
        &self,
        transport: Transport,
        qtype: Option<RecordType>,
        rcode: ResponseCode,
        elapsed: Duration,
    ) {
        let proto = match transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
        };
        let type_index = match qtype {
            Some(RecordType::A) => 0,
            Some(RecordType::AAAA) => 1,
            Some(RecordType::SRV) => 2,
            Some(RecordType::PTR) => 3,
            Some(RecordType::TXT) => 4,
            Some(RecordType::CNAME) => 5,
            Some(RecordType::NS) => 6,
            Some(RecordType::SOA) => 7,
            Some(RecordType::ANY) => 8,
            Some(RecordType::HTTPS) => 9,
            _ => 10,
        };
        let rcode_index = match rcode {
            ResponseCode::NoError => 0,
            ResponseCode::FormErr => 1,
            ResponseCode::ServFail => 2,
            ResponseCode::NXDomain => 3,
            ResponseCode::NotImp => 4,
            ResponseCode::Refused => 5,
            _ => 6,
        };
        self.requests[proto][type_index][rcode_index].fetch_add(1, Ordering::Relaxed);
        self.duration.record(elapsed);
    }

    /// Non-zero request counters.
    pub fn requests(&self) -> Vec<RequestSample> {
        let mut out = Vec::new();
        for (p, by_type) in self.requests.iter().enumerate() {
            for (t, by_rcode) in by_type.iter().enumerate() {
                for (r, counter) in by_rcode.iter().enumerate() {
                    let count = counter.load(Ordering::Relaxed);
                    if count > 0 {
                        out.push(RequestSample {
                            proto: PROTOS[p],
                            qtype: TYPES[t],
                            rcode: RCODES[r],
                            count,
                        });
                    }
                }
            }
        }
        out
    }

    pub fn duration(&self) -> HistogramSample {
        self.duration.sample()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_transport_type_and_rcode() {
        let metrics = DnsMetrics::default();
        let ms = Duration::from_millis(1);
        metrics.record(
            Transport::Udp,
            Some(RecordType::A),
            ResponseCode::NoError,
            ms,
        );
        metrics.record(
            Transport::Udp,
            Some(RecordType::A),
            ResponseCode::NoError,
            ms,
        );
        metrics.record(Transport::Tcp, None, ResponseCode::FormErr, ms * 100);
        let samples = metrics.requests();
        assert_eq!(samples.len(), 2);
        assert_eq!(
            (
                samples[0].proto,
                samples[0].qtype,
                samples[0].rcode,
                samples[0].count
            ),
            ("udp", "A", "NOERROR", 2)
        );
        assert_eq!(
            (samples[1].proto, samples[1].qtype, samples[1].rcode),
            ("tcp", "other", "FORMERR")
        );
        let duration = metrics.duration();
        assert_eq!(duration.count, 3);
        assert_eq!(duration.buckets[2], (0.001, 2));
        assert_eq!(duration.buckets.iter().map(|b| b.1).sum::<u64>(), 3);
    }
}
