//! UDP Services through the real binary: flows, balancing, re-balancing, expiry, no endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::support::*;

/// A UDP backend answering every datagram with `NAME:PAYLOAD`.
struct UdpBackend {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl UdpBackend {
    async fn start(name: &str) -> Self {
        let socket = UdpSocket::bind(SocketAddr::new(unique_ip(), 0))
            .await
            .expect("bind");
        let addr = socket.local_addr().expect("addr");
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let reply = [name.as_bytes(), b":", &buf[..n]].concat();
                let _ = socket.send_to(&reply, from).await;
            }
        });
        Self { addr, task }
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn udp_frontend() -> SocketAddr {
    let ip = unique_ip();
    let socket = std::net::UdpSocket::bind((ip, 0)).expect("bind udp :0");
    socket.local_addr().expect("addr")
}

/// Sends `payload` from `client` and returns the backend's name, or `None` without a reply.
async fn ask(client: &UdpSocket, to: SocketAddr, payload: &str) -> Option<String> {
    client.send_to(payload.as_bytes(), to).await.expect("send");
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    assert_eq!(from, to, "replies come from the frontend address");
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    let (name, echoed) = reply.split_once(':')?;
    assert_eq!(echoed, payload);
    Some(name.to_owned())
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("client")
}

fn udp_config(listen: SocketAddr, backends: &[SocketAddr]) -> String {
    config_one(
        "dns",
        listen,
        backends,
        "    protocol: udp\n    balance: round-robin\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_stick_and_new_clients_are_balanced() {
    let a = UdpBackend::start("a").await;
    let b = UdpBackend::start("b").await;
    let listen = udp_frontend();
    let dir = TempDir::new("udp");
    let config = dir.write("capstan.yaml", &udp_config(listen, &[a.addr, b.addr]));
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(listen);

    let mut names = Vec::new();
    for _ in 0..4 {
        let client = client().await;
        let first = ask(&client, listen, "hello").await.expect("reply");
        for i in 0..5 {
            let again = ask(&client, listen, &format!("more {i}"))
                .await
                .expect("reply");
            assert_eq!(
                again, first,
                "one client address is one flow to one endpoint"
            );
        }
        names.push(first);
    }
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"], "round-robin over new flows");
    let metrics = capstan.metrics();
    assert!(metrics.contains("capstan_proxy_connections_total{service=\"standalone/dns\",port=\"\",protocol=\"UDP\"} 4"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_move_off_a_removed_endpoint_and_expire_when_idle() {
    let a = UdpBackend::start("a").await;
    let b = UdpBackend::start("b").await;
    let listen = udp_frontend();
    let dir = TempDir::new("udp-move");
    let config = dir.write("capstan.yaml", &udp_config(listen, &[a.addr, b.addr]));
    let capstan = Capstan::start(&["--config", path_str(&config), "--udp-idle-timeout", "300ms"]);
    capstan.wait_listening(listen);

    // Idle expiry: after the timeout the same client is balanced afresh (round-robin moves it).
    let one = client().await;
    let first = ask(&one, listen, "x").await.expect("reply");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let after_idle = ask(&one, listen, "x").await.expect("reply");
    assert_ne!(first, after_idle, "expired flow re-balanced");

    // Removing the flow's endpoint moves it on the very next datagram.
    let keep = if after_idle == "a" { b.addr } else { a.addr };
    let before = capstan.generation();
    dir.write("capstan.yaml", &udp_config(listen, &[keep]));
    eventually(Duration::from_secs(5), || {
        (capstan.generation() > before).then_some(())
    })
    .expect("reload");
    let moved = ask(&one, listen, "x").await.expect("reply");
    assert_ne!(moved, after_idle, "flow left the removed endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_without_endpoints_is_refused_with_port_unreachable() {
    let listen = udp_frontend();
    let dir = TempDir::new("udp-empty");
    let config = dir.write("capstan.yaml", &udp_config(listen, &[]));
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    // kube-proxy rejects UDP to a Service without endpoints with ICMP port unreachable: no
    // socket is bound, so the kernel answers, and a connected client sees ECONNREFUSED.
    capstan.wait_listener(listen, "refusing: no endpoints");
    let one = client().await;
    one.connect(listen).await.expect("connect");
    one.send(b"anyone?").await.expect("send");
    let mut buf = [0u8; 64];
    let error = tokio::time::timeout(Duration::from_secs(2), one.recv(&mut buf))
        .await
        .expect("an answer from the kernel")
        .expect_err("refused");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{error}"
    );
}

/// A UDP frontend on the wildcard address (a NodePort) answers each client from the address it
/// asked: on loopback the route back would pick 127.0.0.1 for every 127/8 address asked, and a
/// resolver or connected client drops such an answer (issue 18 item 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_udp_frontend_answers_from_the_address_asked() {
    let a = UdpBackend::start("a").await;
    let port = udp_frontend().port();
    let listen = SocketAddr::from(([0, 0, 0, 0], port));
    let dir = TempDir::new("udp-wildcard");
    let config = dir.write("capstan.yaml", &udp_config(listen, &[a.addr]));
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(listen);
    for _ in 0..3 {
        let asked = SocketAddr::new(unique_ip(), port);
        let client = client().await;
        // `ask` checks that the reply comes from `asked`.
        assert_eq!(
            ask(&client, asked, "hi").await.as_deref(),
            Some("a"),
            "{asked}"
        );
    }
}
