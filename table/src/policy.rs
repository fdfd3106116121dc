//! HTTP traffic policy, one model whatever wrote it (Ingress and Service annotations under
//! `capstan.dev/*`, `capstan.yaml` `policy:` keys): retries with a budget, rate limits, body size
//! and source limits per route; active health checks and outlier ejection per Service. The
//! values are plain data; the live state they act on (token buckets, budget windows) is carried
//! in [`RouteState`] across snapshots.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What applies to every request of one route.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoutePolicy {
    pub retry: RetryPolicy,
    /// One token bucket for the whole route (every client, every ingress worker).
    pub rate_limit: Option<RateLimit>,
    /// One token bucket per client address.
    pub client_rate_limit: Option<RateLimit>,
    /// Requests whose body is larger are answered 413 (ingress-nginx `proxy-body-size`).
    pub max_body_bytes: Option<u64>,
    /// Clients allowed on the route (ingress-nginx `whitelist-source-range`); others get 403.
    pub allow_sources: Option<Arc<[ipnet::IpNet]>>,
    /// Sticky sessions by cookie; `None`: off.
    pub sticky: Option<StickyCookie>,
    /// `Strict-Transport-Security` on responses over TLS; `None`: not sent.
    pub hsts: Option<Hsts>,
    /// CORS answered at the edge; `None`: requests and responses pass untouched.
    pub cors: Option<Cors>,
    /// How the endpoints are spoken to, when the route says (TLS to upstreams).
    pub backend: BackendPolicy,
    /// HTTP basic authentication (ingress-nginx's `auth-type: basic`); `None`: off.
    pub basic_auth: Option<BasicAuthPolicy>,
    /// The whole request, response headers included (HTTPRoute `timeouts.request`); `None`:
    /// the listener's `--request-timeout`.
    pub request_timeout: Option<Duration>,
    /// Rewrites, redirects and header edits (`capstan.dev/*` annotations on Ingress).
    pub filters: crate::RouteFilters,
}

/// Where a route's basic-auth users come from, and the realm it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicAuthPolicy {
    /// A Secret in the route's namespace labelled `capstan.dev/basic-auth: "true"`
    /// (ingress-nginx's `auth-secret`).
    pub secret: Option<Arc<str>>,
    /// Users read from an htpasswd file (`capstan.yaml`'s `auth-file`).
    pub file: Option<crate::Htpasswd>,
    pub realm: Arc<str>,
}

/// How a route's endpoints are spoken to, when the route says so (ingress-nginx's
/// `backend-protocol` and `proxy-ssl-*` annotations); otherwise the Service port's `appProtocol`
/// decides, in cleartext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPolicy {
    /// `None`: from the Service port's `appProtocol`.
    pub protocol: Option<BackendProtocol>,
    /// SNI and the name the certificate is checked against; `None`: the Service's DNS name
    /// `<service>.<namespace>.svc`.
    pub tls_server_name: Option<Arc<str>>,
    /// Check the endpoint's certificate (default); `false` is ingress-nginx's default
    /// (`proxy-ssl-verify: off`).
    pub tls_verify: bool,
    /// A `kubernetes.io/tls` Secret in the route's namespace: its `ca.crt` is what the
    /// endpoint's certificate is checked against, its `tls.crt` and `tls.key` the client
    /// certificate (ingress-nginx's `proxy-ssl-secret`).
    pub tls_secret: Option<Arc<str>>,
    /// CA certificates read from a PEM file (`capstan.yaml`'s `backend-tls-ca-file`), with
    /// the file's path.
    pub tls_ca: Option<(Arc<str>, Arc<[rustls_pki_types::CertificateDer<'static>]>)>,
}

/// ingress-nginx's `backend-protocol` values that Capstan speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendProtocol {
    /// HTTP/1.1 in cleartext.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 in cleartext with prior knowledge (h2c).
    Grpc,
    /// HTTP/2 over TLS (ALPN `h2`).
    Grpcs,
}

impl Default for BackendPolicy {
    fn default() -> Self {
        Self {
            protocol: None,
            tls_server_name: None,
            tls_verify: true,
            tls_secret: None,
            tls_ca: None,
        }
    }
}

impl BackendProtocol {
    pub fn is_tls(self) -> bool {
        matches!(self, BackendProtocol::Https | BackendProtocol::Grpcs)
    }
}

/// HTTP Strict Transport Security (RFC 6797): sent only on responses over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hsts {
    pub max_age: Duration,
    pub include_subdomains: bool,
    pub preload: bool,
}

/// Cross-origin resource sharing (ingress-nginx's `enable-cors` semantics): preflights from an
/// allowed origin are answered 204 by the ingress; other requests from one get
/// `Access-Control-Allow-Origin` (and `-Credentials`) added to the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins (`scheme://host[:port]`, lowercase); empty: any origin (`*`).
    pub origins: Vec<Arc<str>>,
    pub methods: Arc<str>,
    pub headers: Arc<str>,
    pub credentials: bool,
    pub max_age: Duration,
}

// === impl Hsts ===

impl Hsts {
    /// The header value: `max-age=N[; includeSubDomains][; preload]`.
    pub fn value(&self) -> String {
        let mut value = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        value
    }
}

// === impl Cors ===

impl Cors {
    /// Whether a request from `origin` may be served cross-origin.
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.is_empty()
            || self
                .origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }
}

/// Sticky sessions (ingress-nginx `affinity: cookie`, Traefik's sticky cookie, Envoy's cookie
/// stateful session): the cookie names the endpoint that served the client; while that endpoint
/// is eligible and available the client stays on it, whatever the endpoint set does around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StickyCookie {
    pub name: Arc<str>,
    /// `Max-Age` of the cookie; `None`: a session cookie.
    pub max_age: Option<Duration>,
}

/// The cookie value naming `endpoint`: FNV-1a of its address, in hex (stable across restarts
/// and versions, and it does not show the address).
pub fn endpoint_cookie(endpoint: std::net::SocketAddr) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in endpoint.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// When and how often a failed request is sent again to another endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (Envoy's `num_retries`).
    pub retries: u32,
    pub on: RetryOn,
    /// Each attempt's own deadline (the request's whole deadline still applies).
    pub per_try_timeout: Option<Duration>,
    /// Full-jitter exponential backoff: the n-th retry waits a random time up to
    /// `min(backoff_max, backoff_base × 2ⁿ)` (Envoy's defaults: 25 ms and 250 ms).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Retries may add at most this fraction of the route's requests over the last 10 s
    /// (linkerd2's and Envoy's 20 %), plus `budget_min_per_second`.
    pub budget_ratio: f64,
    pub budget_min_per_second: u32,
    /// Request bodies up to this size are buffered so that the request can be retried; larger
    /// ones are streamed and never retried once sent.
    pub body_limit: u64,
    /// Also retry non-idempotent methods on conditions after the request was sent (`reset`,
    /// statuses). Connect failures and refused streams are always retried: nothing was sent.
    pub non_idempotent: bool,
}

/// The conditions that make an attempt retryable (Envoy's `retry_on` names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection could not be made: nothing was sent.
    pub connect_failure: bool,
    /// HTTP/2 `REFUSED_STREAM` or a pooled connection closed before the request was written.
    pub refused_stream: bool,
    /// The connection broke after the request was sent, before a response head arrived.
    pub reset: bool,
    /// Response statuses that are retried (sorted).
    pub statuses: Vec<u16>,
    /// `grpc-status` values that are retried (sorted).
    pub grpc_statuses: Vec<u32>,
}

/// A token bucket: `requests` per `period`, bursts of up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub period: Duration,
    pub burst: u32,
}

/// Active HTTP health checking of a Service's endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveHealthCheck {
    pub path: Arc<str>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a down endpoint back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take an endpoint down.
    pub unhealthy_threshold: u32,
    /// Inclusive ranges of statuses that pass (default 200–399).
    pub statuses: Vec<(u16, u16)>,
    /// `health-check-scheme: https`: the check speaks TLS (certificate not verified, as
    /// HAProxy's `check-ssl verify none`: a check reads a status, it sends nothing secret).
    pub tls: bool,
    /// `health-check-host`: the Host header and TLS server name; default the endpoint's address.
    pub host: Option<Arc<str>>,
}

/// Passive outlier detection on responses (Envoy's `outlier_detection`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Eject after this many consecutive 5xx responses; `None`: off.
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many consecutive 502/503/504 responses or failed exchanges.
    pub consecutive_gateway_errors: Option<u32>,
    /// At most this percentage of a Service port's endpoints ejected by outlier detection at
    /// once; at least one may always be ejected (Envoy's `max_ejection_percent`, default 10).
    pub max_ejection_percent: u8,
}

/// Live state of a route that outlives snapshots: its rate limiters and its retry budget.
#[derive(Debug, Default)]
pub struct RouteState {
    pub limiter: Gcra,
    /// Per client address; swept when it grows past [`CLIENT_LIMITERS_SWEEP_AT`].
    pub client_limiters: papaya::HashMap<IpAddr, Gcra>,
    pub budget: RetryBudget,
    /// Decisions, for metrics.
    pub retries: AtomicU64,
    pub budget_exhausted: AtomicU64,
    pub rate_limited: AtomicU64,
    pub body_too_large: AtomicU64,
    pub source_denied: AtomicU64,
    /// Requests answered 401: no or wrong basic-auth credentials.
    pub unauthorized: AtomicU64,
    /// Requests answered 503 because every endpoint was at its request limit.
    pub overloaded: AtomicU64,
    /// On a `RequestMirror` route: requests not mirrored because their body was streamed.
    pub mirror_skipped: AtomicU64,
}

/// Client limiters past which an admission also drops the idle ones.
pub const CLIENT_LIMITERS_SWEEP_AT: usize = 16_384;

/// A lock-free token bucket in one atomic: the generic cell rate algorithm (GCRA), which keeps the
/// "theoretical arrival time" of the next request in microseconds.
#[derive(Debug, Default)]
pub struct Gcra {
    tat_us: AtomicU64,
}

/// Request and retry counts over the last [`BUDGET_WINDOW_SECONDS`] seconds, in one-second slots.
#[derive(Debug, Default)]
pub struct RetryBudget {
    requests: [AtomicU64; BUDGET_WINDOW_SECONDS],
    retries: [AtomicU64; BUDGET_WINDOW_SECONDS],
}

/// The retry budget's window (tower's `TpsBudget` default TTL).
pub const BUDGET_WINDOW_SECONDS: usize = 10;

// === impl RetryPolicy ===

impl Default for RetryPolicy {
    /// Two retries on connect failures, refused streams and resets: what a rolling update
    /// produces. Non-idempotent requests are retried only when nothing was sent.
    fn default() -> Self {
        Self {
            retries: 2,
            on: RetryOn::default(),
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            body_limit: 64 * 1024,
            non_idempotent: false,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based): full jitter over the capped exponential.
    pub fn backoff(&self, retry: u32, random_unit: f64) -> Duration {
        let ceiling = self
            .backoff_base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.backoff_max);
        ceiling.mul_f64(random_unit.clamp(0.0, 1.0))
    }
}

// === impl RetryOn ===

impl Default for RetryOn {
    fn default() -> Self {
        Self {
            connect_failure: true,
            refused_stream: true,
            reset: true,
            statuses: vec![],
            grpc_statuses: vec![],
        }
    }
}

impl RetryOn {
    pub fn status(&self, status: u16) -> bool {
        self.statuses.binary_search(&status).is_ok()
    }

    pub fn grpc_status(&self, code: u32) -> bool {
        self.grpc_statuses.binary_search(&code).is_ok()
    }
}

// === impl RateLimit ===

impl RateLimit {
    /// Microseconds between two requests at the sustained rate.
    pub fn interval_us(&self) -> u64 {
        let period = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        (period / u64::from(self.requests.max(1))).max(1)
    }
}

// === impl ActiveHealthCheck ===

impl ActiveHealthCheck {
    pub fn passes(&self, status: u16) -> bool {
        self.statuses
            .iter()
            .any(|&(low, high)| (low..=high).contains(&status))
    }
}

// === impl OutlierPolicy ===

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_5xx: None,
            consecutive_gateway_errors: None,
            max_ejection_percent: 10,
        }
    }
}

// === impl Gcra ===

impl Gcra {
    /// Admits one request at `now_us` under `limit`, or says how long until one would be.
    pub fn admit(&self, limit: &RateLimit, now_us: u64) -> Result<(), Duration> {
        let interval = limit.interval_us();
        let tolerance = interval.saturating_mul(u64::from(limit.burst.max(1)));
        let mut tat = self.tat_us.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now_us).saturating_add(interval);
            if next - now_us > tolerance {
                return Err(Duration::from_micros(next - now_us - tolerance));
            }
            match self
                .tat_us
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// Whether the bucket is full again at `now_us` (its entry can be forgotten).
    pub fn is_idle(&self, now_us: u64) -> bool {
        self.tat_us.load(Ordering::Relaxed) <= now_us
    }
}

// === impl RetryBudget ===

impl RetryBudget {
    /// Counts one request (a deposit) at `now_s`.
    pub fn deposit(&self, now_s: u64) {
        bump(&self.requests, now_s);
    }

    /// Takes one retry from the budget at `now_s`, or says it is exhausted.
    pub fn withdraw(&self, policy: &RetryPolicy, now_s: u64) -> bool {
        let requests = window_sum(&self.requests, now_s) as f64;
        let retries = window_sum(&self.retries, now_s) as f64;
        let reserve = f64::from(policy.budget_min_per_second) * BUDGET_WINDOW_SECONDS as f64;
        if retries + 1.0 > reserve + policy.budget_ratio * requests {
            return false;
        }
        bump(&self.retries, now_s);
        true
    }
}

/// Each slot packs the second it counts (high 32 bits) and its count (low 32 bits).
fn bump(slots: &[AtomicU64; BUDGET_WINDOW_SECONDS], now_s: u64) {
    let slot = &slots[(now_s % BUDGET_WINDOW_SECONDS as u64) as usize];
    let epoch = now_s & 0xffff_ffff;
    let mut current = slot.load(Ordering::Relaxed);
    loop {
        let next = if current >> 32 == epoch {
            current.saturating_add(1)
        } else {
            (epoch << 32) | 1
        };
        match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
}

fn window_sum(slots: &[AtomicU64; BUDGET_WINDOW_SECONDS], now_s: u64) -> u64 {
    let oldest = now_s.saturating_sub(BUDGET_WINDOW_SECONDS as u64 - 1) & 0xffff_ffff;
    let newest = now_s & 0xffff_ffff;
    slots
        .iter()
        .map(|slot| slot.load(Ordering::Relaxed))
        .filter(|packed| (oldest..=newest).contains(&(packed >> 32)))
        .map(|packed| packed & 0xffff_ffff)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_admits_the_burst_then_the_rate() {
        let limit = RateLimit {
            requests: 10,
            period: Duration::from_secs(1),
            burst: 5,
        };
        let gcra = Gcra::default();
        let t0 = 1_000_000;
        for _ in 0..5 {
            assert!(gcra.admit(&limit, t0).is_ok());
        }
        let wait = gcra.admit(&limit, t0).expect_err("burst spent");
        assert_eq!(wait, Duration::from_millis(100));
        assert!(gcra.admit(&limit, t0 + 100_000).is_ok(), "one token back");
        assert!(gcra.admit(&limit, t0 + 100_000).is_err());
        // Over 10 s at a steady offer of 100/s, ~10/s pass (plus the burst).
        let mut passed = 0;
        for i in 0..1_000u64 {
            passed += u32::from(gcra.admit(&limit, t0 + 200_000 + i * 10_000).is_ok());
        }
        assert!((100..=106).contains(&passed), "{passed}");
        assert!(gcra.is_idle(t0 + 20_000_000));
    }

    #[test]
    fn retry_budget_allows_the_ratio_plus_the_reserve() {
        let policy = RetryPolicy {
            budget_ratio: 0.2,
            budget_min_per_second: 0,
            ..RetryPolicy::default()
        };
        let budget = RetryBudget::default();
        for _ in 0..100 {
            budget.deposit(50);
        }
        let granted = (0..100).filter(|_| budget.withdraw(&policy, 50)).count();
        assert_eq!(granted, 20);
        // Ten seconds later the window has moved past those requests.
        assert!(!budget.withdraw(&policy, 60));
        let reserve = RetryPolicy {
            budget_min_per_second: 1,
            ..policy
        };
        let granted = (0..100).filter(|_| budget.withdraw(&reserve, 70)).count();
        assert_eq!(granted, 10, "1/s over a 10 s window");
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1, 1.0), Duration::from_millis(25));
        assert_eq!(policy.backoff(2, 1.0), Duration::from_millis(50));
        assert_eq!(policy.backoff(9, 1.0), Duration::from_millis(250));
        assert_eq!(policy.backoff(3, 0.5), Duration::from_millis(50));
        assert_eq!(policy.backoff(3, 0.0), Duration::ZERO);
    }
}
