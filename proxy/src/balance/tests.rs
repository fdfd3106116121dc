use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use capstan_table::{
    BalancePolicy, Endpoint, Protocol, ServiceKey, ServicePortKey, ServicePortTable,
};
use proptest::prelude::*;

use super::choose;

fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| {
            Arc::new(Endpoint::ready(SocketAddr::from((
                [10, 0, 0, i as u8 + 1],
                80,
            ))))
        })
        .collect()
}

fn port(
    policy: BalancePolicy,
    affinity: Option<Duration>,
    eps: &[Arc<Endpoint>],
) -> ServicePortTable {
    let key = ServicePortKey {
        service: ServiceKey::new("default", "web"),
        port_name: "".into(),
        protocol: Protocol::Tcp,
    };
    ServicePortTable {
        policy,
        affinity,
        ..ServicePortTable::with_endpoints(key, eps.to_vec().into())
    }
}

fn client(last: u8) -> IpAddr {
    IpAddr::from([192, 168, 0, last])
}

fn counts(
    port: &ServicePortTable,
    eps: &[Arc<Endpoint>],
    n: usize,
    seed: u64,
) -> BTreeMap<SocketAddr, usize> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let e = choose(port, eps, client((i % 250) as u8), &[], 1_000, &mut rng).expect("endpoint");
        *seen.entry(e.addr).or_default() += 1;
    }
    seen
}

#[test]
fn round_robin_visits_every_endpoint_in_turn() {
    let eps = endpoints(3);
    let port = port(BalancePolicy::RoundRobin, None, &eps);
    let seen = counts(&port, &eps, 300, 1);
    assert_eq!(seen.values().copied().collect::<Vec<_>>(), [100, 100, 100]);
}

#[test]
fn random_spreads_over_every_endpoint() {
    let eps = endpoints(3);
    let port = port(BalancePolicy::Random, None, &eps);
    let seen = counts(&port, &eps, 3_000, 7);
    assert_eq!(seen.len(), 3);
    assert!(seen.values().all(|&c| c > 800), "{seen:?}");
}

#[test]
fn least_connections_avoids_the_loaded_endpoint() {
    let eps = endpoints(3);
    eps[0].stats.in_flight.store(100, Ordering::Relaxed);
    let port = port(BalancePolicy::LeastConnections, None, &eps);
    let seen = counts(&port, &eps, 1_000, 3);
    assert_eq!(
        seen.get(&eps[0].addr),
        None,
        "p2c never prefers a busier endpoint: {seen:?}"
    );
}

#[test]
fn peak_ewma_prefers_the_fast_endpoint_until_it_queues() {
    let eps = endpoints(2);
    eps[0]
        .stats
        .record_latency(Duration::from_millis(10), 1_000);
    eps[1].stats.record_latency(Duration::from_millis(1), 1_000);
    let port = port(BalancePolicy::PeakEwma, None, &eps);
    let seen = counts(&port, &eps, 1_000, 5);
    let slow = seen.get(&eps[0].addr).copied().unwrap_or(0);
    assert!(
        (1..=70).contains(&slow),
        "the slow one loses except for probes (1 in 16 × half): {seen:?}"
    );
    // Twelve requests queued on the fast endpoint cost more than one slow idle slot.
    eps[1].stats.in_flight.store(12, Ordering::Relaxed);
    let seen = counts(&port, &eps, 1_000, 5);
    let fast = seen.get(&eps[1].addr).copied().unwrap_or(0);
    assert!(fast <= 70, "now the fast one is busy: {seen:?}");
}

#[test]
fn peak_ewma_without_samples_balances_on_in_flight() {
    let eps = endpoints(2);
    eps[0].stats.record_latency(Duration::from_millis(1), 1_000);
    eps[0].stats.in_flight.store(3, Ordering::Relaxed);
    let port = port(BalancePolicy::PeakEwma, None, &eps);
    let seen = counts(&port, &eps, 1_000, 9);
    assert!(
        seen.get(&eps[1].addr).copied().unwrap_or(0) > 900,
        "the unsampled idle endpoint gets the traffic: {seen:?}"
    );
    // Idle and unsampled against idle and sampled: a neutral start, an even split.
    eps[0].stats.in_flight.store(0, Ordering::Relaxed);
    let seen = counts(&port, &eps, 1_000, 9);
    assert!(seen.values().all(|&c| c > 400), "{seen:?}");
}

#[test]
fn ejected_endpoints_are_skipped_until_all_are_ejected() {
    let eps = endpoints(3);
    eps[1]
        .stats
        .ejected_until_ms
        .store(5_000, Ordering::Relaxed);
    let port = port(BalancePolicy::Random, None, &eps);
    let seen = counts(&port, &eps, 500, 5);
    assert!(!seen.contains_key(&eps[1].addr));
    for e in &eps {
        e.stats.ejected_until_ms.store(5_000, Ordering::Relaxed);
    }
    assert_eq!(
        counts(&port, &eps, 500, 5).len(),
        3,
        "panic mode: all ejected means none is"
    );
}

#[test]
fn tried_endpoints_are_never_chosen_again() {
    let eps = endpoints(3);
    let port = port(BalancePolicy::RoundRobin, None, &eps);
    let mut rng = fastrand::Rng::with_seed(1);
    let tried = [eps[0].addr, eps[2].addr];
    for _ in 0..20 {
        let e = choose(&port, &eps, client(1), &tried, 1, &mut rng).expect("one left");
        assert_eq!(e.addr, eps[1].addr);
    }
    let all: Vec<_> = eps.iter().map(|e| e.addr).collect();
    assert!(choose(&port, &eps, client(1), &all, 1, &mut rng).is_none());
    assert!(choose(&port, &[], client(1), &[], 1, &mut rng).is_none());
}

#[test]
fn client_ip_affinity_sticks_until_timeout() {
    let eps = endpoints(5);
    let port = port(BalancePolicy::Random, Some(Duration::from_secs(10)), &eps);
    let mut rng = fastrand::Rng::with_seed(9);
    let first = choose(&port, &eps, client(1), &[], 1_000, &mut rng).expect("endpoint");
    for t in 0..50 {
        let again =
            choose(&port, &eps, client(1), &[], 1_000 + t * 200, &mut rng).expect("endpoint");
        assert_eq!(
            again.addr, first.addr,
            "sticky while used within the timeout"
        );
    }
    // After 10 s of silence the entry has expired: over many clients some move.
    let mut moved = 0;
    for c in 2..40 {
        let a = choose(&port, &eps, client(c), &[], 100_000, &mut rng).expect("endpoint");
        let b = choose(&port, &eps, client(c), &[], 200_000, &mut rng).expect("endpoint");
        moved += usize::from(a.addr != b.addr);
    }
    assert!(moved > 0);
}

#[test]
fn affinity_moves_off_an_ejected_endpoint() {
    let eps = endpoints(2);
    let port = port(BalancePolicy::Random, Some(Duration::from_secs(10)), &eps);
    let mut rng = fastrand::Rng::with_seed(2);
    let first = choose(&port, &eps, client(1), &[], 1_000, &mut rng).expect("endpoint");
    first.stats.ejected_until_ms.store(9_000, Ordering::Relaxed);
    let next = choose(&port, &eps, client(1), &[], 1_100, &mut rng).expect("endpoint");
    assert_ne!(next.addr, first.addr);
    let later = choose(&port, &eps, client(1), &[], 9_500, &mut rng).expect("endpoint");
    assert_eq!(later.addr, next.addr, "affinity follows the new choice");
}

/// Sequential requests on one connection: each pick waits for the chosen endpoint's latency
/// (its `base` in ms, or `first` for its very first answer) and records it. Returns picks per
/// endpoint.
fn simulate(latencies: &[(u64, u64)], picks: usize, seed: u64) -> Vec<usize> {
    let eps = endpoints(latencies.len());
    let port = port(BalancePolicy::PeakEwma, None, &eps);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut now = 1_000;
    let mut seen = vec![0; eps.len()];
    for _ in 0..picks {
        let e = choose(&port, &eps, client(1), &[], now, &mut rng).expect("endpoint");
        let i = eps.iter().position(|x| x.addr == e.addr).expect("known");
        let (base, first) = latencies[i];
        let took = if seen[i] == 0 { first } else { base };
        now += took;
        e.stats.record_latency(Duration::from_millis(took), now);
        seen[i] += 1;
    }
    seen
}

#[test]
fn one_slow_first_answer_does_not_starve_an_endpoint() {
    // The case: three equal endpoints, one of which answered its first request slower
    // (a connect, a cold cache). 600 sequential requests reach all three, repeatedly.
    for seed in 0..20 {
        let seen = simulate(&[(1, 1), (1, 1), (1, 5)], 600, seed);
        assert!(seen.iter().all(|&c| c >= 5), "seed {seed}: {seen:?}");
    }
}

#[test]
fn new_endpoints_get_requests_at_once() {
    // 1 → 10: the old endpoint has a warm estimate, nine are new; within 100 picks every one of
    // them is chosen.
    let eps = endpoints(10);
    eps[0].stats.record_latency(Duration::from_millis(1), 1_000);
    let port = port(BalancePolicy::PeakEwma, None, &eps);
    for seed in 0..20 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut now = 1_000;
        for _ in 0..100 {
            let e = choose(&port, &eps, client(1), &[], now, &mut rng).expect("endpoint");
            now += 1;
            e.stats.record_latency(Duration::from_millis(1), now);
        }
        let never: Vec<_> = eps
            .iter()
            .filter(|e| e.stats.latency_ewma_us.load(Ordering::Relaxed) == 0)
            .collect();
        assert!(
            never.is_empty(),
            "seed {seed}: {} never chosen",
            never.len()
        );
    }
}

fn arb_policy() -> impl Strategy<Value = BalancePolicy> {
    prop_oneof![
        Just(BalancePolicy::Random),
        Just(BalancePolicy::RoundRobin),
        Just(BalancePolicy::LeastConnections),
        Just(BalancePolicy::PeakEwma),
    ]
}

proptest! {
    /// Over 1,000 sequential picks with per-endpoint latencies of 1–50 ms, every endpoint is
    /// chosen, and the slowest, when at least twice as slow as the fastest, gets less than its
    /// fair share and less than the fastest. (P2C ranks: an endpoint wins only against slower
    /// ones, so the slowest wins only probes.)
    #[test]
    fn peak_ewma_starves_no_endpoint_and_favours_fast_ones(
        latencies in proptest::collection::vec(1u64..50, 2..8),
        seed in any::<u64>(),
    ) {
        let paired: Vec<_> = latencies.iter().map(|&l| (l, l)).collect();
        let seen = simulate(&paired, 1_000, seed);
        prop_assert!(seen.iter().all(|&c| c > 0), "{latencies:?} → {seen:?}");
        let fastest = (0..latencies.len()).min_by_key(|&i| latencies[i]).expect("some");
        let slowest = (0..latencies.len()).max_by_key(|&i| latencies[i]).expect("some");
        let strictly = latencies.iter().filter(|&&l| l == latencies[slowest]).count() == 1;
        if strictly && latencies[slowest] >= 2 * latencies[fastest] {
            prop_assert!(seen[slowest] < seen[fastest], "{latencies:?} → {seen:?}");
            prop_assert!(seen[slowest] < 1_000 / latencies.len(), "{latencies:?} → {seen:?}");
        }
    }

    #[test]
    fn choice_is_always_an_eligible_untried_endpoint(
        n in 0usize..8,
        ejected in proptest::collection::vec(any::<bool>(), 8),
        tried_mask in proptest::collection::vec(any::<bool>(), 8),
        policy in arb_policy(),
        affinity in any::<bool>(),
        seed in any::<u64>(),
        client_last in any::<u8>(),
    ) {
        let eps = endpoints(n);
        for (e, ej) in eps.iter().zip(&ejected) {
            if *ej { e.stats.ejected_until_ms.store(10_000, Ordering::Relaxed); }
        }
        let tried: Vec<_> = eps.iter().zip(&tried_mask).filter(|(_, t)| **t).map(|(e, _)| e.addr).collect();
        let port = port(policy, affinity.then(|| Duration::from_secs(5)), &eps);
        let mut rng = fastrand::Rng::with_seed(seed);
        let chosen = choose(&port, &eps, client(client_last), &tried, 1_000, &mut rng);
        let untried: Vec<_> = eps.iter().filter(|e| !tried.contains(&e.addr)).collect();
        match chosen {
            None => prop_assert!(untried.is_empty()),
            Some(e) => {
                prop_assert!(untried.iter().any(|u| u.addr == e.addr));
                let healthy_left = untried.iter().any(|u| !u.stats.is_ejected(1_000));
                if healthy_left {
                    prop_assert!(!e.stats.is_ejected(1_000), "an ejected endpoint only when nothing healthy is left");
                }
            }
        }
    }
}
