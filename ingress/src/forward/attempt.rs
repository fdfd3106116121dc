//! The attempts of one request under its route's retry policy: endpoint choice, the per-try
//! deadline inside the request's, the retry decision (condition, attempts left, idempotency,
//! a replayable body, the route's budget), full-jitter backoff, and what each attempt teaches the
//! balancer and outlier detection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use capstan_proxy::{balance, now_ms};
use capstan_table::{
    Endpoint, RetryPolicy, Route, ServicePortTable, UpstreamProtocol, endpoint_cookie,
};
use http::{Request, Response, StatusCode, Uri, Version};
use tracing::debug;

use super::{Forwarder, reply};
use crate::body::{RequestBody, ResponseBody, UpstreamBody};
use crate::completion::Completion;
use crate::headers::is_idempotent;
use crate::http1;
use crate::outlier::{self, Observed};

/// A routed request, ready to go to an endpoint.
pub(crate) struct Prepared<'a> {
    pub route: &'a Arc<Route>,
    pub upstream: &'a Arc<ServicePortTable>,
    /// Method, headers (already rewritten for hyper's client) and version.
    pub parts: http::request::Parts,
    /// The whole upstream head for the inline HTTP/1.1 client (bodiless requests only).
    pub inline: Option<BytesMut>,
    pub body: Body,
    pub client: IpAddr,
    /// The endpoint the request's sticky-session cookie names (see [`endpoint_cookie`]).
    pub sticky: Option<u64>,
}

/// The request body, as far as retries are concerned.
pub(crate) enum Body {
    /// Empty or buffered whole: every attempt sends it again.
    Replayable(Option<Bytes>),
    /// Streamed: only one attempt can send it.
    Streamed(Option<RequestBody>),
}

/// Why a request got no response to pass on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No endpoint, or no connection could be made (502).
    Connect,
    /// The exchange broke (502).
    Exchange,
    /// The deadline passed (504).
    Timeout,
    /// Every endpoint is at its `max-requests-per-endpoint` (503).
    Overloaded,
}

/// How one attempt ended.
#[allow(
    clippy::large_enum_variant,
    reason = "one lives on the stack per attempt; boxing the response would allocate per request"
)]
enum Outcome {
    Response(Response<UpstreamBody>),
    /// No connection: nothing was sent.
    Connect(String),
    /// Refused before it was written (a pooled connection closing, `REFUSED_STREAM`).
    Refused(String),
    /// Broken after the request was sent, before a response head.
    Reset(String),
    /// The per-try deadline (`true`) or the request's deadline (`false`) passed.
    TimedOut {
        per_try: bool,
    },
}

// === impl Failure ===

impl Failure {
    pub(crate) fn reply(self, done: Completion) -> Response<ResponseBody> {
        let stats = &done.route.as_ref().map(|r| r.stats.clone());
        match self {
            Failure::Connect | Failure::Exchange => {
                if let Some(stats) = stats {
                    stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                }
                let text = if self == Failure::Connect {
                    "upstream connect failed\n"
                } else {
                    "upstream request failed\n"
                };
                reply(done, StatusCode::BAD_GATEWAY, text)
            }
            Failure::Timeout => {
                if let Some(stats) = stats {
                    stats.upstream_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                reply(done, StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n")
            }
            Failure::Overloaded => {
                if let Some(route) = &done.route {
                    route.state.overloaded.fetch_add(1, Ordering::Relaxed);
                }
                reply(
                    done,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream overloaded: every endpoint is at its request limit\n",
                )
            }
        }
    }
}

// === impl Outcome ===

impl Outcome {
    /// Whether `policy` retries this outcome of a request with `method`.
    fn retryable(&self, policy: &RetryPolicy, repeatable_after_send: bool) -> bool {
        let on = &policy.on;
        match self {
            Outcome::Connect(_) => on.connect_failure,
            Outcome::Refused(_) => on.refused_stream,
            Outcome::Reset(_) => on.reset && repeatable_after_send,
            Outcome::TimedOut { per_try } => *per_try && on.status(504) && repeatable_after_send,
            Outcome::Response(response) => {
                let status = response.status().as_u16();
                let grpc = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u32>().ok());
                repeatable_after_send
                    && (on.status(status) || grpc.is_some_and(|code| on.grpc_status(code)))
            }
        }
    }

    fn failure(self) -> Result<Response<UpstreamBody>, Failure> {
        match self {
            Outcome::Response(response) => Ok(response),
            Outcome::Connect(_) | Outcome::Refused(_) => Err(Failure::Connect),
            Outcome::Reset(_) => Err(Failure::Exchange),
            Outcome::TimedOut { .. } => Err(Failure::Timeout),
        }
    }
}

// === impl Forwarder ===

impl Forwarder {
    /// Sends `request` to an endpoint, and to others while the route's retry policy says so.
    pub(super) async fn send(
        &self,
        mut request: Prepared<'_>,
        done: &mut Completion,
    ) -> Result<Response<UpstreamBody>, Failure> {
        let route = request.route;
        let policy = &route.policy.retry;
        let eligible = &request.upstream.internal.endpoints;
        let timeout = route.policy.request_timeout;
        let deadline = Instant::now() + timeout.unwrap_or(self.shared.config.request_timeout);
        route.state.budget.deposit(now_ms() / 1_000);
        let repeatable_after_send = is_idempotent(&request.parts.method) || policy.non_idempotent;
        let mut rng = fastrand::Rng::new();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut retries = 0;
        loop {
            // Once every endpoint was tried, a retry may go to any of them again.
            if tried.len() >= eligible.len() {
                tried.clear();
            }
            let endpoint = self.pick(&request, &tried, &mut rng)?;
            done.hold(endpoint.clone());
            let last = retries >= policy.retries || !matches!(request.body, Body::Replayable(_));
            let outcome = self.attempt(&mut request, &endpoint, last, deadline).await;
            learn(&endpoint, request.upstream, &outcome);
            if last || !outcome.retryable(policy, repeatable_after_send) {
                return outcome.failure();
            }
            if !route.state.budget.withdraw(policy, now_ms() / 1_000) {
                route.state.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                return outcome.failure();
            }
            retries += 1;
            route.state.retries.fetch_add(1, Ordering::Relaxed);
            self.shared.metrics.retries.fetch_add(1, Ordering::Relaxed);
            tried.push(endpoint.addr);
            let wait = policy.backoff(retries, rng.f64());
            if Instant::now() + wait >= deadline {
                return outcome.failure();
            }
            drop(outcome);
            tokio::time::sleep(wait).await;
        }
    }

    /// The endpoint for the next attempt: the sticky cookie's while it is eligible, available,
    /// untried and under its request limit; else the balancer's choice among those under it.
    fn pick(
        &self,
        request: &Prepared<'_>,
        tried: &[SocketAddr],
        rng: &mut fastrand::Rng,
    ) -> Result<Arc<Endpoint>, Failure> {
        let eligible = &request.upstream.internal.endpoints;
        let limit = request.upstream.max_requests_per_endpoint.map(u64::from);
        let has_room =
            |e: &Endpoint| limit.is_none_or(|max| e.stats.in_flight.load(Ordering::Relaxed) < max);
        let now = now_ms();
        if let Some(wanted) = request.sticky
            && let Some(endpoint) = eligible.iter().find(|e| {
                endpoint_cookie(e.addr) == wanted
                    && e.stats.is_available(now)
                    && !tried.contains(&e.addr)
                    && has_room(e)
            })
        {
            return Ok(endpoint.clone());
        }
        let mut excluded = tried.to_vec();
        loop {
            let chosen = balance::choose_with(
                self.shared.config.balance,
                request.upstream,
                eligible,
                request.client,
                &excluded,
                now,
                rng,
            );
            match chosen {
                Some(endpoint) if has_room(&endpoint) => return Ok(endpoint),
                Some(full) => excluded.push(full.addr),
                None if excluded.len() > tried.len() => return Err(Failure::Overloaded),
                None => return Err(Failure::Connect),
            }
        }
    }

    /// One attempt at `endpoint`, within the per-try deadline and `deadline`.
    async fn attempt(
        &self,
        request: &mut Prepared<'_>,
        endpoint: &Endpoint,
        last: bool,
        deadline: Instant,
    ) -> Outcome {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let per_try = request.route.policy.retry.per_try_timeout;
        let (timeout, per_try) = match per_try {
            Some(per_try) if per_try < remaining => (per_try, true),
            _ => (remaining, false),
        };
        let sent = Instant::now();
        let outcome = match &request.inline {
            Some(head) => {
                let bodiless = http1::Bodiless {
                    method: &request.parts.method,
                    head,
                };
                let exchange = http1::send(endpoint.addr, bodiless, self.inline);
                match tokio::time::timeout(timeout, exchange).await {
                    Ok(Ok(response)) => Outcome::Response(response.map(UpstreamBody::Inline)),
                    Ok(Err(http1::SendError::Connect(error))) => {
                        Outcome::Connect(error.to_string())
                    }
                    Ok(Err(http1::SendError::Exchange(error))) => Outcome::Reset(error.to_string()),
                    Err(_elapsed) => Outcome::TimedOut { per_try },
                }
            }
            None => {
                self.attempt_hyper(request, endpoint.addr, last, timeout, per_try)
                    .await
            }
        };
        if let Outcome::Response(_) = &outcome {
            endpoint.stats.record_latency(sent.elapsed(), now_ms());
        }
        outcome
    }

    /// An attempt through hyper's client (bodies, upgrades, h2c).
    async fn attempt_hyper(
        &self,
        request: &mut Prepared<'_>,
        addr: SocketAddr,
        last: bool,
        timeout: Duration,
        per_try: bool,
    ) -> Outcome {
        let path_and_query = request
            .parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str());
        let route = request.route;
        let scheme = if route.tls.is_some() { "https" } else { "http" };
        let Ok(uri) = Uri::try_from(format!("{scheme}://{addr}{path_and_query}")) else {
            return Outcome::Reset("invalid request target".into());
        };
        let version = match route.protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::Http2 => Version::HTTP_2,
        };
        let tls_client = match &route.tls {
            None => None,
            Some(tls) => match self.tls.get(tls, route.protocol) {
                Ok(client) => Some(client),
                Err(error) => return Outcome::Connect(format!("upstream TLS: {error}")),
            },
        };
        let body = match &mut request.body {
            Body::Replayable(None) => RequestBody::Empty,
            Body::Replayable(Some(bytes)) => RequestBody::Full(Some(bytes.clone())),
            Body::Streamed(body) => body.take().unwrap_or(RequestBody::Empty),
        };
        let mut upstream = Request::new(body);
        *upstream.method_mut() = request.parts.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = version;
        *upstream.headers_mut() = if last {
            std::mem::take(&mut request.parts.headers)
        } else {
            request.parts.headers.clone()
        };
        let response = match (&tls_client, route.protocol) {
            (Some(client), _) => client.request(upstream),
            (None, UpstreamProtocol::Http1) => self.http1.request(upstream),
            (None, UpstreamProtocol::Http2) => self.h2c.request(upstream),
        };
        match tokio::time::timeout(timeout, response).await {
            Ok(Ok(response)) => Outcome::Response(response.map(UpstreamBody::Hyper)),
            Ok(Err(error)) if error.is_connect() => Outcome::Connect(chain(&error)),
            Ok(Err(error)) if is_refused(&error) => Outcome::Refused(chain(&error)),
            Ok(Err(error)) => Outcome::Reset(chain(&error)),
            Err(_elapsed) => Outcome::TimedOut { per_try },
        }
    }
}

/// An error with its sources (`client error (Connect): invalid peer certificate: UnknownIssuer`):
/// hyper-util's own text names only the stage.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        text.push_str(": ");
        text.push_str(&error.to_string());
        source = error.source();
    }
    text
}

/// hyper's client gives up on a request it never wrote when its pooled connection closes
/// (`is_canceled`); h2's `REFUSED_STREAM` says the server did not process the stream.
fn is_refused(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return true;
        }
        if error.to_string().contains("refused stream") {
            return true;
        }
        source = error.source();
    }
    false
}

/// What an attempt's outcome tells the endpoint's passive health state.
fn learn(endpoint: &Endpoint, upstream: &ServicePortTable, outcome: &Outcome) {
    let now = now_ms();
    match outcome {
        Outcome::Response(response) => {
            let status = response.status().as_u16();
            outlier::record(endpoint, upstream, Observed::Status(status), now);
        }
        Outcome::Connect(error) => {
            endpoint.stats.record_failure(now, &upstream.timeouts);
            debug!(endpoint = %endpoint.addr, %error, "upstream connect failed");
        }
        Outcome::Reset(error) => {
            outlier::record(endpoint, upstream, Observed::Broken, now);
            debug!(endpoint = %endpoint.addr, %error, "upstream request failed");
        }
        Outcome::TimedOut { .. } => {
            outlier::record(endpoint, upstream, Observed::Broken, now);
        }
        Outcome::Refused(error) => {
            debug!(endpoint = %endpoint.addr, %error, "upstream refused the request unsent");
        }
    }
}
