use std::time::Duration;

use proptest::prelude::*;

use super::*;

#[test]
fn no_keys_give_the_defaults() {
    assert_eq!(route_policy(&[], &[]), Ok(RoutePolicy::default()));
    assert_eq!(service_policy(&[], &[]), Ok(ServicePolicy::default()));
}

#[test]
fn route_keys_are_read() {
    let policy = route_policy(
        &[
            ("retries", "3"),
            ("retry-on", "connect-failure, gateway-error,unavailable,500"),
            ("retry-per-try-timeout", "750ms"),
            ("retry-budget", "10%"),
            ("retry-budget-min-per-second", "0"),
            ("retry-body-limit", "1m"),
            ("rate-limit", "600/m"),
            ("client-rate-limit", "5/s"),
            ("client-rate-limit-burst", "2"),
            ("max-body-size", "8k"),
            ("allow-source-ranges", "10.0.0.0/8, 192.0.2.7"),
        ],
        &[],
    )
    .expect("valid");
    let retry = &policy.retry;
    assert_eq!(retry.retries, 3);
    assert!(retry.on.connect_failure && !retry.on.reset && !retry.on.refused_stream);
    assert_eq!(retry.on.statuses, [500, 502, 503, 504]);
    assert_eq!(retry.on.grpc_statuses, [14]);
    assert_eq!(retry.per_try_timeout, Some(Duration::from_millis(750)));
    assert!((retry.budget_ratio - 0.1).abs() < 1e-9);
    assert_eq!(retry.budget_min_per_second, 0);
    assert_eq!(retry.body_limit, 1 << 20);
    let limit = policy.rate_limit.expect("route limit");
    assert_eq!(
        (limit.requests, limit.period, limit.burst),
        (600, Duration::from_secs(60), 600)
    );
    let client = policy.client_rate_limit.expect("client limit");
    assert_eq!((client.requests, client.burst), (5, 2));
    assert_eq!(policy.max_body_bytes, Some(8192));
    assert_eq!(policy.allow_sources.expect("ranges").len(), 2);
}

#[test]
fn bad_values_name_the_key_and_what_was_expected() {
    let cases: &[(&str, &str, &str)] = &[
        ("retries", "many", "whole number"),
        ("retries", "11", "0..=10"),
        ("retry-on", "5xx,teapot", "unknown condition \"teapot\""),
        ("retry-on", "404", "unknown condition"),
        ("retry-per-try-timeout", "2", "duration"),
        ("retry-per-try-timeout", "0s", "more than zero"),
        ("retry-budget", "150%", "ratio"),
        ("rate-limit", "10/day", "rate like"),
        ("rate-limit", "0/s", "rate like"),
        ("rate-limit-burst", "3", "needs rate-limit"),
        ("max-body-size", "big", "size like"),
        ("allow-source-ranges", "10.0.0.0/33", "not a CIDR"),
        ("retrys", "2", "unknown policy key \"retrys\""),
    ];
    for (key, value, expected) in cases {
        let error = route_policy(&[(key, value)], &[]).expect_err(key);
        assert!(error.contains(expected), "{key}={value}: {error}");
    }
    let error = route_policy(
        &[("retry-backoff", "1s"), ("retry-backoff-max", "10ms")],
        &[],
    );
    assert!(error.expect_err("order").contains("must not be below"));
}

#[test]
fn service_keys_are_read() {
    let policy = service_policy(
        &[
            ("health-check-path", "/healthz"),
            ("health-check-interval", "2s"),
            ("health-check-statuses", "200, 204-204"),
            ("outlier-consecutive-5xx", "5"),
            ("outlier-max-ejection-percent", "50"),
            ("load-balancer", "round-robin"),
        ],
        &["load-balancer"],
    )
    .expect("valid");
    let health = policy.health.expect("health check");
    assert_eq!(&*health.path, "/healthz");
    assert_eq!(health.interval, Duration::from_secs(2));
    assert_eq!(health.timeout, Duration::from_secs(1));
    assert_eq!(
        (health.healthy_threshold, health.unhealthy_threshold),
        (2, 3)
    );
    assert!(health.passes(204) && !health.passes(201) && !health.passes(500));
    assert_eq!(policy.outlier.consecutive_5xx, Some(5));
    assert_eq!(policy.outlier.consecutive_gateway_errors, None);
    assert_eq!(policy.outlier.max_ejection_percent, 50);

    let orphan = service_policy(&[("health-check-interval", "2s")], &[]);
    assert!(
        orphan
            .expect_err("orphan")
            .contains("needs health-check-path")
    );
    let relative = service_policy(&[("health-check-path", "healthz")], &[]);
    assert!(
        relative
            .expect_err("relative")
            .contains("must start with /")
    );
    assert!(
        !health.tls && health.host.is_none(),
        "cleartext by address by default"
    );
    let tls = service_policy(
        &[
            ("health-check-path", "/healthz"),
            ("health-check-scheme", "https"),
            ("health-check-host", "api.internal"),
        ],
        &[],
    )
    .expect("valid")
    .health
    .expect("health check");
    assert!(tls.tls);
    assert_eq!(tls.host.as_deref(), Some("api.internal"));
    let scheme = service_policy(
        &[("health-check-path", "/"), ("health-check-scheme", "tcp")],
        &[],
    );
    assert!(scheme.expect_err("scheme").contains("use http or https"));
    let route_key = service_policy(&[("retries", "2")], &[]);
    assert!(
        route_key
            .expect_err("route key")
            .contains("unknown policy key")
    );
}

proptest! {
    /// Whatever the values, parsing answers (a policy or a message) and never panics.
    #[test]
    fn any_values_parse_or_are_refused(
        values in proptest::collection::vec(".{0,12}", ROUTE_KEYS.len() + SERVICE_KEYS.len()),
    ) {
        let route: Vec<_> = ROUTE_KEYS.iter().copied().zip(values.iter().map(String::as_str)).collect();
        let _ = route_policy(&route, &[]);
        let service: Vec<_> = SERVICE_KEYS.iter().copied().zip(values[ROUTE_KEYS.len()..].iter().map(String::as_str)).collect();
        let _ = service_policy(&service, &[]);
    }
}

#[test]
fn sticky_cookie_and_circuit_breaking_keys() {
    let policy = route_policy(
        &[("affinity", "cookie"), ("session-cookie-max-age", "1h")],
        &[],
    )
    .expect("valid");
    let sticky = policy.sticky.expect("sticky");
    assert_eq!(&*sticky.name, "capstan-affinity");
    assert_eq!(sticky.max_age, Some(Duration::from_secs(3600)));
    let named = route_policy(
        &[("affinity", "cookie"), ("session-cookie-name", "route")],
        &[],
    );
    assert_eq!(
        &*named.expect("valid").sticky.expect("sticky").name,
        "route"
    );
    for (pairs, expected) in [
        (vec![("affinity", "ip")], "is not cookie"),
        (vec![("session-cookie-name", "x")], "needs affinity: cookie"),
        (
            vec![("affinity", "cookie"), ("session-cookie-name", "a b")],
            "is not a cookie name",
        ),
    ] {
        let error = route_policy(&pairs, &[]).expect_err(expected);
        assert!(error.contains(expected), "{error}");
    }
    let service = service_policy(&[("max-requests-per-endpoint", "2")], &[]).expect("valid");
    assert_eq!(service.max_requests_per_endpoint.map(u32::from), Some(2));
    let service = service_policy(&[("max-connections-per-endpoint", "3")], &[]).expect("valid");
    assert_eq!(service.max_connections_per_endpoint.map(u32::from), Some(3));
    let refused = service_policy(&[("max-connections-per-endpoint", "0")], &[]);
    assert!(refused.is_err(), "{refused:?}");
}

#[test]
fn hsts_and_cors_keys() {
    let policy = route_policy(
        &[
            ("hsts-max-age", "8760h"),
            ("hsts-include-subdomains", "true"),
            (
                "cors-allow-origin",
                "https://App.example, http://localhost:3000",
            ),
            ("cors-allow-credentials", "false"),
        ],
        &[],
    )
    .expect("valid");
    assert_eq!(
        policy.hsts.expect("hsts").value(),
        "max-age=31536000; includeSubDomains"
    );
    let cors = policy.cors.expect("cors");
    assert!(cors.allows("https://app.example") && cors.allows("http://localhost:3000"));
    assert!(!cors.allows("https://other.example"));
    assert!(!cors.credentials);
    assert_eq!(cors.max_age, Duration::from_secs(1_728_000));
    let any = route_policy(&[("cors-allow-origin", "*")], &[]).expect("valid");
    assert!(any.cors.expect("cors").allows("https://whatever.example"));
    for (pairs, expected) in [
        (vec![("hsts-preload", "true")], "needs hsts-max-age"),
        (vec![("cors-max-age", "1h")], "needs cors-allow-origin"),
        (
            vec![("cors-allow-origin", "app.example")],
            "is not * or an origin",
        ),
        (vec![("hsts-max-age", "1y")], "duration"),
    ] {
        let error = route_policy(&pairs, &[]).expect_err(expected);
        assert!(error.contains(expected), "{error}");
    }
}

#[test]
fn backend_tls_keys_are_read_and_need_a_tls_protocol() {
    let policy = route_policy(
        &[
            ("backend-protocol", "grpcs"),
            ("backend-tls-server-name", "API.internal."),
            ("backend-tls-verify", "false"),
            ("backend-tls-secret", "upstream-ca"),
        ],
        &[],
    )
    .expect("valid");
    let backend = &policy.backend;
    assert_eq!(backend.protocol, Some(BackendProtocol::Grpcs));
    assert_eq!(backend.tls_server_name.as_deref(), Some("api.internal"));
    assert!(!backend.tls_verify);
    assert_eq!(backend.tls_secret.as_deref(), Some("upstream-ca"));
    assert!(
        RoutePolicy::default().backend.tls_verify,
        "verification is on by default"
    );

    for (pairs, expected) in [
        (
            &[("backend-protocol", "FCGI")][..],
            "use HTTP, HTTPS, GRPC or GRPCS",
        ),
        (
            &[
                ("backend-protocol", "HTTP"),
                ("backend-tls-verify", "false"),
            ][..],
            "backend-tls-verify needs backend-protocol HTTPS or GRPCS",
        ),
        (
            &[("backend-tls-secret", "ca")][..],
            "backend-tls-secret needs backend-protocol",
        ),
        (
            &[
                ("backend-protocol", "HTTPS"),
                ("backend-tls-server-name", "a b"),
            ][..],
            "not a DNS name or an IP address",
        ),
        (
            &[
                ("backend-protocol", "HTTPS"),
                ("backend-tls-secret", "other/ca"),
            ][..],
            "in the same namespace",
        ),
    ] {
        let error = route_policy(pairs, &[]).unwrap_err();
        assert!(error.contains(expected), "{pairs:?}: {error}");
    }
}

#[test]
fn basic_auth_keys_are_read_as_ingress_nginx_names_them() {
    let policy = route_policy(
        &[
            ("auth-type", "basic"),
            ("auth-secret", "users"),
            ("auth-secret-type", "auth-map"),
            ("auth-realm", "Staff"),
        ],
        &[],
    )
    .expect("valid");
    let auth = policy.basic_auth.expect("basic auth");
    assert_eq!(auth.secret.as_deref(), Some("users"));
    assert_eq!(&*auth.realm, "Staff");
    let default = route_policy(&[("auth-type", "basic")], &[]).expect("valid");
    assert_eq!(
        &*default.basic_auth.expect("basic").realm,
        "Authentication Required"
    );
    for (pairs, expected) in [
        (
            &[("auth-secret", "users")][..],
            "auth-secret needs auth-type: basic",
        ),
        (&[("auth-type", "digest")][..], "only basic is supported"),
        (
            &[("auth-type", "basic"), ("auth-secret", "other/users")][..],
            "in the same namespace",
        ),
        (
            &[("auth-type", "basic"), ("auth-realm", "say \"hi\"")][..],
            "must not contain quotes",
        ),
        (
            &[("auth-type", "basic"), ("auth-secret-type", "auth-url")][..],
            "use auth-file or auth-map",
        ),
    ] {
        let error = route_policy(pairs, &[]).unwrap_err();
        assert!(error.contains(expected), "{pairs:?}: {error}");
    }
}

/// The ingress-nginx migration keys become the HTTPRoute filters (`policy/filters.rs`).
#[test]
fn migration_keys_become_route_filters() {
    use capstan_table::PathModifier;
    let policy = route_policy(
        &[
            ("rewrite-target", "/v2"),
            ("request-headers-set", "X-Env: prod\nX-Team: web"),
            ("request-headers-remove", "X-Debug, Cookie"),
            ("response-headers-add", "Cache-Control: no-store"),
            ("request-timeout", "3s"),
        ],
        &[],
    )
    .expect("valid");
    let filters = &policy.filters;
    assert_eq!(
        filters.rewrite,
        Some(PathModifier::ReplacePrefixMatch("/v2".into()))
    );
    let set: Vec<(String, String)> = filters
        .request_headers
        .set
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    assert_eq!(
        set,
        [
            ("x-env".to_owned(), "prod".to_owned()),
            ("x-team".to_owned(), "web".to_owned())
        ]
    );
    assert_eq!(filters.request_headers.remove.len(), 2);
    assert_eq!(filters.response_headers.add.len(), 1);
    assert_eq!(policy.request_timeout, Some(Duration::from_secs(3)));

    let redirect = route_policy(
        &[
            ("permanent-redirect", "https://new.example/"),
            ("permanent-redirect-code", "308"),
        ],
        &[],
    )
    .expect("valid");
    assert_eq!(
        redirect.filters.redirect,
        Some((308, "https://new.example/".into()))
    );
    for (pairs, expected) in [
        (&[("rewrite-target", "/$1")][..], "regex captures"),
        (&[("rewrite-target", "v2")][..], "must start with /"),
        (
            &[("temporal-redirect", "/relative")][..],
            "not an absolute URL",
        ),
        (
            &[("request-headers-set", "no colon here")][..],
            "is not \"Name: value\"",
        ),
        (
            &[("rewrite-target", "/a"), ("rewrite-full-path", "/b")][..],
            "exclude each other",
        ),
    ] {
        let error = route_policy(pairs, &[]).unwrap_err();
        assert!(error.contains(expected), "{pairs:?}: {error}");
    }
}
