//! The UDP flow table: client address → flow, with idle expiry. Pure: time is passed in.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Flows of one UDP frontend, owned by its receive loop (no sharing, no lock).
#[derive(Debug)]
pub(crate) struct FlowTable<F> {
    flows: HashMap<SocketAddr, (F, u64)>,
    idle_ms: u64,
}

impl<F> FlowTable<F> {
    pub(crate) fn new(idle_ms: u64) -> Self {
        Self {
            flows: HashMap::new(),
            idle_ms,
        }
    }

    pub(crate) fn set_idle_ms(&mut self, idle_ms: u64) {
        self.idle_ms = idle_ms;
    }

    /// The live flow of `client`, marked as used at `now_ms`. A flow is live while the client or
    /// the endpoint (`last_reply`) sent something within the timeout; an expired one is not
    /// returned.
    pub(crate) fn get(
        &mut self,
        client: SocketAddr,
        now_ms: u64,
        last_reply: impl Fn(&F) -> u64,
    ) -> Option<&F> {
        let idle_ms = self.idle_ms;
        match self.flows.get_mut(&client) {
            Some((flow, last))
                if now_ms.saturating_sub((*last).max(last_reply(flow))) < idle_ms =>
            {
                *last = now_ms;
                Some(flow)
            }
            _ => None,
        }
    }

    /// Starts (or replaces) `client`'s flow; returns the one it replaced.
    pub(crate) fn insert(&mut self, client: SocketAddr, flow: F, now_ms: u64) -> Option<F> {
        self.flows
            .insert(client, (flow, now_ms))
            .map(|(old, _)| old)
    }

    /// Removes and returns every flow idle (both ways) for the timeout at `now_ms`.
    pub(crate) fn expire(&mut self, now_ms: u64, last_reply: impl Fn(&F) -> u64) -> Vec<F> {
        let idle_ms = self.idle_ms;
        let expired: Vec<SocketAddr> = self
            .flows
            .iter()
            .filter(|(_, (flow, last))| {
                now_ms.saturating_sub((*last).max(last_reply(flow))) >= idle_ms
            })
            .map(|(client, _)| *client)
            .collect();
        expired
            .into_iter()
            .filter_map(|client| self.flows.remove(&client).map(|(flow, _)| flow))
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.flows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn flows_live_while_used_and_expire_when_idle() {
        let no_reply = |_: &(&str, u64)| 0;
        let reply = |f: &(&str, u64)| f.1;
        let mut table = FlowTable::new(1_000);
        assert!(table.insert(client(1), ("a", 1_800), 0).is_none());
        assert_eq!(table.get(client(1), 900, no_reply), Some(&("a", 1_800)));
        assert_eq!(
            table.get(client(1), 2_700, reply).map(|f| f.0),
            Some("a"),
            "a reply keeps it alive"
        );
        assert_eq!(
            table.get(client(1), 3_700, reply),
            None,
            "idle both ways for the timeout"
        );
        assert_eq!(table.get(client(2), 0, reply), None);
        table.insert(client(2), ("b", 0), 3_700);
        assert_eq!(table.expire(4_000, reply), vec![("a", 1_800)]);
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.expire(4_000, |_| 4_000),
            vec![],
            "replies count for expiry too"
        );
        assert_eq!(
            table.insert(client(2), ("c", 0), 4_000),
            Some(("b", 0)),
            "replaced flow returned"
        );
        assert_eq!(table.expire(5_000, reply), vec![("c", 0)]);
        assert_eq!(table.len(), 0);
    }
}
