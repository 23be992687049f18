//! How an engine runs.

use std::time::Duration;

use bgrun_buffer::LogConfig;

/// Settings of an [`Engine`](crate::Engine).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Runs executing at once in this process; the others stay `PENDING` and start in start
    /// order as slots free. Default 32.
    pub max_concurrency: usize,
    /// Memory bounds and retention of the in-memory event log.
    pub log: LogConfig,
    /// How often finished runs past their TTL leave memory. Default 10 s.
    pub eviction_period: Duration,
    /// The most events one store write takes. Default 4,096.
    pub flush_batch: usize,
    /// This engine's name on the leases it holds. Default: a new UUID.
    pub owner: String,
    /// How long a lease lasts without renewal; a run whose lease lapsed is recovered by another
    /// engine. Default 20 s.
    pub lease_ttl: Duration,
    /// How often leases are renewed and lapsed ones looked for. Default 5 s.
    pub lease_renew_every: Duration,
    /// Whether the store serves this process alone (SQLite): then every `RUNNING` run found at
    /// open was left by a dead process and is recovered at once, lease or not.
    pub exclusive_store: bool,
    /// How long `cancel` waits for a running run to stop before answering `RUNNING`. Default 5 s.
    pub cancel_wait: Duration,
    /// How often expired durable streams are deleted (soft-deleted while forked) when the store
    /// keeps streams, so that a stream nobody touches again does not keep its rows; the first
    /// sweep runs one period after open. Between sweeps an expired stream is already gone for
    /// its readers and writers (it is deleted when next touched). Zero turns the sweep off.
    /// Default 60 s.
    pub stream_sweep_every: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_concurrency: 32,
            log: LogConfig::default(),
            eviction_period: Duration::from_secs(10),
            flush_batch: 4096,
            owner: uuid::Uuid::now_v7().to_string(),
            lease_ttl: Duration::from_secs(20),
            lease_renew_every: Duration::from_secs(5),
            exclusive_store: false,
            cancel_wait: Duration::from_secs(5),
            stream_sweep_every: Duration::from_secs(60),
        }
    }
}
