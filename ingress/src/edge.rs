//! Response headers a route's policy adds at the edge: CORS (preflights answered here, allowed
//! origins marked on responses) and HSTS (on TLS responses only, RFC 6797 §7.2).

use capstan_table::{Cors, RoutePolicy};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode};

/// The `Origin` of a cross-origin request, when the route answers CORS.
pub(crate) fn origin<B>(policy: &RoutePolicy, request: &Request<B>) -> Option<HeaderValue> {
    policy.cors.as_ref()?;
    request.headers().get(header::ORIGIN).cloned()
}

/// A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
/// origin: the headers of the 204 answer. Anything else goes upstream.
pub(crate) fn preflight<B>(policy: &RoutePolicy, request: &Request<B>) -> Option<HeaderMap> {
    let cors = policy.cors.as_ref()?;
    let headers = request.headers();
    if request.method() != Method::OPTIONS
        || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?;
    if !cors.allows(origin.to_str().ok()?) {
        return None;
    }
    let mut answer = HeaderMap::new();
    allow_origin(cors, origin, &mut answer);
    let value = |text: &str| HeaderValue::from_str(text).ok();
    if let Some(methods) = value(&cors.methods) {
        answer.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
    }
    if let Some(allowed) = value(&cors.headers) {
        answer.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed);
    }
    answer.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(cors.max_age.as_secs()),
    );
    Some(answer)
}

/// Adds the route's edge headers to an upstream response.
pub(crate) fn decorate(
    policy: &RoutePolicy,
    tls: bool,
    origin: Option<&HeaderValue>,
    headers: &mut HeaderMap,
) {
    if let (Some(cors), Some(origin)) = (&policy.cors, origin)
        && origin.to_str().is_ok_and(|o| cors.allows(o))
    {
        allow_origin(cors, origin, headers);
    }
    if tls
        && let Some(hsts) = &policy.hsts
        && let Ok(value) = HeaderValue::from_str(&hsts.value())
    {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, value);
    }
}

/// `Access-Control-Allow-Origin`: `*` for any origin without credentials, else the origin
/// itself (with `Vary: Origin`), as the Fetch standard requires with credentials.
fn allow_origin(cors: &Cors, origin: &HeaderValue, headers: &mut HeaderMap) {
    if cors.origins.is_empty() && !cors.credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        return;
    }
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if cors.credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// The status of a preflight answer.
pub(crate) const PREFLIGHT_STATUS: StatusCode = StatusCode::NO_CONTENT;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use capstan_table::Hsts;

    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> RoutePolicy {
        RoutePolicy {
            cors: Some(Cors {
                origins: origins.iter().map(|o| Arc::from(*o)).collect(),
                methods: Arc::from("GET, POST"),
                headers: Arc::from("Content-Type"),
                credentials,
                max_age: Duration::from_secs(600),
            }),
            hsts: Some(Hsts {
                max_age: Duration::from_secs(31_536_000),
                include_subdomains: true,
                preload: false,
            }),
            ..RoutePolicy::default()
        }
    }

    fn options(origin: &str) -> Request<()> {
        Request::builder()
            .method(Method::OPTIONS)
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(())
            .expect("request")
    }

    #[test]
    fn preflights_from_allowed_origins_are_answered_here() {
        let policy = policy(&["https://app.example"], true);
        let answer = preflight(&policy, &options("https://app.example")).expect("answered");
        assert_eq!(
            answer[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(answer[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(preflight(&policy, &options("https://evil.example")).is_none());
        let plain = Request::builder()
            .method(Method::OPTIONS)
            .body(())
            .expect("request");
        assert!(preflight(&policy, &plain).is_none(), "not a preflight");
        assert!(preflight(&RoutePolicy::default(), &options("https://app.example")).is_none());
    }

    #[test]
    fn responses_get_cors_for_allowed_origins_and_hsts_over_tls_only() {
        let policy = policy(&[], false);
        let origin = HeaderValue::from_static("https://any.example");
        let mut headers = HeaderMap::new();
        decorate(&policy, false, Some(&origin), &mut headers);
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(
            !headers.contains_key(header::STRICT_TRANSPORT_SECURITY),
            "not over plain HTTP"
        );
        let mut headers = HeaderMap::new();
        decorate(&policy, true, None, &mut headers);
        assert_eq!(
            headers[header::STRICT_TRANSPORT_SECURITY],
            "max-age=31536000; includeSubDomains"
        );
        assert!(
            !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            "same-origin"
        );
    }
}
