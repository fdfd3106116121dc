//! Endpoint choice: a pure function of the eligible set, the port's carried state, the client,
//! the time and a random source.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use capstan_table::{AffinityEntry, BalancePolicy, Endpoint, ServicePortTable};

/// Affinity entries past which a choice also sweeps expired ones.
const AFFINITY_SWEEP_AT: usize = 4096;
/// An affinity entry's last use is recorded at this granularity.
const AFFINITY_REFRESH_MS: u64 = 1_000;

/// Chooses an endpoint of `eligible` for a connection from `client`.
///
/// Endpoints in `tried` (this connection's failed attempts) are skipped. Ejected and unhealthy
/// endpoints are skipped unless every remaining one is (see `Candidates::new`).
/// `sessionAffinity: ClientIP` returns the client's previous endpoint while it is eligible and
/// the entry has not expired.
pub fn choose(
    port: &ServicePortTable,
    eligible: &[Arc<Endpoint>],
    client: IpAddr,
    tried: &[SocketAddr],
    now_ms: u64,
    rng: &mut fastrand::Rng,
) -> Option<Arc<Endpoint>> {
    choose_with(port.policy, port, eligible, client, tried, now_ms, rng)
}

/// [`choose`] with a policy other than the port's own (the ingress plane's `--ingress-balance`).
pub fn choose_with(
    policy: BalancePolicy,
    port: &ServicePortTable,
    eligible: &[Arc<Endpoint>],
    client: IpAddr,
    tried: &[SocketAddr],
    now_ms: u64,
    rng: &mut fastrand::Rng,
) -> Option<Arc<Endpoint>> {
    let candidates = Candidates::new(eligible, tried, now_ms);
    if candidates.is_empty() {
        return None;
    }

    let affinity = port.affinity.map(|timeout| {
        let timeout_ms = capstan_table::millis(timeout);
        (port.state.affinity().pin(), timeout_ms)
    });
    if let Some((table, timeout_ms)) = &affinity
        && let Some(entry) = table.get(&client)
        && now_ms.saturating_sub(entry.last_used_ms) <= *timeout_ms
        && let Some(endpoint) = candidates.find(entry.endpoint)
    {
        // Refresh the entry at most once a second: timeouts are in seconds, and an insert
        // allocates.
        if now_ms.saturating_sub(entry.last_used_ms) >= AFFINITY_REFRESH_MS {
            table.insert(client, entry_for(endpoint.addr, now_ms));
        }
        return Some(Arc::clone(endpoint));
    }

    let chosen = match policy {
        BalancePolicy::Random => candidates.get(rng.usize(..candidates.len())),
        BalancePolicy::RoundRobin => {
            let next = port.state.round_robin.fetch_add(1, Ordering::Relaxed);
            candidates.get(next % candidates.len())
        }
        BalancePolicy::LeastConnections => power_of_two(&candidates, rng, now_ms, in_flight, false),
        BalancePolicy::PeakEwma => power_of_two(&candidates, rng, now_ms, peak_ewma_cost, true),
    };
    if let Some((table, timeout_ms)) = &affinity {
        if table.len() >= AFFINITY_SWEEP_AT {
            table.retain(|_, e| now_ms.saturating_sub(e.last_used_ms) <= *timeout_ms);
        }
        table.insert(client, entry_for(chosen.addr, now_ms));
    }
    Some(Arc::clone(chosen))
}

/// One choice in this many between two endpoints takes the one whose latency was sampled longest
/// ago, whatever the costs say. Decay alone cannot save an endpoint on a busy keep-alive
/// connection: 600 requests may take 100 ms, far less than the decay's τ. The probe bounds a
/// slow endpoint's share to about `1 / (PROBE_ONE_IN × endpoints)` while making sure every
/// endpoint keeps being measured.
const PROBE_ONE_IN: u32 = 16;

/// Two distinct random candidates; the one with the lower `cost` wins (ties: the first). With
/// `probe`, one choice in [`PROBE_ONE_IN`] takes the one whose latency was sampled longest ago.
fn power_of_two<'a>(
    candidates: &Candidates<'a>,
    rng: &mut fastrand::Rng,
    now_ms: u64,
    cost: fn(&Endpoint, &Endpoint, u64) -> (u64, u64),
    probe: bool,
) -> &'a Arc<Endpoint> {
    if candidates.len() == 1 {
        return candidates.get(0);
    }
    let a = rng.usize(..candidates.len());
    let mut b = rng.usize(..candidates.len() - 1);
    if b >= a {
        b += 1;
    }
    let (a, b) = (candidates.get(a), candidates.get(b));
    if probe && rng.u32(..PROBE_ONE_IN) == 0 {
        let observed = |e: &Endpoint| e.stats.latency_observed_ms.load(Ordering::Relaxed);
        return if observed(b) < observed(a) { b } else { a };
    }
    let (cost_a, cost_b) = cost(a, b, now_ms);
    if cost_b < cost_a { b } else { a }
}

fn in_flight(a: &Endpoint, b: &Endpoint, _now_ms: u64) -> (u64, u64) {
    let load = |e: &Endpoint| e.stats.in_flight.load(Ordering::Relaxed);
    (load(a), load(b))
}

/// `(in-flight + 1) × latency estimate`, the estimate decayed with the time since its last
/// sample. An endpoint without a sample yet (new) is given its rival's estimate: a neutral start,
/// so only in-flight requests decide and it is neither flooded nor starved.
fn peak_ewma_cost(a: &Endpoint, b: &Endpoint, now_ms: u64) -> (u64, u64) {
    let ewma = |e: &Endpoint| e.stats.decayed_latency_us(now_ms);
    let (mut ewma_a, mut ewma_b) = (ewma(a), ewma(b));
    if ewma_a == 0 {
        ewma_a = ewma_b.max(1);
    }
    if ewma_b == 0 {
        ewma_b = ewma_a;
    }
    let (load_a, load_b) = in_flight(a, b, now_ms);
    (
        (load_a + 1).saturating_mul(ewma_a),
        (load_b + 1).saturating_mul(ewma_b),
    )
}

/// The endpoints a choice may pick from. Borrowed as is in the common case (no retry, nothing
/// ejected), so a choice allocates nothing.
enum Candidates<'a> {
    All(&'a [Arc<Endpoint>]),
    Filtered(Vec<&'a Arc<Endpoint>>),
}

impl<'a> Candidates<'a> {
    /// Untried endpoints that are neither ejected nor marked down by active health checks; if
    /// every untried one is, all untried ones (ignored rather than refusing: Envoy's panic
    /// threshold).
    fn new(eligible: &'a [Arc<Endpoint>], tried: &[SocketAddr], now_ms: u64) -> Self {
        let ejected = |e: &Arc<Endpoint>| !e.stats.is_available(now_ms);
        if tried.is_empty() && !eligible.iter().any(ejected) {
            return Candidates::All(eligible);
        }
        let untried = || eligible.iter().filter(|e| !tried.contains(&e.addr));
        let healthy: Vec<_> = untried().filter(|e| !ejected(e)).collect();
        if healthy.is_empty() {
            Candidates::Filtered(untried().collect())
        } else {
            Candidates::Filtered(healthy)
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn len(&self) -> usize {
        match self {
            Candidates::All(all) => all.len(),
            Candidates::Filtered(some) => some.len(),
        }
    }

    /// The `index`th candidate; `index < len()`.
    fn get(&self, index: usize) -> &'a Arc<Endpoint> {
        match self {
            Candidates::All(all) => &all[index],
            Candidates::Filtered(some) => some[index],
        }
    }

    fn find(&self, addr: SocketAddr) -> Option<&'a Arc<Endpoint>> {
        (0..self.len())
            .map(|i| self.get(i))
            .find(|e| e.addr == addr)
    }
}

fn entry_for(endpoint: SocketAddr, now_ms: u64) -> AffinityEntry {
    AffinityEntry {
        endpoint,
        last_used_ms: now_ms,
    }
}

#[cfg(test)]
mod tests;
