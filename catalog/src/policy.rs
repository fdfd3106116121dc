//! Traffic policy keys → [`RoutePolicy`] and [`ServicePolicy`]: one vocabulary for Ingress and
//! Service annotations (`capstan.dev/<key>`) and `capstan.yaml` `policy:` maps (`<key>`). Every
//! value is checked; the first bad one is refused with the key and what was expected.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use capstan_table::{
    ActiveHealthCheck, BackendPolicy, BackendProtocol, BasicAuthPolicy, Cors, Hsts, OutlierPolicy,
    RateLimit, RetryOn, RoutePolicy, StickyCookie,
};

/// The prefix of Capstan's annotations.
pub const ANNOTATION_PREFIX: &str = "capstan.dev/";

/// Per-Service policy: health checks and outlier ejection of its endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePolicy {
    pub health: Option<Arc<ActiveHealthCheck>>,
    pub outlier: OutlierPolicy,
    /// Circuit breaking: requests in flight per endpoint at most.
    pub max_requests_per_endpoint: Option<NonZeroU32>,
    /// Circuit breaking on the L4 path: connections open per endpoint at most.
    pub max_connections_per_endpoint: Option<NonZeroU32>,
}

/// Keys of a route's (an Ingress's) policy.
pub const ROUTE_KEYS: &[&str] = &[
    "retries",
    "retry-on",
    "retry-per-try-timeout",
    "retry-backoff",
    "retry-backoff-max",
    "retry-budget",
    "retry-budget-min-per-second",
    "retry-body-limit",
    "retry-non-idempotent",
    "rate-limit",
    "rate-limit-burst",
    "client-rate-limit",
    "client-rate-limit-burst",
    "max-body-size",
    "allow-source-ranges",
    "affinity",
    "session-cookie-name",
    "session-cookie-max-age",
    "hsts-max-age",
    "hsts-include-subdomains",
    "hsts-preload",
    "cors-allow-origin",
    "cors-allow-methods",
    "cors-allow-headers",
    "cors-allow-credentials",
    "cors-max-age",
    "backend-protocol",
    "backend-tls-server-name",
    "backend-tls-verify",
    "backend-tls-secret",
    "auth-type",
    "auth-secret",
    "auth-secret-type",
    "auth-realm",
    "rewrite-target",
    "rewrite-full-path",
    "permanent-redirect",
    "permanent-redirect-code",
    "temporal-redirect",
    "request-headers-set",
    "request-headers-add",
    "request-headers-remove",
    "response-headers-set",
    "response-headers-add",
    "response-headers-remove",
    "request-timeout",
];

/// Keys of a Service's policy (besides `load-balancer`).
pub const SERVICE_KEYS: &[&str] = &[
    "health-check-path",
    "health-check-interval",
    "health-check-timeout",
    "health-check-healthy-threshold",
    "health-check-unhealthy-threshold",
    "health-check-statuses",
    "health-check-scheme",
    "health-check-host",
    "outlier-consecutive-5xx",
    "outlier-consecutive-gateway-errors",
    "outlier-max-ejection-percent",
    "max-requests-per-endpoint",
    "max-connections-per-endpoint",
];

type Keys<'a> = &'a [(&'a str, &'a str)];

/// A route policy from `(key, value)` pairs (keys without the prefix). Unknown keys are refused
/// (a typo must not silently turn a policy off); `known` lists keys another part of the object
/// reads.
pub fn route_policy(pairs: Keys<'_>, known: &[&str]) -> Result<RoutePolicy, String> {
    check_keys(pairs, ROUTE_KEYS, known)?;
    let mut policy = RoutePolicy::default();
    let retry = &mut policy.retry;
    if let Some(v) = get(pairs, "retries") {
        retry.retries = number(v, "retries", 0..=10)?;
    }
    if let Some(v) = get(pairs, "retry-on") {
        retry.on = retry_on(v)?;
    }
    retry.per_try_timeout = get(pairs, "retry-per-try-timeout")
        .map(|v| duration(v, "retry-per-try-timeout"))
        .transpose()?;
    if let Some(v) = get(pairs, "retry-backoff") {
        retry.backoff_base = duration(v, "retry-backoff")?;
    }
    if let Some(v) = get(pairs, "retry-backoff-max") {
        retry.backoff_max = duration(v, "retry-backoff-max")?;
    }
    if retry.backoff_max < retry.backoff_base {
        return Err("retry-backoff-max must not be below retry-backoff".into());
    }
    if let Some(v) = get(pairs, "retry-budget") {
        retry.budget_ratio = ratio(v, "retry-budget")?;
    }
    if let Some(v) = get(pairs, "retry-budget-min-per-second") {
        retry.budget_min_per_second = number(v, "retry-budget-min-per-second", 0..=10_000)?;
    }
    if let Some(v) = get(pairs, "retry-body-limit") {
        retry.body_limit = size(v, "retry-body-limit")?;
    }
    if let Some(v) = get(pairs, "retry-non-idempotent") {
        retry.non_idempotent = boolean(v, "retry-non-idempotent")?;
    }
    policy.rate_limit = rate_limit(pairs, "rate-limit")?;
    policy.client_rate_limit = rate_limit(pairs, "client-rate-limit")?;
    policy.max_body_bytes = get(pairs, "max-body-size")
        .map(|v| size(v, "max-body-size"))
        .transpose()?;
    if let Some(v) = get(pairs, "allow-source-ranges") {
        let ranges = v
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| {
                r.parse::<ipnet::IpNet>()
                    .or_else(|_| r.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("allow-source-ranges: {r:?} is not a CIDR"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        policy.allow_sources = Some(ranges.into());
    }
    policy.sticky = sticky_cookie(pairs)?;
    policy.hsts = hsts(pairs)?;
    policy.cors = cors(pairs)?;
    policy.backend = backend(pairs)?;
    policy.basic_auth = basic_auth(pairs)?;
    (policy.filters, policy.request_timeout) = filters::route_filters(pairs)?;
    Ok(policy)
}

/// A Service policy from `(key, value)` pairs (keys without the prefix).
pub fn service_policy(pairs: Keys<'_>, known: &[&str]) -> Result<ServicePolicy, String> {
    check_keys(pairs, SERVICE_KEYS, known)?;
    let mut policy = ServicePolicy::default();
    if let Some(path) = get(pairs, "health-check-path") {
        if !path.starts_with('/') {
            return Err(format!("health-check-path {path:?} must start with /"));
        }
        let interval = match get(pairs, "health-check-interval") {
            Some(v) => duration(v, "health-check-interval")?,
            None => Duration::from_secs(5),
        };
        let timeout = match get(pairs, "health-check-timeout") {
            Some(v) => duration(v, "health-check-timeout")?,
            None => Duration::from_secs(1).min(interval),
        };
        let threshold = |key: &str, default: u32| {
            get(pairs, key).map_or(Ok(default), |v| number(v, key, 1..=100))
        };
        let statuses = match get(pairs, "health-check-statuses") {
            Some(v) => status_ranges(v)?,
            None => vec![(200, 399)],
        };
        policy.health = Some(Arc::new(ActiveHealthCheck {
            path: Arc::from(path),
            interval,
            timeout,
            healthy_threshold: threshold("health-check-healthy-threshold", 2)?,
            unhealthy_threshold: threshold("health-check-unhealthy-threshold", 3)?,
            statuses,
            tls: match get(pairs, "health-check-scheme") {
                None | Some("http") => false,
                Some("https") => true,
                Some(other) => {
                    return Err(format!("health-check-scheme {other:?}: use http or https"));
                }
            },
            host: get(pairs, "health-check-host").map(Arc::from),
        }));
    } else if let Some((key, _)) = pairs.iter().find(|(k, _)| k.starts_with("health-check-")) {
        return Err(format!("{key} needs health-check-path"));
    }
    let outlier = &mut policy.outlier;
    outlier.consecutive_5xx = get(pairs, "outlier-consecutive-5xx")
        .map(|v| number(v, "outlier-consecutive-5xx", 1..=1_000))
        .transpose()?;
    outlier.consecutive_gateway_errors = get(pairs, "outlier-consecutive-gateway-errors")
        .map(|v| number(v, "outlier-consecutive-gateway-errors", 1..=1_000))
        .transpose()?;
    if let Some(v) = get(pairs, "outlier-max-ejection-percent") {
        outlier.max_ejection_percent = number(v, "outlier-max-ejection-percent", 0..=100)?;
    }
    let limit = |key: &str| -> Result<Option<NonZeroU32>, String> {
        get(pairs, key)
            .map(|v| number(v, key, 1..=1_000_000).map(NonZeroU32::new))
            .transpose()
            .map(Option::flatten)
    };
    policy.max_requests_per_endpoint = limit("max-requests-per-endpoint")?;
    policy.max_connections_per_endpoint = limit("max-connections-per-endpoint")?;
    Ok(policy)
}

/// The `capstan.dev/*` annotations of an object, prefix removed.
pub fn capstan_annotations<'a>(
    annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(&'a str, &'a str)> {
    annotations
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(ANNOTATION_PREFIX)?, v.as_str())))
        .collect()
}

fn check_keys(pairs: Keys<'_>, keys: &[&str], known: &[&str]) -> Result<(), String> {
    match pairs
        .iter()
        .find(|(k, _)| !keys.contains(k) && !known.contains(k))
    {
        Some((key, _)) => Err(format!(
            "unknown policy key {key:?} (known: {})",
            keys.iter()
                .chain(known)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => Ok(()),
    }
}

fn get<'a>(pairs: Keys<'a>, key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.trim())
}

fn number<T>(value: &str, key: &str, range: std::ops::RangeInclusive<T>) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    value
        .parse::<T>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            format!(
                "{key}: {value:?} is not a whole number in {}..={}",
                range.start(),
                range.end()
            )
        })
}

fn boolean(value: &str, key: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{key}: {value:?} is not true or false")),
    }
}

/// `250ms`, `2s`, `1m`, `1h`.
pub fn duration(value: &str, key: &str) -> Result<Duration, String> {
    let bad = || format!("{key}: {value:?} is not a duration like 250ms, 2s or 1m");
    let split = value.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = value.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if duration.is_zero() {
        return Err(format!("{key}: must be more than zero"));
    }
    Ok(duration)
}

/// Bytes, optionally with `k`, `m` or `g` (powers of 1024, as ingress-nginx reads them).
fn size(value: &str, key: &str) -> Result<u64, String> {
    let lower = value.to_ascii_lowercase();
    let (digits, shift) = match lower.as_bytes().last() {
        Some(b'k') => (&lower[..lower.len() - 1], 10),
        Some(b'm') => (&lower[..lower.len() - 1], 20),
        Some(b'g') => (&lower[..lower.len() - 1], 30),
        _ => (lower.as_str(), 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{key}: {value:?} is not a size like 65536, 64k or 1m"))
}

/// `20%` or `0.2`, in 0..=1.
fn ratio(value: &str, key: &str) -> Result<f64, String> {
    let parsed = match value.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
        None => value.parse::<f64>(),
    };
    parsed
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("{key}: {value:?} is not a ratio like 20% or 0.2"))
}

/// `affinity: cookie` with `session-cookie-name` (default `capstan-affinity`, an RFC 6265 token)
/// and `session-cookie-max-age`.
fn sticky_cookie(pairs: Keys<'_>) -> Result<Option<StickyCookie>, String> {
    match get(pairs, "affinity") {
        Some("cookie") => {}
        Some(other) => return Err(format!("affinity: {other:?} is not cookie")),
        None => {
            return match pairs.iter().find(|(k, _)| k.starts_with("session-cookie-")) {
                Some((key, _)) => Err(format!("{key} needs affinity: cookie")),
                None => Ok(None),
            };
        }
    }
    let name = get(pairs, "session-cookie-name").unwrap_or("capstan-affinity");
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!(
            "session-cookie-name: {name:?} is not a cookie name (letters, digits, -_.)"
        ));
    }
    let max_age = get(pairs, "session-cookie-max-age")
        .map(|v| duration(v, "session-cookie-max-age"))
        .transpose()?;
    Ok(Some(StickyCookie {
        name: Arc::from(name),
        max_age,
    }))
}

/// `hsts-max-age` turns HSTS on; `hsts-include-subdomains` and `hsts-preload` add directives.
/// `backend-protocol` and `backend-tls-*`: ingress-nginx's `backend-protocol`, `proxy-ssl-name`,
/// `proxy-ssl-verify` and `proxy-ssl-secret`, with verification on by default.
fn backend(pairs: Keys<'_>) -> Result<BackendPolicy, String> {
    let mut backend = BackendPolicy::default();
    if let Some(v) = get(pairs, "backend-protocol") {
        backend.protocol = Some(match v.trim().to_ascii_uppercase().as_str() {
            "HTTP" => BackendProtocol::Http,
            "HTTPS" => BackendProtocol::Https,
            "GRPC" => BackendProtocol::Grpc,
            "GRPCS" => BackendProtocol::Grpcs,
            _ => {
                return Err(format!(
                    "backend-protocol {v:?}: use HTTP, HTTPS, GRPC or GRPCS"
                ));
            }
        });
    }
    if let Some(v) = get(pairs, "backend-tls-server-name") {
        let name = v.trim().trim_end_matches('.');
        if rustls_pki_types::ServerName::try_from(name).is_err() {
            return Err(format!(
                "backend-tls-server-name {v:?} is not a DNS name or an IP address"
            ));
        }
        backend.tls_server_name = Some(name.to_ascii_lowercase().into());
    }
    if let Some(v) = get(pairs, "backend-tls-verify") {
        backend.tls_verify = boolean(v, "backend-tls-verify")?;
    }
    if let Some(v) = get(pairs, "backend-tls-secret") {
        let name = v.trim();
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "backend-tls-secret {v:?}: name a kubernetes.io/tls Secret in the same namespace"
            ));
        }
        backend.tls_secret = Some(name.into());
    }
    let tls = backend.protocol.is_some_and(BackendProtocol::is_tls);
    let tls_key = pairs.iter().find(|(k, _)| k.starts_with("backend-tls-"));
    if let Some((key, _)) = tls_key
        && !tls
    {
        return Err(format!(
            "{key} needs backend-protocol HTTPS or GRPCS (the endpoints are spoken to in cleartext)"
        ));
    }
    Ok(backend)
}

/// `auth-type: basic` with `auth-secret` (a Secret's name) and `auth-realm`, as ingress-nginx
/// reads them; `auth-secret-type` (`auth-file` or `auth-map`) is accepted, and the Secret's shape
/// decides. Without `auth-secret` the users come from elsewhere (`capstan.yaml`'s `auth-file`).
fn basic_auth(pairs: Keys<'_>) -> Result<Option<BasicAuthPolicy>, String> {
    let kind = get(pairs, "auth-type").map(str::trim);
    match kind {
        None => {
            if let Some((key, _)) = pairs.iter().find(|(k, _)| k.starts_with("auth-")) {
                return Err(format!("{key} needs auth-type: basic"));
            }
            return Ok(None);
        }
        Some("basic") => {}
        Some(other) => return Err(format!("auth-type {other:?}: only basic is supported")),
    }
    if let Some(v) = get(pairs, "auth-secret-type")
        && !matches!(v.trim(), "auth-file" | "auth-map")
    {
        return Err(format!("auth-secret-type {v:?}: use auth-file or auth-map"));
    }
    let secret = match get(pairs, "auth-secret").map(str::trim) {
        Some(name) if name.is_empty() || name.contains('/') => {
            return Err(format!(
                "auth-secret {name:?}: name a Secret in the same namespace"
            ));
        }
        name => name.map(Arc::from),
    };
    let realm = get(pairs, "auth-realm").unwrap_or("Authentication Required");
    if realm.contains(['"', '\\']) || realm.contains(char::is_control) {
        return Err("auth-realm must not contain quotes, backslashes or control characters".into());
    }
    Ok(Some(BasicAuthPolicy {
        secret,
        file: None,
        realm: realm.into(),
    }))
}

fn hsts(pairs: Keys<'_>) -> Result<Option<Hsts>, String> {
    let flag = |key: &str| get(pairs, key).map_or(Ok(false), |v| boolean(v, key));
    let Some(max_age) = get(pairs, "hsts-max-age") else {
        return match pairs.iter().find(|(k, _)| k.starts_with("hsts-")) {
            Some((key, _)) => Err(format!("{key} needs hsts-max-age")),
            None => Ok(None),
        };
    };
    Ok(Some(Hsts {
        max_age: duration(max_age, "hsts-max-age")?,
        include_subdomains: flag("hsts-include-subdomains")?,
        preload: flag("hsts-preload")?,
    }))
}

/// `cors-allow-origin` turns CORS on (`*` or `https://a.example, https://b.example`); the other
/// keys default as ingress-nginx's do.
fn cors(pairs: Keys<'_>) -> Result<Option<Cors>, String> {
    let Some(origins) = get(pairs, "cors-allow-origin") else {
        return match pairs.iter().find(|(k, _)| k.starts_with("cors-")) {
            Some((key, _)) => Err(format!("{key} needs cors-allow-origin")),
            None => Ok(None),
        };
    };
    let mut allowed = Vec::new();
    for origin in origins.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        if origin == "*" {
            allowed.clear();
            break;
        }
        let valid = origin.split_once("://").is_some_and(|(scheme, host)| {
            matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/')
        });
        if !valid {
            return Err(format!(
                "cors-allow-origin: {origin:?} is not * or an origin like https://app.example"
            ));
        }
        allowed.push(Arc::from(origin.to_ascii_lowercase()));
    }
    let header_list = |key: &str, default: &str| -> Result<Arc<str>, String> {
        let value = get(pairs, key).unwrap_or(default);
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(format!("{key}: {value:?} is not a comma-separated list"));
        }
        Ok(Arc::from(value))
    };
    Ok(Some(Cors {
        origins: allowed,
        methods: header_list(
            "cors-allow-methods",
            "GET, PUT, POST, DELETE, PATCH, OPTIONS",
        )?,
        headers: header_list(
            "cors-allow-headers",
            "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization",
        )?,
        credentials: get(pairs, "cors-allow-credentials")
            .map_or(Ok(true), |v| boolean(v, "cors-allow-credentials"))?,
        max_age: match get(pairs, "cors-max-age") {
            Some(v) => duration(v, "cors-max-age")?,
            None => Duration::from_secs(1_728_000),
        },
    }))
}

/// `100/s`, `600/m` or `1000/h`, with `<key>-burst` (default: one period's requests).
fn rate_limit(pairs: Keys<'_>, key: &str) -> Result<Option<RateLimit>, String> {
    let burst_key = format!("{key}-burst");
    let Some(value) = get(pairs, key) else {
        return match get(pairs, &burst_key) {
            Some(_) => Err(format!("{burst_key} needs {key}")),
            None => Ok(None),
        };
    };
    let bad = || format!("{key}: {value:?} is not a rate like 100/s, 600/m or 1000/h");
    let (count, unit) = value.split_once('/').ok_or_else(bad)?;
    let requests: u32 = count
        .trim()
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(bad)?;
    let period = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    let burst = match get(pairs, &burst_key) {
        Some(v) => number(v, &burst_key, 1..=1_000_000)?,
        None => requests,
    };
    Ok(Some(RateLimit {
        requests,
        period,
        burst,
    }))
}

/// Envoy's `retry_on` names, plus status codes: `connect-failure`, `refused-stream`, `reset`,
/// `gateway-error` (502, 503, 504), `5xx`, `500`…`599`, and gRPC's `cancelled`,
/// `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`.
fn retry_on(value: &str) -> Result<RetryOn, String> {
    let mut on = RetryOn {
        connect_failure: false,
        refused_stream: false,
        reset: false,
        statuses: vec![],
        grpc_statuses: vec![],
    };
    for condition in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match condition {
            "connect-failure" => on.connect_failure = true,
            "refused-stream" => on.refused_stream = true,
            "reset" => on.reset = true,
            "gateway-error" => on.statuses.extend([502, 503, 504]),
            "5xx" => on.statuses.extend(500..=599),
            "cancelled" => on.grpc_statuses.push(1),
            "deadline-exceeded" => on.grpc_statuses.push(4),
            "resource-exhausted" => on.grpc_statuses.push(8),
            "internal" => on.grpc_statuses.push(13),
            "unavailable" => on.grpc_statuses.push(14),
            code => match code.parse::<u16>() {
                Ok(status) if (500..=599).contains(&status) => on.statuses.push(status),
                _ => {
                    return Err(format!(
                        "retry-on: unknown condition {code:?} (connect-failure, refused-stream, \
                         reset, gateway-error, 5xx, 500-599, cancelled, deadline-exceeded, \
                         internal, resource-exhausted, unavailable)"
                    ));
                }
            },
        }
    }
    on.statuses.sort_unstable();
    on.statuses.dedup();
    on.grpc_statuses.sort_unstable();
    on.grpc_statuses.dedup();
    Ok(on)
}

/// `200`, `200-299`, comma-separated.
fn status_ranges(value: &str) -> Result<Vec<(u16, u16)>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            let (low, high) = r.split_once('-').unwrap_or((r, r));
            match (low.trim().parse::<u16>(), high.trim().parse::<u16>()) {
                (Ok(low), Ok(high)) if (100..=599).contains(&low) && low <= high && high <= 599 => {
                    Ok((low, high))
                }
                _ => Err(format!(
                    "health-check-statuses: {r:?} is not a status or range like 200-399"
                )),
            }
        })
        .collect()
}

mod filters;
#[cfg(test)]
mod tests;
