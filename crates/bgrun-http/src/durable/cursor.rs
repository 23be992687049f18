//! `Stream-Cursor`: the time interval a live response belongs to, so that CDNs key long-poll
//! responses by it and a client never gets the same cached answer twice.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The cursor epoch (2024-10-09T00:00:00Z, as the reference server), in seconds.
const EPOCH_SECS: u64 = 1_728_432_000;
/// The length of one interval.
const INTERVAL: Duration = Duration::from_secs(20);
/// The most jitter added when a client's cursor is not behind the current interval, seconds.
const MAX_JITTER_SECS: u64 = 3600;

/// The cursor for a response: the current interval, or when the client's cursor is not behind
/// it, the client's plus a random jitter (a cursor only ever moves forward, so a client never
/// cycles between cached responses).
pub(crate) fn respond(client: Option<&str>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let current = now.saturating_sub(EPOCH_SECS) / INTERVAL.as_secs();
    match client.and_then(|cursor| cursor.parse::<u64>().ok()) {
        Some(client) if client >= current => {
            let jitter_secs = 1 + random() % MAX_JITTER_SECS;
            let intervals = jitter_secs.div_ceil(INTERVAL.as_secs()).max(1);
            client.saturating_add(intervals).to_string()
        }
        _ => current.to_string(),
    }
}

/// A random number from the standard library's randomly seeded hasher (jitter needs no more).
fn random() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_only_move_forward() {
        let current: u64 = respond(None).parse().unwrap();
        assert_eq!(respond(Some("1")), current.to_string());
        assert_eq!(respond(Some("junk")), current.to_string());
        let ahead: u64 = respond(Some(&current.to_string())).parse().unwrap();
        assert!(ahead > current);
        assert!(ahead <= current + MAX_JITTER_SECS / INTERVAL.as_secs() + 1);
    }
}
