//! Encodes the DNS plane's lock-free counters at scrape time, with CoreDNS's metric names under
//! the `capstan_dns_` prefix.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use capstan_dns::{DnsMetrics, Forwarder};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::{Labels, encode_counters as counters, encode_gauges};

/// Reads [`DnsMetrics`] and the forwarder's per-upstream figures.
#[derive(Debug, Default)]
pub struct DnsCollector {
    pub metrics: Arc<DnsMetrics>,
    pub forwarder: Option<Arc<Forwarder>>,
}

impl Collector for DnsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        let requests: Vec<(Labels, u64)> = m
            .requests()
            .into_iter()
            .map(|s| {
                let labels = vec![
                    ("proto", s.proto.to_owned()),
                    ("type", s.qtype.to_owned()),
                    ("rcode", s.rcode.to_owned()),
                ];
                (labels, s.count)
            })
            .collect();
        counters(
            &mut encoder,
            "dns_requests",
            "DNS queries answered, by transport, query type and response code",
            &requests,
        )?;

        let duration = m.duration();
        let mut family = encoder.encode_descriptor(
            "dns_request_duration_seconds",
            "Time from receiving a query to having its answer",
            None,
            MetricType::Histogram,
        )?;
        family.encode_histogram::<NoLabelSet>(
            duration.sum_seconds,
            duration.count,
            &duration.buckets,
            None,
        )?;

        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        counters(
            &mut encoder,
            "dns_cache_hits",
            "Forwarded questions answered from the cache",
            &[
                (
                    vec![("type", "success".into())],
                    load(&m.cache_hits_success),
                ),
                (vec![("type", "denial".into())], load(&m.cache_hits_denial)),
            ],
        )?;
        let plain = [
            (
                "dns_cache_misses",
                "Forwarded questions not in the cache",
                &m.cache_misses,
            ),
            (
                "dns_malformed_requests",
                "Packets that were not a parsable query (answered FORMERR, or ignored without a header)",
                &m.malformed,
            ),
            (
                "dns_forward_max_concurrent_rejects",
                "Queries refused because too many forwarded queries were in flight",
                &m.forward_rejected,
            ),
            (
                "dns_forward_loops",
                "Queries Capstan had forwarded that came back to it (resolver loops)",
                &m.loops,
            ),
        ];
        for (name, help, counter) in plain {
            counters(&mut encoder, name, help, &[(vec![], load(counter))])?;
        }

        let Some(forwarder) = &self.forwarder else {
            return Ok(());
        };
        let cache_entries = i64::try_from(forwarder.cache_len()).unwrap_or(i64::MAX);
        encode_gauges(
            &mut encoder,
            "dns_cache_entries",
            "Answers in the forwarding cache",
            &[(vec![], cache_entries)],
        )?;
        let upstreams = forwarder.upstreams();
        let to = |u: &capstan_dns::UpstreamStats| vec![("to", u.addr.to_string())];
        let per = |f: fn(&capstan_dns::UpstreamStats) -> u64| -> Vec<(Labels, u64)> {
            upstreams.iter().map(|u| (to(u), f(u))).collect()
        };
        counters(
            &mut encoder,
            "dns_forward_requests",
            "Queries sent to each upstream",
            &per(|u| u.requests),
        )?;
        counters(
            &mut encoder,
            "dns_forward_failures",
            "Upstream exchanges that failed (timeout, refused, unreachable)",
            &per(|u| u.failures),
        )?;
        counters(
            &mut encoder,
            "dns_forward_healthcheck_failures",
            "Failed probes of an upstream marked down",
            &per(|u| u.probe_failures),
        )?;
        let responses = super::dns::upstream_responses(&upstreams);
        counters(
            &mut encoder,
            "dns_forward_responses",
            "Upstream responses by response code",
            &responses,
        )?;
        let healthy: Vec<(Labels, i64)> = upstreams
            .iter()
            .map(|u| (to(u), i64::from(u.healthy && !u.looping)))
            .collect();
        encode_gauges(
            &mut encoder,
            "dns_forward_upstream_healthy",
            "1 if the upstream is in service, 0 if down or found looping",
            &healthy,
        )
    }
}

/// Upstream responses by upstream (`to`) and response code (`rcode`).
pub(super) fn upstream_responses(upstreams: &[capstan_dns::UpstreamStats]) -> Vec<(Labels, u64)> {
    upstreams
        .iter()
        .flat_map(|u| {
            u.responses.iter().map(move |(rcode, n)| {
                let labels = vec![("to", u.addr.to_string()), ("rcode", (*rcode).to_owned())];
                (labels, *n)
            })
        })
        .collect()
}
