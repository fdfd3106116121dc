//! A wire-level fake Kubernetes API server: real HTTP on 127.0.0.1:0 that the real kube client in
//! the real binary talks to. It keeps objects with resource versions and an event log, and serves
//! what a watcher needs of kube-apiserver: paged lists with `resourceVersion` and `continue`,
//! chunked watch streams from a resource version, bookmarks, `410 Gone` (as the apiserver's
//! `ERROR` watch event with an `Expired` Status) for versions older than the last compaction,
//! field selectors (`metadata.name`, `metadata.namespace`, `type`), `/version`, and outages
//! (listener closed, every connection cut).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::AbortHandle;

/// Resource paths served, with the `apiVersion` and list `kind` of each.
const RESOURCES: &[(&str, &str, &str, &str)] = &[
    // (collection path, resource, apiVersion, kind)
    ("/api/v1/services", "services", "v1", "Service"),
    ("/api/v1/secrets", "secrets", "v1", "Secret"),
    ("/api/v1/nodes", "nodes", "v1", "Node"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSlice",
    ),
    (
        "/apis/networking.k8s.io/v1/ingresses",
        "ingresses",
        "networking.k8s.io/v1",
        "Ingress",
    ),
    (
        "/apis/networking.k8s.io/v1/ingressclasses",
        "ingressclasses",
        "networking.k8s.io/v1",
        "IngressClass",
    ),
    ("/api/v1/namespaces", "namespaces", "v1", "Namespace"),
    (
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses",
        "gatewayclasses",
        "gateway.networking.k8s.io/v1",
        "GatewayClass",
    ),
    (
        "/apis/gateway.networking.k8s.io/v1/gateways",
        "gateways",
        "gateway.networking.k8s.io/v1",
        "Gateway",
    ),
    (
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        "httproutes",
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
    ),
    (
        "/apis/gateway.networking.k8s.io/v1/grpcroutes",
        "grpcroutes",
        "gateway.networking.k8s.io/v1",
        "GRPCRoute",
    ),
    (
        "/apis/gateway.networking.k8s.io/v1/referencegrants",
        "referencegrants",
        "gateway.networking.k8s.io/v1",
        "ReferenceGrant",
    ),
];

/// Resources without a namespace.
const CLUSTER_SCOPED: [&str; 4] = ["nodes", "ingressclasses", "namespaces", "gatewayclasses"];

const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

type Key = (&'static str, String, String);

/// One change, as a watch stream sends it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    /// Watches opened before this epoch never see the change: they were cut.
    epoch: u64,
    resource: &'static str,
    kind: &'static str,
    object: Value,
}

#[derive(Debug)]
struct State {
    rv: u64,
    epoch: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    /// Watches from a resource version below this get 410 Gone.
    oldest: u64,
    changes: broadcast::Sender<Arc<Change>>,
    /// `list services`, `watch services from 12`: what the client asked, in order.
    requests: Vec<String>,
    connections: Vec<AbortHandle>,
    /// Whether the Gateway API CRDs are "installed" (discovery answers for the group).
    gateway_api: bool,
}

/// The fake API server. Cheap to share; every method is synchronous.
#[derive(Clone)]
pub(crate) struct FakeApi {
    pub(crate) addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: Arc<Mutex<Option<AbortHandle>>>,
}

impl FakeApi {
    pub(crate) async fn start() -> Self {
        Self::start_on("127.0.0.1".parse().expect("loopback")).await
    }

    /// Listens on `ip` (an address of the test's namespace that node namespaces reach).
    pub(crate) async fn start_on(ip: std::net::IpAddr) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind fake api");
        let addr = listener.local_addr().expect("addr");
        let (changes, _) = broadcast::channel(65_536);
        let api = Self {
            addr,
            state: Arc::new(Mutex::new(State {
                rv: 1,
                epoch: 0,
                objects: BTreeMap::new(),
                log: Vec::new(),
                oldest: 0,
                changes,
                requests: Vec::new(),
                connections: Vec::new(),
                gateway_api: false,
            })),
            accept: Arc::new(Mutex::new(None)),
        };
        api.serve(listener);
        api
    }

    /// Serves discovery for `gateway.networking.k8s.io/v1`, as a cluster with the Gateway API
    /// CRDs installed does (without it the group answers 404).
    pub(crate) fn install_gateway_api(&self) {
        self.state.lock().expect("state").gateway_api = true;
    }

    /// A kubeconfig pointing at this server.
    pub(crate) fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: 'http://{}'}}}}]\n\
             users: [{{name: fake, user: {{token: fake-token}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
            self.addr
        )
    }

    /// Creates or replaces objects given as YAML manifests (`---` separated).
    pub(crate) fn apply_yaml(&self, yaml: &str) {
        for document in yaml.split("\n---") {
            if document.trim().is_empty() {
                continue;
            }
            let object: Value = serde_saphyr::from_str(document).expect("manifest YAML");
            self.apply(object);
        }
    }

    /// Creates many objects at once, without events (as if they existed before any watch).
    pub(crate) fn preload(&self, objects: impl IntoIterator<Item = Value>) {
        let mut state = self.state.lock().expect("state");
        for mut object in objects {
            let resource = resource_of(&object);
            let key = key_of(resource, &object);
            state.rv += 1;
            object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
            state.objects.insert(key, object);
        }
        state.oldest = state.rv;
    }

    /// Creates or replaces one object (ADDED or MODIFIED).
    pub(crate) fn apply(&self, mut object: Value) {
        let mut state = self.state.lock().expect("state");
        let resource = resource_of(&object);
        let key = key_of(resource, &object);
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        // As the API server: writing an object without a status keeps the status it had, and
        // `metadata.generation` starts at 1 and grows when the spec changes.
        let previous = state.objects.get(&key);
        if object.get("status").is_none()
            && let Some(status) = previous.and_then(|o| o.get("status"))
        {
            object["status"] = status.clone();
        }
        if object.get("spec").is_some() {
            let generation = match previous {
                Some(old) if old.get("spec") == object.get("spec") => {
                    old["metadata"]["generation"].as_i64().unwrap_or(1)
                }
                Some(old) => old["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
                None => 1,
            };
            object["metadata"]["generation"] = json!(generation);
        }
        let kind_of_change = if state.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.objects.insert(key, object.clone());
        state.record(resource, kind_of_change, object);
    }

    /// Deletes one object (DELETED with its last state).
    pub(crate) fn delete(&self, resource: &'static str, namespace: &str, name: &str) {
        let mut state = self.state.lock().expect("state");
        let key = (resource, namespace.to_owned(), name.to_owned());
        let Some(mut object) = state.objects.remove(&key) else {
            panic!("delete {resource} {namespace}/{name}: no such object");
        };
        state.rv += 1;
        object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        state.record(resource, "DELETED", object);
    }

    /// Cuts every watch, applies `changes` while no watch can see them, and compacts the log so
    /// that resuming from any earlier version answers 410 Gone: only a relist finds the changes.
    pub(crate) fn changes_behind_compaction(&self, changes: impl FnOnce(&Self)) {
        {
            let mut state = self.state.lock().expect("state");
            state.epoch += 1;
            // A client that reconnects while the changes are made must not replay them from
            // the log: until the compaction below, every watch is already too old.
            state.oldest = u64::MAX;
        }
        changes(self);
        let mut state = self.state.lock().expect("state");
        // Watching from the current version stays valid: there is nothing after it yet.
        state.oldest = state.rv;
        state.log.clear();
    }

    /// Cuts every open watch stream (clients resume from their last version).
    pub(crate) fn disconnect_watches(&self) {
        self.state.lock().expect("state").epoch += 1;
    }

    /// An outage: the listener closes and every open connection is cut.
    pub(crate) fn stop(&self) {
        if let Some(accept) = self.accept.lock().expect("accept").take() {
            accept.abort();
        }
        let mut state = self.state.lock().expect("state");
        state.epoch += 1;
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    /// Ends an outage: listens again on the same address.
    pub(crate) async fn restart(&self) {
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(error) if attempts < 50 => {
                    attempts += 1;
                    eprintln!("rebind {}: {error}", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("rebind {}: {error}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// The requests seen so far, e.g. `list services` or `watch services from 12`.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.state.lock().expect("state").requests.clone()
    }

    fn serve(&self, listener: TcpListener) {
        let api = self.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = api.clone();
                let connection = tokio::spawn(async move {
                    let api = server;
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let api = api.clone();
                        async move {
                            if request.method() == hyper::Method::PATCH {
                                let path = request.uri().path().to_owned();
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                return Ok::<_, Infallible>(api.patch_status(&path, &body));
                            }
                            Ok::<_, Infallible>(api.handle(&request))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                let mut state = api.state.lock().expect("state");
                state.connections.retain(|c| !c.is_finished());
                state.connections.push(connection.abort_handle());
            }
        });
        *self.accept.lock().expect("accept") = Some(accept.abort_handle());
    }

    /// `PATCH …/RESOURCE/NAME/status` (namespaced or cluster-scoped) with a JSON merge patch:
    /// merged into the object, which is MODIFIED with a new resourceVersion.
    fn patch_status(&self, path: &str, body: &[u8]) -> Response<BoxBody<Bytes, Infallible>> {
        let Some((key, _)) = status_target(path) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no PATCH route {path}"),
            );
        };
        let Ok(patch) = serde_json::from_slice::<Value>(body) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "patch is not JSON");
        };
        let (resource, namespace, name) = key.clone();
        let mut state = self.state.lock().expect("state");
        let target = if namespace.is_empty() {
            name.clone()
        } else {
            format!("{namespace}/{name}")
        };
        state
            .requests
            .push(format!("patch {resource} {target}/status"));
        let Some(mut object) = state.objects.get(&key).cloned() else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{resource} {name}"),
            );
        };
        merge(&mut object["status"], &patch["status"]);
        state.rv += 1;
        object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        state.objects.insert(key, object.clone());
        state.record(resource, "MODIFIED", object.clone());
        json_response(StatusCode::OK, &object)
    }

    /// An object as stored, e.g. `("ingresses", "default", "web")`.
    pub(crate) fn object(
        &self,
        resource: &'static str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = (resource, namespace.to_owned(), name.to_owned());
        self.state.lock().expect("state").objects.get(&key).cloned()
    }

    fn handle(&self, request: &Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let path = request.uri().path();
        if path == "/apis/gateway.networking.k8s.io/v1" {
            return self.gateway_discovery();
        }
        if let Some((key, _)) = status_target(path) {
            // GET of one object's status subresource: the object.
            let state = self.state.lock().expect("state");
            return match state.objects.get(&key) {
                Some(object) => json_response(StatusCode::OK, object),
                None => status(StatusCode::NOT_FOUND, "NotFound", path),
            };
        }
        if path == "/version" {
            return json_response(
                StatusCode::OK,
                &json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                    "gitCommit": "0", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
                }),
            );
        }
        if let Some((collection, name)) = path.rsplit_once('/')
            && let Some(&(_, resource, ..)) = RESOURCES.iter().find(|(p, ..)| *p == collection)
        {
            // GET of one cluster-scoped object (a Node).
            let mut state = self.state.lock().expect("state");
            state.requests.push(format!("get {resource} {name}"));
            let key = (resource, String::new(), name.to_owned());
            return match state.objects.get(&key) {
                Some(object) => json_response(StatusCode::OK, object),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{resource} {name}"),
                ),
            };
        }
        let Some(&(_, resource, api_version, kind)) = RESOURCES.iter().find(|(p, ..)| *p == path)
        else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no route {path}"),
            );
        };
        let query: BTreeMap<String, String> = request
            .uri()
            .query()
            .map(|q| {
                url_pairs(q)
                    .into_iter()
                    .collect::<BTreeMap<String, String>>()
            })
            .unwrap_or_default();
        let selector = query
            .get("fieldSelector")
            .map(|s| parse_selector(s))
            .unwrap_or_default();
        let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        if watching {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
            self.watch(resource, api_version, kind, from, selector, bookmarks)
        } else {
            let limit: usize = query
                .get("limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(usize::MAX);
            let offset: usize = query
                .get("continue")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            self.list(resource, api_version, kind, &selector, limit, offset)
        }
    }

    /// `APIResourceList` of the Gateway API group, or 404 when not "installed".
    fn gateway_discovery(&self) -> Response<BoxBody<Bytes, Infallible>> {
        if !self.state.lock().expect("state").gateway_api {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        let resources: Vec<Value> = RESOURCES
            .iter()
            .filter(|(_, _, v, _)| *v == "gateway.networking.k8s.io/v1")
            .map(|&(_, resource, _, kind)| {
                json!({
                    "name": resource, "singularName": "", "kind": kind,
                    "namespaced": !CLUSTER_SCOPED.contains(&resource),
                    "verbs": ["get", "list", "watch", "patch"],
                })
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({"kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": "gateway.networking.k8s.io/v1", "resources": resources}),
        )
    }

    fn list(
        &self,
        resource: &'static str,
        api_version: &str,
        kind: &str,
        selector: &[(String, String)],
        limit: usize,
        offset: usize,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let mut state = self.state.lock().expect("state");
        if offset == 0 {
            state.requests.push(format!("list {resource}"));
        }
        let matching: Vec<&Value> = state
            .objects
            .iter()
            .filter(|((r, ..), object)| *r == resource && selects(selector, object))
            .map(|(_, object)| object)
            .collect();
        let end = offset.saturating_add(limit).min(matching.len());
        let items: Vec<Value> = matching[offset.min(end)..end]
            .iter()
            .map(|o| (*o).clone())
            .collect();
        let mut metadata = json!({"resourceVersion": state.rv.to_string()});
        if end < matching.len() {
            metadata["continue"] = json!(end.to_string());
        }
        json_response(
            StatusCode::OK,
            &json!({
                "apiVersion": api_version,
                "kind": format!("{kind}List"),
                "metadata": metadata,
                "items": items,
            }),
        )
    }

    fn watch(
        &self,
        resource: &'static str,
        api_version: &'static str,
        kind: &'static str,
        from: u64,
        selector: Vec<(String, String)>,
        bookmarks: bool,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let (tx, rx) = mpsc::channel::<Bytes>(1024);
        let mut state = self.state.lock().expect("state");
        state.requests.push(format!("watch {resource} from {from}"));
        let epoch = state.epoch;
        let line = |value: &Value| Bytes::from(format!("{value}\n"));
        let mut backlog = Vec::new();
        if from < state.oldest {
            backlog.push(line(&json!({
                "type": "ERROR",
                "object": {
                    "apiVersion": "v1", "kind": "Status", "metadata": {},
                    "status": "Failure", "reason": "Expired", "code": 410,
                    "message": format!("too old resource version: {from} ({})", state.oldest),
                },
            })));
            drop(state);
            tokio::spawn(async move {
                for chunk in backlog {
                    let _ = tx.send(chunk).await;
                }
            });
            return stream_response(rx);
        }
        for change in &state.log {
            if change.rv > from && change.resource == resource && selects(&selector, &change.object)
            {
                backlog.push(line(&json!({"type": change.kind, "object": change.object})));
            }
        }
        let mut changes = state.changes.subscribe();
        let api = self.clone();
        drop(state);
        tokio::spawn(async move {
            for chunk in backlog {
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
            let mut tick = tokio::time::interval(BOOKMARK_EVERY);
            loop {
                let chunk = tokio::select! {
                    change = changes.recv() => match change {
                        Ok(change) if change.epoch != epoch => return,
                        Ok(change) if change.resource == resource && selects(&selector, &change.object) => {
                            line(&json!({"type": change.kind, "object": change.object}))
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tick.tick() => {
                        let (rv, current) = {
                            let state = api.state.lock().expect("state");
                            (state.rv, state.epoch)
                        };
                        if current != epoch {
                            return;
                        }
                        if !bookmarks {
                            continue;
                        }
                        line(&json!({
                            "type": "BOOKMARK",
                            "object": {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}},
                        }))
                    }
                };
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        stream_response(rx)
    }
}

impl State {
    fn record(&mut self, resource: &'static str, kind: &'static str, object: Value) {
        let change = Change {
            rv: self.rv,
            epoch: self.epoch,
            resource,
            kind,
            object,
        };
        self.log.push(change.clone());
        let _ = self.changes.send(Arc::new(change));
    }
}

fn resource_of(object: &Value) -> &'static str {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    RESOURCES
        .iter()
        .find(|(_, _, v, k)| *v == api_version && *k == kind)
        .map(|&(_, resource, ..)| resource)
        .unwrap_or_else(|| panic!("the fake API does not serve {api_version} {kind}"))
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` deletes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in fields {
        if value.is_null() {
            if let Value::Object(map) = target {
                map.remove(key);
            }
        } else {
            merge(&mut target[key.as_str()], value);
        }
    }
}

fn key_of(resource: &'static str, object: &Value) -> Key {
    let namespace = match resource {
        r if CLUSTER_SCOPED.contains(&r) => String::new(),
        _ => object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
    };
    let name = object["metadata"]["name"]
        .as_str()
        .expect("metadata.name")
        .to_owned();
    (resource, namespace, name)
}

/// The stored object a `…/status` path names, and the path's resource.
fn status_target(path: &str) -> Option<(Key, &'static str)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (prefix, namespace, resource, name) = match parts[..] {
        [.., "namespaces", namespace, resource, name, "status"] => {
            let prefix = parts[..parts.len() - 5].join("/");
            (prefix, namespace.to_owned(), resource, name)
        }
        [.., resource, name, "status"] => {
            let prefix = parts[..parts.len() - 3].join("/");
            (prefix, String::new(), resource, name)
        }
        _ => return None,
    };
    let collection = format!("/{prefix}/{resource}");
    let &(_, resource, ..) = RESOURCES.iter().find(|(p, ..)| *p == collection)?;
    Some(((resource, namespace, name.to_owned()), resource))
}

fn parse_selector(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|term| term.split_once('='))
        .map(|(k, v)| (k.trim_end_matches('=').to_owned(), v.to_owned()))
        .collect()
}

fn selects(selector: &[(String, String)], object: &Value) -> bool {
    selector.iter().all(|(field, wanted)| {
        let value = field
            .split('.')
            .fold(object, |value, part| &value[part])
            .as_str()
            .unwrap_or_default();
        value == wanted
    })
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(code: StatusCode, body: &Value) -> Response<BoxBody<Bytes, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<BoxBody<Bytes, Infallible>> {
    json_response(
        code,
        &json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "reason": reason, "message": message, "code": code.as_u16(),
        }),
    )
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<BoxBody<Bytes, Infallible>> {
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
