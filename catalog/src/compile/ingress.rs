//! Compiles the Ingresses of Capstan's class into the routing table: class selection, rules merged
//! across Ingresses (the first by namespace/name keeps a contested path), backends resolved to the
//! snapshot's Service ports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use capstan_table::{
    Backend, BackendPort, IngressTable, Problem, Protocol, ProxyTable, Route, RouteConflict,
    ServiceKey, ServicePortKey,
};

use crate::{Ingress, IngressBackend, IngressClass, Service, SourceId};

/// Which Ingresses are Capstan's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressOptions {
    /// IngressClasses with this `spec.controller` are served.
    pub controller: String,
}

impl Default for IngressOptions {
    fn default() -> Self {
        Self {
            controller: "capstan.dev/ingress".into(),
        }
    }
}

pub(crate) fn compile_ingress(
    mut ingresses: Vec<&Ingress>,
    classes: &[&IngressClass],
    services: &BTreeMap<&ServiceKey, (&SourceId, &Service)>,
    proxy: &ProxyTable,
    options: &IngressOptions,
    problems: &mut Vec<Problem>,
) -> IngressTable {
    let ours: BTreeSet<&str> = classes
        .iter()
        .filter(|c| c.controller == options.controller)
        .map(|c| &*c.name)
        .collect();
    let default_is_ours = classes
        .iter()
        .any(|c| c.is_default && c.controller == options.controller);
    ingresses.retain(|i| match &i.class_name {
        Some(class) => ours.contains(class.as_str()),
        None => default_is_ours,
    });
    ingresses.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let mut table = IngressTable::default();
    for ingress in ingresses {
        let id: Arc<str> = format!("{}/{}", ingress.namespace, ingress.name).into();
        let mut problem = |message: String| {
            problems.push(Problem {
                object: format!("Ingress {id}"),
                message,
            })
        };
        let mut resolve = |backend: &IngressBackend| {
            let (upstream, missing) = upstream(backend, services, proxy);
            if let Some(missing) = missing {
                problem(missing);
            }
            Arc::new(Route {
                ingress: id.clone(),
                backend: Backend::Service {
                    service: backend.service.clone(),
                    port: backend.port.clone(),
                },
                upstream,
            })
        };
        let mut conflicts = Vec::new();
        if let Some(backend) = &ingress.default_backend {
            let route = resolve(backend);
            match &table.default_backend {
                Some(existing) => conflicts.push(format!(
                    "defaultBackend ignored: {} set it first",
                    existing.ingress
                )),
                None => table.default_backend = Some(route),
            }
        }
        for rule in &ingress.rules {
            for path in &rule.paths {
                let route = resolve(&path.backend);
                let added =
                    table
                        .host_mut(rule.host.as_deref())
                        .add(&path.path, path.path_type, route);
                if let Err(RouteConflict::Duplicate { existing }) = added {
                    conflicts.push(format!(
                        "{}{} ignored: {existing} routes it first",
                        rule.host.as_deref().unwrap_or("*"),
                        path.path
                    ));
                }
            }
        }
        for message in conflicts {
            problems.push(Problem {
                object: format!("Ingress {id}"),
                message,
            });
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
) -> (Option<Arc<capstan_table::ServicePortTable>>, Option<String>) {
    let Some((_, service)) = services.get(&backend.service) else {
        return (
            None,
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
    (proxy.ports.get(&key).cloned(), None)
}
