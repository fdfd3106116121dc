//! HTTPRoute and GRPCRoute documents → [`HttpRoute`] catalog entries. A GRPCRoute's method match
//! becomes [`PathSpec::Grpc`] (the request path is `/service/method`); both kinds share rules,
//! header matches, filters (incl. `RequestMirror`) and backendRefs.

use std::time::Duration;

use capstan_catalog::{
    BackendRef, Filter, HttpRoute, ParentRef, PathSpec, RouteKind, RouteMatch, RouteRule,
};
use capstan_table::{HeaderEdits, PathModifier};
use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{Document, GATEWAY_GROUP, RefDoc, namespace_of, object_ref};
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct HttpRouteSpec {
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
    /// HTTPRoute: the HTTP method (a string); GRPCRoute: a `GRPCMethodMatch` (an object).
    method: Option<serde_json::Value>,
}

/// `GRPCMethodMatch`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct GrpcMethodDoc {
    #[serde(rename = "type")]
    kind: Option<String>,
    service: Option<String>,
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
pub(super) struct FilterDoc {
    #[serde(rename = "type")]
    kind: String,
    request_header_modifier: Option<HeaderModifierDoc>,
    response_header_modifier: Option<HeaderModifierDoc>,
    request_redirect: Option<RedirectDoc>,
    #[serde(rename = "urlRewrite")]
    url_rewrite: Option<RewriteDoc>,
    request_mirror: Option<MirrorDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct MirrorDoc {
    backend_ref: RefDoc,
    percent: Option<u32>,
    fraction: Option<FractionDoc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct FractionDoc {
    numerator: u32,
    denominator: Option<u32>,
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

/// An HTTPRoute (`kind` Http) or GRPCRoute (`kind` Grpc) document.
pub(super) fn http_route(
    kind: RouteKind,
    doc: Document<HttpRouteSpec>,
) -> Result<HttpRoute, String> {
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
        rules.push(route_rule(kind, rule).map_err(|e| format!("rules[{index}]: {e}"))?);
    }
    if rules.is_empty() {
        // The CRD's default: one rule matching every request, with no backend.
        rules.push(route_rule(kind, RuleDoc::default())?);
    }
    Ok(HttpRoute {
        kind,
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

fn route_rule(kind: RouteKind, rule: RuleDoc) -> Result<RouteRule, String> {
    let mut matches = Vec::new();
    for m in &rule.matches {
        matches.push(route_match(kind, m)?);
    }
    if matches.is_empty() {
        // HTTPRoute: `PathPrefix /`; GRPCRoute: "MUST match every gRPC request".
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
            .transpose()?
            .flatten(),
        backend_timeout: timeouts
            .backend_request
            .as_deref()
            .map(gateway_duration)
            .transpose()?
            .flatten(),
    })
}

/// A GEP-2257 duration (`10s`, `1h30m`, `500ms`); `0s` disables the timeout
/// (`HTTPRouteTimeouts` docs: "Setting a timeout to the zero duration (e.g. "0s") SHOULD disable
/// the timeout completely").
fn gateway_duration(text: &str) -> Result<Option<Duration>, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("duration {text:?}: {e}"))?;
    Ok((!duration.is_zero()).then_some(duration))
}

fn route_match(kind: RouteKind, m: &MatchDoc) -> Result<RouteMatch, String> {
    let (path, method) = match kind {
        RouteKind::Http => (http_path(m)?, http_method(m)?),
        RouteKind::Grpc => (grpc_method(m)?, None),
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
        method,
        headers: typed(&m.headers, "header")?,
        query: typed(&m.query_params, "query parameter")?,
    })
}

fn http_method(m: &MatchDoc) -> Result<Option<String>, String> {
    match &m.method {
        None => Ok(None),
        Some(serde_json::Value::String(method)) => Ok(Some(method.clone())),
        Some(other) => Err(format!("method {other} is not an HTTP method")),
    }
}

/// A `GRPCMethodMatch`: at least one of service and method; `Exact` ones without `/`
/// (`GRPCMethodMatch` docs, `apis/v1/grpcroute_types.go`).
fn grpc_method(m: &MatchDoc) -> Result<PathSpec, String> {
    let Some(value) = &m.method else {
        return Ok(PathSpec::Prefix("/".into()));
    };
    let doc: GrpcMethodDoc =
        serde_json::from_value(value.clone()).map_err(|e| format!("method: {e}"))?;
    let regex = match doc.kind.as_deref().unwrap_or("Exact") {
        "Exact" => false,
        "RegularExpression" => true,
        other => return Err(format!("method match type {other:?} is not supported")),
    };
    let service = doc.service.filter(|s| !s.is_empty());
    let method = doc.method.filter(|s| !s.is_empty());
    if service.is_none() && method.is_none() {
        return Err("a method match needs a service or a method".into());
    }
    let slash = [&service, &method]
        .into_iter()
        .flatten()
        .any(|s| s.contains('/'));
    if !regex && slash {
        return Err("an Exact service or method must not contain '/'".into());
    }
    Ok(PathSpec::Grpc {
        service,
        method,
        regex,
    })
}

fn http_path(m: &MatchDoc) -> Result<PathSpec, String> {
    Ok(match &m.path {
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
        "RequestMirror" => {
            let mirror = doc
                .request_mirror
                .as_ref()
                .ok_or("requestMirror is required")?;
            let fraction = match (mirror.percent, &mirror.fraction) {
                (Some(percent), _) => (percent.min(100), 100),
                (None, Some(f)) => {
                    let denominator = f.denominator.unwrap_or(100);
                    if denominator == 0 || f.numerator > denominator {
                        return Err("requestMirror fraction must be within 0..=1".into());
                    }
                    (f.numerator, denominator)
                }
                (None, None) => (1, 1),
            };
            Filter::Mirror {
                backend: object_ref(&mirror.backend_ref, "", "Service"),
                port: mirror.backend_ref.port,
                fraction,
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

#[cfg(test)]
mod tests;
