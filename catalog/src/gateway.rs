//! Gateway API catalog entries (`gateway.networking.k8s.io/v1`, standard channel): GatewayClass,
//! Gateway, HTTPRoute and GRPCRoute, ReferenceGrant (v1beta1), and Namespaces for their labels. Sources convert
//! the manifests into these; references are resolved, and validity judged, by `compile`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use capstan_table::{HeaderEdits, PathModifier};

/// A GatewayClass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayClass {
    pub name: Arc<str>,
    pub generation: i64,
    /// `spec.controllerName`: Capstan serves classes whose controller is its own.
    pub controller: String,
}

/// A Gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub generation: i64,
    pub class_name: Arc<str>,
    /// `spec.addresses` of type `IPAddress` (or no type).
    pub addresses: Vec<IpAddr>,
    /// Addresses of other types, or unparsable: the Gateway is not programmed.
    pub unusable_addresses: Vec<String>,
    /// `spec.infrastructure.parametersRef`, as `group/kind/name`: Capstan reads no parameters
    /// kind, so a Gateway with one is not accepted (`InvalidParameters`).
    pub parameters_ref: Option<String>,
    pub listeners: Vec<Listener>,
}

/// One `spec.listeners[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: Arc<str>,
    /// Lowercase.
    pub hostname: Option<String>,
    pub port: u16,
    /// As written: `HTTP` and `HTTPS` are served.
    pub protocol: String,
    /// `tls.mode` is `Passthrough`.
    pub passthrough: bool,
    pub certificate_refs: Vec<ObjectRef>,
    pub allowed_namespaces: AllowedNamespaces,
    /// `allowedRoutes.kinds`; empty: the protocol's default (HTTPRoute).
    pub allowed_kinds: Vec<ObjectRef>,
}

/// `allowedRoutes.namespaces.from`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AllowedNamespaces {
    #[default]
    Same,
    All,
    Selector(LabelSelector),
}

/// A `metav1.LabelSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One `matchExpressions[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    pub values: Vec<String>,
}

/// A reference as Gateway API writes them: group, kind, namespace (default: the referrer's),
/// name, and for backends a port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectRef {
    pub group: String,
    pub kind: String,
    pub namespace: Option<Arc<str>>,
    pub name: Arc<str>,
}

/// An HTTPRoute, or a GRPCRoute: a GRPCRoute is the same object with method matches
/// ([`PathSpec::Grpc`]), its own precedence, and HTTP/2 to its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRoute {
    pub kind: RouteKind,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub generation: i64,
    /// `metadata.creationTimestamp` as written (RFC 3339 sorts as text): older routes win ties.
    pub created: String,
    pub parents: Vec<ParentRef>,
    /// Lowercase.
    pub hostnames: Vec<String>,
    pub rules: Vec<RouteRule>,
}

/// Which route kind an [`HttpRoute`] was written as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    #[default]
    Http,
    Grpc,
}

impl RouteKind {
    /// The Kubernetes kind: `HTTPRoute` or `GRPCRoute`.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// One `parentRefs[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    pub group: String,
    pub kind: String,
    pub namespace: Option<Arc<str>>,
    pub name: Arc<str>,
    pub section_name: Option<Arc<str>>,
    pub port: Option<u16>,
}

/// One `rules[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    /// Never empty: a rule without matches has one `PathPrefix /` match.
    pub matches: Vec<RouteMatch>,
    pub filters: Vec<Filter>,
    pub backends: Vec<BackendRef>,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
}

/// One `matches[]` entry, as written (regular expressions are compiled by `compile`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    pub path: PathSpec,
    pub method: Option<String>,
    /// `(name, value, is_regex)`.
    pub headers: Vec<(String, String, bool)>,
    pub query: Vec<(String, String, bool)>,
}

/// `HTTPPathMatch`, or a GRPCRoute's `GRPCMethodMatch` (the request path is `/service/method`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSpec {
    Exact(String),
    Prefix(String),
    Regex(String),
    /// `None` for either: any. `regex`: both are regular expressions (`RegularExpression`).
    Grpc {
        service: Option<String>,
        method: Option<String>,
        regex: bool,
    },
}

/// A route or backend filter, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    RequestHeaders(HeaderEdits),
    ResponseHeaders(HeaderEdits),
    Redirect {
        scheme: Option<String>,
        hostname: Option<String>,
        port: Option<u16>,
        path: Option<PathModifier>,
        status: u16,
    },
    Rewrite {
        hostname: Option<String>,
        path: Option<PathModifier>,
    },
    /// `RequestMirror`: a copy of each request (a `percent` of them) to this backend, whose
    /// answer is ignored.
    Mirror {
        backend: ObjectRef,
        port: Option<u16>,
        /// `(numerator, denominator)`: `percent` is `(percent, 100)`; all: `(1, 1)`.
        fraction: (u32, u32),
    },
    /// `CORS`, `ExtensionRef`...: the rule is not accepted
    /// (`UnsupportedValue`).
    Unsupported(String),
}

/// One `backendRefs[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRef {
    pub target: ObjectRef,
    pub port: Option<u16>,
    /// Default 1.
    pub weight: u32,
    pub filters: Vec<Filter>,
}

/// A ReferenceGrant: objects of `from` may refer to `to` objects in this namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceGrant {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// `(group, kind, namespace)`.
    pub from: Vec<(String, String, String)>,
    /// `(group, kind, name)`; no name: every object of the kind.
    pub to: Vec<(String, String, Option<String>)>,
}

/// A Namespace: its labels are what `allowedRoutes` selectors match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: Arc<str>,
    pub labels: BTreeMap<String, String>,
}

// === impl LabelSelector ===

impl LabelSelector {
    /// Whether `labels` are selected (an empty selector selects everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let labels_match = self
            .match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v));
        labels_match
            && self.match_expressions.iter().all(|req| {
                let value = labels.get(&req.key);
                match req.operator.as_str() {
                    "In" => value.is_some_and(|v| req.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !req.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selector_match_labels_and_expressions() {
        let selector = LabelSelector {
            match_labels: labels(&[("env", "prod")]),
            match_expressions: vec![
                SelectorRequirement {
                    key: "team".into(),
                    operator: "In".into(),
                    values: vec!["a".into(), "b".into()],
                },
                SelectorRequirement {
                    key: "legacy".into(),
                    operator: "DoesNotExist".into(),
                    values: vec![],
                },
            ],
        };
        assert!(selector.matches(&labels(&[("env", "prod"), ("team", "b")])));
        assert!(!selector.matches(&labels(&[("env", "prod"), ("team", "c")])));
        assert!(!selector.matches(&labels(&[("env", "dev"), ("team", "a")])));
        assert!(!selector.matches(&labels(&[("env", "prod"), ("team", "a"), ("legacy", "")])));
        assert!(LabelSelector::default().matches(&labels(&[])));
    }
}
