//! The forwarding cache: upstream answers, positive and negative (RFC 2308), keyed by question and
//! the DNSSEC-relevant flags, with TTLs clamped to configured bounds and counted down on every hit.
//! A lock-free map; time is passed in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;

/// Cache bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries kept; 0 disables the cache.
    pub capacity: usize,
    /// TTLs below this are raised to it (CoreDNS's default: 5 s).
    pub min_ttl: Duration,
    /// TTLs above this are lowered to it.
    pub max_ttl: Duration,
}

/// What identifies a cached answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Lowercase presentation format.
    pub name: Box<str>,
    pub qtype: u16,
    pub qclass: u16,
    pub dnssec_ok: bool,
    pub checking_disabled: bool,
}

/// A cached upstream answer: the upstream's message as received.
#[derive(Debug)]
struct Entry {
    reply: Message,
    stored_ms: u64,
    ttl_ms: u64,
}

/// A cache hit: the upstream's message with TTLs reduced by the entry's age.
#[derive(Debug, PartialEq, Eq)]
pub struct Cached {
    pub reply: Message,
    /// A negative answer (NXDOMAIN, or NOERROR with no data).
    pub negative: bool,
}

/// The cache. Shared by every worker; reads and writes never lock.
#[derive(Debug)]
pub struct Cache {
    config: CacheConfig,
    entries: papaya::HashMap<CacheKey, Arc<Entry>>,
    last_sweep_ms: AtomicU64,
}

// === impl Cache ===

impl Cache {
    pub fn new(config: CacheConfig) -> Self {
        Self {
            config,
            entries: papaya::HashMap::new(),
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries holding positive and negative answers (CoreDNS's `success` and `denial`), counted
    /// by walking the cache: for scrapes, not for the query path.
    pub fn counts(&self) -> (usize, usize) {
        let entries = self.entries.pin();
        let denial = entries
            .values()
            .filter(|e| {
                e.reply.metadata.response_code == ResponseCode::NXDomain
                    || e.reply.answers.is_empty()
            })
            .count();
        (entries.len().saturating_sub(denial), denial)
    }

    /// The live entry for `key` at `now_ms`.
    pub fn get(&self, key: &CacheKey, now_ms: u64) -> Option<Cached> {
        let entries = self.entries.pin();
        let entry = entries.get(key)?;
        let age_ms = now_ms.saturating_sub(entry.stored_ms);
        if age_ms >= entry.ttl_ms {
            entries.remove(key);
            return None;
        }
        let remaining = u32::try_from((entry.ttl_ms - age_ms).div_ceil(1000)).unwrap_or(u32::MAX);
        let mut reply = entry.reply.clone();
        for record in reply
            .answers
            .iter_mut()
            .chain(&mut reply.authorities)
            .chain(&mut reply.additionals)
        {
            record.ttl = record.ttl.min(remaining);
        }
        let negative =
            reply.metadata.response_code == ResponseCode::NXDomain || reply.answers.is_empty();
        Some(Cached { reply, negative })
    }

    /// Stores `response` if it is cacheable: NOERROR with answers (for the smallest answer TTL),
    /// or NXDOMAIN/NODATA with an SOA (for min(SOA TTL, SOA minimum), RFC 2308). Truncated
    /// responses and errors are not cached.
    pub fn insert(&self, key: CacheKey, response: &Message, now_ms: u64) {
        if self.config.capacity == 0 || response.metadata.truncation {
            return;
        }
        let Some(ttl) = cache_ttl(response) else {
            return;
        };
        let ttl =
            Duration::from_secs(u64::from(ttl)).clamp(self.config.min_ttl, self.config.max_ttl);
        let entries = self.entries.pin();
        if entries.len() >= self.config.capacity && !entries.contains_key(&key) {
            // Full: drop expired entries (at most once a second); if none expired, skip this one.
            let last = self.last_sweep_ms.load(Ordering::Relaxed);
            if now_ms.saturating_sub(last) >= 1000 {
                self.last_sweep_ms.store(now_ms, Ordering::Relaxed);
                entries.retain(|_, e| now_ms.saturating_sub(e.stored_ms) < e.ttl_ms);
            }
            if entries.len() >= self.config.capacity {
                return;
            }
        }
        let entry = Entry {
            reply: response.clone(),
            stored_ms: now_ms,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        };
        entries.insert(key, Arc::new(entry));
    }
}

/// How long a response may be cached, in seconds, before clamping; `None` when it must not be.
fn cache_ttl(response: &Message) -> Option<u32> {
    match response.metadata.response_code {
        ResponseCode::NoError if !response.answers.is_empty() => {
            response.answers.iter().map(|r| r.ttl).min()
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            response.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};

    use super::*;

    fn key(name: &str) -> CacheKey {
        CacheKey {
            name: name.into(),
            qtype: 1,
            qclass: 1,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    fn name(text: &str) -> Name {
        Name::from_ascii(text).expect("name")
    }

    fn positive(ttl: u32) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.add_answer(Record::from_rdata(
            name("a.example."),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        m
    }

    fn negative(code: ResponseCode, soa_ttl: u32, minimum: u32) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.metadata.response_code = code;
        let soa = SOA::new(name("ns.example."), name("h.example."), 1, 1, 1, 1, minimum);
        m.add_authority(Record::from_rdata(
            name("example."),
            soa_ttl,
            RData::SOA(soa),
        ));
        m
    }

    fn cache(capacity: usize) -> Cache {
        Cache::new(CacheConfig {
            capacity,
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
        })
    }

    #[test]
    fn positive_answers_count_down_and_expire() {
        let cache = cache(10);
        cache.insert(key("a.example"), &positive(60), 1_000);
        let hit = cache.get(&key("a.example"), 11_000).expect("hit");
        assert!(!hit.negative);
        assert_eq!(hit.reply.answers[0].ttl, 50);
        assert!(cache.get(&key("a.example"), 61_000).is_none());
        assert!(cache.is_empty(), "expired entries are removed on lookup");
    }

    #[test]
    fn ttls_are_clamped_to_the_bounds() {
        let cache = cache(10);
        cache.insert(key("short"), &positive(1), 0);
        assert!(cache.get(&key("short"), 4_000).is_some(), "raised to 5 s");
        assert!(cache.get(&key("short"), 5_000).is_none());
        cache.insert(key("long"), &positive(86_400), 0);
        let hit = cache.get(&key("long"), 0).expect("hit");
        assert_eq!(hit.reply.answers[0].ttl, 3600, "lowered to the maximum");
    }

    #[test]
    fn negative_answers_use_the_soa_minimum() {
        let cache = cache(10);
        cache.insert(key("nx"), &negative(ResponseCode::NXDomain, 300, 30), 0);
        let hit = cache.get(&key("nx"), 29_000).expect("hit");
        assert!(hit.negative);
        assert_eq!(hit.reply.metadata.response_code, ResponseCode::NXDomain);
        assert!(cache.get(&key("nx"), 30_000).is_none());
        cache.insert(key("nodata"), &negative(ResponseCode::NoError, 10, 900), 0);
        assert!(cache.get(&key("nodata"), 9_000).is_some());
        assert!(cache.get(&key("nodata"), 10_000).is_none());
    }

    #[test]
    fn errors_truncation_and_negative_answers_without_soa_are_not_cached() {
        let cache = cache(10);
        let mut servfail = positive(60);
        servfail.metadata.response_code = ResponseCode::ServFail;
        cache.insert(key("a"), &servfail, 0);
        let mut truncated = positive(60);
        truncated.metadata.truncation = true;
        cache.insert(key("b"), &truncated, 0);
        let mut bare_nx = Message::new(1, MessageType::Response, OpCode::Query);
        bare_nx.metadata.response_code = ResponseCode::NXDomain;
        cache.insert(key("c"), &bare_nx, 0);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_makes_room_only_from_expired_entries() {
        let cache = cache(2);
        cache.insert(key("a"), &positive(10), 0);
        cache.insert(key("b"), &positive(100), 0);
        cache.insert(key("c"), &positive(100), 2_000);
        assert!(
            cache.get(&key("c"), 2_000).is_none(),
            "full, nothing expired"
        );
        cache.insert(key("c"), &positive(100), 20_000);
        assert!(
            cache.get(&key("c"), 20_000).is_some(),
            "a expired and made room"
        );
        assert!(cache.get(&key("b"), 20_000).is_some());
        assert_eq!(
            cache_config_disabled().len(),
            0,
            "capacity 0 disables caching"
        );
    }

    fn cache_config_disabled() -> Cache {
        let cache = cache(0);
        cache.insert(key("a"), &positive(60), 0);
        cache
    }
}
