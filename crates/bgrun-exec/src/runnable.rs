//! What a component is: something the engine runs, described by its info.

use async_trait::async_trait;
use bgrun_core::{ParamSpec, RunKind};

use crate::context::RunContext;

/// Describes a registered component.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentInfo {
    /// Agent, team or workflow.
    pub kind: RunKind,
    /// Its id, unique within its kind (the `{id}` of the HTTP API).
    pub id: String,
    /// A human name.
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// The parameters it takes; others a client sends are dropped.
    pub params: Vec<ParamSpec>,
    /// Whether a run interrupted by a dead process is run again (from the start, its events so
    /// far kept) instead of ending `ERROR` with `"interrupted"`.
    pub retryable: bool,
}

impl ComponentInfo {
    /// A component of `kind` with this id, named after it, no parameters, not retryable.
    pub fn new(kind: RunKind, id: impl Into<String>) -> Self {
        let id = id.into();
        Self {
            kind,
            name: id.clone(),
            id,
            description: None,
            params: Vec::new(),
            retryable: false,
        }
    }

    /// With this human name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// With this description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// With this parameter.
    pub fn param(mut self, spec: ParamSpec) -> Self {
        self.params.push(spec);
        self
    }

    /// Marked retryable.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }
}

/// What a finished component returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutput {
    /// The run's final content; `None` means the concatenation of what it streamed.
    pub content: Option<String>,
}

impl RunOutput {
    /// An output with this content.
    pub fn content(content: impl Into<String>) -> Self {
        Self {
            content: Some(content.into()),
        }
    }
}

/// Why a component failed: the run ends `ERROR` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RunFailure {
    /// What went wrong, as clients see it.
    pub message: String,
}

impl RunFailure {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl From<crate::EmitError> for RunFailure {
    fn from(error: crate::EmitError) -> Self {
        Self::new(error.to_string())
    }
}

/// A component the engine can run: an agent, a team or a workflow.
///
/// `run` is driven in a detached task. Cancellation drops its future at the next await point, so
/// a component needs no cancellation checks of its own; a panic ends the run `ERROR`. The engine
/// emits the run's first event (`RunStarted`, ...) before calling `run` and its one terminal
/// event after it returns.
#[async_trait]
pub trait Runnable: Send + Sync + 'static {
    /// What it is.
    fn info(&self) -> ComponentInfo;

    /// Executes one run.
    async fn run(&self, ctx: RunContext) -> Result<RunOutput, RunFailure>;
}
