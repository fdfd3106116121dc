//! The single writer: applies updates to the catalog, compiles, and publishes one snapshot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_catalog::{Catalog, CompileOptions, Object, ObjectId, SourceId, Update, compile};
use capstan_table::{Generation, SnapshotHandle};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::kube_proxy::SyncClock;
use crate::telemetry::Metrics;

/// Updates arriving within this window of the first one are compiled together.
const DEBOUNCE: Duration = Duration::from_millis(10);

/// Owns the catalog; the only code that stores snapshots.
#[derive(Debug)]
pub struct Publisher {
    pub catalog: Catalog,
    pub sources: Vec<SourceId>,
    pub options: CompileOptions,
    pub snapshots: SnapshotHandle,
    pub generations: watch::Sender<Generation>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<SyncClock>,
    /// The last published generation and when its first change arrived (for kube-proxy's
    /// `network_programming_duration_seconds`, observed once the rules for it are in force).
    pub arrivals: watch::Sender<Option<(Generation, Instant)>>,
}

// === impl Publisher ===

impl Publisher {
    /// Runs until every update sender is gone. Publishes nothing until every source has synced.
    pub async fn run(mut self, mut updates: mpsc::Receiver<Update>) {
        let mut published = false;
        while let Some(update) = updates.recv().await {
            let arrived = Instant::now();
            self.count_changes(&update);
            let mut changed = self.catalog.apply(update);
            let deadline = tokio::time::Instant::now() + DEBOUNCE;
            loop {
                tokio::select! {
                    next = updates.recv() => match next {
                        Some(update) => {
                            self.count_changes(&update);
                            changed |= self.catalog.apply(update);
                        }
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            if !self.catalog.all_synced(self.sources.iter()) {
                debug!("waiting for every source to sync");
                continue;
            }
            if changed || !published {
                let generation = self.publish();
                if published {
                    self.metrics
                        .sync_seconds
                        .observe(arrived.elapsed().as_secs_f64());
                    self.arrivals.send_replace(Some((generation, arrived)));
                }
                published = true;
            }
        }
    }

    /// Counts an update's EndpointSlice and Service changes (kube-proxy's `*_changes_total` and
    /// `*_changes_pending`): one per object upserted or deleted, every object of a relist.
    fn count_changes(&self, update: &Update) {
        let kind = |object: &Object| match object {
            Object::EndpointSlice(_) => (1, 0),
            Object::Service(_) => (0, 1),
            _ => (0, 0),
        };
        let (endpoints, services) = match update {
            Update::Reset { objects, .. } | Update::Relist { objects, .. } => objects
                .iter()
                .map(kind)
                .fold((0, 0), |(e, s), (de, ds)| (e + de, s + ds)),
            Update::Upsert { object, .. } => kind(object),
            Update::Delete { id, .. } => match id {
                ObjectId::EndpointSlice { .. } => (1, 0),
                ObjectId::Service(_) => (0, 1),
                _ => (0, 0),
            },
        };
        self.metrics
            .kube_proxy
            .changes_received(endpoints, services);
    }

    /// Compiles the catalog and stores the result with one atomic store; returns its generation.
    pub fn publish(&mut self) -> Generation {
        let previous = self.snapshots.load();
        let generation = previous
            .as_ref()
            .map_or(Generation::default(), |s| s.generation)
            .next();
        let started = Instant::now();
        let snapshot = compile(
            &self.catalog,
            previous.as_deref(),
            &self.options,
            generation,
        );
        let elapsed = started.elapsed();
        self.metrics.compile_seconds.observe(elapsed.as_secs_f64());
        for problem in snapshot.problems.iter() {
            warn!(%problem, "not applied");
        }
        self.metrics
            .catalog_problems
            .set(i64::try_from(snapshot.problems.len()).unwrap_or(i64::MAX));
        info!(
            %generation,
            ports = snapshot.proxy.ports.len(),
            frontends = snapshot.proxy.frontends.len(),
            compile_us = elapsed.as_micros(),
            "snapshot published"
        );
        drop(previous);
        self.snapshots.store(Arc::new(snapshot));
        self.metrics
            .snapshot_generation
            .set(i64::try_from(generation.0).unwrap_or(i64::MAX));
        self.clock.published();
        self.metrics.kube_proxy.changes_published();
        self.generations.send_replace(generation);
        generation
    }
}
