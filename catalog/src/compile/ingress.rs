//! Compiles the Ingresses of Capstan's class into the routing table: class selection, rules merged
//! across Ingresses (the first by namespace/name keeps a contested path), backends resolved to the
//! snapshot's Service ports.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use capstan_table::{
    Backend, BackendPolicy, BackendPort, BackendProtocol, BasicAuth, IngressTable, Problem,
    Protocol, ProxyTable, Route, RouteConflict, RoutePolicy, RouteState, RouteStats, ServiceKey,
    ServicePortKey, UpstreamProtocol, UpstreamTls, UpstreamVerify,
};

use crate::{
    AuthSecret, Ingress, IngressBackend, IngressClass, Origin, Service, SourceId, TlsSecret,
};

/// Which Ingresses are Capstan's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressOptions {
    /// IngressClasses with this `spec.controller` are served.
    pub controller: String,
    /// `namespace/name` of the `kubernetes.io/tls` Secret served for unknown SNI names.
    pub default_certificate: Option<String>,
}

impl Default for IngressOptions {
    fn default() -> Self {
        Self {
            controller: "capstan.dev/ingress".into(),
            default_certificate: None,
        }
    }
}

/// A previous route's counters, live state and upstream TLS settings, kept by the route with the
/// same identity (the TLS settings while they are equal, so each worker's TLS connection pool for
/// them survives the swap).
type Carried<'a> = (
    &'a Arc<RouteStats>,
    &'a Arc<RouteState>,
    &'a Option<Arc<UpstreamTls>>,
    &'a Option<Arc<BasicAuth>>,
);

/// What the Ingress table is compiled from.
pub(crate) struct IngressInputs<'a> {
    pub ingresses: Vec<&'a Ingress>,
    pub classes: &'a [&'a IngressClass],
    /// `kubernetes.io/tls` Secrets by namespace and name.
    pub secrets: &'a BTreeMap<(&'a str, &'a str), &'a TlsSecret>,
    /// Basic-auth Secrets by namespace and name.
    pub auth_secrets: &'a BTreeMap<(&'a str, &'a str), &'a AuthSecret>,
    pub services: &'a BTreeMap<&'a ServiceKey, (&'a SourceId, &'a Service)>,
    pub proxy: &'a ProxyTable,
    /// For carrying route counters over.
    pub previous: Option<&'a IngressTable>,
}

pub(crate) fn compile_ingress(
    inputs: IngressInputs<'_>,
    options: &IngressOptions,
    problems: &mut Vec<Problem>,
) -> IngressTable {
    let IngressInputs {
        mut ingresses,
        classes,
        secrets,
        auth_secrets,
        services,
        proxy,
        previous,
    } = inputs;
    let ours: BTreeSet<&str> = classes
        .iter()
        .filter(|c| c.controller == options.controller)
        .map(|c| &*c.name)
        .collect();
    let default_is_ours = classes
        .iter()
        .any(|c| c.is_default && c.controller == options.controller);
    ingresses.retain(|i| match &i.class_name {
        _ if i.origin == Origin::Standalone => true,
        Some(class) => ours.contains(class.as_str()),
        None => default_is_ours,
    });
    ingresses.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let carried: HashMap<(&str, &str, &str), Carried<'_>> = previous
        .into_iter()
        .flat_map(IngressTable::routes)
        .map(|r| {
            let carried = (&r.stats, &r.state, &r.tls, &r.basic_auth);
            ((&*r.ingress, &*r.host, &*r.path), carried)
        })
        .collect();

    let mut table = IngressTable {
        served: ingresses
            .iter()
            .filter(|i| i.origin == Origin::Kubernetes)
            .map(|i| (i.namespace.clone(), i.name.clone()))
            .collect(),
        ..IngressTable::default()
    };
    for ingress in ingresses {
        let id: Arc<str> = format!("{}/{}", ingress.namespace, ingress.name).into();
        let mut messages = Vec::new();
        let mut resolve = |backend: &IngressBackend,
                           host: &str,
                           path: &str,
                           policy: &Option<Arc<RoutePolicy>>| {
            let (mut upstream, app_protocol, missing) = upstream(backend, services, proxy);
            messages.extend(missing);
            let previous = carried.get(&(&*id, host, path));
            let (stats, state) = previous.map_or_else(Default::default, |(s, t, ..)| {
                (Arc::clone(s), Arc::clone(t))
            });
            let policy = policy.clone().unwrap_or_else(|| ingress.policy.clone());
            let protocol = upstream_protocol(&policy.backend, app_protocol);
            // Fail closed: a route whose TLS or authentication cannot be set up serves nothing.
            let mut unusable = false;
            let tls = upstream_tls(&policy.backend, &backend.service, secrets)
                .unwrap_or_else(|problem| {
                    messages.push(problem);
                    unusable = true;
                    None
                })
                .map(|tls| match previous {
                    Some((_, _, Some(old), _)) if **old == tls => Arc::clone(old),
                    _ => Arc::new(tls),
                });
            let previous_auth = previous.and_then(|(.., auth)| auth.as_ref());
            let basic_auth = basic_auth(&policy, &ingress.namespace, auth_secrets, previous_auth)
                .unwrap_or_else(|problem| {
                    messages.push(problem);
                    unusable = true;
                    None
                });
            if unusable {
                upstream = None;
            }
            Arc::new(Route {
                ingress: id.clone(),
                host: host.into(),
                path: path.into(),
                backend: Backend::Service {
                    service: backend.service.clone(),
                    port: backend.port.clone(),
                },
                upstream,
                protocol,
                tls,
                basic_auth,
                unusable,
                policy,
                stats,
                state,
            })
        };
        let mut conflicts = Vec::new();
        if let Some(backend) = &ingress.default_backend {
            let route = resolve(backend, "*", "", &None);
            match &table.default_backend {
                Some(existing) => conflicts.push(format!(
                    "defaultBackend ignored: {} set it first",
                    existing.ingress
                )),
                None => table.default_backend = Some(route),
            }
        }
        for rule in &ingress.rules {
            let host = rule.host.as_deref().unwrap_or("*");
            for path in &rule.paths {
                let route = resolve(&path.backend, host, &path.path, &path.policy);
                let added =
                    table
                        .host_mut(rule.host.as_deref())
                        .add(&path.path, path.path_type, route);
                if let Err(RouteConflict::Duplicate { existing }) = added {
                    conflicts.push(format!(
                        "{host}{} ignored: {existing} routes it first",
                        path.path
                    ));
                }
            }
        }
        for tls in &ingress.tls {
            let certificate = match &tls.secret_name {
                None => None,
                Some(name) => match secrets.get(&(&*ingress.namespace, &**name)) {
                    Some(secret) => Some(secret.certificate.clone()),
                    None => {
                        conflicts.push(format!(
                            "TLS Secret {}/{name} not found (or not kubernetes.io/tls); serving the default certificate",
                            ingress.namespace
                        ));
                        None
                    }
                },
            };
            for host in &tls.hosts {
                let (map, key) = match host.strip_prefix("*.") {
                    Some(suffix) => (&mut table.tls_wildcards, suffix),
                    None => (&mut table.tls_hosts, host.as_str()),
                };
                match map.get(key) {
                    Some(Some(existing)) if Some(existing) != certificate.as_ref() => conflicts
                        .push(format!(
                            "TLS host {host} ignored: {} already serves it",
                            existing.source
                        )),
                    Some(Some(_)) => {}
                    _ => {
                        map.insert(key.into(), certificate.clone());
                    }
                }
            }
        }
        for message in messages.into_iter().chain(conflicts) {
            problems.push(Problem {
                object: format!("Ingress {id}"),
                message,
            });
        }
    }
    if let Some(name) = &options.default_certificate {
        let found = name
            .split_once('/')
            .and_then(|(namespace, name)| secrets.get(&(namespace, name)));
        match found {
            Some(secret) => table.default_certificate = Some(secret.certificate.clone()),
            None => problems.push(Problem {
                object: format!("Secret {name}"),
                message: "--default-certificate names no kubernetes.io/tls Secret; serving the built-in self-signed certificate".into(),
            }),
        }
    }
    table.finish();
    table
}

/// The HTTP version spoken to a route's endpoints: its `backend-protocol`, else the port's.
fn upstream_protocol(backend: &BackendPolicy, app_protocol: UpstreamProtocol) -> UpstreamProtocol {
    match backend.protocol {
        None => app_protocol,
        Some(BackendProtocol::Http | BackendProtocol::Https) => UpstreamProtocol::Http1,
        Some(BackendProtocol::Grpc | BackendProtocol::Grpcs) => UpstreamProtocol::Http2,
    }
}

/// The TLS a route speaks to its endpoints (`None`: cleartext), or why it cannot: its
/// `backend-tls-secret` is missing, or has no `ca.crt` while verification is on. The name
/// checked defaults to the Service's DNS name, `<service>.<namespace>.svc`.
fn upstream_tls(
    backend: &BackendPolicy,
    service: &ServiceKey,
    secrets: &BTreeMap<(&str, &str), &TlsSecret>,
) -> Result<Option<UpstreamTls>, String> {
    if !backend.protocol.is_some_and(BackendProtocol::is_tls) {
        return Ok(None);
    }
    let secret = match &backend.tls_secret {
        None => None,
        Some(name) => Some(
            secrets
                .get(&(&*service.namespace, &**name))
                .ok_or_else(|| {
                    format!(
                        "backend-tls-secret {}/{name} not found (or not kubernetes.io/tls); the route answers 503",
                        service.namespace
                    )
                })?,
        ),
    };
    let secret_id = || secret.map(|s| Arc::from(format!("{}/{}", s.namespace, s.name)));
    let (verify, source) = match (&backend.tls_ca, secret) {
        _ if !backend.tls_verify => (UpstreamVerify::Off, secret_id()),
        (Some((file, roots)), _) => (UpstreamVerify::Roots(roots.clone()), Some(file.clone())),
        (None, Some(secret)) => match &secret.ca {
            Some(roots) => (UpstreamVerify::Roots(roots.clone()), secret_id()),
            None => {
                return Err(format!(
                    "backend-tls-secret {}/{} has no ca.crt to check endpoints against (add it, or set backend-tls-verify: \"false\"); the route answers 503",
                    secret.namespace, secret.name
                ));
            }
        },
        (None, None) => (UpstreamVerify::System, None),
    };
    let server_name = backend.tls_server_name.clone().unwrap_or_else(|| {
        format!("{}.{}.svc", service.name, service.namespace)
            .to_ascii_lowercase()
            .into()
    });
    Ok(Some(UpstreamTls {
        server_name,
        verify,
        client_certificate: secret.map(|s| s.certificate.clone()),
        source,
    }))
}

/// The basic authentication a route asks for (`None`: none), or why it cannot be had: its
/// Secret is missing. Kept as the previous snapshot's `Arc` (and its remembered credentials)
/// while the users and realm are the same.
fn basic_auth(
    policy: &RoutePolicy,
    namespace: &str,
    auth_secrets: &BTreeMap<(&str, &str), &AuthSecret>,
    previous: Option<&Arc<BasicAuth>>,
) -> Result<Option<Arc<BasicAuth>>, String> {
    let Some(auth) = &policy.basic_auth else {
        return Ok(None);
    };
    let users = match (&auth.file, &auth.secret) {
        (Some(users), _) => users,
        (None, Some(name)) => &auth_secrets
            .get(&(namespace, &**name))
            .ok_or_else(|| {
                format!(
                    "auth-secret {namespace}/{name} not found (a Secret labelled capstan.dev/basic-auth: \"true\"); the route answers 503"
                )
            })?
            .users,
        (None, None) => {
            return Err("auth-type basic without auth-secret; the route answers 503".into());
        }
    };
    Ok(Some(match previous {
        Some(old) if old.same_setting(users, &auth.realm) => Arc::clone(old),
        _ => Arc::new(BasicAuth::new(users.clone(), auth.realm.clone())),
    }))
}

/// The Service port a backend names, and why there is none.
pub(crate) fn upstream(
    backend: &IngressBackend,
    services: &BTreeMap<&ServiceKey, (&SourceId, &Service)>,
    proxy: &ProxyTable,
) -> (
    Option<Arc<capstan_table::ServicePortTable>>,
    UpstreamProtocol,
    Option<String>,
) {
    let Some((_, service)) = services.get(&backend.service) else {
        return (
            None,
            UpstreamProtocol::Http1,
            Some(format!("backend Service {} not found", backend.service)),
        );
    };
    let port = service.ports.iter().find(|p| {
        p.protocol == Protocol::Tcp
            && match &backend.port {
                BackendPort::Number(n) => p.port == *n,
                BackendPort::Name(name) => p.name == *name,
            }
    });
    let Some(port) = port else {
        return (
            None,
            UpstreamProtocol::Http1,
            Some(format!(
                "Service {} has no TCP port {:?}",
                backend.service, backend.port
            )),
        );
    };
    let key = ServicePortKey {
        service: backend.service.clone(),
        port_name: port.name.clone(),
        protocol: Protocol::Tcp,
    };
    let protocol = match port.app_protocol.as_deref() {
        Some("kubernetes.io/h2c") => UpstreamProtocol::Http2,
        _ => UpstreamProtocol::Http1,
    };
    (proxy.ports.get(&key).cloned(), protocol, None)
}

#[cfg(test)]
mod tests;
