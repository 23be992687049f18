//! The `Store` trait: everything bgrun persists goes through it.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::{StoreError, StoreResult};
use crate::event::Event;
use crate::frame::Frames;
use crate::id::RunId;
use crate::run::{
    CreateAndStart, CreateOutcome, LeaseGrant, NewRun, RunFilter, RunPage, RunRecord, Timestamp,
    Transition, TransitionOutcome,
};
use crate::stream::{
    AppendOutcome, CreateStreamOutcome, DeleteStreamOutcome, Millis, NewStream, StreamAppend,
    StreamId, StreamInfo, StreamMessage, StreamOffset,
};

/// A hint that another process changed something: a run's log grew, a cancel was requested. A
/// notification is never the truth (it can be late, duplicated or lost); the store's tables
/// are, and a consumer re-reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreNotification {
    /// The run's log is stored up to `last_event_index` (inclusive).
    Durable {
        /// The run.
        run_id: RunId,
        /// Its last stored event's index.
        last_event_index: u64,
    },
    /// A cancel intent was recorded for the run.
    Cancel {
        /// The run.
        run_id: RunId,
    },
    /// Durable stream `id` changed: appended to, closed or deleted.
    Stream {
        /// The stream.
        id: StreamId,
    },
    /// Notifications may have been missed (a reconnect, a slow consumer): re-read everything
    /// of interest.
    Resync,
}

/// A store's notifications, as [`Store::notifications`] hands them out.
pub type NotificationStream = futures::stream::BoxStream<'static, StoreNotification>;

/// The most runs one `list_runs` page may hold.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Durable storage of runs, their events, cancel intents and leases.
///
/// Object safe: the engine holds an `Arc<dyn Store>`. A backend writes these methods and runs
/// `bgrun_testkit::conformance` from one test to prove it keeps the contract:
///
/// - **Status writes are compare-and-set.** [`transition`](Store::transition) applies only when
///   the run is in `from`; of two racing writers exactly one wins and the other gets
///   [`TransitionOutcome::Conflict`].
/// - **Event logs are gapless.** [`append_events`](Store::append_events) accepts only the run's
///   next indices (0, 1, 2, ...) and keeps the run's `last_event_index` current in the same
///   write; anything else is [`StoreError::IndexConflict`](crate::StoreError::IndexConflict).
///   A terminal run takes no more events:
///   [`StoreError::RunEnded`](crate::StoreError::RunEnded).
/// - **Reads are exact.** [`read_events`](Store::read_events) returns the events after an index,
///   in order, as they were written.
/// - **Cancel intents outlive runs.** An intent can be recorded for a run that does not exist
///   yet; [`create_run`](Store::create_run) reports it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Persists a new `PENDING` run.
    ///
    /// Fails with `RunExists` when the `run_id` is taken. When `idempotency_key` names a run
    /// created within [`IDEMPOTENCY_WINDOW_SECS`](crate::IDEMPOTENCY_WINDOW_SECS), creates
    /// nothing and returns [`CreateOutcome::Existing`]. Otherwise reports, in the same atomic
    /// step, whether a cancel intent was already recorded for the id.
    async fn create_run(&self, run: NewRun) -> StoreResult<CreateOutcome>;

    /// [`create_run`](Store::create_run) and, when it created the run and found no cancel
    /// intent for it, `PENDING -> RUNNING` with `started` (the run's event 0), as one atomic
    /// write: either both are stored or neither is. For an engine that holds no leases (the
    /// store serves one process): a run that can execute at once is stored and started in one
    /// write instead of two.
    ///
    /// The default creates the run only ([`CreateAndStart::started`] is `None`); the caller
    /// then starts it with a write of its own.
    async fn create_and_start_run(
        &self,
        run: NewRun,
        started: &Event,
    ) -> StoreResult<CreateAndStart> {
        let _ = started;
        Ok(CreateAndStart {
            created: self.create_run(run).await?,
            started: None,
        })
    }

    /// [`create_and_start_run`](Store::create_and_start_run) for an engine that holds leases
    /// (the store is shared by several processes): a run it starts is also leased to `owner`
    /// for `ttl` from now (as [`acquire_lease`](Store::acquire_lease) grants it), all in one
    /// atomic write. The run is then never `RUNNING` without its lease, and the engine's first
    /// write after the create is the run's own.
    ///
    /// A run it does not start (not created, a cancel intent, a refused event) gets no lease.
    /// The default creates the run only ([`CreateAndStart::started`] is `None`); the caller
    /// then leases and starts it with a write of its own
    /// ([`lease_and_transition`](Store::lease_and_transition)).
    async fn create_and_start_leased(
        &self,
        run: NewRun,
        started: &Event,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<CreateAndStart> {
        let _ = (started, owner, ttl);
        Ok(CreateAndStart {
            created: self.create_run(run).await?,
            started: None,
        })
    }

    /// The run, or `None`.
    async fn get_run(&self, run_id: &RunId) -> StoreResult<Option<RunRecord>>;

    /// Runs matching `filter`, newest first: by `created_at` descending, runs with the same
    /// `created_at` by insertion order, the last inserted first (never by `run_id`); at most
    /// `limit` (1..=[`MAX_PAGE_SIZE`]), continuing after `cursor` (from a previous page).
    /// A cursor this store did not hand out is `InvalidCursor`.
    async fn list_runs(
        &self,
        filter: &RunFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<RunPage>;

    /// Appends events to a non-terminal run's log. `events` must continue the log exactly: the
    /// first index is the run's next, each next one +1; anything else is `IndexConflict` and
    /// writes nothing. An empty `events` on a live run is a no-op (`Ok`, the run unchanged).
    /// A run that does not exist is `RunNotFound`; a terminal one is `RunEnded` with its status
    /// (checked before the indices), and nothing is written.
    async fn append_events(&self, run_id: &RunId, events: &[Event]) -> StoreResult<()>;

    /// Compare-and-set of the run's status, with `events` appended in the same atomic write
    /// (a terminal transition stores the terminal event with the status). On `Conflict` nothing
    /// is written. A transition the status machine forbids is `InvalidTransition`, checked
    /// before anything else; then the status is compared, so a run in another status (a
    /// terminal one included) is `Conflict { actual }` whatever the events; only then are the
    /// events' indices checked (`IndexConflict`). An applied transition sets `updated_at` to
    /// the transition's `at`.
    async fn transition(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
    ) -> StoreResult<TransitionOutcome>;

    /// At most `limit` events with `event_index > after` (all when `after` is `None`), in order.
    /// A run that does not exist has no events.
    async fn read_events(
        &self,
        run_id: &RunId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Event>>;

    /// The frames ([`Frames`]) of what [`Store::read_events`] returns for the same arguments,
    /// exactly, for a store that keeps its events as frames: a replay then sends them without
    /// decoding an event. `None`, the default: the caller reads the events instead.
    async fn read_event_frames(
        &self,
        run_id: &RunId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Option<Frames>> {
        let _ = (run_id, after, limit);
        Ok(None)
    }

    /// Records the intent to cancel `run_id`, whether or not the run exists yet. Idempotent.
    async fn request_cancel(&self, run_id: &RunId, at: Timestamp) -> StoreResult<()>;

    /// Whether a cancel intent is recorded for `run_id`.
    ///
    /// The write that ends a run `CANCELLED` also drops the intents recorded for it (they have
    /// done their work; otherwise every cancel would leave a row for good): `false` after it.
    /// An intent recorded once the run has ended is kept as recorded.
    async fn cancel_requested(&self, run_id: &RunId) -> StoreResult<bool>;

    /// Takes or renews the lease on a run for `owner`, lasting `ttl` from now. Granted when the
    /// run has no lease, an expired one, or one of `owner`'s. A lease is live while now is
    /// before its expiry, so a zero `ttl` grants a lease that has lapsed at once. A run that
    /// does not exist is `RunNotFound`, and no lease is taken for its id.
    async fn acquire_lease(
        &self,
        run_id: &RunId,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<LeaseGrant>;

    /// Extends every live lease of `owner` to `ttl` from now; returns how many. Lapsed leases
    /// are not renewed (nor counted): once lapsed, a run may already belong to another owner.
    async fn renew_leases(&self, owner: &str, ttl: Duration) -> StoreResult<u64>;

    /// Drops `owner`'s lease on a run (a no-op when it holds none).
    async fn release_lease(&self, run_id: &RunId, owner: &str) -> StoreResult<()>;

    /// Up to `limit` `RUNNING` or `PAUSED` runs whose lease has lapsed, or that have none: runs
    /// nobody executes any more, for recovery.
    async fn orphaned_runs(&self, limit: usize) -> StoreResult<Vec<RunRecord>>;

    /// Whether [`append_events_fenced`](Store::append_events_fenced) and
    /// [`transition_fenced`](Store::transition_fenced) check the lease. A store several
    /// processes write to must (PostgreSQL does); one that serves a single process need not.
    fn fences_writes(&self) -> bool {
        false
    }

    /// [`append_events`](Store::append_events), applied only while `owner` holds the run's
    /// lease (is the owner of its lease row, lapsed or not), checked in the same atomic write:
    /// an engine that was frozen past its lease while another took the run over writes nothing
    /// and gets `Fenced`. The default does not fence (see [`fences_writes`](Store::fences_writes)).
    async fn append_events_fenced(
        &self,
        run_id: &RunId,
        events: &[Event],
        owner: &str,
    ) -> StoreResult<()> {
        let _ = owner;
        self.append_events(run_id, events).await
    }

    /// [`transition`](Store::transition), fenced like
    /// [`append_events_fenced`](Store::append_events_fenced).
    async fn transition_fenced(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
        owner: &str,
    ) -> StoreResult<TransitionOutcome> {
        let _ = owner;
        self.transition(run_id, transition, events).await
    }

    /// How an engine starts executing a run: takes the run's lease for `owner` (as
    /// [`acquire_lease`](Store::acquire_lease)) and applies `transition` with `events` fenced by
    /// it (as [`transition_fenced`](Store::transition_fenced)), in one atomic write where the
    /// store can. `Fenced` when another owner holds a live lease. The lease stays taken when the
    /// transition is a `Conflict`. The default makes the two calls one after the other.
    async fn lease_and_transition(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<TransitionOutcome> {
        match self.acquire_lease(run_id, owner, ttl).await? {
            LeaseGrant::Granted => {
                self.transition_fenced(run_id, transition, events, owner)
                    .await
            }
            LeaseGrant::HeldBy(_) => Err(StoreError::Fenced {
                run_id: run_id.clone(),
                owner: owner.to_owned(),
            }),
        }
    }

    /// How an engine ends a run it executed: [`transition_fenced`](Store::transition_fenced),
    /// and once it is applied, [`release_lease`](Store::release_lease), in one atomic write where
    /// the store can. The default makes the two calls one after the other; a release failing
    /// after the transition applied is not an error, as a lease left on an ended run holds
    /// nothing up (only `RUNNING` and `PAUSED` runs are taken over, and leases are owner-scoped).
    async fn transition_and_release(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
        owner: &str,
    ) -> StoreResult<TransitionOutcome> {
        let outcome = self
            .transition_fenced(run_id, transition, events, owner)
            .await?;
        if matches!(outcome, TransitionOutcome::Applied(_)) {
            // See above: the run has ended either way.
            let _ = self.release_lease(run_id, owner).await;
        }
        Ok(outcome)
    }

    /// Notifications of what other processes write (PostgreSQL: LISTEN/NOTIFY), so that an
    /// engine follows a run another replica executes without polling and hears cancels meant
    /// for runs it executes. `None` (the default) for a store only one process writes; engines
    /// then look at the tables on a timer where they need to.
    fn notifications(&self) -> Option<NotificationStream> {
        None
    }

    // Durable streams (`bgrun_core::stream`). A store that keeps them overrides all of the
    // methods below and [`supports_streams`](Store::supports_streams); the defaults refuse.

    /// Whether this store keeps durable streams.
    fn supports_streams(&self) -> bool {
        false
    }

    /// Creates a stream, in one atomic write. Stream ids are never reused, not even across
    /// paths (a reader holding a deleted stream's id must not see another stream's messages).
    /// `Existing` and every refusal write nothing.
    ///
    /// - A live stream at the path: [`Existing`](CreateStreamOutcome::Existing) when
    ///   [`NewStream::matches`] it, else [`Conflict`](CreateStreamOutcome::Conflict); nothing
    ///   written either way.
    /// - A soft-deleted stream at the path, or an expired one with forks (which this
    ///   soft-deletes): [`PathGone`](CreateStreamOutcome::PathGone). An expired one without
    ///   forks is deleted (as by [`delete_stream`](Store::delete_stream)) and the path is free.
    /// - A fork whose source (by id) no longer exists:
    ///   [`SourceMissing`](CreateStreamOutcome::SourceMissing); is soft-deleted:
    ///   [`SourceGone`](CreateStreamOutcome::SourceGone). Otherwise the source's fork count
    ///   goes up by one.
    /// - The new stream's tail starts at the fork offset (0 when not a fork), its messages
    ///   follow, one offset each; `created` and `last_access` are `now`.
    async fn create_stream(&self, stream: NewStream) -> StoreResult<CreateStreamOutcome> {
        let _ = stream;
        Err(StoreError::Unsupported("durable streams"))
    }

    /// The stream living at `path` (soft-deleted or expired ones included: the caller decides
    /// what they mean), or `None`.
    async fn stream_info(&self, path: &str) -> StoreResult<Option<StreamInfo>> {
        let _ = path;
        Err(StoreError::Unsupported("durable streams"))
    }

    /// Appends to the stream at `path` in one atomic write: reads the stream and, when a
    /// producer writes, its state; asks [`plan_append`](crate::stream::plan_append); on `Err`
    /// writes nothing (not even `last_access`) and returns that outcome; on `Ok` writes the
    /// messages after the tail, one offset each, applies the plan (producer state, closed,
    /// closer; `Stream-Seq` replaced only when the plan carries one), moves `last_access`
    /// forward to `append.now` (never back: replicas' clocks differ) and returns
    /// [`Appended`](AppendOutcome::Appended).
    async fn append_stream(&self, path: &str, append: StreamAppend) -> StoreResult<AppendOutcome> {
        let _ = (path, append);
        Err(StoreError::Unsupported("durable streams"))
    }

    /// Messages of stream `id` (soft-deleted ones included) with offsets after `after` and at
    /// most `upto` (`None`: no bound), in order. Stops after the message that brings the total
    /// size to `max_bytes` or more (so it returns at least one when there is one).
    async fn read_stream(
        &self,
        id: StreamId,
        after: StreamOffset,
        upto: Option<StreamOffset>,
        max_bytes: usize,
    ) -> StoreResult<Vec<StreamMessage>> {
        let _ = (id, after, upto, max_bytes);
        Err(StoreError::Unsupported("durable streams"))
    }

    /// Deletes the stream at `path` (only if it is stream `only`, when given: another stream at
    /// the path is `NotFound`), in one atomic write. One with forks is soft-deleted. One without is removed with its messages and
    /// producers, and its source's fork count goes down by one; a soft-deleted source left
    /// without forks is removed the same way, and so on up the chain.
    async fn delete_stream(
        &self,
        path: &str,
        only: Option<StreamId>,
    ) -> StoreResult<DeleteStreamOutcome> {
        let _ = (path, only);
        Err(StoreError::Unsupported("durable streams"))
    }

    /// [`delete_stream`](Store::delete_stream) of stream `id` at `path`, only if it is expired at
    /// `now` ([`StreamInfo::is_expired`](crate::stream::StreamInfo::is_expired)), checked in the
    /// same atomic write: an append or read that kept it alive after a reader judged it expired
    /// is never deleted with it ([`NotExpired`](DeleteStreamOutcome::NotExpired)). The default
    /// looks, then deletes: a store several writers share overrides it.
    async fn expire_stream(
        &self,
        path: &str,
        id: StreamId,
        now: Millis,
    ) -> StoreResult<DeleteStreamOutcome> {
        match self.stream_info(path).await? {
            Some(info) if info.id == id && !info.is_expired(now) => {
                Ok(DeleteStreamOutcome::NotExpired)
            }
            _ => self.delete_stream(path, Some(id)).await,
        }
    }

    /// Records a read of stream `id` at `now` (a TTL counts from the last access); never moves
    /// `last_access` back. A missing stream is not an error.
    async fn touch_stream(&self, id: StreamId, now: Millis) -> StoreResult<()> {
        let _ = (id, now);
        Err(StoreError::Unsupported("durable streams"))
    }

    /// The streams expired at `now` ([`StreamInfo::is_expired`]) that are not soft-deleted, as
    /// `(path, id)`: the earliest [`expiry_deadline`](StreamInfo::expiry_deadline) first,
    /// streams with the same deadline by id, ascending; at most `limit` of them (0: none).
    /// Reads only: the caller deletes each with [`delete_stream`](Store::delete_stream), which
    /// soft-deletes one with forks, so that it is listed no more. TTLs are client `u64`s: a
    /// deadline saturates at `Millis::MAX` (a TTL too large to count never expires in practice)
    /// and is never an overflow error.
    ///
    /// The engine calls it periodically to delete expired streams nobody touches any more
    /// (`EngineConfig::stream_sweep_every`). The default refuses with `Unsupported`, as the
    /// other stream methods do: a store that keeps streams overrides it too (an engine over a
    /// store that does not keeps deleting expired streams only when they are next touched).
    async fn expired_streams(
        &self,
        now: Millis,
        limit: usize,
    ) -> StoreResult<Vec<(String, StreamId)>> {
        let _ = (now, limit);
        Err(StoreError::Unsupported("listing expired durable streams"))
    }
}
