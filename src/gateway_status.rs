//! Gateway API status as the Kubernetes objects carry it: the `status` stanza of each
//! GatewayClass, Gateway and HTTPRoute Capstan serves, rendered from the compiled
//! [`ObjectStatus`]. Shown on `/debug/snapshot` and by `capstan check`.

use capstan_table::{Condition, GatewayTable, ObjectStatus};
use serde_json::{Value, json};

/// `status` of one object; `controller` names Capstan in route parent statuses.
pub fn status_json(status: &ObjectStatus, controller: &str) -> Value {
    let conditions = |list: &[Condition]| -> Value {
        list.iter()
            .map(|c| {
                json!({
                    "type": c.kind,
                    "status": if c.status { "True" } else { "False" },
                    "reason": c.reason,
                    "message": c.message,
                    "observedGeneration": status.generation,
                })
            })
            .collect()
    };
    match status.kind {
        "Gateway" => json!({
            "addresses": status.addresses.iter()
                .map(|ip| json!({"type": "IPAddress", "value": ip.to_string()}))
                .collect::<Vec<_>>(),
            "conditions": conditions(&status.conditions),
            "listeners": status.listeners.iter().map(|l| json!({
                "name": &*l.name,
                "supportedKinds": l.supported_kinds.iter()
                    .map(|k| json!({"group": "gateway.networking.k8s.io", "kind": k}))
                    .collect::<Vec<_>>(),
                "attachedRoutes": l.attached_routes,
                "conditions": conditions(&l.conditions),
            })).collect::<Vec<_>>(),
        }),
        "HTTPRoute" | "GRPCRoute" => json!({
            "parents": status.parents.iter().map(|p| {
                let mut parent_ref = json!({
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "namespace": &*p.gateway_namespace,
                    "name": &*p.gateway_name,
                });
                if let Some(section) = &p.section_name {
                    parent_ref["sectionName"] = json!(&**section);
                }
                if let Some(port) = p.port {
                    parent_ref["port"] = json!(port);
                }
                json!({
                    "parentRef": parent_ref,
                    "controllerName": controller,
                    "conditions": conditions(&p.conditions),
                })
            }).collect::<Vec<_>>(),
        }),
        _ => json!({ "conditions": conditions(&status.conditions) }),
    }
}

/// Every object's status, as `{kind, namespace, name, status}`.
pub fn statuses_json(table: &GatewayTable, controller: &str) -> Vec<Value> {
    table
        .status
        .iter()
        .map(|s| {
            json!({
                "kind": s.kind,
                "namespace": &*s.namespace,
                "name": &*s.name,
                "status": status_json(s, controller),
            })
        })
        .collect()
}

/// One line per object and condition, for `capstan check`: `Gateway ns/name: Accepted=True
/// (Accepted)`, listeners and route parents indented under it.
pub fn status_lines(table: &GatewayTable) -> String {
    let render = |conditions: &[Condition]| -> String {
        conditions
            .iter()
            .map(|c| {
                let state = if c.status { "True" } else { "False" };
                let message = if c.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.message)
                };
                format!("{}={state} ({}{message})", c.kind, c.reason)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    for status in &table.status {
        let name = if status.namespace.is_empty() {
            status.name.to_string()
        } else {
            format!("{}/{}", status.namespace, status.name)
        };
        out.push_str(&format!("{} {name}", status.kind));
        if !status.conditions.is_empty() {
            out.push_str(&format!(": {}", render(&status.conditions)));
        }
        if !status.addresses.is_empty() {
            let addresses: Vec<String> = status.addresses.iter().map(ToString::to_string).collect();
            out.push_str(&format!(" on {}", addresses.join(", ")));
        }
        out.push('\n');
        for listener in &status.listeners {
            out.push_str(&format!(
                "  listener {} ({} route(s)): {}\n",
                listener.name,
                listener.attached_routes,
                render(&listener.conditions)
            ));
        }
        for parent in &status.parents {
            out.push_str(&format!(
                "  parent Gateway {}/{}{}: {}\n",
                parent.gateway_namespace,
                parent.gateway_name,
                parent
                    .section_name
                    .as_ref()
                    .map_or(String::new(), |s| format!(" section {s}")),
                render(&parent.conditions)
            ));
        }
    }
    out
}
