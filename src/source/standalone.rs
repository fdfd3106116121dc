//! Capstan's own compact configuration (`capstan.yaml`) for running in front of docker-compose
//! services: named services, listen addresses, backends by address or by re-resolved DNS name.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use capstan_catalog::{
    EndpointSlice, Ingress, Object, Origin, Service, ServiceKind, ServicePort, SliceEndpoint,
    SlicePort, TargetPort, TlsSecret,
};
use capstan_table::{EndpointConditions, Protocol, ServiceKey};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::Error;
use crate::source::convert::parse_balance;
use crate::source::manifests::{Loaded, yaml_message};

/// The namespace every `capstan.yaml` service lives in.
mod routes;

pub const NAMESPACE: &str = "standalone";
const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);

/// The config file, its last good content and the last addresses of its DNS backends.
#[derive(Debug)]
pub struct StandaloneFile {
    path: PathBuf,
    current: Option<Parsed>,
    resolved: BTreeMap<(String, u16), Vec<IpAddr>>,
}

/// A validated `capstan.yaml`.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub services: Vec<(Service, Vec<Backend>)>,
    pub resolve_interval: Duration,
    /// `routes:` as one Ingress, with the Secrets of its TLS routes.
    pub ingress: Option<Ingress>,
    pub tls: Vec<TlsSecret>,
}

/// One backend: a fixed address, or a name resolved to all its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchema {
    #[serde(default)]
    defaults: DefaultsSchema,
    #[serde(default)]
    services: BTreeMap<String, ServiceSchema>,
    #[serde(default)]
    routes: Vec<routes::RouteSchema>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsSchema {
    balance: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    resolve_interval: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSchema {
    listen: Spanned<OneOrMany>,
    #[serde(default)]
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    backends: Vec<Spanned<String>>,
    balance: Option<Spanned<String>>,
    session_affinity: Option<Spanned<String>>,
    session_affinity_timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    /// Health checks and outlier ejection: the Service annotations' keys without `capstan.dev/`.
    #[serde(default)]
    policy: PolicyMap,
}

/// A `policy:` map: the `capstan.dev/*` annotation keys without their prefix, and their values.
pub(super) type PolicyMap = BTreeMap<String, String>;

/// `(key, value)` pairs of a `policy:` map, as the catalog's policy parsers take them.
pub(super) fn policy_pairs(map: &PolicyMap) -> Vec<(&str, &str)> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

// === impl StandaloneFile ===

impl StandaloneFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            current: None,
            resolved: BTreeMap::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn resolve_interval(&self) -> Duration {
        self.current
            .as_ref()
            .map_or(DEFAULT_RESOLVE_INTERVAL, |p| p.resolve_interval)
    }

    /// Re-reads the file; on failure the previous content stays in force.
    pub fn load(&mut self) -> Loaded {
        let parsed = std::fs::read_to_string(&self.path)
            .map_err(|e| Error::File {
                path: self.path.clone(),
                line: None,
                reason: e.to_string(),
            })
            .and_then(|text| parse(&self.path, &text));
        let errors = match parsed {
            Ok(parsed) => {
                self.current = Some(parsed);
                vec![]
            }
            Err(error) => vec![error],
        };
        Loaded {
            objects: self.objects(),
            files: usize::from(self.current.is_some()),
            errors,
        }
    }

    /// Resolves every DNS backend again. A name that fails to resolve keeps its last addresses.
    /// Returns whether any address changed.
    pub async fn resolve(&mut self, timeout: Duration) -> bool {
        let names: BTreeSet<(String, u16)> = self
            .current
            .iter()
            .flat_map(|p| p.services.iter().flat_map(|(_, backends)| backends))
            .filter_map(|b| match b {
                Backend::Name { host, port } => Some((host.clone(), *port)),
                Backend::Addr(_) => None,
            })
            .collect();
        let mut changed = false;
        self.resolved.retain(|name, _| names.contains(name));
        for (host, port) in names {
            let lookup = tokio::net::lookup_host((host.as_str(), port));
            let addrs = match tokio::time::timeout(timeout, lookup).await {
                Ok(Ok(addrs)) => {
                    let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                    ips.sort();
                    ips.dedup();
                    ips
                }
                Ok(Err(error)) => {
                    tracing::warn!(%host, %error, "backend name did not resolve; keeping its last addresses");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(%host, "backend name resolution timed out; keeping its last addresses");
                    continue;
                }
            };
            let previous = self.resolved.insert((host, port), addrs.clone());
            changed |= previous.as_ref() != Some(&addrs);
        }
        changed
    }

    /// The catalog objects of the current content: a Service per entry and one EndpointSlice
    /// per backend port.
    pub fn objects(&self) -> Vec<Object> {
        let Some(parsed) = &self.current else {
            return vec![];
        };
        let mut objects = Vec::new();
        for (service, backends) in &parsed.services {
            let mut by_port: BTreeMap<u16, BTreeSet<IpAddr>> = BTreeMap::new();
            for backend in backends {
                match backend {
                    Backend::Addr(addr) => {
                        by_port.entry(addr.port()).or_default().insert(addr.ip());
                    }
                    Backend::Name { host, port } => {
                        let ips = self.resolved.get(&(host.clone(), *port));
                        by_port
                            .entry(*port)
                            .or_default()
                            .extend(ips.into_iter().flatten());
                    }
                }
            }
            for (port, ips) in by_port {
                objects.push(Object::EndpointSlice(EndpointSlice {
                    namespace: NAMESPACE.into(),
                    name: format!("{}-{port}", service.key.name).into(),
                    service: service.key.clone(),
                    ports: vec![SlicePort {
                        name: "".into(),
                        protocol: service.ports[0].protocol,
                        port: Some(port),
                    }],
                    endpoints: ips
                        .into_iter()
                        .map(|ip| SliceEndpoint {
                            addresses: vec![ip],
                            conditions: EndpointConditions::READY,
                            hostname: None,
                            node_name: None,
                            zone: None,
                            zone_hints: vec![],
                            node_hints: vec![],
                        })
                        .collect(),
                }));
            }
            objects.push(Object::Service(service.clone()));
        }
        objects.extend(parsed.ingress.clone().map(Object::Ingress));
        objects.extend(parsed.tls.iter().cloned().map(Object::TlsSecret));
        objects
    }
}

/// Parses and validates a `capstan.yaml`.
pub fn parse(path: &Path, text: &str) -> Result<Parsed, Error> {
    let fail = |line: Option<u64>, reason: String| Error::File {
        path: path.to_owned(),
        line,
        reason,
    };
    let file: FileSchema = serde_saphyr::from_str(text)
        .map_err(|e| fail(e.location().map(|l| l.line()), yaml_message(&e)))?;
    let spanned = |s: &Spanned<String>, reason: String| {
        let line = s.referenced.line();
        fail((line > 0).then_some(line), reason)
    };
    let duration = |s: &Spanned<String>| {
        humantime::parse_duration(&s.value).map_err(|e| {
            spanned(
                s,
                format!("{:?} is not a duration (e.g. 500ms, 5s, 1h): {e}", s.value),
            )
        })
    };
    let optional_duration = |s: &Option<Spanned<String>>| s.as_ref().map(duration).transpose();
    let balance = |s: &Option<Spanned<String>>| {
        s.as_ref()
            .map(|s| parse_balance(&s.value).map_err(|reason| spanned(s, reason)))
            .transpose()
    };

    let defaults = &file.defaults;
    let default_balance = balance(&defaults.balance)?;
    let default_connect = optional_duration(&defaults.connect_timeout)?;
    let default_idle = optional_duration(&defaults.idle_timeout)?;
    let resolve_interval = optional_duration(&defaults.resolve_interval)?
        .unwrap_or(DEFAULT_RESOLVE_INTERVAL)
        .max(Duration::from_millis(100));

    let mut services = Vec::new();
    for (name, schema) in &file.services {
        let listen_line = Some(schema.listen.referenced.line()).filter(|&l| l > 0);
        let listen = match &schema.listen.value {
            OneOrMany::One(one) => std::slice::from_ref(one),
            OneOrMany::Many(many) => many.as_slice(),
        };
        let first_line = listen_line;
        if !is_dns_label(name) {
            return Err(fail(
                first_line,
                format!("service name {name:?} must be a DNS label (a-z, 0-9, '-', at most 63)"),
            ));
        }
        if listen.is_empty() {
            return Err(fail(
                None,
                format!("service {name}: listen needs at least one address"),
            ));
        }
        let listen = listen
            .iter()
            .map(|s| parse_listen(s).map_err(|reason| fail(listen_line, reason)))
            .collect::<Result<Vec<_>, _>>()?;
        let protocol = match schema.protocol.as_ref() {
            None => Protocol::Tcp,
            Some(s) => match s.value.to_ascii_lowercase().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => {
                    return Err(spanned(
                        s,
                        format!("protocol {:?}: use tcp or udp", s.value),
                    ));
                }
            },
        };
        let backends = schema
            .backends
            .iter()
            .map(|s| parse_backend(&s.value).map_err(|reason| spanned(s, reason)))
            .collect::<Result<Vec<_>, _>>()?;
        let session_affinity = match &schema.session_affinity {
            None => None,
            Some(s) => match s.value.as_str() {
                "none" => None,
                "client-ip" => Some(
                    optional_duration(&schema.session_affinity_timeout)?
                        .unwrap_or(DEFAULT_AFFINITY_TIMEOUT),
                ),
                _ => {
                    return Err(spanned(
                        s,
                        format!("session_affinity {:?}: use client-ip or none", s.value),
                    ));
                }
            },
        };
        let service = Service {
            ports: vec![ServicePort {
                name: "".into(),
                protocol,
                port: 0,
                target_port: TargetPort::Number(listen[0].port()),
                node_port: None,
                app_protocol: None,
                listen,
            }],
            session_affinity,
            balance: balance(&schema.balance)?.or(default_balance),
            connect_timeout: optional_duration(&schema.connect_timeout)?.or(default_connect),
            idle_timeout: optional_duration(&schema.idle_timeout)?.or(default_idle),
            origin: Origin::Standalone,
            policy: capstan_catalog::service_policy(&policy_pairs(&schema.policy), &[])
                .map_err(|reason| fail(first_line, format!("service {name}: policy: {reason}")))?,
            ..Service::new(ServiceKey::new(NAMESPACE, name), ServiceKind::ClusterIp)
        };
        service
            .validate()
            .map_err(|e| fail(first_line, e.to_string()))?;
        services.push((service, backends));
    }
    let is_tcp_service = |name: &str| {
        services.iter().any(|(s, _): &(Service, _)| {
            &*s.key.name == name && s.ports.iter().any(|p| p.protocol == Protocol::Tcp)
        })
    };
    let (ingress, tls) = routes::convert(path, &file.routes, is_tcp_service)
        .map_err(|(line, reason)| fail(line, reason))?;
    Ok(Parsed {
        services,
        resolve_interval,
        ingress,
        tls,
    })
}

/// `IP:PORT`, `[IPv6]:PORT`, or `:PORT` for every address.
pub(super) fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    if let Some(port) = value.strip_prefix(':') {
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("listen {value:?}: bad port"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let addr: SocketAddr = value
        .parse()
        .map_err(|_| format!("listen {value:?}: expected IP:PORT, [IPv6]:PORT or :PORT"))?;
    if addr.port() == 0 {
        return Err(format!("listen {value:?}: port 0"));
    }
    Ok(addr)
}

/// `IP:PORT`, or `NAME:PORT` for a name resolved to all its addresses.
fn parse_backend(value: &str) -> Result<Backend, String> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("backend {value:?}: port 0"));
        }
        return Ok(Backend::Addr(addr));
    }
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("backend {value:?}: expected HOST:PORT"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("backend {value:?}: bad port"))?;
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid_host {
        return Err(format!(
            "backend {value:?}: {host:?} is neither an IP nor a host name"
        ));
    }
    Ok(Backend::Name {
        host: host.to_owned(),
        port,
    })
}

pub(super) fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests;
