//! One kind's watch loop: kube-rs watcher events → catalog updates.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

use capstan_catalog::{Object, ObjectId, SourceId, Update};
use futures_util::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;
use crate::source::SourceStatus;
use crate::telemetry::{KubeEventLabels, Metrics, SourceLabels};

use super::ApiHealth;

/// How one kind is identified and converted.
pub(super) struct Kind<K> {
    /// The catalog identity of an object, even one that does not convert.
    pub(super) id: fn(&K) -> ObjectId,
    /// `Ok(None)`: not for Capstan (an FQDN EndpointSlice, a Secret that is not TLS).
    pub(super) convert: fn(&K) -> Result<Option<Object>, Error>,
}

/// What every watch loop shares.
pub(super) struct WatchContext {
    pub(super) source: SourceId,
    pub(super) kind: &'static str,
    pub(super) updates: mpsc::Sender<Update>,
    pub(super) health: Arc<ApiHealth>,
    pub(super) status: SourceStatus,
    pub(super) metrics: Arc<Metrics>,
    pub(super) shutdown: CancellationToken,
}

/// Watches `api` until shutdown. Objects that fail conversion are logged, counted and reported
/// on `/debug/snapshot`; their previous version stays in the catalog.
pub(super) async fn run<K>(api: Api<K>, config: watcher::Config, kind: Kind<K>, cx: WatchContext)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let stream = watcher::watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    // Objects of a relist in progress; `None` between relists.
    let mut listing: Option<(Vec<Object>, Vec<ObjectId>)> = None;
    // Objects whose last version was rejected, with the reason.
    let mut rejected: BTreeMap<ObjectId, String> = BTreeMap::new();
    // Identities in the catalog now, for the object count.
    let mut known: HashSet<ObjectId> = HashSet::new();
    loop {
        let event = tokio::select! {
            () = cx.shutdown.cancelled() => return,
            event = stream.next() => event,
        };
        let event = match event {
            Some(Ok(event)) => event,
            Some(Err(error)) => {
                cx.count("error");
                cx.health.failure(&error.to_string());
                debug!(kind = cx.kind, %error, "watch failed; backing off");
                continue;
            }
            None => return,
        };
        cx.health.contact();
        let update = match event {
            Event::Init => {
                debug!(kind = cx.kind, "listing");
                listing = Some((Vec::new(), Vec::new()));
                None
            }
            Event::InitApply(object) => {
                let id = (kind.id)(&object);
                let (converted, kept) = listing.get_or_insert_with(Default::default);
                match (kind.convert)(&object) {
                    Ok(Some(object)) => {
                        rejected.remove(&id);
                        converted.push(object);
                    }
                    Ok(None) => {
                        rejected.remove(&id);
                    }
                    Err(error) => {
                        cx.reject(&id, &error, &mut rejected);
                        kept.push(id);
                    }
                }
                None
            }
            Event::InitDone => {
                let (converted, keep) = listing.take().unwrap_or_default();
                rejected.retain(|id, _| keep.contains(id));
                known = converted
                    .iter()
                    .map(Object::id)
                    .chain(keep.iter().cloned())
                    .collect();
                cx.count("list");
                info!(kind = cx.kind, objects = known.len(), "listed");
                Some(Update::Relist {
                    source: cx.source.clone(),
                    objects: converted,
                    keep,
                })
            }
            Event::Apply(object) => {
                cx.count("apply");
                let id = (kind.id)(&object);
                match (kind.convert)(&object) {
                    Ok(Some(object)) => {
                        rejected.remove(&id);
                        known.insert(id);
                        Some(Update::Upsert {
                            source: cx.source.clone(),
                            object: Box::new(object),
                        })
                    }
                    Ok(None) => {
                        rejected.remove(&id);
                        known.remove(&id);
                        Some(Update::Delete {
                            source: cx.source.clone(),
                            id,
                        })
                    }
                    Err(error) => {
                        cx.reject(&id, &error, &mut rejected);
                        None
                    }
                }
            }
            Event::Delete(object) => {
                cx.count("delete");
                let id = (kind.id)(&object);
                rejected.remove(&id);
                known.remove(&id);
                Some(Update::Delete {
                    source: cx.source.clone(),
                    id,
                })
            }
        };
        cx.report(known.len(), &rejected);
        if let Some(update) = update
            && cx.updates.send(update).await.is_err()
        {
            return;
        }
    }
}

// === impl WatchContext ===

impl WatchContext {
    fn count(&self, event: &'static str) {
        let labels = KubeEventLabels {
            resource: self.kind,
            event,
        };
        self.metrics.kube_events.get_or_create(&labels).inc();
    }

    fn reject(&self, id: &ObjectId, error: &Error, rejected: &mut BTreeMap<ObjectId, String>) {
        warn!(kind = self.kind, object = %id, %error, "rejected; previous version kept");
        self.count("invalid");
        rejected.insert(id.clone(), error.to_string());
    }

    fn report(&self, objects: usize, rejected: &BTreeMap<ObjectId, String>) {
        let labels = SourceLabels {
            source: self.source.to_string(),
        };
        let invalid = i64::try_from(rejected.len()).unwrap_or(i64::MAX);
        self.metrics
            .invalid_objects
            .get_or_create(&labels)
            .set(invalid);
        if let Ok(mut status) = self.status.lock() {
            let report = status.entry(self.source.clone()).or_default();
            report.objects = objects;
            report.errors = rejected.values().cloned().collect();
        }
    }
}
