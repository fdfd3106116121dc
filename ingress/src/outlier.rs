//! Passive outlier detection on responses (Envoy's `consecutive_5xx` and
//! `consecutive_gateway_failure`), bounded by the Service's `max_ejection_percent`.

use std::sync::atomic::Ordering;

use capstan_table::{Endpoint, ServicePortTable};

/// What one attempt at an endpoint ended with, as outlier detection counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Observed {
    /// A response head with this status.
    Status(u16),
    /// The exchange broke or timed out after connecting: a gateway error.
    Broken,
}

/// Counts `observed` on `endpoint` and ejects it when a threshold of `port`'s outlier policy is
/// reached. Returns whether it was ejected.
pub(crate) fn record(
    endpoint: &Endpoint,
    port: &ServicePortTable,
    observed: Observed,
    now_ms: u64,
) -> bool {
    let stats = &endpoint.stats;
    let (server_error, gateway_error) = match observed {
        Observed::Status(status) => (status >= 500, matches!(status, 502..=504)),
        Observed::Broken => (false, true),
    };
    if !server_error && !gateway_error {
        stats.consecutive_5xx.store(0, Ordering::Relaxed);
        stats.consecutive_gateway_errors.store(0, Ordering::Relaxed);
        stats.record_success();
        return false;
    }
    let bump = |counter: &std::sync::atomic::AtomicU32, on: bool| {
        if on {
            counter.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            counter.store(0, Ordering::Relaxed);
            0
        }
    };
    let fives = bump(&stats.consecutive_5xx, server_error);
    let gateways = bump(&stats.consecutive_gateway_errors, gateway_error);
    let policy = port.outlier;
    let reached = policy.consecutive_5xx.is_some_and(|n| fives >= n)
        || policy
            .consecutive_gateway_errors
            .is_some_and(|n| gateways >= n);
    if !reached || stats.is_ejected(now_ms) || !room_to_eject(port, now_ms) {
        return false;
    }
    stats.eject_outlier(now_ms, &port.timeouts);
    true
}

/// Whether one more endpoint of `port` may be ejected: at most `max_ejection_percent` of them
/// at once, but always at least one (Envoy's rule).
fn room_to_eject(port: &ServicePortTable, now_ms: u64) -> bool {
    let total = port.endpoints.len();
    let ejected = port
        .endpoints
        .iter()
        .filter(|e| e.stats.is_ejected(now_ms))
        .count();
    ejected == 0 || (ejected + 1) * 100 <= usize::from(port.outlier.max_ejection_percent) * total
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use capstan_table::{OutlierPolicy, Protocol, ServiceKey, ServicePortKey};

    use super::*;

    fn port(n: usize, outlier: OutlierPolicy) -> ServicePortTable {
        let endpoints: Arc<[Arc<Endpoint>]> = (0..n)
            .map(|i| {
                Arc::new(Endpoint::ready(SocketAddr::from((
                    [10, 0, 0, i as u8 + 1],
                    80,
                ))))
            })
            .collect();
        let key = ServicePortKey {
            service: ServiceKey::new("default", "web"),
            port_name: "".into(),
            protocol: Protocol::Tcp,
        };
        ServicePortTable {
            outlier,
            ..ServicePortTable::with_endpoints(key, endpoints)
        }
    }

    #[test]
    fn consecutive_5xx_eject_and_any_success_resets_the_count() {
        let policy = OutlierPolicy {
            consecutive_5xx: Some(3),
            consecutive_gateway_errors: None,
            max_ejection_percent: 100,
        };
        let port = port(2, policy);
        let e = &port.endpoints[0];
        assert!(!record(e, &port, Observed::Status(500), 1_000));
        assert!(!record(e, &port, Observed::Status(503), 1_000));
        assert!(!record(e, &port, Observed::Status(200), 1_000), "reset");
        assert!(!record(e, &port, Observed::Status(500), 1_000));
        assert!(!record(e, &port, Observed::Status(500), 1_000));
        assert!(
            record(e, &port, Observed::Status(500), 1_000),
            "third in a row"
        );
        assert!(e.stats.is_ejected(1_500));
        assert!(!e.stats.is_ejected(1_000 + 1_000), "the 1 s base ejection");
        assert_eq!(e.stats.outlier_ejections.load(Ordering::Relaxed), 1);
        // A broken exchange is a gateway error, not a 5xx.
        assert!(!record(e, &port, Observed::Broken, 5_000));
        assert_eq!(e.stats.consecutive_5xx.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn gateway_errors_count_separately() {
        let policy = OutlierPolicy {
            consecutive_5xx: None,
            consecutive_gateway_errors: Some(2),
            max_ejection_percent: 100,
        };
        let port = port(2, policy);
        let e = &port.endpoints[0];
        assert!(!record(e, &port, Observed::Status(500), 1_000));
        assert!(!record(e, &port, Observed::Status(502), 1_000));
        assert!(record(e, &port, Observed::Broken, 1_000));
    }

    #[test]
    fn max_ejection_percent_caps_ejections_but_allows_one() {
        let policy = OutlierPolicy {
            consecutive_5xx: Some(1),
            consecutive_gateway_errors: None,
            max_ejection_percent: 10,
        };
        let port = port(4, policy);
        assert!(record(
            &port.endpoints[0],
            &port,
            Observed::Status(500),
            1_000
        ));
        assert!(
            !record(&port.endpoints[1], &port, Observed::Status(500), 1_000),
            "10 % of 4 is less than two"
        );
        let wide = self::port(
            4,
            OutlierPolicy {
                max_ejection_percent: 50,
                ..policy
            },
        );
        assert!(record(
            &wide.endpoints[0],
            &wide,
            Observed::Status(500),
            1_000
        ));
        assert!(record(
            &wide.endpoints[1],
            &wide,
            Observed::Status(500),
            1_000
        ));
        assert!(!record(
            &wide.endpoints[2],
            &wide,
            Observed::Status(500),
            1_000
        ));
    }
}
