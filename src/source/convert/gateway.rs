//! Gateway API documents (`gateway.networking.k8s.io/v1` GatewayClass, Gateway, HTTPRoute and
//! GRPCRoute ([`routes`]); `v1beta1` ReferenceGrant) and `v1` Namespaces → catalog entries, with the defaults the CRDs'
//! OpenAPI schemas apply (a rule without matches matches `PathPrefix /`, backendRefs are core
//! Services of weight 1, parentRefs are Gateways, redirects answer 302). The same serde types read
//! a manifest file and a watch event's JSON.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use capstan_catalog::{
    AllowedNamespaces, Gateway, GatewayClass, LabelSelector, Listener, Namespace, Object,
    ObjectRef, ReferenceGrant, RouteKind, SelectorRequirement,
};
use serde::Deserialize;

use crate::Error;

mod routes;

use routes::{FilterDoc, HttpRouteSpec};

/// The Gateway API group.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Meta {
    name: String,
    namespace: Option<String>,
    generation: Option<i64>,
    creation_timestamp: Option<String>,
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Document<S> {
    #[serde(default)]
    metadata: Meta,
    spec: S,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct GatewayClassSpec {
    controller_name: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct GatewaySpec {
    gateway_class_name: String,
    addresses: Vec<AddressDoc>,
    listeners: Vec<ListenerDoc>,
    infrastructure: Option<InfrastructureDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct InfrastructureDoc {
    parameters_ref: Option<RefDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct AddressDoc {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ListenerDoc {
    name: String,
    hostname: Option<String>,
    port: u16,
    protocol: String,
    tls: Option<TlsDoc>,
    allowed_routes: Option<AllowedRoutesDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct TlsDoc {
    mode: Option<String>,
    certificate_refs: Vec<RefDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct AllowedRoutesDoc {
    namespaces: Option<RouteNamespacesDoc>,
    kinds: Vec<RefDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RouteNamespacesDoc {
    from: Option<String>,
    selector: Option<SelectorDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SelectorDoc {
    match_labels: BTreeMap<String, String>,
    match_expressions: Vec<ExpressionDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ExpressionDoc {
    key: String,
    operator: String,
    values: Vec<String>,
}

/// A parentRef, backendRef, certificateRef or route kind: the fields they share.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RefDoc {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    section_name: Option<String>,
    port: Option<u16>,
    weight: Option<u32>,
    filters: Vec<FilterDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ReferenceGrantSpec {
    from: Vec<RefDoc>,
    to: Vec<RefDoc>,
}

/// Whether `(api_version, kind)` is a document this module converts.
pub(crate) fn is_gateway_kind(api_version: &str, kind: &str) -> bool {
    let group = api_version.split_once('/').map(|(g, _)| g);
    match (group, kind) {
        (
            Some(GATEWAY_GROUP),
            "GatewayClass" | "Gateway" | "HTTPRoute" | "GRPCRoute" | "ReferenceGrant",
        ) => true,
        (None, "Namespace") => api_version == "v1",
        _ => false,
    }
}

/// Converts one Gateway API or Namespace document (already parsed as JSON) into its catalog
/// entry. `Ok(None)`: a kind Capstan does not read.
pub(crate) fn gateway_object(
    kind: &str,
    document: serde_json::Value,
) -> Result<Option<Object>, Error> {
    let name = document
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let err = |reason: String| Error::Convert {
        kind: match kind {
            "GatewayClass" => "GatewayClass",
            "Gateway" => "Gateway",
            "HTTPRoute" => "HTTPRoute",
            "GRPCRoute" => "GRPCRoute",
            "ReferenceGrant" => "ReferenceGrant",
            _ => "Namespace",
        },
        name: name.clone(),
        reason,
    };
    if name.is_empty() {
        return Err(err("metadata.name is required".into()));
    }
    let parse_error = |e: serde_json::Error| err(e.to_string());
    let object = match kind {
        "GatewayClass" => {
            let doc: Document<GatewayClassSpec> =
                serde_json::from_value(document).map_err(parse_error)?;
            Object::GatewayClass(GatewayClass {
                name: name.as_str().into(),
                generation: doc.metadata.generation.unwrap_or(1),
                controller: doc.spec.controller_name,
            })
        }
        "Gateway" => {
            let doc: Document<GatewaySpec> =
                serde_json::from_value(document).map_err(parse_error)?;
            Object::Gateway(gateway(doc).map_err(err)?)
        }
        "HTTPRoute" => {
            let doc: Document<HttpRouteSpec> =
                serde_json::from_value(document).map_err(parse_error)?;
            Object::HttpRoute(routes::http_route(RouteKind::Http, doc).map_err(err)?)
        }
        "GRPCRoute" => {
            let doc: Document<HttpRouteSpec> =
                serde_json::from_value(document).map_err(parse_error)?;
            Object::HttpRoute(routes::http_route(RouteKind::Grpc, doc).map_err(err)?)
        }
        "ReferenceGrant" => {
            let doc: Document<ReferenceGrantSpec> =
                serde_json::from_value(document).map_err(parse_error)?;
            Object::ReferenceGrant(reference_grant(doc))
        }
        "Namespace" => {
            let meta: Meta = document
                .get("metadata")
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .map_err(parse_error)?
                .unwrap_or_default();
            let mut labels = meta.labels;
            labels.insert("kubernetes.io/metadata.name".into(), name.clone());
            Object::Namespace(Namespace {
                name: name.as_str().into(),
                labels,
            })
        }
        _ => return Ok(None),
    };
    Ok(Some(object))
}

fn namespace_of(meta: &Meta) -> Arc<str> {
    meta.namespace.as_deref().unwrap_or("default").into()
}

fn gateway(doc: Document<GatewaySpec>) -> Result<Gateway, String> {
    let mut addresses = Vec::new();
    let mut unusable = Vec::new();
    for address in &doc.spec.addresses {
        let ip_type = address.kind.as_deref().is_none_or(|t| t == "IPAddress");
        match address.value.parse::<IpAddr>() {
            Ok(ip) if ip_type => addresses.push(ip),
            _ => unusable.push(address.value.clone()),
        }
    }
    let mut listeners = Vec::new();
    for listener in doc.spec.listeners {
        if listener.name.is_empty() {
            return Err("every listener needs a name".into());
        }
        let tls = listener.tls.unwrap_or_default();
        let allowed = listener.allowed_routes.unwrap_or_default();
        let namespaces = allowed.namespaces.unwrap_or_default();
        let allowed_namespaces = match namespaces.from.as_deref() {
            None | Some("Same") => AllowedNamespaces::Same,
            Some("All") => AllowedNamespaces::All,
            Some("Selector") => {
                let selector = namespaces.selector.unwrap_or_default();
                AllowedNamespaces::Selector(LabelSelector {
                    match_labels: selector.match_labels,
                    match_expressions: selector
                        .match_expressions
                        .into_iter()
                        .map(|e| SelectorRequirement {
                            key: e.key,
                            operator: e.operator,
                            values: e.values,
                        })
                        .collect(),
                })
            }
            Some(other) => {
                return Err(format!(
                    "allowedRoutes.namespaces.from {other:?} is not one of Same, All, Selector"
                ));
            }
        };
        listeners.push(Listener {
            name: listener.name.into(),
            hostname: listener.hostname.map(|h| h.to_ascii_lowercase()),
            port: listener.port,
            protocol: listener.protocol,
            passthrough: tls.mode.as_deref() == Some("Passthrough"),
            certificate_refs: tls
                .certificate_refs
                .iter()
                .map(|r| object_ref(r, "", "Secret"))
                .collect(),
            allowed_namespaces,
            allowed_kinds: allowed
                .kinds
                .iter()
                .map(|k| object_ref(k, GATEWAY_GROUP, ""))
                .collect(),
        });
    }
    Ok(Gateway {
        namespace: namespace_of(&doc.metadata),
        name: doc.metadata.name.as_str().into(),
        generation: doc.metadata.generation.unwrap_or(1),
        class_name: doc.spec.gateway_class_name.into(),
        addresses,
        unusable_addresses: unusable,
        parameters_ref: doc
            .spec
            .infrastructure
            .and_then(|i| i.parameters_ref)
            .map(|r| {
                let group = r.group.unwrap_or_default();
                format!("{group}/{}/{}", r.kind.unwrap_or_default(), r.name)
            }),
        listeners,
    })
}

fn object_ref(r: &RefDoc, group: &str, kind: &str) -> ObjectRef {
    ObjectRef {
        group: r.group.clone().unwrap_or_else(|| group.to_owned()),
        kind: r.kind.clone().unwrap_or_else(|| kind.to_owned()),
        namespace: r.namespace.as_deref().map(Into::into),
        name: r.name.as_str().into(),
    }
}

fn reference_grant(doc: Document<ReferenceGrantSpec>) -> ReferenceGrant {
    ReferenceGrant {
        namespace: namespace_of(&doc.metadata),
        name: doc.metadata.name.as_str().into(),
        from: doc
            .spec
            .from
            .iter()
            .map(|f| {
                let group = f.group.clone().unwrap_or_default();
                let kind = f.kind.clone().unwrap_or_default();
                (group, kind, f.namespace.clone().unwrap_or_default())
            })
            .collect(),
        to: doc
            .spec
            .to
            .iter()
            .map(|t| {
                let name = (!t.name.is_empty()).then(|| t.name.clone());
                let group = t.group.clone().unwrap_or_default();
                (group, t.kind.clone().unwrap_or_default(), name)
            })
            .collect(),
    }
}
