//! Errors of the run model and of stores.

use crate::id::RunId;
use crate::status::RunStatus;

/// Input that breaks a rule of the run model (an empty id, an unknown status name, a bad parameter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidInput {
    message: String,
}

impl InvalidInput {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// What was wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A status change that the status machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a run cannot go from {from} to {to}")]
pub struct InvalidTransition {
    /// The status the run is in.
    pub from: RunStatus,
    /// The status that was asked for.
    pub to: RunStatus,
}

/// What a [`Store`](crate::Store) operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `create_run` with a `run_id` that already exists.
    #[error("run {0} already exists")]
    RunExists(RunId),
    /// The operation names a run the store does not have.
    #[error("run {0} not found")]
    RunNotFound(RunId),
    /// Appended events do not continue the run's log without a gap or an overlap.
    #[error("run {run_id}: expected event_index {expected}, got {got}")]
    IndexConflict {
        /// The run.
        run_id: RunId,
        /// The index the store would accept next.
        expected: u64,
        /// The index that was offered.
        got: u64,
    },
    /// `append_events` to a run that has ended: a terminal run takes no more events, and
    /// nothing was written. (A status write to an ended run is a
    /// [`TransitionOutcome::Conflict`](crate::TransitionOutcome::Conflict) when `from` does not
    /// match, as for any other status.)
    #[error("run {run_id} has ended ({status}) and takes no more events")]
    RunEnded {
        /// The run.
        run_id: RunId,
        /// Its terminal status.
        status: RunStatus,
    },
    /// A transition the status machine forbids.
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
    /// A fenced write by an engine that no longer holds the run's lease: another engine took the
    /// run over, and nothing was written.
    #[error("run {run_id} is leased to another engine; the write of {owner} was refused")]
    Fenced {
        /// The run.
        run_id: RunId,
        /// The writer whose lease is gone.
        owner: String,
    },
    /// A list cursor that this store did not hand out.
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),
    /// The store is held by another process (SQLite: one process per file).
    #[error("the store is locked by another process: {0}")]
    Locked(String),
    /// The backend failed (I/O, connection, SQL). The source says how.
    #[error("{context}: {source}")]
    Backend {
        /// What the store was doing.
        context: String,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The store does not implement this part of the trait.
    #[error("this store does not support {0}")]
    Unsupported(&'static str),
}

impl StoreError {
    /// Wraps a backend error with what the store was doing.
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Backend {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// The result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;
