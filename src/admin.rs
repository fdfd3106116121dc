//! The admin endpoint: `/` (the live admin page, one embedded HTML file), `/healthz`, `/readyz`,
//! `/metrics` and `/debug/snapshot`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use capstan_proxy::{ListenerState, ListenerStatus};
use capstan_table::{
    Backend, BackendPort, Endpoint, IngressTable, ServicePortTable, Snapshot, SnapshotHandle,
    UpstreamProtocol,
};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::source::{ApiHealth, SourceStatus};
use crate::telemetry::Metrics;

/// The generation whose listeners are in force (the guard is dropped before returning).
fn applied_generation(
    listeners: &watch::Receiver<ListenerStatus>,
) -> Option<capstan_table::Generation> {
    listeners.borrow().applied
}

/// Why the nftables capture is not in force, if it is not.
fn capture_failure(listeners: &watch::Receiver<ListenerStatus>) -> Option<String> {
    listeners
        .borrow()
        .frontends
        .values()
        .find_map(|state| match state {
            ListenerState::CaptureFailed(reason) => Some(reason.clone()),
            _ => None,
        })
}

/// What the admin endpoint reads.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub snapshots: SnapshotHandle,
    pub listeners: watch::Receiver<ListenerStatus>,
    pub sources: SourceStatus,
    pub metrics: Arc<Metrics>,
    /// The DNS forwarder, for upstream health; `None` with DNS off.
    pub dns: Option<Arc<capstan_dns::Forwarder>>,
    /// Kubernetes API reachability; `None` without a Kubernetes source.
    pub kube: Option<Arc<ApiHealth>>,
    /// Each Gateway socket: listening, or why not.
    pub gateway_binds: watch::Receiver<capstan_ingress::GatewayBinds>,
    /// `--gateway-controller`, named in route parent statuses.
    pub gateway_controller: String,
}

/// Serves the admin endpoint on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "admin accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &request)) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, %error, "admin connection ended");
            }
        });
    }
}

fn route(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match request.uri().path() {
        "/" | "/index.html" => page(),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match (
            state.snapshots.load(),
            applied_generation(&state.listeners),
            capture_failure(&state.listeners),
        ) {
            // The table in force is the last one applied, which no longer matches the snapshot.
            (Some(_), Some(_), Some(reason)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: traffic capture failing: {reason}\n"),
            ),
            // Still ready while the API server is away: the last snapshot keeps being served.
            (Some(snapshot), Some(_), None) => text(
                StatusCode::OK,
                &format!(
                    "ready: generation {}{}\n",
                    snapshot.generation,
                    state
                        .kube
                        .as_deref()
                        .map(kube_readiness)
                        .unwrap_or_default()
                ),
            ),
            (None, _, _) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no snapshot yet\n",
            ),
            // Published, but the listeners, capture and kernel rules are not yet in force.
            (Some(_), None, _) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: Service listeners not yet in force\n",
            ),
        },
        "/metrics" => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(state.metrics.encode())))
            .unwrap_or_default(),
        "/debug/snapshot" => {
            let body = serde_json::to_string_pretty(&snapshot_json(state)).unwrap_or_default();
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body + "\n")))
                .unwrap_or_default()
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: / /healthz /readyz /metrics /debug/snapshot\n",
        ),
    }
}

/// The admin page: it polls `/debug/snapshot` and `/metrics`; nothing is loaded from elsewhere
/// (the policy forbids it).
const PAGE: &str = include_str!("admin/page.html");

fn page() -> Response<Full<Bytes>> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; \
             style-src 'unsafe-inline'",
        )
        .body(Full::new(Bytes::from_static(PAGE.as_bytes())))
        .unwrap_or_default()
}

fn kube_readiness(health: &ApiHealth) -> String {
    if health.reachable() {
        return "; kubernetes API reachable".to_owned();
    }
    match health.seconds_since_contact() {
        Some(seconds) => format!(
            "; kubernetes API unreachable, last contact {seconds}s ago: serving the last snapshot"
        ),
        None => "; kubernetes API unreachable".to_owned(),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

/// The current snapshot, listener states and source reports as JSON.
fn snapshot_json(state: &AdminState) -> Value {
    let listeners = state.listeners.borrow().clone();
    let sources: serde_json::Map<String, Value> = state
        .sources
        .lock()
        .map(|s| {
            s.iter()
                .map(|(id, r)| {
                    let report =
                        json!({"files": r.files, "objects": r.objects, "errors": r.errors});
                    (id.to_string(), report)
                })
                .collect()
        })
        .unwrap_or_default();
    let snapshot = state.snapshots.load();
    let dns = dns_json(state.dns.as_deref(), snapshot.as_deref());
    let kubernetes = state.kube.as_deref().map(|health| {
        json!({
            "reachable": health.reachable(),
            "seconds_since_contact": health.seconds_since_contact(),
        })
    });
    let Some(snapshot) = snapshot else {
        return json!({"generation": null, "services": [], "sources": sources, "dns": dns, "ingress": null, "kubernetes": kubernetes});
    };
    json!({
        "kubernetes": kubernetes,
        "generation": snapshot.generation.0,
        "services": services_json(&snapshot, &listeners),
        "problems": snapshot.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "sources": sources,
        "dns": dns,
        "ingress": ingress_json(&snapshot.ingress),
        "gateway": gateway_json(state, &snapshot.gateway),
    })
}

/// Gateway sockets (bound or why not) with their listeners, and every Gateway API object's
/// status as it would be written to the cluster.
fn gateway_json(state: &AdminState, table: &capstan_table::GatewayTable) -> Value {
    let binds = state.gateway_binds.borrow().clone();
    let sockets: Vec<Value> = table
        .sockets
        .iter()
        .map(|(addr, socket)| {
            let bound = match binds.get(addr) {
                Some(Ok(())) => json!("listening"),
                Some(Err(error)) => json!(format!("not bound: {error}")),
                None => json!("pending"),
            };
            json!({
                "address": addr.to_string(),
                "tls": socket.tls,
                "state": bound,
                "listeners": socket.listeners.iter().map(|l| json!({
                    "gateway": &*l.gateway,
                    "name": &*l.name,
                    "hostname": l.hostname.as_deref(),
                    "certificate": l.certificate.as_ref().map(|c| &*c.source),
                    "rules": l.routes.all().count(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "sockets": sockets,
        "status": crate::gateway_status::statuses_json(table, &state.gateway_controller),
    })
}

/// Every route (host, path, backend, endpoints eligible) and every TLS host with the source of
/// its certificate.
fn ingress_json(table: &IngressTable) -> Value {
    let mut routes: Vec<Value> = table
        .routes()
        .map(|route| {
            let Backend::Service { service, port } = &route.backend;
            let port = match port {
                BackendPort::Number(n) => n.to_string(),
                BackendPort::Name(name) => name.to_string(),
            };
            json!({
                "ingress": &*route.ingress,
                "host": &*route.host,
                "path": &*route.path,
                "backend": format!("{service}:{port}"),
                "protocol": match (route.protocol, route.tls.is_some()) {
                    (UpstreamProtocol::Http1, false) => "http/1.1",
                    (UpstreamProtocol::Http2, false) => "h2c",
                    (UpstreamProtocol::Http1, true) => "http/1.1 over TLS",
                    (UpstreamProtocol::Http2, true) => "h2 over TLS",
                },
                "upstream_tls": route.tls.as_deref().map(upstream_tls_json),
                "basic_auth": route.basic_auth.as_deref().map(|auth| json!({
                    "users": auth.users.users.len(),
                    "source": &*auth.users.source,
                    "realm": &*auth.realm,
                })),
                "unusable": route.unusable,
                "endpoints": route.upstream.as_ref().map_or(0, |u| u.internal.endpoints.len()),
                "policy": route_policy_json(&route.policy),
            })
        })
        .collect();
    routes.sort_by_key(|r| (r["host"].to_string(), r["path"].to_string()));
    let tls =
        |hosts: &std::collections::HashMap<Box<str>, Option<capstan_table::TlsCertificate>>,
         prefix: &str| {
            hosts
                .iter()
                .map(|(host, cert)| {
                    json!({
                        "host": format!("{prefix}{host}"),
                        "certificate": cert.as_ref().map_or("default", |c| &*c.source),
                    })
                })
                .collect::<Vec<_>>()
        };
    let mut tls_hosts = tls(&table.tls_hosts, "");
    tls_hosts.extend(tls(&table.tls_wildcards, "*."));
    tls_hosts.sort_by_key(|h| h["host"].to_string());
    json!({
        "routes": routes,
        "tls": tls_hosts,
        "default_certificate": table.default_certificate.as_ref().map(|c| &*c.source),
    })
}

/// Zones and name counts from the snapshot; upstream health and cache size from the forwarder.
fn dns_json(forwarder: Option<&capstan_dns::Forwarder>, snapshot: Option<&Snapshot>) -> Value {
    let Some(forwarder) = forwarder else {
        return Value::Null;
    };
    let upstreams: Vec<Value> = forwarder
        .upstreams()
        .iter()
        .map(|u| {
            json!({
                "addr": u.addr.to_string(),
                "healthy": u.healthy,
                "looping": u.looping,
                "requests": u.requests,
                "failures": u.failures,
            })
        })
        .collect();
    json!({
        "zones": snapshot.map(|s| s.dns.zones.iter().map(|z| z.name.to_string()).collect::<Vec<_>>()),
        "names": snapshot.map(|s| s.dns.names.len()),
        "upstreams": upstreams,
        "cache_entries": forwarder.cache_len(),
    })
}

fn services_json(snapshot: &Snapshot, listeners: &ListenerStatus) -> Vec<Value> {
    let now = capstan_proxy::now_ms();
    snapshot
        .proxy
        .ports
        .values()
        .map(|port| port_json(port, listeners, now))
        .collect()
}

fn port_json(port: &ServicePortTable, listeners: &ListenerStatus, now: u64) -> Value {
    let frontends: Vec<Value> = port
        .frontends
        .iter()
        .map(|(frontend, scope)| {
            let listener = match listeners.frontends.get(frontend) {
                Some(ListenerState::Listening | ListenerState::Redirected(_)) => {
                    "listening".to_owned()
                }
                Some(ListenerState::Kernel) => "kernel".to_owned(),
                Some(ListenerState::Refusing) => "refusing: no endpoints".to_owned(),
                Some(ListenerState::CaptureFailed(reason)) => format!("capture failed: {reason}"),
                Some(ListenerState::BindFailed(reason)) => format!("bind failed: {reason}"),
                Some(ListenerState::Unsupported(reason)) => format!("unsupported: {reason}"),
                None => "pending".to_owned(),
            };
            // Which data path carries the frontend: nftables DNAT, or Capstan's own proxy.
            let datapath = match listeners.frontends.get(frontend) {
                Some(ListenerState::Kernel) => "kernel",
                _ => "userspace",
            };
            let mut json = json!({"address": frontend.addr.to_string(), "scope": scope.as_str(), "listener": listener, "datapath": datapath});
            if let Some(ListenerState::Redirected(redirect)) = listeners.frontends.get(frontend) {
                json["redirect"] = json!({"port": redirect.port, "local_port": redirect.local_port});
            }
            json
        })
        .collect();
    let eligible = |set: &[Arc<Endpoint>], e: &Endpoint| set.iter().any(|x| x.addr == e.addr);
    let endpoints: Vec<Value> = port
        .endpoints
        .iter()
        .map(|e| {
            json!({
                "address": e.addr.to_string(),
                "ready": e.conditions.ready,
                "serving": e.conditions.serving,
                "terminating": e.conditions.terminating,
                "node_name": e.node_name.as_deref(),
                "zone": e.zone.as_deref(),
                "eligible_internal": eligible(&port.internal.endpoints, e),
                "eligible_external": eligible(&port.external.endpoints, e),
                "ejected": e.stats.is_ejected(now),
                "health_check_failing": e.stats.unhealthy.load(Ordering::Relaxed),
                "outlier_ejections": e.stats.outlier_ejections.load(Ordering::Relaxed),
                "active_connections": e.stats.in_flight.load(Ordering::Relaxed),
                "chosen": e.stats.chosen.load(Ordering::Relaxed),
                "connect_errors": e.stats.connect_errors.load(Ordering::Relaxed),
            })
        })
        .collect();
    let c = &port.state.counters;
    json!({
        "service": port.key.service.to_string(),
        "port": &*port.key.port_name,
        "protocol": port.key.protocol.as_str(),
        "policy": port.policy.as_str(),
        "session_affinity_seconds": port.affinity.map(|d| d.as_secs()),
        "connect_timeout_ms": port.timeouts.connect.as_millis() as u64,
        "idle_timeout_ms": port.timeouts.idle.as_millis() as u64,
        "health_check": port.health.as_deref().map(|h| json!({
            "path": &*h.path,
            "interval_ms": h.interval.as_millis() as u64,
            "timeout_ms": h.timeout.as_millis() as u64,
            "healthy_threshold": h.healthy_threshold,
            "unhealthy_threshold": h.unhealthy_threshold,
            "statuses": h.statuses.iter().map(|(l, h)| format!("{l}-{h}")).collect::<Vec<_>>(),
            "scheme": if h.tls { "https" } else { "http" },
            "host": h.host.as_deref(),
        })),
        "outlier": json!({
            "consecutive_5xx": port.outlier.consecutive_5xx,
            "consecutive_gateway_errors": port.outlier.consecutive_gateway_errors,
            "max_ejection_percent": port.outlier.max_ejection_percent,
        }),
        "max_requests_per_endpoint": port.max_requests_per_endpoint,
        "max_connections_per_endpoint": port.max_connections_per_endpoint,
        "rejected_overloaded": c.overloaded.load(Ordering::Relaxed),
        "frontends": frontends,
        "endpoints": endpoints,
        "connections": c.connections.load(Ordering::Relaxed),
        "active_connections": c.active.load(Ordering::Relaxed),
        "rejected_no_endpoints": c.no_endpoints.load(Ordering::Relaxed),
        "rejected_connect_failed": c.upstream_failures.load(Ordering::Relaxed),
    })
}

/// A route's policy in force, every value explicit (defaults included).
fn route_policy_json(policy: &capstan_table::RoutePolicy) -> Value {
    let retry = &policy.retry;
    let on = &retry.on;
    let mut conditions: Vec<String> = [
        (on.connect_failure, "connect-failure"),
        (on.refused_stream, "refused-stream"),
        (on.reset, "reset"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, name)| name.to_owned())
    .collect();
    conditions.extend(on.statuses.iter().map(u16::to_string));
    conditions.extend(on.grpc_statuses.iter().map(|c| format!("grpc-{c}")));
    let limit = |l: &Option<capstan_table::RateLimit>| {
        l.map(|l| json!({"requests": l.requests, "period_ms": l.period.as_millis() as u64, "burst": l.burst}))
    };
    json!({
        "retry": {
            "retries": retry.retries,
            "on": conditions,
            "per_try_timeout_ms": retry.per_try_timeout.map(|d| d.as_millis() as u64),
            "backoff_ms": [retry.backoff_base.as_millis() as u64, retry.backoff_max.as_millis() as u64],
            "budget_ratio": retry.budget_ratio,
            "budget_min_per_second": retry.budget_min_per_second,
            "body_limit": retry.body_limit,
            "non_idempotent": retry.non_idempotent,
        },
        "rate_limit": limit(&policy.rate_limit),
        "client_rate_limit": limit(&policy.client_rate_limit),
        "max_body_bytes": policy.max_body_bytes,
        "hsts": policy.hsts.map(|h| h.value()),
        "cors": policy.cors.as_ref().map(|c| json!({
            "origins": if c.origins.is_empty() { vec!["*".to_owned()] } else { c.origins.iter().map(ToString::to_string).collect() },
            "methods": &*c.methods,
            "headers": &*c.headers,
            "credentials": c.credentials,
            "max_age_seconds": c.max_age.as_secs(),
        })),
        "sticky_cookie": policy.sticky.as_ref().map(|s| json!({"name": &*s.name, "max_age_seconds": s.max_age.map(|d| d.as_secs())})),
        "allow_source_ranges": policy.allow_sources.as_ref().map(|r| r.iter().map(ToString::to_string).collect::<Vec<_>>()),
    })
}

/// How a route speaks TLS to its endpoints, for `/debug/snapshot`.
fn upstream_tls_json(tls: &capstan_table::UpstreamTls) -> serde_json::Value {
    let verify = match &tls.verify {
        capstan_table::UpstreamVerify::Roots(roots) => format!("{} CA certificates", roots.len()),
        capstan_table::UpstreamVerify::System => "system CA certificates".into(),
        capstan_table::UpstreamVerify::Off => "off".into(),
    };
    json!({
        "server_name": &*tls.server_name,
        "verify": verify,
        "source": tls.source.as_deref(),
        "client_certificate": tls.client_certificate.as_ref().map(|c| &*c.source),
    })
}
