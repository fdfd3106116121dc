//! The deployment manifests and the Helm chart parse as the Kubernetes types they claim to be,
//! grant no more than Capstan needs, and set only flags `capstan run` has.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;

fn documents(text: &str) -> Vec<Value> {
    text.split("\n---")
        .map(|d| serde_saphyr::from_str::<Value>(d).expect("YAML document"))
        .filter(|d| !d.is_null())
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(doc: &Value) -> T {
    serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", doc["kind"]))
}

/// Renders the chart's templates with its default values: `{{ .Values.a.b }}` and
/// `{{ .Release.Namespace }}` are all it uses, and anything else fails the test.
fn render_chart(chart: &Path, namespace: &str) -> String {
    let values: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart.join("values.yaml")).expect("values.yaml"),
    )
    .expect("values YAML");
    let mut out = String::new();
    for entry in std::fs::read_dir(chart.join("templates")).expect("templates") {
        let mut text = std::fs::read_to_string(entry.expect("entry").path()).expect("template");
        while let Some(start) = text.find("{{") {
            let end = start + text[start..].find("}}").expect("closing }}");
            let expr = text[start + 2..end].trim();
            let value = if expr == ".Release.Namespace" {
                namespace.to_owned()
            } else if let Some(path) = expr.strip_prefix(".Values.") {
                let found = path.split('.').fold(&values, |v, key| &v[key]);
                match found {
                    Value::String(s) => s.clone(),
                    Value::Null => panic!("{expr}: not in values.yaml"),
                    other => other.to_string(),
                }
            } else {
                panic!("the test renderer does not know {expr:?}");
            };
            text.replace_range(start..end + 2, &value);
        }
        out.push_str(&text);
        out.push_str("\n---\n");
    }
    out
}

#[test]
fn deploy_manifests_are_valid_least_privilege_and_match_the_chart() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let plain = documents(
        &std::fs::read_to_string(root.join("deploy/kubernetes/capstan.yaml")).expect("manifest"),
    );
    let mut by_kind: BTreeMap<String, Value> = BTreeMap::new();
    for doc in &plain {
        let kind = doc["kind"].as_str().expect("kind").to_owned();
        match kind.as_str() {
            "ServiceAccount" => drop(typed::<ServiceAccount>(doc)),
            "ClusterRole" => drop(typed::<ClusterRole>(doc)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc)),
            "ConfigMap" => drop(typed::<ConfigMap>(doc)),
            "IngressClass" => drop(typed::<IngressClass>(doc)),
            "DaemonSet" => drop(typed::<DaemonSet>(doc)),
            other => panic!("unexpected kind {other}"),
        }
        by_kind.insert(kind, doc.clone());
    }
    assert_eq!(by_kind.len(), 6);

    // Read-only access: list and watch (get for the Node's zone), never a write verb.
    let role: ClusterRole = typed(&by_kind["ClusterRole"]);
    for rule in role.rules.iter().flatten() {
        for verb in &rule.verbs {
            assert!(
                ["list", "watch", "get"].contains(&verb.as_str()),
                "verb {verb}"
            );
        }
    }

    // The DaemonSet: host network, two capabilities and no more, read-only root, requests set,
    // probes on kube-proxy's health port.
    let daemonset: DaemonSet = typed(&by_kind["DaemonSet"]);
    let pod = daemonset
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("capstan"));
    let container = &pod.containers[0];
    let security = container.security_context.clone().expect("securityContext");
    let capabilities = security.capabilities.expect("capabilities");
    assert_eq!(capabilities.drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(
        capabilities.add,
        Some(vec!["NET_ADMIN".to_owned(), "NET_BIND_SERVICE".to_owned()])
    );
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let requests = container
        .resources
        .clone()
        .and_then(|r| r.requests)
        .expect("requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    let probe_port = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .map(|h| (h.path.clone().unwrap_or_default(), h.port.clone()))
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(
        probe_port(&container.liveness_probe),
        Some(("/livez".to_owned(), IntOrString::Int(10256)))
    );

    // Every CAPSTAN_* variable set is one `capstan run` reads.
    let help = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["run", "--help"])
        .output()
        .expect("capstan run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let config: ConfigMap = typed(&by_kind["ConfigMap"]);
    let mut names: Vec<String> = config.data.unwrap_or_default().into_keys().collect();
    names.extend(container.env.iter().flatten().map(|e| e.name.clone()));
    for name in names {
        assert!(
            help.contains(&format!("[env: {name}=")),
            "{name} is not a flag of capstan run"
        );
    }

    // The chart with its default values renders the same objects.
    let rendered = documents(&render_chart(
        &root.join("deploy/helm/capstan"),
        "kube-system",
    ));
    assert_eq!(
        rendered, plain,
        "the chart and deploy/kubernetes/capstan.yaml differ"
    );
    // The optional status permission: patch on ingresses/status, nothing else, for Capstan.
    let status = documents(
        &std::fs::read_to_string(root.join("deploy/kubernetes/ingress-status.yaml"))
            .expect("ingress-status.yaml"),
    );
    let role: ClusterRole = typed(&status[0]);
    let rules = role.rules.unwrap_or_default();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources,
        Some(vec!["ingresses/status".to_owned()])
    );
    assert_eq!(rules[0].verbs, ["patch"]);
    let binding: ClusterRoleBinding = typed(&status[1]);
    assert_eq!(binding.role_ref.name, "capstan-ingress-status");
    let subject = &binding.subjects.unwrap_or_default()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        ("capstan", Some("kube-system"))
    );

    let chart: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root.join("deploy/helm/capstan/Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart YAML");
    assert_eq!(chart["apiVersion"], "v2");
}
