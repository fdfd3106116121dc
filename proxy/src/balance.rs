//! Endpoint choice: a pure function of the eligible set, the port's carried state, the client,
//! the time and a random source.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use capstan_table::{AffinityEntry, BalancePolicy, Endpoint, ServicePortTable};

/// Affinity entries past which a choice also sweeps expired ones.
const AFFINITY_SWEEP_AT: usize = 4096;

/// Chooses an endpoint of `eligible` for a connection from `client`.
///
/// Endpoints in `tried` (this connection's failed attempts) are skipped. Ejected endpoints are
/// skipped unless every remaining one is ejected (then ejection is ignored rather than refusing:
/// Envoy's panic threshold). `sessionAffinity: ClientIP` returns the client's previous endpoint
/// while it is eligible and the entry has not expired.
pub fn choose(
    port: &ServicePortTable,
    eligible: &[Arc<Endpoint>],
    client: IpAddr,
    tried: &[SocketAddr],
    now_ms: u64,
    rng: &mut fastrand::Rng,
) -> Option<Arc<Endpoint>> {
    let untried = || eligible.iter().filter(|e| !tried.contains(&e.addr));
    let mut candidates: Vec<&Arc<Endpoint>> =
        untried().filter(|e| !e.stats.is_ejected(now_ms)).collect();
    if candidates.is_empty() {
        candidates = untried().collect();
    }
    if candidates.is_empty() {
        return None;
    }

    let affinity = port.affinity.map(|timeout| {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        (port.state.affinity.pin(), timeout_ms)
    });
    if let Some((table, timeout_ms)) = &affinity
        && let Some(entry) = table.get(&client)
        && now_ms.saturating_sub(entry.last_used_ms) <= *timeout_ms
        && let Some(endpoint) = candidates.iter().find(|e| e.addr == entry.endpoint)
    {
        let endpoint = Arc::clone(endpoint);
        table.insert(client, entry_for(endpoint.addr, now_ms));
        return Some(endpoint);
    }

    let chosen = match port.policy {
        BalancePolicy::Random => candidates[rng.usize(..candidates.len())],
        BalancePolicy::RoundRobin => {
            let next = port.state.round_robin.fetch_add(1, Ordering::Relaxed);
            candidates[next % candidates.len()]
        }
        BalancePolicy::LeastConnections => power_of_two(&candidates, rng),
    };
    if let Some((table, timeout_ms)) = &affinity {
        if table.len() >= AFFINITY_SWEEP_AT {
            table.retain(|_, e| now_ms.saturating_sub(e.last_used_ms) <= *timeout_ms);
        }
        table.insert(client, entry_for(chosen.addr, now_ms));
    }
    Some(Arc::clone(chosen))
}

/// Two distinct random candidates; the one with fewer in-flight connections wins.
fn power_of_two<'a>(
    candidates: &[&'a Arc<Endpoint>],
    rng: &mut fastrand::Rng,
) -> &'a Arc<Endpoint> {
    if candidates.len() == 1 {
        return candidates[0];
    }
    let a = rng.usize(..candidates.len());
    let mut b = rng.usize(..candidates.len() - 1);
    if b >= a {
        b += 1;
    }
    let load = |i: usize| candidates[i].stats.in_flight.load(Ordering::Relaxed);
    if load(b) < load(a) {
        candidates[b]
    } else {
        candidates[a]
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
