//! The DNS plane's counters under CoreDNS's own names, labels and buckets (plugin/metrics,
//! plugin/cache, plugin/forward), served on `--dns-metrics` (CoreDNS's `prometheus :9153`), so the
//! dashboards and alerts written for CoreDNS keep working when Capstan answers instead.
//!
//! Capstan is one server block (`server="dns://ADDR"`, `zone="."`, `view=""`): the cluster domain
//! and everything it forwards, as the default Kubernetes Corefile has it. `plugin` on responses is
//! empty: CoreDNS names the plugin that wrote the answer, Capstan has none.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use capstan_dns::{DnsMetrics, Forwarder};
use capstan_table::HistogramSample;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{Labels, encode_counters as counters, encode_gauges as gauges};

/// Panics anywhere in the process (CoreDNS's `coredns_panics_total`), counted by the panic hook
/// [`count_panics`] installs.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Installs a panic hook that counts every panic, then runs the previous hook.
pub fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));
}

/// Reads [`DnsMetrics`] and the forwarder for the CoreDNS-compatible exposition.
#[derive(Debug)]
pub struct CoreDnsCollector {
    pub metrics: Arc<DnsMetrics>,
    pub forwarder: Option<Arc<Forwarder>>,
    /// `dns://ADDR`, the DNS listen address.
    pub server: String,
    /// CoreDNS's `family`: `1` for IPv4, `2` for IPv6 (of the listening address).
    pub family: &'static str,
}

/// A registry holding only the CoreDNS-compatible metrics.
pub fn coredns_registry(collector: CoreDnsCollector) -> Registry {
    let mut registry = Registry::with_prefix("coredns");
    registry.register_collector(Box::new(collector));
    registry
}

impl CoreDnsCollector {
    fn base(&self) -> Labels {
        vec![
            ("server", self.server.clone()),
            ("zone", ".".into()),
            ("view", String::new()),
        ]
    }

    fn with(&self, extra: &[(&'static str, &str)]) -> Labels {
        let mut labels = self.base();
        labels.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        labels
    }

    fn encode_requests(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.metrics.requests();
        let mut requests: Vec<(Labels, u64)> = Vec::new();
        let mut responses: Vec<(Labels, u64)> = Vec::new();
        for s in &samples {
            let labels = self.with(&[
                ("proto", s.proto),
                ("family", self.family),
                ("type", s.qtype),
            ]);
            add(&mut requests, labels, s.count);
            add(
                &mut responses,
                self.with(&[("rcode", s.rcode), ("plugin", "")]),
                s.count,
            );
        }
        counters(
            encoder,
            "dns_requests",
            "Counter of DNS requests made per zone, protocol and family.",
            &requests,
        )?;
        counters(
            encoder,
            "dns_responses",
            "Counter of response status codes.",
            &responses,
        )?;
        let dnssec_ok = self.metrics.dnssec_ok.load(Ordering::Relaxed);
        counters(
            encoder,
            "dns_do_requests",
            "Counter of DNS requests with DO bit set per zone.",
            &[(self.base(), dnssec_ok)],
        )?;
        let durations: Vec<(Labels, HistogramSample)> = self
            .metrics
            .duration_by_type()
            .into_iter()
            .map(|(qtype, sample)| (self.with(&[("type", qtype)]), sample))
            .collect();
        histograms(
            encoder,
            "dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took per zone.",
            &durations,
        )?;
        let sizes =
            |samples: Vec<(&'static str, HistogramSample)>| -> Vec<(Labels, HistogramSample)> {
                samples
                    .into_iter()
                    .map(|(proto, sample)| (self.with(&[("proto", proto)]), sample))
                    .collect()
            };
        histograms(
            encoder,
            "dns_request_size_bytes",
            "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.",
            &sizes(self.metrics.request_sizes()),
        )?;
        histograms(
            encoder,
            "dns_response_size_bytes",
            "Size of the returned response in bytes.",
            &sizes(self.metrics.response_sizes()),
        )
    }

    fn encode_cache(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let cache_labels = |extra: &[(&'static str, &str)]| {
            let mut labels = vec![
                ("server", self.server.clone()),
                ("zones", ".".to_owned()),
                ("view", String::new()),
            ];
            labels.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
            labels
        };
        let (success, denial) = (load(&m.cache_hits_success), load(&m.cache_hits_denial));
        let misses = load(&m.cache_misses);
        counters(
            encoder,
            "cache_hits",
            "The count of cache hits.",
            &[
                (cache_labels(&[("type", "success")]), success),
                (cache_labels(&[("type", "denial")]), denial),
            ],
        )?;
        counters(
            encoder,
            "cache_misses",
            "The count of cache misses. Deprecated, derive misses from cache hits/requests counters.",
            &[(cache_labels(&[]), misses)],
        )?;
        counters(
            encoder,
            "cache_requests",
            "The count of cache requests.",
            &[(cache_labels(&[]), success + denial + misses)],
        )?;
        let (positive, negative) = self.forwarder.as_ref().map_or((0, 0), |f| f.cache_counts());
        let entries = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauges(
            encoder,
            "cache_entries",
            "The number of elements in the cache.",
            &[
                (cache_labels(&[("type", "success")]), entries(positive)),
                (cache_labels(&[("type", "denial")]), entries(negative)),
            ],
        )
    }

    fn encode_forward(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        counters(
            encoder,
            "forward_max_concurrent_rejects",
            "Counter of the number of queries rejected because the concurrent queries were at maximum.",
            &[(vec![], m.forward_rejected.load(Ordering::Relaxed))],
        )?;
        let Some(forwarder) = &self.forwarder else {
            return Ok(());
        };
        let upstreams = forwarder.upstreams();
        let to = |u: &capstan_dns::UpstreamStats| vec![("to", u.addr.to_string())];
        let per = |f: fn(&capstan_dns::UpstreamStats) -> u64| -> Vec<(Labels, u64)> {
            upstreams.iter().map(|u| (to(u), f(u))).collect()
        };
        counters(
            encoder,
            "forward_requests",
            "Counter of requests made per upstream.",
            &per(|u| u.requests),
        )?;
        let responses = super::dns::upstream_responses(&upstreams);
        counters(
            encoder,
            "forward_responses",
            "Counter of responses received per upstream.",
            &responses,
        )?;
        counters(
            encoder,
            "forward_healthcheck_failures",
            "Counter of the number of failed healthchecks.",
            &per(|u| u.probe_failures),
        )?;
        Ok(())
    }
}

impl Collector for CoreDnsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_requests(&mut encoder)?;
        self.encode_cache(&mut encoder)?;
        self.encode_forward(&mut encoder)?;
        counters(
            &mut encoder,
            "panics",
            "A metrics that counts the number of panics.",
            &[(vec![], PANICS.load(Ordering::Relaxed))],
        )?;
        let version = vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("revision", String::new()),
            ("goversion", "capstan (rust)".to_owned()),
        ];
        gauges(
            &mut encoder,
            "build_info",
            "A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built.",
            &[(version, 1)],
        )
    }
}

/// Adds `count` to the sample with `labels`, or appends it.
fn add(samples: &mut Vec<(Labels, u64)>, labels: Labels, count: u64) {
    match samples.iter_mut().find(|(l, _)| *l == labels) {
        Some((_, total)) => *total += count,
        None => samples.push((labels, count)),
    }
}

fn histograms(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, HistogramSample)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, sample) in samples {
        family
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(
                sample.sum_seconds,
                sample.count,
                &sample.buckets,
                None,
            )?;
    }
    Ok(())
}
