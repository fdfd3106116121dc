//! The live admin page at the admin address `/`, in headless Chromium: it loads from the binary
//! alone, shows Services, routes with their request rate, DNS and the sources, and follows
//! changes while it stays open: a Service added, a file rejected with its line. A screenshot is
//! kept in `target/artifacts/admin-page.png`.

use std::path::PathBuf;
use std::time::Duration;

use crate::http_support::{DEFAULT_CLASS, HttpBackend, curl, ingress, service};
use crate::support::chromium::Browser;
use crate::support::{Capstan, TempDir, http_get, path_str};

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/artifacts")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_shows_the_snapshot_live_in_a_browser() {
    let web = HttpBackend::start("web-1");
    let dir = TempDir::new("admin-page");
    dir.write("class.yaml", DEFAULT_CLASS);
    dir.write(
        "web.yaml",
        &(service("web", &[web.addr], None)
            + &ingress("web", &[("web.example", "/", "Prefix", "web")], &[])),
    );
    let capstan = Capstan::start(&[
        "--manifests",
        path_str(&dir.0),
        "--http",
        "127.0.0.1:0",
        "--dns",
        "127.0.0.1:0",
    ]);
    let (http, _) = capstan.ingress_addrs();
    let http = http.expect("http listener");

    // The page itself: one HTML document that loads nothing from elsewhere.
    let (status, html) = http_get(capstan.admin, "/").expect("admin page");
    assert_eq!(status, 200);
    assert!(html.contains("<title>Capstan</title>"));
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("src="),
        "no external assets"
    );

    let browser = Browser::start();
    let mut page = browser.open(&format!("http://{}/", capstan.admin)).await;
    let text = page
        .wait_text("demo/web:http", Duration::from_secs(20))
        .await;
    assert!(text.contains("web.example"), "the route is shown:\n{text}");
    assert!(text.contains("all input accepted"), "{text}");

    // Traffic on the route shows up as a request rate within a few polls.
    let url = format!("http://{http}/");
    let load = tokio::task::spawn_blocking(move || {
        for _ in 0..40 {
            let _ = curl(&["-H", "Host: web.example", &url]);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let rate_shown = "(() => [...document.querySelectorAll('#routes tr')].some(tr => \
        tr.innerText.includes('web.example') && /[1-9][0-9.]*\\/s/.test(tr.innerText)))()";
    let mut shown = false;
    for _ in 0..50 {
        if page.eval(rate_shown).await == serde_json::json!(true) {
            shown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    load.await.expect("load");
    assert!(
        shown,
        "no request rate on the route:\n{}",
        page.text().await
    );

    // A Service added while the page is open appears without a reload.
    let added = HttpBackend::start("added-1");
    dir.write("added.yaml", &service("added", &[added.addr], None));
    page.wait_text("demo/added:http", Duration::from_secs(20))
        .await;

    // A rejected file is shown with its file and line; the rest keeps serving.
    dir.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x\n",
    );
    let text = page
        .wait_text("broken.yaml:", Duration::from_secs(20))
        .await;
    assert!(text.contains("input rejected"), "{text}");
    assert!(text.contains("demo/added:http"), "{text}");

    let shot = artifact("admin-page.png");
    page.screenshot(&shot).await;
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    eprintln!("admin page screenshot: {}", shot.display());
}
