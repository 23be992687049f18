//! Memory bounds and retention of the event log.

use std::time::Duration;

/// How much the log keeps in memory and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Bytes of durable events one stream holds before its oldest leave memory (they stay in the
    /// store; a subscriber that needs them reads them there).
    pub max_stream_bytes: usize,
    /// Bytes of durable events all streams hold together before streams shrink to
    /// `min_stream_events` at their next write and finished streams are evicted oldest first.
    pub max_total_bytes: usize,
    /// Events a stream keeps even when memory is short, so live subscribers rarely fall back.
    pub min_stream_events: usize,
    /// Bytes of not-yet-durable events one stream may hold; an appender waits beyond that until the
    /// store catches up (back-pressure instead of unbounded growth).
    pub max_pending_bytes: usize,
    /// How long a finished stream stays in memory.
    pub finished_ttl: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_stream_bytes: 16 << 20,
            max_total_bytes: 512 << 20,
            min_stream_events: 256,
            max_pending_bytes: 8 << 20,
            finished_ttl: Duration::from_secs(30 * 60),
        }
    }
}
