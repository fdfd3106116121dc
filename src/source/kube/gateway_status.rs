//! Writes the Gateway API status Capstan computes back to the cluster: GatewayClass, Gateway
//! and HTTPRoute `status` (JSON merge patch on the `status` subresource), each time it changes.
//! An HTTPRoute's `status.parents` keeps the entries of other controllers; Capstan's own entries
//! replace its previous ones. Conditions get `lastTransitionTime` when written.
//!
//! Every node of a DaemonSet computes the same status from the same objects and writes it, so
//! the writes are idempotent; the exception is `status.addresses` of a Gateway served on node
//! addresses (no `spec.addresses`, no `--gateway-addresses`), which names each writer's own.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use capstan_table::{Generation, ObjectStatus, SnapshotHandle};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::gateway::{GATEWAY_CLASSES, GATEWAYS, GRPC_ROUTES, HTTP_ROUTES, api_resource};
use crate::gateway_status::status_json;

/// How soon a failed write is tried again.
const RETRY: Duration = Duration::from_secs(10);

type Key = (&'static str, String, String);

/// Keeps the cluster's Gateway API status in step with the snapshots until `shutdown`.
pub(crate) async fn publish(
    client: Client,
    controller: String,
    snapshots: SnapshotHandle,
    mut generations: watch::Receiver<Generation>,
    shutdown: CancellationToken,
) {
    // What was last written for each object, without timestamps.
    let mut written: BTreeMap<Key, Value> = BTreeMap::new();
    loop {
        let statuses: Vec<ObjectStatus> = snapshots
            .load()
            .map(|s| s.gateway.status.clone())
            .unwrap_or_default();
        let mut pending = false;
        let mut current = BTreeMap::new();
        for status in &statuses {
            let key = (
                status.kind,
                status.namespace.to_string(),
                status.name.to_string(),
            );
            let desired = status_json(status, &controller);
            current.insert(key.clone(), ());
            if written.get(&key) == Some(&desired) {
                continue;
            }
            match write(&client, &controller, status, &desired).await {
                Ok(()) => {
                    debug!(kind = status.kind, namespace = %status.namespace, name = %status.name, "gateway API status written");
                    written.insert(key, desired);
                }
                Err(kube::Error::Api(error)) if error.code == 404 => {
                    written.insert(key, desired); // Deleted meanwhile: nothing to write.
                }
                Err(error) => {
                    warn!(kind = status.kind, namespace = %status.namespace, name = %status.name, %error, "gateway API status not written; retrying");
                    pending = true;
                }
            }
        }
        written.retain(|key, _| current.contains_key(key));
        if !statuses.is_empty() && !pending {
            info!(objects = statuses.len(), "gateway API status up to date");
        }
        tokio::select! {
            changed = generations.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RETRY), if pending => {},
            () = shutdown.cancelled() => return,
        }
    }
}

async fn write(
    client: &Client,
    controller: &str,
    status: &ObjectStatus,
    desired: &Value,
) -> Result<(), kube::Error> {
    let plural = match status.kind {
        "GatewayClass" => GATEWAY_CLASSES,
        "Gateway" => GATEWAYS,
        "GRPCRoute" => GRPC_ROUTES,
        _ => HTTP_ROUTES,
    };
    let resource = api_resource(plural, "v1");
    let api: Api<DynamicObject> = if status.namespace.is_empty() {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), &status.namespace, &resource)
    };
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let mut body = stamped(desired, &now);
    if matches!(status.kind, "HTTPRoute" | "GRPCRoute") {
        let existing = api.get_status(&status.name).await?;
        let others: Vec<Value> = existing.data["status"]["parents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["controllerName"] != controller)
            .cloned()
            .collect();
        let ours = body["parents"].as_array().cloned().unwrap_or_default();
        body["parents"] = Value::Array(others.into_iter().chain(ours).collect());
    }
    let patch = json!({ "status": body });
    api.patch_status(&status.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

/// `status` with `lastTransitionTime` on every condition, wherever conditions are.
pub(crate) fn stamped(status: &Value, now: &str) -> Value {
    match status {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if k == "conditions" {
                        let stamped: Vec<Value> = v
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|c| {
                                let mut c = c.clone();
                                c["lastTransitionTime"] = json!(now);
                                c
                            })
                            .collect();
                        Value::Array(stamped)
                    } else {
                        stamped(v, now)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| stamped(v, now)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_condition_is_stamped() {
        let status = json!({
            "conditions": [{"type": "Accepted"}],
            "listeners": [{"name": "http", "conditions": [{"type": "Programmed"}]}],
            "parents": [{"parentRef": {"name": "gw"}, "conditions": [{"type": "ResolvedRefs"}]}],
        });
        let stamped = stamped(&status, "2026-12-05T00:00:00Z");
        assert_eq!(
            stamped["conditions"][0]["lastTransitionTime"],
            "2026-12-05T00:00:00Z"
        );
        assert_eq!(
            stamped["listeners"][0]["conditions"][0]["lastTransitionTime"],
            "2026-12-05T00:00:00Z"
        );
        assert_eq!(
            stamped["parents"][0]["conditions"][0]["lastTransitionTime"],
            "2026-12-05T00:00:00Z"
        );
        assert_eq!(stamped["parents"][0]["parentRef"]["name"], "gw");
    }
}
