//! An example bgrun store written the way a third party writes one: its own crate, depending only
//! on `bgrun-core`, implementing [`Store`], and proving it keeps the contract with one test that
//! calls `bgrun_testkit::assert_conformance` (see `tests/conformance.rs`).
//!
//! It keeps everything in memory behind one mutex, so it is small enough to read as
//! documentation of what each [`Store`] method must do. It does not persist: its test harness
//! answers `reopen` with `None`, and the suite reports the persistence check as skipped.
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
        Ok(TransitionOutcome::Applied(Box::new(record.clone())))
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
}
