//! The detached task that executes one run: slot, start, component, flushing, the one terminal
//! event.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bgrun_core::{
    CancellationStage, Event, LeaseGrant, Outcome, RunRecord, RunStatus, StoreError, Transition,
    TransitionOutcome,
};
use futures::FutureExt;
use serde_json::{Map, Value};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::active::ActiveRun;
use crate::context::RunContext;
use crate::engine::{CancelOutcome, EngineInner};
use crate::error::EngineResult;
use crate::registry::Registered;
use crate::runnable::RunOutput;

/// A run to execute.
pub(crate) struct Launch {
    pub(crate) record: RunRecord,
    pub(crate) component: Registered,
    pub(crate) cancel_requested: bool,
    /// The run that started this one: its cancellation reaches this run, and this run runs in
    /// its parent's concurrency slot (a parent waiting on children must not starve them).
    pub(crate) parent: Option<Arc<ActiveRun>>,
    /// The run's first event when the store started the run in the write that created it
    /// (`Store::create_and_start_run`, or `create_and_start_leased` with the run's lease):
    /// `record` is then `RUNNING`, with this event stored.
    pub(crate) started: Option<Event>,
    /// A slot taken for the run before its create (`Engine::start` when a slot was free): the
    /// run skips the start-order queue. None for a child: it runs in its parent's.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

impl Launch {
    /// A created run to launch as stored, queued for a slot (unless it is a child).
    pub(crate) fn queued(
        record: RunRecord,
        component: Registered,
        cancel_requested: bool,
        parent: Option<Arc<ActiveRun>>,
    ) -> Self {
        Self {
            record,
            component,
            cancel_requested,
            parent,
            started: None,
            permit: None,
        }
    }
}

/// Where a run stands in the concurrency limit.
enum Slot {
    /// It holds a slot of its own.
    Own(
        #[expect(dead_code, reason = "held, never read: dropping it frees the slot")]
        OwnedSemaphorePermit,
    ),
    /// It runs in its parent's slot.
    Parents,
    /// It was cancelled while it waited.
    Cancelled,
}

/// How a run ends.
enum Ending {
    Completed(RunOutput),
    Failed(String),
    Cancelled,
    /// The engine shut down past its grace period.
    Interrupted,
}

/// Registers the run, takes its place in the start-order queue, and spawns its task.
pub(crate) async fn launch(inner: &Arc<EngineInner>, mut launch: Launch) -> EngineResult<()> {
    let record = &launch.record;
    let log_error = |error| {
        bgrun_core::StoreError::backend(format!("opening the log of run {}", record.run_id), error)
    };
    let first_index = launch
        .started
        .as_ref()
        .map_or(record.next_event_index(), Event::index);
    let writer = inner
        .log
        .open(record.run_id.clone(), first_index)
        .map_err(log_error)?;
    if let Some(started) = &launch.started {
        // Stored with the run: durable at once, nothing left to flush.
        let index = writer.push(|_| started.clone()).map_err(log_error)?;
        writer.take(usize::MAX);
        writer.mark_durable(index + 1).map_err(log_error)?;
    }
    let cancel = match &launch.parent {
        Some(parent) => parent.cancel.child_token(),
        None => CancellationToken::new(),
    };
    let active = Arc::new(ActiveRun::new(
        record.run_id.clone(),
        record.session_id.clone(),
        record.target.kind,
        writer,
        cancel,
    ));
    active.status.send_replace(record.status);
    if launch.cancel_requested {
        active.cancel.cancel();
    }
    if let Some(parent) = &launch.parent {
        parent.add_child(active.clone());
    }
    inner.insert_active(active.clone());
    let task_inner = inner.clone();
    let ended = active.ended.clone().drop_guard();
    if let Some(permit) = launch.permit.take() {
        inner.tracker.spawn(async move {
            let _ended = ended;
            execute(task_inner, active, launch, Slot::Own(permit)).await;
        });
        return Ok(());
    }
    if launch.parent.is_some() {
        inner.tracker.spawn(async move {
            let _ended = ended;
            execute(task_inner, active, launch, Slot::Parents).await;
        });
        return Ok(());
    }
    // The semaphore is fair: polling the acquire once here queues this run in start order.
    let mut acquire = Box::pin(inner.slots.clone().acquire_owned());
    let ready = futures::poll!(&mut acquire);
    inner.tracker.spawn(async move {
        let _ended = ended;
        let permit = match ready {
            std::task::Poll::Ready(permit) => permit.ok(),
            std::task::Poll::Pending => {
                tokio::select! {
                    biased;
                    _ = active.cancel.cancelled() => None,
                    _ = task_inner.closing.cancelled() => {
                        // Shutting down: a queued run stays PENDING for the next engine.
                        task_inner.log_discard(&active);
                        return;
                    }
                    permit = &mut acquire => permit.ok(),
                }
            }
        };
        drop(acquire);
        let slot = permit.map_or(Slot::Cancelled, Slot::Own);
        execute(task_inner, active, launch, slot).await;
    });
    Ok(())
}

impl EngineInner {
    fn log_discard(&self, active: &ActiveRun) {
        active.writer.close();
        self.remove_active(&active.run_id);
    }
}

async fn execute(inner: Arc<EngineInner>, active: Arc<ActiveRun>, launch: Launch, slot: Slot) {
    let Launch {
        record,
        component,
        started,
        ..
    } = launch;
    if matches!(slot, Slot::Cancelled) || active.cancel.is_cancelled() {
        if started.is_some() {
            // Cancelled between the write that started it and now.
            finish(&inner, &active, RunStatus::Running, Ending::Cancelled).await;
        } else {
            cancel_before_start(&inner, &active).await;
        }
        return;
    }
    if record.status == RunStatus::Pending {
        let started = active.render(
            active.writer.next_index(),
            record.target.kind.started_event(),
            &Map::new(),
        );
        if !start_running(&inner, &active, started).await {
            release_lease(&inner, &active).await;
            return;
        }
    } else if started.is_none() && !take_lease(&inner, &active).await {
        // A run started by the write that created it holds its lease from that write.
        inner.log_discard(&active);
        return;
    }
    active.status.send_replace(RunStatus::Running);

    let flush_stop = CancellationToken::new();
    let flusher = tokio::spawn(flush_loop(
        inner.clone(),
        active.clone(),
        flush_stop.clone(),
    ));
    let ctx = RunContext {
        engine: crate::Engine {
            inner: inner.clone(),
        },
        run: active.clone(),
        input: record.input.clone().into(),
        params: Arc::new(record.params.clone()),
    };
    let work = AssertUnwindSafe(component.runnable.run(ctx)).catch_unwind();
    let ending = tokio::select! {
        biased;
        _ = active.cancel.cancelled() => Ending::Cancelled,
        _ = inner.interrupt.cancelled() => Ending::Interrupted,
        result = work => match result {
            Ok(Ok(output)) => Ending::Completed(output),
            Ok(Err(failure)) => Ending::Failed(failure.message),
            Err(panic) => Ending::Failed(panic_message(panic.as_ref())),
        },
    };
    // No child outlives its parent: what still runs is cancelled, and its end is awaited so
    // that the parent's terminal state is written last.
    active.settle_children().await;
    flush_stop.cancel();
    if let Err(error) = flusher.await {
        tracing::error!(run_id = %active.run_id, %error, "flusher task failed");
    }
    let ending = match (active.store_failure(), ending) {
        (Some(failure), _) => Ending::Failed(format!("storing the run's events failed: {failure}")),
        (None, ending) => ending,
    };
    if matches!(ending, Ending::Interrupted) && component.info.retryable {
        // Left RUNNING with its events stored; another engine runs it again.
        let events = active.writer.take(usize::MAX);
        if let Some(last) = events.last() {
            if append_with_retry(&inner, &active, &events).await.is_ok() {
                let _ = active.writer.mark_durable(last.index() + 1);
            }
        }
        release_lease(&inner, &active).await;
        inner.log_discard(&active);
        return;
    }
    if !finish(&inner, &active, RunStatus::Running, ending).await {
        release_lease(&inner, &active).await;
    }
}

/// `PENDING -> RUNNING` with the run's first event, and the run's lease where leases are used,
/// in one store write. False when the run was no longer `PENDING` (cancelled meanwhile), is
/// leased by another engine, or the store failed.
async fn start_running(inner: &EngineInner, active: &ActiveRun, started: Event) -> bool {
    let transition = Transition::new(RunStatus::Pending, RunStatus::Running);
    let index = started.index();
    let Ok(_) = active.writer.push(|_| started.clone()) else {
        return false;
    };
    let events = active.writer.take(usize::MAX);
    let written = if inner.config.exclusive_store {
        inner
            .store
            .transition(&active.run_id, &transition, &events)
            .await
    } else {
        inner
            .store
            .lease_and_transition(
                &active.run_id,
                &transition,
                &events,
                &inner.config.owner,
                inner.config.lease_ttl,
            )
            .await
    };
    match written {
        Ok(TransitionOutcome::Applied(_)) => {
            let _ = active.writer.mark_durable(index + 1);
            true
        }
        Ok(TransitionOutcome::Conflict { actual }) => {
            tracing::info!(run_id = %active.run_id, %actual, "run left PENDING elsewhere");
            active.status.send_replace(actual);
            // The stream held an event the store refused: readers must go to the store.
            inner.log.remove(&active.run_id);
            inner.remove_active(&active.run_id);
            false
        }
        Err(StoreError::Fenced { .. }) => {
            tracing::info!(run_id = %active.run_id, "run is leased by another engine");
            inner.log.remove(&active.run_id);
            inner.remove_active(&active.run_id);
            false
        }
        Err(error) => {
            tracing::error!(run_id = %active.run_id, %error, "cannot start run");
            active.writer.untake();
            finish(
                inner,
                active,
                RunStatus::Pending,
                Ending::Failed(format!("cannot start the run: {error}")),
            )
            .await;
            false
        }
    }
}

async fn cancel_before_start(inner: &EngineInner, active: &ActiveRun) {
    finish(inner, active, RunStatus::Pending, Ending::Cancelled).await;
}

/// Cancels a `PENDING` run no engine here holds (queued by a process that died, or elsewhere).
pub(crate) async fn cancel_stored_pending(
    inner: &EngineInner,
    run: &RunRecord,
) -> EngineResult<CancelOutcome> {
    let terminal = terminal_event(
        run,
        Outcome::Cancelled,
        &Map::from_iter([("content".to_owned(), Value::String(String::new()))]),
    );
    let transition = Transition {
        content: Some(String::new()),
        cancellation_stage: Some(CancellationStage::Pending),
        ..Transition::new(RunStatus::Pending, RunStatus::Cancelled)
    };
    let outcome = inner
        .store
        .transition(&run.run_id, &transition, std::slice::from_ref(&terminal))
        .await?;
    Ok(match outcome {
        TransitionOutcome::Applied(_) => CancelOutcome {
            run_id: run.run_id.clone(),
            status: RunStatus::Cancelled,
            cancelled: true,
        },
        TransitionOutcome::Conflict { actual } => CancelOutcome {
            run_id: run.run_id.clone(),
            status: actual,
            cancelled: !actual.is_terminal() || actual == RunStatus::Cancelled,
        },
    })
}

/// Renders a terminal event for a run no engine holds, at its next index.
pub(crate) fn terminal_event(
    run: &RunRecord,
    outcome: Outcome,
    fields: &Map<String, Value>,
) -> Event {
    Event::render(
        bgrun_core::Envelope {
            run_id: &run.run_id,
            session_id: &run.session_id,
            created_at: bgrun_core::now(),
        },
        run.next_event_index(),
        run.target.kind.terminal_event(outcome),
        fields,
    )
}

/// Stores the run's end with its remaining events and its one terminal event in one write (with
/// the release of its lease, for a started run where leases are used), then lets subscribers
/// see them. True when the lease was released with it.
async fn finish(inner: &EngineInner, active: &ActiveRun, from: RunStatus, ending: Ending) -> bool {
    let content = active.content();
    let (outcome, content, error, stage) = match ending {
        Ending::Completed(output) => (
            Outcome::Completed,
            output.content.unwrap_or(content),
            None,
            None,
        ),
        Ending::Failed(message) => (Outcome::Error, message.clone(), Some(message), None),
        Ending::Interrupted => (
            Outcome::Error,
            "interrupted".to_owned(),
            Some("interrupted".to_owned()),
            None,
        ),
        Ending::Cancelled => (
            Outcome::Cancelled,
            content,
            None,
            Some(if from == RunStatus::Pending {
                CancellationStage::Pending
            } else {
                CancellationStage::Executing
            }),
        ),
    };
    let mut fields = Map::new();
    fields.insert("content".into(), Value::String(content.clone()));
    if let Some(error) = &error {
        fields.insert("error".into(), Value::String(error.clone()));
    }
    let event_type = active.kind.terminal_event(outcome);
    let pushed = active
        .writer
        .push(|index| active.render(index, event_type, &fields));
    let Ok(terminal_index) = pushed else {
        return false;
    };
    let events = active.writer.take(usize::MAX);
    let transition = Transition {
        content: Some(content),
        error,
        cancellation_stage: stage,
        ..Transition::new(from, outcome.status())
    };
    let mut backoff = Duration::from_millis(10);
    let mut attempts = 0;
    // A run that never started holds no lease: its compare-and-set from PENDING is the guard. A
    // started one writes its end only while it holds its lease, and lets go of it with it.
    let releases = from != RunStatus::Pending && !inner.config.exclusive_store;
    let mut released = false;
    let final_status = loop {
        attempts += 1;
        let written = if releases {
            inner
                .store
                .transition_and_release(&active.run_id, &transition, &events, &inner.config.owner)
                .await
        } else if from == RunStatus::Pending {
            inner
                .store
                .transition(&active.run_id, &transition, &events)
                .await
        } else {
            inner.transition(&active.run_id, &transition, &events).await
        };
        match written {
            Ok(TransitionOutcome::Applied(_)) => {
                let _ = active.writer.mark_durable(terminal_index + 1);
                released = releases;
                break outcome.status();
            }
            Ok(TransitionOutcome::Conflict { actual }) => {
                // Either an earlier attempt committed without our hearing, or another engine
                // ended the run: in both cases the store's log is the truth.
                if actual != transition.to {
                    tracing::warn!(run_id = %active.run_id, %actual, "run was ended elsewhere");
                }
                inner.log.remove(&active.run_id);
                break actual;
            }
            Err(error @ StoreError::Fenced { .. }) => {
                tracing::warn!(run_id = %active.run_id, %error, "another engine took the run over");
                inner.log.remove(&active.run_id);
                break from;
            }
            Err(error) if attempts < 5 => {
                tracing::warn!(run_id = %active.run_id, %error, attempts, "retrying the run's end");
                tokio::time::sleep(backoff).await;
                backoff *= 4;
            }
            Err(error) => {
                tracing::error!(run_id = %active.run_id, %error, "cannot store the run's end; it is left for recovery");
                inner.log.remove(&active.run_id);
                break from;
            }
        }
    };
    active.writer.close();
    inner.remove_active(&active.run_id);
    active.status.send_replace(final_status);
    released
}

/// Leases the run to this engine, unless the store serves this process alone (then nobody else
/// could take it over, and the writes are saved).
async fn take_lease(inner: &EngineInner, active: &ActiveRun) -> bool {
    if inner.config.exclusive_store {
        return true;
    }
    match inner
        .store
        .acquire_lease(&active.run_id, &inner.config.owner, inner.config.lease_ttl)
        .await
    {
        Ok(LeaseGrant::Granted) => true,
        Ok(LeaseGrant::HeldBy(other)) => {
            tracing::info!(run_id = %active.run_id, %other, "run is leased by another engine");
            false
        }
        Err(error) => {
            tracing::error!(run_id = %active.run_id, %error, "cannot lease run");
            false
        }
    }
}

async fn release_lease(inner: &EngineInner, active: &ActiveRun) {
    if inner.config.exclusive_store {
        return;
    }
    if let Err(error) = inner
        .store
        .release_lease(&active.run_id, &inner.config.owner)
        .await
    {
        tracing::warn!(run_id = %active.run_id, %error, "cannot release lease");
    }
}

/// Group commit for one run: while a batch is written the next accumulates, so batches grow
/// exactly as large as the store is slow.
async fn flush_loop(inner: Arc<EngineInner>, active: Arc<ActiveRun>, stop: CancellationToken) {
    let batch = inner.config.flush_batch.max(1);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = active.writer.pending() => {}
        }
        let events = active.writer.take(batch);
        let Some(last) = events.last() else {
            continue;
        };
        let mark = last.index() + 1;
        match append_with_retry(&inner, &active, &events).await {
            Ok(()) => {
                let _ = active.writer.mark_durable(mark);
            }
            Err(error) => {
                active.writer.untake();
                active.set_store_failure(error.to_string());
                return;
            }
        }
    }
}

/// Appends, retrying transient failures. An append whose commit went through unheard is
/// recognised on retry by the store asking for the index after it.
async fn append_with_retry(
    inner: &EngineInner,
    active: &ActiveRun,
    events: &[Event],
) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(());
    };
    let mut backoff = Duration::from_millis(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match inner.append(&active.run_id, events).await {
            Ok(()) => return Ok(()),
            Err(StoreError::IndexConflict { expected, .. })
                if attempts > 1 && expected == last.index() + 1 =>
            {
                return Ok(())
            }
            Err(error @ (StoreError::Backend { .. } | StoreError::Closed)) if attempts < 5 => {
                tracing::warn!(run_id = %active.run_id, %error, first = first.index(), "retrying append");
                tokio::time::sleep(backoff).await;
                backoff *= 4;
            }
            Err(error) => return Err(error),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    format!("the component panicked: {detail}")
}
