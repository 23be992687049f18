//! Counters of what an engine stored and read: runs created and ended by status, events
//! appended, events read back from the store.
//!
//! Counted at the store boundary (a wrapper around the engine's store), so every path that
//! writes (start, finish, cancel before start, recovery) counts without knowing of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bgrun_core::stream::{
    AppendOutcome, CreateStreamOutcome, DeleteStreamOutcome, Millis, NewStream, StreamAppend,
    StreamId, StreamInfo, StreamMessage, StreamOffset,
};
use bgrun_core::{
    CreateAndStart, CreateOutcome, Event, Frames, LeaseGrant, NewRun, RunFilter, RunId, RunPage,
    RunRecord, RunStatus, Store, StoreResult, Timestamp, Transition, TransitionOutcome,
};

/// A snapshot of an engine's counters, since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineMetrics {
    /// Runs created (`PENDING`).
    pub runs_created: u64,
    /// Runs started (`PENDING -> RUNNING`), in the write that created them or in one of their
    /// own.
    pub runs_started: u64,
    /// Runs ended `COMPLETED`.
    pub runs_completed: u64,
    /// Runs ended `ERROR`.
    pub runs_errored: u64,
    /// Runs ended `CANCELLED`.
    pub runs_cancelled: u64,
    /// Events stored.
    pub events_appended: u64,
    /// Events read back from the store (replays of runs no longer in memory, runs executed
    /// elsewhere).
    pub events_read: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    created: AtomicU64,
    started: AtomicU64,
    completed: AtomicU64,
    errored: AtomicU64,
    cancelled: AtomicU64,
    events: AtomicU64,
    events_read: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> EngineMetrics {
        EngineMetrics {
            runs_created: self.created.load(Ordering::Relaxed),
            runs_started: self.started.load(Ordering::Relaxed),
            runs_completed: self.completed.load(Ordering::Relaxed),
            runs_errored: self.errored.load(Ordering::Relaxed),
            runs_cancelled: self.cancelled.load(Ordering::Relaxed),
            events_appended: self.events.load(Ordering::Relaxed),
            events_read: self.events_read.load(Ordering::Relaxed),
        }
    }
}

/// The engine's store, counting what it writes.
pub(crate) struct CountingStore {
    inner: Arc<dyn Store>,
    counters: Arc<Counters>,
}

impl CountingStore {
    pub(crate) fn wrap(inner: Arc<dyn Store>, counters: Arc<Counters>) -> Arc<dyn Store> {
        Arc::new(Self { inner, counters })
    }

    fn count_appended(&self, events: &[Event]) {
        self.counters
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
    }

    fn count_create_and_start(&self, outcome: &CreateAndStart, started: &Event) {
        if matches!(outcome.created, CreateOutcome::Created { .. }) {
            self.counters.created.fetch_add(1, Ordering::Relaxed);
        }
        if outcome.started.is_some() {
            self.counters.started.fetch_add(1, Ordering::Relaxed);
            self.count_appended(std::slice::from_ref(started));
        }
    }

    fn count_transition(
        &self,
        transition: &Transition,
        events: &[Event],
        outcome: &TransitionOutcome,
    ) {
        if !outcome.applied() {
            return;
        }
        self.count_appended(events);
        let counter = match transition.to {
            RunStatus::Running if transition.from == RunStatus::Pending => {
                Some(&self.counters.started)
            }
            RunStatus::Completed => Some(&self.counters.completed),
            RunStatus::Error => Some(&self.counters.errored),
            RunStatus::Cancelled => Some(&self.counters.cancelled),
            _ => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl Store for CountingStore {
    async fn create_run(&self, run: NewRun) -> StoreResult<CreateOutcome> {
        let outcome = self.inner.create_run(run).await?;
        if matches!(outcome, CreateOutcome::Created { .. }) {
            self.counters.created.fetch_add(1, Ordering::Relaxed);
        }
        Ok(outcome)
    }

    async fn create_and_start_run(
        &self,
        run: NewRun,
        started: &Event,
    ) -> StoreResult<CreateAndStart> {
        let outcome = self.inner.create_and_start_run(run, started).await?;
        self.count_create_and_start(&outcome, started);
        Ok(outcome)
    }

    async fn create_and_start_leased(
        &self,
        run: NewRun,
        started: &Event,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<CreateAndStart> {
        let outcome = self
            .inner
            .create_and_start_leased(run, started, owner, ttl)
            .await?;
        self.count_create_and_start(&outcome, started);
        Ok(outcome)
    }

    async fn get_run(&self, run_id: &RunId) -> StoreResult<Option<RunRecord>> {
        self.inner.get_run(run_id).await
    }

    async fn list_runs(
        &self,
        filter: &RunFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<RunPage> {
        self.inner.list_runs(filter, limit, cursor).await
    }

    async fn append_events(&self, run_id: &RunId, events: &[Event]) -> StoreResult<()> {
        self.inner.append_events(run_id, events).await?;
        self.count_appended(events);
        Ok(())
    }

    async fn transition(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
    ) -> StoreResult<TransitionOutcome> {
        let outcome = self.inner.transition(run_id, transition, events).await?;
        self.count_transition(transition, events, &outcome);
        Ok(outcome)
    }

    fn fences_writes(&self) -> bool {
        self.inner.fences_writes()
    }

    async fn append_events_fenced(
        &self,
        run_id: &RunId,
        events: &[Event],
        owner: &str,
    ) -> StoreResult<()> {
        self.inner
            .append_events_fenced(run_id, events, owner)
            .await?;
        self.count_appended(events);
        Ok(())
    }

    async fn transition_fenced(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
        owner: &str,
    ) -> StoreResult<TransitionOutcome> {
        let outcome = self
            .inner
            .transition_fenced(run_id, transition, events, owner)
            .await?;
        self.count_transition(transition, events, &outcome);
        Ok(outcome)
    }

    // Forwarded, not left to the defaults: the store's own may write in one step.
    async fn lease_and_transition(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<TransitionOutcome> {
        let outcome = self
            .inner
            .lease_and_transition(run_id, transition, events, owner, ttl)
            .await?;
        self.count_transition(transition, events, &outcome);
        Ok(outcome)
    }

    async fn transition_and_release(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
        owner: &str,
    ) -> StoreResult<TransitionOutcome> {
        let outcome = self
            .inner
            .transition_and_release(run_id, transition, events, owner)
            .await?;
        self.count_transition(transition, events, &outcome);
        Ok(outcome)
    }

    async fn read_events(
        &self,
        run_id: &RunId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        let events = self.inner.read_events(run_id, after, limit).await?;
        self.counters
            .events_read
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(events)
    }

    async fn read_event_frames(
        &self,
        run_id: &RunId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Option<Frames>> {
        let frames = self.inner.read_event_frames(run_id, after, limit).await?;
        if let Some(frames) = &frames {
            self.counters
                .events_read
                .fetch_add(frames.count, Ordering::Relaxed);
        }
        Ok(frames)
    }

    async fn request_cancel(&self, run_id: &RunId, at: Timestamp) -> StoreResult<()> {
        self.inner.request_cancel(run_id, at).await
    }

    async fn cancel_requested(&self, run_id: &RunId) -> StoreResult<bool> {
        self.inner.cancel_requested(run_id).await
    }

    async fn acquire_lease(
        &self,
        run_id: &RunId,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<LeaseGrant> {
        self.inner.acquire_lease(run_id, owner, ttl).await
    }

    async fn renew_leases(&self, owner: &str, ttl: Duration) -> StoreResult<u64> {
        self.inner.renew_leases(owner, ttl).await
    }

    async fn release_lease(&self, run_id: &RunId, owner: &str) -> StoreResult<()> {
        self.inner.release_lease(run_id, owner).await
    }

    async fn orphaned_runs(&self, limit: usize) -> StoreResult<Vec<RunRecord>> {
        self.inner.orphaned_runs(limit).await
    }

    fn notifications(&self) -> Option<bgrun_core::NotificationStream> {
        self.inner.notifications()
    }

    fn supports_streams(&self) -> bool {
        self.inner.supports_streams()
    }

    async fn create_stream(&self, stream: NewStream) -> StoreResult<CreateStreamOutcome> {
        self.inner.create_stream(stream).await
    }

    async fn stream_info(&self, path: &str) -> StoreResult<Option<StreamInfo>> {
        self.inner.stream_info(path).await
    }

    async fn append_stream(&self, path: &str, append: StreamAppend) -> StoreResult<AppendOutcome> {
        self.inner.append_stream(path, append).await
    }

    async fn read_stream(
        &self,
        id: StreamId,
        after: StreamOffset,
        upto: Option<StreamOffset>,
        max_bytes: usize,
    ) -> StoreResult<Vec<StreamMessage>> {
        self.inner.read_stream(id, after, upto, max_bytes).await
    }

    async fn delete_stream(
        &self,
        path: &str,
        only: Option<StreamId>,
    ) -> StoreResult<DeleteStreamOutcome> {
        self.inner.delete_stream(path, only).await
    }

    async fn touch_stream(&self, id: StreamId, now: Millis) -> StoreResult<()> {
        self.inner.touch_stream(id, now).await
    }

    async fn expire_stream(
        &self,
        path: &str,
        id: StreamId,
        now: Millis,
    ) -> StoreResult<DeleteStreamOutcome> {
        self.inner.expire_stream(path, id, now).await
    }

    async fn expired_streams(
        &self,
        now: Millis,
        limit: usize,
    ) -> StoreResult<Vec<(String, StreamId)>> {
        self.inner.expired_streams(now, limit).await
    }
}
