//! Errors of the engine.

use bgrun_core::{InvalidInput, RunId, RunTarget, StoreError};

/// What an [`Engine`](crate::Engine) operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No component is registered under this kind and id.
    #[error("unknown component {0}")]
    UnknownComponent(RunTarget),
    /// The request breaks a rule (a bad parameter, a bad id).
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),
    /// A run with this id already exists.
    #[error("run {0} already exists")]
    RunExists(RunId),
    /// No run with this id.
    #[error("run {0} not found")]
    RunNotFound(RunId),
    /// The engine is shutting down and takes no new runs.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::RunExists(run_id) => Self::RunExists(run_id),
            StoreError::RunNotFound(run_id) => Self::RunNotFound(run_id),
            other => Self::Store(other),
        }
    }
}

/// The result of an engine operation.
pub type EngineResult<T> = Result<T, EngineError>;
