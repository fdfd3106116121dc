//! The one conversion from Kubernetes objects to catalog entries, shared by the manifest files
//! source and (later) the Kubernetes watch source, so both mean exactly the same.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use capstan_catalog::{
    ANNOTATION_PREFIX, EndpointSlice, Origin, Service, ServiceKind, ServicePort, SliceEndpoint,
    SlicePort, TargetPort, TrafficDistribution, TrafficPolicy, capstan_annotations, service_policy,
};
use capstan_table::{BalancePolicy, EndpointConditions, Protocol, ServiceKey};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::Error;

mod gateway;
mod ingress;

pub(crate) use gateway::{gateway_object, is_gateway_kind};
pub use ingress::{
    BASIC_AUTH_LABEL, DEFAULT_CLASS_ANNOTATION, LEGACY_CLASS_ANNOTATION, TLS_SECRET_TYPE,
    auth_secret, ingress, ingress_class, secret, tls_secret,
};

/// Annotation choosing the load-balancing policy of a Service.
pub const BALANCE_ANNOTATION: &str = "capstan.dev/load-balancer";
/// The label handing a Service to another proxy (kube-proxy's `--service-proxy-name` filter).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label kube-proxy's informers exclude besides the proxy name (`v1.IsHeadlessService`).
pub(super) const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_SECONDS: i32 = 10_800;

/// Converts a `v1/Service` into a validated catalog entry.
pub fn service(object: &core::Service) -> Result<Service, Error> {
    let key = key(&object.metadata);
    let name = key.to_string();
    let err = |reason: String| Error::Convert {
        kind: "Service",
        name: name.clone(),
        reason,
    };
    if key.name.is_empty() {
        return Err(err("metadata.name is required".into()));
    }
    let spec = object.spec.clone().unwrap_or_default();
    let kind = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => ServiceKind::ClusterIp,
        "NodePort" => ServiceKind::NodePort,
        "LoadBalancer" => ServiceKind::LoadBalancer,
        "ExternalName" => ServiceKind::ExternalName(spec.external_name.clone().unwrap_or_default()),
        other => return Err(err(format!("unknown spec.type {other:?}"))),
    };
    let cluster_ips = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) => vec![ip.clone()],
        _ => vec![],
    };
    let cluster_ips = if matches!(kind, ServiceKind::ExternalName(_)) {
        vec![]
    } else {
        parse_ips(
            cluster_ips
                .iter()
                .filter(|ip| !ip.is_empty() && *ip != "None"),
            "clusterIP",
        )
        .map_err(err)?
    };
    let external_ips = parse_ips(spec.external_ips.iter().flatten(), "externalIPs").map_err(err)?;
    let load_balancer_ips = object
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ingress| ingress.ip.as_ref());
    let load_balancer_ips =
        parse_ips(load_balancer_ips, "status.loadBalancer.ingress").map_err(err)?;
    // As kube-proxy: surrounding spaces are ignored; an invalid range fails the object.
    let load_balancer_source_ranges = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .map(|range| {
            range
                .trim()
                .parse::<ipnet::IpNet>()
                .map(|net| net.trunc())
                .map_err(|_| {
                    err(format!(
                        "spec.loadBalancerSourceRanges: {range:?} is not a CIDR"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(service_port)
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let session_affinity = match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => None,
        "ClientIP" => {
            let seconds = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS);
            let seconds = u64::try_from(seconds)
                .map_err(|_| err(format!("negative session affinity timeout {seconds}")))?;
            Some(Duration::from_secs(seconds))
        }
        other => return Err(err(format!("unknown spec.sessionAffinity {other:?}"))),
    };
    let balance = match object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(BALANCE_ANNOTATION))
    {
        Some(value) => Some(parse_balance(value).map_err(err)?),
        None => None,
    };
    let service = Service {
        key,
        kind,
        origin: Origin::Kubernetes,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        ports,
        session_affinity,
        internal_traffic_policy: traffic_policy(spec.internal_traffic_policy.as_deref())
            .map_err(err)?,
        external_traffic_policy: traffic_policy(spec.external_traffic_policy.as_deref())
            .map_err(err)?,
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        balance,
        connect_timeout: None,
        idle_timeout: None,
        health_check_node_port: spec
            .health_check_node_port
            .filter(|&port| port != 0)
            .map(port_number)
            .transpose()
            .map_err(err)?,
        traffic_distribution: match spec.traffic_distribution.as_deref() {
            None => None,
            Some("PreferClose" | "PreferSameZone") => Some(TrafficDistribution::PreferSameZone),
            Some("PreferSameNode") => Some(TrafficDistribution::PreferSameNode),
            // The API server accepts only these; an unknown value means no preference.
            Some(_) => None,
        },
        proxy_name: object
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL))
            .map(|name| name.as_str().into()),
        headless_label: object
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(HEADLESS_LABEL)),
        policy: service_policy(
            &capstan_annotations(object.metadata.annotations.iter().flatten()),
            &[BALANCE_ANNOTATION.trim_start_matches(ANNOTATION_PREFIX)],
        )
        .map_err(|reason| err(format!("annotations {ANNOTATION_PREFIX}*: {reason}")))?,
    };
    service.validate()?;
    Ok(service)
}

/// Converts a `discovery.k8s.io/v1` EndpointSlice. FQDN slices (deprecated, ignored by
/// kube-proxy) give `None`.
pub fn endpoint_slice(object: &discovery::EndpointSlice) -> Result<Option<EndpointSlice>, Error> {
    let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
    let name = object.metadata.name.as_deref().unwrap_or_default();
    let err = |reason: String| Error::Convert {
        kind: "EndpointSlice",
        name: format!("{namespace}/{name}"),
        reason,
    };
    if name.is_empty() {
        return Err(err("metadata.name is required".into()));
    }
    match object.address_type.as_str() {
        "IPv4" | "IPv6" => {}
        "FQDN" => return Ok(None),
        other => return Err(err(format!("unknown addressType {other:?}"))),
    }
    let service_name = object
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned()
        .unwrap_or_default();
    let ports = object
        .ports
        .iter()
        .flatten()
        .map(|p| {
            Ok(SlicePort {
                name: p.name.as_deref().unwrap_or_default().into(),
                protocol: protocol(p.protocol.as_deref())?,
                port: p.port.map(port_number).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(err)?;
    let endpoints = object
        .endpoints
        .iter()
        .map(slice_endpoint)
        .collect::<Result<Vec<_>, String>>()
        .map_err(err)?;
    let slice = EndpointSlice {
        namespace: namespace.into(),
        name: name.into(),
        service: ServiceKey::new(namespace, &service_name),
        ports,
        endpoints,
    };
    slice.validate()?;
    Ok(Some(slice))
}

/// Parses a load-balancing policy name as written in annotations, flags and `capstan.yaml`.
pub fn parse_balance(value: &str) -> Result<BalancePolicy, String> {
    match value {
        "random" => Ok(BalancePolicy::Random),
        "round-robin" => Ok(BalancePolicy::RoundRobin),
        "least-connections" | "p2c" => Ok(BalancePolicy::LeastConnections),
        other => Err(format!(
            "unknown load-balancing policy {other:?} (random, round-robin, least-connections)"
        )),
    }
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ServiceKey {
    ServiceKey::new(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default(),
    )
}

fn service_port(port: &core::ServicePort) -> Result<ServicePort, String> {
    let number = port_number(port.port)?;
    let target_port = match &port.target_port {
        None => TargetPort::Number(number),
        Some(IntOrString::Int(n)) => TargetPort::Number(port_number(*n)?),
        Some(IntOrString::String(s)) => match s.parse::<i32>() {
            Ok(n) => TargetPort::Number(port_number(n)?),
            Err(_) => TargetPort::Name(s.clone()),
        },
    };
    Ok(ServicePort {
        name: port.name.as_deref().unwrap_or_default().into(),
        protocol: protocol(port.protocol.as_deref())?,
        port: number,
        target_port,
        node_port: port.node_port.map(port_number).transpose()?,
        app_protocol: port.app_protocol.clone(),
        listen: vec![],
    })
}

fn slice_endpoint(endpoint: &discovery::Endpoint) -> Result<SliceEndpoint, String> {
    let conditions = endpoint.conditions.clone().unwrap_or_default();
    let ready = conditions.ready.unwrap_or(true);
    let addresses = parse_ips(endpoint.addresses.iter(), "addresses")?;
    if addresses.is_empty() {
        return Err("an endpoint needs at least one address".into());
    }
    Ok(SliceEndpoint {
        addresses,
        conditions: EndpointConditions {
            ready,
            serving: conditions.serving.unwrap_or(ready),
            terminating: conditions.terminating.unwrap_or(false),
        },
        hostname: endpoint.hostname.clone(),
        node_name: endpoint.node_name.as_deref().map(Into::into),
        zone: endpoint.zone.as_deref().map(Into::into),
        zone_hints: endpoint
            .hints
            .as_ref()
            .and_then(|h| h.for_zones.as_ref())
            .into_iter()
            .flatten()
            .map(|z| z.name.clone())
            .collect(),
        node_hints: endpoint
            .hints
            .as_ref()
            .and_then(|h| h.for_nodes.as_ref())
            .into_iter()
            .flatten()
            .map(|n| n.name.clone())
            .collect(),
    })
}

fn parse_ips<'a>(
    ips: impl Iterator<Item = &'a String>,
    field: &str,
) -> Result<Vec<IpAddr>, String> {
    ips.map(|ip| IpAddr::from_str(ip).map_err(|_| format!("{field}: {ip:?} is not an IP address")))
        .collect()
}

fn protocol(value: Option<&str>) -> Result<Protocol, String> {
    match value.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

fn port_number(value: i32) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|&n| n != 0)
        .ok_or_else(|| format!("port {value} is out of range 1-65535"))
}

fn traffic_policy(value: Option<&str>) -> Result<TrafficPolicy, String> {
    match value.unwrap_or("Cluster") {
        "Cluster" => Ok(TrafficPolicy::Cluster),
        "Local" => Ok(TrafficPolicy::Local),
        other => Err(format!("unknown traffic policy {other:?}")),
    }
}

#[cfg(test)]
mod tests;
