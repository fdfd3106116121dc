//! The immutable bundle of tables the planes read, and the single atomic store that publishes it.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::{DnsTable, GatewayTable, IngressTable, ProxyTable};

/// Monotonic snapshot number; 1 is the first published snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u64);

/// Everything the planes read, for one generation. Never mutated after publication.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub generation: Generation,
    pub proxy: Arc<ProxyTable>,
    pub dns: Arc<DnsTable>,
    pub ingress: Arc<IngressTable>,
    pub gateway: Arc<GatewayTable>,
    /// Objects `compile` rejected or degraded (conflicts, unusable ports), for the admin endpoint.
    pub problems: Arc<[Problem]>,
}

/// Something about one object that `compile` could not honour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub object: String,
    pub message: String,
}

/// The one place a snapshot is published. Cheap to clone; readers never lock.
#[derive(Clone, Debug, Default)]
pub struct SnapshotHandle {
    current: Arc<ArcSwapOption<Snapshot>>,
}

// === impl Generation ===

impl Generation {
    pub fn next(self) -> Self {
        Generation(self.0 + 1)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// === impl Problem ===

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

// === impl SnapshotHandle ===

impl SnapshotHandle {
    /// The current snapshot, or `None` before the first publish. Callers keep the `Arc` for the
    /// whole connection, request or query.
    pub fn load(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Publishes `snapshot` with one atomic store.
    pub fn store(&self, snapshot: Arc<Snapshot>) {
        self.current.store(Some(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_keep_their_snapshot_across_a_store() {
        let handle = SnapshotHandle::default();
        assert!(handle.load().is_none());
        handle.store(Arc::new(Snapshot {
            generation: Generation(1),
            ..Snapshot::default()
        }));
        let held = handle.load().expect("published");
        handle.store(Arc::new(Snapshot {
            generation: Generation(1).next(),
            ..Snapshot::default()
        }));
        assert_eq!(held.generation, Generation(1));
        assert_eq!(handle.load().map(|s| s.generation), Some(Generation(2)));
    }
}
