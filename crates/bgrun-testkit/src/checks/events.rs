//! Event logs: appends, reads after any index, rejections, volume and concurrency.

use std::sync::Arc;

use bgrun_core::{Event, RunStatus, Store, StoreError};
use futures::future::join_all;
use tokio::sync::Barrier;

use crate::support::{
    apply, create_running, ensure, event, events, expect_eq, expect_events, expect_frames, fail,
    get, indices, new_run, read_all, run_id, terminal_event, transition, CheckResult, Succeeds, T0,
};

/// Appends in batches of varied sizes, then reads after every index (`None`, 0, 1, ... and
/// past the end) with limits 1, 2, 3, 7, 40 and 1000: each read returns exactly the events
/// after that index, up to the limit, with the JSON as written. `last_event_index` tracks the
/// appends; paging through with any limit yields the whole log; another run's log is separate;
/// an unknown run has no events.
pub async fn append_and_read(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    let run = create_running(store, new_run("run-log", "session-1", T0)).await?;
    let other = create_running(store, new_run("run-other", "session-1", T0)).await?;
    expect_eq(
        "read_events of a run without events",
        &store
            .read_events(&run.run_id, None, 10)
            .await
            .succeeds("read_events(run-log)")?,
        &Vec::new(),
    )?;
    expect_eq(
        "last_event_index of a run without events",
        &get(store, &run.run_id).await?.last_event_index,
        &None,
    )?;

    let mut all: Vec<Event> = Vec::new();
    let mut other_events: Vec<Event> = Vec::new();
    for size in [1u64, 2, 5, 1, 9, 3, 16, 4] {
        let next = all.len() as u64;
        let batch = events(&run, next..next + size, "log");
        store
            .append_events(&run.run_id, &batch)
            .await
            .succeeds(format!("append_events(run-log, {next}..{})", next + size))?;
        all.extend(batch);
        expect_eq(
            format!("last_event_index after appending {next}..{}", next + size),
            &get(store, &run.run_id).await?.last_event_index,
            &Some(next + size - 1),
        )?;
        // Interleave writes to another run: logs are per run.
        let other_event = event(&other, other_events.len() as u64, "other");
        store
            .append_events(&other.run_id, std::slice::from_ref(&other_event))
            .await
            .succeeds(format!(
                "append_events(run-other, [{}])",
                other_event.index()
            ))?;
        other_events.push(other_event);
    }

    let total = all.len();
    let afters = std::iter::once(None).chain((0..total as u64 + 3).map(Some));
    for after in afters {
        let first = after.map_or(0, |after| after as usize + 1).min(total);
        for limit in [1usize, 2, 3, 7, 40, 1000] {
            let got = store
                .read_events(&run.run_id, after, limit)
                .await
                .succeeds(format!(
                    "read_events(run-log, after {after:?}, limit {limit})"
                ))?;
            let expected = &all[first..(first + limit).min(total)];
            expect_events(
                format!("read_events(run-log, after {after:?}, limit {limit}) of a log with indices 0..={}", total - 1),
                &got,
                expected,
            )?;
            expect_frames(store, &run.run_id, after, limit, expected).await?;
        }
    }
    for page in [1usize, 3, 7, 1000] {
        expect_events(
            format!("all of run-log read in pages of {page}"),
            &read_all(store, &run.run_id, page).await?,
            &all,
        )?;
    }
    expect_events(
        "all of run-other",
        &read_all(store, &other.run_id, 2).await?,
        &other_events,
    )?;
    expect_eq(
        "read_events of a run that does not exist",
        &store
            .read_events(&run_id("run-missing"), None, 10)
            .await
            .succeeds("read_events(run-missing)")?,
        &Vec::new(),
    )?;
    Ok(())
}

/// Appends that do not continue the log exactly — a gap, an overlap, a restart at 0, a batch
/// with a hole, a repeat or the wrong order inside, a first append not at 0 — are
/// `IndexConflict` and write nothing; the right continuation still works afterwards. An append
/// to an unknown run is `RunNotFound`; an empty append to a live run is a no-op; an append to a
/// terminal run is `RunEnded` (with its status) and writes nothing. An empty append to an
/// unknown or a terminal run is the same error as a non-empty one.
pub async fn append_rejections(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    let run = create_running(store, new_run("run-strict", "session-1", T0)).await?;
    let mut stored = events(&run, 0..5, "strict");
    store
        .append_events(&run.run_id, &stored)
        .await
        .succeeds("append_events(run-strict, 0..5)")?;

    let at = |indices: &[u64]| -> Vec<Event> {
        indices
            .iter()
            .map(|&index| event(&run, index, "bad"))
            .collect()
    };
    // (what, batch, the exact (expected, got) when the error can only be that one)
    let bad = [
        ("a gap (7, 8 where 5 is next)", at(&[7, 8]), Some((5, 7))),
        (
            "an overlap (4, 5 where 5 is next)",
            at(&[4, 5]),
            Some((5, 4)),
        ),
        ("a restart at 0", at(&[0, 1]), Some((5, 0))),
        ("a hole inside the batch (5, 6, 8)", at(&[5, 6, 8]), None),
        ("a repeat inside the batch (5, 6, 6)", at(&[5, 6, 6]), None),
        ("the wrong order (6, 5)", at(&[6, 5]), None),
    ];
    for (what, batch, exact) in bad {
        let what = format!("append_events(run-strict) with {what}");
        match (store.append_events(&run.run_id, &batch).await, exact) {
            (
                Err(StoreError::IndexConflict {
                    run_id,
                    expected,
                    got,
                }),
                Some(exact),
            ) if run_id == run.run_id && (expected, got) == exact => {}
            (Err(StoreError::IndexConflict { run_id, .. }), None) if run_id == run.run_id => {}
            (other, exact) => fail!(
                "{what}: expected Err(IndexConflict {{ run_id: run-strict{} }}), got {other:?}",
                exact.map_or(String::new(), |(e, g)| format!(", expected: {e}, got: {g}"))
            ),
        }
        expect_events(
            format!("the events of run-strict after {what}"),
            &read_all(store, &run.run_id, 100).await?,
            &stored,
        )?;
        expect_eq(
            format!("last_event_index of run-strict after {what}"),
            &get(store, &run.run_id).await?.last_event_index,
            &Some(4),
        )?;
    }
    let before = get(store, &run.run_id).await?;
    store
        .append_events(&run.run_id, &[])
        .await
        .succeeds("append_events(run-strict) with no events")?;
    expect_eq(
        "get_run(run-strict) after an empty append (a no-op)",
        &get(store, &run.run_id).await?,
        &before,
    )?;
    expect_events(
        "the events of run-strict after an empty append",
        &read_all(store, &run.run_id, 100).await?,
        &stored,
    )?;
    let next = events(&run, 5..7, "strict");
    store
        .append_events(&run.run_id, &next)
        .await
        .succeeds("append_events(run-strict, 5..7) after the rejected ones")?;
    stored.extend(next);
    expect_events(
        "the events of run-strict after the right continuation",
        &read_all(store, &run.run_id, 100).await?,
        &stored,
    )?;

    let empty = create_running(store, new_run("run-empty", "session-1", T0)).await?;
    match store
        .append_events(&empty.run_id, &events(&empty, 1..3, "late"))
        .await
    {
        Err(StoreError::IndexConflict {
            run_id,
            expected: 0,
            got: 1,
        }) if run_id == empty.run_id => {}
        other => fail!(
            "the first append_events of a run starting at index 1: expected Err(IndexConflict {{ run_id: run-empty, expected: 0, got: 1 }}), got {other:?}"
        ),
    }
    expect_eq(
        "last_event_index of run-empty after a rejected first append",
        &get(store, &empty.run_id).await?.last_event_index,
        &None,
    )?;

    let missing = run_id("run-missing");
    match store
        .append_events(&missing, &events(&run, 0..1, "missing"))
        .await
    {
        Err(StoreError::RunNotFound(id)) if id == missing => {}
        other => fail!(
            "append_events to a run that does not exist: expected Err(RunNotFound(run-missing)), got {other:?}"
        ),
    }
    match store.append_events(&missing, &[]).await {
        Err(StoreError::RunNotFound(id)) if id == missing => {}
        other => fail!(
            "an empty append_events to a run that does not exist: expected Err(RunNotFound(run-missing)) (only a live run takes an empty append as a no-op), got {other:?}"
        ),
    }

    for status in [RunStatus::Completed, RunStatus::Error, RunStatus::Cancelled] {
        let id = format!("run-ended-{status}");
        let running = create_running(store, new_run(&id, "session-1", T0)).await?;
        let log = [
            event(&running, 0, "ended"),
            terminal_event(&running, 1, status),
        ];
        store
            .append_events(&running.run_id, &log[..1])
            .await
            .succeeds(format!("append_events({id}, 0..1)"))?;
        let ended = apply(
            store,
            &running.run_id,
            &transition(RunStatus::Running, status),
            &log[1..],
        )
        .await?;
        let late = [event(&ended, 2, "late")];
        match store.append_events(&ended.run_id, &late).await {
            Err(StoreError::RunEnded {
                run_id,
                status: actual,
            }) if run_id == ended.run_id && actual == status => {}
            other => fail!(
                "append_events to {id}, which is {status}: expected Err(RunEnded {{ run_id: {id}, status: {status} }}) (a terminal run takes no more events), got {other:?}"
            ),
        }
        match store.append_events(&ended.run_id, &[]).await {
            Err(StoreError::RunEnded {
                run_id,
                status: actual,
            }) if run_id == ended.run_id && actual == status => {}
            other => fail!(
                "an empty append_events to {id}, which is {status}: expected Err(RunEnded {{ run_id: {id}, status: {status} }}) (only a live run takes an empty append as a no-op), got {other:?}"
            ),
        }
        expect_events(
            format!("the events of {id} after an append while {status}"),
            &read_all(store, &ended.run_id, 100).await?,
            &log,
        )?;
        expect_eq(
            format!("get_run({id}) after an append while {status}"),
            &get(store, &ended.run_id).await?,
            &ended,
        )?;
    }
    Ok(())
}

/// How many events [`large_log`] stores.
const LARGE: u64 = 100_000;

/// A run of 100,000 events appended in batches of 1,000 reads back complete in pages (of 4,096
/// and of 1,000 from the middle), every index in order and every event's JSON as written;
/// `last_event_index` is 99,999 and the run can still end with its terminal event.
pub async fn large_log(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    let run = create_running(store, new_run("run-large", "session-1", T0)).await?;
    for start in (0..LARGE).step_by(1_000) {
        store
            .append_events(&run.run_id, &events(&run, start..start + 1_000, "large"))
            .await
            .succeeds(format!(
                "append_events(run-large, {start}..{})",
                start + 1_000
            ))?;
    }
    expect_eq(
        "last_event_index of run-large",
        &get(store, &run.run_id).await?.last_event_index,
        &Some(LARGE - 1),
    )?;
    let all = read_all(store, &run.run_id, 4_096).await?;
    ensure!(
        all.len() as u64 == LARGE,
        "run-large read in pages of 4096: expected {LARGE} events, got {} (indices {})",
        all.len(),
        indices(&all)
    );
    for (index, got) in (0..).zip(&all) {
        let expected = event(&run, index, "large");
        ensure!(
            *got == expected,
            "run-large event #{index}: expected index {index} with JSON {}, got index {} with JSON {}",
            expected.json(),
            got.index(),
            got.json()
        );
    }
    let middle = store
        .read_events(&run.run_id, Some(54_320), 1_000)
        .await
        .succeeds("read_events(run-large, after 54320, limit 1000)")?;
    expect_events(
        "read_events(run-large, after 54320, limit 1000)",
        &middle,
        &all[54_321..55_321],
    )?;
    for (after, limit) in [(None, 4_096), (Some(4_095), 4_096), (Some(54_320), 1_000)] {
        let first = after.map_or(0, |after| after as usize + 1);
        expect_frames(store, &run.run_id, after, limit, &all[first..first + limit]).await?;
    }
    expect_frames(store, &run.run_id, None, usize::MAX, &all).await?;
    let end = [terminal_event(&run, LARGE, RunStatus::Completed)];
    apply(
        store,
        &run.run_id,
        &transition(RunStatus::Running, RunStatus::Completed),
        &end,
    )
    .await?;
    let last = [all[LARGE as usize - 1].clone(), end[0].clone()];
    expect_events(
        "read_events(run-large) after its terminal event",
        &store
            .read_events(&run.run_id, Some(LARGE - 2), 10)
            .await
            .succeeds("read_events(run-large, after 99998)")?,
        &last,
    )?;
    expect_frames(store, &run.run_id, Some(LARGE - 2), 10, &last).await
}

/// How many runs [`append_races`] and [`concurrent_writers`] write to.
const WRITERS: usize = 20;

/// Racing appenders: for each of 20 runs, two tokio tasks released together append batches of
/// different lengths both starting at index 0. Exactly one succeeds; the other gets
/// `IndexConflict { expected: <the winner's length>, got: 0 }`; only the winner's events are
/// stored.
pub async fn append_races(store: Arc<dyn Store>) -> CheckResult {
    let mut races = Vec::new();
    for race in 0..WRITERS {
        let run =
            create_running(&*store, new_run(&format!("append-race-{race:02}"), "s", T0)).await?;
        let batches = [events(&run, 0..3, "a"), events(&run, 0..5, "b")];
        let barrier = Arc::new(Barrier::new(batches.len()));
        let tasks = batches.clone().map(|batch| {
            let (store, barrier, id) = (store.clone(), barrier.clone(), run.run_id.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.append_events(&id, &batch).await
            })
        });
        races.push((run, batches, join_all(tasks)));
    }
    let (runs, tasks): (Vec<_>, Vec<_>) = races
        .into_iter()
        .map(|(run, batches, tasks)| ((run, batches), tasks))
        .unzip();
    let results = join_all(tasks).await;
    for ((run, batches), outcomes) in runs.into_iter().zip(results) {
        let id = &run.run_id;
        let mut ok = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok(outcome) => ok.push(outcome),
                Err(join) => fail!("{id}: a racing append task failed: {join}"),
            }
        }
        let winners: Vec<usize> = (0..ok.len()).filter(|&k| ok[k].is_ok()).collect();
        let [winner] = winners[..] else {
            fail!(
                "{id}: two appends both starting at index 0 raced: expected exactly one to succeed, {} did: {ok:?}",
                winners.len()
            );
        };
        let loser = 1 - winner;
        let expected = batches[winner].len() as u64;
        ensure!(
            matches!(&ok[loser], Err(StoreError::IndexConflict { run_id, expected: e, got: 0 }) if run_id == id && *e == expected),
            "{id}: the append of {} events won, so the other expected Err(IndexConflict {{ expected: {expected}, got: 0 }}), got {:?}",
            expected,
            ok[loser]
        );
        expect_events(
            format!("{id}: the events after two racing appends"),
            &read_all(&*store, id, 100).await?,
            &batches[winner],
        )?;
    }
    Ok(())
}

/// How many events each task of [`concurrent_writers`] appends.
const PER_WRITER: u64 = 500;

/// Concurrent writers: 20 tokio tasks each append 500 events to their own run in batches of
/// varied sizes, all at once. Every append succeeds and every log is stored gapless and exact.
pub async fn concurrent_writers(store: Arc<dyn Store>) -> CheckResult {
    let mut runs = Vec::new();
    for writer in 0..WRITERS {
        runs.push(create_running(&*store, new_run(&format!("writer-{writer:02}"), "s", T0)).await?);
    }
    let barrier = Arc::new(Barrier::new(WRITERS));
    let tasks = runs.iter().map(|run| {
        let (store, barrier, run) = (store.clone(), barrier.clone(), run.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            let mut next = 0;
            for size in [1u64, 7, 25, 50, 3].into_iter().cycle() {
                if next == PER_WRITER {
                    break;
                }
                let end = (next + size).min(PER_WRITER);
                if let Err(error) = store
                    .append_events(&run.run_id, &events(&run, next..end, "writer"))
                    .await
                {
                    return Err(format!(
                        "append_events({}, {next}..{end}) while 19 other tasks append: expected success, got error {error}",
                        run.run_id
                    ));
                }
                next = end;
            }
            Ok(())
        })
    });
    for outcome in join_all(tasks).await {
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(message)) => fail!("{message}"),
            Err(join) => fail!("a writer task failed: {join}"),
        }
    }
    for run in &runs {
        expect_events(
            format!("{}: the events of one of 20 concurrent writers", run.run_id),
            &read_all(&*store, &run.run_id, 128).await?,
            &events(run, 0..PER_WRITER, "writer"),
        )?;
        expect_eq(
            format!("{}: last_event_index after 500 appended events", run.run_id),
            &get(&*store, &run.run_id).await?.last_event_index,
            &Some(PER_WRITER - 1),
        )?;
    }
    Ok(())
}
