//! What a component sees of its run.

use std::sync::Arc;

use bgrun_core::{RunId, RunKind, SessionId};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::active::ActiveRun;

/// Why an event could not be emitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The run has ended; it takes no more events.
    #[error("run {0} has ended")]
    RunEnded(RunId),
}

/// A run as its component sees it: input, parameters, `emit`, cancellation.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub(crate) run: Arc<ActiveRun>,
    pub(crate) input: Arc<str>,
    pub(crate) params: Arc<Map<String, Value>>,
}

impl RunContext {
    /// The run's id.
    pub fn run_id(&self) -> &RunId {
        &self.run.run_id
    }

    /// The run's session.
    pub fn session_id(&self) -> &SessionId {
        &self.run.session_id
    }

    /// Agent, team or workflow.
    pub fn kind(&self) -> RunKind {
        self.run.kind
    }

    /// The input message.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The validated parameters: every declared one, sent or defaulted.
    pub fn params(&self) -> &Map<String, Value> {
        &self.params
    }

    /// An integer parameter.
    pub fn param_i64(&self, name: &str) -> Option<i64> {
        self.params.get(name).and_then(Value::as_i64)
    }

    /// A boolean parameter.
    pub fn param_bool(&self, name: &str) -> Option<bool> {
        self.params.get(name).and_then(Value::as_bool)
    }

    /// A string parameter.
    pub fn param_str(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(Value::as_str)
    }

    /// Emits an event of this run with these fields (envelope keys are set by the engine) and
    /// returns its `event_index`. Waits when the store is far behind.
    pub async fn emit(
        &self,
        event_type: &str,
        fields: Map<String, Value>,
    ) -> Result<u64, EmitError> {
        self.run
            .emit(event_type, &fields)
            .await
            .map_err(|_| EmitError::RunEnded(self.run.run_id.clone()))
    }

    /// Emits the kind's content event (`RunContent` for agents) with `{"content": text}`; the
    /// run's content is the concatenation of these.
    pub async fn emit_content(&self, text: &str) -> Result<u64, EmitError> {
        let mut fields = Map::with_capacity(1);
        fields.insert("content".into(), Value::String(text.to_owned()));
        self.emit(self.run.kind.content_event(), fields).await
    }

    /// The content streamed so far.
    pub fn content(&self) -> String {
        self.run.content()
    }

    /// Cancelled when the run is being cancelled. Components rarely need it: their future is
    /// dropped at its next await point anyway.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.run.cancel
    }
}
