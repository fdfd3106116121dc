//! kube-proxy's metrics under its own names (pkg/proxy/metrics/metrics.go), and the process and
//! API-client series its Grafana dashboard (kubernetes-mixin's "Kubernetes / Proxy") reads:
//! `process_*`, `rest_client_*` (client-go's names, from a layer on the kube client) and
//! `go_goroutines` (Capstan's tokio tasks: the same panel's question, how much concurrent work).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{Labels, encode_gauges};

/// kube-proxy's sync metrics, under its names.
#[derive(Debug)]
pub struct KubeProxyMetrics {
    /// `kubeproxy_sync_proxy_rules_duration_seconds`: each sync of the listeners, capture and
    /// kernel rules with a snapshot.
    pub sync_seconds: Histogram,
    /// `kubeproxy_sync_full_proxy_rules_duration_seconds` and `…_partial_…`: the same, split by
    /// whether the kernel table was rewritten whole.
    pub full_sync_seconds: Histogram,
    pub partial_sync_seconds: Histogram,
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds`: when the last one finished.
    pub last_sync: Gauge<f64, AtomicU64>,
    /// `kubeproxy_network_programming_duration_seconds`: from a change reaching Capstan to the
    /// rules serving it being in force.
    pub programming_seconds: Histogram,
    /// `kubeproxy_sync_proxy_rules_{endpoint,service}_changes_{total,pending}`: EndpointSlice and
    /// Service changes received, and those not yet in a published snapshot.
    pub endpoint_changes: Counter,
    pub endpoint_changes_pending: Gauge,
    pub service_changes: Counter,
    pub service_changes_pending: Gauge,
    /// `kubeproxy_sync_proxy_rules_nftables_sync_failures_total`: syncs whose rules could not be
    /// applied (retried).
    pub sync_failures: Counter,
}

/// client-go's `rest_client_*` metrics, fed by [`ApiClientLayer`].
#[derive(Debug, Clone)]
pub struct RestClientMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
}

impl Default for RestClientMetrics {
    fn default() -> Self {
        // client-go's buckets: 5 ms to 60 s.
        fn histogram() -> Histogram {
            Histogram::new([
                0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0,
            ])
        }
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(histogram),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub code: String,
    pub method: String,
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub verb: String,
    pub url: String,
}

// === impl KubeProxyMetrics ===

impl KubeProxyMetrics {
    /// The metrics, registered in `registry` (prefixed `kubeproxy`).
    pub fn register(registry: &mut Registry) -> Self {
        // kube-proxy's buckets: exponential from 1 ms, doubling, 15 of them (20 for programming).
        let sync = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let metrics = Self {
            sync_seconds: sync(),
            full_sync_seconds: sync(),
            partial_sync_seconds: sync(),
            last_sync: Gauge::default(),
            programming_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            endpoint_changes: Counter::default(),
            endpoint_changes_pending: Gauge::default(),
            service_changes: Counter::default(),
            service_changes_pending: Gauge::default(),
            sync_failures: Counter::default(),
        };
        let m = &metrics;
        let histograms = [
            (
                "sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                &m.sync_seconds,
            ),
            (
                "sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                &m.full_sync_seconds,
            ),
            (
                "sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                &m.partial_sync_seconds,
            ),
            (
                "network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                &m.programming_seconds,
            ),
        ];
        for (name, help, histogram) in histograms {
            registry.register(name, help, histogram.clone());
        }
        registry.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync.clone(),
        );
        let counters = [
            (
                "sync_proxy_rules_endpoint_changes",
                "Cumulative proxy rules Endpoint changes",
                &m.endpoint_changes,
            ),
            (
                "sync_proxy_rules_service_changes",
                "Cumulative proxy rules Service changes",
                &m.service_changes,
            ),
            (
                "sync_proxy_rules_nftables_sync_failures",
                "Cumulative proxy nftables sync failures",
                &m.sync_failures,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        let gauges = [
            (
                "sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
                &m.endpoint_changes_pending,
            ),
            (
                "sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
                &m.service_changes_pending,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        metrics
    }

    /// Counts received changes: `endpoints` EndpointSlice and `services` Service objects.
    pub fn changes_received(&self, endpoints: u64, services: u64) {
        self.endpoint_changes.inc_by(endpoints);
        self.service_changes.inc_by(services);
        self.endpoint_changes_pending
            .inc_by(i64::try_from(endpoints).unwrap_or(i64::MAX));
        self.service_changes_pending
            .inc_by(i64::try_from(services).unwrap_or(i64::MAX));
    }

    /// Every change received is in the snapshot just published.
    pub fn changes_published(&self) {
        self.endpoint_changes_pending.set(0);
        self.service_changes_pending.set(0);
    }
}

// === impl RestClientMetrics ===

impl RestClientMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rest_client_requests",
            "Number of HTTP requests, partitioned by status code, method, and host.",
            self.requests.clone(),
        );
        registry.register(
            "rest_client_request_duration_seconds",
            "Request latency in seconds. Broken down by verb, and URL.",
            self.duration.clone(),
        );
    }

    fn observe(
        &self,
        host: &str,
        method: &http::Method,
        uri: &http::Uri,
        code: &str,
        elapsed: f64,
    ) {
        let host = uri
            .authority()
            .map_or_else(|| host.to_owned(), ToString::to_string);
        self.requests
            .get_or_create(&RequestLabels {
                code: code.to_owned(),
                method: method.to_string(),
                host: host.clone(),
            })
            .inc();
        // client-go's `url` is the request URL without its query; a watch's duration is its whole
        // life, as client-go reports it.
        let url = format!("https://{host}{}", uri.path());
        self.duration
            .get_or_create(&DurationLabels {
                verb: method.to_string(),
                url,
            })
            .observe(elapsed);
    }
}

/// A tower layer on the kube client's HTTP stack that feeds [`RestClientMetrics`]; `host` is
/// the API server's (requests reach this layer with a path only).
#[derive(Clone, Debug)]
pub struct ApiClientLayer {
    pub metrics: Arc<RestClientMetrics>,
    pub host: Arc<str>,
}

/// The service [`ApiClientLayer`] wraps.
#[derive(Clone, Debug)]
pub struct ApiClientService<S> {
    inner: S,
    layer: ApiClientLayer,
}

impl<S> tower::Layer<S> for ApiClientLayer {
    type Service = ApiClientService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiClientService {
            inner,
            layer: self.clone(),
        }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for ApiClientService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (method, uri) = (request.method().clone(), request.uri().clone());
        let layer = self.layer.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            let code = match &result {
                Ok(response) => response.status().as_u16().to_string(),
                Err(_) => "<error>".to_owned(),
            };
            let elapsed = started.elapsed().as_secs_f64();
            layer
                .metrics
                .observe(&layer.host, &method, &uri, &code, elapsed);
            result
        })
    }
}

/// `process_*` (Prometheus's process collector, from `/proc/self`) and `go_goroutines`.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// Clock ticks per second of `/proc/self/stat` times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;
/// The proxy workers' runtimes, whose tasks `go_goroutines` counts with the main runtime's.
pub static WORKER_RUNTIMES: std::sync::OnceLock<Vec<tokio::runtime::Handle>> =
    std::sync::OnceLock::new();

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name (which may hold spaces): state is field 3.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let field = |n: usize| -> f64 {
            fields
                .get(n - 3)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let cpu_seconds = (field(14) + field(15)) / TICKS_PER_SECOND;
        let rss = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .unwrap_or(0)
            * 1024;
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
        let boot = std::fs::read_to_string("/proc/stat")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let start = boot + field(22) / TICKS_PER_SECOND;
        let none: Labels = Vec::new();
        encode_float_counter(
            &mut encoder,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            cpu_seconds,
        )?;
        encode_gauges(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            &[(none.clone(), rss)],
        )?;
        encode_gauges(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            &[(none.clone(), i64::try_from(open_fds).unwrap_or(i64::MAX))],
        )?;
        encode_gauges(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            &[(none.clone(), start as i64)],
        )?;
        let tasks = tokio::runtime::Handle::try_current()
            .into_iter()
            .chain(WORKER_RUNTIMES.get().into_iter().flatten().cloned())
            .map(|h| h.metrics().num_alive_tasks())
            .sum::<usize>();
        let tasks = i64::try_from(tasks).unwrap_or(i64::MAX);
        encode_gauges(
            &mut encoder,
            "go_goroutines",
            "Tokio tasks alive in Capstan (it has no goroutines; kube-proxy's dashboard reads this name).",
            &[(none, tasks)],
        )?;
        Ok(())
    }
}

fn encode_float_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    let family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    prometheus_client::metrics::counter::ConstCounter::new(value).encode(family)
}
