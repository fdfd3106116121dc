//! The deployment manifests and the Helm chart parse as the Kubernetes types they claim to be,
//! grant no more than Capstan needs, and set only flags `capstan run` has. The chart is rendered
//! as `helm template` renders it (`deploy/helm/render`: Go's text/template with sprig and
//! Helm's functions, values checked against values.schema.json), with its default values and with
//! every option set (`ci/all-values.yaml`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
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

/// The chart renderer (`deploy/helm/render`: Helm's template engine from Debian's Go packages),
/// built once per test run.
fn renderer() -> &'static Path {
    static RENDERER: OnceLock<PathBuf> = OnceLock::new();
    RENDERER.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chart-render");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg("./deploy/helm/render")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env(
                "GOCACHE",
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-cache"),
            )
            .status()
            .expect(
                "go: apt-get install golang-go golang-github-masterminds-sprig-dev \
                 golang-gopkg-yaml.v3-dev golang-github-xeipuuv-gojsonschema-dev",
            );
        assert!(status.success(), "building the chart renderer failed");
        out
    })
}

/// `helm template NAME deploy/helm/capstan -n NAMESPACE [-f VALUES]`: the manifests, and NOTES.txt
/// (or the error).
fn render(name: &str, namespace: &str, values: &[&str]) -> Result<(String, String), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new(renderer());
    command
        .arg("-chart")
        .arg(root.join("deploy/helm/capstan"))
        .args(["-name", name, "-namespace", namespace]);
    for file in values {
        command.arg("-f").arg(root.join(file));
    }
    let out = command.output().expect("run the chart renderer");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok((stdout, stderr))
    } else {
        Err(stderr)
    }
}

/// The `CAPSTAN_*` variables `capstan run` reads.
fn flag_variables() -> BTreeSet<String> {
    let help = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["run", "--help"])
        .output()
        .expect("capstan run --help");
    String::from_utf8_lossy(&help.stdout)
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next().map(str::to_owned))
        .collect()
}

fn by_kind(docs: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for doc in docs {
        let kind = doc["kind"].as_str().expect("kind").to_owned();
        out.entry(kind).or_default().push(doc.clone());
    }
    out
}

/// Parses every document as the k8s-openapi type of its kind (the ServiceMonitor, a CRD, as
/// JSON with its required fields checked).
fn parse_all(docs: &[Value]) {
    for doc in docs {
        match doc["kind"].as_str().expect("kind") {
            "ServiceAccount" => drop(typed::<ServiceAccount>(doc)),
            "ClusterRole" => drop(typed::<ClusterRole>(doc)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc)),
            "ConfigMap" => drop(typed::<ConfigMap>(doc)),
            "IngressClass" => drop(typed::<IngressClass>(doc)),
            "DaemonSet" => drop(typed::<DaemonSet>(doc)),
            "Service" => drop(typed::<Service>(doc)),
            "ServiceMonitor" => {
                assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
                assert!(doc["spec"]["selector"]["matchLabels"].is_object());
                assert!(doc["spec"]["endpoints"].is_array());
            }
            other => panic!("unexpected kind {other}"),
        }
    }
}

#[test]
fn deploy_manifests_are_valid_least_privilege_and_match_the_chart() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let plain = documents(
        &std::fs::read_to_string(root.join("deploy/kubernetes/capstan.yaml")).expect("manifest"),
    );
    parse_all(&plain);
    let by_kind: BTreeMap<String, Value> = plain
        .iter()
        .map(|doc| (doc["kind"].as_str().expect("kind").to_owned(), doc.clone()))
        .collect();
    assert_eq!(by_kind.len(), 6);

    // Read access (list and watch, get for the Node's zone and status subresources); the one
    // write is `patch` on the Gateway API status subresources Capstan reports on.
    let role: ClusterRole = typed(&by_kind["ClusterRole"]);
    for rule in role.rules.iter().flatten() {
        let statuses_only = rule
            .resources
            .iter()
            .flatten()
            .all(|r| r.ends_with("/status"));
        let groups = rule.api_groups.clone().unwrap_or_default();
        for verb in &rule.verbs {
            let write_ok = verb == "patch"
                && statuses_only
                && groups == ["gateway.networking.k8s.io".to_owned()];
            assert!(
                ["list", "watch", "get"].contains(&verb.as_str()) || write_ok,
                "verb {verb} on {:?}",
                rule.resources
            );
        }
    }
    let can_watch = |group: &str, resource: &str| {
        role.rules.iter().flatten().any(|rule| {
            rule.api_groups.iter().flatten().any(|g| g == group)
                && rule.resources.iter().flatten().any(|r| r == resource)
                && rule.verbs.iter().any(|v| v == "watch")
        })
    };
    for resource in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "referencegrants",
    ] {
        assert!(
            can_watch("gateway.networking.k8s.io", resource),
            "{resource}"
        );
    }
    assert!(can_watch("", "namespaces"));

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
        Some(("/livez".to_owned(), IntOrString::String("healthz".into())))
    );

    // Every CAPSTAN_* variable set is one `capstan run` reads.
    let flags = flag_variables();
    let config: ConfigMap = typed(&by_kind["ConfigMap"]);
    let mut names: Vec<String> = config.data.unwrap_or_default().into_keys().collect();
    names.extend(container.env.iter().flatten().map(|e| e.name.clone()));
    for name in names {
        assert!(flags.contains(&name), "{name} is not a flag of capstan run");
    }

    // deploy/kubernetes/capstan.yaml is the chart's default render (deploy/helm/render.sh).
    let root_chart = Command::new(renderer())
        .arg("-chart")
        .arg(root.join("deploy/helm/capstan"))
        .args([
            "-name",
            "capstan",
            "-namespace",
            "kube-system",
            "-managed-by",
            "kubectl",
        ])
        .output()
        .expect("render");
    assert!(root_chart.status.success());
    assert_eq!(
        documents(&String::from_utf8_lossy(&root_chart.stdout)),
        plain,
        "deploy/kubernetes/capstan.yaml is stale: run deploy/helm/render.sh"
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

#[test]
fn the_chart_with_every_option_set_reaches_every_flag_and_pod_setting() {
    let (text, notes) = render(
        "edge",
        "edge-system",
        &["deploy/helm/capstan/ci/all-values.yaml"],
    )
    .unwrap_or_else(|e| panic!("render: {e}"));
    let docs = documents(&text);
    parse_all(&docs);
    let kinds = by_kind(&docs);
    assert!(
        notes.contains("daemonset/capstan-edge"),
        "NOTES.txt: {notes}"
    );

    // Every flag of `capstan run` is reachable from values (CAPSTAN_NODE_NAME comes from the
    // downward API), and nothing else is set.
    let config: ConfigMap = typed(&kinds["ConfigMap"][0]);
    let set: BTreeSet<String> = config
        .data
        .clone()
        .unwrap_or_default()
        .into_keys()
        .collect();
    let mut flags = flag_variables();
    flags.remove("CAPSTAN_NODE_NAME");
    assert_eq!(set, flags, "ConfigMap variables vs `capstan run --help`");
    let data = config.data.unwrap_or_default();
    assert_eq!(
        data["CAPSTAN_PRESERVE_SOURCE_IP"],
        "10.244.0.0/16,fd00:10:244::/56"
    );
    assert_eq!(data["CAPSTAN_UPSTREAM"], "1.1.1.1,9.9.9.9:53");

    let daemonset: DaemonSet = typed(&kinds["DaemonSet"][0]);
    let template = daemonset.spec.expect("spec").template;
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone());
    let annotations = annotations.expect("pod annotations");
    assert_eq!(annotations["example.com/scrape"], "true");
    assert!(annotations.contains_key("checksum/config"));
    let pod = template.spec.expect("pod spec");
    assert_eq!(pod.priority_class_name.as_deref(), Some("edge-critical"));
    assert_eq!(pod.node_selector.expect("nodeSelector").len(), 2);
    assert_eq!(
        pod.tolerations.expect("tolerations")[0].key.as_deref(),
        Some("node-role.example.com/edge")
    );
    assert!(pod.affinity.and_then(|a| a.node_affinity).is_some());
    assert_eq!(
        pod.image_pull_secrets.expect("pull secrets")[0].name,
        "registry-credentials"
    );
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("capstan-edge-agent")
    );
    assert_eq!(pod.termination_grace_period_seconds, Some(60));
    assert_eq!(pod.volumes.expect("volumes")[0].name, "config");
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some(
            "registry.example/capstan@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        )
    );
    assert_eq!(
        container.args.clone().unwrap_or_default(),
        ["run", "--log", "info,capstan_proxy=debug"]
    );
    let env: Vec<String> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(env, ["CAPSTAN_NODE_NAME", "RUST_BACKTRACE"]);
    assert_eq!(
        container.volume_mounts.clone().expect("mounts")[0].mount_path,
        "/etc/capstan"
    );
    let limits = container
        .resources
        .clone()
        .and_then(|r| r.limits)
        .expect("limits");
    assert!(limits.contains_key("cpu"));
    let ports: BTreeMap<String, i32> = container
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref() == Some("TCP"))
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(ports["http"], 8080, "ports follow the flags");
    assert_eq!(ports["https"], 8443);

    // Status writes only there: the Gateway API statuses, and the Ingress status when asked for.
    let role: ClusterRole = typed(&kinds["ClusterRole"][0]);
    let writes: Vec<_> = role
        .rules
        .iter()
        .flatten()
        .filter(|r| {
            r.verbs
                .iter()
                .any(|v| !["list", "watch", "get"].contains(&v.as_str()))
        })
        .collect();
    let written: Vec<String> = writes
        .iter()
        .flat_map(|r| r.resources.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        written,
        [
            "gatewayclasses/status",
            "gateways/status",
            "httproutes/status",
            "grpcroutes/status",
            "ingresses/status"
        ]
    );
    assert!(
        writes
            .iter()
            .all(|r| r.verbs.iter().all(|v| v == "get" || v == "patch"))
    );

    let class: IngressClass = typed(&kinds["IngressClass"][0]);
    assert_eq!(class.metadata.name.as_deref(), Some("edge"));
    assert_eq!(
        class.spec.and_then(|s| s.controller).as_deref(),
        Some("example.com/edge")
    );

    // The ServiceMonitor scrapes ports the metrics Service has, which the pod exposes.
    let service: Service = typed(&kinds["Service"][0]);
    let service_ports: BTreeSet<String> = service
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    let monitor = &kinds["ServiceMonitor"][0];
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let scraped: BTreeSet<String> = monitor["spec"]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["port"].as_str().expect("port").to_owned())
        .collect();
    assert_eq!(
        scraped,
        ["admin", "dns-metrics", "metrics"].map(String::from).into()
    );
    assert_eq!(scraped, service_ports);
    assert!(scraped.iter().all(|p| ports.contains_key(p)), "{ports:?}");
}

#[test]
fn two_releases_of_the_chart_share_no_object_name() {
    let names = |release: &str| -> BTreeSet<(String, String)> {
        let (text, _) = render(release, "kube-system", &[]).unwrap_or_else(|e| panic!("{e}"));
        let docs = documents(&text);
        parse_all(&docs);
        docs.iter()
            .map(|d| {
                let kind = d["kind"].as_str().expect("kind").to_owned();
                (
                    kind,
                    d["metadata"]["name"].as_str().expect("name").to_owned(),
                )
            })
            .collect()
    };
    let (a, b) = (names("capstan-a"), names("capstan-b"));
    assert_eq!(a.len(), 6);
    assert!(a.is_disjoint(&b), "{a:?} vs {b:?}");
}

#[test]
fn the_values_schema_refuses_a_misspelled_flag_and_a_wrong_type() {
    let dir = crate::support::TempDir::new("chart-values");
    let misspelled = dir.write("typo.yaml", "config:\n  preserveSourceIP: [10.0.0.0/8]\n");
    let wrong_type = dir.write(
        "type.yaml",
        "config:\n  capture: kernel\nrbac:\n  create: \"yes\"\n",
    );
    // An absolute path: `render` joins it to the repository root, which keeps it as it is.
    let path = |p: &Path| p.display().to_string();
    let error = render("x", "default", &[&path(&misspelled)]).expect_err("typo refused");
    assert!(error.contains("preserveSourceIP"), "{error}");
    let error = render("x", "default", &[&path(&wrong_type)]).expect_err("type refused");
    assert!(
        error.contains("capture") && error.contains("create"),
        "{error}"
    );
}

/// The chart ships the standard-channel CRDs of the Gateway API kinds Capstan reads (helm installs
/// `crds/` before the templates; `kubectl apply -f deploy/helm/capstan/crds/` without helm), each
/// serving `v1` with a status subresource.
#[test]
fn the_chart_ships_the_gateway_api_crds_capstan_reads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for plural in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "referencegrants",
    ] {
        let path = root.join(format!(
            "deploy/helm/capstan/crds/gateway.networking.k8s.io_{plural}.yaml"
        ));
        let text = std::fs::read_to_string(&path).expect("CRD file");
        let docs = documents(&text);
        assert_eq!(docs.len(), 1, "{plural}");
        let crd = &docs[0];
        assert_eq!(crd["kind"], "CustomResourceDefinition");
        assert_eq!(crd["spec"]["group"], "gateway.networking.k8s.io");
        assert_eq!(crd["spec"]["names"]["plural"], plural);
        let annotations = &crd["metadata"]["annotations"];
        assert_eq!(annotations["gateway.networking.k8s.io/channel"], "standard");
        let v1 = crd["spec"]["versions"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "v1"))
            .unwrap_or_else(|| panic!("{plural} serves v1"));
        assert_eq!(v1["served"], true, "{plural}");
        if plural != "referencegrants" {
            assert!(v1["subresources"]["status"].is_object(), "{plural} status");
        }
    }
}
