use super::*;

fn request(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
    let mut builder = Request::builder().version(version).uri(uri);
    for host in hosts {
        builder = builder.header(header::HOST, *host);
    }
    builder.body(()).expect("request")
}

/// (version, target, Host headers) → the host or the refusal.
type HostCase = (
    Version,
    &'static str,
    &'static [&'static str],
    Result<&'static str, BadRequest>,
);

#[test]
fn host_comes_from_authority_then_host_header() {
    let cases: &[HostCase] = &[
        (Version::HTTP_11, "/", &["example.com"], Ok("example.com")),
        (
            Version::HTTP_11,
            "/",
            &["Example.COM:8080"],
            Ok("Example.COM:8080"),
        ),
        (Version::HTTP_11, "/", &["[::1]:80"], Ok("[::1]:80")),
        (
            Version::HTTP_11,
            "http://a.example/x",
            &["b.example"],
            Ok("a.example"),
        ),
        (
            Version::HTTP_2,
            "https://grpc.example/svc",
            &[],
            Ok("grpc.example"),
        ),
        (Version::HTTP_11, "/", &[], Err(BadRequest::MissingHost)),
        (Version::HTTP_11, "/", &[""], Err(BadRequest::MissingHost)),
        (Version::HTTP_10, "/", &[], Ok("")),
        (
            Version::HTTP_11,
            "/",
            &["a.example", "b.example"],
            Err(BadRequest::InvalidHost),
        ),
        (
            Version::HTTP_11,
            "/",
            &["bad host"],
            Err(BadRequest::InvalidHost),
        ),
        (
            Version::HTTP_11,
            "/",
            &["user@host"],
            Err(BadRequest::InvalidHost),
        ),
        (
            Version::HTTP_11,
            "/",
            &["host:80x"],
            Err(BadRequest::InvalidHost),
        ),
        (
            Version::HTTP_11,
            "/",
            &["host:"],
            Err(BadRequest::InvalidHost),
        ),
        (
            Version::HTTP_11,
            "/",
            &["[::1"],
            Err(BadRequest::InvalidHost),
        ),
        (
            Version::HTTP_11,
            "/",
            &["[nope]:80"],
            Err(BadRequest::InvalidHost),
        ),
        (
            Version::HTTP_11,
            "/",
            &["a/b"],
            Err(BadRequest::InvalidHost),
        ),
    ];
    for (version, uri, hosts, expected) in cases {
        let req = request(*version, uri, hosts);
        assert_eq!(request_host(&req), *expected, "{version:?} {uri} {hosts:?}");
    }
}

#[test]
fn hop_by_hop_headers_and_connection_named_ones_are_removed() {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("connection", "keep-alive, X-Secret"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("te", "gzip"),
        ("upgrade", "h2c"),
        ("x-secret", "1"),
        ("x-kept", "1"),
        ("proxy-authorization", "Basic x"),
    ] {
        headers.append(name, HeaderValue::from_static(value));
    }
    strip_hop_by_hop(&mut headers, false);
    let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-kept"]);
}

#[test]
fn te_trailers_survives_and_upgrades_keep_their_headers() {
    let mut headers = HeaderMap::new();
    headers.insert("te", HeaderValue::from_static("trailers"));
    strip_hop_by_hop(&mut headers, false);
    assert_eq!(
        headers.get("te").map(|v| v.as_bytes()),
        Some(&b"trailers"[..])
    );

    let mut headers = HeaderMap::new();
    headers.insert(
        "connection",
        HeaderValue::from_static("keep-alive, Upgrade"),
    );
    headers.insert("upgrade", HeaderValue::from_static("websocket"));
    strip_hop_by_hop(&mut headers, true);
    assert_eq!(
        headers.get("upgrade").map(|v| v.as_bytes()),
        Some(&b"websocket"[..])
    );
    assert_eq!(
        headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"upgrade"[..])
    );
}

#[test]
fn upgrade_needs_http11_connection_token_and_upgrade_header() {
    let ws = |version, connection: &str| {
        Request::builder()
            .version(version)
            .header("connection", connection)
            .header("upgrade", "websocket")
            .body(())
            .expect("request")
    };
    assert!(is_upgrade(&ws(Version::HTTP_11, "Upgrade")));
    assert!(is_upgrade(&ws(Version::HTTP_11, "keep-alive, upgrade")));
    assert!(!is_upgrade(&ws(Version::HTTP_11, "keep-alive")));
    assert!(!is_upgrade(&ws(Version::HTTP_10, "upgrade")));
}

#[test]
fn forwarded_headers_replace_what_the_client_sent() {
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
    headers.insert("x-forwarded-host", HeaderValue::from_static("evil"));
    let forwarding = Forwarding::new("10.1.2.3".parse().expect("ip"), "https", 8443, false);
    let fields = forwarded_fields(&headers, &forwarding, "shop.example:8443");
    set_forwarded(&mut headers, &fields);
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    assert_eq!(get("x-forwarded-for"), "10.1.2.3");
    assert_eq!(get("x-real-ip"), "10.1.2.3");
    assert_eq!(get("x-forwarded-proto"), "https");
    assert_eq!(get("x-forwarded-host"), "shop.example:8443");
    assert_eq!(get("x-forwarded-port"), "8443");
    assert_eq!(
        get("forwarded"),
        "for=10.1.2.3;proto=https;host=\"shop.example:8443\""
    );

    let mut headers = HeaderMap::new();
    let forwarding = Forwarding::new("fd00::1".parse().expect("ip"), "http", 80, false);
    let fields = forwarded_fields(&headers, &forwarding, "");
    set_forwarded(&mut headers, &fields);
    assert_eq!(
        headers.get("forwarded").and_then(|v| v.to_str().ok()),
        Some("for=\"[fd00::1]\";proto=http")
    );
    assert!(headers.get("x-forwarded-host").is_none());
}

#[test]
fn one_connection_forwards_each_requests_own_host() {
    // The first host's values are kept per connection; others are rendered each time.
    let forwarding = Forwarding::new("10.0.0.9".parse().expect("ip"), "http", 80, false);
    for host in ["a.example", "b.example", "a.example", "", "b.example"] {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        let fields = forwarded_fields(&headers, &forwarding, host);
        set_forwarded(&mut headers, &fields);
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if host.is_empty() {
            assert_eq!(get("x-forwarded-host"), None);
            assert_eq!(get("forwarded").as_deref(), Some("for=10.0.0.9;proto=http"));
        } else {
            assert_eq!(get("x-forwarded-host").as_deref(), Some(host));
            let forwarded = format!("for=10.0.0.9;proto=http;host=\"{host}\"");
            assert_eq!(get("forwarded"), Some(forwarded));
        }
    }
}

#[test]
fn hop_by_hop_headers_and_those_connection_names_are_removed() {
    let mut headers = HeaderMap::new();
    headers.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-secret"),
    );
    headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    headers.insert("x-secret", HeaderValue::from_static("1"));
    headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    headers.insert("te", HeaderValue::from_static("trailers"));
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    strip_hop_by_hop(&mut headers, false);
    let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    left.sort_unstable();
    assert_eq!(
        left,
        ["content-type", "te"],
        "TE: trailers is kept for gRPC"
    );

    let mut plain = HeaderMap::new();
    plain.insert("x-secret", HeaderValue::from_static("1"));
    strip_hop_by_hop(&mut plain, false);
    assert_eq!(plain.len(), 1, "a header no Connection names stays");
}

proptest::proptest! {
    #[test]
    fn host_validation_never_panics(host in ".{0,40}") {
        let _ = valid_host(&host);
    }
}

/// The header set, sorted, after the `HeaderMap` rewrite the hyper path applies.
fn rewritten(headers: &HeaderMap, fields: &ForwardedFields, host: &str) -> Vec<(String, String)> {
    let mut headers = headers.clone();
    strip_hop_by_hop(&mut headers, false);
    set_forwarded(&mut headers, fields);
    if !headers.contains_key(header::HOST) {
        headers.insert(
            header::HOST,
            HeaderValue::from_str(host).expect("valid host"),
        );
    }
    let mut pairs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_owned()))
        .collect();
    pairs.sort();
    pairs
}

/// The header set, sorted, of the head the inline client writes.
fn encoded(headers: &HeaderMap, fields: &ForwardedFields, host: &str) -> Vec<(String, String)> {
    let mut out = bytes::BytesMut::new();
    encode_upstream_head(&Method::GET, "/x?y", headers, fields, host, &mut out);
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut slots);
    let parsed = request.parse(&out).expect("the head parses");
    assert_eq!(
        parsed,
        httparse::Status::Complete(out.len()),
        "one complete head"
    );
    assert_eq!((request.method, request.path), (Some("GET"), Some("/x?y")));
    let mut pairs: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|h| {
            let value = std::str::from_utf8(h.value).expect("ascii");
            (h.name.to_owned(), value.to_owned())
        })
        .collect();
    pairs.sort();
    pairs
}

const CANDIDATES: [(&str, &str); 19] = [
    ("host", "app.example"),
    ("connection", "keep-alive"),
    ("connection", "x-secret, close"),
    ("connection", "Host"),
    ("x-secret", "1"),
    ("te", "trailers, deflate"),
    ("te", "gzip"),
    ("transfer-encoding", "chunked"),
    ("keep-alive", "timeout=5"),
    ("proxy-authorization", "Basic x"),
    ("x-forwarded-for", "6.6.6.6"),
    ("forwarded", "for=evil"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-for", "7.7.7.7"),
    ("x-request-id", "abc"),
    ("x-forwarded-proto", "https"),
    ("accept", "*/*"),
    ("cookie", "a=1"),
    ("cookie", "b=2"),
];

proptest::proptest! {
    #[test]
    fn the_inline_head_carries_the_same_headers_as_the_rewritten_map(
        chosen in proptest::sample::subsequence(CANDIDATES.to_vec(), 0..CANDIDATES.len()),
        host in proptest::sample::select(vec!["app.example", "", "other.example:8080"]),
        v6 in proptest::bool::ANY,
        trusted in proptest::bool::ANY,
    ) {
        let mut headers = HeaderMap::new();
        for (name, value) in &chosen {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let client = if v6 { "fd00::7" } else { "10.0.0.7" };
        let forwarding = Forwarding::new(client.parse().expect("ip"), "http", 80, trusted);
        let fields = forwarded_fields(&headers, &forwarding, host);
        proptest::prop_assert_eq!(
            encoded(&headers, &fields, host),
            rewritten(&headers, &fields, host)
        );
    }
}

#[test]
fn cookies_are_found_across_pairs_and_header_lines() {
    let mut headers = HeaderMap::new();
    headers.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
    headers.append(
        header::COOKIE,
        HeaderValue::from_static("sticky=\"00ff\";c=3"),
    );
    assert_eq!(cookie(&headers, "a"), Some("1"));
    assert_eq!(cookie(&headers, "b"), Some("2"));
    assert_eq!(cookie(&headers, "sticky"), Some("00ff"));
    assert_eq!(cookie(&headers, "c"), Some("3"));
    assert_eq!(cookie(&headers, "d"), None);
    assert_eq!(cookie(&HeaderMap::new(), "a"), None);
}

#[test]
fn a_trusted_proxy_has_its_forwarding_headers_extended_and_its_request_id_kept() {
    let mut headers = HeaderMap::new();
    headers.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
    headers.append("x-forwarded-for", HeaderValue::from_static("198.51.100.2"));
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    headers.insert("forwarded", HeaderValue::from_static("for=203.0.113.9"));
    headers.insert("x-request-id", HeaderValue::from_static("req-1"));
    let get = |fields: &ForwardedFields, name: &str| {
        let mut map = HeaderMap::new();
        set_forwarded(&mut map, fields);
        map.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let proxy = Forwarding::new("10.0.0.5".parse().expect("ip"), "http", 80, true);
    let trusted = forwarded_fields(&headers, &proxy, "shop.example");
    assert_eq!(
        get(&trusted, "x-forwarded-for").as_deref(),
        Some("203.0.113.9, 198.51.100.2, 10.0.0.5")
    );
    assert_eq!(get(&trusted, "x-real-ip").as_deref(), Some("203.0.113.9"));
    assert_eq!(get(&trusted, "x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        get(&trusted, "forwarded").as_deref(),
        Some("for=203.0.113.9, for=10.0.0.5;proto=http;host=\"shop.example\"")
    );
    assert_eq!(get(&trusted, "x-request-id").as_deref(), Some("req-1"));

    let client = Forwarding::new("10.0.0.5".parse().expect("ip"), "http", 80, false);
    let untrusted = forwarded_fields(&headers, &client, "shop.example");
    assert_eq!(
        get(&untrusted, "x-forwarded-for").as_deref(),
        Some("10.0.0.5")
    );
    assert_eq!(
        get(&untrusted, "x-forwarded-proto").as_deref(),
        Some("http")
    );
    let id = get(&untrusted, "x-request-id").expect("a request ID");
    assert_eq!(id.len(), 32, "a new 128-bit ID: {id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "lowercase hex: {id}"
    );
    assert_ne!(id, "req-1");
    let other = get(&forwarded_fields(&headers, &client, ""), "x-request-id");
    assert_ne!(other.as_deref(), Some(id.as_str()), "a new ID per request");
}
