//! The data paths side by side (issue 18): a pod reaching a pod on its node directly, through a
//! ClusterIP on the kernel path (nftables DNAT), and through the same ClusterIP on the user-space
//! path (redirected to Capstan's proxy). Bulk throughput with iperf3 (Gbit/s, and whole-machine
//! CPU seconds per GB moved: iperf3, the kernel and Capstan together) and new connections per
//! second (connect, read one line, close). Ignored by default (it prints figures and asserts no
//! timing): `benches/datapath.sh` runs it on a release build, as root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::capture::{READY, service, slice};
use crate::kernel::start_node;
use crate::support::TempDir;
use crate::support::cluster::Cluster;
use crate::support::kube_api::FakeApi;
use crate::support::netns::{self, in_netns};

/// Seconds per measurement (`DATAPATH_SECONDS`, default 5).
fn seconds() -> u64 {
    std::env::var("DATAPATH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// Busy CPU time of the whole machine so far, from `/proc/stat` (everything but idle and
/// iowait), in seconds.
fn busy_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    (total - idle) / 100.0
}

/// iperf3 from `ns` to `target` for the configured time: (Gbit/s, CPU seconds per GB).
fn bulk(ns: &str, target: SocketAddr) -> (f64, f64) {
    let cpu = busy_cpu_seconds();
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "iperf3", "-J", "-c"])
        .arg(target.ip().to_string())
        .args([
            "-p",
            &target.port().to_string(),
            "-t",
            &seconds().to_string(),
        ])
        .output()
        .expect("run iperf3");
    let cpu = busy_cpu_seconds() - cpu;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("iperf3: {}", String::from_utf8_lossy(&output.stderr)));
    let received = &report["end"]["sum_received"];
    let bits = received["bits_per_second"].as_f64().unwrap_or(0.0);
    let bytes = received["bytes"].as_f64().unwrap_or(0.0);
    (bits / 1e9, cpu / (bytes / 1e9).max(1e-9))
}

/// New connections per second from `ns` to `target`, with two client threads: each connection
/// reads the backend's line and the client closes first, as HTTP clients do. (If the server
/// closes first it keeps TIME_WAIT, and a client reusing a port within it through DNAT meets a
/// challenge ACK, a reset and a SYN resent ~10 ms later: the client's initial sequence number
/// and timestamp offset are derived from the VIP's tuple, not the endpoint's. kube-proxy's DNAT
/// behaves the same; direct connections do not, so it would measure port reuse, not the path.)
fn connection_rate(ns: &str, target: SocketAddr) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds());
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (ns, done) = (ns.to_owned(), done.clone());
            std::thread::spawn(move || {
                in_netns(&ns, move || {
                    while Instant::now() < deadline {
                        let Ok(mut stream) =
                            TcpStream::connect_timeout(&target, Duration::from_secs(2))
                        else {
                            continue;
                        };
                        let mut line = [0u8; 64];
                        if stream.read(&mut line).is_ok_and(|n| n > 0) {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
    done.load(Ordering::Relaxed) as f64 / seconds() as f64
}

/// A TCP backend in `ns` that writes a line and closes only after the client has (so the
/// client, not the backend, keeps TIME_WAIT).
fn greet_then_wait_backend(ns: &str, addr: SocketAddr) {
    let listener = in_netns(ns, move || std::net::TcpListener::bind(addr).expect("bind"));
    let (greeted, to_close) = std::sync::mpsc::channel::<TcpStream>();
    // One thread accepts and greets, another waits for each client's close in turn (clients
    // close right after the greeting), so no thread is spawned per connection.
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            if stream.write_all(b"s\n").is_ok() && greeted.send(stream).is_err() {
                return;
            }
        }
    });
    std::thread::spawn(move || {
        for mut stream in to_close {
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        }
    });
}

struct Iperf(Child);

impl Drop for Iperf {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by benches/datapath.sh"]
async fn datapath_direct_kernel_and_userspace() {
    let iperf = Command::new("iperf3").arg("-v").output().is_ok();
    if !netns::available() || !iperf {
        eprintln!("skipped: needs root, ip, nft and iperf3 (Debian package iperf3)");
        return;
    }
    let cluster = Cluster::new(1, 2);
    let node = &cluster.nodes[0];
    let (client, server) = (&node.pods[0], &node.pods[1]);
    // Room for tens of thousands of connections a second from one client: the whole port
    // range, and its own TIME_WAIT ports reused (it closes first).
    for setting in [
        "net.ipv4.ip_local_port_range=1024 65535",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        netns::run(&["ip", "netns", "exec", &client.ns, "sysctl", "-qw", setting]);
    }
    let _iperf = Iperf(
        Command::new("ip")
            .args(["netns", "exec", &server.ns, "iperf3", "-s", "-p", "5201"])
            .stdout(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    greet_then_wait_backend(&server.ns, SocketAddr::from((server.ip, 8080)));
    let api = FakeApi::start_on(node.gateway().into()).await;
    api.apply_yaml(&format!(
        "{}{}",
        service(
            "bench",
            node.vip(1),
            "[{name: iperf, port: 5201, targetPort: 5201}, {name: short, port: 80, targetPort: 8080}]",
            ""
        ),
        slice(
            "bench",
            "[{name: iperf, port: 5201}, {name: short, port: 8080}]",
            &[(server.ip, "node-0", READY)]
        )
    ));
    std::thread::sleep(Duration::from_millis(300));
    let dir = TempDir::new("datapath");
    let mut rows: Vec<(&str, f64, f64, f64)> = Vec::new();
    for path in ["direct", "kernel", "userspace"] {
        let (ip, agent): (Ipv4Addr, _) = match path {
            "direct" => (server.ip, None),
            datapath => (
                node.vip(1),
                Some(start_node(
                    &cluster,
                    0,
                    &api,
                    &dir,
                    &["--l4-datapath", datapath],
                )),
            ),
        };
        let (port_bulk, port_short) = if path == "direct" {
            (5201, 8080)
        } else {
            (5201, 80)
        };
        let (gbits, cpu_per_gb) = bulk(&client.ns, SocketAddr::from((ip, port_bulk)));
        let rate = connection_rate(&client.ns, SocketAddr::from((ip, port_short)));
        rows.push((path, gbits, cpu_per_gb, rate));
        drop(agent);
        // The kernel path's rules stay after the agent (as kube-proxy's): clear them.
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.ns,
                "nft",
                "delete",
                "table",
                "inet",
                "capstan-services",
            ])
            .output();
    }
    let (_, direct_gbits, direct_cpu, direct_rate) = rows[0];
    println!("datapath: path        Gbit/s  (x direct)  CPU s/GB  (x direct)  conn/s  (x direct)");
    for (path, gbits, cpu, rate) in &rows {
        println!(
            "datapath: {path:<10} {gbits:7.2}  ({:5.2})    {cpu:7.3}  ({:5.2})    {rate:7.0} ({:5.2})",
            gbits / direct_gbits,
            cpu / direct_cpu,
            rate / direct_rate,
        );
    }
}
