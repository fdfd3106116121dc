//! Desired state and the pure compile step.
//!
//! Owns: the validated, defaulted catalog entries ([`Service`], [`EndpointSlice`], Ingress and
//! Gateway API objects), the traffic
//! policy vocabulary ([`route_policy`], [`service_policy`]), the [`Update`]s
//! sources send, [`Catalog::apply`], and [`compile`], which turns a catalog (plus the previous
//! snapshot, for carried-over state) into one immutable [`capstan_table::Snapshot`].
//!
//! Must not import: tokio, kube, k8s-openapi, hyper, or any plane. Sources translate the outside
//! world into these types; planes only ever see the compiled snapshot.

mod catalog;
mod compile;
mod error;
mod gateway;
mod ingress;
mod model;
mod policy;

pub use catalog::{Catalog, Object, ObjectId, Revision, SourceId, Update};
pub use compile::{
    CompileOptions, DnsOptions, GatewayOptions, IngressOptions, NodeTopology, categorize, compile,
};
pub use error::CatalogError;
pub use gateway::{
    AllowedNamespaces, BackendRef, Filter, Gateway, GatewayClass, HttpRoute, LabelSelector,
    Listener, Namespace, ObjectRef, ParentRef, PathSpec, ReferenceGrant, RouteKind, RouteMatch,
    RouteRule, SelectorRequirement,
};
pub use ingress::{
    AuthSecret, Ingress, IngressBackend, IngressClass, IngressPath, IngressRule, IngressTls,
    TlsSecret,
};
pub use model::{
    EndpointSlice, Origin, Service, ServiceKind, ServicePort, SliceEndpoint, SlicePort, TargetPort,
    TrafficDistribution, TrafficPolicy,
};
pub use policy::{
    ANNOTATION_PREFIX, ROUTE_KEYS, SERVICE_KEYS, ServicePolicy, capstan_annotations, duration,
    route_policy, service_policy,
};
