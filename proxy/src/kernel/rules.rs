//! The pure half of the kernel data path: what one Service port puts into Capstan's nftables
//! table (chains, verdict-map elements, affinity sets), and the fixed skeleton around it.
//!
//! The layout is kube-proxy's nftables mode (pkg/proxy/nftables/proxier.go): verdict maps keyed
//! by `address . protocol . port` dispatch to a chain per Service port, `numgen random` picks
//! an endpoint, `no-endpoint-*` maps reject or drop in filter chains ahead of NAT, a
//! `firewall-*` chain applies `loadBalancerSourceRanges`, and masquerading happens only for
//! packets marked `0x4000`. Two differences, both equivalent in behaviour: the endpoint choice
//! is a cascade of `numgen random mod N-j == 0` rules (kube-proxy's iptables-mode shape, see
//! `balance`) instead of a `numgen` verdict map, and without session affinity the cascade DNATs
//! directly instead of jumping to a chain per endpoint (a tenth of the chains), and hairpin traffic
//! (an endpoint reaching itself through its Service) is recognised after DNAT by a set of
//! `endpoint . endpoint` pairs in postrouting instead of a mark rule per endpoint chain.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use capstan_table::{
    Endpoint, EndpointSet, Frontend, FrontendTarget, Protocol, ServiceKey, ServicePortKey,
    ServicePortTable, TrafficScope, WhenEmpty,
};

use crate::source::Prefix;

/// The nftables table of the kernel data path (family `inet`).
pub const TABLE: &str = "capstan-services";

/// kube-proxy's masquerade mark (`--masquerade-bit 14`), so CNIs that know it keep working.
pub const MASQUERADE_MARK: u32 = 0x4000;

/// The chain that rejects connections to Services without endpoints.
const REJECT_CHAIN: &str = "reject-chain";

/// An address family of the table's maps and sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

/// A verdict map of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapKind {
    /// ClusterIPs, external IPs, LoadBalancer IPs and `--nodeport-addresses` NodePorts.
    ServiceIps,
    /// NodePorts on every local address.
    NodePorts,
    NoEndpointServices,
    NoEndpointNodePorts,
    FirewallIps,
}

/// One map of one family: `service-ips4`, `no-endpoint-nodeports6`, …
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapRef {
    pub kind: MapKind,
    pub family: Family,
}

/// Node settings the rules depend on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelSettings {
    /// The pod ranges (kube-proxy's `--cluster-cidr` local-traffic detection): ClusterIP
    /// traffic from outside them is masqueraded, and pods reaching an `externalTrafficPolicy:
    /// Local` Service's external addresses are sent to all its endpoints. Empty: no detection
    /// (kube-proxy's behaviour without a cluster CIDR).
    pub pod_cidrs: Vec<Prefix>,
    /// The cluster DNS Service (`--cluster-dns-service`, kube-system/kube-dns): its ClusterIPs
    /// on port 53 are delivered, untracked, to this node's DNS server instead of being
    /// translated (NodeLocal DNSCache's arrangement), whether or not the Service has endpoints.
    pub cluster_dns: Option<ServiceKey>,
}

/// The DNS port the cluster DNS Service's ClusterIPs are answered on locally.
pub const DNS_PORT: u16 = 53;

/// Everything one Service port puts in the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    /// Regular chains by name, each with its rules in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Verdict map elements: (map, key) → verdict.
    pub elements: BTreeMap<(MapRef, String), String>,
    /// ClientIP affinity sets by name, each with its declaration.
    pub sets: BTreeMap<String, String>,
    /// Endpoint addresses that may be reached through this port (for the hairpin sets).
    pub hairpin: BTreeSet<IpAddr>,
    /// UDP only: the frontends and the endpoints traffic is translated to, for conntrack.
    pub udp: Option<UdpTranslation>,
    /// ClusterIPs of the cluster DNS Service answered by this node's DNS server (the
    /// `cluster-dns` sets), instead of translated.
    pub local_dns: BTreeSet<IpAddr>,
}

/// What conntrack may hold for a UDP Service port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpTranslation {
    /// Original destinations (`0.0.0.0:port` for a NodePort on every address).
    pub frontends: BTreeSet<SocketAddr>,
    /// Endpoints traffic is translated to.
    pub endpoints: BTreeSet<SocketAddr>,
}

// === impl Family ===

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// The address selector of rules (`ip saddr`, `ip6 daddr`).
    pub fn selector(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    pub fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "4",
            Family::V6 => "6",
        }
    }

    /// NodePorts are never served on loopback (kube-proxy's `noLocalhost`).
    fn not_loopback(self) -> &'static str {
        match self {
            Family::V4 => "ip daddr != 127.0.0.0/8",
            Family::V6 => "ip6 daddr != ::1",
        }
    }
}

// === impl MapKind ===

impl MapKind {
    pub const ALL: [MapKind; 5] = [
        MapKind::ServiceIps,
        MapKind::NodePorts,
        MapKind::NoEndpointServices,
        MapKind::NoEndpointNodePorts,
        MapKind::FirewallIps,
    ];

    fn name(self) -> &'static str {
        match self {
            MapKind::ServiceIps => "service-ips",
            MapKind::NodePorts => "service-nodeports",
            MapKind::NoEndpointServices => "no-endpoint-services",
            MapKind::NoEndpointNodePorts => "no-endpoint-nodeports",
            MapKind::FirewallIps => "firewall-ips",
        }
    }

    /// Whether the key starts with the destination address (NodePort maps are keyed by
    /// protocol and port only).
    fn by_address(self) -> bool {
        !matches!(self, MapKind::NodePorts | MapKind::NoEndpointNodePorts)
    }
}

// === impl MapRef ===

impl MapRef {
    pub fn name(self) -> String {
        format!("{}{}", self.kind.name(), self.family.suffix())
    }

    fn key_type(self) -> String {
        if self.kind.by_address() {
            format!("{} . inet_proto . inet_service", self.family.addr_type())
        } else {
            "inet_proto . inet_service".to_owned()
        }
    }
}

/// The table with its base chains, maps and fixed chains, and no Service in it, as an nft
/// block (the first statement of a full sync).
pub fn skeleton() -> String {
    let mut out = format!("table inet {TABLE} {{\n");
    for family in Family::ALL {
        for kind in MapKind::ALL {
            let map = MapRef { kind, family };
            let _ = writeln!(
                out,
                "  map {} {{ type {} : verdict; }}",
                map.name(),
                map.key_type()
            );
        }
        let _ = writeln!(
            out,
            "  set hairpin{} {{ type {addr} . {addr}; }}",
            family.suffix(),
            addr = family.addr_type()
        );
        let _ = writeln!(
            out,
            "  set cluster-dns{} {{ type {}; }}",
            family.suffix(),
            family.addr_type()
        );
    }
    // Cluster DNS is delivered to the node's own DNS server untracked, before conntrack
    // (priority raw = -300), as NodeLocal DNSCache does: no DNAT, no conntrack entry to race on.
    let (mut raw_prerouting, mut raw_output) = (Vec::new(), Vec::new());
    for family in Family::ALL {
        let (ip, s) = (family.selector(), family.suffix());
        let dns = "meta l4proto { tcp, udp } th";
        raw_prerouting.push(format!(
            "{ip} daddr @cluster-dns{s} {dns} dport {DNS_PORT} notrack"
        ));
        raw_output.push(format!(
            "{ip} daddr @cluster-dns{s} {dns} dport {DNS_PORT} notrack"
        ));
        raw_output.push(format!(
            "{ip} saddr @cluster-dns{s} {dns} sport {DNS_PORT} notrack"
        ));
    }
    // Filters run on the destination before DNAT (priority dstnat - 10 = -110); reject is only
    // allowed in input, forward and output, so the endpoint check hangs off those. Numbers,
    // not names: nft 1.0 knows `dstnat` in an inet table only on prerouting.
    let base = [
        (
            "raw-prerouting",
            "filter",
            "prerouting",
            "-300",
            raw_prerouting.iter().map(String::as_str).collect(),
        ),
        (
            "raw-output",
            "filter",
            "output",
            "-300",
            raw_output.iter().map(String::as_str).collect(),
        ),
        (
            "filter-prerouting",
            "filter",
            "prerouting",
            "-110",
            vec!["ct state new jump firewall-check"],
        ),
        (
            "filter-input",
            "filter",
            "input",
            "-110",
            vec!["ct state new jump endpoints-check"],
        ),
        (
            "filter-forward",
            "filter",
            "forward",
            "-110",
            vec!["ct state new jump endpoints-check"],
        ),
        (
            "filter-output",
            "filter",
            "output",
            "-110",
            vec![
                "ct state new jump endpoints-check",
                "ct state new jump firewall-check",
            ],
        ),
        (
            "nat-prerouting",
            "nat",
            "prerouting",
            "-100",
            vec!["jump services"],
        ),
        ("nat-output", "nat", "output", "-100", vec!["jump services"]),
        (
            "nat-postrouting",
            "nat",
            "postrouting",
            "100",
            vec!["jump masquerading"],
        ),
    ];
    for (name, kind, hook, priority, rules) in base {
        let _ = writeln!(
            out,
            "  chain {name} {{\n    type {kind} hook {hook} priority {priority}; policy accept;"
        );
        for rule in rules {
            let _ = writeln!(out, "    {rule}");
        }
        let _ = writeln!(out, "  }}");
    }
    let mut fixed: Vec<(&str, Vec<String>)> = vec![
        (
            "mark-for-masquerade",
            vec![format!("meta mark set meta mark | {MASQUERADE_MARK:#x}")],
        ),
        (REJECT_CHAIN, vec!["reject".to_owned()]),
    ];
    let mut masquerading = Vec::new();
    let mut endpoints_check = Vec::new();
    let mut firewall_check = Vec::new();
    let mut services = Vec::new();
    for family in Family::ALL {
        let (ip, s) = (family.selector(), family.suffix());
        let dispatch = format!("{ip} daddr . meta l4proto . th dport vmap");
        let node_ports = format!(
            "fib daddr type local {} meta l4proto . th dport vmap",
            family.not_loopback()
        );
        masquerading.push(format!(
            "ct status dnat {ip} saddr . {ip} daddr @hairpin{s} jump mark-for-masquerade"
        ));
        endpoints_check.push(format!("{dispatch} @no-endpoint-services{s}"));
        endpoints_check.push(format!("{node_ports} @no-endpoint-nodeports{s}"));
        firewall_check.push(format!("{dispatch} @firewall-ips{s}"));
        services.push(format!("{dispatch} @service-ips{s}"));
        services.push(format!("{node_ports} @service-nodeports{s}"));
    }
    masquerading.extend([
        format!("meta mark & {MASQUERADE_MARK:#x} == 0 return"),
        format!("meta mark set meta mark ^ {MASQUERADE_MARK:#x}"),
        "masquerade fully-random".to_owned(),
    ]);
    fixed.extend([
        ("masquerading", masquerading),
        ("endpoints-check", endpoints_check),
        ("firewall-check", firewall_check),
        ("services", services),
    ]);
    for (name, rules) in fixed {
        let _ = writeln!(out, "  chain {name} {{");
        for rule in rules {
            let _ = writeln!(out, "    {rule}");
        }
        let _ = writeln!(out, "  }}");
    }
    out.push_str("}\n");
    out
}

/// The script removing every rule of the table and every element of its maps and hairpin
/// sets, leaving the (empty) chains in place.
pub fn emptying() -> String {
    let mut out = format!("flush table inet {TABLE}\n");
    for family in Family::ALL {
        for kind in MapKind::ALL {
            let map = MapRef { kind, family }.name();
            let _ = writeln!(out, "flush map inet {TABLE} {map}");
        }
        for set in ["hairpin", "cluster-dns"] {
            let _ = writeln!(out, "flush set inet {TABLE} {set}{}", family.suffix());
        }
    }
    out
}

/// The rules of one Service port on the kernel path. `targets` gives each frontend's
/// `loadBalancerSourceRanges`.
pub fn render_port(
    port: &ServicePortTable,
    targets: &HashMap<Frontend, FrontendTarget>,
    settings: &KernelSettings,
) -> PortRules {
    let mut rules = PortRules::default();
    let mut udp = UdpTranslation::default();
    let is_cluster_dns = settings.cluster_dns.as_ref() == Some(&port.key.service)
        && matches!(port.key.protocol, Protocol::Tcp | Protocol::Udp);
    let local_dns = |(frontend, scope): &(Frontend, TrafficScope)| {
        is_cluster_dns
            && *scope == TrafficScope::Internal
            && frontend.addr.port() == DNS_PORT
            && !frontend.addr.ip().is_unspecified()
    };
    rules.local_dns = port
        .frontends
        .iter()
        .filter(|f| local_dns(f))
        .map(|(f, _)| f.addr.ip())
        .collect();
    for family in Family::ALL {
        let frontends: Vec<(Frontend, TrafficScope)> = port
            .frontends
            .iter()
            .filter(|(f, _)| Family::of(f.addr.ip()) == family)
            .filter(|f| !local_dns(f))
            .copied()
            .collect();
        if frontends.is_empty() {
            continue;
        }
        let render = FamilyRender {
            port,
            family,
            pods: settings
                .pod_cidrs
                .iter()
                .filter(|p| Family::of(p.address) == family)
                .map(|p| format!("{}/{}", p.address, p.len))
                .collect(),
            base: chain_base(&port.key, family),
        };
        render.render(&frontends, targets, &mut rules);
        if port.key.protocol == Protocol::Udp {
            udp.frontends.extend(frontends.iter().map(|(f, _)| f.addr));
            let sets = [&port.internal, &port.external];
            udp.endpoints.extend(
                sets.iter()
                    .flat_map(|set| eligible(set, family).0)
                    .map(|e| e.addr),
            );
        }
    }
    if port.key.protocol == Protocol::Udp {
        rules.udp = Some(udp);
    }
    rules
}

/// The endpoints of `set` of `family`, and what to do when there are none. Endpoints of the
/// other family only count as none at all.
fn eligible(set: &EndpointSet, family: Family) -> (Vec<&Endpoint>, WhenEmpty) {
    let endpoints: Vec<&Endpoint> = set
        .endpoints
        .iter()
        .map(|e| &**e)
        .filter(|e| Family::of(e.addr.ip()) == family)
        .collect();
    let when_empty = if endpoints.is_empty() && !set.endpoints.is_empty() {
        WhenEmpty::Reject
    } else {
        set.when_empty
    };
    (endpoints, when_empty)
}

/// The verdict of the `no-endpoint-*` maps.
fn empty_verdict(when_empty: WhenEmpty) -> String {
    match when_empty {
        WhenEmpty::Reject => format!("goto {REJECT_CHAIN}"),
        WhenEmpty::Drop => "drop".to_owned(),
    }
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// One family of one Service port being rendered.
struct FamilyRender<'a> {
    port: &'a ServicePortTable,
    family: Family,
    /// The pod CIDRs of this family, as nft prefixes.
    pods: Vec<String>,
    base: String,
}

impl FamilyRender<'_> {
    fn render(
        &self,
        frontends: &[(Frontend, TrafficScope)],
        targets: &HashMap<Frontend, FrontendTarget>,
        rules: &mut PortRules,
    ) {
        let (internal, internal_empty) = eligible(&self.port.internal, self.family);
        let (external, external_empty) = eligible(&self.port.external, self.family);
        // kube-proxy's `hasEndpoints`: usable endpoints somewhere, if not on this node.
        let has_endpoints = !internal.is_empty()
            || !external.is_empty()
            || internal_empty == WhenEmpty::Drop
            || external_empty == WhenEmpty::Drop;
        let internal_chain = format!("service-{}", self.base);
        if !internal.is_empty() {
            let mut chain = self.masquerade_outside_pods(frontends);
            chain.extend(self.balance(&internal, rules));
            rules.chains.insert(internal_chain.clone(), chain);
        }
        let external_set_chain = if external.is_empty() {
            None
        } else if same_endpoints(&internal, &external) {
            Some(internal_chain.clone())
        } else {
            let role = if self.port.external_local {
                "local"
            } else {
                "cluster"
            };
            let name = format!("{role}-{}", self.base);
            let chain = self.balance(&external, rules);
            rules.chains.insert(name.clone(), chain);
            Some(name)
        };
        let any_external = frontends.iter().any(|(_, s)| *s == TrafficScope::External);
        let external_chain = format!("external-{}", self.base);
        if has_endpoints && any_external {
            let to_internal = (!internal.is_empty()).then_some(internal_chain.as_str());
            let chain = self.external_chain(to_internal, external_set_chain.as_deref());
            rules.chains.insert(external_chain.clone(), chain);
        }
        let firewall_chain = format!("firewall-{}", self.base);
        let protocol = protocol_name(self.port.key.protocol);
        for (frontend, scope) in frontends {
            let (ip, number) = (frontend.addr.ip(), frontend.addr.port());
            let node_port = ip.is_unspecified();
            let key = if node_port {
                format!("{protocol} . {number}")
            } else {
                format!("{ip} . {protocol} . {number}")
            };
            let map = |kind| MapRef {
                kind,
                family: self.family,
            };
            let (dispatch, refuse) = if node_port {
                (map(MapKind::NodePorts), map(MapKind::NoEndpointNodePorts))
            } else {
                (map(MapKind::ServiceIps), map(MapKind::NoEndpointServices))
            };
            match scope {
                TrafficScope::Internal if !internal.is_empty() => {
                    let verdict = format!("goto {internal_chain}");
                    rules.elements.insert((dispatch, key.clone()), verdict);
                }
                TrafficScope::Internal => {
                    let verdict = empty_verdict(internal_empty);
                    rules.elements.insert((refuse, key.clone()), verdict);
                }
                TrafficScope::External => {
                    if has_endpoints {
                        let verdict = format!("goto {external_chain}");
                        rules.elements.insert((dispatch, key.clone()), verdict);
                    }
                    // No endpoints at all: reject. None for external traffic (`Local`): drop
                    // what the external chain did not short-circuit.
                    if external.is_empty() {
                        let when_empty = if has_endpoints {
                            external_empty
                        } else {
                            WhenEmpty::Reject
                        };
                        rules
                            .elements
                            .insert((refuse, key.clone()), empty_verdict(when_empty));
                    }
                }
            }
            let ranges = targets.get(frontend).and_then(|t| t.source_ranges.as_ref());
            if let (Some(ranges), false) = (ranges, node_port) {
                let allowed: Vec<String> = ranges
                    .iter()
                    .filter(|r| Family::of(r.addr()) == self.family)
                    .map(ToString::to_string)
                    .collect();
                let rule = if allowed.is_empty() {
                    "drop".to_owned()
                } else {
                    let ip = self.family.selector();
                    format!("{ip} saddr != {{ {} }} drop", allowed.join(", "))
                };
                rules.chains.insert(firewall_chain.clone(), vec![rule]);
                let verdict = format!("goto {firewall_chain}");
                rules
                    .elements
                    .insert((map(MapKind::FirewallIps), key), verdict);
            }
        }
    }

    /// ClusterIP traffic from outside the pod ranges is masqueraded (kube-proxy masquerades
    /// off-cluster traffic to a Service VIP, which may leave the node again).
    fn masquerade_outside_pods(&self, frontends: &[(Frontend, TrafficScope)]) -> Vec<String> {
        if self.pods.is_empty() {
            return Vec::new();
        }
        let ip = self.family.selector();
        let pods = self.pods.join(", ");
        frontends
            .iter()
            .filter(|(f, s)| *s == TrafficScope::Internal && !f.addr.ip().is_unspecified())
            .map(|(f, _)| {
                format!(
                    "{ip} daddr {} th dport {} {ip} saddr != {{ {pods} }} jump mark-for-masquerade",
                    f.addr.ip(),
                    f.addr.port()
                )
            })
            .collect()
    }

    /// The chain every external destination of the port jumps to (kube-proxy's `external-`
    /// chain): masquerade and go to the cluster endpoints, or, for a `Local` policy, keep the
    /// client's address and go to this node's endpoints, short-circuiting pod and node traffic
    /// to the internal endpoints.
    fn external_chain(&self, internal: Option<&str>, external: Option<&str>) -> Vec<String> {
        let mut chain = Vec::new();
        if self.port.external_local {
            if let (false, Some(internal)) = (self.pods.is_empty(), internal) {
                let ip = self.family.selector();
                chain.push(format!(
                    "{ip} saddr {{ {} }} goto {internal}",
                    self.pods.join(", ")
                ));
            }
            chain.push("fib saddr type local jump mark-for-masquerade".to_owned());
            if let Some(internal) = internal {
                chain.push(format!("fib saddr type local goto {internal}"));
            }
        } else {
            chain.push("jump mark-for-masquerade".to_owned());
        }
        if let Some(external) = external {
            chain.push(format!("goto {external}"));
        }
        chain
    }

    /// The rules choosing one of `endpoints` (not empty) and translating to it: a cascade, as
    /// kube-proxy's iptables mode (`statistic --mode random --probability`): rule `j` of `N`
    /// takes the packet with probability 1/(N-j), the last one always, which is uniform. With
    /// ClientIP affinity, kube-proxy's shape: a chain and a timeout set per endpoint, the sets
    /// checked first, and the cascade jumping to the endpoint chains.
    ///
    /// No map: the kernel creates a set per anonymous map (`numgen … map { … }`), and both
    /// naming a set and binding a shared named map to a rule cost time in the number of sets
    /// or elements, so ten thousand Services took 40 s (anonymous maps) or 19 s (one named map)
    /// where the cascade's rules load in under 4 s.
    fn balance(&self, endpoints: &[&Endpoint], rules: &mut PortRules) -> Vec<String> {
        let ip = self.family.selector();
        let protocol = protocol_name(self.port.key.protocol);
        rules.hairpin.extend(endpoints.iter().map(|e| e.addr.ip()));
        let cascade = |actions: Vec<String>| -> Vec<String> {
            let count = actions.len();
            actions
                .into_iter()
                .enumerate()
                .map(|(j, action)| match count - j {
                    1 => action,
                    remaining => format!("numgen random mod {remaining} == 0 {action}"),
                })
                .collect()
        };
        let Some(timeout) = self.port.affinity else {
            return cascade(
                endpoints
                    .iter()
                    .map(|e| format!("meta l4proto {protocol} dnat {ip} to {}", e.addr))
                    .collect(),
            );
        };
        let mut chain = Vec::new();
        let mut choices = Vec::new();
        for endpoint in endpoints {
            let base = endpoint_base(&self.port.key, endpoint.addr);
            let (endpoint_chain, set) = (
                format!("endpoint-{base}"),
                format!("affinity-{}", affinity_base(&base, timeout.as_secs())),
            );
            rules.sets.insert(
                set.clone(),
                format!(
                    "type {}; flags dynamic,timeout; timeout {}s;",
                    self.family.addr_type(),
                    timeout.as_secs().max(1)
                ),
            );
            rules.chains.insert(
                endpoint_chain.clone(),
                vec![
                    format!("update @{set} {{ {ip} saddr }}"),
                    format!("meta l4proto {protocol} dnat {ip} to {}", endpoint.addr),
                ],
            );
            chain.push(format!("{ip} saddr @{set} goto {endpoint_chain}"));
            choices.push(format!("goto {endpoint_chain}"));
        }
        chain.extend(cascade(choices));
        chain
    }
}

fn same_endpoints(a: &[&Endpoint], b: &[&Endpoint]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.addr == y.addr)
}

/// kube-proxy's `servicePortChainNameBase`: `HASH-namespace/name/protocol/port` (IPv6 chains
/// add `/ipv6`: one inet table holds both families).
fn chain_base(key: &ServicePortKey, family: Family) -> String {
    let v6 = if family == Family::V6 { "/ipv6" } else { "" };
    hash_and_truncate(&format!(
        "{}/{}/{}/{}{v6}",
        key.service.namespace,
        key.service.name,
        protocol_name(key.protocol),
        key.port_name
    ))
}

/// kube-proxy's `servicePortEndpointChainNameBase`: `…__ip/port`, IPv6 colons as dots.
fn endpoint_base(key: &ServicePortKey, endpoint: SocketAddr) -> String {
    let ip = endpoint.ip().to_string().replace(':', ".");
    hash_and_truncate(&format!(
        "{}/{}/{}/{}__{ip}/{}",
        key.service.namespace,
        key.service.name,
        protocol_name(key.protocol),
        key.port_name,
        endpoint.port()
    ))
}

/// An affinity set's name changes with its timeout, so a changed timeout is a new set (a
/// set's timeout cannot change in place).
fn affinity_base(endpoint_base: &str, timeout_secs: u64) -> String {
    hash_and_truncate(&format!("{endpoint_base}/{timeout_secs}"))
}

/// Chain names are at most 255 bytes; prefixes (`endpoint-`) are at most 16.
const NAME_BASE_MAX: usize = 240;

/// kube-proxy's `hashAndTruncate`: an 8-character hash of the name, then the name, cut at
/// [`NAME_BASE_MAX`] (names are ASCII: namespaces, names, protocols, ports and addresses).
fn hash_and_truncate(name: &str) -> String {
    let mut out = format!("{}-{name}", hash8(name));
    if out.len() > NAME_BASE_MAX {
        out.truncate(NAME_BASE_MAX - 3);
        out.push_str("...");
    }
    out
}

/// FNV-1a (64 bits), as 8 base32 letters and digits: stable across runs and builds.
fn hash8(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (0..8)
        .map(|i| char::from(ALPHABET[((hash >> (i * 5)) & 31) as usize]))
        .collect()
}
