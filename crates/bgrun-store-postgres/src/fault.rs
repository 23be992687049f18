//! Connection faults: which failures are worth retrying, and the retry loop.
//!
//! A retried write may follow an attempt whose COMMIT reached the server without its answer
//! reaching us. Each write therefore learns, through [`Attempt::is_retry`], that it may be
//! repeating itself and checks the tables before writing twice: see `create_run`, `transition`
//! and `append_events`.

use std::future::Future;
use std::time::Duration;

use bgrun_core::StoreError;
use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A result the caller gets as is (not found, conflict, bad input).
    Store(StoreError),
    /// A statement failed.
    Db(tokio_postgres::Error),
    /// No connection could be had.
    Pool(PoolError),
    /// A concurrent writer got there first in a way that a fresh attempt resolves (two
    /// creates with one idempotency key).
    Race(tokio_postgres::Error),
    /// The writer's batch holding this write failed as a whole (connection lost, commit outcome
    /// unknown): `transient` as that failure was.
    Batch { transient: bool, why: String },
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Db(error)
    }
}

impl From<PoolError> for Failure {
    fn from(error: PoolError) -> Self {
        Self::Pool(error)
    }
}

impl Failure {
    /// True when the connection (not the statement) failed, or the server rolled the
    /// transaction back for a reason that passes: trying again may succeed.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Store(_) => false,
            Self::Race(_) => true,
            Self::Db(error) => is_transient_db(error),
            Self::Pool(PoolError::Backend(error)) => is_transient_db(error),
            Self::Pool(PoolError::Timeout(_)) => true,
            Self::Pool(_) => false,
            Self::Batch { transient, .. } => *transient,
        }
    }

    /// What each write of a batch learns when the batch failed as a whole with `self`.
    pub(crate) fn batch(&self) -> Self {
        match self {
            Self::Store(StoreError::Closed) | Self::Pool(PoolError::Closed) => {
                Self::Store(StoreError::Closed)
            }
            _ => Self::Batch {
                transient: self.is_transient(),
                why: match self {
                    Self::Db(error) | Self::Race(error) => describe(error),
                    Self::Pool(error) => error.to_string(),
                    Self::Store(error) => error.to_string(),
                    Self::Batch { why, .. } => why.clone(),
                },
            },
        }
    }

    pub(crate) fn into_store_error(self, context: &str) -> StoreError {
        match self {
            Self::Store(error) => error,
            Self::Db(error) | Self::Race(error) => StoreError::backend(context, ServerSaid(error)),
            Self::Pool(PoolError::Closed) => StoreError::Closed,
            Self::Pool(error) => StoreError::backend(context, error),
            Self::Batch { why, .. } => StoreError::backend(context, why),
        }
    }
}

/// A PostgreSQL error whose message says what the server said: tokio-postgres's own is just
/// "db error", with the server's words in its source, which a log line of the error misses.
#[derive(Debug)]
struct ServerSaid(tokio_postgres::Error);

impl std::fmt::Display for ServerSaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

impl std::error::Error for ServerSaid {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// `error` with the server's message, if the server sent one.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{error}: {db}"),
        None => error.to_string(),
    }
}

/// Connection lost, server shutting down or refusing connections (also for now: too many of
/// them, as after a failover), or a serialization failure / deadlock (the transaction was
/// rolled back).
pub(crate) fn is_transient_db(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(code) = error.code() {
        return code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
            ]
            .contains(code);
    }
    // No SQLSTATE: an I/O error, an unexpected end of stream, a connect timeout.
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    error.to_string().contains("timed out")
}

/// Which attempt of an operation this is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt(u32);

impl Attempt {
    /// Attempt number `n` (0: the first).
    pub(crate) fn new(n: u32) -> Self {
        Self(n)
    }

    /// True when an earlier attempt failed on a connection error, so its writes may or may not
    /// have been committed.
    pub(crate) fn is_retry(self) -> bool {
        self.0 > 0
    }
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) base_delay: Duration,
}

const MAX_DELAY: Duration = Duration::from_secs(1);

impl RetryPolicy {
    /// Runs `op` until it succeeds, fails for good, or `max_retries` retries after transient
    /// failures have been spent; waits `base_delay * 2^n` (at most 1 s) before retry `n + 1`.
    pub(crate) async fn run<T, F, Fut>(&self, context: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 0;
        loop {
            match op(Attempt(attempt)).await {
                Ok(value) => return Ok(value),
                Err(failure) if failure.is_transient() && attempt < self.max_retries => {
                    let delay = self
                        .base_delay
                        .saturating_mul(1 << attempt.min(16))
                        .min(MAX_DELAY);
                    tracing::debug!(
                        context,
                        attempt,
                        ?delay,
                        error = ?failure,
                        "PostgreSQL operation failed on a connection error; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(failure) => return Err(failure.into_store_error(context)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_transient_failures_then_gives_up() {
        let policy = RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(1),
        };
        let mut seen = Vec::new();
        let result: Result<(), _> = policy
            .run("testing", |attempt| {
                seen.push(attempt.is_retry());
                async {
                    Err(Failure::Pool(PoolError::Timeout(
                        deadpool_postgres::TimeoutType::Wait,
                    )))
                }
            })
            .await;
        assert!(matches!(result, Err(StoreError::Backend { .. })));
        assert_eq!(seen, [false, true, true]);
    }

    #[tokio::test]
    async fn store_errors_are_not_retried() {
        let policy = RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(1),
        };
        let mut calls = 0;
        let result: Result<(), _> = policy
            .run("testing", |_| {
                calls += 1;
                async { Err(Failure::Store(StoreError::Closed)) }
            })
            .await;
        assert!(matches!(result, Err(StoreError::Closed)));
        assert_eq!(calls, 1);
    }
}
