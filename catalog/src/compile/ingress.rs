//! Compiles the Ingresses of Capstan's class into the routing table: class selection, rules merged
//! across Ingresses (the first by namespace/name keeps a contested path), backends resolved to the
//! snapshot's Service ports.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use capstan_table::{
    Backend, BackendPort, IngressTable, Problem, Protocol, ProxyTable, Route, RouteConflict,
    RoutePolicy, RouteState, RouteStats, ServiceKey, ServicePortKey, UpstreamProtocol,
};

use crate::{Ingress, IngressBackend, IngressClass, Origin, Service, SourceId, TlsSecret};

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

/// A previous route's counters and live state, kept by the route with the same identity.
type Carried<'a> = (&'a Arc<RouteStats>, &'a Arc<RouteState>);

/// What the Ingress table is compiled from.
pub(crate) struct IngressInputs<'a> {
    pub ingresses: Vec<&'a Ingress>,
    pub classes: &'a [&'a IngressClass],
    /// `kubernetes.io/tls` Secrets by namespace and name.
    pub secrets: &'a BTreeMap<(&'a str, &'a str), &'a TlsSecret>,
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
        .map(|r| ((&*r.ingress, &*r.host, &*r.path), (&r.stats, &r.state)))
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
            let (upstream, protocol, missing) = upstream(backend, services, proxy);
            messages.extend(missing);
            let (stats, state) = carried
                .get(&(&*id, host, path))
                .map_or_else(Default::default, |(s, t)| (Arc::clone(s), Arc::clone(t)));
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
                policy: policy.clone().unwrap_or_else(|| ingress.policy.clone()),
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

/// The Service port a backend names, and why there is none.
fn upstream(
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
        Some("kubernetes.io/h2c") => UpstreamProtocol::H2c,
        _ => UpstreamProtocol::Http1,
    };
    (proxy.ports.get(&key).cloned(), protocol, None)
}
