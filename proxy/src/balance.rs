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
/// Endpoints in `tried` (this connection's failed attempts) are skipped. Ejected endpoints are
/// skipped unless every remaining one is ejected (see `Candidates::new`). `sessionAffinity: ClientIP` returns the client's previous endpoint
/// while it is eligible and the entry has not expired.
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
        BalancePolicy::LeastConnections => power_of_two(&candidates, rng, in_flight),
        BalancePolicy::PeakEwma => power_of_two(&candidates, rng, peak_ewma_cost),
    };
    if let Some((table, timeout_ms)) = &affinity {
        if table.len() >= AFFINITY_SWEEP_AT {
            table.retain(|_, e| now_ms.saturating_sub(e.last_used_ms) <= *timeout_ms);
        }
        table.insert(client, entry_for(chosen.addr, now_ms));
    }
    Some(Arc::clone(chosen))
}

/// Two distinct random candidates; the one with the lower `cost` wins (ties: the first).
fn power_of_two<'a>(
    candidates: &Candidates<'a>,
    rng: &mut fastrand::Rng,
    cost: fn(&Endpoint, &Endpoint) -> (u64, u64),
) -> &'a Arc<Endpoint> {
    if candidates.len() == 1 {
        return candidates.get(0);
    }
    let a = rng.usize(..candidates.len());
    let mut b = rng.usize(..candidates.len() - 1);
    if b >= a {
        b += 1;
    }
    let (cost_a, cost_b) = cost(candidates.get(a), candidates.get(b));
    if cost_b < cost_a {
        candidates.get(b)
    } else {
        candidates.get(a)
    }
}

fn in_flight(a: &Endpoint, b: &Endpoint) -> (u64, u64) {
    let load = |e: &Endpoint| e.stats.in_flight.load(Ordering::Relaxed);
    (load(a), load(b))
}

/// `(in-flight + 1) × latency EWMA`. While either endpoint has no latency sample yet, only
/// in-flight requests count, so a new endpoint is neither flooded nor starved.
fn peak_ewma_cost(a: &Endpoint, b: &Endpoint) -> (u64, u64) {
    let ewma = |e: &Endpoint| e.stats.latency_ewma_us.load(Ordering::Relaxed);
    let (ewma_a, ewma_b) = (ewma(a), ewma(b));
    let (load_a, load_b) = in_flight(a, b);
    if ewma_a == 0 || ewma_b == 0 {
        return (load_a, load_b);
    }
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
    /// Untried endpoints that are not ejected; if every untried one is ejected, all untried ones
    /// (ejection is ignored rather than refusing: Envoy's panic threshold).
    fn new(eligible: &'a [Arc<Endpoint>], tried: &[SocketAddr], now_ms: u64) -> Self {
        let ejected = |e: &Arc<Endpoint>| e.stats.is_ejected(now_ms);
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
