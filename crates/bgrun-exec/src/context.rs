//! What a component sees of its run.

use std::sync::Arc;

use bgrun_core::{RunId, RunKind, RunRecord, RunStatus, RunTarget, SessionId};
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::active::ActiveRun;
use crate::engine::{Engine, StartRequest};
use crate::resume::EventStream;
use crate::runnable::RunFailure;

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
    pub(crate) engine: Engine,
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

    /// Starts a child run (a team member, a workflow step): a real run with its own `run_id`,
    /// this run as its `parent_run_id`, this run's session, persisted, pollable and resumable.
    /// It runs in this run's concurrency slot, and cancelling this run cancels it. Its events
    /// reach this run's stream once [`ChildRun::join`] is awaited.
    pub async fn start_child(
        &self,
        target: RunTarget,
        input: impl Into<String>,
        params: Map<String, Value>,
    ) -> Result<ChildRun, RunFailure> {
        let mut request = StartRequest::new(target, input);
        request.params = params;
        request.session_id = Some(self.run.session_id.clone());
        request.parent_run_id = Some(self.run.run_id.clone());
        let started = self
            .engine
            .start_run(request, Some(self.run.clone()))
            .await
            .map_err(|error| RunFailure::new(format!("cannot start a child run: {error}")))?;
        let run_id = started.run.run_id;
        Ok(ChildRun {
            events: self.engine.events(&run_id, None),
            run_id,
            engine: self.engine.clone(),
            parent: self.run.clone(),
        })
    }

    /// [`start_child`](Self::start_child), then [`join`](ChildRun::join).
    pub async fn run_child(
        &self,
        target: RunTarget,
        input: impl Into<String>,
        params: Map<String, Value>,
    ) -> Result<RunRecord, RunFailure> {
        self.start_child(target, input, params).await?.join().await
    }
}

/// A child run started by [`RunContext::start_child`].
#[derive(Debug)]
pub struct ChildRun {
    run_id: RunId,
    events: EventStream,
    engine: Engine,
    parent: Arc<ActiveRun>,
}

impl ChildRun {
    /// The child's id.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// Forwards the child's events into the parent's stream (each keeps the child's `run_id`
    /// and takes the parent's next `event_index`) until the child ends, then returns the child:
    /// `Ok` when it completed, a failure naming it when it ended `ERROR` or `CANCELLED` (a
    /// parent that handles it matches on the result; one that uses `?` ends `ERROR` too).
    pub async fn join(mut self) -> Result<RunRecord, RunFailure> {
        while let Some(event) = self.events.next().await {
            let event = event.map_err(|error| {
                RunFailure::new(format!("reading child run {}: {error}", self.run_id))
            })?;
            self.parent
                .forward(&event)
                .await
                .map_err(|_| RunFailure::new(format!("run {} has ended", self.parent.run_id)))?;
        }
        let run = self
            .engine
            .get_run(&self.run_id)
            .await
            .map_err(|error| {
                RunFailure::new(format!("reading child run {}: {error}", self.run_id))
            })?
            .ok_or_else(|| RunFailure::new(format!("child run {} vanished", self.run_id)))?;
        match run.status {
            RunStatus::Completed => Ok(run),
            RunStatus::Error => Err(RunFailure::new(format!(
                "child run {} ({}) failed: {}",
                run.run_id,
                run.target,
                run.error.as_deref().unwrap_or("unknown error")
            ))),
            other => Err(RunFailure::new(format!(
                "child run {} ({}) ended {other}",
                run.run_id, run.target
            ))),
        }
    }
}
