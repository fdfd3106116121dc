//! The pure half of the kernel data path: what one Service port puts into Capstan's nftables
//! table (chains, verdict-map elements, affinity sets); the fixed part around it is
//! [`super::skeleton`].
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
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use capstan_table::{
    Endpoint, EndpointSet, Frontend, FrontendTarget, Protocol, ServiceKey, ServicePortKey,
    ServicePortTable, TrafficScope, WhenEmpty,
};

use super::pick::{self, EndpointMap, Slots};
use super::stmt::{Action, Field, Match, Net, Rule, Verdict, protocol_name};
use crate::source::Prefix;

/// The nftables table of the kernel data path (family `inet`).
pub const TABLE: &str = "capstan-services";

/// kube-proxy's masquerade mark (`--masquerade-bit 14`), so CNIs that know it keep working.
pub const MASQUERADE_MARK: u32 = 0x4000;

/// The chain that rejects connections to Services without endpoints.
pub(super) const REJECT_CHAIN: &str = "reject-chain";

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
    /// How the table is written.
    pub programmer: super::Programmer,
}

/// The DNS port the cluster DNS Service's ClusterIPs are answered on locally.
pub const DNS_PORT: u16 = 53;

/// Everything one Service port puts in the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    /// Regular chains by name, each with its rules in order.
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// Verdict map elements: (map, key) → verdict.
    pub elements: BTreeMap<(MapRef, MapKey), Verdict>,
    /// ClientIP affinity sets by name.
    pub sets: BTreeMap<String, SetKind>,
    /// Endpoint choices in the `endpoints-*` maps ([`super::pick`]): (map, first key) →
    /// (last key, endpoint).
    pub endpoint_ranges: BTreeMap<(EndpointMap, u32), (u32, SocketAddr)>,
    /// Endpoint addresses that may be reached through this port (for the hairpin sets).
    pub hairpin: BTreeSet<IpAddr>,
    /// UDP only: the frontends and the endpoints traffic is translated to, for conntrack.
    pub udp: Option<UdpTranslation>,
    /// ClusterIPs of the cluster DNS Service answered by this node's DNS server (the
    /// `cluster-dns` sets), instead of translated.
    pub local_dns: BTreeSet<IpAddr>,
}

/// The key of a verdict map element: `10.96.0.10 . tcp . 80`, or `tcp . 30080` for a NodePort
/// on every local address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapKey {
    pub ip: Option<IpAddr>,
    pub protocol: Protocol,
    pub port: u16,
}

/// What a set of the table holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// A verdict map.
    Map(MapRef),
    /// Addresses (`cluster-dns4`).
    Addresses(Family),
    /// `address . address` pairs (`hairpin4`).
    AddressPairs(Family),
    /// ClientIP affinity: source addresses, forgotten after the timeout (seconds).
    Affinity(Family, u64),
    /// Endpoint choices: `numgen` key ranges → `address . port` ([`super::pick`]), one map per
    /// family and protocol (nft 1.0 refuses a `th dport` map after a protocol match).
    Endpoints(Family, Protocol),
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

    /// Address length in bits.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// NodePorts are never served on loopback (kube-proxy's `noLocalhost`).
    pub(super) fn not_loopback(self) -> Match {
        let net = match self {
            Family::V4 => Net::new(IpAddr::from([127, 0, 0, 0]), 8),
            Family::V6 => Net::host(std::net::Ipv6Addr::LOCALHOST.into()),
        };
        Match::Addr {
            field: Field::Destination,
            net,
            negate: true,
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

    pub fn by_address(self) -> bool {
        self.kind.by_address()
    }

    fn key_type(self) -> String {
        if self.kind.by_address() {
            format!("{} . inet_proto . inet_service", self.family.addr_type())
        } else {
            "inet_proto . inet_service".to_owned()
        }
    }
}

// === impl MapKey ===

impl fmt::Display for MapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.ip {
            write!(f, "{ip} . ")?;
        }
        write!(f, "{} . {}", protocol_name(self.protocol), self.port)
    }
}

// === impl SetKind ===

impl SetKind {
    /// `map` or `set`, as nft declares it.
    pub fn keyword(self) -> &'static str {
        match self {
            SetKind::Map(_) | SetKind::Endpoints(..) => "map",
            SetKind::Addresses(_) | SetKind::AddressPairs(_) | SetKind::Affinity(..) => "set",
        }
    }
}

impl fmt::Display for SetKind {
    /// The declaration inside `set NAME { … }`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetKind::Map(map) => write!(f, "type {} : verdict;", map.key_type()),
            SetKind::Addresses(family) => write!(f, "type {};", family.addr_type()),
            SetKind::AddressPairs(family) => {
                write!(f, "type {addr} . {addr};", addr = family.addr_type())
            }
            SetKind::Affinity(family, timeout) => write!(
                f,
                "type {}; flags dynamic,timeout; timeout {timeout}s;",
                family.addr_type()
            ),
            SetKind::Endpoints(family, protocol) => write!(
                f,
                "typeof numgen random mod {} : {} daddr . {} dport; flags interval;",
                pick::BUCKETS,
                family.selector(),
                protocol_name(*protocol)
            ),
        }
    }
}

/// The chain marking ClusterIP traffic from outside the pod ranges of `family` for
/// masquerading.
pub(super) fn unless_pod_chain(family: Family) -> String {
    format!("mark-unless-pod{}", family.suffix())
}

pub(super) fn jump(chain: &str) -> Action {
    Action::Verdict(Verdict::Jump(chain.to_owned()))
}

/// `ip saddr NET`.
pub(super) fn source_in(net: Net) -> Match {
    Match::Addr {
        field: Field::Source,
        net,
        negate: false,
    }
}

/// The rules of one Service port on the kernel path. `targets` gives each frontend's
/// `loadBalancerSourceRanges`; `slots` the endpoint-map slot of each balancing chain.
pub fn render_port(
    port: &ServicePortTable,
    targets: &HashMap<Frontend, FrontendTarget>,
    settings: &KernelSettings,
    slots: &mut Slots,
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
                .map(|p| Net::new(p.address, p.len))
                .collect(),
            base: chain_base(&port.key, family),
        };
        render.render(&frontends, targets, &mut rules, slots);
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
fn empty_verdict(when_empty: WhenEmpty) -> Verdict {
    match when_empty {
        WhenEmpty::Reject => Verdict::Goto(REJECT_CHAIN.to_owned()),
        WhenEmpty::Drop => Verdict::Drop,
    }
}

/// One family of one Service port being rendered.
struct FamilyRender<'a> {
    port: &'a ServicePortTable,
    family: Family,
    /// The pod CIDRs of this family.
    pods: Vec<Net>,
    base: String,
}

impl FamilyRender<'_> {
    fn render(
        &self,
        frontends: &[(Frontend, TrafficScope)],
        targets: &HashMap<Frontend, FrontendTarget>,
        rules: &mut PortRules,
        slots: &mut Slots,
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
            chain.extend(self.balance(&internal_chain, &internal, rules, slots));
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
            let chain = self.balance(&name, &external, rules, slots);
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
        for (frontend, scope) in frontends {
            let ip = frontend.addr.ip();
            let node_port = ip.is_unspecified();
            let key = MapKey {
                ip: (!node_port).then_some(ip),
                protocol: self.port.key.protocol,
                port: frontend.addr.port(),
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
                    let verdict = Verdict::Goto(internal_chain.clone());
                    rules.elements.insert((dispatch, key), verdict);
                }
                TrafficScope::Internal => {
                    let verdict = empty_verdict(internal_empty);
                    rules.elements.insert((refuse, key), verdict);
                }
                TrafficScope::External => {
                    if has_endpoints {
                        let verdict = Verdict::Goto(external_chain.clone());
                        rules.elements.insert((dispatch, key), verdict);
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
                            .insert((refuse, key), empty_verdict(when_empty));
                    }
                }
            }
            let ranges = targets.get(frontend).and_then(|t| t.source_ranges.as_ref());
            if let (Some(ranges), false) = (ranges, node_port) {
                // Allowed sources return to the hook's chain (and are accepted there); the
                // rest is dropped.
                let mut chain: Vec<Rule> = ranges
                    .iter()
                    .filter(|r| Family::of(r.addr()) == self.family)
                    .map(|r| {
                        Rule::verdict(
                            vec![source_in(Net::new(r.addr(), r.prefix_len()))],
                            Verdict::Return,
                        )
                    })
                    .collect();
                chain.push(Rule::verdict(Vec::new(), Verdict::Drop));
                rules.chains.insert(firewall_chain.clone(), chain);
                let verdict = Verdict::Goto(firewall_chain.clone());
                rules
                    .elements
                    .insert((map(MapKind::FirewallIps), key), verdict);
            }
        }
    }

    /// ClusterIP traffic from outside the pod ranges is masqueraded (kube-proxy masquerades
    /// off-cluster traffic to a Service VIP, which may leave the node again).
    fn masquerade_outside_pods(&self, frontends: &[(Frontend, TrafficScope)]) -> Vec<Rule> {
        if self.pods.is_empty() {
            return Vec::new();
        }
        frontends
            .iter()
            .filter(|(f, s)| *s == TrafficScope::Internal && !f.addr.ip().is_unspecified())
            .map(|(f, _)| {
                let matches = vec![
                    Match::Addr {
                        field: Field::Destination,
                        net: Net::host(f.addr.ip()),
                        negate: false,
                    },
                    Match::Port {
                        field: Field::Destination,
                        port: f.addr.port(),
                    },
                ];
                Rule::new(matches, jump(&unless_pod_chain(self.family)))
            })
            .collect()
    }

    /// The chain every external destination of the port jumps to (kube-proxy's `external-`
    /// chain): masquerade and go to the cluster endpoints, or, for a `Local` policy, keep the
    /// client's address and go to this node's endpoints, short-circuiting pod and node traffic
    /// to the internal endpoints.
    fn external_chain(&self, internal: Option<&str>, external: Option<&str>) -> Vec<Rule> {
        let mut chain = Vec::new();
        let goto = |chain: &str| Verdict::Goto(chain.to_owned());
        if self.port.external_local {
            if let Some(internal) = internal {
                for net in &self.pods {
                    chain.push(Rule::verdict(vec![source_in(*net)], goto(internal)));
                }
            }
            let local = || vec![Match::FibLocal(Field::Source)];
            chain.push(Rule::new(local(), jump("mark-for-masquerade")));
            if let Some(internal) = internal {
                chain.push(Rule::verdict(local(), goto(internal)));
            }
        } else {
            chain.push(Rule::always(jump("mark-for-masquerade")));
        }
        if let Some(external) = external {
            chain.push(Rule::verdict(Vec::new(), goto(external)));
        }
        chain
    }

    /// The rules of `chain` choosing one of `endpoints` (not empty) and translating to it.
    ///
    /// Without affinity: one rule looking the choice up in the shared `endpoints` map, in the
    /// chain's slot ([`super::pick`]), so endpoint changes are map elements only. Per-port
    /// maps were measured first and dropped: the kernel finds sets by walking a list, so ten
    /// thousand named maps took 28.7 s to create (anonymous ones, kube-proxy's, 40 s).
    ///
    /// With ClientIP affinity, or once every slot is taken: a cascade, as kube-proxy's
    /// iptables mode (`statistic --mode random --probability`): rule `j` of `N` takes the
    /// packet with probability 1/(N-j), the last one always, which is uniform. Affinity takes
    /// kube-proxy's shape: a chain and a timeout set per endpoint, the sets checked first, and
    /// the cascade jumping to the endpoint chains.
    fn balance(
        &self,
        chain: &str,
        endpoints: &[&Endpoint],
        rules: &mut PortRules,
        slots: &mut Slots,
    ) -> Vec<Rule> {
        let protocol = self.port.key.protocol;
        rules.hairpin.extend(endpoints.iter().map(|e| e.addr.ip()));
        let cascade = |choices: Vec<(Vec<Match>, Action)>| -> Vec<Rule> {
            let count = choices.len();
            choices
                .into_iter()
                .enumerate()
                .map(|(j, (mut matches, action))| {
                    if count - j > 1 {
                        matches.insert(0, Match::OneIn((count - j) as u32));
                    }
                    Rule::new(matches, action)
                })
                .collect()
        };
        let dnat =
            |endpoint: &Endpoint| (vec![Match::L4Proto(protocol)], Action::Dnat(endpoint.addr));
        let Some(timeout) = self.port.affinity else {
            let Some(slot) = slots.of(chain) else {
                return cascade(endpoints.iter().map(|e| dnat(e)).collect());
            };
            let offset = slot * pick::BUCKETS;
            let map = EndpointMap::of(self.family, protocol, offset);
            for ((first, last), endpoint) in pick::ranges(offset, endpoints.len()).zip(endpoints) {
                rules
                    .endpoint_ranges
                    .insert((map, first), (last, endpoint.addr));
            }
            let pick = Action::DnatPick { map, offset };
            return vec![Rule::new(vec![Match::L4Proto(protocol)], pick)];
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
                SetKind::Affinity(self.family, timeout.as_secs().max(1)),
            );
            rules.chains.insert(
                endpoint_chain.clone(),
                vec![
                    Rule::always(Action::RememberSource {
                        family: self.family,
                        set: set.clone(),
                    }),
                    Rule::new(vec![Match::L4Proto(protocol)], Action::Dnat(endpoint.addr)),
                ],
            );
            chain.push(Rule::verdict(
                vec![Match::AddrInSet {
                    family: self.family,
                    field: Field::Source,
                    set,
                }],
                Verdict::Goto(endpoint_chain.clone()),
            ));
            choices.push((Vec::new(), Action::Verdict(Verdict::Goto(endpoint_chain))));
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
