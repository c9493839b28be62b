//! The node's clock: the interval of its tick, and the wall-clock time it
//! hands the node state (the state itself reads no clock).

use std::time::{SystemTime, UNIX_EPOCH};

/// Interval of the node's clock tick (timers, expiries, checkpoints).
pub const TICK_MS: u64 = 20;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
