//! CoreDNS's HTTP endpoints, so that scrapers and probes written for CoreDNS work unchanged when
//! Capstan answers cluster DNS: `--dns-metrics` (default `0.0.0.0:9153`, CoreDNS's
//! `prometheus :9153`) serves `/metrics` with CoreDNS's names ([`crate::telemetry::coredns`]),
//! `/health` as the *health* plugin answers it (200 `OK` while the process runs) and `/ready` as
//! the *ready* plugin does (200 `OK` once the first snapshot is served; before, 503 naming the
//! plugin not ready, `kubernetes`).

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::kube_proxy::{SyncClock, serve_http};

/// Serves `/metrics`, `/health` and `/ready` on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    clock: Arc<SyncClock>,
    shutdown: CancellationToken,
) {
    serve_http(listener, shutdown, move |request| {
        match request.uri().path() {
            "/metrics" => {
                let mut text = String::new();
                if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
                    text.clear();
                }
                Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(text)))
                    .unwrap_or_default()
            }
            "/health" => text(StatusCode::OK, "OK"),
            "/ready" if clock.has_published() => text(StatusCode::OK, "OK"),
            "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "kubernetes"),
            _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    })
    .await;
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}
