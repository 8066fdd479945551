//! Milliseconds since the process started, as a plain integer that fits in
//! an atomic. Based on `tokio::time::Instant`, so paused-time tests see it
//! move with the virtual clock.

use std::sync::OnceLock;

use tokio::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process (never 0 once
/// started, so 0 can mean "never").
pub fn now_ms() -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    Instant::now().duration_since(base).as_millis() as u64 + 1
}
