//! One request through the ingress: host check → snapshot load → https redirect → route →
//! admission (allow-list, size, rate limits) → body buffered when a retry or a limit needs it →
//! attempts at endpoints under the route's retry policy ([`attempt`]) → streamed response.
//! WebSocket upgrades are relayed byte for byte once both sides have switched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;

use capstan_table::{
    HttpAction, Route, ServicePortTable, StickyCookie, UpstreamProtocol, endpoint_cookie,
};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

mod attempt;
mod mirror;

use crate::IngressConfig;
use crate::admission::{self, Refused};
use crate::auth;
use crate::body::{self, RequestBody, ResponseBody};
use crate::completion::{AccessLog, Completion, LogEntry};
use crate::edge;
use crate::grpc;
use crate::headers::{self, BadRequest, Forwarding};
use crate::http1;
use crate::metrics::{IngressMetrics, Refusal};
use crate::plan::{self, Fault, Forward, Plan, RequestHead};
use crate::routing::normalize_host;
use crate::upstream_tls::TlsClients;

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
    /// Clients for routes that speak TLS to their endpoints.
    tls: TlsClients,
    /// The inline client's settings (its pool is the worker thread's).
    inline: http1::ClientSettings,
}

/// The downstream connection a request arrived on.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The Gateway socket the connection arrived on (its bound address); `None`: an Ingress
    /// listener.
    pub gateway: Option<SocketAddr>,
    pub forwarding: Forwarding,
}

impl ConnInfo {
    /// `local` is the listener address the connection reached; `trusted`, whether the peer is a
    /// trusted proxy.
    pub(crate) fn new(peer: SocketAddr, local: SocketAddr, tls: bool, trusted: bool) -> Self {
        let proto = if tls { "https" } else { "http" };
        Self {
            peer,
            tls,
            gateway: None,
            forwarding: Forwarding::new(peer.ip(), proto, local.port(), trusted),
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
            tls: TlsClients::new(connector.clone(), shared.config.upstream_idle_timeout),
            inline,
            shared,
        }
    }

    /// The body to send upstream: buffered whole when the route may retry it or mirror it
    /// (declared length within `retry-body-limit`) or must check its size (`max-body-size` with
    /// no declared length), streamed otherwise.
    async fn request_body(
        &self,
        route: &Route,
        body: Incoming,
        declared: Option<u64>,
        (upgrade, mirrored): (bool, bool),
    ) -> Result<attempt::Body, Refused> {
        if body.is_end_stream() {
            return Ok(attempt::Body::Replayable(None));
        }
        let policy = &route.policy;
        let retry_limit = ((policy.retry.retries > 0 || mirrored) && !upgrade)
            .then_some(policy.retry.body_limit)
            .filter(|&limit| declared.is_some_and(|length| length <= limit));
        let size_limit = policy.max_body_bytes.filter(|_| declared.is_none());
        let Some(limit) = retry_limit.or(size_limit) else {
            return Ok(attempt::Body::Streamed(Some(RequestBody::Stream {
                inner: body,
                stats: route.stats.clone(),
            })));
        };
        let read = body::buffer(body, limit, &route.stats);
        match tokio::time::timeout(self.shared.config.request_timeout, read).await {
            Ok(Ok(Some(bytes))) => Ok(attempt::Body::Replayable(Some(bytes))),
            Ok(Ok(None)) => {
                route.state.body_too_large.fetch_add(1, Ordering::Relaxed);
                Err(Refused::TooLarge)
            }
            Ok(Err(_)) | Err(_) => Err(Refused::BodyUnreadable),
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
        done.grpc = grpc::is_grpc(request.headers());

        let (host, forward, upstream) = match self.resolve(conn, &request, host) {
            Ok(resolved) => resolved,
            Err(Early::Redirect(status, location)) => return redirect(done, status, &location),
            Err(Early::Fault(fault, route)) => return self.fault(done, fault, route),
        };
        let route = forward.route.clone();
        done.route = Some(route.clone());

        if let Some(headers) = edge::preflight(&route.policy, &request) {
            let mut response = reply(done, edge::PREFLIGHT_STATUS, "");
            response.headers_mut().extend(headers);
            return response;
        }
        let origin = edge::origin(&route.policy, &request);
        let now_us = capstan_proxy::now_us();
        let declared = request.body().size_hint().exact();
        if let Err(refused) = admission::admit(&route, conn.peer.ip(), declared, now_us) {
            return refuse(done, refused);
        }
        let credentials = request.headers().get(header::AUTHORIZATION);
        if auth::check(&route, credentials).await.is_err() {
            return unauthorized(done, &route);
        }

        let upgrade = headers::is_upgrade(&request);
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        apply_rewrites(&mut parts, &forward);
        let mirrors = forward
            .gateway
            .as_ref()
            .map_or_else(Vec::new, |(action, _)| mirror::chosen(action));
        // Bodiless requests to HTTP/1.1 upstreams take the inline client, which writes the
        // upstream head straight from the client's headers; the others get them rewritten.
        let inline = route.protocol == UpstreamProtocol::Http1
            && route.tls.is_none()
            && !upgrade
            && mirrors.is_empty()
            && body.is_end_stream();
        let inline = upstream_headers(&mut parts, conn, &host, inline, upgrade);
        let mirrored = !mirrors.is_empty();
        let body = match self
            .request_body(&route, body, declared, (upgrade, mirrored))
            .await
        {
            Ok(body) => body,
            Err(refused) => return refuse(done, refused),
        };
        if mirrored {
            let copy = match &body {
                attempt::Body::Replayable(bytes) => Some(bytes.clone()),
                attempt::Body::Streamed(_) => None,
            };
            self.mirror(mirrors, &parts, copy, conn.peer.ip());
        }
        let sticky = route.policy.sticky.as_ref().map(|sticky| {
            let wanted = headers::cookie(&parts.headers, &sticky.name)
                .and_then(|v| u64::from_str_radix(v, 16).ok());
            (sticky, wanted)
        });
        let request = attempt::Prepared {
            route: &route,
            upstream: &upstream,
            parts,
            inline,
            body,
            client: conn.peer.ip(),
            sticky: sticky.and_then(|(_, wanted)| wanted),
        };
        let response = match self.send(request, &mut done).await {
            Ok(response) => response,
            Err(failed) => return failed.reply(done),
        };

        let finish = Finish {
            gateway: forward.gateway,
            tls: conn.tls,
            origin,
            sticky,
            downstream_upgrade,
        };
        self.finish(&route, finish, response, done)
    }

    /// From the request to its route and Service port, or the early answer: 400 for a bad
    /// host, 503 before the first snapshot, else the plan step's ([`plan::plan_ingress`] on an
    /// Ingress listener, [`plan::plan_gateway`] on a Gateway socket).
    fn resolve(
        &self,
        conn: &ConnInfo,
        request: &Request<Incoming>,
        host: Result<String, BadRequest>,
    ) -> Result<(String, Forward, Arc<ServicePortTable>), Early> {
        let shared = &self.shared;
        let host = host.map_err(|bad| {
            let fault = match bad {
                BadRequest::MissingHost => Fault::MissingHost,
                BadRequest::InvalidHost => Fault::InvalidHost,
            };
            Early::Fault(fault, None)
        })?;
        let Some(snapshot) = shared.snapshots.load() else {
            return Err(Early::Fault(Fault::NotLoaded, None));
        };
        let hostname = normalize_host(&host);
        let head = RequestHead {
            method: request.method(),
            host: &hostname,
            path: request.uri().path(),
            query: request.uri().query(),
            headers: request.headers(),
            tls: conn.tls,
        };
        let plan = match conn.gateway {
            Some(socket) => match snapshot.gateway.sockets.get(&socket) {
                Some(socket) => plan::plan_gateway(socket, &head, fastrand::u32(..)),
                None => Plan::Reply(Fault::NoRoute, None),
            },
            None => {
                let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
                plan::plan_ingress(&snapshot.ingress, &head, shared.https_port, &host, target)
            }
        };
        match plan {
            Plan::Forward(forward) => match forward.route.upstream.clone() {
                Some(upstream) => Ok((host, forward, upstream)),
                None => Err(Early::Fault(Fault::NoService, Some(forward.route))),
            },
            Plan::Redirect { status, location } => Err(Early::Redirect(status, location)),
            Plan::Reply(fault, route) => Err(Early::Fault(fault, route)),
        }
    }

    /// The one place a fault becomes a response: counted by kind (and on its route), logged
    /// with the request, answered with its status.
    fn fault(
        &self,
        mut done: Completion,
        fault: Fault,
        route: Option<Arc<Route>>,
    ) -> Response<ResponseBody> {
        let metrics = &self.shared.metrics;
        metrics.record_fault(fault);
        if matches!(fault, Fault::MissingHost | Fault::InvalidHost) {
            metrics.refuse(Refusal::InvalidHost);
        }
        if let Some(route) = &route {
            route.stats.no_endpoints.fetch_add(1, Ordering::Relaxed);
        }
        done.route = route;
        reply(done, fault.status(), fault.text())
    }

    /// The upstream's response as it goes to the client: the upgrade tunnel started, hop-by-hop
    /// headers removed, and the route's edge headers and sticky cookie added.
    fn finish(
        &self,
        route: &Route,
        finish: Finish,
        mut response: Response<crate::body::UpstreamBody>,
        mut done: Completion,
    ) -> Response<ResponseBody> {
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && let Some(downstream) = finish.downstream_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let metrics = self.shared.metrics.clone();
            tokio::spawn(tunnel(downstream, upstream_upgrade, metrics));
        }
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, switching);
        parts.headers.insert(header::SERVER, server_header());
        parts.version = Version::HTTP_11;
        let origin = finish.origin.as_ref();
        edge::decorate(&route.policy, finish.tls, origin, &mut parts.headers);
        plan::apply_edits(&route.policy.filters.response_headers, &mut parts.headers);
        if let Some((action, backend)) = &finish.gateway {
            plan::apply_edits(&action.response_headers, &mut parts.headers);
            plan::apply_edits(
                &action.backends[*backend].response_headers,
                &mut parts.headers,
            );
        }
        if let Some((sticky, wanted)) = finish.sticky
            && let Some(served) = &done.endpoint
            && wanted != Some(endpoint_cookie(served.addr))
            && let Ok(cookie) = sticky_cookie(sticky, served.addr, finish.tls)
        {
            parts.headers.append(header::SET_COOKIE, cookie);
        }
        done.status = parts.status.as_u16();
        Response::from_parts(parts, ResponseBody::upstream(body, done))
    }
}

/// A request answered before any endpoint is chosen.
enum Early {
    Redirect(StatusCode, String),
    /// With the route when one was matched (its counters record it).
    Fault(Fault, Option<Arc<Route>>),
}

/// What the response needs from the request.
struct Finish<'a> {
    /// The Gateway API rule and backend, for their response header edits.
    gateway: Option<(Arc<HttpAction>, usize)>,
    tls: bool,
    origin: Option<HeaderValue>,
    /// The route's sticky cookie and the endpoint the request's cookie named.
    sticky: Option<(&'a StickyCookie, Option<u64>)>,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
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

/// `Set-Cookie` naming `endpoint` for a sticky session.
fn sticky_cookie(
    sticky: &StickyCookie,
    endpoint: SocketAddr,
    tls: bool,
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut value = format!(
        "{}={:016x}; Path=/; HttpOnly",
        sticky.name,
        endpoint_cookie(endpoint)
    );
    if let Some(max_age) = sticky.max_age {
        value.push_str(&format!("; Max-Age={}", max_age.as_secs()));
    }
    if tls {
        value.push_str("; Secure");
    }
    HeaderValue::from_str(&value)
}

/// Rewrites the request's headers for the upstream; for the inline client (`inline`), encodes
/// the whole upstream head instead and returns it.
fn upstream_headers(
    parts: &mut http::request::Parts,
    conn: &ConnInfo,
    host: &str,
    inline: bool,
    upgrade: bool,
) -> Option<BytesMut> {
    let fields = headers::forwarded_fields(&parts.headers, &conn.forwarding, host);
    if inline {
        let mut head = BytesMut::new();
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        headers::encode_upstream_head(
            &parts.method,
            path_and_query,
            &parts.headers,
            &fields,
            host,
            &mut head,
        );
        return Some(head);
    }
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::set_forwarded(&mut parts.headers, &fields);
    if !parts.headers.contains_key(header::HOST)
        && let Ok(value) = HeaderValue::from_str(host)
    {
        parts.headers.insert(header::HOST, value);
    }
    None
}

/// The answer to a request its route's policy turned away.
fn refuse(done: Completion, refused: Refused) -> Response<ResponseBody> {
    match refused {
        Refused::Forbidden => reply(done, StatusCode::FORBIDDEN, "forbidden\n"),
        Refused::TooLarge => reply(
            done,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
        ),
        Refused::BodyUnreadable => reply(
            done,
            StatusCode::BAD_REQUEST,
            "request body could not be read\n",
        ),
        Refused::RateLimited(wait) => {
            let mut response = reply(done, StatusCode::TOO_MANY_REQUESTS, "rate limited\n");
            response.headers_mut().insert(
                header::RETRY_AFTER,
                admission::retry_after_seconds(wait).into(),
            );
            response
        }
    }
}

/// 401 with the route's `WWW-Authenticate` challenge.
fn unauthorized(done: Completion, route: &Route) -> Response<ResponseBody> {
    let mut response = reply(done, StatusCode::UNAUTHORIZED, "authentication required\n");
    if let Some(auth) = &route.basic_auth {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, auth::challenge(auth));
    }
    response
}

/// A short answer of Capstan's own; to a gRPC request, as a gRPC status ([`grpc::local_reply`]).
pub(crate) fn reply(
    mut done: Completion,
    status: StatusCode,
    text: &'static str,
) -> Response<ResponseBody> {
    done.status = status.as_u16();
    let grpc = done.grpc;
    let mut response = Response::new(ResponseBody::full(text, Some(done)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::SERVER, server_header());
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if grpc {
        return grpc::local_reply(response);
    }
    response
}

/// A redirect to `location`.
fn redirect(mut done: Completion, status: StatusCode, location: &str) -> Response<ResponseBody> {
    done.status = status.as_u16();
    let mut response = Response::new(ResponseBody::full("", Some(done)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::SERVER, server_header());
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The request edits of the route's filters (the Ingress annotations, or a Gateway API rule's
/// and its backend's header modifiers), then the `URLRewrite` path and `Host`.
fn apply_rewrites(parts: &mut http::request::Parts, forward: &Forward) {
    let filters = &forward.route.policy.filters;
    plan::apply_edits(&filters.request_headers, &mut parts.headers);
    if let Some((action, backend)) = &forward.gateway {
        plan::apply_edits(&action.request_headers, &mut parts.headers);
        let backend = &action.backends[*backend];
        plan::apply_edits(&backend.request_headers, &mut parts.headers);
    }
    if let Some(path) = &forward.path {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = http::uri::PathAndQuery::from_maybe_shared(path.clone()).ok();
        parts.uri = Uri::from_parts(uri).unwrap_or_default();
    }
    if let Some(host) = &forward.host {
        parts.headers.insert(header::HOST, host.clone());
    }
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
