//! The desired state, kept per source, and the updates that change it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use capstan_table::ServiceKey;

use crate::{EndpointSlice, Ingress, IngressClass, Service, TlsSecret};

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
}

/// The identity of a catalog object within its source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectId {
    Service(ServiceKey),
    EndpointSlice { namespace: Arc<str>, name: Arc<str> },
    Ingress { namespace: Arc<str>, name: Arc<str> },
    IngressClass(Arc<str>),
    Secret { namespace: Arc<str>, name: Arc<str> },
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
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    sources: BTreeMap<SourceId, BTreeMap<ObjectId, Object>>,
    synced: BTreeSet<SourceId>,
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
            Update::Reset { source, objects } => {
                let fresh: BTreeMap<_, _> = objects.into_iter().map(|o| (o.id(), o)).collect();
                let newly_synced = self.synced.insert(source.clone());
                let previous = self.sources.insert(source, fresh.clone());
                newly_synced || previous.as_ref() != Some(&fresh)
            }
            Update::Relist {
                source,
                objects,
                keep,
            } => {
                let mut fresh: BTreeMap<_, _> = objects.into_iter().map(|o| (o.id(), o)).collect();
                if let Some(previous) = self.sources.get(&source) {
                    for id in keep {
                        if let Some(object) = previous.get(&id) {
                            fresh.insert(id, object.clone());
                        }
                    }
                }
                let newly_synced = self.synced.insert(source.clone());
                let previous = self.sources.insert(source, fresh.clone());
                newly_synced || previous.as_ref() != Some(&fresh)
            }
            Update::Upsert { source, object } => {
                let objects = self.sources.entry(source).or_default();
                let id = object.id();
                let object = *object;
                objects.insert(id, object.clone()).as_ref() != Some(&object)
            }
            Update::Delete { source, id } => self
                .sources
                .get_mut(&source)
                .is_some_and(|objects| objects.remove(&id).is_some()),
        }
    }

    /// Whether every one of `sources` has delivered its initial state.
    pub fn all_synced<'a>(&self, mut sources: impl Iterator<Item = &'a SourceId>) -> bool {
        sources.all(|s| self.synced.contains(s))
    }

    /// Every object with its source, sources in order.
    pub fn objects(&self) -> impl Iterator<Item = (&SourceId, &Object)> {
        self.sources
            .iter()
            .flat_map(|(source, objects)| objects.values().map(move |o| (source, o)))
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
