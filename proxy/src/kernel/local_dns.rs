//! The cluster DNS addresses on this node: the cluster DNS Service's ClusterIPs held by the
//! node as host addresses on `lo`, so DNS sent to them (untracked by the table's raw chains) is
//! delivered to the node's own DNS server listening on the wildcard address. NodeLocal
//! DNSCache does the same with a dummy interface, kube-proxy's IPVS mode with `kube-ipvs0`;
//! `lo` needs no `dummy` kernel module (not every node kernel has it). IPv4 addresses carry the
//! label `lo:capstan`, so a restart finds and replaces those an earlier run left.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Stdio;

use tokio::process::Command;
use tracing::{info, warn};

/// The interface holding the cluster DNS addresses.
pub(super) const INTERFACE: &str = "lo";
/// The label of Capstan's IPv4 addresses on [`INTERFACE`].
const LABEL: &str = "lo:capstan";

/// The addresses applied to [`INTERFACE`]; `None` until the first change (the interface may
/// hold addresses from an earlier run, which the first change replaces).
#[derive(Debug, Default)]
pub(super) struct DnsInterface {
    applied: Option<BTreeSet<IpAddr>>,
}

impl DnsInterface {
    /// Makes [`INTERFACE`] hold exactly `wanted` of Capstan's addresses.
    pub(super) async fn reconcile(&mut self, wanted: BTreeSet<IpAddr>) {
        if self.applied.as_ref() == Some(&wanted) || (self.applied.is_none() && wanted.is_empty()) {
            return;
        }
        let result = match self.applied.take() {
            None => Self::replace(&wanted).await,
            Some(applied) => Self::change(&applied, &wanted).await,
        };
        match result {
            Ok(()) => {
                info!(addresses = ?wanted, interface = INTERFACE, "cluster DNS addresses on this node");
                self.applied = Some(wanted);
            }
            // `applied` stays unknown: the next sync replaces whatever is there.
            Err(error) => warn!(%error, interface = INTERFACE, "cluster DNS addresses not set"),
        }
    }

    /// Deletes Capstan's addresses (`--cleanup-on-exit`).
    pub(super) async fn remove(&mut self) {
        if let Some(applied) = self.applied.take()
            && let Err(error) = Self::change(&applied, &BTreeSet::new()).await
        {
            warn!(%error, "cluster DNS addresses not removed");
        }
    }

    async fn replace(wanted: &BTreeSet<IpAddr>) -> Result<(), String> {
        ip(&["-4", "addr", "flush", "dev", INTERFACE, "label", LABEL]).await?;
        for address in wanted {
            add(*address).await?;
        }
        Ok(())
    }

    async fn change(applied: &BTreeSet<IpAddr>, wanted: &BTreeSet<IpAddr>) -> Result<(), String> {
        for address in wanted.difference(applied) {
            add(*address).await?;
        }
        for address in applied.difference(wanted) {
            ip(&["addr", "del", &host_prefix(*address), "dev", INTERFACE]).await?;
        }
        Ok(())
    }
}

async fn add(address: IpAddr) -> Result<(), String> {
    let prefix = host_prefix(address);
    let mut args = vec!["addr", "replace", prefix.as_str(), "dev", INTERFACE];
    if address.is_ipv6() {
        // No duplicate address detection: the address must answer at once. (IPv6 addresses
        // have no labels.)
        args.push("nodad");
    } else {
        args.extend(["label", LABEL]);
    }
    ip(&args).await
}

fn host_prefix(address: IpAddr) -> String {
    let len = if address.is_ipv4() { 32 } else { 128 };
    format!("{address}/{len}")
}

/// Runs `ip ARGS`; the error is its message.
async fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|error| format!("ip {}: {error}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
