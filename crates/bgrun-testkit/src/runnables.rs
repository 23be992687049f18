//! Components for tests: deterministic, and controlled from the test.

use std::sync::{Arc, Mutex, PoisonError};

use bgrun_core::RunKind;
use bgrun_exec::{ComponentInfo, RunContext, RunFailure, RunOutput, Runnable};
use tokio::sync::Semaphore;

/// Agent `gated`: emits `hello `, then waits for a permit of its gate before it emits `world`
/// and completes, so a test holds a run `RUNNING` for as long as it needs, without sleeping.
/// It records the inputs of the runs it started, in order.
#[derive(Debug, Clone)]
pub struct Gated {
    /// Add permits to let runs finish.
    pub gate: Arc<Semaphore>,
    /// The inputs of the runs that started, in start order.
    pub started: Arc<Mutex<Vec<String>>>,
    /// Whether the component is marked retryable.
    pub retryable: bool,
}

impl Gated {
    /// A closed gate, nothing started, not retryable.
    pub fn new() -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            started: Arc::default(),
            retryable: false,
        }
    }

    /// The inputs of the runs that started so far.
    pub fn started(&self) -> Vec<String> {
        self.started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Default for Gated {
    fn default() -> Self {
        Self::new()
    }
}

#[bgrun_core::async_trait]
impl Runnable for Gated {
    fn info(&self) -> ComponentInfo {
        ComponentInfo::new(RunKind::Agent, "gated")
            .description("waits for its gate")
            .retryable(self.retryable)
    }

    async fn run(&self, ctx: RunContext) -> Result<RunOutput, RunFailure> {
        self.started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ctx.input().to_owned());
        ctx.emit_content("hello ").await?;
        let _permit = self
            .gate
            .acquire()
            .await
            .map_err(|_| RunFailure::new("gate closed"))?;
        ctx.emit_content("world").await?;
        Ok(RunOutput::default())
    }
}
