//! One request through the ingress: host check → snapshot load → https redirect → route →
//! endpoint choice → upstream request over a pooled connection (one retry on another endpoint
//! when a connect fails and the request is safe to repeat) → streamed response. WebSocket
//! upgrades are relayed byte for byte once both sides have switched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use capstan_proxy::{balance, now_ms};
use capstan_table::{Route, UpstreamProtocol};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use crate::IngressConfig;
use crate::body::{RequestBody, ResponseBody, UpstreamBody};
use crate::completion::{AccessLog, Completion, LogEntry};
use crate::headers::{self, BadRequest, Forwarding, is_idempotent};
use crate::http1;
use crate::metrics::{IngressMetrics, Refusal};
use crate::routing::{Routed, normalize_host, route_host};

/// Endpoints tried per request at most (the first, and one retry after a failed connect).
const MAX_ATTEMPTS: usize = 2;
/// ACME HTTP-01 challenges must reach their solver over plain HTTP (ingress-nginx exempts them
/// from the https redirect too).
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// State shared by every worker.
#[derive(Debug)]
pub(crate) struct Shared {
    pub snapshots: capstan_table::SnapshotHandle,
    pub config: IngressConfig,
    pub metrics: Arc<IngressMetrics>,
    pub access_log: Option<AccessLog>,
    /// The TLS listener's port, for redirects; `None` when there is no TLS listener.
    pub https_port: Option<u16>,
}

/// The request handler of one worker thread, with that thread's upstream connection pools.
#[derive(Debug)]
pub(crate) struct Forwarder {
    shared: Arc<Shared>,
    http1: Client<HttpConnector, RequestBody>,
    h2c: Client<HttpConnector, RequestBody>,
    /// The inline client's settings (its pool is the worker thread's).
    inline: http1::ClientSettings,
}

/// The downstream connection a request arrived on.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    pub forwarding: Forwarding,
}

impl ConnInfo {
    /// `local` is the listener address the connection reached.
    pub(crate) fn new(peer: SocketAddr, local: SocketAddr, tls: bool) -> Self {
        let proto = if tls { "https" } else { "http" };
        Self {
            peer,
            tls,
            forwarding: Forwarding::new(peer.ip(), proto, local.port()),
        }
    }
}

// === impl Forwarder ===

impl Forwarder {
    /// Must be created on the worker thread that uses it: the pools spawn their connection tasks
    /// on the current runtime.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(shared.config.connect_timeout));
        let client = |http2_only: bool| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(shared.config.upstream_idle_timeout)
                .http2_only(http2_only)
                .build(connector.clone())
        };
        let inline = http1::ClientSettings {
            connect_timeout: shared.config.connect_timeout,
            idle_timeout_ms: capstan_table::millis(shared.config.upstream_idle_timeout),
            max_head_bytes: shared.config.max_header_bytes.max(8192),
        };
        // This worker's inline pool closes connections idle too long even when no request comes.
        let sweep_every = (shared.config.upstream_idle_timeout / 4).max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep_every);
            loop {
                tick.tick().await;
                http1::sweep(inline.idle_timeout_ms);
            }
        });
        Self {
            http1: client(false),
            h2c: client(true),
            inline,
            shared,
        }
    }

    pub(crate) async fn handle(
        &self,
        conn: &ConnInfo,
        mut request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let shared = &self.shared;
        let host = headers::request_host(&request).map(str::to_owned);
        let log = shared.access_log.as_ref().map(|sink| LogEntry {
            sink: sink.clone(),
            method: request.method().to_string(),
            host: host.clone().unwrap_or_default(),
            path: request.uri().path().to_owned(),
            protocol: version_str(request.version()),
            client: conn.peer.ip(),
        });
        let mut done = Completion::new(shared.metrics.clone(), log);

        let host = match host {
            Ok(host) => host,
            Err(bad) => {
                shared.metrics.refuse(Refusal::InvalidHost);
                let message = match bad {
                    BadRequest::MissingHost => "missing Host header\n",
                    BadRequest::InvalidHost => "invalid Host header\n",
                };
                return reply(done, StatusCode::BAD_REQUEST, message);
            }
        };
        let Some(snapshot) = shared.snapshots.load() else {
            return reply(
                done,
                StatusCode::SERVICE_UNAVAILABLE,
                "no configuration loaded yet\n",
            );
        };
        let table = &snapshot.ingress;
        let hostname = normalize_host(&host);

        if !conn.tls
            && let Some(https_port) = shared.https_port
            && table.tls_for(&hostname).is_some()
            && !request.uri().path().starts_with(ACME_CHALLENGE)
        {
            return redirect(done, &host, https_port, request.uri());
        }

        let route: Arc<Route> = match route_host(table, &hostname, request.uri().path()) {
            Routed::Route(route) | Routed::Default(route) => route.clone(),
            Routed::NotFound => return reply(done, StatusCode::NOT_FOUND, "no route\n"),
        };
        done.route = Some(route.clone());
        let Some(upstream) = route.upstream.clone() else {
            route.stats.no_endpoints.fetch_add(1, Ordering::Relaxed);
            return reply(
                done,
                StatusCode::SERVICE_UNAVAILABLE,
                "backend service not found\n",
            );
        };
        let eligible = &upstream.internal.endpoints;
        if eligible.is_empty() {
            route.stats.no_endpoints.fetch_add(1, Ordering::Relaxed);
            return reply(
                done,
                StatusCode::SERVICE_UNAVAILABLE,
                "no ready endpoints\n",
            );
        }

        let upgrade = headers::is_upgrade(&request);
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        // Bodiless requests to HTTP/1.1 upstreams take the inline client, which writes the
        // upstream head straight from the client's headers; the others get them rewritten.
        let inline = route.protocol == UpstreamProtocol::Http1 && !upgrade && body.is_end_stream();
        let mut inline_head = BytesMut::new();
        if inline {
            headers::encode_upstream_head(
                &parts.method,
                path_and_query,
                &parts.headers,
                &conn.forwarding,
                &host,
                &mut inline_head,
            );
        } else {
            headers::strip_hop_by_hop(&mut parts.headers, upgrade);
            headers::set_forwarded(&mut parts.headers, &conn.forwarding, &host);
            if !parts.headers.contains_key(header::HOST)
                && let Ok(value) = HeaderValue::from_str(&host)
            {
                parts.headers.insert(header::HOST, value);
            }
        }
        let (client, version) = match route.protocol {
            UpstreamProtocol::Http1 => (&self.http1, Version::HTTP_11),
            UpstreamProtocol::H2c => (&self.h2c, Version::HTTP_2),
        };
        // A retry needs another endpoint, and a request that can be sent twice.
        let retryable =
            eligible.len() > 1 && !upgrade && is_idempotent(&parts.method) && body.is_end_stream();
        let mut body = Some(if body.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Stream {
                inner: body,
                stats: route.stats.clone(),
            }
        });

        let mut rng = fastrand::Rng::new();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let response = loop {
            let now = now_ms();
            let Some(endpoint) = balance::choose_with(
                shared.config.balance,
                &upstream,
                eligible,
                conn.peer.ip(),
                &tried,
                now,
                &mut rng,
            ) else {
                route.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                return reply(done, StatusCode::BAD_GATEWAY, "upstream connect failed\n");
            };
            done.hold(endpoint.clone());
            let sent = Instant::now();
            let attempt = if inline {
                let request = http1::Bodiless {
                    method: &parts.method,
                    head: &inline_head,
                };
                let exchange = http1::send(endpoint.addr, request, self.inline);
                match tokio::time::timeout(shared.config.request_timeout, exchange).await {
                    Ok(Ok(response)) => Ok(response.map(UpstreamBody::Inline)),
                    Ok(Err(http1::SendError::Connect(error))) => {
                        Err(Failed::Connect(error.to_string()))
                    }
                    Ok(Err(http1::SendError::Exchange(error))) => {
                        Err(Failed::Request(error.to_string()))
                    }
                    Err(_elapsed) => Err(Failed::Timeout),
                }
            } else {
                let Ok(uri) = Uri::try_from(format!("http://{}{path_and_query}", endpoint.addr))
                else {
                    return reply(done, StatusCode::BAD_REQUEST, "invalid request target\n");
                };
                let mut upstream_request = Request::new(body.take().unwrap_or(RequestBody::Empty));
                *upstream_request.method_mut() = parts.method.clone();
                *upstream_request.uri_mut() = uri;
                *upstream_request.version_mut() = version;
                *upstream_request.headers_mut() = if retryable && tried.len() + 1 < MAX_ATTEMPTS {
                    parts.headers.clone()
                } else {
                    std::mem::take(&mut parts.headers)
                };
                let exchange = client.request(upstream_request);
                match tokio::time::timeout(shared.config.request_timeout, exchange).await {
                    Ok(Ok(response)) => Ok(response.map(UpstreamBody::Hyper)),
                    Ok(Err(error)) if error.is_connect() => Err(Failed::Connect(error.to_string())),
                    Ok(Err(error)) => Err(Failed::Request(error.to_string())),
                    Err(_elapsed) => Err(Failed::Timeout),
                }
            };
            match attempt {
                Ok(response) => {
                    endpoint.stats.record_success();
                    endpoint.stats.record_latency(sent.elapsed());
                    break response;
                }
                Err(Failed::Connect(error)) => {
                    endpoint.stats.record_failure(now_ms(), &upstream.timeouts);
                    debug!(endpoint = %endpoint.addr, %error, "upstream connect failed");
                    tried.push(endpoint.addr);
                    if retryable && tried.len() < MAX_ATTEMPTS && tried.len() < eligible.len() {
                        shared.metrics.retries.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    route.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    return reply(done, StatusCode::BAD_GATEWAY, "upstream connect failed\n");
                }
                Err(Failed::Request(error)) => {
                    debug!(endpoint = %endpoint.addr, %error, "upstream request failed");
                    route.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    return reply(done, StatusCode::BAD_GATEWAY, "upstream request failed\n");
                }
                Err(Failed::Timeout) => {
                    route
                        .stats
                        .upstream_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    return reply(done, StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n");
                }
            }
        };

        let mut response = response;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && let Some(downstream) = downstream_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(downstream, upstream_upgrade, shared.metrics.clone()));
        }
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, switching);
        parts.headers.insert(header::SERVER, server_header());
        parts.version = Version::HTTP_11;
        done.status = parts.status.as_u16();
        Response::from_parts(parts, ResponseBody::upstream(body, done))
    }
}

/// Why one attempt at an endpoint failed.
enum Failed {
    /// No connection: the request never left, so another endpoint may be tried.
    Connect(String),
    Request(String),
    Timeout,
}

/// Relays an upgraded connection (WebSocket) in both directions until either side closes. It
/// holds no snapshot, so route and endpoint swaps never touch it.
async fn tunnel(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    metrics: Arc<IngressMetrics>,
) {
    let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
        Ok(both) => both,
        Err(error) => {
            debug!(%error, "protocol upgrade failed");
            return;
        }
    };
    metrics.upgraded.fetch_add(1, Ordering::Relaxed);
    let mut downstream = TokioIo::new(downstream);
    let mut upstream = TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    metrics.upgraded.fetch_sub(1, Ordering::Relaxed);
}

/// A short answer of Capstan's own.
pub(crate) fn reply(
    mut done: Completion,
    status: StatusCode,
    text: &'static str,
) -> Response<ResponseBody> {
    done.status = status.as_u16();
    let mut response = Response::new(ResponseBody::full(text, Some(done)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::SERVER, server_header());
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `308 Permanent Redirect` to the same host and target over https (308 keeps the method and
/// body, unlike 301).
fn redirect(
    mut done: Completion,
    host: &str,
    https_port: u16,
    uri: &Uri,
) -> Response<ResponseBody> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{name}{target}")
    } else {
        format!("https://{name}:{https_port}{target}")
    };
    done.status = StatusCode::PERMANENT_REDIRECT.as_u16();
    let mut response = Response::new(ResponseBody::full("", Some(done)));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response
        .headers_mut()
        .insert(header::SERVER, server_header());
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn server_header() -> HeaderValue {
    HeaderValue::from_static("capstan")
}

fn version_str(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}
