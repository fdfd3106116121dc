//! This node's Node object: read once for its zone and pod CIDRs ([`NodeFacts`]), and watched
//! for kube-proxy's `nodeEligible`: a Node being deleted, or tainted
//! `ToBeDeletedByClusterAutoscaler`, is not eligible as a load-balancer target.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1 as core;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use capstan_proxy::source::Prefix;

use crate::kube_proxy::SyncClock;

/// The well-known zone label (topology hints).
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What the Node object says about this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
    /// `spec.podCIDRs` (or the older `spec.podCIDR`): the pods of this node, for kube-proxy's
    /// `--detect-local-mode=NodeCIDR`. Unparsable entries are left out.
    pub pod_cidrs: Vec<Prefix>,
}

impl NodeFacts {
    pub(crate) fn of(node: core::Node) -> Self {
        let spec = node.spec.unwrap_or_default();
        let cidrs = match spec.pod_cidrs {
            Some(cidrs) if !cidrs.is_empty() => cidrs,
            _ => spec.pod_cidr.into_iter().collect(),
        };
        Self {
            zone: node.metadata.labels.and_then(|mut l| l.remove(ZONE_LABEL)),
            pod_cidrs: cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
        }
    }
}

/// The cluster autoscaler's taint on a node it is about to remove.
const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// kube-proxy's rule (`ProxyHealthServer.SyncNode`): not being deleted, and not tainted for
/// deletion by the cluster autoscaler.
pub(crate) fn eligible(node: &core::Node) -> bool {
    let deleting = node.metadata.deletion_timestamp.is_some();
    let tainted = node
        .spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .into_iter()
        .flatten()
        .any(|taint| taint.key == TO_BE_DELETED_TAINT);
    !deleting && !tainted
}

/// Watches the Node named `name` until `shutdown`, keeping `clock`'s eligibility current.
pub(crate) async fn watch(
    client: Client,
    name: String,
    clock: Arc<SyncClock>,
    shutdown: CancellationToken,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(Api::<core::Node>::all(client), config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = stream.next() => event,
        };
        let eligible = match event {
            Some(Ok(Event::Apply(node) | Event::InitApply(node))) => eligible(&node),
            // A deleted Node is no load-balancer target.
            Some(Ok(Event::Delete(_))) => false,
            Some(Ok(Event::Init | Event::InitDone)) => continue,
            Some(Err(error)) => {
                debug!(%error, "node watch failed; backing off");
                continue;
            }
            None => return,
        };
        if clock.node_eligible() != eligible {
            info!(node = %name, eligible, "node eligibility changed");
        }
        clock.set_node_eligible(eligible);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(yaml: &str) -> core::Node {
        serde_saphyr::from_str(yaml).expect("node yaml")
    }

    #[test]
    fn facts_come_from_the_zone_label_and_pod_cidrs() {
        let facts = NodeFacts::of(node(
            "metadata: {name: a, labels: {topology.kubernetes.io/zone: z1}}\n\
             spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, 'fd00:244:1::/64']}\n",
        ));
        assert_eq!(facts.zone.as_deref(), Some("z1"));
        assert_eq!(
            facts.pod_cidrs,
            [
                "10.244.1.0/24".parse().expect("v4"),
                "fd00:244:1::/64".parse().expect("v6")
            ]
        );
        // Clusters from before dual-stack set only podCIDR.
        let facts = NodeFacts::of(node(
            "metadata: {name: a}\nspec: {podCIDR: 10.244.2.0/24}\n",
        ));
        assert_eq!(facts.pod_cidrs, ["10.244.2.0/24".parse().expect("v4")]);
        assert_eq!(
            NodeFacts::of(node("metadata: {name: a}\n")),
            NodeFacts::default()
        );
    }

    #[test]
    fn deleting_or_autoscaler_tainted_nodes_are_not_eligible() {
        assert!(eligible(&node("metadata: {name: a}\n")));
        assert!(eligible(&node(
            "metadata: {name: a}\nspec: {taints: [{key: other, effect: NoSchedule}]}\n"
        )));
        assert!(!eligible(&node(
            "metadata: {name: a}\nspec:\n  taints: [{key: ToBeDeletedByClusterAutoscaler, value: '1700000000', effect: NoSchedule}]\n"
        )));
        assert!(!eligible(&node(
            "metadata: {name: a, deletionTimestamp: '2026-01-01T00:00:00Z'}\n"
        )));
    }
}
