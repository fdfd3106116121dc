//! Catalog entries: what sources produce, already validated and defaulted.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use capstan_table::{BalancePolicy, EndpointConditions, Protocol, ServiceKey};

use crate::CatalogError;

/// A Service: named ports reachable on VIPs, NodePorts or explicit listen addresses.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub key: ServiceKey,
    pub kind: ServiceKind,
    /// Where it was declared, which decides the DNS zone it is named in.
    pub origin: Origin,
    /// ClusterIPs (one per family); empty for a headless Service.
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`: clients allowed on the LoadBalancer IPs (empty: all).
    pub load_balancer_source_ranges: Vec<ipnet::IpNet>,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP` timeout, `None` for `None`.
    pub session_affinity: Option<Duration>,
    pub internal_traffic_policy: TrafficPolicy,
    pub external_traffic_policy: TrafficPolicy,
    pub publish_not_ready_addresses: bool,
    /// Overrides of the defaults in [`crate::CompileOptions`] (standalone config only).
    pub balance: Option<BalancePolicy>,
    pub connect_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// The `service.kubernetes.io/service-proxy-name` label: a Service naming another proxy is
    /// named in DNS but not proxied (see [`crate::CompileOptions::proxy_name`]).
    pub proxy_name: Option<Arc<str>>,
    /// The `service.kubernetes.io/headless` label: kube-proxy's informers select such objects
    /// away (cmd/kube-proxy/app/server.go, `noHeadlessEndpoints`), so it is named in DNS but
    /// not proxied.
    pub headless_label: bool,
    /// `spec.trafficDistribution`: used to derive topology hints when no EndpointSlice of the
    /// Service carries any (slices written by hand, no EndpointSlice controller).
    pub traffic_distribution: Option<TrafficDistribution>,
    /// `spec.healthCheckNodePort` (LoadBalancer with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// Active health checks and outlier ejection (`capstan.dev/*` annotations).
    pub policy: crate::ServicePolicy,
}

/// `spec.trafficDistribution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficDistribution {
    /// `PreferSameZone`, or its older name `PreferClose`.
    PreferSameZone,
    PreferSameNode,
}

/// Where a Service was declared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    /// The Kubernetes API or a manifest: named `<service>.<namespace>.svc.<cluster domain>`.
    #[default]
    Kubernetes,
    /// `capstan.yaml`: named `<service>.<standalone zone>`.
    Standalone,
}

/// The Service `type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    /// DNS-only alias: never proxied.
    ExternalName(String),
}

/// `internalTrafficPolicy` / `externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    pub node_port: Option<u16>,
    pub app_protocol: Option<String>,
    /// Extra listen addresses (standalone config), in addition to the VIPs × `port`.
    pub listen: Vec<SocketAddr>,
}

/// `targetPort`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// An EndpointSlice: endpoints of one Service for a set of named ports.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSlice {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The owning Service (`kubernetes.io/service-name` label).
    pub service: ServiceKey,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// A port of an EndpointSlice; `port: None` means "all ports" in the API and is resolved from the
/// Service's numeric `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: Option<u16>,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    pub conditions: EndpointConditions,
    pub hostname: Option<String>,
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// `hints.forZones[].name`.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name`.
    pub node_hints: Vec<String>,
}

// === impl Service ===

impl Service {
    /// A Service of `kind` with no addresses or ports, API defaults for every policy, and no
    /// overrides: the base that sources fill in.
    pub fn new(key: ServiceKey, kind: ServiceKind) -> Self {
        Self {
            key,
            kind,
            origin: Origin::Kubernetes,
            cluster_ips: vec![],
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            ports: vec![],
            session_affinity: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            publish_not_ready_addresses: false,
            balance: None,
            connect_timeout: None,
            idle_timeout: None,
            proxy_name: None,
            headless_label: false,
            traffic_distribution: None,
            health_check_node_port: None,
            policy: crate::ServicePolicy::default(),
        }
    }

    /// A Service with no ClusterIP: DNS returns its endpoints, nothing is proxied on a VIP.
    pub fn is_headless(&self) -> bool {
        self.cluster_ips.is_empty()
    }

    /// Whether the proxy named `proxy` (kube-proxy's `--service-proxy-name`) serves this Service.
    pub fn proxied_by(&self, proxy: Option<&str>) -> bool {
        !self.headless_label && self.proxy_name.as_deref() == proxy
    }

    /// Checks the invariants the compile step relies on.
    pub fn validate(&self) -> Result<(), CatalogError> {
        let invalid = |reason: String| CatalogError::InvalidService {
            service: self.key.clone(),
            reason,
        };
        if let ServiceKind::ExternalName(name) = &self.kind {
            if name.is_empty() {
                return Err(invalid("type ExternalName needs spec.externalName".into()));
            }
            return Ok(());
        }
        let mut names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        for port in &self.ports {
            if port.port == 0 && port.listen.is_empty() {
                return Err(invalid(format!("port {:?} has port number 0", &*port.name)));
            }
            if !names.insert((port.name.clone(), port.protocol)) {
                return Err(invalid(format!(
                    "port name {:?} is used twice for {}",
                    &*port.name, port.protocol
                )));
            }
            if port.port != 0 && !numbers.insert((port.port, port.protocol)) {
                return Err(invalid(format!(
                    "port {}/{} is declared twice",
                    port.port, port.protocol
                )));
            }
            if let TargetPort::Number(0) = port.target_port {
                return Err(invalid(format!("port {:?} has targetPort 0", &*port.name)));
            }
            if port.node_port == Some(0) {
                return Err(invalid(format!("port {:?} has nodePort 0", &*port.name)));
            }
        }
        if self.ports.len() > 1 && self.ports.iter().any(|p| p.name.is_empty()) {
            return Err(invalid(
                "every port must be named when a Service has more than one".into(),
            ));
        }
        if let Some(timeout) = self.session_affinity
            && (timeout.is_zero() || timeout > Duration::from_secs(86_400))
        {
            return Err(invalid(
                "sessionAffinityConfig.clientIP.timeoutSeconds must be 1..=86400".into(),
            ));
        }
        Ok(())
    }
}

// === impl EndpointSlice ===

impl EndpointSlice {
    pub fn validate(&self) -> Result<(), CatalogError> {
        let invalid = |reason: String| CatalogError::InvalidSlice {
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            reason,
        };
        if self.service.name.is_empty() {
            return Err(invalid(
                "missing label kubernetes.io/service-name naming its Service".into(),
            ));
        }
        if self.ports.iter().any(|p| p.port == Some(0)) {
            return Err(invalid("port 0".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ports: Vec<ServicePort>) -> Service {
        Service {
            cluster_ips: vec![[10, 0, 0, 1].into()],
            ports,
            ..Service::new(ServiceKey::new("default", "web"), ServiceKind::ClusterIp)
        }
    }

    fn port(name: &str, number: u16) -> ServicePort {
        ServicePort {
            name: name.into(),
            protocol: Protocol::Tcp,
            port: number,
            target_port: TargetPort::Number(8080),
            node_port: None,
            app_protocol: None,
            listen: vec![],
        }
    }

    #[test]
    fn validation_rejects_what_the_api_server_would() {
        assert!(service(vec![port("", 80)]).validate().is_ok());
        assert!(
            service(vec![port("a", 80), port("b", 81)])
                .validate()
                .is_ok()
        );
        let dup_name = service(vec![port("a", 80), port("a", 81)]).validate();
        assert!(dup_name.unwrap_err().to_string().contains("used twice"));
        let dup_port = service(vec![port("a", 80), port("b", 80)]).validate();
        assert!(dup_port.unwrap_err().to_string().contains("declared twice"));
        let unnamed = service(vec![port("", 80), port("b", 81)]).validate();
        assert!(unnamed.unwrap_err().to_string().contains("must be named"));
        let mut zero = service(vec![port("", 80)]);
        zero.ports[0].target_port = TargetPort::Number(0);
        assert!(zero.validate().is_err());
        let mut affinity = service(vec![port("", 80)]);
        affinity.session_affinity = Some(Duration::ZERO);
        assert!(affinity.validate().is_err());
    }
}
