//! Names: services, service ports, protocols and the frontends that receive traffic.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// A Service's identity: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

/// One port of one Service, as kube-proxy names it: service, port name and protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortKey {
    pub service: ServiceKey,
    /// The port's name; empty for the single unnamed port of a Service.
    pub port_name: Arc<str>,
    pub protocol: Protocol,
}

/// Transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// An address and protocol on which Capstan receives traffic for a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

/// Which traffic policy applies to a frontend: ClusterIPs use `internalTrafficPolicy`; NodePorts,
/// external IPs and LoadBalancer IPs use `externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrafficScope {
    Internal,
    External,
}

// === impl ServiceKey ===

impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl ServicePortKey ===

impl fmt::Display for ServicePortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port_name.is_empty() {
            write!(f, "{}/{}", self.service, self.protocol)
        } else {
            write!(f, "{}:{}/{}", self.service, self.port_name, self.protocol)
        }
    }
}

// === impl Protocol ===

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Frontend ===

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol)
    }
}

// === impl TrafficScope ===

impl TrafficScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficScope::Internal => "internal",
            TrafficScope::External => "external",
        }
    }
}
