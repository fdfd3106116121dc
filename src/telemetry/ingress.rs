//! Encodes the ingress plane's counters at scrape time: per route from the current snapshot's
//! [`capstan_table::RouteStats`], and the plane-wide [`IngressMetrics`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use capstan_ingress::IngressMetrics;
use capstan_table::{Backend, STATUS_CLASSES, SnapshotHandle};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::{Labels, encode_counters as counters, encode_gauges};

/// Reads the routes of the current snapshot and the plane's own counters.
#[derive(Debug, Default)]
pub struct IngressCollector {
    pub snapshots: SnapshotHandle,
    pub metrics: Arc<IngressMetrics>,
}

impl Collector for IngressCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut requests: Vec<(Labels, u64)> = Vec::new();
        let mut errors: Vec<(Labels, u64)> = Vec::new();
        let mut bytes: Vec<(Labels, u64)> = Vec::new();
        let mut decisions: Vec<(Labels, u64)> = Vec::new();
        let mut durations = Vec::new();
        if let Some(snapshot) = self.snapshots.load() {
            // A Gateway rule serves under each of its hostnames: each route once.
            let mut seen = std::collections::HashSet::new();
            let gateway = snapshot
                .gateway
                .routes()
                .filter(|r| seen.insert(Arc::as_ptr(r)));
            for route in snapshot.ingress.routes().chain(gateway) {
                let Backend::Service { service, .. } = &route.backend;
                let labels: Labels = vec![
                    ("ingress", route.ingress.to_string()),
                    ("host", route.host.to_string()),
                    ("path", route.path.to_string()),
                    ("service", service.to_string()),
                ];
                let stats = &route.stats;
                for (class, counter) in STATUS_CLASSES.into_iter().zip(&stats.responses) {
                    let n = load(counter);
                    if n > 0 {
                        requests.push((with(&labels, "code", class), n));
                    }
                }
                for (kind, counter) in [
                    ("connect_or_protocol", &stats.upstream_errors),
                    ("timeout", &stats.upstream_timeouts),
                    ("no_endpoints", &stats.no_endpoints),
                ] {
                    errors.push((with(&labels, "kind", kind), load(counter)));
                }
                for (direction, counter) in [
                    ("from_client", &stats.bytes_from_client),
                    ("to_client", &stats.bytes_to_client),
                ] {
                    bytes.push((with(&labels, "direction", direction), load(counter)));
                }
                let state = &route.state;
                for (decision, counter) in [
                    ("retried", &state.retries),
                    ("retry_budget_exhausted", &state.budget_exhausted),
                    ("rate_limited", &state.rate_limited),
                    ("body_too_large", &state.body_too_large),
                    ("source_denied", &state.source_denied),
                    ("unauthorized", &state.unauthorized),
                    ("circuit_open", &state.overloaded),
                    ("mirror_skipped", &state.mirror_skipped),
                ] {
                    decisions.push((with(&labels, "decision", decision), load(counter)));
                }
                durations.push((labels, stats.duration.sample()));
            }
        }
        let m = &self.metrics;
        for (class, n) in m.unrouted() {
            if n > 0 {
                requests.push((
                    vec![
                        ("ingress", String::new()),
                        ("host", String::new()),
                        ("path", String::new()),
                        ("service", String::new()),
                        ("code", class.to_owned()),
                    ],
                    n,
                ));
            }
        }
        counters(
            &mut encoder,
            "ingress_requests",
            "Ingress responses by route and status class (empty route labels: no route matched, redirects, bad requests)",
            &requests,
        )?;
        counters(
            &mut encoder,
            "ingress_upstream_errors",
            "Ingress requests Capstan answered 502, 504 or 503 itself, by route and kind",
            &errors,
        )?;
        counters(
            &mut encoder,
            "ingress_policy_decisions",
            "Ingress route policy decisions: retries sent, retries refused by the budget, requests answered 429, 413, 403, or 503 with every endpoint at its request limit",
            &decisions,
        )?;
        counters(
            &mut encoder,
            "ingress_bytes",
            "Ingress body bytes by route and direction",
            &bytes,
        )?;
        let mut family = encoder.encode_descriptor(
            "ingress_request_duration_seconds",
            "From a request's arrival to the end of its response body, by route",
            None,
            MetricType::Histogram,
        )?;
        for (labels, sample) in &durations {
            family
                .encode_family(labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sample.sum_seconds,
                    sample.count,
                    &sample.buckets,
                    None,
                )?;
        }
        let faults: Vec<(Labels, u64)> = m
            .faults()
            .map(|(fault, n)| {
                let blame = match fault.blame() {
                    capstan_ingress::Blame::Client => "client",
                    capstan_ingress::Blame::Configuration => "configuration",
                    capstan_ingress::Blame::Backend => "backend",
                };
                let labels = vec![
                    ("fault", fault.as_str().to_owned()),
                    ("code", fault.status().as_u16().to_string()),
                    ("blame", blame.to_owned()),
                ];
                (labels, n)
            })
            .collect();
        counters(
            &mut encoder,
            "ingress_faults",
            "Requests Capstan answered itself before any upstream (no route, no backend, no endpoint...), by fault, status and whose fault it was",
            &faults,
        )?;
        let refused: Vec<(Labels, u64)> = m
            .refusals()
            .map(|(reason, n)| (vec![("reason", reason.to_owned())], n))
            .collect();
        counters(
            &mut encoder,
            "ingress_refused",
            "Requests or connections refused before routing (400/431 answered by the server, TLS handshake failures, header timeouts)",
            &refused,
        )?;
        counters(
            &mut encoder,
            "ingress_connections",
            "Ingress connections accepted, by listener",
            &[
                (vec![("listener", "http".into())], load(&m.connections[0])),
                (vec![("listener", "https".into())], load(&m.connections[1])),
            ],
        )?;
        let plain = [
            (
                "ingress_retries",
                "Attempts sent again under a route's retry policy (every route)",
                &m.retries,
            ),
            (
                "ingress_access_log_dropped",
                "Access log lines dropped because the writer fell behind",
                &m.access_log_dropped,
            ),
        ];
        for (name, help, counter) in plain {
            counters(&mut encoder, name, help, &[(Vec::new(), load(counter))])?;
        }
        let gauge = |c: &AtomicU64| i64::try_from(load(c)).unwrap_or(i64::MAX);
        encode_gauges(
            &mut encoder,
            "ingress_active_connections",
            "Ingress connections currently open",
            &[(Vec::new(), gauge(&m.active_connections))],
        )?;
        encode_gauges(
            &mut encoder,
            "ingress_upgraded_connections",
            "Upgraded (WebSocket) connections currently relayed",
            &[(Vec::new(), gauge(&m.upgraded))],
        )?;
        Ok(())
    }
}

fn with(labels: &Labels, key: &'static str, value: &str) -> Labels {
    let mut labels = labels.clone();
    labels.push((key, value.to_owned()));
    labels
}
