//! A simulated cluster in network namespaces (root only): nodes ([`Node`], each with pods on
//! its bridge and an uplink to the test), joined by one L2 network in a namespace of its own, on
//! which an outside host sits too. Each node routes the other nodes' pod ranges through them, as
//! a routed CNI would, so a pod on one node reaches a pod on another through both nodes' IP
//! layers (and their nftables).

use std::net::Ipv4Addr;
use std::process::Command;

use super::netns::{Node, run};

/// Nodes on one network, and an outside host; deleted (with everything in them) on drop.
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Node>,
    /// The network namespace (a bridge every node and the outside host plug into).
    net: String,
    /// The outside host's namespace.
    pub(crate) outside: String,
    tag: u8,
}

impl Cluster {
    /// `nodes` nodes with `pods` pods each.
    pub(crate) fn new(nodes: usize, pods: usize) -> Self {
        let nodes: Vec<Node> = (0..nodes).map(|_| Node::new(pods)).collect();
        let tag = nodes.first().map_or(1, Node::subnet);
        let net = format!("{}net", nodes[0].ns);
        let outside = format!("{}out", nodes[0].ns);
        run(&["ip", "netns", "add", &net]);
        run(&["ip", "netns", "add", &outside]);
        run(&["ip", "-n", &net, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &net, "link", "set", "br0", "up"]);
        let cluster = Self {
            nodes,
            net,
            outside,
            tag,
        };
        for (i, node) in cluster.nodes.iter().enumerate() {
            cluster.plug(&node.ns, &format!("n{i}"), cluster.node_ip(i));
        }
        cluster.plug(&cluster.outside, "out", cluster.outside_ip());
        run(&["ip", "-n", &cluster.outside, "link", "set", "lo", "up"]);
        for (i, node) in cluster.nodes.iter().enumerate() {
            for (j, other) in cluster.nodes.iter().enumerate() {
                if i != j {
                    let via = cluster.node_ip(j).to_string();
                    node.ip_cmd(&["route", "add", &other.pod_cidr(), "via", &via]);
                }
            }
        }
        cluster
    }

    /// Node `i`'s address on the cluster network.
    pub(crate) fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.tag, 1 + i as u8)
    }

    /// The outside host's address.
    pub(crate) fn outside_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.tag, 100)
    }

    /// A veth from namespace `ns` (`eth1` there) to the network's bridge, with `ip`/24.
    fn plug(&self, ns: &str, name: &str, ip: Ipv4Addr) {
        run(&[
            "ip", "-n", &self.net, "link", "add", name, "type", "veth", "peer", "name", "eth1",
            "netns", ns,
        ]);
        run(&[
            "ip", "-n", &self.net, "link", "set", name, "master", "br0", "up",
        ]);
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth1",
        ]);
        run(&["ip", "-n", ns, "link", "set", "eth1", "up"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for ns in [&self.outside, &self.net] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
