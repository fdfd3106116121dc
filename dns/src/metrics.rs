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

/// CoreDNS's `coredns_dns_request_duration_seconds` buckets: `prometheus.ExponentialBuckets
/// (0.00025, 2, 16)` (plugin/metrics/vars/vars.go).
const COREDNS_DURATION_BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];
/// CoreDNS's request and response size buckets, in bytes (plugin/metrics/vars/vars.go).
const SIZE_BUCKETS: [f64; 14] = [
    0.0, 100.0, 200.0, 300.0, 400.0, 511.0, 1023.0, 2047.0, 4095.0, 8291.0, 16e3, 32e3, 48e3, 64e3,
];

/// One answered query, as the counters see it.
#[derive(Clone, Copy, Debug)]
pub struct Answered {
    pub transport: Transport,
    pub qtype: Option<RecordType>,
    pub rcode: ResponseCode,
    pub elapsed: Duration,
    /// The query's and the response's length on the wire.
    pub request_bytes: usize,
    pub response_bytes: usize,
    /// The query's EDNS DO bit.
    pub dnssec_ok: bool,
}

/// A histogram of byte sizes (CoreDNS's buckets): counts per bucket, count and sum.
#[derive(Debug, Default)]
struct SizeHistogram {
    buckets: [AtomicU64; SIZE_BUCKETS.len()],
    count: AtomicU64,
    sum: AtomicU64,
}

/// Every per-query counter of the DNS plane.
#[derive(Debug)]
pub struct DnsMetrics {
    requests: [[[AtomicU64; RCODES.len()]; TYPES.len()]; PROTOS.len()],
    duration: Histogram<{ BUCKETS.len() }>,
    /// CoreDNS's duration histogram, per query type.
    duration_by_type: [Histogram<{ COREDNS_DURATION_BUCKETS.len() }>; TYPES.len()],
    /// Query and response sizes, per transport.
    request_size: [SizeHistogram; PROTOS.len()],
    response_size: [SizeHistogram; PROTOS.len()],
    /// Queries with the EDNS DO bit set.
    pub dnssec_ok: AtomicU64,
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
            duration_by_type: std::array::from_fn(|_| Histogram::new(&COREDNS_DURATION_BUCKETS)),
            request_size: Default::default(),
            response_size: Default::default(),
            dnssec_ok: AtomicU64::new(0),
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
    pub fn record(&self, answered: Answered) {
        let Answered {
            transport,
            qtype,
            rcode,
            elapsed,
            ..
        } = answered;
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
        self.duration_by_type[type_index].record(elapsed);
        self.request_size[proto].record(answered.request_bytes);
        self.response_size[proto].record(answered.response_bytes);
        if answered.dnssec_ok {
            self.dnssec_ok.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// CoreDNS's duration histogram for each query type that was asked.
    pub fn duration_by_type(&self) -> Vec<(&'static str, HistogramSample)> {
        TYPES
            .iter()
            .zip(&self.duration_by_type)
            .filter(|(_, h)| h.count() > 0)
            .map(|(name, h)| (*name, h.sample()))
            .collect()
    }

    /// Query sizes per transport (`udp`, `tcp`), as histogram samples in bytes.
    pub fn request_sizes(&self) -> Vec<(&'static str, HistogramSample)> {
        PROTOS
            .iter()
            .zip(&self.request_size)
            .map(|(proto, h)| (*proto, h.sample()))
            .collect()
    }

    /// Response sizes per transport.
    pub fn response_sizes(&self) -> Vec<(&'static str, HistogramSample)> {
        PROTOS
            .iter()
            .zip(&self.response_size)
            .map(|(proto, h)| (*proto, h.sample()))
            .collect()
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

// === impl SizeHistogram ===

impl SizeHistogram {
    fn record(&self, bytes: usize) {
        let value = bytes as f64;
        if let Some(bucket) = SIZE_BUCKETS.iter().position(|&upper| value <= upper) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The same shape as a latency sample, the sum in bytes.
    fn sample(&self) -> HistogramSample {
        let mut buckets: Vec<(f64, u64)> = SIZE_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&upper, n)| (upper, n.load(Ordering::Relaxed)))
            .collect();
        let count = self.count.load(Ordering::Relaxed);
        let bounded: u64 = buckets.iter().map(|b| b.1).sum();
        buckets.push((f64::INFINITY, count.saturating_sub(bounded)));
        HistogramSample {
            buckets,
            count,
            sum_seconds: self.sum.load(Ordering::Relaxed) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_transport_type_and_rcode() {
        let metrics = DnsMetrics::default();
        let ms = Duration::from_millis(1);
        let a = Answered {
            transport: Transport::Udp,
            qtype: Some(RecordType::A),
            rcode: ResponseCode::NoError,
            elapsed: ms,
            request_bytes: 40,
            response_bytes: 120,
            dnssec_ok: true,
        };
        metrics.record(a);
        metrics.record(Answered {
            dnssec_ok: false,
            ..a
        });
        metrics.record(Answered {
            transport: Transport::Tcp,
            qtype: None,
            rcode: ResponseCode::FormErr,
            elapsed: ms * 100,
            request_bytes: 9000,
            response_bytes: 12,
            dnssec_ok: false,
        });
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
        // CoreDNS's views: per type, sizes per transport, the DO bit.
        let by_type = metrics.duration_by_type();
        assert_eq!(
            by_type
                .iter()
                .map(|(t, s)| (*t, s.count))
                .collect::<Vec<_>>(),
            [("A", 2), ("other", 1)]
        );
        let requests = metrics.request_sizes();
        assert_eq!(requests[0].0, "udp");
        assert_eq!(requests[0].1.buckets[1], (100.0, 2));
        assert_eq!(
            requests[1].1.buckets[10],
            (16e3, 1),
            "9000 bytes fall in the 16e3 bucket"
        );
        assert!(
            (requests[0].1.sum_seconds - 80.0).abs() < 1e-9,
            "sums are bytes"
        );
        assert_eq!(metrics.response_sizes()[0].1.buckets[2], (200.0, 2));
        assert_eq!(metrics.dnssec_ok.load(Ordering::Relaxed), 1);
    }
}
