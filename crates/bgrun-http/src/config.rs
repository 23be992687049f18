//! How the HTTP server behaves.

use std::time::Duration;

/// Settings of the HTTP layer.
///
/// Build it with struct update syntax so that fields added later keep their defaults:
/// `HttpConfig { security_key: Some(key), ..HttpConfig::default() }`.
#[derive(Clone)]
pub struct HttpConfig {
    /// When set, every route but `/health` needs `Authorization: Bearer <key>`, and WebSocket
    /// clients must authenticate before acting. Default: none (no auth).
    pub security_key: Option<String>,
    /// The largest request body accepted, in bytes; larger is 413. Default 1 MiB.
    pub body_limit: usize,
    /// An SSE stream sends the comment `: keepalive` after this long without an event.
    /// Default 15 s.
    pub keepalive: Duration,
    /// The largest body of a Durable Streams create or append, in bytes; larger is 413.
    /// Default 16 MiB (one append is one message, and messages can be large).
    pub stream_body_limit: usize,
    /// How long a Durable Streams long-poll read waits at the tail before it answers 204, and
    /// how often an SSE read at the tail sends a control event. Default 10 s.
    pub stream_long_poll: Duration,
    /// How long a Durable Streams SSE read stays open before the server ends it (after a
    /// control event; the client reconnects from its offset). Default 60 s.
    pub stream_sse_lifetime: Duration,
    /// How long [`serve`](crate::serve) waits, once shutdown starts, for open requests to end
    /// before it returns anyway. Default 3 s.
    pub shutdown_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            security_key: None,
            body_limit: 1024 * 1024,
            keepalive: Duration::from_secs(15),
            stream_body_limit: 16 * 1024 * 1024,
            stream_long_poll: Duration::from_secs(10),
            stream_sse_lifetime: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(3),
        }
    }
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field(
                "security_key",
                &self.security_key.as_ref().map(|_| "<redacted>"),
            )
            .field("body_limit", &self.body_limit)
            .field("stream_body_limit", &self.stream_body_limit)
            .field("stream_long_poll", &self.stream_long_poll)
            .field("stream_sse_lifetime", &self.stream_sse_lifetime)
            .field("keepalive", &self.keepalive)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}
