//! Compiles the Gateway API objects of Capstan's GatewayClasses into the Gateway table: each
//! Gateway's addresses and listeners (validated, conflicts found, certificates resolved through
//! ReferenceGrants), the HTTPRoutes attached to them ([`routes`]), and every object's status with
//! the reasons the Gateway API spec (`apis/v1/gateway_types.go`, `shared_types.go`) names.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use capstan_table::{
    Condition, GatewayListener, GatewaySocket, GatewayTable, HostRules, ListenerStatus,
    ObjectStatus, Problem, ProxyTable, ServiceKey, TlsCertificate,
};

use crate::{
    AllowedNamespaces, Gateway, GatewayClass, HttpRoute, Listener, Namespace, ReferenceGrant,
    Service, SourceId, TlsSecret,
};

mod routes;
#[cfg(test)]
mod tests;

/// The Gateway API group.
pub(crate) const GROUP: &str = "gateway.networking.k8s.io";

/// Which Gateways are Capstan's and where they listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayOptions {
    /// GatewayClasses with this `spec.controllerName` are served (`--gateway-controller`).
    pub controller: String,
    /// Addresses given to Gateways without `spec.addresses`, one each, lowest free first, kept
    /// while the Gateway lives (`--gateway-addresses`).
    pub addresses: Option<ipnet::IpNet>,
    /// Reported in `status.addresses` of Gateways served on every address of the node (no
    /// `spec.addresses` and no `--gateway-addresses`).
    pub node_addresses: Vec<IpAddr>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            controller: "capstan.dev/gateway-controller".into(),
            addresses: None,
            node_addresses: Vec::new(),
        }
    }
}

/// What the Gateway table is compiled from.
pub(crate) struct GatewayInputs<'a> {
    pub classes: Vec<&'a GatewayClass>,
    pub gateways: Vec<&'a Gateway>,
    pub routes: Vec<&'a HttpRoute>,
    pub grants: Vec<&'a ReferenceGrant>,
    pub namespaces: Vec<&'a Namespace>,
    pub secrets: &'a BTreeMap<(&'a str, &'a str), &'a TlsSecret>,
    pub services: &'a BTreeMap<&'a ServiceKey, (&'a SourceId, &'a Service)>,
    pub proxy: &'a ProxyTable,
    pub previous: Option<&'a GatewayTable>,
}

/// A listener being compiled: where it listens, whether it is served, its status.
pub(crate) struct ListenerBuild<'a> {
    pub gateway: &'a Gateway,
    pub spec: &'a Listener,
    /// Accepted, refs resolved, no conflict: it gets a socket and routes.
    pub served: bool,
    pub certificate: Option<TlsCertificate>,
    pub status: ListenerStatus,
    pub routes: HostRules,
}

pub(crate) fn compile_gateways(
    inputs: GatewayInputs<'_>,
    options: &GatewayOptions,
    problems: &mut Vec<Problem>,
) -> GatewayTable {
    let mut table = GatewayTable::default();
    let ours: BTreeSet<&str> = inputs
        .classes
        .iter()
        .filter(|c| c.controller == options.controller)
        .map(|c| &*c.name)
        .collect();
    for class in inputs.classes.iter().filter(|c| ours.contains(&*c.name)) {
        table.status.push(ObjectStatus {
            kind: "GatewayClass",
            namespace: "".into(),
            name: class.name.clone(),
            generation: class.generation,
            conditions: vec![accepted(true, "Accepted", "served by Capstan")],
            addresses: vec![],
            listeners: vec![],
            parents: vec![],
        });
    }
    let mut gateways = inputs.gateways.clone();
    gateways.retain(|g| ours.contains(&*g.class_name));
    gateways.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let grants = Grants(&inputs.grants);
    let assigned = assign_addresses(&gateways, options, inputs.previous);
    let mut listeners: Vec<ListenerBuild<'_>> = Vec::new();
    for gateway in &gateways {
        listeners.extend(build_listeners(gateway, inputs.secrets, &grants));
    }
    let namespaces: HashMap<&str, &Namespace> =
        inputs.namespaces.iter().map(|n| (&*n.name, *n)).collect();
    let route_status = routes::attach_routes(
        &inputs,
        &mut listeners,
        &grants,
        &namespaces,
        inputs.previous,
    );

    let mut gateway_listeners: BTreeMap<(&str, &str), Vec<ListenerBuild<'_>>> = BTreeMap::new();
    for listener in listeners {
        let key = (&*listener.gateway.namespace, &*listener.gateway.name);
        gateway_listeners.entry(key).or_default().push(listener);
    }
    for gateway in gateways {
        let key = (&*gateway.namespace, &*gateway.name);
        let builds = gateway_listeners.remove(&key).unwrap_or_default();
        let (bind, reported) = assigned.get(&key).cloned().unwrap_or((vec![], vec![]));
        let status = publish_gateway(gateway, builds, &bind, reported, &mut table, problems);
        table.status.push(status);
    }
    table.status.extend(route_status);
    for socket in table.sockets.values_mut() {
        socket
            .listeners
            .sort_by_key(|l| hostname_rank(l.hostname.as_deref()));
    }
    table
}

/// Exact hostnames first, then wildcards longest first, then none.
fn hostname_rank(hostname: Option<&str>) -> (u8, std::cmp::Reverse<usize>) {
    match hostname {
        Some(h) if h.starts_with('*') => (1, std::cmp::Reverse(h.len())),
        Some(h) => (0, std::cmp::Reverse(h.len())),
        None => (2, std::cmp::Reverse(0)),
    }
}

/// The addresses a Gateway's sockets bind, and those its status reports.
type Addresses = (Vec<IpAddr>, Vec<IpAddr>);

/// Each Gateway's socket addresses and `status.addresses`: `spec.addresses`; else one address of
/// `--gateway-addresses` (the previous snapshot's while it is still free, else the lowest free);
/// else every node address (`0.0.0.0` and `::` bound, the node's addresses reported).
fn assign_addresses<'a>(
    gateways: &[&'a Gateway],
    options: &GatewayOptions,
    previous: Option<&GatewayTable>,
) -> HashMap<(&'a str, &'a str), Addresses> {
    let mut taken: BTreeSet<IpAddr> = gateways
        .iter()
        .flat_map(|g| g.addresses.iter().copied())
        .collect();
    let mut assigned = HashMap::new();
    let mut wanting = Vec::new();
    for gateway in gateways {
        let key = (&*gateway.namespace, &*gateway.name);
        if !gateway.addresses.is_empty() {
            let addresses = gateway.addresses.clone();
            assigned.insert(key, (addresses.clone(), addresses));
            continue;
        }
        let Some(pool) = options.addresses else {
            let any = vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
            assigned.insert(key, (any, options.node_addresses.clone()));
            continue;
        };
        let kept = previous
            .and_then(|p| p.status_of("Gateway", key.0, key.1))
            .and_then(|s| s.addresses.first().copied())
            .filter(|ip| pool.contains(ip) && !taken.contains(ip));
        match kept {
            Some(ip) => {
                taken.insert(ip);
                assigned.insert(key, (vec![ip], vec![ip]));
            }
            None => wanting.push((key, pool)),
        }
    }
    for (key, pool) in wanting {
        let free = pool.hosts().find(|ip| !taken.contains(ip));
        if let Some(ip) = free {
            taken.insert(ip);
            assigned.insert(key, (vec![ip], vec![ip]));
        } else {
            assigned.insert(key, (vec![], vec![]));
        }
    }
    assigned
}

/// The listeners of one Gateway, validated: protocol, TLS certificate, route kinds, and
/// conflicts between its own listeners (same port: another protocol, or the same hostname).
fn build_listeners<'a>(
    gateway: &'a Gateway,
    secrets: &BTreeMap<(&str, &str), &TlsSecret>,
    grants: &Grants<'_>,
) -> Vec<ListenerBuild<'a>> {
    let mut builds: Vec<ListenerBuild<'a>> = Vec::new();
    for spec in &gateway.listeners {
        let mut conditions = Vec::new();
        let supported = matches!(spec.protocol.as_str(), "HTTP" | "HTTPS") && !spec.passthrough;
        conditions.push(if supported {
            accepted(true, "Accepted", "")
        } else {
            accepted(
                false,
                "UnsupportedProtocol",
                "Capstan serves HTTP and HTTPS (Terminate)",
            )
        });
        let (kinds, invalid_kinds) = if supported {
            supported_kinds(spec)
        } else {
            (vec![], false)
        };
        let (certificate, cert_problem) = match spec.protocol.as_str() {
            "HTTPS" if supported => listener_certificate(gateway, spec, secrets, grants),
            _ => (None, None),
        };
        let resolved = match (&cert_problem, invalid_kinds) {
            (Some((reason, message)), _) => {
                Condition::new("ResolvedRefs", false, reason, message.clone())
            }
            (None, true) => Condition::new(
                "ResolvedRefs",
                false,
                "InvalidRouteKinds",
                "only HTTPRoute and GRPCRoute are supported".into(),
            ),
            (None, false) => Condition::new("ResolvedRefs", true, "ResolvedRefs", String::new()),
        };
        let refs_ok = resolved.status;
        conditions.push(resolved);
        let conflict = builds.iter().find_map(|other| {
            let other = other.spec;
            if other.port != spec.port {
                None
            } else if other.protocol != spec.protocol {
                Some("ProtocolConflict")
            } else if other.hostname == spec.hostname {
                Some("HostnameConflict")
            } else {
                None
            }
        });
        conditions.push(match conflict {
            Some(reason) => Condition::new(
                "Conflicted",
                true,
                reason,
                "another listener of the Gateway has the same port".into(),
            ),
            None => Condition::new("Conflicted", false, "NoConflicts", String::new()),
        });
        let served = supported && refs_ok && conflict.is_none();
        conditions.push(programmed(served));
        builds.push(ListenerBuild {
            gateway,
            spec,
            served,
            certificate,
            status: ListenerStatus {
                name: spec.name.clone(),
                supported_kinds: kinds,
                attached_routes: 0,
                conditions,
            },
            routes: HostRules::default(),
        });
    }
    builds
}

/// The route kinds a listener takes (HTTP and HTTPS: HTTPRoute and GRPCRoute), and whether it
/// asked for any Capstan does not serve.
fn supported_kinds(spec: &Listener) -> (Vec<&'static str>, bool) {
    const SERVED: [&str; 2] = ["HTTPRoute", "GRPCRoute"];
    if spec.allowed_kinds.is_empty() {
        return (SERVED.to_vec(), false);
    }
    let served = |k: &crate::ObjectRef| {
        let group_ok = k.group.is_empty() || k.group == GROUP;
        SERVED.into_iter().find(|s| group_ok && k.kind == *s)
    };
    let mut kinds: Vec<&'static str> = spec.allowed_kinds.iter().filter_map(served).collect();
    kinds.dedup();
    let invalid = spec.allowed_kinds.iter().any(|k| served(k).is_none());
    (kinds, invalid)
}

/// The certificate of an HTTPS listener: its first `certificateRefs` entry, a `kubernetes.io/tls`
/// Secret in the Gateway's namespace or granted by a ReferenceGrant.
fn listener_certificate(
    gateway: &Gateway,
    spec: &Listener,
    secrets: &BTreeMap<(&str, &str), &TlsSecret>,
    grants: &Grants<'_>,
) -> (Option<TlsCertificate>, Option<(&'static str, String)>) {
    let Some(reference) = spec.certificate_refs.first() else {
        let message = "an HTTPS listener needs tls.certificateRefs".into();
        return (None, Some(("InvalidCertificateRef", message)));
    };
    if !reference.group.is_empty() || reference.kind != "Secret" {
        let message = format!("{}/{} is not a Secret", reference.group, reference.kind);
        return (None, Some(("InvalidCertificateRef", message)));
    }
    let namespace = reference.namespace.as_deref().unwrap_or(&gateway.namespace);
    if namespace != &*gateway.namespace
        && !grants.permits(
            ("Gateway", &gateway.namespace),
            ("", "Secret", namespace),
            &reference.name,
        )
    {
        let message = format!(
            "Secret {namespace}/{} is in another namespace and no ReferenceGrant allows it",
            reference.name
        );
        return (None, Some(("RefNotPermitted", message)));
    }
    match secrets.get(&(namespace, &*reference.name)) {
        Some(secret) => (Some(secret.certificate.clone()), None),
        None => {
            let message = format!(
                "Secret {namespace}/{} not found, or not a valid kubernetes.io/tls Secret",
                reference.name
            );
            (None, Some(("InvalidCertificateRef", message)))
        }
    }
}

/// Puts a Gateway's served listeners on their sockets and returns its status.
fn publish_gateway(
    gateway: &Gateway,
    builds: Vec<ListenerBuild<'_>>,
    bind: &[IpAddr],
    reported: Vec<IpAddr>,
    table: &mut GatewayTable,
    problems: &mut Vec<Problem>,
) -> ObjectStatus {
    let id: Arc<str> = format!("{}/{}", gateway.namespace, gateway.name).into();
    let bad_addresses = !gateway.unusable_addresses.is_empty() || gateway.parameters_ref.is_some();
    let mut listeners = Vec::new();
    let mut any_programmed = false;
    for mut build in builds {
        let mut served = build.served && !bad_addresses && !bind.is_empty();
        let tls = build.spec.protocol == "HTTPS";
        let listener = Arc::new(GatewayListener {
            gateway: id.clone(),
            name: build.spec.name.clone(),
            port: build.spec.port,
            hostname: build.spec.hostname.clone().map(Into::into),
            certificate: build.certificate.take(),
            routes: std::mem::take(&mut build.routes),
        });
        for ip in bind.iter().filter(|_| served) {
            let addr = SocketAddr::new(*ip, build.spec.port);
            let socket = table.sockets.entry(addr).or_insert_with(|| GatewaySocket {
                tls,
                listeners: vec![],
            });
            let clash = socket.tls != tls
                || socket
                    .listeners
                    .iter()
                    .any(|other| other.hostname == listener.hostname);
            if clash {
                problems.push(Problem {
                    object: format!("Gateway {id}"),
                    message: format!(
                        "listener {} conflicts with another Gateway's listener on {addr}",
                        listener.name
                    ),
                });
                set_condition(
                    &mut build.status.conditions,
                    Condition::new(
                        "Conflicted",
                        true,
                        if socket.tls != tls {
                            "ProtocolConflict"
                        } else {
                            "HostnameConflict"
                        },
                        format!("another Gateway listens on {addr}"),
                    ),
                );
                served = false;
                break;
            }
            socket.listeners.push(listener.clone());
        }
        set_condition(&mut build.status.conditions, programmed(served));
        any_programmed |= served;
        listeners.push(build.status);
    }
    let mut conditions = vec![gateway_accepted(gateway, &listeners)];
    conditions.push(match (any_programmed, bind.is_empty()) {
        (true, _) => programmed(true),
        (false, true) => Condition::new(
            "Programmed",
            false,
            "AddressNotAssigned",
            "no address left in --gateway-addresses".into(),
        ),
        (false, false) => Condition::new(
            "Programmed",
            false,
            "Invalid",
            "no listener could be programmed".into(),
        ),
    });
    ObjectStatus {
        kind: "Gateway",
        namespace: gateway.namespace.clone(),
        name: gateway.name.clone(),
        generation: gateway.generation,
        conditions,
        addresses: reported,
        listeners,
        parents: vec![],
    }
}

/// The Gateway's `Accepted` (`GatewayConditionReason` docs, `apis/v1/gateway_types.go`): not
/// with a parametersRef (Capstan reads no parameters kind) or unusable addresses; with invalid
/// listeners, `ListenersNotValid`: `False` when none is valid, `True` when some are.
fn gateway_accepted(gateway: &Gateway, listeners: &[ListenerStatus]) -> Condition {
    if let Some(reference) = &gateway.parameters_ref {
        let message =
            format!("infrastructure.parametersRef {reference}: Capstan reads no parameters");
        return accepted(false, "InvalidParameters", &message);
    }
    if !gateway.unusable_addresses.is_empty() {
        let message = format!(
            "unusable addresses: {}",
            gateway.unusable_addresses.join(", ")
        );
        return accepted(false, "UnsupportedAddress", &message);
    }
    let invalid: Vec<&str> = listeners
        .iter()
        .filter(|l| {
            l.conditions
                .iter()
                .any(|c| c.kind == "Accepted" && !c.status)
        })
        .map(|l| &*l.name)
        .collect();
    if invalid.is_empty() {
        return accepted(true, "Accepted", "");
    }
    let message = format!("listeners not valid: {}", invalid.join(", "));
    accepted(
        invalid.len() < listeners.len(),
        "ListenersNotValid",
        &message,
    )
}

/// Replaces the condition of the same type.
pub(crate) fn set_condition(conditions: &mut Vec<Condition>, condition: Condition) {
    match conditions.iter_mut().find(|c| c.kind == condition.kind) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

pub(crate) fn accepted(status: bool, reason: &'static str, message: &str) -> Condition {
    Condition::new("Accepted", status, reason, message.to_owned())
}

fn programmed(status: bool) -> Condition {
    if status {
        Condition::new("Programmed", true, "Programmed", String::new())
    } else {
        Condition::new("Programmed", false, "Invalid", "not served".into())
    }
}

/// The ReferenceGrants of the catalog.
pub(crate) struct Grants<'a>(pub &'a [&'a ReferenceGrant]);

impl Grants<'_> {
    /// Whether an object of kind `from.0` (group `gateway.networking.k8s.io`) in namespace
    /// `from.1` may refer to `name`, of group `to.0` and kind `to.1`, in namespace `to.2`.
    pub(crate) fn permits(&self, from: (&str, &str), to: (&str, &str, &str), name: &str) -> bool {
        let (from_kind, from_namespace) = from;
        let (to_group, to_kind, to_namespace) = to;
        self.0
            .iter()
            .filter(|g| &*g.namespace == to_namespace)
            .any(|grant| {
                let from_ok = grant
                    .from
                    .iter()
                    .any(|(g, k, ns)| g == GROUP && k == from_kind && ns == from_namespace);
                let to_ok = grant.to.iter().any(|(g, k, n)| {
                    g == to_group && k == to_kind && n.as_deref().is_none_or(|n| n == name)
                });
                from_ok && to_ok
            })
    }
}

/// The labels of namespace `name`: its Namespace object's, else the one label every namespace
/// has (`kubernetes.io/metadata.name`).
pub(crate) fn namespace_labels(
    namespaces: &HashMap<&str, &Namespace>,
    name: &str,
) -> BTreeMap<String, String> {
    namespaces.get(name).map_or_else(
        || BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), name.to_owned())]),
        |n| n.labels.clone(),
    )
}

/// Whether a listener of `gateway` lets a route from `namespace` attach.
pub(crate) fn namespace_allowed(
    listener: &Listener,
    gateway: &Gateway,
    namespace: &str,
    namespaces: &HashMap<&str, &Namespace>,
) -> bool {
    match &listener.allowed_namespaces {
        AllowedNamespaces::Same => namespace == &*gateway.namespace,
        AllowedNamespaces::All => true,
        AllowedNamespaces::Selector(selector) => {
            selector.matches(&namespace_labels(namespaces, namespace))
        }
    }
}
