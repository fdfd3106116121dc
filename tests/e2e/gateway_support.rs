//! The Gateway API conformance setup, re-expressed: the upstream suite's base manifests
//! (`conformance/base/manifests.yaml` of kubernetes-sigs/gateway-api: its namespaces, Gateways and
//! backend Services) with real echo backends behind the Services, Capstan started on them from
//! manifest files, and the suite's request/expectation vocabulary (`conformance/utils/http`).
//! Each test adds the upstream test's own manifest, copied unchanged into `gateway_conformance/`
//! (Apache-2.0, gateway-api commit 4564255ac2c3), with `{GATEWAY_CLASS_NAME}` set to `capstan`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::http_support::{HttpBackend, TestCert, curl};
use crate::support::kube_api::FakeApi;
use crate::support::{Capstan, TempDir, eventually, path_str};

/// `conformance/base/manifests.yaml`: the namespaces and Gateways (the TLS one's Secret is
/// generated at test time). Services and endpoints are written by [`Conformance::start`].
const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: capstan}
spec: {controllerName: capstan.dev/gateway-controller}
---
apiVersion: v1
kind: Namespace
metadata:
  name: gateway-conformance-infra
  labels:
    gateway-conformance: infra
---
apiVersion: v1
kind: Namespace
metadata:
  name: gateway-conformance-app-backend
  labels:
    gateway-conformance: backend
---
apiVersion: v1
kind: Namespace
metadata:
  name: gateway-conformance-web-backend
  labels:
    gateway-conformance: backend
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: same-namespace
  namespace: gateway-conformance-infra
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
    - name: http
      port: 80
      protocol: HTTP
      allowedRoutes:
        namespaces:
          from: Same
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: same-namespace-with-https-listener
  namespace: gateway-conformance-infra
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
    - name: https
      port: 443
      protocol: HTTPS
      allowedRoutes:
        namespaces:
          from: Same
      tls:
        certificateRefs:
          - group: ""
            kind: Secret
            name: tls-validity-checks-certificate
            namespace: gateway-conformance-infra
    - name: https-with-hostname
      port: 443
      hostname: second-example.org
      protocol: HTTPS
      allowedRoutes:
        namespaces:
          from: Same
      tls:
        certificateRefs:
          - group: ""
            kind: Secret
            name: tls-validity-checks-certificate
            namespace: gateway-conformance-infra
    - name: https-with-wildcard-hostname
      port: 443
      hostname: "*.wildcard.org"
      protocol: HTTPS
      allowedRoutes:
        namespaces:
          from: Same
      tls:
        certificateRefs:
          - group: ""
            kind: Secret
            name: tls-validity-checks-certificate
            namespace: gateway-conformance-infra
    - name: https-with-hostname-matching-wildcard
      port: 443
      hostname: "fourth-example.wildcard.org"
      protocol: HTTPS
      allowedRoutes:
        namespaces:
          from: Same
      tls:
        certificateRefs:
          - group: ""
            kind: Secret
            name: tls-validity-checks-certificate
            namespace: gateway-conformance-infra
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: all-namespaces
  namespace: gateway-conformance-infra
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
    - name: http
      port: 80
      protocol: HTTP
      allowedRoutes:
        namespaces:
          from: All
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: backend-namespaces
  namespace: gateway-conformance-infra
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
    - name: http
      port: 80
      protocol: HTTP
      allowedRoutes:
        namespaces:
          from: Selector
          selector:
            matchLabels:
              gateway-conformance: backend
"#;

/// The base's backend Services: `(namespace, name)`; the `grpc-` ones have
/// `appProtocol: kubernetes.io/h2c`, as upstream.
const BACKENDS: [(&str, &str); 9] = [
    ("gateway-conformance-infra", "infra-backend-v1"),
    ("gateway-conformance-infra", "infra-backend-v2"),
    ("gateway-conformance-infra", "infra-backend-v3"),
    ("gateway-conformance-app-backend", "app-backend-v1"),
    ("gateway-conformance-app-backend", "app-backend-v2"),
    ("gateway-conformance-web-backend", "web-backend"),
    ("gateway-conformance-infra", "grpc-infra-backend-v1"),
    ("gateway-conformance-infra", "grpc-infra-backend-v2"),
    ("gateway-conformance-infra", "grpc-infra-backend-v3"),
];

pub(crate) const INFRA: &str = "gateway-conformance-infra";
const WEB: &str = "gateway-conformance-web-backend";

/// A `/24` of loopback addresses for this test's Gateways (`--gateway-addresses`), apart from
/// [`crate::support::unique_ip`]'s `127.100.0.0/10`.
fn gateway_range() -> String {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let ip = Ipv4Addr::new(127, 10 + (pid % 80) as u8, n, 0);
    format!("{ip}/24")
}

/// Capstan serving the conformance base plus a test's manifests, and the echo backends.
pub(crate) struct Conformance {
    pub(crate) capstan: Capstan,
    pub(crate) dir: TempDir,
    /// By Service name.
    backends: Vec<(&'static str, HttpBackend)>,
    pub(crate) cert: TestCert,
}

/// One request of a test case (`conformance/utils/http.Request`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Req {
    pub(crate) method: &'static str,
    /// Empty: the Gateway's address, as the suite sends.
    pub(crate) host: &'static str,
    pub(crate) path: &'static str,
    pub(crate) headers: Vec<(&'static str, &'static str)>,
}

/// What came back: the status, the backend that answered (from the echo body), the request
/// line and headers it saw, and the response headers.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) backend: Option<String>,
    /// `METHOD target` as the backend received it.
    pub(crate) request_line: String,
    /// Request headers as the backend received them, lowercase names.
    pub(crate) seen: BTreeMap<String, Vec<String>>,
    /// Response headers, lowercase names.
    pub(crate) response: BTreeMap<String, Vec<String>>,
}

pub(crate) fn get(path: &'static str) -> Req {
    Req {
        method: "GET",
        path,
        ..Req::default()
    }
}

impl Req {
    pub(crate) fn host(mut self, host: &'static str) -> Self {
        self.host = host;
        self
    }

    pub(crate) fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    pub(crate) fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }
}

impl Conformance {
    /// Starts the backends and Capstan over the base and `manifests` (upstream file names in
    /// `gateway_conformance/`), from manifest files.
    pub(crate) fn start(name: &str, manifests: &[&str]) -> Self {
        let dir = TempDir::new(name);
        let (base, secret, backends, cert) = base_manifests();
        dir.write("base.yaml", &base);
        dir.write(TLS_SECRET_FILE, &secret);
        for file in manifests {
            dir.write(file, &class_name(&conformance_manifest(file)));
        }
        let range = gateway_range();
        let capstan = Capstan::start(&[
            "--manifests",
            path_str(&dir.0),
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--gateway-addresses",
            &range,
        ]);
        Self {
            capstan,
            dir,
            backends,
            cert,
        }
    }

    /// The same through the Kubernetes API: the objects applied to the fake API server (with
    /// the Gateway API group installed), Capstan watching it and writing status back.
    pub(crate) fn start_kube(api: &FakeApi, name: &str, manifests: &[&str]) -> Self {
        let dir = TempDir::new(name);
        let (base, secret, backends, cert) = base_manifests();
        api.install_gateway_api();
        api.apply_yaml(&base);
        api.apply_yaml(&secret);
        for file in manifests {
            api.apply_yaml(&class_name(&conformance_manifest(file)));
        }
        let kubeconfig = dir.write("kubeconfig", &api.kubeconfig());
        let range = gateway_range();
        let capstan = Capstan::start(&[
            "--kubeconfig",
            path_str(&kubeconfig),
            "--capture",
            "bind",
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--gateway-addresses",
            &range,
        ]);
        Self {
            capstan,
            dir,
            backends,
            cert,
        }
    }

    /// The echo server behind the base's Service `name`.
    pub(crate) fn backend(&self, name: &str) -> &HttpBackend {
        let found = self.backends.iter().find(|(n, _)| *n == name);
        &found.unwrap_or_else(|| panic!("no backend {name}")).1
    }

    /// The object's status stanza from `/debug/snapshot`.
    pub(crate) fn status(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let snapshot = self.capstan.snapshot();
        let list = snapshot["gateway"]["status"].as_array()?.clone();
        list.into_iter()
            .find(|s| s["kind"] == kind && s["namespace"] == namespace && s["name"] == name)
            .map(|s| s["status"].clone())
    }

    /// `GatewayAndHTTPRoutesMustBeAccepted`: waits until the Gateway is Programmed with an
    /// address, its sockets listen, and each route is Accepted by it; returns the address.
    pub(crate) fn gateway_must_accept(&self, gateway: &str, routes: &[(&str, &str)]) -> IpAddr {
        let found = eventually(Duration::from_secs(15), || {
            let status = self.status("Gateway", INFRA, gateway)?;
            condition_true(&status["conditions"], "Programmed").then_some(())?;
            let ip: IpAddr = status["addresses"][0]["value"].as_str()?.parse().ok()?;
            let routes_ok = routes.iter().all(|(ns, name)| {
                self.route_parent(ns, name, gateway)
                    .is_some_and(|p| condition_true(&p["conditions"], "Accepted"))
            });
            let snapshot = self.capstan.snapshot();
            let listening = snapshot["gateway"]["sockets"]
                .as_array()?
                .iter()
                .filter(|s| {
                    s["address"]
                        .as_str()
                        .is_some_and(|a| a.starts_with(&format!("{ip}:")))
                })
                .all(|s| s["state"] == "listening");
            (routes_ok && listening).then_some(ip)
        });
        found.unwrap_or_else(|| {
            panic!(
                "Gateway {gateway} never accepted {routes:?}:\n{:#}\n{}",
                self.capstan.snapshot()["gateway"],
                self.capstan.logs()
            )
        })
    }

    /// The route's (HTTPRoute, else GRPCRoute) parent status for `gateway` (in the infra
    /// namespace).
    pub(crate) fn route_parent(
        &self,
        namespace: &str,
        route: &str,
        gateway: &str,
    ) -> Option<Value> {
        let status = self
            .status("HTTPRoute", namespace, route)
            .or_else(|| self.status("GRPCRoute", namespace, route))?;
        status["parents"]
            .as_array()?
            .iter()
            .find(|p| p["parentRef"]["name"] == gateway)
            .cloned()
    }

    /// Sends `req` to `gateway:port` with curl (no redirects followed).
    pub(crate) fn send(&self, gateway: IpAddr, port: u16, req: &Req) -> Reply {
        let host = if req.host.is_empty() {
            format!("{gateway}:{port}")
        } else {
            req.host.to_owned()
        };
        let url = format!("http://{gateway}:{port}{}", req.path);
        let host_header = format!("Host: {host}");
        let mut args = vec!["-X", req.method, "-H", &host_header];
        let headers: Vec<String> = req
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        for header in &headers {
            args.push("-H");
            args.push(header);
        }
        args.push(&url);
        let (status, body, head) = curl(&args);
        reply(status, &body, &head)
    }

    /// `tls.MakeTLSRequestAndExpectEventuallyConsistentResponse`: `GET /` over TLS with SNI
    /// `host`, the certificate checked against the test CA; returns (status, backend).
    pub(crate) fn expect_tls(
        &self,
        gateway: IpAddr,
        host: &str,
        status: u16,
        backend: Option<&str>,
    ) {
        let ca = self.dir.0.join("ca.pem");
        std::fs::write(&ca, &self.cert.ca_pem).expect("write CA");
        let resolve = format!("{host}:443:{gateway}");
        let url = format!("https://{host}/");
        let mut last = None;
        let ok = eventually(Duration::from_secs(10), || {
            let args = ["--cacert", path_str(&ca), "--resolve", &resolve, &url];
            let (code, body, head) = curl(&args);
            let got = reply(code, &body, &head);
            let good = got.status == status && got.backend.as_deref() == backend;
            last = Some(got);
            good.then_some(())
        });
        if ok.is_none() {
            panic!(
                "https://{host}/: unexpected {last:#?}\n{}",
                self.capstan.logs()
            );
        }
    }

    /// `MakeRequestAndExpectEventuallyConsistentResponse`: retries until `check` holds (at most
    /// 10 s), then panics with the last reply.
    pub(crate) fn expect(&self, gateway: IpAddr, req: &Req, check: impl Fn(&Reply) -> bool) {
        self.expect_on(gateway, 80, req, check);
    }

    /// [`Conformance::expect`] on another port of the Gateway's address.
    pub(crate) fn expect_on(
        &self,
        gateway: IpAddr,
        port: u16,
        req: &Req,
        check: impl Fn(&Reply) -> bool,
    ) {
        let mut last = None;
        let ok = eventually(Duration::from_secs(10), || {
            let reply = self.send(gateway, port, req);
            let good = check(&reply);
            last = Some(reply);
            good.then_some(())
        });
        if ok.is_none() {
            panic!("{req:?}: unexpected {last:#?}\n{}", self.capstan.logs());
        }
    }

    /// Expects `backend` to answer with 200.
    pub(crate) fn expect_backend(&self, gateway: IpAddr, req: &Req, backend: &str) {
        self.expect(gateway, req, |r| {
            r.status == 200 && r.backend.as_deref() == Some(backend)
        });
    }

    pub(crate) fn expect_status(&self, gateway: IpAddr, req: &Req, status: u16) {
        self.expect(gateway, req, |r| r.status == status);
    }
}

/// The file (of [`Conformance::start`]'s directory) holding the HTTPS Gateway's Secret
/// `tls-validity-checks-certificate`.
pub(crate) const TLS_SECRET_FILE: &str = "tls-validity-checks-certificate.yaml";

/// The base manifests with the echo backends behind its Services, and apart the HTTPS
/// Gateway's Secret (`tls-validity-checks-certificate`).
fn base_manifests() -> (String, String, Vec<(&'static str, HttpBackend)>, TestCert) {
    let mut backends = Vec::new();
    let mut services = String::new();
    for (namespace, service) in BACKENDS {
        let backend = HttpBackend::start(service);
        services.push_str(&service_manifest(namespace, service, backend.addr));
        backends.push((service, backend));
    }
    // The suite's certificate names `*`, `*.org` and `*.wildcard.org`
    // (`conformance/utils/suite/suite.go`), which Go's verifier accepts; curl's OpenSSL
    // refuses `*` and `*.org`, so the names the tests ask for are listed instead.
    let cert = TestCert::new(&[
        "example.org",
        "second-example.org",
        "unknown-example.org",
        "*.wildcard.org",
    ]);
    // `certificate` in the web-backend namespace, for the Gateway Secret ReferenceGrant tests.
    let other = TestCert::new(&["example.com"]).secret(WEB, "certificate");
    let secret = cert.secret(INFRA, "tls-validity-checks-certificate");
    let base = class_name(&format!("{BASE}{services}---\n{other}"));
    (base, secret, backends, cert)
}

/// The parent condition `kind` of `route` on `gateway` is `status` with `reason`.
pub(crate) fn parent_condition(
    suite: &Conformance,
    route: (&str, &str),
    gateway: &str,
    kind: &str,
    want: (&str, &str),
) {
    let ok = eventually(Duration::from_secs(10), || {
        let parent = suite.route_parent(route.0, route.1, gateway)?;
        let c = condition(&parent["conditions"], kind)?.clone();
        (c["status"] == want.0 && c["reason"] == want.1).then_some(())
    });
    if ok.is_none() {
        panic!(
            "{route:?} on {gateway}: no {kind}={want:?}\n{:#}",
            suite.capstan.snapshot()["gateway"]["status"]
        );
    }
}

/// Whether `conditions` has `kind` with status `True`.
pub(crate) fn condition_true(conditions: &Value, kind: &str) -> bool {
    condition(conditions, kind).is_some_and(|c| c["status"] == "True")
}

pub(crate) fn condition<'a>(conditions: &'a Value, kind: &str) -> Option<&'a Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == kind)
}

/// A reply from the echo text (`body`) and the response head curl printed (`head`).
pub(crate) fn reply(status: u16, body: &str, head: &str) -> Reply {
    let mut lines = body.lines();
    let backend = lines
        .next()
        .and_then(|l| l.strip_prefix("backend="))
        .map(str::to_owned);
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in body.lines().skip(4) {
        if let Some((name, value)) = line.split_once(": ") {
            seen.entry(name.to_owned())
                .or_default()
                .push(value.to_owned());
        }
    }
    let mut response: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            response
                .entry(name)
                .or_default()
                .push(value.trim().to_owned());
        }
    }
    Reply {
        status,
        backend: backend.filter(|_| status == 200),
        request_line,
        seen,
        response,
    }
}

impl Reply {
    /// The request target the backend saw.
    pub(crate) fn path(&self) -> &str {
        self.request_line.split(' ').nth(1).unwrap_or_default()
    }

    pub(crate) fn seen(&self, name: &str) -> Option<&str> {
        self.seen
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    pub(crate) fn response(&self, name: &str) -> Option<&str> {
        self.response
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// A Service on port 8080 (as the base's) with one EndpointSlice to `backend`; the `grpc-` ones
/// with `appProtocol: kubernetes.io/h2c`, and `infra-backend-v1` also on 8081 (h2c) and 8082
/// (`kubernetes.io/ws`), as upstream, all served by the one echo server.
fn service_manifest(namespace: &str, name: &str, backend: SocketAddr) -> String {
    let port = backend.port();
    let mut ports = vec![(
        "first-port",
        8080,
        if name.starts_with("grpc-") {
            "kubernetes.io/h2c"
        } else {
            ""
        },
    )];
    if name == "infra-backend-v1" {
        ports.push(("second-port", 8081, "kubernetes.io/h2c"));
        ports.push(("third-port", 8082, "kubernetes.io/ws"));
    }
    let service_ports: Vec<String> = ports
        .iter()
        .map(|(port_name, number, app)| {
            let app = if app.is_empty() {
                String::new()
            } else {
                format!(", appProtocol: {app}")
            };
            format!("{{name: {port_name}, port: {number}, targetPort: {port}{app}}}")
        })
        .collect();
    let slice_ports: Vec<String> = ports
        .iter()
        .map(|(port_name, _, _)| format!("{{name: {port_name}, port: {port}}}"))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  clusterIP: None\n  ports: [{}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {namespace}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{}]\nendpoints:\n  - addresses: [\"{ip}\"]\n",
        service_ports.join(", "),
        slice_ports.join(", "),
        ip = backend.ip(),
    )
}

fn class_name(text: &str) -> String {
    text.replace("{GATEWAY_CLASS_NAME}", "capstan").replace(
        "{GATEWAY_CONTROLLER_NAME}",
        "capstan.dev/gateway-controller",
    )
}

/// An upstream test manifest from `tests/e2e/gateway_conformance/`, class and controller named.
pub(crate) fn conformance_yaml(file: &str) -> String {
    class_name(&conformance_manifest(file))
}

/// An upstream test manifest from `tests/e2e/gateway_conformance/`.
pub(crate) fn conformance_manifest(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e/gateway_conformance")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
