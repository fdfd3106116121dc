//! Monotonic milliseconds shared by ejection deadlines, affinity entries and idle tracking.

use std::sync::OnceLock;
use std::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process; never goes backwards. Starts at 1 so that
/// 0 can mean "never" in atomics.
pub fn now_ms() -> u64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    capstan_table::millis(origin.elapsed()) + 1
}
