//! Gateway API documents (`gateway.networking.k8s.io/v1` GatewayClass, Gateway, HTTPRoute;
//! `v1beta1` ReferenceGrant) and `v1` Namespaces → catalog entries, with the defaults the CRDs'
//! OpenAPI schemas apply (a rule without matches matches `PathPrefix /`, backendRefs are core
//! Services of weight 1, parentRefs are Gateways, redirects answer 302). The same serde types read
//! a manifest file and a watch event's JSON.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use capstan_catalog::{
    AllowedNamespaces, BackendRef, Filter, Gateway, GatewayClass, HttpRoute, LabelSelector,
    Listener, Namespace, Object, ObjectRef, ParentRef, PathSpec, ReferenceGrant, RouteMatch,
    RouteRule, SelectorRequirement,
};
use capstan_table::{HeaderEdits, PathModifier};
use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::Error;

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
struct HttpRouteSpec {
    parent_refs: Vec<RefDoc>,
    hostnames: Vec<String>,
    rules: Vec<RuleDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RuleDoc {
    matches: Vec<MatchDoc>,
    filters: Vec<FilterDoc>,
    backend_refs: Vec<RefDoc>,
    timeouts: Option<TimeoutsDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct TimeoutsDoc {
    request: Option<String>,
    backend_request: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct MatchDoc {
    path: Option<TypedValue>,
    headers: Vec<TypedValue>,
    query_params: Vec<TypedValue>,
    method: Option<String>,
}

/// `{type, name, value}` of path, header and query matches and header modifiers.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct TypedValue {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    value: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct FilterDoc {
    #[serde(rename = "type")]
    kind: String,
    request_header_modifier: Option<HeaderModifierDoc>,
    response_header_modifier: Option<HeaderModifierDoc>,
    request_redirect: Option<RedirectDoc>,
    #[serde(rename = "urlRewrite")]
    url_rewrite: Option<RewriteDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct HeaderModifierDoc {
    set: Vec<TypedValue>,
    add: Vec<TypedValue>,
    remove: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RedirectDoc {
    scheme: Option<String>,
    hostname: Option<String>,
    path: Option<PathModifierDoc>,
    port: Option<u16>,
    status_code: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RewriteDoc {
    hostname: Option<String>,
    path: Option<PathModifierDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PathModifierDoc {
    #[serde(rename = "type")]
    kind: String,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
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
        (Some(GATEWAY_GROUP), "GatewayClass" | "Gateway" | "HTTPRoute" | "ReferenceGrant") => true,
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
            Object::HttpRoute(http_route(doc).map_err(err)?)
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

fn http_route(doc: Document<HttpRouteSpec>) -> Result<HttpRoute, String> {
    let parents = doc
        .spec
        .parent_refs
        .iter()
        .map(|p| ParentRef {
            group: p.group.clone().unwrap_or_else(|| GATEWAY_GROUP.to_owned()),
            kind: p.kind.clone().unwrap_or_else(|| "Gateway".to_owned()),
            namespace: p.namespace.as_deref().map(Into::into),
            name: p.name.as_str().into(),
            section_name: p.section_name.as_deref().map(Into::into),
            port: p.port,
        })
        .collect();
    let mut rules = Vec::new();
    for (index, rule) in doc.spec.rules.into_iter().enumerate() {
        rules.push(route_rule(rule).map_err(|e| format!("rules[{index}]: {e}"))?);
    }
    if rules.is_empty() {
        // The CRD's default: one rule matching every request, with no backend.
        rules.push(route_rule(RuleDoc::default())?);
    }
    Ok(HttpRoute {
        namespace: namespace_of(&doc.metadata),
        name: doc.metadata.name.as_str().into(),
        generation: doc.metadata.generation.unwrap_or(1),
        created: doc.metadata.creation_timestamp.unwrap_or_default(),
        parents,
        hostnames: doc
            .spec
            .hostnames
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        rules,
    })
}

fn route_rule(rule: RuleDoc) -> Result<RouteRule, String> {
    let mut matches = Vec::new();
    for m in &rule.matches {
        matches.push(route_match(m)?);
    }
    if matches.is_empty() {
        matches.push(RouteMatch {
            path: PathSpec::Prefix("/".into()),
            method: None,
            headers: vec![],
            query: vec![],
        });
    }
    let filters = rule.filters.iter().map(filter).collect::<Result<_, _>>()?;
    let mut backends = Vec::new();
    for backend in &rule.backend_refs {
        backends.push(BackendRef {
            target: object_ref(backend, "", "Service"),
            port: backend.port,
            weight: backend.weight.unwrap_or(1),
            filters: backend
                .filters
                .iter()
                .map(filter)
                .collect::<Result<_, _>>()?,
        });
    }
    let timeouts = rule.timeouts.unwrap_or_default();
    Ok(RouteRule {
        matches,
        filters,
        backends,
        request_timeout: timeouts
            .request
            .as_deref()
            .map(gateway_duration)
            .transpose()?,
        backend_timeout: timeouts
            .backend_request
            .as_deref()
            .map(gateway_duration)
            .transpose()?,
    })
}

/// A GEP-2257 duration (`10s`, `1h30m`, `500ms`); `0s` means none.
fn gateway_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("duration {text:?}: {e}"))
}

fn route_match(m: &MatchDoc) -> Result<RouteMatch, String> {
    let path = match &m.path {
        None => PathSpec::Prefix("/".into()),
        Some(path) => {
            let value = path.value.clone().unwrap_or_else(|| "/".into());
            match path.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => PathSpec::Exact(value),
                "PathPrefix" => PathSpec::Prefix(value),
                "RegularExpression" => PathSpec::Regex(value),
                other => return Err(format!("path match type {other:?} is not supported")),
            }
        }
    };
    let typed = |list: &[TypedValue], what: &str| -> Result<Vec<(String, String, bool)>, String> {
        list.iter()
            .map(|t| {
                let regex = match t.kind.as_deref().unwrap_or("Exact") {
                    "Exact" => false,
                    "RegularExpression" => true,
                    other => return Err(format!("{what} match type {other:?} is not supported")),
                };
                Ok((t.name.clone(), t.value.clone().unwrap_or_default(), regex))
            })
            .collect()
    };
    Ok(RouteMatch {
        path,
        method: m.method.clone(),
        headers: typed(&m.headers, "header")?,
        query: typed(&m.query_params, "query parameter")?,
    })
}

fn filter(doc: &FilterDoc) -> Result<Filter, String> {
    Ok(match doc.kind.as_str() {
        "RequestHeaderModifier" => {
            Filter::RequestHeaders(header_edits(doc.request_header_modifier.as_ref())?)
        }
        "ResponseHeaderModifier" => {
            Filter::ResponseHeaders(header_edits(doc.response_header_modifier.as_ref())?)
        }
        "RequestRedirect" => {
            let redirect = doc
                .request_redirect
                .as_ref()
                .ok_or("requestRedirect is required")?;
            let status = redirect.status_code.unwrap_or(302);
            if ![301, 302, 303, 307, 308].contains(&status) {
                return Err(format!("redirect statusCode {status} is not supported"));
            }
            Filter::Redirect {
                scheme: redirect.scheme.clone(),
                hostname: redirect.hostname.clone(),
                port: redirect.port,
                path: redirect.path.as_ref().map(path_modifier).transpose()?,
                status,
            }
        }
        "URLRewrite" => {
            let rewrite = doc.url_rewrite.as_ref().ok_or("urlRewrite is required")?;
            Filter::Rewrite {
                hostname: rewrite.hostname.clone(),
                path: rewrite.path.as_ref().map(path_modifier).transpose()?,
            }
        }
        other => Filter::Unsupported(other.to_owned()),
    })
}

fn path_modifier(doc: &PathModifierDoc) -> Result<PathModifier, String> {
    match doc.kind.as_str() {
        "ReplaceFullPath" => Ok(PathModifier::ReplaceFullPath(
            doc.replace_full_path.clone().unwrap_or_default().into(),
        )),
        "ReplacePrefixMatch" => Ok(PathModifier::ReplacePrefixMatch(
            doc.replace_prefix_match.clone().unwrap_or_default().into(),
        )),
        other => Err(format!("path modifier type {other:?} is not supported")),
    }
}

fn header_edits(doc: Option<&HeaderModifierDoc>) -> Result<HeaderEdits, String> {
    let Some(doc) = doc else {
        return Ok(HeaderEdits::default());
    };
    let name = |n: &str| {
        HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("invalid header name {n:?}"))
    };
    let pairs = |list: &[TypedValue]| -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        list.iter()
            .map(|t| {
                let value = t.value.as_deref().unwrap_or_default();
                let value = HeaderValue::from_str(value)
                    .map_err(|_| format!("invalid value for header {:?}", t.name))?;
                Ok((name(&t.name)?, value))
            })
            .collect()
    };
    Ok(HeaderEdits {
        set: pairs(&doc.set)?,
        add: pairs(&doc.add)?,
        remove: doc
            .remove
            .iter()
            .map(|n| name(n))
            .collect::<Result<_, _>>()?,
    })
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
