//! Kubernetes mode against a wire-level fake API server: the real kube client in the real binary
//! lists, watches, resumes, relists after 410 Gone, and rides out an API outage.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::support::kube_api::FakeApi;
use crate::support::*;

/// A ClusterIP Service `name` in `default` on `vip` (ClusterIP and port), port named `tcp`.
fn service(name: &str, vip: SocketAddr, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, labels: {{{labels}}}}}\n\
         spec:\n  clusterIP: {}\n  ports: [{{name: tcp, port: {}, targetPort: 9}}]\n",
        vip.ip(),
        vip.port()
    )
}

/// An EndpointSlice of `service` whose endpoints all listen on one port.
fn slice(service: &str, name: &str, backends: &[SocketAddr]) -> String {
    let port = backends.first().map_or(9, SocketAddr::port);
    let endpoints: String = backends
        .iter()
        .map(|b| {
            format!(
                "  - addresses: [\"{}\"]\n    conditions: {{ready: true}}\n",
                b.ip()
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  \
         labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\n\
         ports: [{{name: tcp, port: {port}}}]\nendpoints:\n{endpoints}"
    )
}

/// Starts Capstan on the fake API server's kubeconfig.
fn start(api: &FakeApi, dir: &TempDir, extra: &[&str]) -> Capstan {
    let kubeconfig = dir.write("kubeconfig", &api.kubeconfig());
    let mut args = vec!["--kubeconfig", path_str(&kubeconfig), "--capture", "bind"];
    args.extend_from_slice(extra);
    Capstan::start(&args)
}

fn endpoints_of(snapshot: &Value, service: &str) -> Vec<String> {
    let mut addrs: Vec<String> = snapshot["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["service"] == service)
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["address"].as_str().map(str::to_owned))
        .collect();
    addrs.sort();
    addrs
}

fn has_service(snapshot: &Value, service: &str) -> bool {
    snapshot["services"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["service"] == service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_created_updated_and_deleted_in_the_cluster_reach_the_data_plane() {
    let api = FakeApi::start().await;
    let a = Backend::start("a").await;
    let b2 = Backend::start("b2").await.addr;
    let vip = frontend();
    api.apply_yaml(&service("web", vip, ""));
    api.apply_yaml(&slice("web", "web-1", &[a.addr]));
    api.apply_yaml(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n  labels: {topology.kubernetes.io/zone: zone-a}\n",
    );
    let dir = TempDir::new("kube-crud");
    let capstan = start(&api, &dir, &["--node-name", "node-1"]);
    assert!(
        capstan.logs().contains(r#"zone=Some("zone-a")"#),
        "the Node's zone label is read: {}",
        capstan.logs()
    );
    capstan.wait_listening(vip);
    assert_eq!(greet(vip, None).await.expect("through the VIP").1, "a");

    // An update moves the endpoint; the next connection goes to the new one.
    api.apply_yaml(&slice("web", "web-1", &[b2]));
    capstan.wait_snapshot("the moved endpoint", |s| {
        endpoints_of(s, "default/web") == [format!("{b2}")]
    });
    assert_eq!(greet(vip, None).await.expect("after the update").1, "b2");

    // A second slice adds to the same Service; deleting it removes its endpoints again.
    api.apply_yaml(&slice("web", "web-2", &[a.addr]));
    capstan.wait_snapshot("two slices", |s| endpoints_of(s, "default/web").len() == 2);
    api.delete("endpointslices", "default", "web-2");
    capstan.wait_snapshot("one slice", |s| endpoints_of(s, "default/web").len() == 1);

    // Ingress objects come through the same source.
    api.apply_yaml(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: capstan\n  \
         annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\n\
         spec: {controller: capstan.dev/ingress}\n",
    );
    api.apply_yaml(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: site, namespace: default}\n\
         spec:\n  rules:\n  - host: site.example\n    http:\n      paths:\n      \
         - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n",
    );
    capstan.wait_snapshot("the ingress route", |s| {
        s["ingress"]["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["host"] == "site.example")
    });

    api.delete("services", "default", "web");
    capstan.wait_snapshot("the service gone", |s| !has_service(s, "default/web"));
    assert!(greet(vip, None).await.is_err(), "the VIP is closed");

    let requests = api.requests();
    for resource in [
        "services",
        "endpointslices",
        "ingresses",
        "ingressclasses",
        "secrets",
    ] {
        assert!(
            requests.contains(&format!("list {resource}")),
            "{resource} listed: {requests:?}"
        );
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with(&format!("watch {resource} from "))),
            "{resource} watched: {requests:?}"
        );
    }
    let metrics = capstan.metrics();
    assert!(metrics.contains("capstan_kubernetes_api_up 1"), "{metrics}");
    assert!(
        metrics.contains(
            r#"capstan_kubernetes_watch_events_total{resource="endpointslices",event="delete"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_keeps_serving_the_last_snapshot_and_says_so() {
    let api = FakeApi::start().await;
    let backend = Backend::start("a").await;
    let vip = frontend();
    api.apply_yaml(&service("web", vip, ""));
    api.apply_yaml(&slice("web", "web-1", &[backend.addr]));
    let dir = TempDir::new("kube-outage");
    let capstan = start(&api, &dir, &[]);
    capstan.wait_listening(vip);

    api.stop();
    let readyz = eventually(Duration::from_secs(20), || {
        let (code, body) = http_get(capstan.admin, "/readyz")?;
        (body.contains("unreachable")).then_some((code, body))
    })
    .unwrap_or_else(|| panic!("/readyz never reported the outage\n{}", capstan.logs()));
    assert_eq!(readyz.0, 200, "still serving: {}", readyz.1);
    assert!(capstan.metrics().contains("capstan_kubernetes_api_up 0"));
    for _ in 0..5 {
        assert_eq!(
            greet(vip, None).await.expect("served during the outage").1,
            "a"
        );
    }

    // Changes made while the API was away arrive once it is back.
    let moved = Backend::start("moved").await;
    api.apply_yaml(&slice("web", "web-1", &[moved.addr]));
    api.restart().await;
    capstan.wait_snapshot("the change made during the outage", |s| {
        endpoints_of(s, "default/web") == [moved.addr.to_string()]
    });
    eventually(Duration::from_secs(20), || {
        let (_, body) = http_get(capstan.admin, "/readyz")?;
        body.contains("kubernetes API reachable").then_some(())
    })
    .unwrap_or_else(|| panic!("/readyz never recovered\n{}", capstan.logs()));
    assert_eq!(greet(vip, None).await.expect("after the outage").1, "moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_after_410_gone_loses_nothing_and_drops_what_was_deleted() {
    let api = FakeApi::start().await;
    let backend = Backend::start("a").await;
    let (keep, gone, added) = (frontend(), frontend(), frontend());
    api.apply_yaml(&service("keep", keep, ""));
    api.apply_yaml(&service("gone", gone, ""));
    api.apply_yaml(&slice("keep", "keep-1", &[backend.addr]));
    let dir = TempDir::new("kube-410");
    let capstan = start(&api, &dir, &[]);
    // No endpoints: no socket, the kernel refuses (kube-proxy's reject).
    capstan.wait_listener(gone, "refusing: no endpoints");

    // Changes no watch sees, then a compaction: resuming answers 410 and only a relist finds
    // the deletion and the addition.
    api.changes_behind_compaction(|api| {
        api.delete("services", "default", "gone");
        api.apply_yaml(&service("added", added, ""));
        api.apply_yaml(&slice("added", "added-1", &[backend.addr]));
    });
    let snapshot = capstan.wait_snapshot("the relisted state", |s| {
        !has_service(s, "default/gone") && !endpoints_of(s, "default/added").is_empty()
    });
    assert_eq!(
        endpoints_of(&snapshot, "default/keep"),
        [backend.addr.to_string()]
    );
    assert_eq!(
        endpoints_of(&snapshot, "default/added"),
        [backend.addr.to_string()]
    );
    capstan.wait_listening(added);
    assert_eq!(greet(keep, None).await.expect("kept").1, "a");
    let lists = api
        .requests()
        .iter()
        .filter(|r| *r == "list services")
        .count();
    assert!(lists >= 2, "services relisted: {:?}", api.requests());

    // A plain disconnect resumes from the last version without a relist.
    let before = api.requests().len();
    api.disconnect_watches();
    api.apply_yaml(&service("after-resume", frontend(), ""));
    capstan.wait_snapshot("a change after the resume", |s| {
        has_service(s, "default/after-resume")
    });
    let since: Vec<String> = api.requests()[before..].to_vec();
    assert!(
        since.iter().any(|r| r.starts_with("watch services from ")),
        "{since:?}"
    );
    assert!(!since.contains(&"list services".to_owned()), "{since:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_object_keeps_its_previous_version_and_other_proxies_services_are_left_alone() {
    let api = FakeApi::start().await;
    let backend = Backend::start("a").await;
    let (web, theirs, mine) = (frontend(), frontend(), frontend());
    api.apply_yaml(&service("web", web, ""));
    api.apply_yaml(&slice("web", "web-1", &[backend.addr]));
    api.apply_yaml(&service(
        "theirs",
        theirs,
        "service.kubernetes.io/service-proxy-name: other",
    ));
    api.apply_yaml(&service(
        "mine",
        mine,
        "service.kubernetes.io/service-proxy-name: capstan",
    ));
    let dir = TempDir::new("kube-invalid");
    let capstan = start(&api, &dir, &[]);
    capstan.wait_listening(web);
    let snapshot = capstan.snapshot();
    for labelled in ["default/theirs", "default/mine"] {
        let frontends = snapshot["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["service"] == labelled)
            .flat_map(|s| s["frontends"].as_array().cloned().unwrap_or_default())
            .count();
        assert_eq!(frontends, 0, "{labelled} belongs to another proxy");
    }

    // A broken update (an unknown protocol) is rejected; the last good version keeps serving.
    let broken = service("web", web, "").replace("targetPort: 9", "targetPort: 9, protocol: ICMP");
    api.apply_yaml(&broken);
    let snapshot = capstan.wait_snapshot("the rejection reported", |s| {
        s["sources"]["kubernetes:services"]["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    });
    let errors = snapshot["sources"]["kubernetes:services"]["errors"].to_string();
    assert!(errors.contains("unknown protocol"), "{errors}");
    assert!(
        capstan
            .metrics()
            .contains(r#"capstan_source_invalid_objects{source="kubernetes:services"} 1"#)
    );
    assert_eq!(greet(web, None).await.expect("previous version").1, "a");

    // A relist while it is still broken keeps the previous version too.
    api.changes_behind_compaction(|api| {
        api.apply_yaml(&service("unrelated", frontend(), ""));
    });
    eventually(Duration::from_secs(10), || {
        let lists = api
            .requests()
            .iter()
            .filter(|r| *r == "list services")
            .count();
        (lists >= 2).then_some(())
    })
    .expect("relisted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        greet(web, None).await.expect("kept across the relist").1,
        "a"
    );

    // Fixed: the error clears.
    api.apply_yaml(&service("web", web, ""));
    capstan.wait_snapshot("the error cleared", |s| {
        s["sources"]["kubernetes:services"]["errors"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    drop(capstan);

    // With --proxy-name, only the Services labelled with that name are proxied.
    let capstan = start(&api, &dir, &["--proxy-name", "capstan"]);
    capstan.wait_listener(mine, "refusing: no endpoints");
    let snapshot = capstan.snapshot();
    let proxied: Vec<&Value> = snapshot["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["frontends"].as_array().is_some_and(|f| !f.is_empty()))
        .map(|s| &s["service"])
        .collect();
    assert_eq!(proxied, [&Value::from("default/mine")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_ingresses_get_the_published_address_in_their_status() {
    let api = FakeApi::start().await;
    api.apply_yaml(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: capstan}\n\
         spec: {controller: capstan.dev/ingress}\n",
    );
    let ingress = |name: &str, class: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  ingressClassName: {class}\n  rules:\n  - host: {name}.example\n    http:\n      paths:\n      \
             - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n"
        )
    };
    api.apply_yaml(&ingress("ours", "capstan"));
    api.apply_yaml(&ingress("theirs", "nginx"));
    let dir = TempDir::new("kube-status");
    let _capstan = start(
        &api,
        &dir,
        &["--publish-status-address", "192.0.2.10,lb.example"],
    );
    let status = |name: &str| {
        api.object("ingresses", "default", name)
            .map(|o| o["status"]["loadBalancer"]["ingress"].clone())
            .unwrap_or_default()
    };
    let published = eventually(Duration::from_secs(10), || {
        let status = status("ours");
        status.is_array().then_some(status)
    })
    .expect("status published");
    assert_eq!(
        published,
        serde_json::json!([{"ip": "192.0.2.10"}, {"hostname": "lb.example"}])
    );
    assert!(
        status("theirs").is_null(),
        "another class's Ingress is left alone"
    );

    // The Ingress moves to another class: Capstan no longer serves it and clears its status.
    api.apply_yaml(&ingress("ours", "nginx"));
    eventually(Duration::from_secs(10), || {
        status("ours").is_null().then_some(())
    })
    .expect("status cleared");
    let patches = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("patch ingresses default/ours"))
        .count();
    assert_eq!(patches, 2, "{:?}", api.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_marked_for_deletion_is_not_eligible_on_healthz() {
    let api = FakeApi::start().await;
    let node = |taints: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nspec: {{taints: [{taints}]}}\n"
        )
    };
    api.apply_yaml(&node(""));
    let dir = TempDir::new("kube-node");
    let capstan = start(
        &api,
        &dir,
        &["--node-name", "node-a", "--healthz", "127.0.0.1:0"],
    );
    let healthz = capstan.logged_addr("healthz");
    let eligible = |want: bool, code: u16| {
        eventually(Duration::from_secs(10), || {
            let (status, body) = http_get(healthz, "/healthz")?;
            let json: Value = serde_json::from_str(&body).ok()?;
            (status == code && json["nodeEligible"] == want).then_some(())
        })
        .unwrap_or_else(|| panic!("nodeEligible never {want}\n{}", capstan.logs()));
    };
    eligible(true, 200);

    // The cluster autoscaler taints the node before removing it: load balancers must drain it.
    api.apply_yaml(&node(
        "{key: ToBeDeletedByClusterAutoscaler, value: '1700000000', effect: NoSchedule}",
    ));
    eligible(false, 503);
    assert_eq!(
        http_get(healthz, "/livez").map(|r| r.0),
        Some(200),
        "still alive"
    );
    api.apply_yaml(&node(""));
    eligible(true, 200);
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("watch nodes from ")),
        "{:?}",
        api.requests()
    );
}
