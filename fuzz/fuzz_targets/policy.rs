//! Any `key: value` lines as `capstan.dev/*` policy keys (route and Service): parsing answers a
//! policy or a message and never panics; an accepted route policy's retry backoff and rate
//! limits are usable (no overflow when computed).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let pairs: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim(), v))
        .collect();
    if let Ok(policy) = capstan_catalog::route_policy(&pairs, &[]) {
        for retry in 0..=policy.retry.retries + 1 {
            let _ = policy.retry.backoff(retry, 0.5);
        }
        for limit in policy.rate_limit.iter().chain(&policy.client_rate_limit) {
            let gcra = capstan_table::Gcra::default();
            let _ = gcra.admit(limit, 1);
            let _ = gcra.admit(limit, u64::MAX / 2);
        }
    }
    let _ = capstan_catalog::service_policy(&pairs, &["load-balancer"]);
});
