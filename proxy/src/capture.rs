//! Node traffic capture: how packets for a Service VIP reach Capstan's listeners.
//!
//! `bind` listens on each frontend's own address (standalone listen addresses, VIPs that are
//! local addresses). `nftables` captures every frontend with a specific address instead: one
//! nftables table owned by Capstan redirects exactly the snapshot's VIP:port pairs to ports of
//! the node, with a map per family and protocol. Every TCP VIP goes to one shared listener per
//! family, which finds the Service from the connection's original destination
//! ([`original_destination`], as Envoy's and Istio's redirect capture do), so ten thousand
//! Services cost no more sockets than one. UDP has no original destination after a redirect, so
//! each UDP VIP gets its own node ports. The table is replaced in one `nft -f` transaction and
//! deleted on a clean exit.
//!
//! [`ruleset`] is pure; [`Nftables`] runs `nft` and deletes stale UDP conntrack entries
//! ([`crate::conntrack`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;

use capstan_table::{Frontend, Protocol};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::{info, warn};

use crate::ProxyError;
use crate::conntrack;
use crate::source::{MARK, Prefix, ROUTE_TABLE};

/// The nftables table Capstan owns (family `inet`).
pub const TABLE: &str = "capstan";

/// How Service frontends receive their traffic (`--capture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMode {
    /// Listen on each frontend's own address; VIPs that are not local addresses stay unserved.
    Bind,
    /// Redirect every frontend with a specific address with nftables; bind the rest (NodePorts
    /// on all addresses).
    Nftables,
    /// Serve no Service frontends at all (DNS and ingress only, next to another proxy).
    Off,
}

/// How the listener set captures traffic (`--capture`, `--preserve-source-ip`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSettings {
    pub mode: CaptureMode,
    /// When not empty, TCP captured by nftables reaches endpoints from the client's address where
    /// replies come back through this node: endpoints on this node, and clients in these ranges
    /// (pod CIDRs) (see [`crate::source`]). Only with [`CaptureMode::Nftables`].
    pub preserve_source: Vec<Prefix>,
    /// This node's name (`--node-name`), to tell endpoints on this node.
    pub node_name: Option<String>,
    /// With [`CaptureMode::Nftables`]: whether Service ports the kernel can balance are
    /// translated by nftables ([`crate::kernel`]) instead of redirected to Capstan.
    pub datapath: crate::kernel::Datapath,
    /// The kernel data path's node settings.
    pub kernel: crate::kernel::KernelSettings,
    /// Empty the kernel data path's table on a clean exit (by default it stays, as
    /// kube-proxy's rules do).
    pub cleanup_on_exit: bool,
}

/// Where one captured frontend's traffic is redirected on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// The port traffic from other hosts and from pods (prerouting) goes to.
    pub port: u16,
    /// The port traffic from this node itself (output) goes to. For UDP it is a separate
    /// loopback socket, so that replies leave from the address the kernel redirected to and
    /// conntrack can reverse the translation; for TCP it is `port`.
    pub local_port: u16,
}

/// What the table holds: where each captured frontend goes, and which captured frontends drop
/// their traffic instead (a `Local` traffic policy with no local endpoint: kube-proxy drops, so
/// clients time out rather than being refused).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    pub redirects: BTreeMap<Frontend, Redirect>,
    pub drops: BTreeSet<Frontend>,
    /// Frontends whose Service has no usable endpoint: not redirected, refused in filter
    /// chains (TCP reset, ICMP port unreachable), as kube-proxy's `no-endpoint-services` map.
    pub rejects: BTreeSet<Frontend>,
    /// Mark replies to Capstan's transparent upstream sockets for the local route back to them.
    pub preserve_source: bool,
}

/// The nft script that atomically replaces Capstan's table with one redirecting exactly
/// `capture.redirects` and dropping `capture.drops` (frontends whose address is unspecified are
/// never captured).
pub fn ruleset(capture: &Capture) -> String {
    let redirects = &capture.redirects;
    let mut maps: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for name in MAPS {
        maps.insert(name.0, Vec::new());
    }
    let mut ports: BTreeMap<&str, Vec<u16>> = BTreeMap::from([("tcp", vec![]), ("udp", vec![])]);
    for (frontend, redirect) in redirects {
        let ip = frontend.addr.ip();
        if ip.is_unspecified() {
            continue;
        }
        let Some((proto, family)) = map_of(frontend) else {
            continue;
        };
        let element = |port: u16| format!("{ip} . {} : {port}", frontend.addr.port());
        let remote = format!("{proto}{family}");
        let local = format!("{proto}{family}_local");
        if let Some(map) = maps.get_mut(remote.as_str()) {
            map.push(element(redirect.port));
        }
        if let Some(map) = maps.get_mut(local.as_str()) {
            map.push(element(redirect.local_port));
        }
        let set = ports.entry(proto).or_default();
        set.push(redirect.port);
        set.push(redirect.local_port);
    }
    let drops = elements_by_set(capture.drops.iter().filter(|f| redirects.contains_key(f)));
    let rejects = elements_by_set(capture.rejects.iter());
    let mut out = String::new();
    // Create-then-delete makes the delete valid whether or not the table exists; the whole
    // script is one transaction, so packets see the old table or the new one, never neither.
    let _ = writeln!(out, "add table inet {TABLE}");
    let _ = writeln!(out, "delete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");
    for (name, address_type) in MAPS {
        let _ = write!(
            out,
            "  map {name} {{ type {address_type} . inet_service : inet_service;"
        );
        let elements = &maps[name];
        if !elements.is_empty() {
            let _ = write!(out, " elements = {{ {} }};", elements.join(", "));
        }
        let _ = writeln!(out, " }}");
    }
    for (name, address_type) in MAPS.iter().filter(|(name, _)| !name.ends_with("_local")) {
        for (kind, elements) in [("drop", &drops), ("reject", &rejects)] {
            let _ = write!(
                out,
                "  set {kind}_{name} {{ type {address_type} . inet_service;"
            );
            if let Some(elements) = elements.get(*name) {
                let _ = write!(out, " elements = {{ {} }};", elements.join(", "));
            }
            let _ = writeln!(out, " }}");
        }
    }
    for (proto, list) in &mut ports {
        list.sort_unstable();
        list.dedup();
        let _ = write!(out, "  set {proto}_ports {{ type inet_service;");
        if !list.is_empty() {
            let list: Vec<String> = list.iter().map(u16::to_string).collect();
            let _ = write!(out, " elements = {{ {} }};", list.join(", "));
        }
        let _ = writeln!(out, " }}");
    }
    let redirect_rules = |out: &mut String, suffix: &str| {
        for (family, nfproto, daddr) in FAMILIES {
            for proto in ["tcp", "udp"] {
                let _ = writeln!(
                    out,
                    "    meta nfproto {nfproto} meta l4proto {proto} redirect to : {daddr} daddr . {proto} dport map @{proto}{family}{suffix}"
                );
            }
        }
    };
    filter_chains(&mut out);
    let _ = writeln!(
        out,
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;"
    );
    redirect_rules(&mut out, "");
    let _ = writeln!(out, "  }}");
    let _ = writeln!(
        out,
        "  chain output {{\n    type nat hook output priority -100; policy accept;"
    );
    redirect_rules(&mut out, "_local");
    let _ = writeln!(out, "  }}");
    // Replies from endpoints to a client address Capstan connected from belong to Capstan's
    // transparent socket, not to the pod: marked here (before any routing decision), they take
    // the policy route to the local stack.
    if capture.preserve_source {
        let _ = writeln!(
            out,
            "  chain transparent_replies {{\n    type filter hook prerouting priority mangle; policy accept;\n    \
             meta l4proto {{ tcp, udp }} socket transparent 1 meta mark set meta mark | {MARK:#x}\n  }}"
        );
    }
    // The redirect ports are for redirected traffic only: nothing reaches them directly.
    let _ = writeln!(
        out,
        "  chain input {{\n    type filter hook input priority filter; policy accept;"
    );
    for proto in ["tcp", "udp"] {
        let _ = writeln!(
            out,
            "    {proto} dport @{proto}_ports ct status dnat accept"
        );
        let _ = writeln!(out, "    {proto} dport @{proto}_ports drop");
    }
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "}}");
    out
}

/// `address . port` elements of the frontends, by the set suffix (`tcp4`, …) they belong in.
fn elements_by_set<'a>(
    frontends: impl Iterator<Item = &'a Frontend>,
) -> BTreeMap<String, Vec<String>> {
    let mut sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for frontend in frontends {
        if let Some((proto, family)) = map_of(frontend) {
            sets.entry(format!("{proto}{family}"))
                .or_default()
                .push(format!("{} . {}", frontend.addr.ip(), frontend.addr.port()));
        }
    }
    sets
}

/// The filter chains just ahead of NAT (priority -110, as kube-proxy's): drops in prerouting and
/// output, and refusals where `reject` is allowed (forward for VIPs routed through the node,
/// input for VIPs that are local addresses, output for the node's own traffic).
fn filter_chains(out: &mut String) {
    let chains = [
        ("drop_prerouting", "prerouting", false),
        ("drop_output", "output", true),
        ("reject_forward", "forward", true),
        ("reject_input", "input", true),
    ];
    for (chain, hook, rejects) in chains {
        let _ = writeln!(
            out,
            "  chain {chain} {{\n    type filter hook {hook} priority -110; policy accept;"
        );
        for (family, nfproto, daddr) in FAMILIES {
            for proto in ["tcp", "udp"] {
                let select = format!("meta nfproto {nfproto} {daddr} daddr . {proto} dport");
                if hook == "prerouting" || hook == "output" {
                    let _ = writeln!(out, "    {select} @drop_{proto}{family} drop");
                }
                if rejects {
                    let with = if proto == "tcp" {
                        " with tcp reset"
                    } else {
                        ""
                    };
                    let _ = writeln!(out, "    {select} @reject_{proto}{family} reject{with}");
                }
            }
        }
        let _ = writeln!(out, "  }}");
    }
}

/// The protocol and family naming the maps and sets of `frontend` (`tcp` and `4` for
/// `tcp4`); `None` for SCTP, which is never captured.
fn map_of(frontend: &Frontend) -> Option<(&'static str, &'static str)> {
    let family = if frontend.addr.is_ipv6() { "6" } else { "4" };
    match frontend.protocol {
        Protocol::Tcp => Some(("tcp", family)),
        Protocol::Udp => Some(("udp", family)),
        Protocol::Sctp => None,
    }
}

/// Each address family: its suffix in map names, its `meta nfproto` and its address selector.
const FAMILIES: [(&str, &str, &str); 2] = [("4", "ipv4", "ip"), ("6", "ipv6", "ip6")];

/// The maps of the table and the address type each is keyed by.
const MAPS: [(&str, &str); 8] = [
    ("tcp4", "ipv4_addr"),
    ("tcp4_local", "ipv4_addr"),
    ("udp4", "ipv4_addr"),
    ("udp4_local", "ipv4_addr"),
    ("tcp6", "ipv6_addr"),
    ("tcp6_local", "ipv6_addr"),
    ("udp6", "ipv6_addr"),
    ("udp6_local", "ipv6_addr"),
];

/// UDP frontends whose redirect appeared, moved or went away between `old` and `new`: their
/// conntrack entries must go, or clients keep sending along the old translation (or none) until
/// the entry times out. TCP needs no flush: a new connection is a new conntrack entry.
pub fn stale_udp(
    old: &BTreeMap<Frontend, Redirect>,
    new: &BTreeMap<Frontend, Redirect>,
) -> Vec<SocketAddr> {
    let mut stale: Vec<SocketAddr> = old
        .iter()
        .chain(new.iter())
        .filter(|(frontend, _)| frontend.protocol == Protocol::Udp)
        .filter(|(frontend, _)| old.get(frontend) != new.get(frontend))
        .map(|(frontend, _)| frontend.addr)
        .collect();
    stale.sort_unstable();
    stale.dedup();
    stale
}

/// The nftables programmer: remembers what it applied, so an unchanged set costs nothing.
#[derive(Debug, Default)]
pub struct Nftables {
    applied: Option<Capture>,
    /// Whether the policy routing of [`crate::source`] is in place.
    routing: bool,
    /// A conntrack cleanup failed once (warned once, then logged at debug).
    conntrack_failed: bool,
    /// Whether [`Nftables::clear`] has removed every trace (until the next apply).
    cleared: bool,
}

impl Nftables {
    /// Makes the table hold exactly `capture`, then flushes stale UDP conntrack entries. On
    /// failure the previous table stays in force and the next call tries again.
    pub async fn apply(&mut self, capture: &Capture) -> Result<bool, ProxyError> {
        if self.applied.as_ref() == Some(capture) {
            return Ok(false);
        }
        if capture.preserve_source && !self.routing {
            add_routing().await?;
            self.routing = true;
        }
        nft(&ruleset(capture)).await?;
        self.cleared = false;
        info!(
            captured = capture.redirects.len(),
            dropped = capture.drops.len(),
            refused = capture.rejects.len(),
            "nftables capture applied"
        );
        let previous = self.applied.replace(capture.clone()).unwrap_or_default();
        self.flush_udp(stale_udp(&previous.redirects, &capture.redirects))
            .await;
        Ok(true)
    }

    /// Deletes Capstan's table and policy routing (a clean exit).
    pub async fn remove(&mut self) {
        if std::mem::take(&mut self.routing) {
            remove_routing().await;
        }
        if self.applied.take().is_none() {
            return;
        }
        match nft(&format!("delete table inet {TABLE}\n")).await {
            Ok(()) => info!("nftables capture removed"),
            Err(error) => warn!(%error, "nftables table not removed"),
        }
    }

    /// Removes the table and the policy route, including a table an earlier run left: on the
    /// kernel path with nothing for user space, so no packet pays for the capture's lookups.
    pub async fn clear(&mut self) {
        if self.cleared {
            return;
        }
        if std::mem::take(&mut self.routing) {
            remove_routing().await;
        }
        self.applied = None;
        match nft(&format!(
            "add table inet {TABLE}\ndelete table inet {TABLE}\n"
        ))
        .await
        {
            Ok(()) => self.cleared = true,
            Err(error) => warn!(%error, "nftables capture table not removed; retrying"),
        }
    }

    /// Deletes UDP conntrack entries whose original destination is one of `stale` (over
    /// ctnetlink, one dump per family).
    async fn flush_udp(&mut self, stale: Vec<SocketAddr>) {
        let filters: Vec<conntrack::Filter> = stale
            .iter()
            .map(|addr| conntrack::Filter {
                frontend: *addr,
                endpoint: None,
            })
            .collect();
        conntrack::delete_stale(filters, &mut self.conntrack_failed).await;
    }
}

/// Where a connection redirected by the table was going: its original destination, from
/// conntrack (`SO_ORIGINAL_DST`; `IP6T_SO_ORIGINAL_DST` for IPv6). A connection that was not
/// redirected reports the address it reached.
pub fn original_destination(stream: &tokio::net::TcpStream) -> std::io::Result<SocketAddr> {
    use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt, sockopt};
    let local = stream.local_addr()?;
    let to_io = |error: nix::Error| std::io::Error::from_raw_os_error(error as i32);
    if local.is_ipv6() {
        let raw = getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(to_io)?;
        Ok(SocketAddr::V6(SockaddrIn6::from(raw).into()))
    } else {
        let raw = getsockopt(stream, sockopt::OriginalDst).map_err(to_io)?;
        Ok(SocketAddr::V4(SockaddrIn::from(raw).into()))
    }
}

/// The `ip` arguments of the policy route that takes marked replies to the local stack, for
/// `family` (`-4`, `-6`): a rule for the mark, and a `local` default route in Capstan's table.
fn routing_commands(family: &str) -> [Vec<String>; 2] {
    let any = if family == "-6" { "::/0" } else { "0.0.0.0/0" };
    let (mark, table) = (format!("{MARK:#x}/{MARK:#x}"), ROUTE_TABLE.to_string());
    let owned = |args: &[&str]| args.iter().map(|s| (*s).to_owned()).collect();
    [
        owned(&[
            family, "rule", "add", "fwmark", &mark, "lookup", &table, "priority", &table,
        ]),
        owned(&[
            family, "route", "replace", "local", any, "dev", "lo", "table", &table,
        ]),
    ]
}

/// Adds the policy routing for both families, replacing any left by an earlier run.
async fn add_routing() -> Result<(), ProxyError> {
    remove_routing().await;
    for family in ["-4", "-6"] {
        for args in routing_commands(family) {
            ip(&args).await?;
        }
    }
    info!(mark = %format!("{MARK:#x}"), table = ROUTE_TABLE, "policy routing for client source addresses added");
    Ok(())
}

/// Removes the policy routing of both families (each rule as often as it was added).
async fn remove_routing() {
    for family in ["-4", "-6"] {
        let [mut rule, _] = routing_commands(family);
        rule[2] = "del".to_owned();
        while ip(&rule).await.is_ok() {}
        let table = ROUTE_TABLE.to_string();
        let flush = [family, "route", "flush", "table", &table].map(str::to_owned);
        let _ = ip(&flush).await;
    }
}

/// Runs `ip ARGS`.
async fn ip(args: &[String]) -> Result<(), ProxyError> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| ProxyError::Capture {
            reason: format!("run ip: {e}"),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ProxyError::Capture {
            reason: format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

/// Runs `nft -f -` with `script`.
pub(crate) async fn nft(script: &str) -> Result<(), ProxyError> {
    let failed = |reason: String| ProxyError::Capture { reason };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| failed(format!("write to nft: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| failed(format!("wait for nft: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(failed(format!("nft: {}", stderr.trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontend(addr: &str, protocol: Protocol) -> Frontend {
        Frontend {
            addr: addr.parse().expect("addr"),
            protocol,
        }
    }

    fn redirect(port: u16, local_port: u16) -> Redirect {
        Redirect { port, local_port }
    }

    #[test]
    fn each_frontend_is_one_element_of_its_family_and_protocol_maps() {
        let redirects = BTreeMap::from([
            (
                frontend("10.96.0.10:53", Protocol::Udp),
                redirect(40001, 40002),
            ),
            (
                frontend("10.96.0.10:53", Protocol::Tcp),
                redirect(40003, 40003),
            ),
            (
                frontend("[fd00::10]:443", Protocol::Tcp),
                redirect(40004, 40004),
            ),
            (
                frontend("0.0.0.0:30080", Protocol::Tcp),
                redirect(40005, 40005),
            ),
            (
                frontend("10.96.0.11:9", Protocol::Sctp),
                redirect(40006, 40006),
            ),
        ]);
        let drops = BTreeSet::from([
            frontend("10.96.0.10:53", Protocol::Udp),
            // Not captured: never dropped either.
            frontend("10.96.0.99:80", Protocol::Tcp),
        ]);
        let script = ruleset(&Capture {
            redirects,
            drops,
            rejects: BTreeSet::from([
                frontend("10.96.0.11:80", Protocol::Tcp),
                frontend("10.96.0.11:53", Protocol::Udp),
            ]),
            preserve_source: false,
        });
        let line = |name: &str| {
            script
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in\n{script}"))
                .to_owned()
        };
        assert!(line("map udp4").contains("elements = { 10.96.0.10 . 53 : 40001 }"));
        assert!(line("map udp4_local").contains("elements = { 10.96.0.10 . 53 : 40002 }"));
        assert!(line("map tcp4").contains("elements = { 10.96.0.10 . 53 : 40003 }"));
        assert!(line("map tcp6").contains("elements = { fd00::10 . 443 : 40004 }"));
        assert!(!line("map udp6").contains("elements"));
        assert!(line("set tcp_ports").contains("elements = { 40003, 40004 }"));
        assert!(line("set udp_ports").contains("elements = { 40001, 40002 }"));
        assert!(line("set drop_udp4").contains("elements = { 10.96.0.10 . 53 }"));
        assert!(!line("set drop_tcp4").contains("elements"));
        // No endpoints: refused by the table (kube-proxy's reject), TCP with a reset.
        assert!(line("set reject_tcp4").contains("elements = { 10.96.0.11 . 80 }"));
        assert!(line("set reject_udp4").contains("elements = { 10.96.0.11 . 53 }"));
        assert!(script.contains(
            "type filter hook forward priority -110; policy accept;\n    \
             meta nfproto ipv4 ip daddr . tcp dport @reject_tcp4 reject with tcp reset\n    \
             meta nfproto ipv4 ip daddr . udp dport @reject_udp4 reject\n"
        ));
        // Unspecified addresses (NodePorts bound directly) and SCTP are never captured.
        assert!(!script.contains("30080") && !script.contains("40005"));
        assert!(!script.contains("40006"));
        // The replacement is one transaction that starts by deleting whatever was there.
        assert!(script.starts_with(
            "add table inet capstan\ndelete table inet capstan\ntable inet capstan {"
        ));
    }

    #[test]
    fn both_hooks_redirect_through_their_own_maps_and_direct_access_is_dropped() {
        let script = ruleset(&Capture::default());
        assert!(script.contains("type nat hook prerouting priority dstnat"));
        assert!(script.contains(
            "meta nfproto ipv4 meta l4proto udp redirect to : ip daddr . udp dport map @udp4\n"
        ));
        assert!(script.contains("type nat hook output priority -100"));
        assert!(script.contains(
            "meta nfproto ipv6 meta l4proto tcp redirect to : ip6 daddr . tcp dport map @tcp6_local\n"
        ));
        assert!(
            script.contains(
                "tcp dport @tcp_ports ct status dnat accept\n    tcp dport @tcp_ports drop"
            )
        );
        assert!(script.contains("type filter hook prerouting priority -110"));
        assert!(script.contains("meta nfproto ipv4 ip daddr . tcp dport @drop_tcp4 drop\n"));
    }

    #[test]
    fn replies_to_transparent_sockets_are_marked_only_when_source_addresses_are_kept() {
        assert!(!ruleset(&Capture::default()).contains("transparent"));
        let script = ruleset(&Capture {
            preserve_source: true,
            ..Capture::default()
        });
        assert!(script.contains(
            "chain transparent_replies {\n    type filter hook prerouting priority mangle; policy accept;\n    \
             meta l4proto { tcp, udp } socket transparent 1 meta mark set meta mark | 0x400000\n  }"
        ), "{script}");
    }

    #[test]
    fn the_policy_route_sends_marked_packets_of_each_family_to_the_local_stack() {
        let [rule, route] = routing_commands("-6");
        assert_eq!(
            rule.join(" "),
            "-6 rule add fwmark 0x400000/0x400000 lookup 4341 priority 4341"
        );
        assert_eq!(
            route.join(" "),
            "-6 route replace local ::/0 dev lo table 4341"
        );
        let [_, route] = routing_commands("-4");
        assert_eq!(
            route.join(" "),
            "-4 route replace local 0.0.0.0/0 dev lo table 4341"
        );
    }

    #[test]
    fn udp_frontends_added_moved_or_removed_are_stale_and_tcp_never_is() {
        let dns = frontend("10.96.0.10:53", Protocol::Udp);
        let kept = frontend("10.96.0.12:53", Protocol::Udp);
        let moved = frontend("10.96.0.13:53", Protocol::Udp);
        let web = frontend("10.96.0.11:80", Protocol::Tcp);
        let old = BTreeMap::from([
            (dns, redirect(1, 2)),
            (kept, redirect(3, 4)),
            (moved, redirect(5, 6)),
        ]);
        let new = BTreeMap::from([
            (web, redirect(7, 7)),
            (kept, redirect(3, 4)),
            (moved, redirect(8, 6)),
            (frontend("10.96.0.14:53", Protocol::Udp), redirect(9, 10)),
        ]);
        let stale: Vec<String> = stale_udp(&old, &new)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(stale, ["10.96.0.10:53", "10.96.0.13:53", "10.96.0.14:53"]);
    }
}
