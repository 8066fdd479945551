//! Milliseconds since the process started, as a plain integer that fits in
//! an atomic. Based on `tokio::time::Instant`, so paused-time tests see it
//! move with the virtual clock.

use std::sync::OnceLock;

use tokio::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Where the clock starts: far from 0, so that moments before this
/// process started (state taken over from the process it replaced) are
/// still representable, and 0 can mean "never".
pub const START_MS: u64 = 1 << 40;

/// Milliseconds since the first call in this process, plus [`START_MS`].
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] of a moment already read (no clock read of its own; a
/// moment before the first call counts as that call).
pub fn ms_at(t: Instant) -> u64 {
    let base = *BASE.get_or_init(|| t);
    t.saturating_duration_since(base).as_millis() as u64 + START_MS
}
