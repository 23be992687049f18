//! Fixtures and assertions the checks share.

use std::fmt::{Debug, Display};
use std::ops::Range;

use bgrun_core::{
    CreateOutcome, Envelope, Event, Frames, NewRun, RunFilter, RunId, RunKind, RunRecord,
    RunStatus, RunTarget, SessionId, Store, StoreResult, Timestamp, Transition, TransitionOutcome,
};
use serde_json::{Map, Value};

use crate::CheckFailure;

/// What a check returns.
pub(crate) type CheckResult<T = ()> = Result<T, CheckFailure>;

/// Fails the check with a formatted message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err($crate::CheckFailure::new(format!($($message)+)));
        }
    };
}

/// Fails the check with a formatted message.
macro_rules! fail {
    ($($message:tt)+) => {
        return Err($crate::CheckFailure::new(format!($($message)+)))
    };
}

pub(crate) use {ensure, fail};

/// A fixed creation time, so records compare exactly.
pub(crate) const T0: Timestamp = 1_700_000_000;

/// `Ok` when `actual == expected`, else a failure naming `what`.
pub(crate) fn expect_eq<T: PartialEq + Debug>(
    what: impl Display,
    actual: &T,
    expected: &T,
) -> CheckResult {
    ensure!(
        actual == expected,
        "{what}: expected {expected:?}, got {actual:?}"
    );
    Ok(())
}

/// Turns a store error into a failure saying which call was expected to succeed.
pub(crate) trait Succeeds<T> {
    fn succeeds(self, what: impl Display) -> CheckResult<T>;
}

impl<T> Succeeds<T> for StoreResult<T> {
    fn succeeds(self, what: impl Display) -> CheckResult<T> {
        self.map_err(|error| {
            CheckFailure::new(format!(
                "{what}: expected success, got error {error} ({error:?})"
            ))
        })
    }
}

/// A run id from the suite's own (valid) text.
pub(crate) fn run_id(id: &str) -> RunId {
    // The suite only passes short printable ids, which always parse.
    RunId::parse(id).unwrap_or_else(|_| RunId::generate())
}

/// A session id from the suite's own (valid) text.
pub(crate) fn session_id(id: &str) -> SessionId {
    SessionId::parse(id).unwrap_or_else(|_| SessionId::generate())
}

/// A plain agent run: no user, no parent, no parameters.
pub(crate) fn new_run(id: &str, session: &str, created_at: Timestamp) -> NewRun {
    NewRun {
        run_id: run_id(id),
        session_id: session_id(session),
        user_id: None,
        target: RunTarget::new(RunKind::Agent, "agent-1"),
        parent_run_id: None,
        input: format!("input of {id}"),
        params: Map::new(),
        metadata: None,
        idempotency_key: None,
        created_at,
    }
}

/// The event the suite stores at `index` of `run`, tagged with who wrote it. Deterministic, so
/// a read can be checked against a fresh copy; some carry text that tests encodings.
pub(crate) fn event(run: &RunRecord, index: u64, tag: &str) -> Event {
    let mut fields = Map::new();
    fields.insert("tag".into(), Value::from(tag));
    fields.insert("n".into(), Value::from(index));
    if index % 5 == 3 {
        fields.insert(
            "content".into(),
            Value::from("line\nbreak \"quoted\" \\ é ✓ 🚀 </script> \u{7f}"),
        );
    }
    if index % 11 == 4 {
        fields.insert(
            "nested".into(),
            serde_json::json!({"list": [1, -2, 3.5, null, true], "empty": {}, "zero": 0}),
        );
    }
    let event_type = if index == 0 {
        "RunStarted"
    } else {
        "RunContent"
    };
    let offset = Timestamp::try_from(index).unwrap_or(Timestamp::MAX / 2);
    Event::render(
        Envelope {
            run_id: &run.run_id,
            session_id: &run.session_id,
            created_at: run.created_at + offset,
        },
        index,
        event_type,
        &fields,
    )
}

/// The suite's events for `indices` of `run`.
pub(crate) fn events(run: &RunRecord, indices: Range<u64>, tag: &str) -> Vec<Event> {
    indices.map(|index| event(run, index, tag)).collect()
}

/// A terminal event at `index` (the JSON says which status it ends in).
pub(crate) fn terminal_event(run: &RunRecord, index: u64, status: RunStatus) -> Event {
    let mut fields = Map::new();
    fields.insert("status".into(), Value::from(status.as_str()));
    let event_type = match status {
        RunStatus::Completed => "RunCompleted",
        RunStatus::Cancelled => "RunCancelled",
        _ => "RunError",
    };
    Event::render(
        Envelope {
            run_id: &run.run_id,
            session_id: &run.session_id,
            created_at: run.created_at + 1,
        },
        index,
        event_type,
        &fields,
    )
}

/// Creates `run`, expecting `Created` without a cancel intent, and returns the record.
pub(crate) async fn create(store: &dyn Store, run: NewRun) -> CheckResult<RunRecord> {
    let id = run.run_id.clone();
    match store
        .create_run(run)
        .await
        .succeeds(format!("create_run({id})"))?
    {
        CreateOutcome::Created {
            run,
            cancel_requested: false,
        } => Ok(run),
        other => fail!(
            "create_run({id}) of a new run: expected Created {{ cancel_requested: false }}, got {other:?}"
        ),
    }
}

/// The run, which must exist.
pub(crate) async fn get(store: &dyn Store, id: &RunId) -> CheckResult<RunRecord> {
    match store.get_run(id).await.succeeds(format!("get_run({id})"))? {
        Some(run) => Ok(run),
        None => fail!("get_run({id}): expected the run, got None"),
    }
}

/// Applies `from -> to` with `events`, expecting it to win; returns the new record.
pub(crate) async fn apply(
    store: &dyn Store,
    id: &RunId,
    transition: &Transition,
    events: &[Event],
) -> CheckResult<RunRecord> {
    let what = format!(
        "transition({id}, {} -> {}) with {} events",
        transition.from,
        transition.to,
        events.len()
    );
    match store
        .transition(id, transition, events)
        .await
        .succeeds(&what)?
    {
        TransitionOutcome::Applied(run) => Ok(*run),
        other => fail!("{what}: expected Applied, got {other:?}"),
    }
}

/// A transition at a fixed time.
pub(crate) fn transition(from: RunStatus, to: RunStatus) -> Transition {
    Transition {
        at: T0 + 100,
        ..Transition::new(from, to)
    }
}

/// Creates a run and moves it to `RUNNING` (no events).
pub(crate) async fn create_running(store: &dyn Store, run: NewRun) -> CheckResult<RunRecord> {
    let created = create(store, run).await?;
    apply(
        store,
        &created.run_id,
        &transition(RunStatus::Pending, RunStatus::Running),
        &[],
    )
    .await
}

/// Every event of a run, read in pages of `page`, checking each page is in order, after the
/// last one and not longer than asked.
pub(crate) async fn read_all(
    store: &dyn Store,
    id: &RunId,
    page: usize,
) -> CheckResult<Vec<Event>> {
    let mut all: Vec<Event> = Vec::new();
    loop {
        let after = all.last().map(Event::index);
        let events = store
            .read_events(id, after, page)
            .await
            .succeeds(format!("read_events({id}, after {after:?}, limit {page})"))?;
        ensure!(
            events.len() <= page,
            "read_events({id}, after {after:?}, limit {page}): got {} events, more than the limit",
            events.len()
        );
        if events.is_empty() {
            return Ok(all);
        }
        let mut previous = after;
        for event in &events {
            ensure!(
                previous.is_none_or(|previous| event.index() > previous),
                "read_events({id}, after {after:?}, limit {page}): expected increasing indices after {after:?}, got {:?}",
                events.iter().map(Event::index).collect::<Vec<_>>()
            );
            previous = Some(event.index());
        }
        all.extend(events);
    }
}

/// For a store that keeps its events as frames: `read_event_frames(id, after, limit)` is the
/// frames of `expected` (what `read_events` gives for the same arguments), exactly.
pub(crate) async fn expect_frames(
    store: &dyn Store,
    id: &RunId,
    after: Option<u64>,
    limit: usize,
    expected: &[Event],
) -> CheckResult {
    let what = format!("read_event_frames({id}, after {after:?}, limit {limit})");
    let Some(frames) = store
        .read_event_frames(id, after, limit)
        .await
        .succeeds(&what)?
    else {
        return Ok(());
    };
    let want = Frames::of(expected);
    ensure!(
        frames.count == want.count && (want.is_empty() || frames.first_index == want.first_index),
        "{what}: expected {} events from index {}, got {} from index {}",
        want.count,
        want.first_index,
        frames.count,
        frames.first_index
    );
    let (got, want) = (frames.to_vec(), want.to_vec());
    ensure!(
        got == want,
        "{what}: expected the frames\n{}\ngot\n{}",
        String::from_utf8_lossy(&want),
        String::from_utf8_lossy(&got)
    );
    Ok(())
}

/// `Ok` when `actual` is exactly `expected` (indices, types and JSON text).
pub(crate) fn expect_events(
    what: impl Display,
    actual: &[Event],
    expected: &[Event],
) -> CheckResult {
    for (position, (got, want)) in actual.iter().zip(expected).enumerate() {
        ensure!(
            got == want,
            "{what}: event #{position}: expected index {} {:?} with JSON {}, got index {} {:?} with JSON {}",
            want.index(),
            want.event_type(),
            want.json(),
            got.index(),
            got.event_type(),
            got.json()
        );
    }
    ensure!(
        actual.len() == expected.len(),
        "{what}: expected {} events (indices {}), got {} (indices {})",
        expected.len(),
        indices(expected),
        actual.len(),
        indices(actual)
    );
    Ok(())
}

/// A short description of the indices of `events`.
pub(crate) fn indices(events: &[Event]) -> String {
    let all: Vec<u64> = events.iter().map(Event::index).collect();
    if all.len() <= 10 {
        return format!("{all:?}");
    }
    let (head, tail) = (&all[..5], &all[all.len() - 5..]);
    format!("{head:?} ... {tail:?}")
}

/// The ids of every run matching `filter`, listed with pages of `limit`.
pub(crate) async fn list_all(
    store: &dyn Store,
    filter: &RunFilter,
    limit: usize,
) -> CheckResult<Vec<RunRecord>> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_runs(filter, limit, cursor.as_deref())
            .await
            .succeeds(format!("list_runs({filter:?}, {limit}, {cursor:?})"))?;
        ensure!(
            page.runs.len() <= limit,
            "list_runs({filter:?}, {limit}, {cursor:?}): got {} runs, more than the limit",
            page.runs.len()
        );
        all.extend(page.runs);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
        ensure!(
            all.len() <= 100_000,
            "list_runs({filter:?}, {limit}): the cursors never end"
        );
    }
}
