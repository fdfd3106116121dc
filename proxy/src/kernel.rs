//! The kernel data path: Service traffic translated by nftables, as kube-proxy's nftables mode
//! does, so no byte of a pod-to-Service connection passes through Capstan.
//!
//! [`rules`] renders each Service port and [`skeleton`] the fixed part of the table (pure),
//! [`pick`] keeps endpoint choices in map elements so endpoint changes rewrite no rule,
//! [`diff`] turns the applied rules into the wanted ones (pure), [`stmt`] is the rule
//! vocabulary, and [`KernelTable`] runs the result as nf_tables netlink batches (`encode`; `nft
//! -f` with `--kernel-programmer nft`): the first sync replaces the whole table in one
//! transaction, every later snapshot changes only the ports whose compiled table changed
//! (compile reuses unchanged ones by `Arc`, so finding them costs a pointer compare per port).
//! UDP conntrack entries that would keep sending to a removed endpoint, or bypass a Service
//! that just got endpoints, are deleted after each sync over ctnetlink ([`crate::conntrack`]),
//! as kube-proxy does.

pub mod diff;
mod encode;
mod local_dns;
pub mod pick;
pub mod rules;
pub mod skeleton;
pub mod stmt;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_sockets::netlink::NetfilterSocket;
use capstan_table::{BalancePolicy, ServicePortKey, ServicePortTable, Snapshot, TrafficScope};
use tracing::{debug, info, warn};

use crate::ProxyError;
use crate::capture::nft;
use crate::conntrack;
pub use diff::Changes;
use encode::Transaction;
pub use rules::{KernelSettings, PortRules, TABLE};

/// Which data path carries Service traffic (`--l4-datapath`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datapath {
    /// nftables DNAT in the kernel, for every Service port the kernel can balance
    /// ([`kernel_capable`]); the rest stays in user space.
    Kernel,
    /// Capstan's own proxy for every Service port.
    Userspace,
}

/// Whether the kernel can carry `port` as configured: uniform random choice (kube-proxy's),
/// with or without ClientIP affinity, on addresses other than loopback. Least-connections,
/// round-robin and passive ejection need the user-space proxy; loopback listen addresses are
/// standalone conveniences that DNAT cannot serve.
pub fn kernel_capable(port: &ServicePortTable) -> bool {
    let served = |(frontend, scope): &(capstan_table::Frontend, TrafficScope)| {
        let ip = frontend.addr.ip();
        !(ip.is_loopback() || ip.is_unspecified() && *scope == TrafficScope::Internal)
    };
    port.policy == BalancePolicy::Random
        && port.max_connections_per_endpoint.is_none()
        && port.frontends.iter().all(served)
}

/// What one sync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Service ports whose rules changed.
    pub changed_ports: usize,
    /// Whether the whole table was replaced.
    pub full: bool,
    pub duration: Duration,
    /// Of which the transaction itself (sent, applied by the kernel, acknowledged).
    pub transaction: Duration,
    /// Messages in the transaction (netlink) or bytes of script (nft).
    pub size: usize,
}

/// Stale chains are deleted once nothing has referred to them for this long (kernels before
/// 6.2 notice a dropped reference from a map element only a moment later; kube-proxy waits the
/// same second).
const STALE_CHAIN_DELAY: Duration = Duration::from_secs(1);

/// One Service port's applied rules, with the compiled table they were rendered from.
type Applied = (Arc<ServicePortTable>, Arc<PortRules>);

/// Applied rules by Service port: every sync looks each port up, so hashed fast.
type AppliedPorts = HashMap<ServicePortKey, Applied, foldhash::fast::RandomState>;

/// The programmer of [`TABLE`]: remembers what it applied.
#[derive(Debug, Default)]
pub struct KernelTable {
    settings: KernelSettings,
    /// Applied rules by Service port, with the compiled table they came from. `None` until the
    /// first sync, and after a failed one (the next sync is full).
    applied: Option<AppliedPorts>,
    /// Ports referring to each endpoint address, for the hairpin sets.
    hairpin: HashMap<IpAddr, u32>,
    /// Ports (UDP and TCP) of the cluster DNS Service referring to each of its ClusterIPs.
    local_dns: HashMap<IpAddr, u32>,
    dns_interface: local_dns::DnsInterface,
    stale_chains: Vec<(String, Instant)>,
    /// The endpoint-map slot of each balancing chain in the kernel.
    slots: pick::Slots,
    /// Endpoint maps created in the table (they stay, empty or not, until a full sync).
    endpoint_maps: BTreeSet<pick::EndpointMap>,
    /// The netlink socket transactions are sent on, kept open between them (see
    /// [`Batch::commit_on`](capstan_sockets::netlink::Batch::commit_on)).
    socket: Option<NetfilterSocket>,
    /// A conntrack cleanup failed once (warned once, then logged at debug).
    conntrack_failed: bool,
}

impl KernelTable {
    pub fn new(settings: KernelSettings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// Makes the table serve exactly `ports` of `snapshot`, in one transaction.
    pub async fn sync(
        &mut self,
        snapshot: &Snapshot,
        ports: &[&Arc<ServicePortTable>],
    ) -> Result<SyncReport, ProxyError> {
        let started = Instant::now();
        self.delete_stale_chains().await;
        let full = self.applied.is_none();
        let mut previous = self.applied.take().unwrap_or_default();
        let mut changes = if full {
            // The table is created afresh: no chain of the old one is left to delete.
            self.hairpin.clear();
            self.local_dns.clear();
            self.stale_chains.clear();
            self.slots.clear();
            Changes::fresh()
        } else {
            Changes::default()
        };
        let empty = PortRules::default();
        let mut next = AppliedPorts::with_capacity_and_hasher(ports.len(), Default::default());
        let (mut hairpin_old, mut hairpin_new) = (Vec::new(), Vec::new());
        let (mut dns_old, mut dns_new) = (Vec::new(), Vec::new());
        let mut udp_changes = Vec::new();
        for &port in ports {
            let old = previous.remove(&port.key);
            let rules = match &old {
                Some((table, rules)) if Arc::ptr_eq(table, port) => rules.clone(),
                _ => {
                    let rules = Arc::new(rules::render_port(
                        port,
                        &snapshot.proxy.frontends,
                        &self.settings,
                        &mut self.slots,
                    ));
                    let old_rules = old.as_ref().map_or(&empty, |(_, r)| &**r);
                    if *old_rules != *rules {
                        changes.port(old_rules, &rules);
                        hairpin_old.push(old_rules.hairpin.clone());
                        hairpin_new.push(rules.hairpin.clone());
                        dns_old.push(old_rules.local_dns.clone());
                        dns_new.push(rules.local_dns.clone());
                        udp_changes.push((old_rules.udp.clone(), rules.udp.clone()));
                    }
                    rules
                }
            };
            next.insert(port.key.clone(), (port.clone(), rules));
        }
        // What is left was removed from the snapshot or moved to user space.
        for (_, rules) in previous.values() {
            changes.port(rules, &empty);
            hairpin_old.push(rules.hairpin.clone());
            dns_old.push(rules.local_dns.clone());
            udp_changes.push((rules.udp.clone(), None));
        }
        let changed_ports = hairpin_new.len() + previous.len();
        let (added, removed) = count_references(&mut self.hairpin, &hairpin_old, &hairpin_new);
        changes.hairpin(added, removed);
        let (added, removed) = count_references(&mut self.local_dns, &dns_old, &dns_new);
        changes.local_dns(added, removed);
        if !full && changes.is_empty() {
            self.applied = Some(next);
            return Ok(SyncReport::default());
        }
        // Endpoint maps are created with the first range put into them.
        if full {
            self.endpoint_maps.clear();
        }
        changes.create_endpoint_maps(&mut self.endpoint_maps);
        let program = match self.settings.programmer {
            Programmer::Nft => Program::Nft(changes.script(&self.settings)),
            Programmer::Netlink => Program::Netlink(Transaction::of(&changes, &self.settings)),
        };
        let size = program.size();
        let transaction_started = Instant::now();
        let applied = program.run(&mut self.socket).await;
        let transaction = transaction_started.elapsed();
        if let Err(error) = applied {
            // The table is as it was; the next sync rebuilds it whole.
            self.hairpin.clear();
            self.local_dns.clear();
            return Err(error);
        }
        self.dns_interface
            .reconcile(self.local_dns.keys().copied().collect())
            .await;
        let now = Instant::now();
        // A stale chain used again was written in this transaction.
        if !self.stale_chains.is_empty() {
            let filled = changes.filled_chains();
            self.stale_chains
                .retain(|(name, _)| !filled.contains(name.as_str()));
        }
        self.stale_chains
            .extend(changes.stale_chains.iter().map(|name| (name.clone(), now)));
        self.applied = Some(next);
        let udp_changes = udp_changes
            .into_iter()
            .map(|(old, new)| (old.unwrap_or_default(), new.unwrap_or_default()))
            .collect();
        self.flush_udp(udp_changes).await;
        let report = SyncReport {
            changed_ports,
            full,
            duration: started.elapsed(),
            transaction,
            size,
        };
        debug!(?report, "kernel data path synced");
        Ok(report)
    }

    /// Deletes chains that have been unreferenced for [`STALE_CHAIN_DELAY`].
    async fn delete_stale_chains(&mut self) {
        let ready: Vec<String> = self
            .stale_chains
            .iter()
            .filter(|(_, since)| since.elapsed() >= STALE_CHAIN_DELAY)
            .map(|(name, _)| name.clone())
            .collect();
        if ready.is_empty() || self.applied.is_none() {
            return;
        }
        let program = self.program(
            || {
                ready
                    .iter()
                    .map(|name| format!("delete chain inet {TABLE} {name}\n"))
                    .collect()
            },
            |transaction| {
                for name in &ready {
                    transaction.delete_chain(name);
                }
            },
        );
        match program.run(&mut self.socket).await {
            Ok(()) => {
                self.stale_chains.retain(|(name, _)| !ready.contains(name));
                for name in &ready {
                    self.slots.release(name);
                }
            }
            Err(error) => warn!(%error, "stale kernel chains not deleted; retrying"),
        }
    }

    /// A transaction in the configured programmer's form.
    fn program(
        &self,
        script: impl FnOnce() -> String,
        netlink: impl FnOnce(&mut Transaction),
    ) -> Program {
        match self.settings.programmer {
            Programmer::Nft => Program::Nft(script()),
            Programmer::Netlink => {
                let mut transaction = Transaction::new();
                netlink(&mut transaction);
                Program::Netlink(transaction)
            }
        }
    }

    /// Whether stale chains wait for deletion (the caller syncs again after a moment).
    pub fn has_stale_chains(&self) -> bool {
        !self.stale_chains.is_empty()
    }

    /// kube-proxy's UDP conntrack cleanup (pkg/proxy/conntrack/cleanup.go): entries translated
    /// to an endpoint that is gone are deleted (the client would keep sending there), and when a
    /// Service port gets its first endpoints, entries made while it had none are deleted. One
    /// ctnetlink dump per family for the whole sync.
    async fn flush_udp(&mut self, changes: Vec<(rules::UdpTranslation, rules::UdpTranslation)>) {
        let mut filters = Vec::new();
        for (old, new) in changes {
            for endpoint in old.endpoints.difference(&new.endpoints) {
                for frontend in &old.frontends {
                    filters.push(conntrack::Filter {
                        frontend: *frontend,
                        endpoint: Some(endpoint.ip()),
                    });
                }
            }
            if old.endpoints.is_empty() && !new.endpoints.is_empty() {
                for frontend in &new.frontends {
                    filters.push(conntrack::Filter {
                        frontend: *frontend,
                        endpoint: None,
                    });
                }
            }
        }
        conntrack::delete_stale(filters, &mut self.conntrack_failed).await;
    }

    /// Removes every rule and element (`--cleanup-on-exit`), unless nothing was ever applied.
    /// The emptied chains stay, so the kernel's NAT hooks stay registered. Established
    /// connections through the table were still cut in the namespace tests (they survive when
    /// the rules stay), which is why this is not the default.
    pub async fn remove(&mut self) {
        let Some(applied) = self.applied.take() else {
            return;
        };
        self.dns_interface.remove().await;
        // Every set and map: the skeleton's, the endpoint maps and the ports' (affinity sets).
        let mut sets: Vec<(String, rules::SetKind)> = skeleton::skeleton(&self.settings).sets;
        sets.extend(self.endpoint_maps.iter().map(|m| (m.name(), m.kind())));
        sets.extend(
            applied
                .values()
                .flat_map(|(_, r)| r.sets.iter().map(|(name, kind)| (name.clone(), *kind))),
        );
        let program = self.program(
            || skeleton::emptying(&sets),
            |transaction| {
                transaction.flush_rules();
                for (name, _) in &sets {
                    transaction.flush_set(name);
                }
            },
        );
        match program.run(&mut self.socket).await {
            Ok(()) => info!(
                "kernel data path rules removed (the empty table keeps NAT hooks for established connections)"
            ),
            Err(error) => warn!(%error, "kernel data path rules not removed"),
        }
    }
}

/// Updates reference counts of addresses over ports; returns the addresses to add to and
/// remove from their set (hairpin, cluster DNS).
fn count_references(
    counts: &mut HashMap<IpAddr, u32>,
    old: &[BTreeSet<IpAddr>],
    new: &[BTreeSet<IpAddr>],
) -> (BTreeSet<IpAddr>, BTreeSet<IpAddr>) {
    let (mut added, mut removed) = (BTreeSet::new(), BTreeSet::new());
    for ip in new.iter().flatten() {
        let count = counts.entry(*ip).or_insert(0);
        *count += 1;
        if *count == 1 {
            added.insert(*ip);
        }
    }
    for ip in old.iter().flatten() {
        if let Some(count) = counts.get_mut(ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(ip);
                removed.insert(*ip);
            }
        }
    }
    // An address dropped by one port and taken by another in the same sync stays.
    let both: Vec<IpAddr> = added.intersection(&removed).copied().collect();
    for ip in both {
        added.remove(&ip);
        removed.remove(&ip);
    }
    (added, removed)
}

/// Deletes a table left by an earlier run in kernel mode (now running in user space).
pub async fn remove_leftover() {
    let mut transaction = Transaction::new();
    transaction.delete_table();
    if let Err(error) = Program::Netlink(transaction).run(&mut None).await {
        debug!(%error, "no leftover kernel data path table removed");
    }
}

/// How the table is written (`--kernel-programmer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Programmer {
    /// nf_tables netlink batches written by Capstan: no process, no parsing, no read-back.
    #[default]
    Netlink,
    /// The same transactions as text, run by `nft -f -` (kept to compare and to debug).
    Nft,
}

/// One transaction, in the programmer's form.
enum Program {
    Nft(String),
    Netlink(Transaction),
}

impl Program {
    fn size(&self) -> usize {
        match self {
            Program::Nft(script) => script.len(),
            Program::Netlink(transaction) => transaction.len(),
        }
    }

    /// Runs the transaction; a netlink one on `socket` (opened if `None`, and dropped after
    /// an error so no reply of a refused batch is read as the next one's).
    async fn run(self, socket: &mut Option<NetfilterSocket>) -> Result<(), ProxyError> {
        match self {
            Program::Nft(script) => nft(&script).await,
            Program::Netlink(transaction) => {
                let batch = transaction.into_batch();
                let open = socket.take();
                let (open, result) = tokio::task::spawn_blocking(move || {
                    let open = match open {
                        Some(open) => open,
                        None => match NetfilterSocket::open(0) {
                            Ok(open) => open,
                            Err(error) => return (None, Err(error)),
                        },
                    };
                    let result = batch.commit_on(&open);
                    (result.is_ok().then_some(open), result)
                })
                .await
                .map_err(|e| ProxyError::Capture {
                    reason: format!("netlink task: {e}"),
                })?;
                *socket = open;
                result.map_err(|e| ProxyError::Capture {
                    reason: e.to_string(),
                })
            }
        }
    }
}
