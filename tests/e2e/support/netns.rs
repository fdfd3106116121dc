//! Node topologies in network namespaces (root only): a node namespace that runs Capstan, pod
//! namespaces on a bridge in it, and an uplink veth from the test's own namespace to the node so
//! the test reaches Capstan's admin endpoint. Sockets are opened inside a namespace by a thread
//! that entered it with `setns`: a socket belongs to the namespace it was created in.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether this process may create network namespaces (root with `ip` and `nft`).
pub(crate) fn available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let tools = ["ip", "nft"].iter().all(|tool| {
        Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    root && tools
}

/// Runs `command` and panics with its output if it fails.
pub(crate) fn run(command: &[&str]) -> String {
    let output = Command::new(command[0])
        .args(&command[1..])
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `f` on a thread inside namespace `ns` and returns its result.
pub(crate) fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A node namespace with pods on a bridge, deleted (with everything in it) on drop.
pub(crate) struct Node {
    pub(crate) ns: String,
    /// The test's way in: the node's end of the uplink.
    pub(crate) uplink: Ipv4Addr,
    /// The node's address on the pod bridge (pods' gateway).
    pub(crate) ip: Ipv4Addr,
    /// A /24 of ClusterIPs no other topology uses: `vip(n)` is `10.96.<subnet>.<n>`.
    subnet: u8,
    pub(crate) pods: Vec<Pod>,
}

/// One pod: a namespace with one address of each family on the node's bridge.
pub(crate) struct Pod {
    pub(crate) ns: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) ip6: Ipv6Addr,
}

impl Node {
    /// A node with `pods` pods.
    pub(crate) fn new(pods: usize) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let subnet = ((pid * 7 + n) % 200 + 20) as u8;
        let ns = format!("cs{pid}n{n}");
        let (root_if, node_if) = (format!("csu{subnet}r"), format!("csu{subnet}n"));
        let (root_ip, uplink) = (
            Ipv4Addr::new(10, 245, subnet, 1),
            Ipv4Addr::new(10, 245, subnet, 2),
        );
        let ip = Ipv4Addr::new(10, 244, subnet, 1);
        run(&["ip", "netns", "add", &ns]);
        let mut node = Self {
            ns: ns.clone(),
            uplink,
            ip,
            subnet,
            pods: Vec::new(),
        };
        // The root end is deleted with the node namespace (a veth pair goes as a whole).
        let _ = Command::new("ip").args(["link", "del", &root_if]).output();
        run(&[
            "ip", "link", "add", &root_if, "type", "veth", "peer", "name", &node_if, "netns", &ns,
        ]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{root_ip}/30"),
            "dev",
            &root_if,
        ]);
        run(&["ip", "link", "set", &root_if, "up"]);
        node.ip_in(&["link", "set", "lo", "up"]);
        node.ip_in(&["addr", "add", &format!("{uplink}/30"), "dev", &node_if]);
        node.ip_in(&["link", "set", &node_if, "up"]);
        // A default route, as every node has: the node's own traffic to a VIP needs a route
        // before the output hook redirects it.
        node.ip_in(&["route", "add", "default", "via", &root_ip.to_string()]);
        // Nodes route pod traffic: a packet to an address nothing captures is forwarded on
        // (and leaves a conntrack entry), as on a real node.
        for setting in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", setting]);
        }
        node.ip_in(&["link", "add", "br0", "type", "bridge"]);
        node.ip_in(&["addr", "add", &format!("{ip}/24"), "dev", "br0"]);
        // IPv6 too, without duplicate address detection (the addresses are usable at once).
        let ip6 = node.ip6();
        node.ip_in(&["addr", "add", &format!("{ip6}/64"), "dev", "br0", "nodad"]);
        node.ip_in(&["link", "set", "br0", "up"]);
        // A default route for IPv6 too, through the pod bridge (no IPv6 on the uplink): the
        // output hook sees the node's own IPv6 traffic to a VIP only once it has a route.
        node.ip_in(&["-6", "route", "add", "default", "dev", "br0"]);
        for i in 0..pods {
            let pod = Pod {
                ns: format!("{ns}p{i}"),
                ip: Ipv4Addr::new(10, 244, subnet, 10 + i as u8),
                ip6: Ipv6Addr::new(
                    0xfd00,
                    0x244,
                    u16::from(subnet),
                    0,
                    0,
                    0,
                    0,
                    0x10 + i as u16,
                ),
            };
            let veth = format!("vp{i}");
            run(&["ip", "netns", "add", &pod.ns]);
            node.ip_in(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.ns,
            ]);
            node.ip_in(&["link", "set", &veth, "master", "br0", "up"]);
            // As the bridge CNI plugin with `hairpinMode: true` (kubelet's hairpin-veth): a
            // pod reaching itself through a Service is bridged back out of its own port.
            node.ip_in(&[
                "link",
                "set",
                &veth,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ]);
            let in_pod = |args: &[&str]| {
                let mut command = vec!["ip", "-n", &pod.ns];
                command.extend_from_slice(args);
                run(&command);
            };
            in_pod(&["link", "set", "lo", "up"]);
            in_pod(&["addr", "add", &format!("{}/24", pod.ip), "dev", "eth0"]);
            in_pod(&["link", "set", "eth0", "up"]);
            in_pod(&["route", "add", "default", "via", &ip.to_string()]);
            in_pod(&[
                "addr",
                "add",
                &format!("{}/64", pod.ip6),
                "dev",
                "eth0",
                "nodad",
            ]);
            in_pod(&["-6", "route", "add", "default", "via", &ip6.to_string()]);
            node.pods.push(pod);
        }
        node
    }

    /// One more pod, reached through a routed veth of its own (`10.246.<subnet>.2` behind the
    /// node's `10.246.<subnet>.1/30`, `fd00:246:<subnet>::2` behind `::1/64`) rather than the
    /// bridge, as with routed pod networking: its packets to other pods pass through the node's
    /// IP layer. Returns its index in `pods`.
    pub(crate) fn add_routed_pod(&mut self) -> usize {
        let index = self.pods.len();
        let pod = Pod {
            ns: format!("{}p{index}", self.ns),
            ip: Ipv4Addr::new(10, 246, self.subnet, 2),
            ip6: Ipv6Addr::new(0xfd00, 0x246, u16::from(self.subnet), 0, 0, 0, 0, 2),
        };
        let gateway = Ipv4Addr::new(10, 246, self.subnet, 1);
        let gateway6 = Ipv6Addr::new(0xfd00, 0x246, u16::from(self.subnet), 0, 0, 0, 0, 1);
        let veth = format!("vr{index}");
        run(&["ip", "netns", "add", &pod.ns]);
        self.ip_in(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.ns,
        ]);
        self.ip_in(&["addr", "add", &format!("{gateway}/30"), "dev", &veth]);
        let gateway6_net = format!("{gateway6}/64");
        self.ip_in(&["addr", "add", &gateway6_net, "dev", &veth, "nodad"]);
        self.ip_in(&["link", "set", &veth, "up"]);
        let (ip6_net, gateway6) = (format!("{}/64", pod.ip6), gateway6.to_string());
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", &format!("{}/30", pod.ip), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["route", "add", "default", "via", &gateway.to_string()],
            vec!["addr", "add", &ip6_net, "dev", "eth0", "nodad"],
            vec!["-6", "route", "add", "default", "via", &gateway6],
        ] {
            let mut command = vec!["ip", "-n", &pod.ns];
            command.extend_from_slice(&args);
            run(&command);
        }
        self.pods.push(pod);
        index
    }

    /// The number that makes this node's addresses unique.
    pub(crate) fn subnet(&self) -> u8 {
        self.subnet
    }

    /// The test namespace's end of the uplink (the node reaches the test's servers there).
    pub(crate) fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 245, self.subnet, 1)
    }

    /// This node's pod range (the bridge's /24).
    pub(crate) fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.subnet)
    }

    /// `ip ARGS` inside the node.
    pub(crate) fn ip_cmd(&self, args: &[&str]) {
        self.ip_in(args);
    }

    /// `ip rule` in the node.
    pub(crate) fn ip_rules(&self) -> String {
        run(&["ip", "-n", &self.ns, "rule"])
    }

    fn ip_in(&self, args: &[&str]) {
        let mut command = vec!["ip", "-n", &self.ns];
        command.extend_from_slice(args);
        run(&command);
    }

    /// The node's IPv6 address on the pod bridge.
    pub(crate) fn ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x244, u16::from(self.subnet), 0, 0, 0, 0, 1)
    }

    /// IPv6 ClusterIP number `n` of this topology: `fd00:96:<subnet>::<n>`.
    pub(crate) fn vip6(&self, n: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x96, u16::from(self.subnet), 0, 0, 0, 0, n)
    }

    /// ClusterIP number `n` of this topology.
    pub(crate) fn vip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 96, self.subnet, n)
    }

    /// LoadBalancer IP number `n` of this topology: `10.97.<subnet>.<n>`.
    pub(crate) fn lb_ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 97, self.subnet, n)
    }

    /// `nft list table inet capstan` in the node, or `None` when there is no such table.
    pub(crate) fn capstan_table(&self) -> Option<String> {
        let output = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "list", "table", "inet", "capstan",
            ])
            .output()
            .expect("nft list");
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = Command::new("ip").args(["netns", "del", &pod.ns]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A TCP backend inside `ns`: greets each connection with `NAME\n` and closes it.
pub(crate) fn tcp_backend(ns: &str, addr: SocketAddr, name: &str) {
    let listener = in_netns(ns, move || TcpListener::bind(addr).expect("bind backend"));
    let greeting = format!("{name}\n");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let _ = stream.write_all(greeting.as_bytes());
        }
    });
}

/// A TCP backend inside `ns`: tells each connection the address it came from, and closes it.
pub(crate) fn tcp_peer_backend(ns: &str, addr: SocketAddr) {
    let listener = in_netns(ns, move || TcpListener::bind(addr).expect("bind backend"));
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            if let Ok(peer) = stream.peer_addr() {
                let _ = writeln!(stream, "{}", peer.ip());
            }
        }
    });
}

/// A UDP backend inside `ns`: answers each datagram with the address it came from.
pub(crate) fn udp_peer_backend(ns: &str, addr: SocketAddr) {
    let socket = in_netns(ns, move || UdpSocket::bind(addr).expect("bind udp backend"));
    std::thread::spawn(move || {
        let mut buffer = [0u8; 1500];
        while let Ok((_, peer)) = socket.recv_from(&mut buffer) {
            let _ = socket.send_to(peer.ip().to_string().as_bytes(), peer);
        }
    });
}

/// A UDP backend inside `ns`: answers each datagram with `NAME:payload`.
pub(crate) fn udp_backend(ns: &str, addr: SocketAddr, name: &str) {
    let socket = in_netns(ns, move || UdpSocket::bind(addr).expect("bind udp backend"));
    let name = name.to_owned();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 1500];
        while let Ok((n, peer)) = socket.recv_from(&mut buffer) {
            let reply = format!("{name}:{}", String::from_utf8_lossy(&buffer[..n]));
            let _ = socket.send_to(reply.as_bytes(), peer);
        }
    });
}

/// From inside `ns`: connects to `addr` and reads the backend's greeting line.
pub(crate) fn greet_from(ns: &str, addr: SocketAddr) -> std::io::Result<String> {
    in_netns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut greeting = String::new();
        stream.read_to_string(&mut greeting)?;
        Ok(greeting.trim_end().to_owned())
    })
}

/// A UDP socket inside `ns` (sends from one source port for as long as it lives).
pub(crate) fn udp_client(ns: &str) -> UdpSocket {
    udp_client_bound(ns, "0.0.0.0:0")
}

/// An IPv6 UDP socket inside `ns`, as [`udp_client`].
pub(crate) fn udp_client6(ns: &str) -> UdpSocket {
    udp_client_bound(ns, "[::]:0")
}

fn udp_client_bound(ns: &str, bind: &'static str) -> UdpSocket {
    let socket = in_netns(ns, move || UdpSocket::bind(bind).expect("bind udp client"));
    socket
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    socket
}

/// Sends `payload` to `addr` and returns the reply, if one came in time.
pub(crate) fn udp_ask(socket: &UdpSocket, addr: SocketAddr, payload: &str) -> Option<String> {
    socket.send_to(payload.as_bytes(), addr).expect("send");
    let mut buffer = [0u8; 1500];
    let (n, from) = socket.recv_from(&mut buffer).ok()?;
    assert_eq!(from, addr, "the reply comes from the address asked");
    Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
}
