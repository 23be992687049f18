//! Status writes: the status machine and compare-and-set.

use std::sync::Arc;

use bgrun_core::{
    CancellationStage, Event, InvalidTransition, RunId, RunRecord, RunStatus, Store, StoreError,
    Transition, TransitionOutcome,
};
use futures::future::join_all;
use tokio::sync::Barrier;

use crate::support::{
    apply, create, ensure, event, events, expect_eq, expect_events, fail, get, new_run, read_all,
    run_id, terminal_event, transition, CheckResult, Succeeds, T0,
};

use RunStatus::{Cancelled, Completed, Error, Paused, Pending, Running};

/// Applies a transition that must win and checks the record it returns and the one stored.
async fn step(
    store: &dyn Store,
    expected: &mut RunRecord,
    transition: Transition,
    events: &[Event],
) -> CheckResult {
    let what = format!(
        "transition({}, {} -> {})",
        expected.run_id, transition.from, transition.to
    );
    let applied = apply(store, &expected.run_id, &transition, events).await?;
    expected.status = transition.to;
    expected.updated_at = transition.at;
    if let Some(last) = events.last() {
        expected.last_event_index = Some(last.index());
    }
    if transition.content.is_some() {
        expected.content.clone_from(&transition.content);
    }
    if transition.error.is_some() {
        expected.error.clone_from(&transition.error);
    }
    if transition.cancellation_stage.is_some() {
        expected.cancellation_stage = transition.cancellation_stage;
    }
    expect_eq(
        format!("{what}: the Applied record (updated_at is the transition's `at`)"),
        &applied,
        expected,
    )?;
    expect_eq(
        format!("get_run after {what}"),
        &get(store, &expected.run_id).await?,
        expected,
    )
}

/// Checks that a run's record and events are still `record` and `events`.
async fn unchanged(
    store: &dyn Store,
    record: &RunRecord,
    events: &[Event],
    after: impl std::fmt::Display,
) -> CheckResult {
    expect_eq(
        format!("get_run({}) after {after}", record.run_id),
        &get(store, &record.run_id).await?,
        record,
    )?;
    expect_events(
        format!("the events of {} after {after}", record.run_id),
        &read_all(store, &record.run_id, 100).await?,
        events,
    )
}

/// Every allowed transition applies with its fields (`content`, `error`, `cancellation_stage`,
/// `updated_at` = `at`) and events; every transition the status machine forbids is
/// `InvalidTransition` and writes nothing; a transition from a status the run is not in is
/// `Conflict { actual }` and writes nothing; one whose events do not continue the log is
/// `IndexConflict` and writes nothing; one on an unknown run is `RunNotFound`.
pub async fn transitions(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;

    // PENDING -> RUNNING -> PAUSED -> RUNNING -> COMPLETED, with events along the way.
    let mut walk = create(store, new_run("run-walk", "session-1", T0)).await?;
    let walk_events = [
        events(&walk, 0..3, "walk"),
        vec![terminal_event(&walk, 3, Completed)],
    ]
    .concat();
    let at = |seconds| Transition {
        at: T0 + seconds,
        ..transition(Pending, Running)
    };
    step(store, &mut walk, at(10), &walk_events[..1]).await?;
    let pause = Transition {
        from: Running,
        to: Paused,
        ..at(11)
    };
    step(store, &mut walk, pause, &[]).await?;
    let resume = Transition {
        from: Paused,
        to: Running,
        ..at(12)
    };
    step(store, &mut walk, resume, &walk_events[1..3]).await?;
    let complete = Transition {
        from: Running,
        to: Completed,
        content: Some("final answer ✓\nwith a second line".into()),
        ..at(13)
    };
    step(store, &mut walk, complete, &walk_events[3..]).await?;
    unchanged(store, &walk, &walk_events, "its walk to COMPLETED").await?;

    // PENDING -> RUNNING -> ERROR with an error and partial content.
    let mut failed = create(store, new_run("run-error", "session-1", T0)).await?;
    step(store, &mut failed, at(20), &[]).await?;
    let fail_it = Transition {
        from: Running,
        to: Error,
        content: Some("partial".into()),
        error: Some("boom: \"quoted\" é".into()),
        ..at(21)
    };
    let log = [terminal_event(&failed, 0, Error)];
    step(store, &mut failed, fail_it, &log).await?;

    // PENDING -> CANCELLED before it started, RUNNING -> CANCELLED while executing, PENDING -> ERROR.
    let mut cancelled = create(store, new_run("run-cancel-pending", "session-1", T0)).await?;
    let cancel = Transition {
        from: Pending,
        to: Cancelled,
        cancellation_stage: Some(CancellationStage::Pending),
        ..at(30)
    };
    let log = [terminal_event(&cancelled, 0, Cancelled)];
    step(store, &mut cancelled, cancel, &log).await?;
    let mut stopped = create(store, new_run("run-cancel-running", "session-1", T0)).await?;
    let log = [event(&stopped, 0, "stop")];
    step(store, &mut stopped, at(31), &log).await?;
    let stop = Transition {
        from: Running,
        to: Cancelled,
        cancellation_stage: Some(CancellationStage::Executing),
        ..at(32)
    };
    let log = [terminal_event(&stopped, 1, Cancelled)];
    step(store, &mut stopped, stop, &log).await?;
    let mut refused = create(store, new_run("run-pending-error", "session-1", T0)).await?;
    let refuse = Transition {
        from: Pending,
        to: Error,
        error: Some("no such component".into()),
        ..at(33)
    };
    step(store, &mut refused, refuse, &[]).await?;

    // Runs waiting in PENDING, RUNNING (with one event) and PAUSED.
    let pending = create(store, new_run("run-pending", "session-1", T0)).await?;
    let mut running = create(store, new_run("run-running", "session-1", T0)).await?;
    let log = [event(&running, 0, "running")];
    step(store, &mut running, at(40), &log).await?;
    let mut paused = create(store, new_run("run-paused", "session-1", T0)).await?;
    step(store, &mut paused, at(41), &[]).await?;
    let pause = Transition {
        from: Running,
        to: Paused,
        ..at(42)
    };
    step(store, &mut paused, pause, &[]).await?;

    // Forbidden transitions, each tried on a run in its `from` status.
    let in_status = |status: RunStatus| match status {
        Pending => &pending,
        Running => &running,
        Paused => &paused,
        Completed => &walk,
        Error => &failed,
        Cancelled => &cancelled,
    };
    for from in RunStatus::ALL {
        for to in RunStatus::ALL {
            if from.can_become(to) {
                continue;
            }
            let run = in_status(from);
            let before = read_all(store, &run.run_id, 100).await?;
            let offered = [event(run, run.next_event_index(), "forbidden")];
            let what = format!("transition({}, {from} -> {to})", run.run_id);
            match store
                .transition(&run.run_id, &transition(from, to), &offered)
                .await
            {
                Err(StoreError::InvalidTransition(InvalidTransition { from: f, to: t }))
                    if f == from && t == to => {}
                other => fail!(
                    "{what}, which the status machine forbids: expected Err(InvalidTransition {{ from: {from}, to: {to} }}), got {other:?}"
                ),
            }
            unchanged(store, run, &before, &what).await?;
        }
    }

    // Compare-and-set: the run is not in `from`.
    for (run, from, to) in [
        (&walk, Running, Cancelled),
        (&pending, Running, Completed),
        (&paused, Running, Completed),
        (&running, Pending, Cancelled),
    ] {
        let before = read_all(store, &run.run_id, 100).await?;
        let offered = [event(run, run.next_event_index(), "conflict")];
        let what = format!(
            "transition({}, {from} -> {to}) while it is {}",
            run.run_id, run.status
        );
        let outcome = store
            .transition(&run.run_id, &transition(from, to), &offered)
            .await
            .succeeds(&what)?;
        expect_eq(
            &what,
            &outcome,
            &TransitionOutcome::Conflict { actual: run.status },
        )?;
        unchanged(store, run, &before, &what).await?;
    }

    // Events that do not continue the log make the whole transition fail.
    let gap = [terminal_event(&running, 5, Completed)];
    let what =
        "transition(run-running, RUNNING -> COMPLETED) with an event at index 5 where 1 is next";
    match store
        .transition(&running.run_id, &transition(Running, Completed), &gap)
        .await
    {
        Err(StoreError::IndexConflict {
            run_id,
            expected: 1,
            got: 5,
        }) if run_id == running.run_id => {}
        other => fail!(
            "{what}: expected Err(IndexConflict {{ run_id: run-running, expected: 1, got: 5 }}), got {other:?}"
        ),
    }
    let before = events(&running, 0..1, "running");
    unchanged(store, &running, &before, what).await?;

    let missing = run_id("run-missing");
    match store
        .transition(&missing, &transition(Pending, Running), &[])
        .await
    {
        Err(StoreError::RunNotFound(id)) if id == missing => {}
        other => fail!(
            "transition of a run that does not exist: expected Err(RunNotFound(run-missing)), got {other:?}"
        ),
    }
    Ok(())
}

/// How many runs [`cas_races`] races on.
const RACES: usize = 50;

/// Racing status writers: for each of 50 runs, three tokio tasks released together try
/// different transitions from the same status, each with its own event at the same index.
/// Exactly one wins; the others get `Conflict { actual }` with the winner's status; the run
/// ends in the winner's status with only the winner's event stored.
pub async fn cas_races(store: Arc<dyn Store>) -> CheckResult {
    let mut races = Vec::new();
    for race in 0..RACES {
        let created = create(&*store, new_run(&format!("race-{race:02}"), "races", T0)).await?;
        let (base, pairs) = if race % 2 == 0 {
            let started = [event(&created, 0, "start")];
            let running = apply(
                &*store,
                &created.run_id,
                &transition(Pending, Running),
                &started,
            )
            .await?;
            let third = if race % 4 == 0 { Error } else { Paused };
            (
                running,
                [(Running, Completed), (Running, Cancelled), (Running, third)],
            )
        } else {
            (
                created,
                [(Pending, Running), (Pending, Cancelled), (Pending, Error)],
            )
        };
        let next = base.next_event_index();
        let contenders: Vec<(Transition, Vec<Event>)> = pairs
            .iter()
            .enumerate()
            .map(|(k, &(from, to))| {
                let transition = Transition {
                    content: Some(format!("written by contender {k}")),
                    ..transition(from, to)
                };
                (
                    transition,
                    vec![event(&base, next, &format!("contender-{k}"))],
                )
            })
            .collect();
        races.push((base, contenders));
    }

    // Every race at once; the contenders of one race start together.
    let mut handles = Vec::new();
    for (base, contenders) in &races {
        let barrier = Arc::new(Barrier::new(contenders.len()));
        let tasks: Vec<_> = contenders
            .iter()
            .map(|(transition, events)| {
                let (store, barrier) = (store.clone(), barrier.clone());
                let (id, transition, events) =
                    (base.run_id.clone(), transition.clone(), events.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.transition(&id, &transition, &events).await
                })
            })
            .collect();
        handles.push(join_all(tasks));
    }
    let results = join_all(handles).await;

    for ((base, contenders), outcomes) in races.iter().zip(results) {
        let mut outcomes_ok = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok(outcome) => outcomes_ok.push(outcome),
                Err(join) => fail!("{}: a racing transition task failed: {join}", base.run_id),
            }
        }
        check_race(&*store, base, contenders, outcomes_ok).await?;
    }
    Ok(())
}

async fn check_race(
    store: &dyn Store,
    base: &RunRecord,
    contenders: &[(Transition, Vec<Event>)],
    outcomes: Vec<bgrun_core::StoreResult<TransitionOutcome>>,
) -> CheckResult {
    let id: &RunId = &base.run_id;
    let tried: Vec<String> = contenders
        .iter()
        .map(|(t, _)| format!("{} -> {}", t.from, t.to))
        .collect();
    let winners: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, outcome)| matches!(outcome, Ok(TransitionOutcome::Applied(_))))
        .map(|(k, _)| k)
        .collect();
    let [winner] = winners[..] else {
        fail!(
            "{id}: racing {tried:?}: expected exactly one to be Applied, {} were; outcomes {outcomes:?}",
            winners.len()
        );
    };
    let (won, winner_events) = &contenders[winner];
    for (k, outcome) in outcomes.iter().enumerate() {
        if k == winner {
            continue;
        }
        ensure!(
            matches!(outcome, Ok(TransitionOutcome::Conflict { actual }) if *actual == won.to),
            "{id}: {} won the race, so {} expected Ok(Conflict {{ actual: {} }}), got {outcome:?}",
            tried[winner],
            tried[k],
            won.to
        );
    }
    let record = get(store, id).await?;
    expect_eq(
        format!("{id}: status and content after {} won", tried[winner]),
        &(
            record.status,
            record.content.clone(),
            record.last_event_index,
        ),
        &(won.to, won.content.clone(), Some(base.next_event_index())),
    )?;
    let mut expected = read_all_prefix(base);
    expected.extend(winner_events.iter().cloned());
    expect_events(
        format!(
            "{id}: the events after {} won (only the winner's are stored)",
            tried[winner]
        ),
        &read_all(store, id, 10).await?,
        &expected,
    )
}

/// The events a race run holds before its race.
fn read_all_prefix(base: &RunRecord) -> Vec<Event> {
    events(base, 0..base.next_event_index(), "start")
}
