//! The kernel data path under change: a rolling update (endpoints added, terminating, removed)
//! while a pod keeps connecting, and the agent restarted while connections carry data. Neither
//! may fail a connection to a ready endpoint or break an established one.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::capture::{READY, service, slice};
use crate::kernel::{
    ask, cluster, named_peer_backend, single_endpoint_service, start_node, wait_kernel,
};
use crate::support::TempDir;
use crate::support::kube_api::FakeApi;
use crate::support::netns::in_netns;

/// An EndpointSlice condition of a Pod being deleted that still serves (kube-proxy's
/// terminating fallback uses it; new connections go to ready endpoints while there are any).
const TERMINATING: &str = "ready: false, serving: true, terminating: true";

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_update_under_load_fails_no_connection() {
    let Some(cluster) = cluster(1, 4) else {
        return;
    };
    let node = &cluster.nodes[0];
    let pods = &node.pods;
    for (i, pod) in pods.iter().enumerate().skip(1) {
        named_peer_backend(&pod.ns, SocketAddr::from((pod.ip, 8080)), &format!("v{i}"));
    }
    let api = FakeApi::start_on(node.gateway().into()).await;
    let ports = "[{name: http, port: 8080}]";
    let endpoints = |list: &[(usize, &'static str)]| {
        let list: Vec<_> = list
            .iter()
            .map(|(i, conditions)| (pods[*i].ip, "node-0", *conditions))
            .collect();
        slice("web", ports, &list)
    };
    api.apply_yaml(&format!(
        "{}{}",
        service(
            "web",
            node.vip(1),
            "[{name: http, port: 80, targetPort: 8080}]",
            ""
        ),
        endpoints(&[(1, READY), (2, READY)])
    ));
    let dir = TempDir::new("kernel-rollout");
    let agent = start_node(&cluster, 0, &api, &dir, &[]);
    wait_kernel(&agent, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let vip = SocketAddr::from((node.vip(1), 80));
    let client = pods[0].ns.clone();
    let load = {
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match ask(&client, vip) {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        errors.push(error.to_string());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        })
    };
    // A Deployment's rolling update, one surge pod at a time: v3 comes up, v1 terminates and
    // goes, then v2 likewise, and v1's replacement (same address, as a new pod may get) comes up.
    let steps: [&[(usize, &str)]; 6] = [
        &[(1, READY), (2, READY), (3, READY)],
        &[(1, TERMINATING), (2, READY), (3, READY)],
        &[(2, READY), (3, READY)],
        &[(2, TERMINATING), (3, READY)],
        &[(3, READY)],
        &[(3, READY), (1, READY)],
    ];
    for step in steps {
        api.apply_yaml(&endpoints(step));
        std::thread::sleep(Duration::from_millis(400));
    }
    stop.store(true, Ordering::Relaxed);
    let errors = load.join().expect("load thread");
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(done > 50, "the load ran: {done} connections");
    assert_eq!(failed, 0, "{errors:?}");
}

/// The agent killed and started again while connections carry data both ways: conntrack keeps
/// their translations, so none breaks, and new ones keep being served.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_restart_under_load_breaks_no_established_connection() {
    let Some(cluster) = cluster(1, 2) else {
        return;
    };
    let node = &cluster.nodes[0];
    let (client, server) = (&node.pods[0], &node.pods[1]);
    crate::kernel::echo_backend(&server.ns, SocketAddr::from((server.ip, 7000)));
    let api = FakeApi::start_on(node.gateway().into()).await;
    single_endpoint_service(&api, "echo", (node.vip(1), 7), (server.ip, 7000));
    let dir = TempDir::new("kernel-restart-load");
    let mut agent = start_node(&cluster, 0, &api, &dir, &[]);
    wait_kernel(&agent, 1);
    let vip = SocketAddr::from((node.vip(1), 7));
    let stop = Arc::new(AtomicBool::new(false));
    // Eight connections, each echoing a line every few milliseconds until told to stop.
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let (ns, stop) = (client.ns.clone(), stop.clone());
            std::thread::spawn(move || -> Result<usize, String> {
                let stream = in_netns(&ns, move || {
                    TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                })
                .map_err(|e| e.to_string())?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(3)))
                    .map_err(|e| e.to_string())?;
                let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
                let mut writer = stream;
                let mut lines = 0;
                while !stop.load(Ordering::Relaxed) {
                    let line = format!("{i} {lines}");
                    writeln!(writer, "{line}").map_err(|e| format!("write {line}: {e}"))?;
                    let mut echoed = String::new();
                    reader
                        .read_line(&mut echoed)
                        .map_err(|e| format!("read {line}: {e}"))?;
                    if echoed.trim_end() != line {
                        return Err(format!("{line} echoed as {echoed:?}"));
                    }
                    lines += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(lines)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..2 {
        agent.signal(9);
        assert!(agent.wait_exit(Duration::from_secs(5)).is_some());
        std::thread::sleep(Duration::from_millis(200));
        agent = start_node(&cluster, 0, &api, &dir, &[]);
        wait_kernel(&agent, 1);
        // And new connections are served by the new agent's rules.
        let fresh = in_netns(&client.ns, move || {
            let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            writeln!(stream, "fresh")?;
            let mut echoed = String::new();
            BufReader::new(stream).read_line(&mut echoed)?;
            Ok::<_, std::io::Error>(echoed)
        });
        assert_eq!(fresh.expect("a new connection").trim_end(), "fresh");
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let lines = worker.join().expect("worker").expect("connection unbroken");
        assert!(lines > 10, "{lines} lines");
    }
}
