//! Test support: the real binary, real TCP backends, unique loopback addresses, temp files.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) mod chromium;
pub(crate) mod cluster;
pub(crate) mod docker_api;
pub(crate) mod kube_api;
pub(crate) mod netns;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

static NEXT: AtomicU32 = AtomicU32::new(1);

/// A loopback address no other test (or test process) uses: `127.x.y.z` from the pid and a
/// counter, so frontends never collide even when ports repeat.
pub(crate) fn unique_ip() -> IpAddr {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    IpAddr::V4(Ipv4Addr::new(
        127,
        100 + (pid % 100) as u8,
        ((pid / 100) % 250) as u8 + 1,
        (n % 250) as u8 + 1,
    ))
}

/// A port that was free on `ip` a moment ago (bind :0, read it, release it).
pub(crate) fn free_port(ip: IpAddr) -> u16 {
    let listener = std::net::TcpListener::bind((ip, 0)).expect("bind :0");
    listener.local_addr().expect("local addr").port()
}

/// A fresh frontend address: unique IP, free port.
pub(crate) fn frontend() -> SocketAddr {
    let ip = unique_ip();
    SocketAddr::new(ip, free_port(ip))
}

/// A temporary directory removed on drop.
/// Runs a test server's `future` on a thread of its own with a current-thread runtime, so it
/// serves whatever runtime (or none) the test itself uses.
pub(crate) fn on_own_thread(future: impl std::future::Future<Output = ()> + Send + 'static) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future);
    });
}

pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("capstan-e2e-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes atomically (write + rename), as editors and ConfigMap mounts do.
    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write temp file");
        std::fs::rename(&tmp, &path).expect("rename into place");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real `capstan` binary, killed on drop.
pub(crate) struct Capstan {
    child: Child,
    pub(crate) admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// Lines written to stdout (the access log).
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Capstan {
    /// Starts `capstan run ARGS --admin 127.0.0.1:0` and waits for the first snapshot.
    pub(crate) fn start(args: &[&str]) -> Self {
        let capstan = Self::spawn(args);
        capstan.wait_ready();
        capstan
    }

    /// Starts without waiting for readiness.
    pub(crate) fn spawn(args: &[&str]) -> Self {
        Self::launch(
            Command::new(env!("CARGO_BIN_EXE_capstan")),
            "127.0.0.1:0",
            args,
        )
    }

    /// Starts with `PATH` set to `path`, without waiting for readiness.
    pub(crate) fn spawn_with_path(path: &str, args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_capstan"));
        command.env("PATH", path);
        Self::launch(command, "127.0.0.1:0", args)
    }

    /// Starts inside network namespace `ns` with the admin endpoint on `admin` (an address of
    /// the namespace the test reaches), and waits for the first snapshot.
    pub(crate) fn start_in_netns(ns: &str, admin: IpAddr, args: &[&str]) -> Self {
        let capstan = Self::spawn_in_netns(ns, admin, args);
        capstan.wait_ready();
        capstan
    }

    /// Starts Capstan in `ns` without waiting for readiness.
    pub(crate) fn spawn_in_netns(ns: &str, admin: IpAddr, args: &[&str]) -> Self {
        let mut command = Command::new("ip");
        // `ip netns exec` enters the namespace and execs the binary: the child is Capstan.
        command.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_capstan")]);
        Self::launch(command, &SocketAddr::new(admin, 0).to_string(), args)
    }

    /// Polls `/readyz` every millisecond and returns as soon as it answers 200.
    pub(crate) fn wait_ready_closely(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http_get(self.admin, "/readyz").is_some_and(|(status, _)| status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("capstan never became ready:\n{}", self.logs());
    }

    fn launch(mut command: Command, admin: &str, args: &[&str]) -> Self {
        // DNS is on by default (port 53); tests that want it pass their own --dns.
        let dns_off: &[&str] = if args.contains(&"--dns") {
            &[]
        } else {
            &["--dns", "off"]
        };
        // So are the ingress listeners (ports 80 and 443).
        let http_off: &[&str] = if args.contains(&"--http") {
            &[]
        } else {
            &["--http", "off"]
        };
        let https_off: &[&str] = if args.contains(&"--https") {
            &[]
        } else {
            &["--https", "off"]
        };
        // And kube-proxy's endpoints (ports 10256 and 10249).
        let mut kube_proxy_off: Vec<&str> = Vec::new();
        for flag in ["--healthz", "--metrics", "--dns-metrics"] {
            if !args.contains(&flag) {
                kube_proxy_off.extend([flag, "off"]);
            }
        }
        let mut child = command
            .arg("run")
            .args(args)
            .args(&kube_proxy_off)
            .args(dns_off)
            .args(http_off)
            .args(https_off)
            .args(["--admin", admin, "--log", "info,capstan_proxy=debug"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn capstan");
        let stdout_pipe = child.stdout.take().expect("stdout");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out_sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout_pipe).lines().map_while(Result::ok) {
                out_sink.lock().expect("stdout").push(line);
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("admin listening addr=").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>().expect("admin addr"));
                }
                sink.lock().expect("logs").push(line);
            }
        });
        let admin = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "capstan did not report its admin address: {:?}",
                    logs.lock().map(|l| l.join("\n"))
                )
            });
        Self {
            child,
            admin,
            logs,
            stdout,
        }
    }

    /// The address a `"<what> listening addr=..."` log line reported.
    pub(crate) fn logged_addr(&self, what: &str) -> SocketAddr {
        let marker = format!("{what} listening addr=");
        eventually(Duration::from_secs(10), || {
            self.logs()
                .lines()
                .find_map(|l| l.split(&marker).nth(1).map(str::to_owned))
                .and_then(|a| a.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no {marker} in the logs:\n{}", self.logs()))
    }

    /// Resident memory of the process, in KiB (`VmRSS`).
    pub(crate) fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The soft and hard `Max open files` limits of the process.
    pub(crate) fn open_files_limits(&self) -> (String, String) {
        let limits =
            std::fs::read_to_string(format!("/proc/{}/limits", self.child.id())).expect("limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("open files line");
        let mut fields = line.split_whitespace().skip(3);
        (
            fields.next().unwrap_or_default().to_owned(),
            fields.next().unwrap_or_default().to_owned(),
        )
    }

    /// Every line Capstan wrote to stdout so far.
    pub(crate) fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout").clone()
    }

    /// The DNS server's address, from its log line.
    pub(crate) fn dns_addr(&self) -> SocketAddr {
        eventually(Duration::from_secs(10), || {
            let logs = self.logs();
            let line = logs.lines().find(|l| l.contains("dns listening addr="))?;
            line.split("addr=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no dns address in logs:\n{}", self.logs()))
    }

    /// The ingress listeners' addresses (`http`, `https`), from the log line.
    pub(crate) fn ingress_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        eventually(Duration::from_secs(10), || {
            let logs = self.logs();
            let line = logs.lines().find(|l| l.contains("ingress listening"))?;
            let field = |name: &str| {
                line.split(&format!("{name}="))
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            Some((field("http"), field("https")))
        })
        .unwrap_or_else(|| panic!("no ingress addresses in logs:\n{}", self.logs()))
    }

    pub(crate) fn logs(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }

    pub(crate) fn wait_ready(&self) {
        eventually(Duration::from_secs(20), || {
            http_get(self.admin, "/readyz")
                .is_some_and(|(status, _)| status == 200)
                .then_some(())
        })
        .unwrap_or_else(|| panic!("capstan never became ready:\n{}", self.logs()));
    }

    /// `/debug/snapshot` as JSON.
    pub(crate) fn snapshot(&self) -> Value {
        let (_, body) = http_get(self.admin, "/debug/snapshot").expect("debug/snapshot");
        serde_json::from_str(&body).expect("snapshot JSON")
    }

    pub(crate) fn generation(&self) -> u64 {
        self.snapshot()["generation"].as_u64().unwrap_or(0)
    }

    pub(crate) fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").expect("metrics").1
    }

    /// Waits until the snapshot satisfies `check`.
    pub(crate) fn wait_snapshot(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(Duration::from_secs(10), || {
            let snapshot = self.snapshot();
            check(&snapshot).then_some(snapshot)
        })
        .unwrap_or_else(|| {
            panic!(
                "snapshot never showed {what}: {:#}\n{}",
                self.snapshot(),
                self.logs()
            )
        })
    }

    /// Waits until `frontend` is listening.
    pub(crate) fn wait_listening(&self, frontend: SocketAddr) {
        self.wait_listener(frontend, "listening");
    }

    /// Waits until `frontend`'s listener is in `state` (`listening`, `refusing: no endpoints`…).
    pub(crate) fn wait_listener(&self, frontend: SocketAddr, state: &str) {
        let want = frontend.to_string();
        self.wait_snapshot(&format!("{want} {state}"), |s| {
            s["services"].as_array().into_iter().flatten().any(|svc| {
                svc["frontends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|f| f["address"] == want.as_str() && f["listener"] == state)
            })
        });
    }

    pub(crate) fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // Through the `kill` command: the tests need no syscall bindings of their own.
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Capstan {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `capstan ARGS` to completion: (exit status, stderr).
pub(crate) fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(args)
        .output()
        .expect("run capstan");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout),
    )
}

/// A minimal HTTP/1.0 GET against the admin endpoint: (status, body).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = StdTcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Polls `check` every 20 ms until it returns `Some` or `within` passes.
pub(crate) fn eventually<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP backend: greets every connection with `NAME\n`, then echoes until EOF, then closes.
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Backend {
    pub(crate) async fn start(name: &str) -> Self {
        Self::start_on(name, SocketAddr::new(unique_ip(), 0)).await
    }

    pub(crate) async fn start_on(name: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let greeting = format!("{name}\n");
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let greeting = greeting.clone();
                connections.spawn(async move {
                    if stream.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    let _ = write.shutdown().await;
                });
            }
        });
        Self { addr, task }
    }

    /// Stops listening and drops every connection: new connects are refused.
    pub(crate) fn kill(self) {
        self.task.abort();
    }
}

/// Connects to `frontend` (optionally from `source`) and reads the backend's greeting.
pub(crate) async fn greet(
    frontend: SocketAddr,
    source: Option<IpAddr>,
) -> std::io::Result<(TcpStream, String)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(frontend))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let mut name = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "greeting timed out")
            })??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before greeting",
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        name.push(byte[0]);
    }
    Ok((stream, String::from_utf8_lossy(&name).into_owned()))
}

/// One full exchange: greet, send a payload, half-close, read the echo to EOF. Returns the
/// backend's name.
pub(crate) async fn exchange(frontend: SocketAddr, payload: &[u8]) -> std::io::Result<String> {
    let (mut stream, name) = greet(frontend, None).await?;
    stream.write_all(payload).await?;
    stream.shutdown().await?;
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut echoed))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "echo timed out"))??;
    if echoed != payload {
        return Err(std::io::Error::other(format!(
            "echo mismatch: {} of {} bytes",
            echoed.len(),
            payload.len()
        )));
    }
    Ok(name)
}

/// A `capstan.yaml` with one service.
pub(crate) fn config_one(
    name: &str,
    listen: SocketAddr,
    backends: &[SocketAddr],
    extra: &str,
) -> String {
    let backends: Vec<String> = backends.iter().map(|b| format!("'{b}'")).collect();
    format!(
        "services:\n  {name}:\n    listen: '{listen}'\n    backends: [{}]\n{extra}",
        backends.join(", ")
    )
}

pub(crate) fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// oha loading `url` for `duration` with `connections` (`-w`: waits for in-flight requests at
/// the end) plus `extra` arguments; its JSON report on stdout.
pub(crate) fn spawn_oha(
    url: &str,
    duration: &str,
    connections: u32,
    extra: &[&str],
) -> std::process::Child {
    std::process::Command::new("oha")
        .args(["-z", duration, "-w", "-c", &connections.to_string()])
        .args(["--no-tui", "--output-format", "json"])
        .args(extra)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("oha (cargo install oha) is needed for this test")
}

/// Waits for oha and checks its report: more than `min` responses, every one 200, no connection
/// errors. Returns the number of responses.
pub(crate) fn oha_all_ok(oha: std::process::Child, min: u64) -> u64 {
    let output = oha.wait_with_output().expect("oha finished");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "oha JSON report: {e}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let codes = &report["statusCodeDistribution"];
    let ok = codes["200"].as_u64().unwrap_or(0);
    let total: u64 = codes
        .as_object()
        .map_or(0, |c| c.values().filter_map(|v| v.as_u64()).sum());
    assert!(ok > min, "load ran: {report:#}");
    assert_eq!(ok, total, "every response 200: {codes}");
    let errors = &report["errorDistribution"];
    assert!(
        errors.as_object().is_none_or(|e| e.is_empty()),
        "no connection errors: {errors}"
    );
    ok
}
