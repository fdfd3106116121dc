//! The Kubernetes source: one kube-rs watcher per kind, each its own catalog source, converted by
//! the same functions as the manifest files so that a cluster and a directory mean the same.
//!
//! Every watcher lists before it watches (with bookmarks) and the agent publishes nothing until
//! each has listed once. A relist (after 410 Gone) replaces that kind's objects as a whole, so an
//! object deleted while the watch was broken disappears. Errors back off exponentially (kube's
//! default: 0.8 s doubling to 30 s); while the API server is unreachable the last snapshot keeps
//! being served and [`ApiHealth`] says so on `/readyz` and in metrics.
//!
//! Raw Kubernetes objects are never stored: each event is converted at once and dropped, so
//! `managedFields`, annotations and the rest cost nothing beyond the event being decoded.

mod gateway;
mod gateway_status;
mod node;
mod status;
mod watch;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use capstan_catalog::{Object, ObjectId, SourceId, Update};
use capstan_table::{Generation, ServiceKey, SnapshotHandle};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Error;
use crate::source::{SourceStatus, convert};
use crate::telemetry::Metrics;

pub use self::node::NodeFacts;
use self::watch::{Kind, WatchContext};

/// How often the API server is probed while a watch reports nothing.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// The Kubernetes API as a set of catalog sources.
#[derive(Clone)]
pub struct KubeSource {
    client: Client,
    health: Arc<ApiHealth>,
    status: SourceStatus,
    metrics: Arc<Metrics>,
}

/// Whether the API server is reachable, shared with `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct ApiHealth {
    reachable: AtomicBool,
    /// Unix seconds of the last failed request or watch (0: none).
    last_failure: AtomicU64,
    /// Unix seconds of the last successful contact.
    last_contact: AtomicU64,
    /// `capstan_kubernetes_api_up`.
    up: prometheus_client::metrics::gauge::Gauge,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

// === impl KubeSource ===

impl KubeSource {
    /// A client from `kubeconfig`, or the in-cluster service account when `None`.
    pub async fn connect(
        kubeconfig: Option<&Path>,
        status: SourceStatus,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| Error::Kube {
                    what: format!("read kubeconfig {}", path.display()),
                    reason: e.to_string(),
                })?;
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| Error::Kube {
                        what: format!("kubeconfig {}", path.display()),
                        reason: e.to_string(),
                    })?
            }
            None => Config::incluster().map_err(|e| Error::Kube {
                what: "in-cluster configuration".into(),
                reason: e.to_string(),
            })?,
        };
        info!(server = %config.cluster_url, "kubernetes API");
        let host: Arc<str> = config
            .cluster_url
            .authority()
            .map_or("", |a| a.as_str())
            .into();
        let layer = crate::telemetry::kube_proxy::ApiClientLayer {
            metrics: metrics.rest_client.clone(),
            host,
        };
        let client = kube::client::ClientBuilder::try_from(config)
            .map_err(|e| Error::Kube {
                what: "kubernetes client".into(),
                reason: e.to_string(),
            })?
            .with_layer(&layer)
            .build();
        Ok(Self {
            client,
            health: Arc::new(ApiHealth {
                up: metrics.kube_api_up.clone(),
                ..ApiHealth::default()
            }),
            status,
            metrics,
        })
    }

    /// What this Node says about itself: its zone label (topology hints) and `spec.podCIDRs`
    /// (kube-proxy's `--detect-local-mode=NodeCIDR`). Unreadable: neither, with a warning.
    pub async fn node_facts(&self, name: &str) -> NodeFacts {
        let nodes = Api::<core::Node>::all(self.client.clone());
        match tokio::time::timeout(PROBE_INTERVAL, nodes.get(name)).await {
            Ok(Ok(node)) => NodeFacts::of(node),
            Ok(Err(error)) => {
                warn!(node = name, %error, "cannot read this Node; topology hints are ignored and pod CIDRs unknown");
                NodeFacts::default()
            }
            Err(_) => {
                warn!(
                    node = name,
                    "reading this Node timed out; topology hints are ignored and pod CIDRs unknown"
                );
                NodeFacts::default()
            }
        }
    }

    /// Whether running in a pod with a service account (in-cluster configuration available).
    pub fn in_cluster() -> bool {
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
    }

    pub fn health(&self) -> Arc<ApiHealth> {
        self.health.clone()
    }

    /// One source per watched kind; the publisher waits for all of them.
    pub fn ids() -> Vec<SourceId> {
        KINDS
            .iter()
            .chain(gateway::kinds().iter())
            .map(|kind| source_id(kind))
            .collect()
    }

    /// Starts every watcher and the reachability probe; they run until `shutdown`.
    /// Watches this node's Node for kube-proxy's `nodeEligible` (`/healthz`), until `shutdown`.
    pub fn watch_node(
        &self,
        name: String,
        clock: Arc<crate::kube_proxy::SyncClock>,
        shutdown: &CancellationToken,
    ) {
        tokio::spawn(node::watch(
            self.client.clone(),
            name,
            clock,
            shutdown.clone(),
        ));
    }

    /// Publishes `addresses` in the status of every Ingress the snapshots serve, until
    /// `shutdown` (`--publish-status-address`).
    pub fn publish_ingress_status(
        &self,
        addresses: Vec<String>,
        snapshots: SnapshotHandle,
        generations: tokio::sync::watch::Receiver<Generation>,
        shutdown: &CancellationToken,
    ) {
        tokio::spawn(status::publish(
            self.client.clone(),
            addresses,
            snapshots,
            generations,
            shutdown.clone(),
        ));
    }

    /// Writes the status of the Gateway API objects Capstan serves (`controller` names it in
    /// route parent statuses), until `shutdown`.
    pub fn publish_gateway_status(
        &self,
        controller: String,
        snapshots: SnapshotHandle,
        generations: tokio::sync::watch::Receiver<Generation>,
        shutdown: &CancellationToken,
    ) {
        tokio::spawn(gateway_status::publish(
            self.client.clone(),
            controller,
            snapshots,
            generations,
            shutdown.clone(),
        ));
    }

    pub fn spawn(&self, updates: mpsc::Sender<Update>, shutdown: &CancellationToken) {
        let context = |kind: &'static str| WatchContext {
            source: source_id(kind),
            kind,
            updates: updates.clone(),
            health: self.health.clone(),
            status: self.status.clone(),
            metrics: self.metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let client = &self.client;
        tokio::spawn(watch::run(
            Api::<core::Service>::all(client.clone()),
            watcher::Config::default(),
            Kind {
                id: |o: &core::Service| ObjectId::Service(object_key(&o.metadata)),
                convert: |o| convert::service(o).map(|s| Some(Object::Service(s))),
            },
            context(SERVICES),
        ));
        tokio::spawn(watch::run(
            Api::<discovery::EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
            Kind {
                id: |o: &discovery::EndpointSlice| namespaced(&o.metadata, Namespaced::Slice),
                convert: |o| convert::endpoint_slice(o).map(|s| s.map(Object::EndpointSlice)),
            },
            context(ENDPOINT_SLICES),
        ));
        tokio::spawn(watch::run(
            Api::<networking::Ingress>::all(client.clone()),
            watcher::Config::default(),
            Kind {
                id: |o: &networking::Ingress| namespaced(&o.metadata, Namespaced::Ingress),
                convert: |o| convert::ingress(o).map(|i| Some(Object::Ingress(i))),
            },
            context(INGRESSES),
        ));
        tokio::spawn(watch::run(
            Api::<networking::IngressClass>::all(client.clone()),
            watcher::Config::default(),
            Kind {
                id: |o: &networking::IngressClass| {
                    ObjectId::IngressClass(o.metadata.name.as_deref().unwrap_or_default().into())
                },
                convert: |o| convert::ingress_class(o).map(|c| Some(Object::IngressClass(c))),
            },
            context(INGRESS_CLASSES),
        ));
        // Only TLS Secrets: the server filters by type, so other Secrets never reach this node.
        tokio::spawn(watch::run(
            Api::<core::Secret>::all(client.clone()),
            watcher::Config::default().fields(&format!("type={}", convert::TLS_SECRET_TYPE)),
            Kind {
                id: |o: &core::Secret| namespaced(&o.metadata, Namespaced::Secret),
                convert: |o| convert::tls_secret(o).map(|s| s.map(Object::TlsSecret)),
            },
            context(SECRETS),
        ));
        // Basic-auth Secrets: only those labelled for Capstan reach this node.
        tokio::spawn(watch::run(
            Api::<core::Secret>::all(client.clone()),
            watcher::Config::default().labels(&format!("{}=true", convert::BASIC_AUTH_LABEL)),
            Kind {
                id: |o: &core::Secret| namespaced(&o.metadata, Namespaced::Secret),
                convert: |o| convert::auth_secret(o).map(|s| s.map(Object::AuthSecret)),
            },
            context(AUTH_SECRETS),
        ));
        let gateway_contexts = gateway::kinds()
            .into_iter()
            .map(|kind| (kind, context(kind)))
            .collect();
        tokio::spawn(gateway::spawn(client.clone(), gateway_contexts));
        tokio::spawn(probe(
            self.client.clone(),
            self.health.clone(),
            shutdown.clone(),
        ));
    }
}

const SERVICES: &str = "services";
const ENDPOINT_SLICES: &str = "endpointslices";
const INGRESSES: &str = "ingresses";
const INGRESS_CLASSES: &str = "ingressclasses";
const SECRETS: &str = "secrets";
const AUTH_SECRETS: &str = "basic-auth-secrets";
const KINDS: [&str; 6] = [
    SERVICES,
    ENDPOINT_SLICES,
    INGRESSES,
    INGRESS_CLASSES,
    SECRETS,
    AUTH_SECRETS,
];

fn source_id(kind: &str) -> SourceId {
    SourceId::new(&format!("kubernetes:{kind}"))
}

enum Namespaced {
    Slice,
    Ingress,
    Secret,
}

fn namespaced(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    which: Namespaced,
) -> ObjectId {
    let namespace = meta.namespace.as_deref().unwrap_or("default").into();
    let name = meta.name.as_deref().unwrap_or_default().into();
    match which {
        Namespaced::Slice => ObjectId::EndpointSlice { namespace, name },
        Namespaced::Ingress => ObjectId::Ingress { namespace, name },
        Namespaced::Secret => ObjectId::Secret { namespace, name },
    }
}

fn object_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ServiceKey {
    ServiceKey::new(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// Marks the API reachable or not every [`PROBE_INTERVAL`]: a healthy watch with no changes
/// reports nothing, so reachability after an outage is learnt here.
async fn probe(client: Client, health: Arc<ApiHealth>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(PROBE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let probe = tokio::time::timeout(PROBE_INTERVAL, client.apiserver_version()).await;
        match probe {
            Ok(Ok(_)) => health.contact(),
            Ok(Err(error)) => health.failure(&error.to_string()),
            Err(_) => health.failure("version request timed out"),
        }
    }
}

// === impl ApiHealth ===

impl ApiHealth {
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Seconds since the API server last answered, if it ever did.
    pub fn seconds_since_contact(&self) -> Option<u64> {
        match self.last_contact.load(Ordering::Relaxed) {
            0 => None,
            at => Some(unix_now().saturating_sub(at)),
        }
    }

    pub fn last_failure(&self) -> u64 {
        self.last_failure.load(Ordering::Relaxed)
    }

    pub(crate) fn contact(&self) {
        self.last_contact.store(unix_now(), Ordering::Relaxed);
        self.up.set(1);
        if !self.reachable.swap(true, Ordering::Relaxed) {
            info!("kubernetes API reachable");
        }
    }

    pub(crate) fn failure(&self, error: &str) {
        self.last_failure.store(unix_now(), Ordering::Relaxed);
        self.up.set(0);
        if self.reachable.swap(false, Ordering::Relaxed) {
            warn!(%error, "kubernetes API unreachable; serving the last snapshot");
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
