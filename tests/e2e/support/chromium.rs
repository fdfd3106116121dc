//! Headless Chromium driven over the DevTools protocol (a WebSocket per page): open a page,
//! evaluate JavaScript in it, take a screenshot. The browser is Debian's
//! `chromium-headless-shell` (or `chromium`), on a debugging port it picks itself.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::TempDir;

const BINARIES: &[&str] = &["chromium-headless-shell", "chromium", "google-chrome"];

pub(crate) struct Browser {
    child: Child,
    port: u16,
    _profile: TempDir,
}

impl Browser {
    /// Starts headless Chromium; panics naming the package when none is installed.
    pub(crate) fn start() -> Self {
        let binary = BINARIES
            .iter()
            .find(|b| {
                Command::new("sh")
                    .args(["-c", &format!("command -v {b}")])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .unwrap_or_else(|| {
                panic!("no headless Chromium: apt-get install chromium-headless-shell")
            });
        let profile = TempDir::new("chromium-profile");
        let child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1400,1000",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromium");
        // Chromium writes the port it chose to DevToolsActivePort in its profile.
        let active = profile.path("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&active)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok())
            {
                break port;
            }
            assert!(Instant::now() < deadline, "chromium did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            port,
            _profile: profile,
        }
    }

    /// Opens `url` in a new tab.
    pub(crate) async fn open(&self, url: &str) -> Page {
        // `PUT /json/new?URL` answers the new target, with its WebSocket address. (Chromium keeps
        // the connection open whatever the request says: curl reads by Content-Length.)
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", "-X", "PUT"])
            .arg(format!("http://127.0.0.1:{}/json/new?{url}", self.port))
            .output()
            .expect("run curl");
        let body = String::from_utf8_lossy(&out.stdout);
        let target: Value = serde_json::from_str(&body).expect("target JSON");
        let ws = target["webSocketDebuggerUrl"].as_str().expect("ws url");
        let (socket, _) = tokio_tungstenite::connect_async(ws)
            .await
            .expect("devtools websocket");
        Page { socket, next: 0 }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Page {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

impl Page {
    /// One DevTools command; its `result` (events in between are skipped).
    pub(crate) async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let command = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .expect("send");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .expect("devtools answer in time")
                .expect("open")
                .expect("message");
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value["id"] == json!(id) {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    pub(crate) async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// The page's visible text.
    pub(crate) async fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the visible text contains `needle`; the text at that time.
    pub(crate) async fn wait_text(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.text().await;
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {needle:?}; it shows:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A PNG of the whole page, written to `path`.
    pub(crate) async fn screenshot(&mut self, path: &Path) {
        let result = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = capstan_table::base64_decode(result["data"].as_str().expect("data"))
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("artifact dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}
