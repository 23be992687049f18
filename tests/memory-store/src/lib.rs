//! An example bgrun store written the way a third party writes one: its own crate, depending only
//! on `bgrun-core`, implementing [`Store`], and proving it keeps the contract with one test that
//! calls `bgrun_testkit::assert_conformance` (see `tests/conformance.rs`).
//!
//! It keeps everything in memory behind one mutex, so it is small enough to read as
//! documentation of what each [`Store`] method must do. It does not persist: its test harness
//! answers `reopen` with `None`, and the suite reports the persistence checks as skipped.
//!
//! It also keeps durable streams ([`bgrun_core::stream`]): the stream methods show how a store
//! uses the shared decisions ([`plan_append`], [`NewStream::matches`],
//! [`StreamInfo::is_expired`]) inside one atomic write, here the one lock.
//!
//! ```
//! use bgrun_core::{NewRun, RunKind, RunTarget, Store};
//! use bgrun_example_memory_store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), bgrun_core::StoreError> {
//! let store = MemoryStore::new();
//! let created = store.create_run(NewRun::new(RunTarget::new(RunKind::Agent, "echo"), "hi")).await?;
//! let run_id = &created.run().run_id;
//! assert_eq!(store.get_run(run_id).await?.as_ref(), Some(created.run()));
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bgrun_core::stream::{
    plan_append, AppendOutcome, CreateStreamOutcome, DeleteStreamOutcome, ForkOrigin, Millis,
    NewStream, ProducerState, StreamAppend, StreamId, StreamInfo, StreamMessage, StreamOffset,
};
use bgrun_core::{
    async_trait, now, CreateOutcome, Event, LeaseGrant, NewRun, RunFilter, RunId, RunPage,
    RunRecord, RunStatus, Store, StoreError, StoreResult, Timestamp, Transition, TransitionOutcome,
    IDEMPOTENCY_WINDOW_SECS, MAX_PAGE_SIZE,
};

/// A [`Store`] that keeps runs, events, cancel intents and leases in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    runs: HashMap<RunId, StoredRun>,
    /// Insertion counter: breaks ties between runs created in the same second.
    next_seq: u64,
    idempotency_keys: HashMap<String, RunId>,
    cancel_intents: HashSet<RunId>,
    leases: HashMap<RunId, Lease>,
    streams: Streams,
}

#[derive(Debug)]
struct StoredRun {
    seq: u64,
    record: RunRecord,
    /// `events[i].index() == i`: the log is gapless by construction.
    events: Vec<Event>,
}

impl StoredRun {
    /// Where the run sits in `list_runs` order (newest first): by creation time, then insertion.
    fn position(&self) -> (Timestamp, u64) {
        (self.record.created_at, self.seq)
    }

    /// Appends `events` if they continue the log exactly, else changes nothing.
    fn push_events(&mut self, events: &[Event]) -> StoreResult<()> {
        let next = self.record.next_event_index();
        for (offset, event) in (0u64..).zip(events) {
            if event.index() != next + offset {
                return Err(StoreError::IndexConflict {
                    run_id: self.record.run_id.clone(),
                    expected: next + offset,
                    got: event.index(),
                });
            }
        }
        if let Some(last) = events.last() {
            self.events.extend_from_slice(events);
            self.record.last_event_index = Some(last.index());
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Lease {
    owner: String,
    /// `None`: a ttl too long to represent, i.e. never.
    expires: Option<Instant>,
}

impl Lease {
    fn new(owner: &str, ttl: Duration) -> Self {
        Self {
            owner: owner.to_owned(),
            expires: Instant::now().checked_add(ttl),
        }
    }

    /// A lease with a zero ttl is lapsed at once.
    fn is_live(&self, at: Instant) -> bool {
        self.expires.is_none_or(|expires| expires > at)
    }
}

/// Durable streams. Every stream kept (live, expired or soft-deleted) lives at its path until
/// it is removed, so `paths` and `by_id` hold the same streams.
#[derive(Debug, Default)]
struct Streams {
    paths: HashMap<String, StreamId>,
    by_id: HashMap<StreamId, StoredStream>,
    /// The last id handed out. Ids are never reused: a reader holding the id of a deleted
    /// stream must not get another stream's messages.
    last_id: i64,
}

#[derive(Debug)]
struct StoredStream {
    info: StreamInfo,
    /// Its own messages (a fork's inherited ones stay with their streams), oldest first:
    /// `messages[i].offset` is the fork offset plus `i + 1`.
    messages: Vec<StreamMessage>,
    producers: HashMap<String, ProducerState>,
}

impl Streams {
    /// Removes stream `id` with its messages and producers; its source loses a fork, and a
    /// soft-deleted source left without forks is removed the same way, up the chain.
    fn remove(&mut self, id: StreamId) {
        let mut next = Some(id);
        while let Some(id) = next.take() {
            let Some(stream) = self.by_id.remove(&id) else {
                return;
            };
            if self.paths.get(&stream.info.path) == Some(&id) {
                self.paths.remove(&stream.info.path);
            }
            let Some(fork) = stream.info.fork else {
                return;
            };
            if let Some(source) = self.by_id.get_mut(&fork.source_id) {
                source.info.forks = source.info.forks.saturating_sub(1);
                if source.info.soft_deleted && source.info.forks == 0 {
                    next = Some(fork.source_id);
                }
            }
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every method leaves the state consistent before it can panic, so a poisoned lock is safe.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn matches(filter: &RunFilter, run: &RunRecord) -> bool {
    filter
        .session_id
        .as_ref()
        .is_none_or(|s| *s == run.session_id)
        && filter.status.is_none_or(|s| s == run.status)
        && filter.target.as_ref().is_none_or(|t| *t == run.target)
        && filter
            .parent_run_id
            .as_ref()
            .is_none_or(|p| Some(p) == run.parent_run_id.as_ref())
}

/// A cursor is the list position of the last run handed out: `<created_at>.<seq>`.
fn encode_cursor((created_at, seq): (Timestamp, u64)) -> String {
    format!("{created_at}.{seq}")
}

fn decode_cursor(cursor: &str) -> StoreResult<(Timestamp, u64)> {
    cursor
        .split_once('.')
        .and_then(|(created_at, seq)| Some((created_at.parse().ok()?, seq.parse().ok()?)))
        .ok_or_else(|| StoreError::InvalidCursor(cursor.to_owned()))
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_run(&self, run: NewRun) -> StoreResult<CreateOutcome> {
        let mut state = self.state();
        if let Some(key) = &run.idempotency_key {
            let earlier = state
                .idempotency_keys
                .get(key)
                .and_then(|id| state.runs.get(id));
            if let Some(earlier) = earlier {
                if run.created_at - earlier.record.created_at < IDEMPOTENCY_WINDOW_SECS {
                    return Ok(CreateOutcome::Existing(earlier.record.clone()));
                }
            }
        }
        if state.runs.contains_key(&run.run_id) {
            return Err(StoreError::RunExists(run.run_id));
        }
        let cancel_requested = state.cancel_intents.contains(&run.run_id);
        if let Some(key) = &run.idempotency_key {
            state
                .idempotency_keys
                .insert(key.clone(), run.run_id.clone());
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let record = run.into_record();
        let stored = StoredRun {
            seq,
            record: record.clone(),
            events: Vec::new(),
        };
        state.runs.insert(record.run_id.clone(), stored);
        Ok(CreateOutcome::Created {
            run: record,
            cancel_requested,
        })
    }

    async fn get_run(&self, run_id: &RunId) -> StoreResult<Option<RunRecord>> {
        Ok(self.state().runs.get(run_id).map(|run| run.record.clone()))
    }

    async fn list_runs(
        &self,
        filter: &RunFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<RunPage> {
        let after = cursor.map(decode_cursor).transpose()?;
        let limit = limit.clamp(1, MAX_PAGE_SIZE);
        let state = self.state();
        let mut runs: Vec<&StoredRun> = state
            .runs
            .values()
            .filter(|run| matches(filter, &run.record))
            .filter(|run| after.is_none_or(|after| run.position() < after))
            .collect();
        runs.sort_by_key(|run| Reverse(run.position()));
        let more = runs.len() > limit;
        runs.truncate(limit);
        let next_cursor = match runs.last() {
            Some(last) if more => Some(encode_cursor(last.position())),
            _ => None,
        };
        Ok(RunPage {
            runs: runs.into_iter().map(|run| run.record.clone()).collect(),
            next_cursor,
        })
    }

    async fn append_events(&self, run_id: &RunId, events: &[Event]) -> StoreResult<()> {
        let mut state = self.state();
        let run = state
            .runs
            .get_mut(run_id)
            .ok_or_else(|| StoreError::RunNotFound(run_id.clone()))?;
        let status = run.record.status;
        if status.is_terminal() {
            return Err(StoreError::RunEnded {
                run_id: run_id.clone(),
                status,
            });
        }
        run.push_events(events)?;
        if !events.is_empty() {
            run.record.updated_at = now();
        }
        Ok(())
    }

    async fn transition(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
    ) -> StoreResult<TransitionOutcome> {
        transition.from.check_transition(transition.to)?;
        let mut state = self.state();
        let run = state
            .runs
            .get_mut(run_id)
            .ok_or_else(|| StoreError::RunNotFound(run_id.clone()))?;
        // The compare of compare-and-set: the loser of a race learns the winner's status.
        if run.record.status != transition.from {
            return Ok(TransitionOutcome::Conflict {
                actual: run.record.status,
            });
        }
        run.push_events(events)?;
        let record = &mut run.record;
        record.status = transition.to;
        record.updated_at = transition.at;
        if transition.content.is_some() {
            record.content.clone_from(&transition.content);
        }
        if transition.error.is_some() {
            record.error.clone_from(&transition.error);
        }
        if transition.cancellation_stage.is_some() {
            record.cancellation_stage = transition.cancellation_stage;
        }
        let applied = TransitionOutcome::Applied(Box::new(record.clone()));
        if transition.to == RunStatus::Cancelled {
            // Its work done (see `Store::cancel_requested`).
            state.cancel_intents.remove(run_id);
        }
        Ok(applied)
    }

    async fn read_events(
        &self,
        run_id: &RunId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        let state = self.state();
        let Some(run) = state.runs.get(run_id) else {
            return Ok(Vec::new());
        };
        let first = after.map_or(0, |after| after.saturating_add(1));
        let first = usize::try_from(first).unwrap_or(usize::MAX);
        Ok(run.events.iter().skip(first).take(limit).cloned().collect())
    }

    async fn request_cancel(&self, run_id: &RunId, _at: Timestamp) -> StoreResult<()> {
        self.state().cancel_intents.insert(run_id.clone());
        Ok(())
    }

    async fn cancel_requested(&self, run_id: &RunId) -> StoreResult<bool> {
        Ok(self.state().cancel_intents.contains(run_id))
    }

    async fn acquire_lease(
        &self,
        run_id: &RunId,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<LeaseGrant> {
        let mut state = self.state();
        if !state.runs.contains_key(run_id) {
            return Err(StoreError::RunNotFound(run_id.clone()));
        }
        if let Some(lease) = state.leases.get(run_id) {
            if lease.owner != owner && lease.is_live(Instant::now()) {
                return Ok(LeaseGrant::HeldBy(lease.owner.clone()));
            }
        }
        state.leases.insert(run_id.clone(), Lease::new(owner, ttl));
        Ok(LeaseGrant::Granted)
    }

    async fn renew_leases(&self, owner: &str, ttl: Duration) -> StoreResult<u64> {
        let mut state = self.state();
        let at = Instant::now();
        let mut renewed = 0;
        for lease in state.leases.values_mut() {
            if lease.owner == owner && lease.is_live(at) {
                *lease = Lease::new(owner, ttl);
                renewed += 1;
            }
        }
        Ok(renewed)
    }

    async fn release_lease(&self, run_id: &RunId, owner: &str) -> StoreResult<()> {
        let mut state = self.state();
        if state.leases.get(run_id).is_some_and(|l| l.owner == owner) {
            state.leases.remove(run_id);
        }
        Ok(())
    }

    async fn orphaned_runs(&self, limit: usize) -> StoreResult<Vec<RunRecord>> {
        let state = self.state();
        let at = Instant::now();
        let mut orphans: Vec<&StoredRun> = state
            .runs
            .values()
            .filter(|run| matches!(run.record.status, RunStatus::Running | RunStatus::Paused))
            .filter(|run| {
                state
                    .leases
                    .get(&run.record.run_id)
                    .is_none_or(|lease| !lease.is_live(at))
            })
            .collect();
        orphans.sort_by_key(|run| run.seq);
        Ok(orphans
            .into_iter()
            .take(limit)
            .map(|run| run.record.clone())
            .collect())
    }

    fn supports_streams(&self) -> bool {
        true
    }

    async fn create_stream(&self, new: NewStream) -> StoreResult<CreateStreamOutcome> {
        let mut state = self.state();
        let streams = &mut state.streams;
        // The stream at the path decides first; an expired one without forks only frees the
        // path, and is removed below once nothing else refuses the create.
        let mut expired = None;
        if let Some(&id) = streams.paths.get(&new.path) {
            if let Some(existing) = streams.by_id.get_mut(&id) {
                let info = &mut existing.info;
                if info.soft_deleted {
                    return Ok(CreateStreamOutcome::PathGone);
                }
                if info.is_expired(new.now) {
                    if info.forks > 0 {
                        // Its forks still read its messages: it can only be soft-deleted.
                        info.soft_deleted = true;
                        return Ok(CreateStreamOutcome::PathGone);
                    }
                    expired = Some(id);
                } else if new.matches(info) {
                    return Ok(CreateStreamOutcome::Existing(info.clone()));
                } else {
                    return Ok(CreateStreamOutcome::Conflict(info.clone()));
                }
            }
        }
        if let Some(fork) = &new.fork {
            // The source is named by id, not path: a path created again is another stream. An
            // expired stream this create replaces is as good as removed already.
            let source = streams
                .by_id
                .get(&fork.source_id)
                .filter(|_| expired != Some(fork.source_id));
            match source {
                None => return Ok(CreateStreamOutcome::SourceMissing),
                Some(source) if source.info.soft_deleted => {
                    return Ok(CreateStreamOutcome::SourceGone)
                }
                Some(_) => {}
            }
        }
        if let Some(id) = expired {
            streams.remove(id);
        }
        if let Some(source) = new
            .fork
            .as_ref()
            .and_then(|fork| streams.by_id.get_mut(&fork.source_id))
        {
            source.info.forks += 1;
        }
        streams.last_id += 1;
        let id = StreamId::new(streams.last_id);
        let start = new.fork.as_ref().map_or(StreamOffset::ZERO, |f| f.offset);
        let mut stream = StoredStream {
            info: StreamInfo {
                id,
                path: new.path,
                content_type: new.content_type,
                expiry: new.expiry,
                created: new.now,
                last_access: new.now,
                tail: start,
                closed: new.closed,
                closed_by: None,
                last_stream_seq: None,
                fork: new.fork.as_ref().map(|fork| ForkOrigin {
                    source_path: fork.source_path.clone(),
                    source_id: fork.source_id,
                    offset: fork.offset,
                    sub_offset: fork.sub_offset,
                }),
                inherited: new.fork.map(|fork| fork.inherited).unwrap_or_default(),
                forks: 0,
                soft_deleted: false,
            },
            messages: Vec::new(),
            producers: HashMap::new(),
        };
        for data in new.messages {
            stream.info.tail = StreamOffset::new(stream.info.tail.get() + 1);
            stream.messages.push(StreamMessage {
                offset: stream.info.tail,
                data,
            });
        }
        let info = stream.info.clone();
        streams.paths.insert(info.path.clone(), id);
        streams.by_id.insert(id, stream);
        Ok(CreateStreamOutcome::Created(info))
    }

    async fn stream_info(&self, path: &str) -> StoreResult<Option<StreamInfo>> {
        let state = self.state();
        let streams = &state.streams;
        Ok(streams
            .paths
            .get(path)
            .and_then(|id| streams.by_id.get(id))
            .map(|stream| stream.info.clone()))
    }

    async fn append_stream(&self, path: &str, append: StreamAppend) -> StoreResult<AppendOutcome> {
        let mut state = self.state();
        let streams = &mut state.streams;
        let Some(stream) = streams
            .paths
            .get(path)
            .copied()
            .and_then(|id| streams.by_id.get_mut(&id))
        else {
            return Ok(AppendOutcome::NotFound);
        };
        let producer = append
            .producer
            .as_ref()
            .and_then(|claim| stream.producers.get(&claim.id));
        // Decided and written under the one lock: nothing can slip between the producer check
        // and the write, so a retried write is never taken twice.
        let plan = match plan_append(Some(&stream.info), producer, &append) {
            Ok(plan) => plan,
            Err(outcome) => return Ok(outcome),
        };
        for data in append.messages {
            stream.info.tail = StreamOffset::new(stream.info.tail.get() + 1);
            stream.messages.push(StreamMessage {
                offset: stream.info.tail,
                data,
            });
        }
        if let Some((id, producer)) = plan.producer {
            stream.producers.insert(id, producer);
        }
        if plan.close {
            stream.info.closed = true;
            stream.info.closed_by = plan.closed_by;
        }
        // An append without `Stream-Seq` leaves the last one in place.
        if plan.stream_seq.is_some() {
            stream.info.last_stream_seq = plan.stream_seq;
        }
        stream.info.last_access = stream.info.last_access.max(append.now);
        Ok(AppendOutcome::Appended {
            tail: stream.info.tail,
            closed: stream.info.closed,
        })
    }

    async fn read_stream(
        &self,
        id: StreamId,
        after: StreamOffset,
        upto: Option<StreamOffset>,
        max_bytes: usize,
    ) -> StoreResult<Vec<StreamMessage>> {
        let state = self.state();
        let Some(stream) = state.streams.by_id.get(&id) else {
            return Ok(Vec::new());
        };
        let mut read = Vec::new();
        let mut size = 0usize;
        let wanted = stream
            .messages
            .iter()
            .skip_while(|message| message.offset <= after)
            .take_while(|message| upto.is_none_or(|upto| message.offset <= upto));
        for message in wanted {
            size = size.saturating_add(message.data.len());
            read.push(message.clone());
            // The message that reaches the limit is the last, so a read always makes progress.
            if size >= max_bytes {
                break;
            }
        }
        Ok(read)
    }

    async fn delete_stream(
        &self,
        path: &str,
        only: Option<StreamId>,
    ) -> StoreResult<DeleteStreamOutcome> {
        let mut state = self.state();
        let streams = &mut state.streams;
        let Some(&id) = streams.paths.get(path) else {
            return Ok(DeleteStreamOutcome::NotFound);
        };
        if only.is_some_and(|only| only != id) {
            return Ok(DeleteStreamOutcome::NotFound);
        }
        let Some(stream) = streams.by_id.get_mut(&id) else {
            return Ok(DeleteStreamOutcome::NotFound);
        };
        if stream.info.soft_deleted {
            return Ok(DeleteStreamOutcome::Gone);
        }
        if stream.info.forks > 0 {
            // Its forks read its messages: keep them until the last fork goes.
            stream.info.soft_deleted = true;
            return Ok(DeleteStreamOutcome::SoftDeleted);
        }
        streams.remove(id);
        Ok(DeleteStreamOutcome::Deleted)
    }

    async fn expired_streams(
        &self,
        now: Millis,
        limit: usize,
    ) -> StoreResult<Vec<(String, StreamId)>> {
        let state = self.state();
        // A scan of every stream: fine for an example; a store with many streams keeps them
        // ordered by deadline (the bundled stores index it).
        let mut expired: Vec<(Millis, StreamId, &str)> = state
            .streams
            .by_id
            .values()
            .map(|stream| &stream.info)
            .filter(|info| !info.soft_deleted && info.is_expired(now))
            .filter_map(|info| {
                let deadline = info.expiry_deadline()?;
                Some((deadline, info.id, info.path.as_str()))
            })
            .collect();
        expired.sort_unstable();
        Ok(expired
            .into_iter()
            .take(limit)
            .map(|(_, id, path)| (path.to_owned(), id))
            .collect())
    }

    async fn touch_stream(&self, id: StreamId, now: Millis) -> StoreResult<()> {
        if let Some(stream) = self.state().streams.by_id.get_mut(&id) {
            stream.info.last_access = stream.info.last_access.max(now);
        }
        Ok(())
    }
}
