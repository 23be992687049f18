//! The suite itself: it passes a store that keeps the contract and names the check a broken one
//! fails. The stores are the example in-memory store (`tests/memory-store`) and wrappers around
//! it with one deliberate flaw each.

#![allow(clippy::unwrap_used)] // test scaffolding: a failed unwrap is a failed test

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bgrun_core::stream::{
    AppendOutcome, CreateStreamOutcome, DeleteStreamOutcome, Millis, NewStream, StreamAppend,
    StreamId, StreamInfo, StreamMessage, StreamOffset,
};
use bgrun_core::{
    async_trait, CreateAndStart, CreateOutcome, Event, LeaseGrant, NewRun, RunFilter, RunId,
    RunPage, RunRecord, RunStatus, Store, StoreResult, Timestamp, Transition, TransitionOutcome,
};
use bgrun_example_memory_store::MemoryStore;
use bgrun_testkit::{checks, conformance, ConformanceFailures, StoreHarness};

/// One way to break the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// `read_events` leaves out the event with index 3.
    SkipsAnIndex,
    /// A transition that lost its compare-and-set reports that it won.
    BothWin,
    /// `list_runs` orders each page by run_id.
    ListsByRunId,
    /// `create_run` never reports a cancel intent.
    ForgetsEarlyCancels,
    /// `create_and_start_run` starts every run it creates, one with a cancel intent too.
    StartsCancelledRuns,
    /// `create_and_start_leased` starts the runs it should, without leasing them.
    StartsWithoutLease,
    /// A lease with a zero ttl is taken for an hour.
    ZeroTtlLives,
    /// `cancel_requested` panics.
    PanicsOnCancelRequested,
    /// `transition_and_release` keeps the lease.
    KeepsLeaseAtEnd,
    /// Keeps no durable streams (`supports_streams` is false).
    NoStreams,
    /// `append_stream` drops the producer claim, so `plan_append` never checks it.
    IgnoresProducers,
    /// `read_stream` ignores `max_bytes`.
    ReadsPastMaxBytes,
    /// Deleting the last fork of a soft-deleted source removes the fork only: the source stays
    /// soft-deleted, its path taken.
    DeleteDoesNotCascade,
    /// `expired_streams` lists the latest deadline first.
    ListsExpiredLatestFirst,
}

#[derive(Debug)]
struct Broken {
    inner: MemoryStore,
    flaw: Flaw,
    /// Streams a [`Flaw::DeleteDoesNotCascade`] delete removed without telling the inner store.
    hidden: Mutex<HashSet<StreamId>>,
}

impl Broken {
    /// `PENDING -> RUNNING` with `started`, no lease taken: the running record if applied.
    async fn start(&self, run: &RunRecord, started: &Event) -> StoreResult<Option<RunRecord>> {
        let transition = Transition::new(RunStatus::Pending, RunStatus::Running);
        let outcome = self
            .inner
            .transition(&run.run_id, &transition, std::slice::from_ref(started))
            .await?;
        Ok(match outcome {
            TransitionOutcome::Applied(running) => Some(*running),
            TransitionOutcome::Conflict { .. } => None,
        })
    }

    fn hidden(&self, id: StreamId) -> bool {
        self.hidden.lock().unwrap().contains(&id)
    }

    /// A delete of the last fork of a soft-deleted source that forgets the source: the fork is
    /// gone (hidden), the source keeps its fork count and stays soft-deleted.
    async fn delete_without_cascade(
        &self,
        path: &str,
        only: Option<StreamId>,
    ) -> StoreResult<Option<DeleteStreamOutcome>> {
        let Some(stream) = self.stream_info(path).await? else {
            return Ok(None);
        };
        let Some(fork) = &stream.fork else {
            return Ok(None);
        };
        if only.is_some_and(|id| id != stream.id) || stream.soft_deleted || stream.forks > 0 {
            return Ok(None);
        }
        let source = self.inner.stream_info(&fork.source_path).await?;
        if !source.is_some_and(|s| s.id == fork.source_id && s.soft_deleted && s.forks == 1) {
            return Ok(None);
        }
        self.hidden.lock().unwrap().insert(stream.id);
        Ok(Some(DeleteStreamOutcome::Deleted))
    }
}

#[async_trait]
impl Store for Broken {
    async fn create_run(&self, run: NewRun) -> StoreResult<CreateOutcome> {
        match self.inner.create_run(run).await? {
            CreateOutcome::Created { run, .. } if self.flaw == Flaw::ForgetsEarlyCancels => {
                Ok(CreateOutcome::Created {
                    run,
                    cancel_requested: false,
                })
            }
            outcome => Ok(outcome),
        }
    }

    async fn create_and_start_run(
        &self,
        run: NewRun,
        started: &Event,
    ) -> StoreResult<CreateAndStart> {
        let created = self.create_run(run).await?;
        let started = match &created {
            CreateOutcome::Created { run, .. } if self.flaw == Flaw::StartsCancelledRuns => {
                self.start(run, started).await?
            }
            _ => None,
        };
        Ok(CreateAndStart { created, started })
    }

    async fn create_and_start_leased(
        &self,
        run: NewRun,
        started: &Event,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<CreateAndStart> {
        let _ = (owner, ttl);
        let created = self.create_run(run).await?;
        if self.flaw != Flaw::StartsWithoutLease {
            // As the default: created only.
            return Ok(CreateAndStart {
                created,
                started: None,
            });
        }
        let started = match &created {
            CreateOutcome::Created {
                run,
                cancel_requested: false,
            } => self.start(run, started).await?,
            _ => None,
        };
        Ok(CreateAndStart { created, started })
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
        let mut page = self.inner.list_runs(filter, limit, cursor).await?;
        if self.flaw == Flaw::ListsByRunId {
            page.runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        }
        Ok(page)
    }

    async fn append_events(&self, run_id: &RunId, events: &[Event]) -> StoreResult<()> {
        self.inner.append_events(run_id, events).await
    }

    async fn transition(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
    ) -> StoreResult<TransitionOutcome> {
        let outcome = self.inner.transition(run_id, transition, events).await?;
        match (outcome, self.flaw) {
            (TransitionOutcome::Conflict { .. }, Flaw::BothWin) => {
                let mut run = self.inner.get_run(run_id).await?.unwrap();
                run.status = transition.to;
                Ok(TransitionOutcome::Applied(Box::new(run)))
            }
            (outcome, _) => Ok(outcome),
        }
    }

    async fn read_events(
        &self,
        run_id: &RunId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        let mut events = self.inner.read_events(run_id, after, limit).await?;
        if self.flaw == Flaw::SkipsAnIndex {
            events.retain(|event| event.index() != 3);
        }
        Ok(events)
    }

    async fn request_cancel(&self, run_id: &RunId, at: Timestamp) -> StoreResult<()> {
        self.inner.request_cancel(run_id, at).await
    }

    async fn cancel_requested(&self, run_id: &RunId) -> StoreResult<bool> {
        assert!(
            self.flaw != Flaw::PanicsOnCancelRequested,
            "cancel_requested is broken"
        );
        self.inner.cancel_requested(run_id).await
    }

    async fn acquire_lease(
        &self,
        run_id: &RunId,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<LeaseGrant> {
        let ttl = match self.flaw {
            Flaw::ZeroTtlLives if ttl.is_zero() => Duration::from_secs(3600),
            _ => ttl,
        };
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

    async fn transition_and_release(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
        owner: &str,
    ) -> StoreResult<TransitionOutcome> {
        if self.flaw == Flaw::KeepsLeaseAtEnd {
            return self
                .inner
                .transition_fenced(run_id, transition, events, owner)
                .await;
        }
        self.inner
            .transition_and_release(run_id, transition, events, owner)
            .await
    }

    fn supports_streams(&self) -> bool {
        self.flaw != Flaw::NoStreams && self.inner.supports_streams()
    }

    async fn create_stream(&self, stream: NewStream) -> StoreResult<CreateStreamOutcome> {
        self.inner.create_stream(stream).await
    }

    async fn stream_info(&self, path: &str) -> StoreResult<Option<StreamInfo>> {
        let info = self.inner.stream_info(path).await?;
        Ok(info.filter(|info| !self.hidden(info.id)))
    }

    async fn append_stream(
        &self,
        path: &str,
        mut append: StreamAppend,
    ) -> StoreResult<AppendOutcome> {
        if self.flaw == Flaw::IgnoresProducers {
            append.producer = None;
        }
        self.inner.append_stream(path, append).await
    }

    async fn read_stream(
        &self,
        id: StreamId,
        after: StreamOffset,
        upto: Option<StreamOffset>,
        max_bytes: usize,
    ) -> StoreResult<Vec<StreamMessage>> {
        if self.hidden(id) {
            return Ok(Vec::new());
        }
        let max_bytes = match self.flaw {
            Flaw::ReadsPastMaxBytes => usize::MAX,
            _ => max_bytes,
        };
        self.inner.read_stream(id, after, upto, max_bytes).await
    }

    async fn delete_stream(
        &self,
        path: &str,
        only: Option<StreamId>,
    ) -> StoreResult<DeleteStreamOutcome> {
        if self.flaw == Flaw::DeleteDoesNotCascade {
            if let Some(outcome) = self.delete_without_cascade(path, only).await? {
                return Ok(outcome);
            }
        }
        self.inner.delete_stream(path, only).await
    }

    async fn touch_stream(&self, id: StreamId, now: Millis) -> StoreResult<()> {
        self.inner.touch_stream(id, now).await
    }

    async fn expired_streams(
        &self,
        now: Millis,
        limit: usize,
    ) -> StoreResult<Vec<(String, StreamId)>> {
        if self.flaw == Flaw::ListsExpiredLatestFirst {
            let mut all = self.inner.expired_streams(now, usize::MAX).await?;
            all.reverse();
            all.truncate(limit);
            return Ok(all);
        }
        self.inner.expired_streams(now, limit).await
    }
}

/// Fresh example stores; `reopen` hands back the same store (memory "persists" while the `Arc`
/// lives), or a new empty one to simulate a store that loses everything.
struct Harness {
    flaw: Option<Flaw>,
    reopen: Reopen,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reopen {
    Unsupported,
    SameStore,
    LosesEverything,
}

impl Harness {
    fn new(flaw: Option<Flaw>, reopen: Reopen) -> Self {
        Self { flaw, reopen }
    }

    fn store(&self) -> Arc<dyn Store> {
        match self.flaw {
            None => Arc::new(MemoryStore::new()),
            Some(flaw) => Arc::new(Broken {
                inner: MemoryStore::new(),
                flaw,
                hidden: Mutex::default(),
            }),
        }
    }
}

#[async_trait]
impl StoreHarness for Harness {
    async fn fresh(&self) -> Arc<dyn Store> {
        self.store()
    }

    async fn reopen(&self, store: Arc<dyn Store>) -> Option<Arc<dyn Store>> {
        match self.reopen {
            Reopen::Unsupported => None,
            Reopen::SameStore => Some(store),
            Reopen::LosesEverything => Some(self.store()),
        }
    }
}

async fn failures(flaw: Flaw) -> ConformanceFailures {
    match conformance(&Harness::new(Some(flaw), Reopen::Unsupported)).await {
        Ok(report) => panic!("a store that is {flaw:?} passed the suite: {report}"),
        Err(failures) => failures,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_store_passes_and_persistence_is_skipped_without_reopen() {
    let report = conformance(&Harness::new(None, Reopen::Unsupported))
        .await
        .unwrap_or_else(|failures| panic!("{failures}"));
    let persistence = ["persistence", "streams_persistence"];
    let others: Vec<&str> = checks::NAMES
        .into_iter()
        .filter(|name| !persistence.contains(name))
        .collect();
    assert_eq!(report.passed, others);
    let skipped: Vec<&str> = report.skipped.iter().map(|s| s.check).collect();
    assert_eq!(skipped, persistence);
    assert!(report
        .skipped
        .iter()
        .all(|s| s.reason == "the harness does not reopen stores"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistence_passes_when_the_store_survives_a_reopen() {
    let report = conformance(&Harness::new(None, Reopen::SameStore))
        .await
        .unwrap_or_else(|failures| panic!("{failures}"));
    assert_eq!(report.passed, checks::NAMES);
    assert!(report.skipped.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_loses_everything_on_reopen_fails_persistence() {
    let failures = conformance(&Harness::new(None, Reopen::LosesEverything))
        .await
        .unwrap_err();
    assert_eq!(failures.names(), ["persistence", "streams_persistence"]);
    for check in failures.names() {
        let message = failures.failure(check).unwrap().message();
        assert!(message.starts_with("once reopened"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_skips_an_index_on_read_fails_the_log_checks() {
    let failures = failures(Flaw::SkipsAnIndex).await;
    for check in ["append_and_read", "large_log", "concurrent_writers"] {
        assert!(failures.names().contains(&check), "{failures}");
    }
    assert!(!failures.names().contains(&"leases"), "{failures}");
    let message = failures.failure("append_and_read").unwrap().message();
    assert!(message.contains("expected index 3"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_where_both_cas_writers_win_fails_the_races() {
    let failures = failures(Flaw::BothWin).await;
    assert!(failures.names().contains(&"cas_races"), "{failures}");
    assert!(failures.names().contains(&"transitions"), "{failures}");
    let message = failures.failure("cas_races").unwrap().message();
    assert!(
        message.contains("expected exactly one to be Applied"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_lists_by_run_id_fails_paging() {
    let failures = failures(Flaw::ListsByRunId).await;
    assert_eq!(failures.names(), ["list_paging"], "{failures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_forgets_early_cancels_fails_the_checks_of_cancel_intents() {
    let failures = failures(Flaw::ForgetsEarlyCancels).await;
    // `create_and_start_run` and `create_and_start_leased` (the defaults: `create_run`)
    // report the intent too.
    assert_eq!(
        failures.names(),
        [
            "create_and_start",
            "create_and_start_leased",
            "cancel_intents"
        ],
        "{failures}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_starts_runs_with_a_cancel_intent_fails_create_and_start() {
    let failures = failures(Flaw::StartsCancelledRuns).await;
    assert_eq!(failures.names(), ["create_and_start"], "{failures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_starts_runs_without_their_lease_fails_create_and_start_leased() {
    let failures = failures(Flaw::StartsWithoutLease).await;
    assert_eq!(failures.names(), ["create_and_start_leased"], "{failures}");
    let message = failures
        .failure("create_and_start_leased")
        .unwrap()
        .message();
    assert!(message.contains("HeldBy(\"replica-a\")"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_whose_zero_ttl_leases_live_fails_leases() {
    let failures = failures(Flaw::ZeroTtlLives).await;
    assert_eq!(failures.names(), ["leases"], "{failures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_keeps_the_lease_at_the_end_fails_leased_transitions() {
    let failures = failures(Flaw::KeepsLeaseAtEnd).await;
    assert_eq!(failures.names(), ["leased_transitions"], "{failures}");
    let message = failures.failure("leased_transitions").unwrap().message();
    assert!(message.contains("released A's lease"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_without_streams_skips_the_stream_checks() {
    let report = conformance(&Harness::new(Some(Flaw::NoStreams), Reopen::Unsupported))
        .await
        .unwrap_or_else(|failures| panic!("{failures}"));
    let skipped: Vec<&str> = report.skipped.iter().map(|s| s.check).collect();
    let mut expected: Vec<&str> = checks::NAMES
        .iter()
        .copied()
        .filter(|name| name.starts_with("streams_"))
        .collect();
    assert_eq!(expected.len(), 10);
    // The run persistence check runs between the stream checks and the stream persistence one.
    expected.insert(9, "persistence");
    assert_eq!(skipped, expected);
    for skipped in &report.skipped {
        if skipped.check != "persistence" {
            assert_eq!(
                skipped.reason,
                checks::STREAMS_UNSUPPORTED,
                "{}",
                skipped.check
            );
        }
    }
    assert!(report
        .to_string()
        .contains("Store::supports_streams is false"));
    assert_eq!(report.passed.len(), checks::NAMES.len() - 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_ignores_producers_fails_the_producer_checks() {
    let failures = failures(Flaw::IgnoresProducers).await;
    assert_eq!(
        failures.names(),
        ["streams_producers", "streams_close", "streams_concurrency"],
        "{failures}"
    );
    let message = failures.failure("streams_producers").unwrap().message();
    assert!(
        message.contains("producer p epoch 0 seq 1")
            && message.contains("expected SequenceGap { expected: 0, received: 1 }"),
        "{message}"
    );
    let message = failures.failure("streams_concurrency").unwrap().message();
    assert!(
        message.contains("expected one Appended and one Duplicate"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_reads_past_max_bytes_fails_append_and_read() {
    let failures = failures(Flaw::ReadsPastMaxBytes).await;
    assert_eq!(failures.names(), ["streams_append_and_read"], "{failures}");
    let message = failures
        .failure("streams_append_and_read")
        .unwrap()
        .message();
    assert!(
        message.contains("it went on after the message that reached"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_whose_deletes_do_not_cascade_fails_forks_and_expiry() {
    let failures = failures(Flaw::DeleteDoesNotCascade).await;
    assert_eq!(
        failures.names(),
        ["streams_forks", "streams_expiry"],
        "{failures}"
    );
    let message = failures.failure("streams_forks").unwrap().message();
    assert!(
        message.starts_with(
            "stream_info(fork/f1) after deleting fork/g, the last fork of soft-deleted fork/f1"
        ) && message.contains("expected None"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_lists_expired_streams_latest_first_fails_the_listing() {
    let failures = failures(Flaw::ListsExpiredLatestFirst).await;
    assert_eq!(failures.names(), ["streams_expired_listing"], "{failures}");
    let message = failures
        .failure("streams_expired_listing")
        .unwrap()
        .message();
    assert!(
        message.starts_with("expired_streams(now 1700000003000, limit 100)")
            && message.contains(r#"expected [("sweep/source", "#),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_store_fails_only_the_check_that_panicked() {
    let failures = failures(Flaw::PanicsOnCancelRequested).await;
    assert_eq!(failures.names(), ["cancel_intents"], "{failures}");
    let message = failures.failure("cancel_intents").unwrap().message();
    assert!(
        message.contains("panicked: cancel_requested is broken"),
        "{message}"
    );
    // All but the failed check and the two persistence checks, skipped without a reopen.
    assert_eq!(failures.report.passed.len(), checks::NAMES.len() - 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[should_panic(expected = "the store failed 1 of 27 conformance checks")]
async fn assert_conformance_panics_with_the_failures() {
    bgrun_testkit::assert_conformance(&Harness::new(Some(Flaw::ListsByRunId), Reopen::Unsupported))
        .await;
}

/// A harness whose "fresh" stores are not empty.
struct Dirty;

#[async_trait]
impl StoreHarness for Dirty {
    async fn fresh(&self) -> Arc<dyn Store> {
        let store = MemoryStore::new();
        let run = NewRun::new(
            bgrun_core::RunTarget::new(bgrun_core::RunKind::Agent, "a"),
            "left over",
        );
        store.create_run(run).await.unwrap();
        Arc::new(store)
    }

    async fn reopen(&self, _store: Arc<dyn Store>) -> Option<Arc<dyn Store>> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_harness_whose_fresh_stores_hold_runs_is_reported() {
    let failures = conformance(&Dirty).await.unwrap_err();
    // Every check but the two persistence checks, skipped without a reopen.
    assert_eq!(failures.failed.len(), checks::NAMES.len() - 2);
    let message = failures.failure("leases").unwrap().message();
    assert!(message.contains("must return an empty store"), "{message}");
}
