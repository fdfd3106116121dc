//! Compiles Services and EndpointSlices into the authoritative DNS table, following the
//! Kubernetes DNS-Based Service Discovery specification 1.1.0 (and CoreDNS where it is silent).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use capstan_table::{DNS_SCHEMA_VERSION, DnsTable, DnsZone, ServiceKey, SrvData};

use crate::{EndpointSlice, Origin, Service, ServiceKind, SourceId, TargetPort};

/// The names DNS publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsOptions {
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// Zone the `capstan.yaml` services are named in (`<service>.<zone>`); `None` leaves them out.
    pub standalone_zone: Option<String>,
    /// What a standalone service listening on a wildcard address (`0.0.0.0`, `[::]`) resolves to:
    /// this host's addresses.
    pub standalone_addresses: Vec<IpAddr>,
    /// TTL of every record (and the negative-caching TTL).
    pub ttl: u32,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            standalone_zone: None,
            standalone_addresses: vec![],
            ttl: 5,
        }
    }
}

/// A zone name as the table keys it: lowercase, no trailing dot.
pub(crate) fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

pub(crate) fn compile_dns(
    services: &BTreeMap<&ServiceKey, (&SourceId, &Service)>,
    inputs: &super::FastMap<&ServiceKey, super::Inputs<'_>>,
    options: &DnsOptions,
    serial: u32,
) -> DnsTable {
    let cluster = normalize(&options.cluster_domain);
    let mut zones = vec![DnsZone {
        name: cluster.as_str().into(),
        pods: true,
    }];
    let standalone = options.standalone_zone.as_deref().map(normalize);
    if let Some(zone) = &standalone
        && *zone != cluster
    {
        zones.push(DnsZone {
            name: zone.as_str().into(),
            pods: false,
        });
    }
    let mut table = DnsTable::new(zones, options.ttl, serial);
    add_txt(
        &mut table,
        &format!("dns-version.{cluster}"),
        DNS_SCHEMA_VERSION,
    );
    table.node_mut(&format!("svc.{cluster}"));

    for (_, service) in services.values() {
        let service_slices = inputs
            .get(&service.key)
            .map(|i| i.slice_objects.as_slice())
            .unwrap_or_default();
        match (service.origin, &standalone) {
            (Origin::Kubernetes, _) => {
                add_cluster_service(&mut table, &cluster, service, service_slices);
            }
            (Origin::Standalone, Some(zone)) => {
                add_standalone_service(&mut table, zone, service, options);
            }
            (Origin::Standalone, None) => {}
        }
    }
    for node in table.names.values_mut() {
        finish(&mut node.srv);
        node.a.sort_unstable();
        node.a.dedup();
        node.aaaa.sort_unstable();
        node.aaaa.dedup();
    }
    for names in table.reverse.values_mut() {
        names.sort_unstable();
    }
    table
}

fn add_txt(table: &mut DnsTable, name: &str, text: &str) {
    if let Some(node) = table.node_mut(name) {
        node.txt.push(text.into());
    }
}

fn add_address(table: &mut DnsTable, name: &str, ip: IpAddr) {
    if let Some(node) = table.node_mut(name) {
        match ip {
            IpAddr::V4(v4) => node.a.push(v4),
            IpAddr::V6(v6) => node.aaaa.push(v6),
        }
    }
}

fn add_srv(table: &mut DnsTable, name: &str, port: u16, target: &Arc<str>) {
    if let Some(node) = table.node_mut(name) {
        node.srv.push(SrvData {
            priority: 0,
            weight: 0,
            port,
            target: target.clone(),
        });
    }
}

/// Sorts and deduplicates SRV records and spreads the weight evenly, as CoreDNS does.
fn finish(srv: &mut Vec<SrvData>) {
    if srv.is_empty() {
        return;
    }
    srv.sort_unstable();
    srv.dedup();
    let weight = u16::try_from(100 / srv.len()).unwrap_or(1).max(1);
    for record in srv.iter_mut() {
        record.weight = weight;
    }
}

fn add_cluster_service(
    table: &mut DnsTable,
    zone: &str,
    service: &Service,
    slices: &[&EndpointSlice],
) {
    let name: Arc<str> = format!(
        "{}.{}.svc.{zone}",
        service.key.name.to_ascii_lowercase(),
        service.key.namespace.to_ascii_lowercase()
    )
    .into();
    if let ServiceKind::ExternalName(target) = &service.kind {
        if let Some(node) = table.node_mut(&name) {
            node.cname = Some(normalize(target).into());
        }
        return;
    }
    if !service.is_headless() {
        // The Service name exists even with no address (NOERROR, no data).
        table.node_mut(&name);
        for &ip in &service.cluster_ips {
            add_address(table, &name, ip);
            table.add_reverse(ip, name.clone());
        }
        for port in service.ports.iter().filter(|p| !p.name.is_empty()) {
            let srv_name = srv_name(&port.name, port.protocol.as_str(), &name);
            add_srv(table, &srv_name, port.port, &name);
        }
        return;
    }
    // Headless: the Service's ready endpoints, each under its own hostname. With none, the name
    // does not exist (NXDOMAIN), as CoreDNS answers (plugin/kubernetes findServices returns
    // errNoItems; DNS spec §2.4.1 defines the records only for ready endpoints).
    for slice in slices {
        let ports: Vec<(String, u16)> = service
            .ports
            .iter()
            .filter(|p| !p.name.is_empty())
            .filter_map(|port| {
                let slice_port = slice
                    .ports
                    .iter()
                    .find(|sp| sp.name == port.name && sp.protocol == port.protocol)?;
                let number = match (slice_port.port, &port.target_port) {
                    (Some(n), _) | (None, &TargetPort::Number(n)) => n,
                    (None, TargetPort::Name(_)) => return None,
                };
                Some((srv_name(&port.name, port.protocol.as_str(), &name), number))
            })
            .collect();
        for endpoint in &slice.endpoints {
            if !endpoint.conditions.ready && !service.publish_not_ready_addresses {
                continue;
            }
            let Some(&ip) = endpoint.addresses.first() else {
                continue;
            };
            let host = match &endpoint.hostname {
                Some(hostname) if !hostname.is_empty() => hostname.to_ascii_lowercase(),
                _ => dashed(ip),
            };
            let host_name: Arc<str> = format!("{host}.{name}").into();
            add_address(table, &name, ip);
            add_address(table, &host_name, ip);
            table.add_reverse(ip, host_name.clone());
            for (srv_name, number) in &ports {
                add_srv(table, srv_name, *number, &host_name);
            }
        }
    }
}

fn add_standalone_service(
    table: &mut DnsTable,
    zone: &str,
    service: &Service,
    options: &DnsOptions,
) {
    let name = format!("{}.{zone}", service.key.name.to_ascii_lowercase());
    table.node_mut(&name);
    let listen = service.ports.iter().flat_map(|p| &p.listen);
    for addr in listen {
        if addr.ip().is_unspecified() {
            let v4 = addr.ip().is_ipv4();
            for &ip in &options.standalone_addresses {
                // `[::]` also accepts IPv4 on Linux (unless v6only), so it answers both families.
                if ip.is_ipv4() == v4 || !v4 {
                    add_address(table, &name, ip);
                }
            }
        } else {
            add_address(table, &name, addr.ip());
        }
    }
}

fn srv_name(port: &str, protocol: &str, service: &str) -> String {
    format!(
        "_{}._{}.{service}",
        port.to_ascii_lowercase(),
        protocol.to_ascii_lowercase()
    )
}

/// The hostname CoreDNS gives an endpoint without one: its address with `.`/`:` as `-`.
pub(crate) fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => {
            let mut text = v6.to_string().replace(':', "-");
            if text.ends_with('-') {
                text.push('0');
            }
            if text.starts_with('-') {
                text.insert(0, '0');
            }
            text
        }
    }
}
