//! `--publish-status-address`: the ingress address in `status.loadBalancer.ingress` of every
//! Ingress Capstan serves, as ingress-nginx's `--publish-status-address` does.
//!
//! Each Ingress of Capstan's classes is patched (JSON merge patch on the `status` subresource)
//! once when it starts being served, and cleared when it stops being served while it still
//! exists. Every node of a DaemonSet patches the same content, so the patches are idempotent: give
//! every node the same addresses (the load balancer in front of the nodes, or all node IPs).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use capstan_table::{Generation, SnapshotHandle};
use k8s_openapi::api::networking::v1 as networking;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How soon a failed patch is tried again.
const RETRY: Duration = Duration::from_secs(10);

type IngressName = (Arc<str>, Arc<str>);

/// `{"status": {"loadBalancer": {"ingress": [...]}}}` for `addresses` (IPs as `ip`, anything
/// else as `hostname`); `null` clears it.
pub(crate) fn status_patch(addresses: &[String]) -> Value {
    let ingress: Vec<Value> = addresses
        .iter()
        .map(|address| match address.parse::<IpAddr>() {
            Ok(ip) => json!({"ip": ip.to_string()}),
            Err(_) => json!({"hostname": address}),
        })
        .collect();
    let ingress = if ingress.is_empty() {
        Value::Null
    } else {
        Value::Array(ingress)
    };
    json!({"status": {"loadBalancer": {"ingress": ingress}}})
}

/// Keeps the status of the served Ingresses until `shutdown`.
pub(crate) async fn publish(
    client: Client,
    addresses: Vec<String>,
    snapshots: SnapshotHandle,
    mut generations: watch::Receiver<Generation>,
    shutdown: CancellationToken,
) {
    let set = status_patch(&addresses);
    let clear = status_patch(&[]);
    let mut published: BTreeSet<IngressName> = BTreeSet::new();
    loop {
        let served: BTreeSet<IngressName> = snapshots
            .load()
            .map(|s| s.ingress.served.iter().cloned().collect())
            .unwrap_or_default();
        let gone: Vec<IngressName> = published.difference(&served).cloned().collect();
        for name in gone {
            // Deleted Ingresses answer 404: nothing to clear.
            if let Err(error) = patch(&client, &name, &clear).await {
                debug!(ingress = %format_name(&name), %error, "status not cleared");
            }
            published.remove(&name);
        }
        let fresh: Vec<IngressName> = served.difference(&published).cloned().collect();
        for name in fresh {
            match patch(&client, &name, &set).await {
                Ok(()) => {
                    info!(ingress = %format_name(&name), ?addresses, "ingress status published");
                    published.insert(name);
                }
                Err(error) => {
                    warn!(ingress = %format_name(&name), %error, "ingress status not published; retrying");
                }
            }
        }
        let pending = served.len() > published.len();
        tokio::select! {
            changed = generations.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RETRY), if pending => {},
            () = shutdown.cancelled() => return,
        }
    }
}

async fn patch(
    client: &Client,
    (namespace, name): &IngressName,
    body: &Value,
) -> Result<(), kube::Error> {
    let api = Api::<networking::Ingress>::namespaced(client.clone(), namespace);
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(body))
        .await
        .map(drop)
}

fn format_name((namespace, name): &IngressName) -> String {
    format!("{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_ip_or_hostname_entries_and_none_clears() {
        let patch = status_patch(&[
            "192.0.2.10".into(),
            "2001:db8::1".into(),
            "lb.example".into(),
        ]);
        assert_eq!(
            patch,
            json!({"status": {"loadBalancer": {"ingress": [
                {"ip": "192.0.2.10"}, {"ip": "2001:db8::1"}, {"hostname": "lb.example"},
            ]}}})
        );
        assert_eq!(
            status_patch(&[]),
            json!({"status": {"loadBalancer": {"ingress": null}}})
        );
    }
}
