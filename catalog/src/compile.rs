//! The pure compile step: catalog + previous snapshot → next snapshot.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use capstan_table::{
    BalancePolicy, Endpoint, EndpointConditions, EndpointSet, Frontend, FrontendTarget, Generation,
    HealthCheck, Problem, ProxyTable, ServiceKey, ServicePortKey, ServicePortTable, Snapshot,
    Timeouts, TopologyHints, TrafficScope, WhenEmpty,
};

use crate::{
    Catalog, EndpointSlice, Object, Revision, Service, ServiceKind, ServicePort, SliceEndpoint,
    SourceId, TargetPort, TrafficDistribution, TrafficPolicy,
};

/// A map keyed by names, hashed fast (the keys come from the API server, but a map lives for
/// one compile and its hasher is seeded per process).
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Node-level settings that shape the compiled tables.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// This node's name, for `internalTrafficPolicy`/`externalTrafficPolicy: Local`. Without it no
    /// endpoint is local.
    pub node_name: Option<String>,
    /// This node's `topology.kubernetes.io/zone`, for topology-aware routing.
    pub node_zone: Option<String>,
    /// Addresses NodePorts are served on (kube-proxy's `--nodeport-addresses`); default all.
    pub node_port_addresses: Vec<IpAddr>,
    /// Policy for Services that do not choose one.
    pub balance: BalancePolicy,
    pub timeouts: Timeouts,
    pub dns: DnsOptions,
    pub ingress: IngressOptions,
    pub gateway: GatewayOptions,
    /// kube-proxy's `--service-proxy-name`: only Services whose
    /// `service.kubernetes.io/service-proxy-name` label equals it get frontends (with `None`, only
    /// unlabelled ones). The others keep their DNS names and stay reachable as Ingress backends.
    pub proxy_name: Option<String>,
}

/// Compiles the catalog into the next snapshot. Never fails as a whole: objects that cannot be
/// honoured are left out and reported in [`Snapshot::problems`]. Live state (counters, ejections,
/// affinity, round-robin position) is carried over from `previous` by Service port and address.
pub fn compile(
    catalog: &Catalog,
    previous: Option<&Snapshot>,
    options: &CompileOptions,
    generation: Generation,
) -> Snapshot {
    let mut problems = Vec::new();
    // Collected, then sorted and built in one pass: the catalog yields each source's objects
    // in key order, so the sort is a merge of runs and no insert searches the tree.
    let mut listed: Vec<(&ServiceKey, (&SourceId, &Service))> = Vec::new();
    // What each Service's tables are built from: its revision, its slices and theirs.
    let mut revisions: FastMap<&ServiceKey, Inputs> = FastMap::default();
    revisions.reserve(catalog.len());
    // Options shape every table too (they are fixed in a running agent, not in every caller).
    let options_print = {
        let mut hasher = DefaultHasher::new();
        format!("{options:?}").hash(&mut hasher);
        hasher.finish()
    };
    let mut ingresses = Vec::new();
    let mut classes = Vec::new();
    let mut secrets = BTreeMap::new();
    let mut auth_secrets = BTreeMap::new();
    let mut gateway_objects = GatewayObjects::default();
    for (source, revision, object) in catalog.revisions() {
        match object {
            Object::Service(service) => {
                listed.push((&service.key, (source, service)));
                let inputs = revisions.entry(&service.key).or_default();
                // The first source's definition is the one used.
                if inputs.service == Revision::default() {
                    inputs.service = revision;
                }
            }
            Object::EndpointSlice(slice) => {
                let inputs = revisions.entry(&slice.service).or_default();
                inputs.slices.push(revision);
                inputs.slice_objects.push(slice);
            }
            Object::Ingress(ingress) => ingresses.push(ingress),
            Object::IngressClass(class) => classes.push(class),
            Object::TlsSecret(secret) => {
                secrets
                    .entry((&*secret.namespace, &*secret.name))
                    .or_insert(secret);
            }
            Object::AuthSecret(secret) => {
                auth_secrets
                    .entry((&*secret.namespace, &*secret.name))
                    .or_insert(secret);
            }
            Object::GatewayClass(class) => gateway_objects.classes.push(class),
            Object::Gateway(gateway) => gateway_objects.gateways.push(gateway),
            Object::HttpRoute(route) => gateway_objects.routes.push(route),
            Object::ReferenceGrant(grant) => gateway_objects.grants.push(grant),
            Object::Namespace(namespace) => gateway_objects.namespaces.push(namespace),
        }
    }

    // Stable: of two sources defining a Service, the first listed stays first.
    listed.sort_by(|a, b| a.0.cmp(b.0));
    listed.dedup_by(|later, first| {
        let duplicate = later.0 == first.0;
        if duplicate {
            problems.push(Problem {
                object: format!("Service {}", first.0),
                message: format!(
                    "defined by sources {} and {}; using {}",
                    (first.1).0,
                    (later.1).0,
                    (first.1).0
                ),
            });
        }
        duplicate
    });
    let services: BTreeMap<&ServiceKey, (&SourceId, &Service)> = listed.into_iter().collect();

    // Ports are visited in key order (Services in order, each one's ports sorted by name and
    // protocol), so the previous snapshot's ports are found by walking them alongside.
    let mut previous_ports = previous
        .map(|s| s.proxy.ports.iter())
        .into_iter()
        .flatten()
        .peekable();
    let mut ports = Vec::new();
    let mut proxy = ProxyTable::default();
    // DNS reads every Service, and the slices of headless ones only: while those are unchanged,
    // the previous table (and its serial) stands. Revisions are unique to each version of each
    // object, so the ordered revisions say which Services there are without their names.
    let mut dns_hasher = fingerprint_hasher(options_print);
    for (&key, &(_, service)) in &services {
        let service_inputs = revisions.get(key);
        if let Some(inputs) = service_inputs {
            inputs.service.hash(&mut dns_hasher);
            if service.is_headless() {
                inputs.slices.hash(&mut dns_hasher);
            }
        }
        if matches!(service.kind, ServiceKind::ExternalName(_)) {
            continue;
        }
        let service_slices = service_inputs
            .map(|i| i.slice_objects.as_slice())
            .unwrap_or_default();
        let inputs = service_inputs.map_or(0, |inputs| inputs.fingerprint(options_print));
        let source_ranges = source_ranges(service);
        if let Some(check) = health_check(service, service_slices, options) {
            proxy.health_checks.insert(check.0, check.1);
        }
        let mut service_ports: Vec<&ServicePort> = service.ports.iter().collect();
        service_ports.sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
        for port in service_ports {
            let port_key = ServicePortKey {
                service: key.clone(),
                port_name: port.name.clone(),
                protocol: port.protocol,
            };
            while previous_ports.next_if(|(k, _)| **k < port_key).is_some() {}
            let carried = previous_ports
                .next_if(|(k, _)| **k == port_key)
                .map(|(_, table)| table);
            let ours = service.proxied_by(options.proxy_name.as_deref());
            let mut frontends = if ours {
                frontends(service, port, options)
            } else {
                Vec::new()
            };
            frontends.retain(|(frontend, _)| match proxy.frontends.get(frontend) {
                Some(owner) => {
                    problems.push(Problem {
                        object: format!("Service {key}"),
                        message: format!("{frontend} is already served by {}", owner.port.key),
                    });
                    false
                }
                None => true,
            });
            // Unchanged inputs and frontends: the previous table is still right, state and all.
            let table = match carried {
                Some(table) if table.inputs == inputs && table.frontends == frontends => {
                    table.clone()
                }
                _ => {
                    let mut table = compile_port(
                        port_key,
                        service,
                        port,
                        frontends,
                        service_slices,
                        carried,
                        options,
                    );
                    table.inputs = inputs;
                    Arc::new(table)
                }
            };
            for &(frontend, scope) in &table.frontends {
                let restricted = service.load_balancer_ips.contains(&frontend.addr.ip());
                let target = FrontendTarget {
                    port: table.clone(),
                    scope,
                    source_ranges: source_ranges.clone().filter(|_| restricted),
                };
                proxy.frontends.insert(frontend, target);
            }
            ports.push((table.key.clone(), table));
        }
    }
    // In key order already; equal keys (a Service listing one port twice) keep the last.
    proxy.ports = ports.into_iter().collect();

    // Never 0, the fingerprint of tables built outside compile.
    let dns_inputs = dns_hasher.finish() | 1;
    let dns = match previous.map(|s| &s.dns) {
        Some(dns) if dns.inputs == dns_inputs => dns.clone(),
        _ => {
            // The serial only needs to change with the data; 32 bits of the generation do.
            let mut table =
                dns::compile_dns(&services, &revisions, &options.dns, generation.0 as u32);
            table.inputs = dns_inputs;
            Arc::new(table)
        }
    };
    let ingress = ingress::compile_ingress(
        ingress::IngressInputs {
            ingresses,
            classes: &classes,
            secrets: &secrets,
            auth_secrets: &auth_secrets,
            services: &services,
            proxy: &proxy,
            previous: previous.map(|s| &*s.ingress),
        },
        &options.ingress,
        &mut problems,
    );
    let gateway = gateway::compile_gateways(
        gateway::GatewayInputs {
            classes: gateway_objects.classes,
            gateways: gateway_objects.gateways,
            routes: gateway_objects.routes,
            grants: gateway_objects.grants,
            namespaces: gateway_objects.namespaces,
            secrets: &secrets,
            services: &services,
            proxy: &proxy,
            previous: previous.map(|s| &*s.gateway),
        },
        &options.gateway,
        &mut problems,
    );
    Snapshot {
        generation,
        proxy: Arc::new(proxy),
        dns,
        ingress: Arc::new(ingress),
        gateway: Arc::new(gateway),
        problems: problems.into(),
    }
}

/// The Gateway API objects of the catalog, gathered for [`gateway::compile_gateways`].
#[derive(Default)]
struct GatewayObjects<'a> {
    classes: Vec<&'a crate::GatewayClass>,
    gateways: Vec<&'a crate::Gateway>,
    routes: Vec<&'a crate::HttpRoute>,
    grants: Vec<&'a crate::ReferenceGrant>,
    namespaces: Vec<&'a crate::Namespace>,
}

/// What one Service's tables are built from.
#[derive(Debug, Default)]
pub(crate) struct Inputs<'a> {
    service: Revision,
    /// Its slices' revisions, in catalog order (which is stable).
    slices: Vec<Revision>,
    slice_objects: Vec<&'a EndpointSlice>,
}

impl Inputs<'_> {
    fn fingerprint(&self, options: u64) -> u64 {
        let mut hasher = fingerprint_hasher(options);
        self.service.hash(&mut hasher);
        self.slices.hash(&mut hasher);
        // Never 0, the fingerprint of tables built outside compile.
        hasher.finish() | 1
    }
}

/// A hasher for fingerprints, started with the options' own: fingerprints are compared within
/// one process only, so a fixed seed will do.
fn fingerprint_hasher(options: u64) -> impl Hasher {
    let mut hasher = foldhash::fast::FixedState::with_seed(0x6361_7073_7461_6e21).build_hasher();
    options.hash(&mut hasher);
    hasher
}

/// This node, as topology-aware routing sees it.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeTopology<'a> {
    pub name: Option<&'a str>,
    pub zone: Option<&'a str>,
}

/// kube-proxy's `CategorizeEndpoints` (pkg/proxy/topology.go) for one traffic policy.
///
/// `Cluster`: ready endpoints allowed by topology hints; if none, serving and terminating ones
/// allowed by the same hints (graceful termination). Hints are used only when every ready
/// endpoint has them and one is for this node (`forNodes`, tried first) or zone (`forZones`).
/// `Local`: this node's ready endpoints, else its serving and terminating ones; hints do not
/// apply. With no usable endpoint anywhere the connection is rejected; with usable endpoints
/// elsewhere but none local, it is dropped.
pub fn categorize(
    endpoints: &Arc<[Arc<Endpoint>]>,
    policy: TrafficPolicy,
    node: NodeTopology<'_>,
) -> EndpointSet {
    match policy {
        TrafficPolicy::Cluster => {
            let mode = topology_mode(endpoints, node);
            let allowed = |e: &&Arc<Endpoint>| available_for_topology(e, mode, node);
            EndpointSet {
                endpoints: share(endpoints, usable(endpoints.iter().filter(allowed))),
                when_empty: WhenEmpty::Reject,
            }
        }
        TrafficPolicy::Local => {
            let any = endpoints
                .iter()
                .any(|e| e.conditions.ready || (e.conditions.serving && e.conditions.terminating));
            let local = usable(
                endpoints
                    .iter()
                    .filter(|e| node.name.is_some() && e.node_name.as_deref() == node.name),
            );
            EndpointSet {
                endpoints: share(endpoints, local),
                when_empty: if any {
                    WhenEmpty::Drop
                } else {
                    WhenEmpty::Reject
                },
            }
        }
    }
}

/// Which hints restrict cluster endpoints (`topologyModeFromHints`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopologyMode {
    Everywhere,
    SameNode,
    SameZone,
}

fn topology_mode(endpoints: &[Arc<Endpoint>], node: NodeTopology<'_>) -> TopologyMode {
    let ready = || endpoints.iter().filter(|e| e.conditions.ready);
    let has = |hints: &[Arc<str>], name: Option<&str>| {
        name.is_some_and(|name| hints.iter().any(|h| &**h == name))
    };
    let all_node_hints = ready().all(|e| !e.hints.nodes.is_empty());
    if all_node_hints && ready().any(|e| has(&e.hints.nodes, node.name)) {
        return TopologyMode::SameNode;
    }
    let all_zone_hints = ready().all(|e| !e.hints.zones.is_empty());
    if all_zone_hints && ready().any(|e| has(&e.hints.zones, node.zone)) {
        return TopologyMode::SameZone;
    }
    TopologyMode::Everywhere
}

fn available_for_topology(endpoint: &Endpoint, mode: TopologyMode, node: NodeTopology<'_>) -> bool {
    let has = |hints: &[Arc<str>], name: Option<&str>| {
        name.is_some_and(|name| hints.iter().any(|h| &**h == name))
    };
    match mode {
        TopologyMode::Everywhere => true,
        TopologyMode::SameNode => has(&endpoint.hints.nodes, node.name),
        TopologyMode::SameZone => has(&endpoint.hints.zones, node.zone),
    }
}

/// `subset` as a shared slice: `all` itself when nothing was filtered out.
fn share(all: &Arc<[Arc<Endpoint>]>, subset: Vec<Arc<Endpoint>>) -> Arc<[Arc<Endpoint>]> {
    if subset.len() == all.len() {
        Arc::clone(all)
    } else {
        subset.into()
    }
}

/// Ready endpoints; if there are none, serving and terminating ones.
fn usable<'a>(endpoints: impl Iterator<Item = &'a Arc<Endpoint>> + Clone) -> Vec<Arc<Endpoint>> {
    let ready: Vec<_> = endpoints
        .clone()
        .filter(|e| e.conditions.ready)
        .cloned()
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .filter(|e| e.conditions.serving && e.conditions.terminating)
        .cloned()
        .collect()
}

fn compile_port(
    key: ServicePortKey,
    service: &Service,
    port: &ServicePort,
    frontends: Vec<(Frontend, TrafficScope)>,
    slices: &[&EndpointSlice],
    carried: Option<&Arc<ServicePortTable>>,
    options: &CompileOptions,
) -> ServicePortTable {
    let endpoints: Arc<[Arc<Endpoint>]> = port_endpoints(service, port, slices, carried).into();
    let node = NodeTopology {
        name: options.node_name.as_deref(),
        zone: options.node_zone.as_deref(),
    };
    let internal = categorize(&endpoints, service.internal_traffic_policy, node);
    let external = if service.external_traffic_policy == service.internal_traffic_policy {
        internal.clone()
    } else {
        categorize(&endpoints, service.external_traffic_policy, node)
    };
    let mut timeouts = options.timeouts;
    if let Some(connect) = service.connect_timeout {
        timeouts.connect = connect;
    }
    if let Some(idle) = service.idle_timeout {
        timeouts.idle = idle;
    }
    ServicePortTable {
        frontends,
        policy: service.balance.unwrap_or(options.balance),
        affinity: service.session_affinity,
        timeouts,
        health: service.policy.health.clone(),
        outlier: service.policy.outlier,
        max_requests_per_endpoint: service.policy.max_requests_per_endpoint.map(u32::from),
        max_connections_per_endpoint: service.policy.max_connections_per_endpoint.map(u32::from),
        endpoints,
        internal,
        external,
        external_local: service.external_traffic_policy == TrafficPolicy::Local,
        state: carried.map_or_else(Default::default, |t| t.state.clone()),
        key,
        inputs: 0,
    }
}

/// kube-proxy applies `loadBalancerSourceRanges` to a LoadBalancer Service's LoadBalancer IPs
/// only (not its ClusterIP, external IPs or NodePorts).
fn source_ranges(service: &Service) -> Option<Arc<[ipnet::IpNet]>> {
    (service.kind == ServiceKind::LoadBalancer && !service.load_balancer_source_ranges.is_empty())
        .then(|| service.load_balancer_source_ranges.clone().into())
}

fn frontends(
    service: &Service,
    port: &ServicePort,
    options: &CompileOptions,
) -> Vec<(Frontend, TrafficScope)> {
    let protocol = port.protocol;
    let at = |ip: IpAddr, number: u16, scope| {
        (
            Frontend {
                addr: SocketAddr::new(ip, number),
                protocol,
            },
            scope,
        )
    };
    let mut out = Vec::new();
    if port.port != 0 {
        out.extend(
            service
                .cluster_ips
                .iter()
                .map(|&ip| at(ip, port.port, TrafficScope::Internal)),
        );
        out.extend(
            service
                .external_ips
                .iter()
                .chain(&service.load_balancer_ips)
                .map(|&ip| at(ip, port.port, TrafficScope::External)),
        );
    }
    out.extend(
        port.listen
            .iter()
            .map(|&addr| (Frontend { addr, protocol }, TrafficScope::Internal)),
    );
    let node_port_kind = matches!(
        service.kind,
        ServiceKind::NodePort | ServiceKind::LoadBalancer
    );
    if let (Some(node_port), true) = (port.node_port, node_port_kind) {
        if options.node_port_addresses.is_empty() {
            out.push(at(
                IpAddr::from([0, 0, 0, 0]),
                node_port,
                TrafficScope::External,
            ));
        }
        out.extend(
            options
                .node_port_addresses
                .iter()
                .map(|&ip| at(ip, node_port, TrafficScope::External)),
        );
    }
    out.sort();
    out.dedup_by_key(|(frontend, _)| *frontend);
    out
}

/// The `healthCheckNodePort` server of a LoadBalancer Service with `externalTrafficPolicy:
/// Local` that this node proxies, with its count of distinct ready local endpoint addresses.
fn health_check(
    service: &Service,
    slices: &[&EndpointSlice],
    options: &CompileOptions,
) -> Option<(u16, HealthCheck)> {
    let port = service.health_check_node_port?;
    if service.kind != ServiceKind::LoadBalancer
        || service.external_traffic_policy != TrafficPolicy::Local
        || !service.proxied_by(options.proxy_name.as_deref())
    {
        return None;
    }
    let node = options.node_name.as_deref();
    let mut local: Vec<IpAddr> = slices
        .iter()
        .flat_map(|slice| &slice.endpoints)
        .filter(|e| {
            (e.conditions.ready || service.publish_not_ready_addresses)
                && node.is_some()
                && e.node_name.as_deref() == node
        })
        .filter_map(|e| e.addresses.first().copied())
        .collect();
    local.sort_unstable();
    local.dedup();
    Some((
        port,
        HealthCheck {
            service: service.key.clone(),
            local_endpoints: local.len(),
        },
    ))
}

/// The endpoints of one Service port: slice ports matched by name and protocol, the first
/// address of each endpoint (as the API specifies), deduplicated by address preferring the
/// readiest conditions.
fn port_endpoints(
    service: &Service,
    port: &ServicePort,
    slices: &[&EndpointSlice],
    carried: Option<&Arc<ServicePortTable>>,
) -> Vec<Arc<Endpoint>> {
    // Carried endpoints are sorted by address: look them up by binary search.
    let carried: &[Arc<Endpoint>] = carried.map_or(&[], |t| &t.endpoints);
    let stats_for = |addr: SocketAddr| {
        carried
            .binary_search_by_key(&addr, |e| e.addr)
            .map_or_else(|_| Arc::default(), |i| Arc::clone(&carried[i].stats))
    };
    let mut found: Vec<(SocketAddr, &SliceEndpoint, EndpointConditions)> = Vec::new();
    for slice in slices {
        for slice_port in &slice.ports {
            if slice_port.name != port.name || slice_port.protocol != port.protocol {
                continue;
            }
            let number = match (slice_port.port, &port.target_port) {
                (Some(number), _) | (None, &TargetPort::Number(number)) => number,
                (None, TargetPort::Name(_)) => continue,
            };
            for endpoint in &slice.endpoints {
                let Some(&ip) = endpoint.addresses.first() else {
                    continue;
                };
                let addr = SocketAddr::new(ip, number);
                let mut conditions = endpoint.conditions;
                if service.publish_not_ready_addresses {
                    conditions.ready = true;
                    conditions.serving = true;
                }
                found.push((addr, endpoint, conditions));
            }
        }
    }
    // One endpoint per address, keeping the readiest conditions.
    found.sort_by(|a, b| a.0.cmp(&b.0).then(rank(b.2).cmp(&rank(a.2))));
    found.dedup_by_key(|(addr, _, _)| *addr);
    let derive = derived_hints(service, found.iter().map(|(_, e, _)| *e));
    found
        .into_iter()
        .map(|(addr, endpoint, conditions)| {
            let hints = match derive {
                None => TopologyHints {
                    zones: endpoint
                        .zone_hints
                        .iter()
                        .map(|z| z.as_str().into())
                        .collect(),
                    nodes: endpoint
                        .node_hints
                        .iter()
                        .map(|n| n.as_str().into())
                        .collect(),
                },
                Some((zones, nodes)) => TopologyHints {
                    zones: endpoint.zone.iter().filter(|_| zones).cloned().collect(),
                    nodes: endpoint
                        .node_name
                        .iter()
                        .filter(|_| nodes)
                        .cloned()
                        .collect(),
                },
            };
            Arc::new(Endpoint {
                addr,
                conditions,
                node_name: endpoint.node_name.clone(),
                zone: endpoint.zone.clone(),
                hints,
                stats: stats_for(addr),
            })
        })
        .collect()
}

/// For a Service with `trafficDistribution` whose EndpointSlices carry no hints at all (no
/// EndpointSlice controller wrote them: manifests on disk), the hints that controller would
/// write: each endpoint's own zone (when every endpoint has one) and, for `PreferSameNode`, its
/// own node too. Returns (zone hints, node hints) to derive, or `None` to use the slices' hints.
fn derived_hints<'a>(
    service: &Service,
    mut endpoints: impl Iterator<Item = &'a SliceEndpoint> + Clone,
) -> Option<(bool, bool)> {
    let distribution = service.traffic_distribution?;
    if endpoints
        .clone()
        .any(|e| !e.zone_hints.is_empty() || !e.node_hints.is_empty())
    {
        return None;
    }
    let zones = endpoints.clone().all(|e| e.zone.is_some());
    let nodes = distribution == TrafficDistribution::PreferSameNode
        && endpoints.all(|e| e.node_name.is_some());
    Some((zones, nodes))
}

fn rank(c: EndpointConditions) -> u8 {
    u8::from(c.ready) * 4 + u8::from(c.serving) * 2 + u8::from(!c.terminating)
}

mod dns;
mod gateway;
mod ingress;
#[cfg(test)]
mod tests;

pub use dns::DnsOptions;
pub use gateway::GatewayOptions;
pub use ingress::IngressOptions;
