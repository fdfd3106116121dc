//! Monotonic milliseconds (and microseconds) shared by ejection deadlines, affinity entries and idle tracking.

use std::sync::OnceLock;
use std::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process; never goes backwards. Starts at 1 so that
/// 0 can mean "never" in atomics.
pub fn now_ms() -> u64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    capstan_table::millis(origin.elapsed()) + 1
}

/// Microseconds on the same clock as [`now_ms`] (rate limiters need finer steps).
pub fn now_us() -> u64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX) + 1_000
}
