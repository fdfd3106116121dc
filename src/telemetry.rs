//! Logs and metrics: the tracing subscriber, the agent's Prometheus registry, and a collector that
//! reads the proxy's lock-free counters from the current snapshot at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use capstan_proxy::{ListenerState, ListenerStatus};
use capstan_table::SnapshotHandle;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub mod coredns;
mod dns;
mod ingress;
pub mod kube_proxy;

pub use dns::DnsCollector;
pub use ingress::IngressCollector;
pub use kube_proxy::{KubeProxyMetrics, RestClientMetrics};

/// The agent's metrics. Counters the data plane updates per connection are not here: they are
/// atomics inside the snapshot, read by [`ProxyCollector`].
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub snapshot_generation: Gauge,
    pub compile_seconds: Histogram,
    /// From a change reaching the publisher to the snapshot holding it being served
    /// (kube-proxy's `network_programming_duration_seconds`, measured from arrival).
    pub sync_seconds: Histogram,
    pub catalog_problems: Gauge,
    pub reloads: Family<ReloadLabels, Counter>,
    pub invalid_files: Family<SourceLabels, Gauge>,
    /// Kubernetes objects whose last version was rejected (the previous one is in force).
    pub invalid_objects: Family<SourceLabels, Gauge>,
    /// Kubernetes watch events by resource and kind (list, apply, delete, invalid, error).
    pub kube_events: Family<KubeEventLabels, Counter>,
    /// 1 while the Kubernetes API server answers, 0 while it does not.
    pub kube_api_up: Gauge,
    /// kube-proxy's own metric names (`kubeproxy_*`), so its dashboards and alerts keep working.
    pub kube_proxy: KubeProxyMetrics,
    kube_proxy_registry: Registry,
    /// client-go's `rest_client_*`, fed by the kube client's [`kube_proxy::ApiClientLayer`].
    pub rest_client: Arc<RestClientMetrics>,
    /// Unprefixed: `process_*`, `go_goroutines`, `rest_client_*`.
    process_registry: Registry,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeEventLabels {
    pub resource: &'static str,
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub source: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// Encodes the proxy's per-port and per-endpoint counters from the current snapshot.
#[derive(Debug)]
pub struct ProxyCollector {
    pub snapshots: SnapshotHandle,
    pub listeners: watch::Receiver<ListenerStatus>,
    /// Per-endpoint series for at most this many endpoints (`--endpoint-metrics`).
    pub endpoint_series: usize,
}

/// Installs the global tracing subscriber: `filter` uses `RUST_LOG` syntax.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

// === impl Metrics ===

impl Metrics {
    pub fn new(collector: ProxyCollector, dns: DnsCollector, ingress: IngressCollector) -> Self {
        let mut registry = Registry::with_prefix("capstan");
        let snapshot_generation = Gauge::default();
        registry.register(
            "snapshot_generation",
            "Generation of the snapshot being served",
            snapshot_generation.clone(),
        );
        let compile_seconds = Histogram::new(exponential_buckets(0.0001, 4.0, 10));
        registry.register(
            "compile_duration_seconds",
            "Time to compile the catalog into a snapshot",
            compile_seconds.clone(),
        );
        let sync_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "network_programming_duration_seconds",
            "From a change reaching Capstan (file event, watch event) to the snapshot holding it being served",
            sync_seconds.clone(),
        );
        let catalog_problems = Gauge::default();
        registry.register(
            "catalog_problems",
            "Objects the last compile could not honour (see /debug/snapshot)",
            catalog_problems.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "source_reloads",
            "Source loads by result (success, failure)",
            reloads.clone(),
        );
        let invalid_files = Family::default();
        registry.register(
            "source_invalid_files",
            "Files whose last read failed; their previous content is still in force",
            invalid_files.clone(),
        );
        let invalid_objects = Family::default();
        registry.register(
            "source_invalid_objects",
            "Kubernetes objects whose last version was rejected; the previous one is still in force",
            invalid_objects.clone(),
        );
        let kube_events = Family::default();
        registry.register(
            "kubernetes_watch_events",
            "Kubernetes watch events by resource and kind (list, apply, delete, invalid, error)",
            kube_events.clone(),
        );
        let kube_api_up = Gauge::default();
        registry.register(
            "kubernetes_api_up",
            "1 while the Kubernetes API server answers; while 0 the last snapshot is served",
            kube_api_up.clone(),
        );
        let mut kube_proxy_registry = Registry::with_prefix("kubeproxy");
        let kube_proxy = KubeProxyMetrics::register(&mut kube_proxy_registry);
        let mut process_registry = Registry::default();
        let rest_client = Arc::new(RestClientMetrics::default());
        rest_client.register(&mut process_registry);
        process_registry.register_collector(Box::new(kube_proxy::ProcessCollector));
        registry.register_collector(Box::new(collector));
        registry.register_collector(Box::new(dns));
        registry.register_collector(Box::new(ingress));
        Self {
            registry,
            snapshot_generation,
            compile_seconds,
            sync_seconds,
            catalog_problems,
            reloads,
            invalid_files,
            invalid_objects,
            kube_events,
            kube_api_up,
            kube_proxy,
            kube_proxy_registry,
            rest_client,
            process_registry,
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).is_err()
            || prometheus_client::encoding::text::encode_registry(
                &mut out,
                &self.kube_proxy_registry,
            )
            .is_err()
            || prometheus_client::encoding::text::encode(&mut out, &self.process_registry).is_err()
        {
            out.clear();
        }
        out
    }
}

// === impl ProxyCollector ===

pub(crate) type Labels = Vec<(&'static str, String)>;

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let listeners = self.listeners.borrow().clone();
        let mut states: [(&str, i64); 7] = [
            ("listening", 0),
            ("redirected", 0),
            ("capture_failed", 0),
            ("bind_failed", 0),
            ("unsupported", 0),
            ("kernel", 0),
            ("refusing", 0),
        ];
        for state in listeners.frontends.values() {
            let index = match state {
                ListenerState::Listening => 0,
                ListenerState::Redirected(_) => 1,
                ListenerState::CaptureFailed(_) => 2,
                ListenerState::BindFailed(_) => 3,
                ListenerState::Unsupported(_) => 4,
                ListenerState::Kernel => 5,
                ListenerState::Refusing => 6,
            };
            states[index].1 += 1;
        }
        let gauges: Vec<(Labels, i64)> = states
            .iter()
            .map(|(state, n)| (vec![("state", (*state).to_owned())], *n))
            .collect();
        encode_gauges(
            &mut encoder,
            "proxy_listeners",
            "Frontend listeners by state",
            &gauges,
        )?;
        let sources: Vec<(Labels, u64)> = capstan_proxy::source::attempts()
            .iter()
            .map(|(source, n)| (vec![("source", (*source).to_owned())], *n))
            .collect();
        encode_counters(
            &mut encoder,
            "proxy_upstream_sources",
            "Upstream connect attempts with --preserve-source-ip, by the source address used",
            &sources,
        )?;

        let Some(snapshot) = self.snapshots.load() else {
            return Ok(());
        };
        let mut ports = Families::default();
        let mut endpoint_budget = self.endpoint_series;
        let mut omitted = 0u64;
        for port in snapshot.proxy.ports.values() {
            let labels: Labels = vec![
                ("service", port.key.service.to_string()),
                ("port", port.key.port_name.to_string()),
                ("protocol", port.key.protocol.to_string()),
            ];
            let c = &port.state.counters;
            ports.counter("proxy_connections", &labels, &[], &c.connections);
            ports.gauge("proxy_active_connections", &labels, &[], &c.active);
            ports.counter(
                "proxy_bytes",
                &labels,
                &[("direction", "from_client")],
                &c.bytes_from_client,
            );
            ports.counter(
                "proxy_bytes",
                &labels,
                &[("direction", "to_client")],
                &c.bytes_to_client,
            );
            ports.counter(
                "proxy_rejected_connections",
                &labels,
                &[("reason", "no_endpoints"), ("blame", "upstream")],
                &c.no_endpoints,
            );
            ports.counter(
                "proxy_rejected_connections",
                &labels,
                &[("reason", "source_range"), ("blame", "client")],
                &c.source_denied,
            );
            ports.counter(
                "proxy_rejected_connections",
                &labels,
                &[("reason", "connect_failed"), ("blame", "upstream")],
                &c.upstream_failures,
            );
            ports.counter(
                "proxy_rejected_connections",
                &labels,
                &[("reason", "overloaded"), ("blame", "upstream")],
                &c.overloaded,
            );
            ports.counter("proxy_idle_timeouts", &labels, &[], &c.idle_timeouts);
            let now = capstan_proxy::now_ms();
            for endpoint in port.endpoints.iter() {
                if endpoint_budget == 0 {
                    omitted += 1;
                    continue;
                }
                endpoint_budget -= 1;
                let mut labels = labels.clone();
                labels.push(("endpoint", endpoint.addr.to_string()));
                let s = &endpoint.stats;
                ports.counter("proxy_endpoint_choices", &labels, &[], &s.chosen);
                ports.counter(
                    "proxy_endpoint_connect_errors",
                    &labels,
                    &[],
                    &s.connect_errors,
                );
                ports.gauge(
                    "proxy_endpoint_active_connections",
                    &labels,
                    &[],
                    &s.in_flight,
                );
                let ejected = AtomicU64::new(u64::from(s.is_ejected(now)));
                ports.gauge("proxy_endpoint_ejected", &labels, &[], &ejected);
                ports.counter(
                    "proxy_endpoint_outlier_ejections",
                    &labels,
                    &[],
                    &s.outlier_ejections,
                );
                if port.health.is_some() {
                    let down = AtomicU64::new(u64::from(s.unhealthy.load(Ordering::Relaxed)));
                    ports.gauge("proxy_endpoint_health_check_failing", &labels, &[], &down);
                    ports.counter(
                        "proxy_endpoint_health_transitions",
                        &labels,
                        &[],
                        &s.health_transitions,
                    );
                }
            }
        }
        let omitted = AtomicU64::new(omitted);
        ports.gauge("proxy_endpoint_series_omitted", &Vec::new(), &[], &omitted);
        ports.encode(&mut encoder)
    }
}

/// Samples grouped by metric name, so each family is described once.
#[derive(Default)]
struct Families {
    counters: std::collections::BTreeMap<&'static str, Vec<(Labels, u64)>>,
    gauges: std::collections::BTreeMap<&'static str, Vec<(Labels, i64)>>,
}

impl Families {
    fn counter(
        &mut self,
        name: &'static str,
        labels: &Labels,
        extra: &[(&'static str, &str)],
        v: &AtomicU64,
    ) {
        let labels = with_extra(labels, extra);
        self.counters
            .entry(name)
            .or_default()
            .push((labels, v.load(Ordering::Relaxed)));
    }

    fn gauge(
        &mut self,
        name: &'static str,
        labels: &Labels,
        extra: &[(&'static str, &str)],
        v: &AtomicU64,
    ) {
        let labels = with_extra(labels, extra);
        let value = i64::try_from(v.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        self.gauges.entry(name).or_default().push((labels, value));
    }

    fn encode(self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, samples) in &self.counters {
            encode_counters(encoder, name, help(name), samples)?;
        }
        for (name, samples) in &self.gauges {
            encode_gauges(encoder, name, help(name), samples)?;
        }
        Ok(())
    }
}

/// One counter family; a single unlabelled sample is written without braces.
pub(crate) fn encode_counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    encode_family(encoder, name, help, MetricType::Counter, samples, |v| {
        ConstCounter::new(v)
    })
}

/// One gauge family; a single unlabelled sample is written without braces.
pub(crate) fn encode_gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    encode_family(encoder, name, help, MetricType::Gauge, samples, |v| {
        ConstGauge::new(v)
    })
}

fn encode_family<V: Copy, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[(Labels, V)],
    metric: impl Fn(V) -> M,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    if let [(labels, value)] = samples
        && labels.is_empty()
    {
        return metric(*value).encode(family);
    }
    for (labels, value) in samples {
        metric(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn with_extra(labels: &Labels, extra: &[(&'static str, &str)]) -> Labels {
    let mut labels = labels.clone();
    labels.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    labels
}

fn help(name: &str) -> &'static str {
    match name {
        "proxy_connections" => "Connections accepted per Service port",
        "proxy_active_connections" => "Connections currently relayed per Service port",
        "proxy_bytes" => "Bytes relayed per Service port and direction",
        "proxy_rejected_connections" => "Connections refused with RST, by reason",
        "proxy_idle_timeouts" => "Connections closed by the idle timeout",
        "proxy_endpoint_choices" => "Times an endpoint was chosen for a connection",
        "proxy_endpoint_series_omitted" => {
            "Endpoints without per-endpoint series (past --endpoint-metrics)"
        }
        "proxy_endpoint_connect_errors" => "Failed connection attempts to an endpoint",
        "proxy_endpoint_active_connections" => "Connections currently open to an endpoint",
        "proxy_endpoint_ejected" => "1 while an endpoint is ejected after failed connects",
        _ => "",
    }
}
