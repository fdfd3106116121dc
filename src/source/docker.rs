//! The Docker provider: running containers and their `capstan.*` labels, read from the Docker
//! Engine API over its unix socket (bollard), kept current from the engine's event stream.
//!
//! Every container event that can change what is served (start, die, pause, health status, …)
//! triggers a full resync (list, then inspect each container), debounced; one `Reset` is sent
//! when the result differs from the last. When the engine is unreachable or the stream ends, the
//! last state keeps serving and the provider reconnects with backoff; the events since the last
//! resync are replayed (`since`), so nothing is missed in between.

mod labels;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, HealthStatusEnum};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use capstan_catalog::{Object, SourceId, Update};
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use labels::objects;
pub use labels::{Container, Health, NAMESPACE};

use super::{Loaded, SourceStatus, record_load};
use crate::Error;
use crate::telemetry::Metrics;

/// Header timeout of one engine request (the event stream's body is not bounded).
const REQUEST_TIMEOUT_SECS: u64 = 10;
const DEBOUNCE: Duration = Duration::from_millis(100);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The `--docker` source.
#[derive(Debug)]
pub struct DockerSource {
    id: SourceId,
    socket: PathBuf,
    /// `--docker-network`: the network whose addresses are used.
    network: Option<String>,
    status: SourceStatus,
    metrics: Arc<Metrics>,
    /// What was last sent.
    last: Option<Vec<Object>>,
}

impl DockerSource {
    pub fn new(
        socket: PathBuf,
        network: Option<String>,
        status: SourceStatus,
        metrics: Arc<Metrics>,
    ) -> Self {
        let id = SourceId::new(&format!("docker:{}", socket.display()));
        Self {
            id,
            socket,
            network,
            status,
            metrics,
            last: None,
        }
    }

    pub fn id(&self) -> SourceId {
        self.id.clone()
    }

    fn connect(&self) -> Result<Docker, Error> {
        let path = self.socket.to_string_lossy();
        Docker::connect_with_unix(&path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            .map_err(|e| engine_error(&self.socket, &e))
    }

    /// The first state: an unreachable engine is logged and shown on `/debug/snapshot`, and the
    /// source starts empty (and synced, so the rest of Capstan serves) while [`Self::watch`]
    /// keeps trying.
    pub async fn initial(&mut self) -> Update {
        let loaded = match self.connect() {
            Ok(docker) => self.load(&docker).await,
            Err(error) => Err(error),
        };
        self.finish(loaded).unwrap_or_else(|| Update::Reset {
            source: self.id.clone(),
            objects: vec![],
        })
    }

    /// Lists and inspects the running containers and converts their labels; `Err` when the
    /// engine could not be asked.
    async fn load(&self, docker: &Docker) -> Result<Loaded, Error> {
        let containers = containers(docker)
            .await
            .map_err(|e| engine_error(&self.socket, &e))?;
        let (objects, errors) = objects(&containers, self.network.as_deref());
        Ok(Loaded {
            files: containers.len(),
            objects,
            errors,
        })
    }

    /// Records a load; the `Reset` to send when it succeeded and changed something. An engine
    /// that could not be asked is recorded as the source's error and keeps the last state.
    fn finish(&mut self, loaded: Result<Loaded, Error>) -> Option<Update> {
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                let failed = Loaded {
                    files: 0,
                    objects: vec![],
                    errors: vec![error],
                };
                record_load(&self.metrics, &self.status, &self.id, &failed);
                return None;
            }
        };
        record_load(&self.metrics, &self.status, &self.id, &loaded);
        if self.last.as_ref() == Some(&loaded.objects) {
            return None;
        }
        self.last = Some(loaded.objects.clone());
        Some(Update::Reset {
            source: self.id.clone(),
            objects: loaded.objects,
        })
    }

    /// Loads again (noting the time first, for the next connection's replay); the `Reset` to
    /// send, if anything changed.
    async fn resync(&mut self, docker: &Docker, since: &mut u64) -> Option<Update> {
        *since = unix_now().saturating_sub(1);
        let loaded = self.load(docker).await;
        self.finish(loaded)
    }

    /// Follows the engine's events until `shutdown`, resyncing on every relevant one and after
    /// every reconnection.
    pub async fn watch(mut self, updates: mpsc::Sender<Update>, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        // The first resync (in `initial`) happened just before.
        let mut since = unix_now().saturating_sub(1);
        loop {
            let connected = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = self.follow(&updates, &mut since) => outcome,
            };
            match connected {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(error) => {
                    warn!(%error, retry_in = ?backoff, "docker: engine unreachable; the last state keeps serving");
                    self.finish(Err(error));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: replays events since `since`, resyncs, and follows the stream until it
    /// ends. `Ok` when the stream was followed (it ended), `Err` when the engine was not reached.
    async fn follow(
        &mut self,
        updates: &mpsc::Sender<Update>,
        since: &mut u64,
    ) -> Result<(), Error> {
        let docker = self.connect()?;
        let options = EventsOptions {
            since: Some(since.to_string()),
            filters: Some(HashMap::from([("type".into(), vec!["container".into()])])),
            ..Default::default()
        };
        let mut events = docker.events(Some(options));
        if let Some(update) = self.resync(&docker, since).await {
            info!("docker: containers changed while disconnected");
            let _ = updates.send(update).await;
        }
        let mut followed = false;
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| engine_error(&self.socket, &e))?;
            followed = true;
            if !changes_routing(event.action.as_deref().unwrap_or_default()) {
                continue;
            }
            // Debounce: a compose up or scale sends a burst.
            tokio::time::sleep(DEBOUNCE).await;
            while let Some(Some(Ok(_))) = events.next().now_or_never() {}
            if let Some(update) = self.resync(&docker, since).await {
                info!("docker: containers changed");
                if updates.send(update).await.is_err() {
                    return Ok(());
                }
            }
        }
        if followed {
            Ok(())
        } else {
            Err(Error::Convert {
                kind: "docker engine",
                name: self.socket.display().to_string(),
                reason: "the event stream ended at once".into(),
            })
        }
    }
}

/// Whether a container event can change what is served.
fn changes_routing(action: &str) -> bool {
    let action = action.split(':').next().unwrap_or_default().trim();
    matches!(
        action,
        "start"
            | "restart"
            | "die"
            | "stop"
            | "kill"
            | "destroy"
            | "pause"
            | "unpause"
            | "rename"
            | "update"
            | "health_status"
            | "oom"
    )
}

/// The running containers, inspected.
async fn containers(docker: &Docker) -> Result<Vec<Container>, bollard::errors::Error> {
    let options = ListContainersOptions {
        all: false,
        filters: Some(HashMap::from([("status".into(), vec!["running".into()])])),
        ..Default::default()
    };
    let mut containers = Vec::new();
    for summary in docker.list_containers(Some(options)).await? {
        let Some(id) = summary.id else { continue };
        match docker.inspect_container(&id, None).await {
            Ok(inspected) => containers.extend(container(inspected)),
            // Gone between the list and the inspect: its `destroy` event follows.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(containers)
}

/// What Capstan needs of an inspected container; `None` when it is not running.
fn container(inspected: ContainerInspectResponse) -> Option<Container> {
    let state = inspected.state.unwrap_or_default();
    if state.running != Some(true) {
        return None;
    }
    let config = inspected.config.unwrap_or_default();
    let networks = inspected
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, settings)| {
            let ips: Vec<IpAddr> = [settings.ip_address, settings.global_ipv6_address]
                .into_iter()
                .flatten()
                .filter_map(|ip| ip.parse().ok())
                .collect();
            (name, ips)
        })
        .collect::<BTreeMap<_, _>>();
    let mut exposed_tcp_ports: Vec<u16> = config
        .exposed_ports
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.strip_suffix("/tcp")?.parse().ok())
        .collect();
    exposed_tcp_ports.sort_unstable();
    let health = match state.health.and_then(|h| h.status) {
        Some(HealthStatusEnum::STARTING) => Health::Starting,
        Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
        _ => Health::None,
    };
    Some(Container {
        id: inspected.id.unwrap_or_default(),
        name: inspected
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        networks,
        exposed_tcp_ports,
        health,
        paused: state.paused == Some(true),
    })
}

fn engine_error(socket: &std::path::Path, error: &bollard::errors::Error) -> Error {
    Error::Convert {
        kind: "docker engine",
        name: socket.display().to_string(),
        reason: error.to_string(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
