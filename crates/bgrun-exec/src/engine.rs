//! The engine: starts, reads, cancels and resumes runs over a store.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bgrun_buffer::EventLog;
use bgrun_core::{
    validate_params, CreateOutcome, Envelope, Event, InvalidInput, NewRun, RunFilter, RunId,
    RunKind, RunPage, RunRecord, RunStatus, RunTarget, SessionId, Store, StoreResult,
};
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::active::ActiveRun;
use crate::active_runs::ActiveRuns;
use crate::config::EngineConfig;
use crate::error::{EngineError, EngineResult};
use crate::registry::{Registered, Registry};
use crate::resume::{EventStream, MetaFrame, Resume};
use crate::runner::{self, Launch};

/// What to start.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRequest {
    /// The component.
    pub target: RunTarget,
    /// The input message.
    pub input: String,
    /// Parameters as sent (JSON values or strings); validated against the component.
    pub params: Map<String, Value>,
    /// A client-chosen id (needed to cancel before start); generated when `None`.
    pub run_id: Option<RunId>,
    /// The session; generated when `None`.
    pub session_id: Option<SessionId>,
    /// The owner.
    pub user_id: Option<String>,
    /// Stored with the run.
    pub metadata: Option<Value>,
    /// The run that starts this one.
    pub parent_run_id: Option<RunId>,
    /// A repeated start with the same key returns the first run.
    pub idempotency_key: Option<String>,
}

impl StartRequest {
    /// A run of `target` with this input and nothing else set.
    pub fn new(target: RunTarget, input: impl Into<String>) -> Self {
        Self {
            target,
            input: input.into(),
            params: Map::new(),
            run_id: None,
            session_id: None,
            user_id: None,
            metadata: None,
            parent_run_id: None,
            idempotency_key: None,
        }
    }

    /// An agent run.
    pub fn agent(id: &str, input: impl Into<String>) -> Self {
        Self::new(RunTarget::new(RunKind::Agent, id), input)
    }

    /// With a parameter.
    pub fn param(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.params.insert(name.into(), value.into());
        self
    }

    /// With a chosen run id.
    pub fn run_id(mut self, run_id: RunId) -> Self {
        self.run_id = Some(run_id);
        self
    }

    /// In a session.
    pub fn session_id(mut self, session_id: SessionId) -> Self {
        self.session_id = Some(session_id);
        self
    }

    /// With an idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// The longest idempotency key a start takes (a store indexes keys; PostgreSQL's B-tree
/// entries hold about 2.7 KB).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 1024;

/// Refuses text a store could not keep as sent: PostgreSQL's `text` holds no NUL character.
fn check_text(what: &str, text: &str) -> Result<(), InvalidInput> {
    if text.contains('\0') {
        return Err(InvalidInput::new(format!(
            "{what} must not contain a NUL character"
        )));
    }
    Ok(())
}

/// Creates the run and, if it is new, launches it.
async fn create_and_launch(
    inner: Arc<EngineInner>,
    new_run: NewRun,
    component: Registered,
    parent: Option<Arc<ActiveRun>>,
) -> EngineResult<Started> {
    // A run that can execute at once is created and started (and leased, where leases are
    // used) in one store write (a child runs in its parent's slot). Not while the engine
    // closes, nor for a child of a cancelled parent: those are created to end before they
    // start.
    let may_start = !inner.closing.is_cancelled()
        && !parent
            .as_ref()
            .is_some_and(|parent| parent.cancel.is_cancelled());
    if may_start {
        let slot = match &parent {
            Some(_) => Some(None),
            None => inner.slots.clone().try_acquire_owned().ok().map(Some),
        };
        if let Some(permit) = slot {
            return create_started(inner, new_run, component, parent, permit).await;
        }
    }
    match inner.store.create_run(new_run).await? {
        CreateOutcome::Existing(run) => Ok(Started {
            run,
            created: false,
        }),
        CreateOutcome::Created {
            run,
            cancel_requested,
        } => {
            runner::launch(
                &inner,
                Launch::queued(run.clone(), component, cancel_requested, parent),
            )
            .await?;
            Ok(Started { run, created: true })
        }
    }
}

/// Creates the run and starts it in the same store write (`Store::create_and_start_run`, or
/// `Store::create_and_start_leased` where leases are used), then launches it in `permit`'s
/// slot; a run the store did not start is launched as created.
async fn create_started(
    inner: Arc<EngineInner>,
    new_run: NewRun,
    component: Registered,
    parent: Option<Arc<ActiveRun>>,
    permit: Option<OwnedSemaphorePermit>,
) -> EngineResult<Started> {
    // From before the write that makes it RUNNING until its launch holds it (or the start
    // ends otherwise).
    let run_id = new_run.run_id.clone();
    inner.active_map().starting(&run_id);
    let result = create_and_launch_started(&inner, new_run, component, parent, permit).await;
    inner.active_map().started(&run_id);
    result
}

async fn create_and_launch_started(
    inner: &Arc<EngineInner>,
    new_run: NewRun,
    component: Registered,
    parent: Option<Arc<ActiveRun>>,
    permit: Option<OwnedSemaphorePermit>,
) -> EngineResult<Started> {
    let started = Event::render(
        Envelope {
            run_id: &new_run.run_id,
            session_id: &new_run.session_id,
            created_at: bgrun_core::now(),
        },
        0,
        new_run.target.kind.started_event(),
        &Map::new(),
    );
    let outcome = if inner.config.exclusive_store {
        inner.store.create_and_start_run(new_run, &started).await?
    } else {
        inner
            .store
            .create_and_start_leased(
                new_run,
                &started,
                &inner.config.owner,
                inner.config.lease_ttl,
            )
            .await?
    };
    let (run, cancel_requested) = match outcome.created {
        CreateOutcome::Existing(run) => {
            return Ok(Started {
                run,
                created: false,
            })
        }
        CreateOutcome::Created {
            run,
            cancel_requested,
        } => (run, cancel_requested),
    };
    let launch = match outcome.started {
        Some(running) => Launch {
            record: running,
            component,
            cancel_requested,
            parent,
            started: Some(started),
            permit,
        },
        // Not started (a cancel intent, or a store that starts runs in a write of their own):
        // launched `PENDING`, in the slot already taken.
        None => Launch {
            permit,
            ..Launch::queued(run.clone(), component, cancel_requested, parent)
        },
    };
    runner::launch(inner, launch).await?;
    // The run as created: a start answers `PENDING`.
    Ok(Started { run, created: true })
}

/// What `start` did.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    /// The run, as persisted (`PENDING` when just created).
    pub run: RunRecord,
    /// False when the idempotency key named an earlier run.
    pub created: bool,
}

/// The answer to a cancel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOutcome {
    /// The run.
    pub run_id: RunId,
    /// Its status when the answer was made.
    pub status: RunStatus,
    /// False when the run had already ended otherwise.
    pub cancelled: bool,
}

pub(crate) struct EngineInner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Registry,
    pub(crate) log: EventLog<RunId>,
    pub(crate) slots: Arc<Semaphore>,
    active: Mutex<ActiveRuns>,
    pub(crate) tracker: TaskTracker,
    /// Fired at shutdown: no new runs, background loops stop.
    pub(crate) closing: CancellationToken,
    /// Fired when the shutdown grace period is over: runs still executing are interrupted.
    pub(crate) interrupt: CancellationToken,
    pub(crate) config: EngineConfig,
    /// Readers of runs other engines execute.
    pub(crate) remote: crate::remote::RemoteRuns,
    /// Durable streams, over the same store.
    pub(crate) streams: crate::streams::Streams,
    /// The content so far of runs polled here but executed elsewhere.
    pub(crate) partial_contents: crate::content::PartialContents,
    metrics: Arc<crate::metrics::Counters>,
}

impl EngineInner {
    fn active_map(&self) -> MutexGuard<'_, ActiveRuns> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn active_runs_snapshot(&self) -> Vec<Arc<ActiveRun>> {
        self.active_map().runs().cloned().collect()
    }

    pub(crate) fn active(&self, run_id: &RunId) -> Option<Arc<ActiveRun>> {
        self.active_map().get(run_id).cloned()
    }

    /// True when the run is executed or queued here, or being started here (see
    /// [`ActiveRuns`]): the sweep of runs left `RUNNING` must leave it alone.
    pub(crate) fn holds_or_starts(&self, run_id: &RunId) -> bool {
        self.active_map().holds_or_starts(run_id)
    }

    /// Holds `run` here, cancelled if a cancel of it came first (see [`ActiveRuns`]).
    pub(crate) fn insert_active(&self, run: Arc<ActiveRun>) {
        let cancelled_first = self.active_map().insert(run.clone());
        if cancelled_first {
            run.cancel.cancel();
        }
    }

    /// Cancels the run if it is held here (and returns it), else keeps the cancel for the run's
    /// launch here.
    pub(crate) fn cancel_active(&self, run_id: &RunId) -> Option<Arc<ActiveRun>> {
        self.active_map().cancel(run_id)
    }

    pub(crate) fn remove_active(&self, run_id: &RunId) {
        self.active_map().remove(run_id);
    }

    /// Appends a run's events, fenced by this engine's lease unless the store serves this
    /// process alone.
    pub(crate) async fn append(
        &self,
        run_id: &RunId,
        events: &[bgrun_core::Event],
    ) -> StoreResult<()> {
        if self.config.exclusive_store {
            self.store.append_events(run_id, events).await
        } else {
            self.store
                .append_events_fenced(run_id, events, &self.config.owner)
                .await
        }
    }

    /// Changes a run's status, fenced like [`append`](Self::append).
    pub(crate) async fn transition(
        &self,
        run_id: &RunId,
        transition: &bgrun_core::Transition,
        events: &[bgrun_core::Event],
    ) -> StoreResult<bgrun_core::TransitionOutcome> {
        if self.config.exclusive_store {
            self.store.transition(run_id, transition, events).await
        } else {
            self.store
                .transition_fenced(run_id, transition, events, &self.config.owner)
                .await
        }
    }

    pub(crate) fn component(&self, target: &RunTarget) -> EngineResult<&Registered> {
        self.registry
            .get(target.kind, &target.component_id)
            .ok_or_else(|| EngineError::UnknownComponent(target.clone()))
    }
}

/// Runs components in the background over a [`Store`]: durable, cancellable, resumable.
///
/// Cloning is cheap and shares the engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("registry", &self.inner.registry)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens an engine over `store`, taking over what a dead process left behind (runs it
    /// executed end `ERROR` "interrupted" or run again when retryable; `PENDING` runs are queued
    /// again), and starts its background tasks (eviction, the sweep of expired durable streams,
    /// leases, recovery).
    pub async fn open(
        store: Arc<dyn Store>,
        registry: Registry,
        config: EngineConfig,
    ) -> EngineResult<Self> {
        let metrics = Arc::new(crate::metrics::Counters::default());
        let store = crate::metrics::CountingStore::wrap(store, metrics.clone());
        let inner = Arc::new(EngineInner {
            streams: crate::streams::Streams::new(store.clone(), Arc::default()),
            store,
            metrics,
            registry,
            log: EventLog::new(config.log.clone()),
            slots: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
            active: Mutex::new(ActiveRuns::default()),
            tracker: TaskTracker::new(),
            closing: CancellationToken::new(),
            interrupt: CancellationToken::new(),
            config,
            remote: crate::remote::RemoteRuns::default(),
            partial_contents: crate::content::PartialContents::default(),
        });
        let engine = Self { inner };
        crate::remote::spawn_listener(&engine);
        crate::recovery::recover_at_open(&engine).await?;
        crate::recovery::spawn_background(&engine);
        Ok(engine)
    }

    /// The registered components.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The durable streams kept in this engine's store.
    pub fn streams(&self) -> &crate::streams::Streams {
        &self.inner.streams
    }

    /// The store under this engine.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Persists a `PENDING` run and returns it at once; the run executes in a detached task
    /// that outlives the caller.
    pub async fn start(&self, request: StartRequest) -> EngineResult<Started> {
        self.start_run(request, None).await
    }

    pub(crate) async fn start_run(
        &self,
        request: StartRequest,
        parent: Option<Arc<ActiveRun>>,
    ) -> EngineResult<Started> {
        if self.inner.closing.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let component = self.inner.component(&request.target)?.clone();
        let params = validate_params(&component.info.params, &request.params)?;
        check_text("the message", &request.input)?;
        if let Some(user_id) = &request.user_id {
            check_text("user_id", user_id)?;
        }
        if let Some(key) = &request.idempotency_key {
            check_text("the idempotency key", key)?;
            if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
                return Err(InvalidInput::new(format!(
                    "the idempotency key is longer than {MAX_IDEMPOTENCY_KEY_BYTES} bytes"
                ))
                .into());
            }
        }
        let new_run = NewRun {
            run_id: request.run_id.unwrap_or_else(RunId::generate),
            session_id: request.session_id.unwrap_or_else(SessionId::generate),
            user_id: request.user_id,
            target: request.target,
            parent_run_id: request.parent_run_id,
            input: request.input,
            params,
            metadata: request.metadata,
            idempotency_key: request.idempotency_key,
            created_at: bgrun_core::now(),
        };
        // The create and the launch go on in a task of their own: a caller that goes away
        // between the two (an HTTP client hanging up) must not leave a stored run that nothing
        // launches, PENDING for good.
        let inner = Arc::clone(&self.inner);
        // A child's start is tracked by its parent, which settles its children only after.
        let tracker = parent
            .as_ref()
            .map_or(&self.inner.tracker, |parent| &parent.child_starts)
            .clone();
        tracker
            .spawn(create_and_launch(inner, new_run, component, parent))
            .await
            .map_err(|error| {
                EngineError::Store(bgrun_core::StoreError::backend("starting a run", error))
            })?
    }

    /// The run, with its content so far while it executes here.
    pub async fn get_run(&self, run_id: &RunId) -> EngineResult<Option<RunRecord>> {
        let Some(mut run) = self.inner.store.get_run(run_id).await? else {
            return Ok(None);
        };
        if run.has_completed() {
            self.inner.partial_contents.forget(run_id);
        } else if let Some(active) = self.inner.active(run_id) {
            if run.status == RunStatus::Running {
                run.content = Some(active.content());
            }
            run.last_event_index = active.writer.durable().checked_sub(1);
        } else if run.status == RunStatus::Running {
            run.content = Some(self.inner.partial_contents.content(self, &run).await?);
        }
        Ok(Some(run))
    }

    /// Runs matching `filter`, newest first; see [`Store::list_runs`].
    pub async fn list_runs(
        &self,
        filter: &RunFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> EngineResult<RunPage> {
        Ok(self.inner.store.list_runs(filter, limit, cursor).await?)
    }

    /// Cancels a run: a `PENDING` one never starts, a `RUNNING` one stops at its next await point
    /// and keeps its partial content, an unknown `run_id` gets a durable intent so that a run
    /// started later with that id ends `CANCELLED` without running. A terminal run is left as
    /// it is (`cancelled: false`).
    pub async fn cancel(&self, run_id: &RunId) -> EngineResult<CancelOutcome> {
        let inner = &self.inner;
        if let Some(active) = inner.active(run_id) {
            inner
                .store
                .request_cancel(run_id, bgrun_core::now())
                .await?;
            return Ok(self.stop_active(&active).await);
        }
        // Read before the intent is recorded: a run already terminal is left as it is, while one
        // that ends after this point ended because of this cancel.
        let before = inner.store.get_run(run_id).await?;
        if let Some(run) = before.as_ref().filter(|run| run.has_completed()) {
            return Ok(CancelOutcome {
                run_id: run_id.clone(),
                status: run.status,
                cancelled: false,
            });
        }
        inner
            .store
            .request_cancel(run_id, bgrun_core::now())
            .await?;
        // A start racing this cancel may have read the run's cancel intents before this one was
        // recorded, and launched the run here since the look above (or be about to).
        if let Some(active) = inner.cancel_active(run_id) {
            return Ok(self.stop_active(&active).await);
        }
        let outcome = match before {
            None => CancelOutcome {
                run_id: run_id.clone(),
                status: RunStatus::Cancelled,
                cancelled: true,
            },
            Some(run) if run.status == RunStatus::Pending => {
                runner::cancel_stored_pending(inner, &run).await?
            }
            // Executed by another engine: the intent reaches it through the store. Wait a little
            // for it to stop, as for a run executed here.
            Some(run) => {
                let status = self.wait_for_remote_end(run_id, run.status).await?;
                CancelOutcome {
                    run_id: run_id.clone(),
                    status,
                    cancelled: !status.is_terminal() || status == RunStatus::Cancelled,
                }
            }
        };
        Ok(outcome)
    }

    /// Cancels a run held here and waits a little for it to end.
    async fn stop_active(&self, active: &ActiveRun) -> CancelOutcome {
        let mut status = active.status.subscribe();
        if !status.borrow().is_terminal() {
            active.cancel.cancel();
            let _ = tokio::time::timeout(
                self.inner.config.cancel_wait,
                status.wait_for(|status| status.is_terminal()),
            )
            .await;
        }
        let now = *status.borrow();
        CancelOutcome {
            run_id: active.run_id.clone(),
            status: now,
            cancelled: !now.is_terminal() || now == RunStatus::Cancelled,
        }
    }

    /// The status of a run another engine executes once it is terminal, or as it is after
    /// `cancel_wait`.
    async fn wait_for_remote_end(
        &self,
        run_id: &RunId,
        mut status: RunStatus,
    ) -> EngineResult<RunStatus> {
        let remote = &self.inner.remote;
        let deadline = tokio::time::Instant::now() + self.inner.config.cancel_wait;
        let mut idle = 0;
        while !status.is_terminal() && tokio::time::Instant::now() < deadline {
            let mut changed = remote.watch(run_id);
            match self.inner.store.get_run(run_id).await? {
                Some(run) => status = run.status,
                None => break,
            }
            if status.is_terminal() {
                break;
            }
            let _ = tokio::time::timeout_at(deadline, remote.changed(&mut changed, idle)).await;
            idle += 1;
        }
        Ok(status)
    }

    /// Resumes a run's stream after `last_event_index` (from the start when `None`): the meta
    /// frame(s) of the resume protocol, then exactly the events after that index, in order, each
    /// once, ending with the terminal event, from memory or from the store.
    pub async fn resume(
        &self,
        run_id: &RunId,
        last_event_index: Option<u64>,
    ) -> EngineResult<Resume> {
        crate::resume::open(self, run_id, last_event_index).await
    }

    /// The run's events after `last_event_index`, to its terminal event, without meta frames.
    pub fn events(&self, run_id: &RunId, last_event_index: Option<u64>) -> EventStream {
        EventStream::new(self.clone(), run_id.clone(), last_event_index)
    }

    /// Waits until the run is terminal (or, during shutdown, until this engine left it to
    /// another) and returns it.
    pub async fn wait(&self, run_id: &RunId) -> EngineResult<RunRecord> {
        if let Some(active) = self.inner.active(run_id) {
            active.ended.cancelled().await;
        } else {
            // A run that has ended is answered as it is; one executing elsewhere (or about to
            // start here) is followed from the events already stored to its terminal one.
            let run = self
                .get_run(run_id)
                .await?
                .ok_or_else(|| EngineError::RunNotFound(run_id.clone()))?;
            if run.has_completed() {
                return Ok(run);
            }
            use futures::StreamExt;
            let mut events = self.events(run_id, run.last_event_index);
            while let Some(event) = events.next().await {
                event?;
            }
        }
        self.get_run(run_id)
            .await?
            .ok_or_else(|| EngineError::RunNotFound(run_id.clone()))
    }

    /// Stops taking runs, lets executing ones finish for up to `grace`, then interrupts the rest
    /// (they end `ERROR` "interrupted", or stay `RUNNING` with their lease released when their
    /// component is retryable, for another engine to run again). Queued runs stay `PENDING`.
    /// Waits for every task the engine spawned.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.closing.cancel();
        inner.tracker.close();
        if tokio::time::timeout(grace, inner.tracker.wait())
            .await
            .is_err()
        {
            inner.interrupt.cancel();
            inner.tracker.wait().await;
        }
    }

    /// What this engine has stored since it opened: runs created and ended by status, events.
    pub fn metrics(&self) -> crate::metrics::EngineMetrics {
        self.inner.metrics.snapshot()
    }

    /// Runs executing or queued in this process.
    pub fn active_runs(&self) -> usize {
        self.inner.active_map().len()
    }

    /// Meta frame for a run that cannot be read.
    pub(crate) fn error_frame(run_id: &RunId, error: impl Into<String>) -> MetaFrame {
        MetaFrame::Error {
            run_id: run_id.clone(),
            error: error.into(),
        }
    }
}
