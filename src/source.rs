//! Sources: the outside world translated into catalog [`Update`]s.
//!
//! The Kubernetes API ([`KubeSource`]), files on disk (plain Kubernetes manifests and
//! `capstan.yaml`) and the Docker engine ([`DockerSource`]) are read here; every source says when its initial state is complete, and a
//! file or object that fails keeps its previous content.

mod convert;
mod docker;
mod kube;
mod manifests;
mod standalone;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_catalog::{SourceId, Update};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use convert::{
    BALANCE_ANNOTATION, BASIC_AUTH_LABEL, DEFAULT_CLASS_ANNOTATION, LEGACY_CLASS_ANNOTATION,
    SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, TLS_SECRET_TYPE, auth_secret, endpoint_slice,
    ingress, ingress_class, parse_balance, secret, service, tls_secret,
};
pub use docker::{Container, DockerSource, Health, NAMESPACE as DOCKER_NAMESPACE};
pub use kube::{ApiHealth, KubeSource, NodeFacts};
pub use manifests::{Loaded, ManifestDir, parse as parse_manifests};
pub use standalone::{
    Backend, NAMESPACE as STANDALONE_NAMESPACE, Parsed, StandaloneFile, parse as parse_standalone,
};

use crate::Error;
use crate::telemetry::{Metrics, ReloadLabels, SourceLabels};

/// Changes within this window are applied together.
const DEBOUNCE: Duration = Duration::from_millis(100);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The file sources: every `--manifests` directory and the `--config` file.
#[derive(Debug)]
pub struct FileSources {
    manifests: Vec<(SourceId, ManifestDir)>,
    standalone: Option<(SourceId, StandaloneFile)>,
    status: SourceStatus,
    metrics: Arc<Metrics>,
}

/// What each source last loaded, for `/debug/snapshot`.
pub type SourceStatus = Arc<Mutex<BTreeMap<SourceId, SourceReport>>>;

/// The outcome of a source's last load.
#[derive(Clone, Debug, Default)]
pub struct SourceReport {
    pub files: usize,
    pub objects: usize,
    /// Files rejected by the last load (their previous content is still in force).
    pub errors: Vec<String>,
}

// === impl FileSources ===

impl FileSources {
    pub fn new(
        manifest_dirs: &[PathBuf],
        config: Option<&PathBuf>,
        status: SourceStatus,
        metrics: Arc<Metrics>,
    ) -> Self {
        let manifests = manifest_dirs
            .iter()
            .map(|dir| {
                let id = SourceId::new(&format!("manifests:{}", dir.display()));
                (id, ManifestDir::new(dir.clone()))
            })
            .collect();
        let standalone = config.map(|path| {
            let id = SourceId::new(&format!("config:{}", path.display()));
            (id, StandaloneFile::new(path.clone()))
        });
        Self {
            manifests,
            standalone,
            status,
            metrics,
        }
    }

    pub fn ids(&self) -> Vec<SourceId> {
        let manifests = self.manifests.iter().map(|(id, _)| id.clone());
        manifests
            .chain(self.standalone.iter().map(|(id, _)| id.clone()))
            .collect()
    }

    /// Loads every source once. At startup any invalid file is fatal: the errors are returned.
    pub async fn initial(&mut self) -> Result<Vec<Update>, Vec<Error>> {
        if let Some((_, file)) = &mut self.standalone {
            // Parse first so that names are known, then resolve them before the first publish.
            let _ = file.load();
            file.resolve(RESOLVE_TIMEOUT).await;
        }
        let (updates, errors) = self.load(None);
        if errors.is_empty() {
            Ok(updates)
        } else {
            Err(errors)
        }
    }

    /// Re-reads the given sources (see [`Self::reload`]), or all: one `Reset` per source and
    /// the errors met.
    fn load(&mut self, which: Option<&[Option<usize>]>) -> (Vec<Update>, Vec<Error>) {
        let wanted = |index: Option<usize>| which.is_none_or(|w| w.contains(&index));
        let mut loads: Vec<(SourceId, Loaded)> = self
            .manifests
            .iter_mut()
            .enumerate()
            .filter(|(index, _)| wanted(Some(*index)))
            .map(|(_, (id, dir))| (id.clone(), dir.load()))
            .collect();
        if let Some((id, file)) = &mut self.standalone
            && wanted(None)
        {
            loads.push((id.clone(), file.load()));
        }
        let mut updates = Vec::new();
        let mut all_errors = Vec::new();
        for (source, loaded) in loads {
            self.record(&source, &loaded);
            updates.push(Update::Reset {
                source,
                objects: loaded.objects,
            });
            all_errors.extend(loaded.errors);
        }
        (updates, all_errors)
    }

    /// Re-resolves the DNS backends of `capstan.yaml`; an update when any address changed.
    async fn resolve(&mut self) -> Option<Update> {
        let (id, file) = self.standalone.as_mut()?;
        if !file.resolve(RESOLVE_TIMEOUT).await {
            return None;
        }
        Some(Update::Reset {
            source: id.clone(),
            objects: file.objects(),
        })
    }

    fn record(&self, source: &SourceId, loaded: &Loaded) {
        record_load(&self.metrics, &self.status, source, loaded);
    }

    /// Watches the files (and SIGHUP) and re-resolves DNS backends until `shutdown`; sends a
    /// complete `Reset` per source on every change.
    pub async fn watch(
        mut self,
        updates: mpsc::Sender<Update>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let (events_tx, mut events) = mpsc::unbounded_channel::<Vec<PathBuf>>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                match event {
                    Ok(event) if !event.kind.is_access() => {
                        let _ = events_tx.send(event.paths);
                    }
                    Ok(_) => {}
                    // Overflow or a watch error: we no longer know what changed, so reload all.
                    Err(_) => {
                        let _ = events_tx.send(vec![]);
                    }
                }
            })
            .map_err(|source| Error::Watch {
                path: PathBuf::new(),
                source,
            })?;
        // Watch canonical paths so that event paths can be matched to their source.
        let mut watched = Vec::new();
        for (index, (_, dir)) in self.manifests.iter().enumerate() {
            let dir = canonical(dir.dir());
            watcher
                .watch(&dir, RecursiveMode::Recursive)
                .map_err(|source| Error::Watch {
                    path: dir.clone(),
                    source,
                })?;
            watched.push((Some(index), dir));
        }
        if let Some((_, file)) = &self.standalone {
            // Watch the directory: editors and ConfigMap mounts replace files by rename.
            let parent = canonical(
                file.path()
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            );
            watcher
                .watch(&parent, RecursiveMode::NonRecursive)
                .map_err(|source| Error::Watch {
                    path: parent.clone(),
                    source,
                })?;
            let name = file.path().file_name().map(|n| parent.join(n));
            watched.push((None, name.unwrap_or(parent)));
        }
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|source| Error::Io {
                what: "install SIGHUP handler",
                source,
            })?;
        let mut resolve_every = self.resolve_interval();
        let mut resolve = resolve_timer(resolve_every).await;

        loop {
            // A reload may have changed `resolve_interval`.
            if self.resolve_interval() != resolve_every {
                resolve_every = self.resolve_interval();
                resolve = resolve_timer(resolve_every).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                Some(mut paths) = events.recv() => {
                    let mut everything = paths.is_empty();
                    tokio::time::sleep(DEBOUNCE).await;
                    while let Ok(more) = events.try_recv() {
                        everything |= more.is_empty();
                        paths.extend(more);
                    }
                    let touched = |target: &Path, dir: bool| {
                        everything || paths.iter().any(|p| if dir { p.starts_with(target) } else { p == target })
                    };
                    let which: Vec<Option<usize>> = watched
                        .iter()
                        .filter(|(index, path)| touched(path, index.is_some()))
                        .map(|(index, _)| *index)
                        .collect();
                    if !which.is_empty() {
                        self.reload(&updates, Some(&which)).await;
                    }
                }
                Some(()) = hangup.recv() => {
                    info!("SIGHUP: reloading every file source");
                    self.reload(&updates, None).await;
                }
                _ = resolve.tick() => {
                    if let Some(update) = self.resolve().await {
                        info!("backend addresses changed");
                        let _ = updates.send(update).await;
                    }
                }
            }
        }
    }

    fn resolve_interval(&self) -> Duration {
        self.standalone
            .as_ref()
            .map_or(Duration::from_secs(3600), |(_, f)| f.resolve_interval())
    }

    /// Reloads the given sources (manifest directory indexes, `None` for `capstan.yaml`), or all.
    async fn reload(&mut self, updates: &mpsc::Sender<Update>, which: Option<&[Option<usize>]>) {
        let (mut batch, _errors) = self.load(which);
        // Names a new config added are resolved now, not at the next tick.
        batch.extend(self.resolve().await);
        for update in batch {
            if updates.send(update).await.is_err() {
                return;
            }
        }
    }
}

/// Counts a source's load in metrics, logs what it rejected, and keeps its report for
/// `/debug/snapshot`.
fn record_load(metrics: &Metrics, status: &SourceStatus, source: &SourceId, loaded: &Loaded) {
    let result = if loaded.errors.is_empty() {
        "success"
    } else {
        "failure"
    };
    let labels = ReloadLabels {
        source: source.to_string(),
        result,
    };
    metrics.reloads.get_or_create(&labels).inc();
    let source_labels = SourceLabels {
        source: source.to_string(),
    };
    let invalid = i64::try_from(loaded.errors.len()).unwrap_or(i64::MAX);
    metrics
        .invalid_files
        .get_or_create(&source_labels)
        .set(invalid);
    for error in &loaded.errors {
        warn!(%source, %error, "rejected; previous content kept");
    }
    let report = SourceReport {
        files: loaded.files,
        objects: loaded.objects.len(),
        errors: loaded.errors.iter().map(ToString::to_string).collect(),
    };
    if let Ok(mut status) = status.lock() {
        status.insert(source.clone(), report);
    }
}

/// An interval whose first tick is one period away.
async fn resolve_timer(every: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await;
    timer
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}
