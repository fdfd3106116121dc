//! `RequestMirror` (Gateway API, `HTTPRequestMirrorFilter`): a copy of the request, as it goes
//! upstream (filters applied), sent to another backend whose answer is read and dropped. The
//! client's request never waits for, nor fails with, a mirror.
//!
//! The copy needs the body twice, so a mirrored request's body is buffered when its declared
//! length is within the route's body limit (`retry-body-limit`, 64 KiB by default), as Envoy
//! buffered shadowed bodies; a longer or unannounced (chunked) body is forwarded streamed and
//! not mirrored (counted on the mirror route as `mirror_skipped`). Outcomes are counted on the
//! mirror's own route (`rules[N].filters[M].requestMirror`): responses by class, errors,
//! timeouts.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use capstan_proxy::{balance, now_ms};
use capstan_table::{HttpAction, Route, UpstreamProtocol, status_class};
use http::{Request, Uri, Version};
use http_body::Body;

use super::Forwarder;
use crate::body::RequestBody;

/// The mirrors of `action` this request goes to: each resolved one, with its probability.
pub(super) fn chosen(action: &HttpAction) -> Vec<Arc<Route>> {
    action
        .mirrors
        .iter()
        .filter(|m| {
            takes(
                m.numerator,
                m.denominator,
                fastrand::u32(..m.denominator.max(1)),
            )
        })
        .filter_map(|m| m.route.clone())
        .collect()
}

/// Whether a uniform `draw` in `0..denominator` falls in the mirrored `numerator` of it.
fn takes(numerator: u32, denominator: u32, draw: u32) -> bool {
    numerator > 0 && draw < numerator.min(denominator.max(1))
}

impl Forwarder {
    /// Sends a copy of the request (`parts` as rewritten for the upstream, `body` whole; `None`:
    /// the body was streamed and cannot be copied) to each mirror, in the background.
    pub(super) fn mirror(
        &self,
        mirrors: Vec<Arc<Route>>,
        parts: &http::request::Parts,
        body: Option<Option<Bytes>>,
        client: IpAddr,
    ) {
        let Some(body) = body else {
            for route in &mirrors {
                route.state.mirror_skipped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut rng = fastrand::Rng::new();
        let policy = self.shared.config.balance;
        for route in mirrors {
            let Some(upstream) = route.upstream.clone() else {
                continue;
            };
            let eligible = &upstream.internal.endpoints;
            let chosen =
                balance::choose_with(policy, &upstream, eligible, client, &[], now_ms(), &mut rng);
            let Some(endpoint) = chosen else {
                route.stats.no_endpoints.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let Ok(uri) = Uri::try_from(format!("http://{}{target}", endpoint.addr)) else {
                continue;
            };
            let mut request = Request::new(match &body {
                Some(bytes) => RequestBody::Full(Some(bytes.clone())),
                None => RequestBody::Empty,
            });
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = uri;
            *request.headers_mut() = parts.headers.clone();
            let client = match route.protocol {
                UpstreamProtocol::Http1 => {
                    *request.version_mut() = Version::HTTP_11;
                    self.http1.clone()
                }
                UpstreamProtocol::Http2 => {
                    *request.version_mut() = Version::HTTP_2;
                    self.h2c.clone()
                }
            };
            let timeout = route
                .policy
                .request_timeout
                .unwrap_or(self.shared.config.request_timeout);
            tokio::spawn(async move {
                let exchange = async {
                    let response = client.request(request).await?;
                    let status = response.status();
                    let mut body = response.into_body();
                    while let Some(Ok(_)) =
                        std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                    {
                    }
                    Ok::<_, hyper_util::client::legacy::Error>(status)
                };
                let stats = &route.stats;
                match tokio::time::timeout(timeout, exchange).await {
                    Ok(Ok(status)) => {
                        stats.responses[status_class(status.as_u16())]
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => {
                        stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        stats.upstream_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::takes;

    /// `percent: 20` and `fraction: 25/50` over 10,000 draws, within 2 points; 0 never, 1/1
    /// always.
    #[test]
    fn mirrored_share_follows_the_fraction() {
        for (numerator, denominator, share) in [(20, 100, 0.2), (25, 50, 0.5)] {
            let taken = (0..10_000)
                .filter(|_| takes(numerator, denominator, fastrand::u32(..denominator)))
                .count();
            let got = taken as f64 / 10_000.0;
            assert!(
                (got - share).abs() < 0.02,
                "{numerator}/{denominator}: {got}"
            );
        }
        assert!(!takes(0, 100, 0));
        assert!(takes(1, 1, 0));
    }
}
