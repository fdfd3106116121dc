//! The desired state, kept per source, and the updates that change it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use capstan_table::ServiceKey;

use crate::{
    AuthSecret, EndpointSlice, Gateway, GatewayClass, HttpRoute, Ingress, IngressClass, Namespace,
    ReferenceGrant, RouteKind, Service, TlsSecret,
};

/// Which source an update comes from. Each source owns its objects: a reset from one source
/// never touches another's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceId(pub Arc<str>);

/// One catalog object.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Ingress(Ingress),
    IngressClass(IngressClass),
    TlsSecret(TlsSecret),
    AuthSecret(AuthSecret),
    GatewayClass(GatewayClass),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    ReferenceGrant(ReferenceGrant),
    Namespace(Namespace),
}

/// The identity of a catalog object within its source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectId {
    Service(ServiceKey),
    EndpointSlice {
        namespace: Arc<str>,
        name: Arc<str>,
    },
    Ingress {
        namespace: Arc<str>,
        name: Arc<str>,
    },
    IngressClass(Arc<str>),
    Secret {
        namespace: Arc<str>,
        name: Arc<str>,
    },
    GatewayClass(Arc<str>),
    Gateway {
        namespace: Arc<str>,
        name: Arc<str>,
    },
    /// An HTTPRoute or a GRPCRoute.
    HttpRoute {
        kind: RouteKind,
        namespace: Arc<str>,
        name: Arc<str>,
    },
    ReferenceGrant {
        namespace: Arc<str>,
        name: Arc<str>,
    },
    Namespace(Arc<str>),
}

/// A change from a source.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// The source's complete state: anything not listed is deleted. Marks the source synced.
    Reset {
        source: SourceId,
        objects: Vec<Object>,
    },
    /// A relisted source (a Kubernetes watch restarted): like `Reset`, except that the objects in
    /// `keep` (listed but not convertible) keep their previous version, if they had one.
    Relist {
        source: SourceId,
        objects: Vec<Object>,
        keep: Vec<ObjectId>,
    },
    Upsert {
        source: SourceId,
        /// Boxed: an object is large, and updates queue by the thousand in a watch burst.
        object: Box<Object>,
    },
    Delete {
        source: SourceId,
        id: ObjectId,
    },
}

/// The desired state: every object of every source, and which sources have synced.
///
/// Each stored object has a [`Revision`]: a number that changes exactly when the object does, so
/// `compile` can tell which Services' inputs are unchanged and reuse what it built for them.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    sources: BTreeMap<SourceId, BTreeMap<ObjectId, Stored>>,
    synced: BTreeSet<SourceId>,
}

/// A number that identifies one version of one stored object: a changed object gets a new one,
/// an unchanged one (also through a reset or relist) keeps its own. Unique in the process, across
/// catalogs and their clones, so no two different objects ever share one.
pub type Revision = u64;

static LAST_REVISION: AtomicU64 = AtomicU64::new(0);

fn next_revision() -> Revision {
    LAST_REVISION.fetch_add(1, Ordering::Relaxed) + 1
}

#[derive(Clone, Debug)]
struct Stored {
    revision: Revision,
    object: Object,
}

// === impl SourceId ===

impl SourceId {
    pub fn new(name: &str) -> Self {
        Self(name.into())
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl Object ===

impl Object {
    pub fn id(&self) -> ObjectId {
        match self {
            Object::Service(service) => ObjectId::Service(service.key.clone()),
            Object::EndpointSlice(slice) => ObjectId::EndpointSlice {
                namespace: slice.namespace.clone(),
                name: slice.name.clone(),
            },
            Object::Ingress(ingress) => ObjectId::Ingress {
                namespace: ingress.namespace.clone(),
                name: ingress.name.clone(),
            },
            Object::IngressClass(class) => ObjectId::IngressClass(class.name.clone()),
            Object::TlsSecret(secret) => ObjectId::Secret {
                namespace: secret.namespace.clone(),
                name: secret.name.clone(),
            },
            Object::AuthSecret(secret) => ObjectId::Secret {
                namespace: secret.namespace.clone(),
                name: secret.name.clone(),
            },
            Object::GatewayClass(class) => ObjectId::GatewayClass(class.name.clone()),
            Object::Gateway(gateway) => ObjectId::Gateway {
                namespace: gateway.namespace.clone(),
                name: gateway.name.clone(),
            },
            Object::HttpRoute(route) => ObjectId::HttpRoute {
                kind: route.kind,
                namespace: route.namespace.clone(),
                name: route.name.clone(),
            },
            Object::ReferenceGrant(grant) => ObjectId::ReferenceGrant {
                namespace: grant.namespace.clone(),
                name: grant.name.clone(),
            },
            Object::Namespace(namespace) => ObjectId::Namespace(namespace.name.clone()),
        }
    }
}

// === impl ObjectId ===

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectId::Service(key) => write!(f, "Service {key}"),
            ObjectId::EndpointSlice { namespace, name } => {
                write!(f, "EndpointSlice {namespace}/{name}")
            }
            ObjectId::Ingress { namespace, name } => write!(f, "Ingress {namespace}/{name}"),
            ObjectId::IngressClass(name) => write!(f, "IngressClass {name}"),
            ObjectId::Secret { namespace, name } => write!(f, "Secret {namespace}/{name}"),
            ObjectId::GatewayClass(name) => write!(f, "GatewayClass {name}"),
            ObjectId::Gateway { namespace, name } => write!(f, "Gateway {namespace}/{name}"),
            ObjectId::HttpRoute {
                kind,
                namespace,
                name,
            } => write!(f, "{} {namespace}/{name}", kind.as_str()),
            ObjectId::ReferenceGrant { namespace, name } => {
                write!(f, "ReferenceGrant {namespace}/{name}")
            }
            ObjectId::Namespace(name) => write!(f, "Namespace {name}"),
        }
    }
}

// === impl Update ===

impl Update {
    pub fn source(&self) -> &SourceId {
        match self {
            Update::Reset { source, .. }
            | Update::Relist { source, .. }
            | Update::Upsert { source, .. }
            | Update::Delete { source, .. } => source,
        }
    }
}

// === impl Catalog ===

impl Catalog {
    /// Applies one update. Returns whether the desired state changed.
    pub fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Reset { source, objects } => self.replace(source, objects, Vec::new()),
            Update::Relist {
                source,
                objects,
                keep,
            } => self.replace(source, objects, keep),
            Update::Upsert { source, object } => {
                let objects = self.sources.entry(source).or_default();
                let id = object.id();
                if objects.get(&id).is_some_and(|s| s.object == *object) {
                    return false;
                }
                let stored = Stored {
                    revision: next_revision(),
                    object: *object,
                };
                objects.insert(id, stored);
                true
            }
            Update::Delete { source, id } => self
                .sources
                .get_mut(&source)
                .is_some_and(|objects| objects.remove(&id).is_some()),
        }
    }

    /// A source's whole state becomes `objects`, plus the previous version of those in `keep`.
    fn replace(&mut self, source: SourceId, objects: Vec<Object>, keep: Vec<ObjectId>) -> bool {
        let mut previous = self.sources.remove(&source).unwrap_or_default();
        let mut fresh: BTreeMap<ObjectId, Stored> = BTreeMap::new();
        let mut changed = self.synced.insert(source.clone());
        for object in objects {
            let id = object.id();
            let stored = match previous.remove(&id) {
                Some(old) if old.object == object => old,
                _ => {
                    changed = true;
                    Stored {
                        revision: next_revision(),
                        object,
                    }
                }
            };
            fresh.insert(id, stored);
        }
        for id in keep {
            if let Some(old) = previous.remove(&id) {
                fresh.insert(id, old);
            }
        }
        // Whatever is left of the previous state is deleted.
        changed |= !previous.is_empty();
        self.sources.insert(source, fresh);
        changed
    }

    /// Whether every one of `sources` has delivered its initial state.
    pub fn all_synced<'a>(&self, mut sources: impl Iterator<Item = &'a SourceId>) -> bool {
        sources.all(|s| self.synced.contains(s))
    }

    /// Every object with its source, sources in order.
    pub fn objects(&self) -> impl Iterator<Item = (&SourceId, &Object)> {
        self.revisions().map(|(source, _, object)| (source, object))
    }

    /// Objects over every source.
    pub fn len(&self) -> usize {
        self.sources.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every object with its source and revision, sources in order.
    pub fn revisions(&self) -> impl Iterator<Item = (&SourceId, Revision, &Object)> {
        self.sources.iter().flat_map(|(source, objects)| {
            objects
                .values()
                .map(move |stored| (source, stored.revision, &stored.object))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceKind;

    fn service(name: &str) -> Object {
        Object::Service(Service::new(
            ServiceKey::new("default", name),
            ServiceKind::ClusterIp,
        ))
    }

    #[test]
    fn relist_keeps_the_previous_version_of_unconvertible_objects() {
        let source = SourceId::new("kube:services");
        let mut catalog = Catalog::default();
        catalog.apply(Update::Reset {
            source: source.clone(),
            objects: vec![service("a"), service("b"), service("c")],
        });
        let kept = ObjectId::Service(ServiceKey::new("default", "b"));
        let never_seen = ObjectId::Service(ServiceKey::new("default", "z"));
        assert!(catalog.apply(Update::Relist {
            source,
            objects: vec![service("a")],
            keep: vec![kept, never_seen],
        }));
        let names: Vec<_> = catalog.objects().map(|(_, o)| o.id().to_string()).collect();
        assert_eq!(names, ["Service default/a", "Service default/b"]);
    }

    #[test]
    fn reset_replaces_only_its_own_source() {
        let (a, b) = (SourceId::new("a"), SourceId::new("b"));
        let mut catalog = Catalog::default();
        assert!(!catalog.all_synced([&a, &b].into_iter()));
        assert!(catalog.apply(Update::Reset {
            source: a.clone(),
            objects: vec![service("x"), service("y")],
        }));
        assert!(catalog.apply(Update::Reset {
            source: b.clone(),
            objects: vec![service("z")],
        }));
        assert!(catalog.all_synced([&a, &b].into_iter()));
        assert!(catalog.apply(Update::Reset {
            source: a.clone(),
            objects: vec![service("y")],
        }));
        let names: Vec<_> = catalog.objects().map(|(_, o)| o.id().to_string()).collect();
        assert_eq!(names, ["Service default/y", "Service default/z"]);
        assert!(
            !catalog.apply(Update::Reset {
                source: a.clone(),
                objects: vec![service("y")],
            }),
            "an identical reset changes nothing"
        );
    }

    #[test]
    fn revisions_change_exactly_when_objects_do() {
        let a = SourceId::new("a");
        let mut catalog = Catalog::default();
        let revisions = |catalog: &Catalog| -> Vec<(String, Revision)> {
            catalog
                .revisions()
                .map(|(_, r, o)| (o.id().to_string(), r))
                .collect()
        };
        catalog.apply(Update::Reset {
            source: a.clone(),
            objects: vec![service("x"), service("y")],
        });
        let before = revisions(&catalog);
        // The same state again, by reset and by upsert: every revision stays.
        catalog.apply(Update::Reset {
            source: a.clone(),
            objects: vec![service("x"), service("y")],
        });
        catalog.apply(Update::Upsert {
            source: a.clone(),
            object: Box::new(service("y")),
        });
        assert_eq!(revisions(&catalog), before);
        // One object changed: only its revision moves.
        let mut changed = Service::new(ServiceKey::new("default", "y"), ServiceKind::NodePort);
        changed.cluster_ips = vec!["10.0.0.9".parse().expect("ip")];
        catalog.apply(Update::Upsert {
            source: a,
            object: Box::new(Object::Service(changed)),
        });
        let after = revisions(&catalog);
        assert_eq!(after[0], before[0]);
        assert_eq!(after[1].0, before[1].0);
        assert_ne!(after[1].1, before[1].1);
    }

    #[test]
    fn upsert_and_delete() {
        let a = SourceId::new("a");
        let mut catalog = Catalog::default();
        assert!(catalog.apply(Update::Upsert {
            source: a.clone(),
            object: Box::new(service("x")),
        }));
        assert!(!catalog.apply(Update::Upsert {
            source: a.clone(),
            object: Box::new(service("x")),
        }));
        let id = service("x").id();
        assert!(catalog.apply(Update::Delete {
            source: a.clone(),
            id: id.clone(),
        }));
        assert!(!catalog.apply(Update::Delete { source: a, id }));
        assert_eq!(catalog.objects().count(), 0);
    }
}
