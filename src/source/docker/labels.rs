//! Containers and their `capstan.*` labels → catalog objects (pure; the engine is read in
//! [`super`]). The label scheme follows Traefik's Docker provider: a container opts in with its
//! labels, containers of one compose service are the endpoints of one Service, and routed
//! services need no listen address.
//!
//! | label | meaning | default |
//! |---|---|---|
//! | `capstan.enable` | `false` leaves the container out | on when any other `capstan.*` label is set |
//! | `capstan.service` | the Service name (a DNS label) | compose's `com.docker.compose.service`, else the container name |
//! | `capstan.port` | the container port traffic goes to | the only TCP port the image exposes |
//! | `capstan.http.host` | hosts routed to it, comma-separated (`*.example.com` allowed) | every host |
//! | `capstan.http.path` | path routed to it | `/` |
//! | `capstan.http.path-type` | `prefix` or `exact` | `prefix` |
//! | `capstan.listen` | L4 listen addresses, comma-separated (`:5432`, `127.0.0.1:6379`) | none |
//! | `capstan.balance` | `round-robin`, `least-connections`, … as `capstan.yaml` | the `--balance` flag |
//! | `capstan.network` | the Docker network whose address is used | `--docker-network`, else the only one, else the first by name |
//! | `capstan.policy.<key>` | a route or service policy key (`retries`, `health-check-path`, …) as in `capstan.yaml` | none |

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use capstan_catalog::{
    EndpointSlice, Ingress, IngressBackend, IngressPath, IngressRule, Object, Origin, ROUTE_KEYS,
    SERVICE_KEYS, Service, ServiceKind, ServicePort, SliceEndpoint, SlicePort, TargetPort,
    route_policy, service_policy,
};
use capstan_table::{BackendPort, EndpointConditions, PathType, Protocol, ServiceKey};

use crate::Error;
use crate::source::convert::parse_balance;
use crate::source::standalone::{is_dns_label, parse_listen};

/// The namespace of every Service the Docker provider makes.
pub const NAMESPACE: &str = "docker";
/// The label prefix.
const PREFIX: &str = "capstan.";
/// docker compose's label naming a container's service.
const COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// What Capstan needs to know about one running container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Network name → the container's addresses on it.
    pub networks: BTreeMap<String, Vec<IpAddr>>,
    /// TCP ports the image exposes.
    pub exposed_tcp_ports: Vec<u16>,
    pub health: Health,
    pub paused: bool,
}

/// The container's health check state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Health {
    /// No health check: ready while running.
    #[default]
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// One container's routing, from its labels.
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    service: String,
    address: IpAddr,
    port: u16,
    /// The labels that shape the Service and its routes (everything but the address); every
    /// container of a Service must agree on them.
    routing: BTreeMap<String, String>,
    ready: bool,
}

/// The catalog objects the containers' labels ask for, and an error per container that was left
/// out (the others keep serving).
pub(super) fn objects(
    containers: &[Container],
    default_network: Option<&str>,
) -> (Vec<Object>, Vec<Error>) {
    let mut errors = Vec::new();
    let mut by_service: BTreeMap<String, Vec<(&Container, Plan)>> = BTreeMap::new();
    let mut sorted: Vec<&Container> = containers.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for container in sorted {
        match plan(container, default_network) {
            Ok(Some(plan)) => by_service
                .entry(plan.service.clone())
                .or_default()
                .push((container, plan)),
            Ok(None) => {}
            Err(reason) => errors.push(container_error(container, reason)),
        }
    }
    let mut objects = Vec::new();
    let mut rules: Vec<IngressRule> = Vec::new();
    for (name, members) in by_service {
        let (first_container, first) = &members[0];
        for (container, plan) in &members[1..] {
            if plan.routing != first.routing {
                errors.push(container_error(
                    container,
                    format!(
                        "its capstan.* labels differ from {}'s, another container of service \
                         {name}; that one's are used",
                        first_container.name
                    ),
                ));
            }
        }
        match service_objects(&name, first, &members) {
            Ok((service, slices, paths)) => {
                objects.push(Object::Service(service));
                objects.extend(slices.into_iter().map(Object::EndpointSlice));
                for (host, path) in paths {
                    match rules.iter_mut().find(|r| r.host == host) {
                        Some(rule) => rule.paths.push(path),
                        None => rules.push(IngressRule {
                            host,
                            paths: vec![path],
                        }),
                    }
                }
            }
            Err(reason) => errors.push(container_error(first_container, reason)),
        }
    }
    if !rules.is_empty() {
        let ingress = Ingress {
            namespace: NAMESPACE.into(),
            name: "capstan-docker".into(),
            class_name: None,
            default_backend: None,
            rules,
            tls: vec![],
            origin: Origin::Standalone,
            policy: Arc::default(),
        };
        match ingress.validate() {
            Ok(()) => objects.push(Object::Ingress(ingress)),
            Err(e) => errors.push(Error::Convert {
                kind: "docker routes",
                name: NAMESPACE.into(),
                reason: e.to_string(),
            }),
        }
    }
    (objects, errors)
}

fn container_error(container: &Container, reason: String) -> Error {
    Error::Convert {
        kind: "container",
        name: container.name.clone(),
        reason,
    }
}

/// The container's routing, `None` when it has not opted in.
fn plan(container: &Container, default_network: Option<&str>) -> Result<Option<Plan>, String> {
    let label = |key: &str| {
        container
            .labels
            .get(&format!("{PREFIX}{key}"))
            .map(String::as_str)
    };
    let ours = container.labels.keys().any(|k| k.starts_with(PREFIX));
    match label("enable") {
        Some("false") => return Ok(None),
        Some("true") => {}
        Some(other) => return Err(format!("capstan.enable {other:?}: use true or false")),
        None if !ours => return Ok(None),
        None => {}
    }
    let service = match label("service") {
        Some(name) => name.to_owned(),
        None => container
            .labels
            .get(COMPOSE_SERVICE)
            .unwrap_or(&container.name)
            .to_ascii_lowercase()
            .replace('_', "-"),
    };
    if !is_dns_label(&service) {
        return Err(format!(
            "service name {service:?} must be a DNS label (a-z, 0-9, '-'); set capstan.service"
        ));
    }
    let port = match label("port") {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("capstan.port {port:?} is not a port number"))?,
        None => match container.exposed_tcp_ports.as_slice() {
            [only] => *only,
            [] => return Err("no exposed TCP port: set capstan.port".into()),
            _ => return Err("several exposed TCP ports: set capstan.port".into()),
        },
    };
    let network = label("network").or(default_network);
    let address = address(container, network)?;
    if label("http.host").is_none() && label("http.path").is_none() && label("listen").is_none() {
        return Err(
            "nothing to serve: set capstan.http.host, capstan.http.path or capstan.listen".into(),
        );
    }
    let routing = container
        .labels
        .iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .filter(|(k, _)| !matches!(&k[PREFIX.len()..], "network" | "port" | "enable"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let ready = !container.paused && matches!(container.health, Health::None | Health::Healthy);
    Ok(Some(Plan {
        service,
        address,
        port,
        routing,
        ready,
    }))
}

/// The container's address on `network` (or its only or first network); `127.0.0.1` for a
/// container on the host's network, as Traefik does.
fn address(container: &Container, network: Option<&str>) -> Result<IpAddr, String> {
    let first_ip = |ips: &Vec<IpAddr>| ips.first().copied();
    let found = match network {
        Some(name) => match container.networks.get(name) {
            Some(ips) => first_ip(ips),
            None => {
                return Err(format!(
                    "not on network {name:?} (on: {})",
                    container
                        .networks
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        },
        None if container.networks.contains_key("host") => Some(Ipv4Addr::LOCALHOST.into()),
        None => container.networks.values().find_map(first_ip),
    };
    found.ok_or_else(|| "has no network address (network_mode none?)".into())
}

type RoutePaths = Vec<(Option<String>, IngressPath)>;

/// The Service, its EndpointSlices (one per container port) and its routes.
fn service_objects(
    name: &str,
    first: &Plan,
    members: &[(&Container, Plan)],
) -> Result<(Service, Vec<EndpointSlice>, RoutePaths), String> {
    let label = |key: &str| {
        first
            .routing
            .get(&format!("{PREFIX}{key}"))
            .map(String::as_str)
    };
    let key = ServiceKey::new(NAMESPACE, name);
    let listen = label("listen")
        .map(|list| list.split(',').map(|s| parse_listen(s.trim())).collect())
        .transpose()?
        .unwrap_or_default();
    let policy: BTreeMap<String, String> = first
        .routing
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("capstan.policy.")?.to_owned(), v.clone())))
        .collect();
    let pairs: Vec<(&str, &str)> = policy
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let service = Service {
        ports: vec![ServicePort {
            name: "".into(),
            protocol: Protocol::Tcp,
            port: first.port,
            target_port: TargetPort::Number(first.port),
            node_port: None,
            app_protocol: None,
            listen,
        }],
        balance: label("balance").map(parse_balance).transpose()?,
        origin: Origin::Standalone,
        policy: service_policy(&pairs, ROUTE_KEYS).map_err(|e| format!("policy: {e}"))?,
        ..Service::new(key.clone(), ServiceKind::ClusterIp)
    };
    service.validate().map_err(|e| e.to_string())?;
    let mut by_port: BTreeMap<u16, Vec<SliceEndpoint>> = BTreeMap::new();
    for (container, plan) in members {
        by_port.entry(plan.port).or_default().push(SliceEndpoint {
            addresses: vec![plan.address],
            conditions: EndpointConditions {
                ready: plan.ready,
                serving: plan.ready,
                terminating: false,
            },
            hostname: Some(container.name.as_str().into())
                .filter(|_| is_dns_label(&container.name)),
            node_name: None,
            zone: None,
            zone_hints: vec![],
            node_hints: vec![],
        });
    }
    let slices = by_port
        .into_iter()
        .map(|(port, endpoints)| EndpointSlice {
            namespace: NAMESPACE.into(),
            name: format!("{name}-{port}").into(),
            service: key.clone(),
            ports: vec![SlicePort {
                name: "".into(),
                protocol: Protocol::Tcp,
                port: Some(port),
            }],
            endpoints,
        })
        .collect();
    let paths = routes(
        &key,
        first.port,
        label("http.host"),
        label("http.path"),
        label("http.path-type"),
        &pairs,
    )?;
    Ok((service, slices, paths))
}

/// The routes `capstan.http.*` ask for: one per host (or one for every host).
fn routes(
    key: &ServiceKey,
    port: u16,
    hosts: Option<&str>,
    path: Option<&str>,
    path_type: Option<&str>,
    policy: &[(&str, &str)],
) -> Result<RoutePaths, String> {
    if hosts.is_none() && path.is_none() {
        return Ok(vec![]);
    }
    let path_type = match path_type.unwrap_or("prefix") {
        "prefix" => PathType::Prefix,
        "exact" => PathType::Exact,
        other => {
            return Err(format!(
                "capstan.http.path-type {other:?}: use prefix or exact"
            ));
        }
    };
    let path = path.unwrap_or("/");
    if !path.starts_with('/') {
        return Err(format!("capstan.http.path {path:?} must start with /"));
    }
    let policy = Arc::new(route_policy(policy, SERVICE_KEYS).map_err(|e| format!("policy: {e}"))?);
    let hosts: Vec<Option<String>> = match hosts {
        None => vec![None],
        Some(list) => list
            .split(',')
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .map(Some)
            .collect(),
    };
    Ok(hosts
        .into_iter()
        .map(|host| {
            let path = IngressPath {
                path: path.to_owned(),
                path_type,
                backend: IngressBackend {
                    service: key.clone(),
                    port: BackendPort::Number(port),
                },
                policy: Some(policy.clone()),
            };
            (host, path)
        })
        .collect())
}

#[cfg(test)]
mod tests;
