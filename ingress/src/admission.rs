//! A route's admission rules, checked before any endpoint is chosen: source allow-list (403),
//! declared body size (413), route-wide and per-client token buckets (429 with `Retry-After`).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use capstan_table::{CLIENT_LIMITERS_SWEEP_AT, Gcra, Route};

/// Why a request was turned away by its route's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The client is outside `allow-source-ranges`.
    Forbidden,
    /// The body is larger than `max-body-size`.
    TooLarge,
    /// The body broke off or took too long while it was being buffered.
    BodyUnreadable,
    /// A rate limit is spent; a request would be admitted after this long.
    RateLimited(Duration),
}

/// Checks `route`'s policy for a request from `client` declaring `body_length` bytes (`None`:
/// unknown yet). Counts each refusal on the route.
pub(crate) fn admit(
    route: &Route,
    client: IpAddr,
    body_length: Option<u64>,
    now_us: u64,
) -> Result<(), Refused> {
    let policy = &route.policy;
    let state = &route.state;
    if let Some(ranges) = &policy.allow_sources {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        if !ranges.iter().any(|range| range.contains(&client)) {
            state.source_denied.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Forbidden);
        }
    }
    if let (Some(max), Some(length)) = (policy.max_body_bytes, body_length)
        && length > max
    {
        state.body_too_large.fetch_add(1, Ordering::Relaxed);
        return Err(Refused::TooLarge);
    }
    if let Some(limit) = &policy.client_rate_limit {
        let limiters = state.client_limiters.pin();
        if limiters.len() >= CLIENT_LIMITERS_SWEEP_AT {
            limiters.retain(|_, gcra| !gcra.is_idle(now_us));
        }
        let gcra = limiters.get_or_insert_with(client, Gcra::default);
        if let Err(wait) = gcra.admit(limit, now_us) {
            state.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::RateLimited(wait));
        }
    }
    if let Some(limit) = &policy.rate_limit
        && let Err(wait) = state.limiter.admit(limit, now_us)
    {
        state.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err(Refused::RateLimited(wait));
    }
    Ok(())
}

/// `Retry-After` in whole seconds, rounded up (at least 1).
pub(crate) fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}
