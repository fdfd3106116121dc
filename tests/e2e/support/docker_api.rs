//! A wire-level fake Docker Engine API: real HTTP/1.1 on a unix socket, which the real bollard
//! client in the real binary talks to. It serves what the Docker provider asks of dockerd:
//! `GET /v*/containers/json` (the running containers' summaries), `GET /v*/containers/{id}/json`
//! (inspect, 404 for an unknown container) and `GET /v*/events` (a chunked stream of JSON event
//! lines, replayed from `since`, then live), and can restart: every connection cut, the socket
//! gone and back.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// One container as the fake engine holds it.
#[derive(Clone, Debug)]
pub(crate) struct FakeContainer {
    pub(crate) name: String,
    pub(crate) ip: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) exposed: Vec<u16>,
    /// `None`: no health check; else `starting`, `healthy` or `unhealthy`.
    pub(crate) health: Option<&'static str>,
}

#[derive(Debug)]
struct State {
    containers: BTreeMap<String, FakeContainer>,
    /// Every event sent (unix seconds, JSON line), for `since`.
    log: Vec<(u64, String)>,
    events: broadcast::Sender<String>,
    /// `list`, `inspect NAME`, `events since=T`: what the client asked, in order.
    requests: Vec<String>,
}

/// The fake engine. Cheap to share.
#[derive(Clone)]
pub(crate) struct FakeDocker {
    pub(crate) socket: PathBuf,
    state: Arc<Mutex<State>>,
    /// Cancelled to stop serving (every connection cut, the socket removed).
    stop: Arc<Mutex<CancellationToken>>,
}

impl FakeDocker {
    /// Serves on a new unix socket at `socket`.
    pub(crate) fn start(socket: &Path) -> Self {
        let (events, _) = broadcast::channel(1024);
        let docker = Self {
            socket: socket.to_owned(),
            state: Arc::new(Mutex::new(State {
                containers: BTreeMap::new(),
                log: Vec::new(),
                events,
                requests: Vec::new(),
            })),
            stop: Arc::new(Mutex::new(CancellationToken::new())),
        };
        docker.serve();
        docker
    }

    /// Runs `docker run`: the container exists and its `start` event is sent.
    pub(crate) fn run(&self, container: FakeContainer) {
        let name = container.name.clone();
        self.state().containers.insert(name.clone(), container);
        self.event(&name, "start");
    }

    /// The container stops (`die`, then `stop`) and is gone from the list.
    pub(crate) fn stop_container(&self, name: &str) {
        self.state().containers.remove(name);
        self.event(name, "die");
        self.event(name, "stop");
    }

    /// The container's health check reports `status` (`health_status: healthy`, …).
    pub(crate) fn set_health(&self, name: &str, status: &'static str) {
        if let Some(c) = self.state().containers.get_mut(name) {
            c.health = Some(status);
        }
        self.event(name, &format!("health_status: {status}"));
    }

    /// Changes made while the engine is down: no event reaches anyone, and none is logged (as
    /// when dockerd restarts, containers come and go without a replayable event).
    pub(crate) fn while_down(&self, changes: impl FnOnce(&mut BTreeMap<String, FakeContainer>)) {
        let token = self.stop.lock().expect("stop").clone();
        token.cancel();
        let _ = std::fs::remove_file(&self.socket);
        changes(&mut self.state().containers);
        *self.stop.lock().expect("stop") = CancellationToken::new();
        self.serve();
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state")
    }

    fn event(&self, name: &str, action: &str) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("time");
        let line = json!({
            "Type": "container",
            "Action": action,
            "Actor": {"ID": id_of(name), "Attributes": {"name": name}},
            "scope": "local",
            "time": now.as_secs(),
            "timeNano": now.as_nanos() as u64,
        })
        .to_string();
        let mut state = self.state();
        state.log.push((now.as_secs(), line.clone()));
        let _ = state.events.send(line);
    }

    fn serve(&self) {
        let _ = std::fs::remove_file(&self.socket);
        let listener = std::os::unix::net::UnixListener::bind(&self.socket).expect("bind socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let docker = self.clone();
        let stop = self.stop.lock().expect("stop").clone();
        crate::support::on_own_thread(async move {
            let listener = tokio::net::UnixListener::from_std(listener).expect("listener");
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    () = stop.cancelled() => return,
                };
                let docker = docker.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let docker = docker.clone();
                        async move { Ok::<_, Infallible>(docker.answer(req)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
    }

    fn answer(&self, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let path = req.uri().path().to_owned();
        // `/v1.53/containers/json`: the version prefix is whatever the client speaks.
        let path = match path.strip_prefix("/v") {
            Some(rest) => rest.split_once('/').map_or("", |(_, p)| p).to_owned(),
            None => path.trim_start_matches('/').to_owned(),
        };
        let query = req.uri().query().unwrap_or_default().to_owned();
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["containers", "json"] => {
                self.state().requests.push("list".into());
                let list: Vec<Value> = self.state().containers.values().map(summary).collect();
                reply(StatusCode::OK, Value::Array(list))
            }
            ["containers", id, "json"] => {
                let mut state = self.state();
                state.requests.push(format!("inspect {id}"));
                match state.containers.values().find(|c| id_of(&c.name) == *id) {
                    Some(c) => reply(StatusCode::OK, inspect(c)),
                    None => reply(
                        StatusCode::NOT_FOUND,
                        json!({"message": format!("No such container: {id}")}),
                    ),
                }
            }
            ["events"] => self.events(&query),
            _ => reply(
                StatusCode::NOT_FOUND,
                json!({"message": format!("page not found: {path}")}),
            ),
        }
    }

    /// The replay from `since`, then live events, as one chunked body that stays open.
    fn events(&self, query: &str) -> Response<BoxBody<Bytes, Infallible>> {
        let since: u64 = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("since="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        let (tx, rx) = mpsc::unbounded_channel::<Result<Frame<Bytes>, Infallible>>();
        {
            let mut state = self.state();
            state.requests.push(format!("events since={since}"));
            for (_, line) in state.log.iter().filter(|(t, _)| *t >= since) {
                let _ = tx.send(Ok(Frame::data(Bytes::from(format!("{line}\n")))));
            }
            let mut live = state.events.subscribe();
            tokio::spawn(async move {
                while let Ok(line) = live.recv().await {
                    if tx
                        .send(Ok(Frame::data(Bytes::from(format!("{line}\n")))))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        let body = StreamBody::new(tokio_stream_from(rx));
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(body))
            .expect("response")
    }
}

impl Drop for FakeDocker {
    fn drop(&mut self) {
        // The last handle: stop serving.
        if Arc::strong_count(&self.stop) == 1 {
            self.stop.lock().expect("stop").cancel();
        }
    }
}

fn tokio_stream_from<T>(mut rx: mpsc::UnboundedReceiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Container ids: 64 hex digits derived from the name.
pub(crate) fn id_of(name: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}").repeat(4)
}

fn labels(c: &FakeContainer) -> Value {
    Value::Object(
        c.labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn summary(c: &FakeContainer) -> Value {
    json!({
        "Id": id_of(&c.name),
        "Names": [format!("/{}", c.name)],
        "Image": "traefik/whoami",
        "Labels": labels(c),
        "State": "running",
        "Status": "Up 2 seconds",
    })
}

fn inspect(c: &FakeContainer) -> Value {
    let exposed: serde_json::Map<String, Value> = c
        .exposed
        .iter()
        .map(|p| (format!("{p}/tcp"), json!({})))
        .collect();
    let mut state = json!({"Status": "running", "Running": true, "Paused": false, "Pid": 4242});
    if let Some(health) = c.health {
        state["Health"] = json!({"Status": health, "FailingStreak": 0, "Log": []});
    }
    json!({
        "Id": id_of(&c.name),
        "Name": format!("/{}", c.name),
        "State": state,
        "Config": {"Hostname": c.name, "Image": "traefik/whoami", "Labels": labels(c), "ExposedPorts": exposed},
        "NetworkSettings": {"Networks": {"app_default": {
            "NetworkID": "n1", "EndpointID": "e1", "Gateway": "172.18.0.1",
            "IPAddress": c.ip, "IPPrefixLen": 16, "MacAddress": "02:42:ac:12:00:02"
        }}},
    })
}

fn reply(status: StatusCode, body: Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}
