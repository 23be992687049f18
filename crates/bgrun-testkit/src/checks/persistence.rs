//! Persistence across store instances.

use bgrun_core::{
    now, CreateOutcome, Event, LeaseGrant, RunFilter, RunRecord, RunStatus, Store, Transition,
};
use serde_json::json;

use crate::support::{
    apply, create, create_running, event, events, expect_eq, expect_events, fail, get, list_all,
    new_run, read_all, run_id, terminal_event, transition, CheckResult, Succeeds, T0,
};
use crate::{CheckFailure, StoreHarness};

/// What [`persistence`] found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// The store was reopened and everything was there.
    Checked,
    /// The harness does not reopen stores (the backend does not persist): nothing was checked.
    NotPersistent,
}

/// Writes runs (with every field), events, a terminal transition, cancel intents (one for a run
/// that does not exist yet), an idempotency key and a lease, reopens the store through the
/// harness and finds all of it: the same records, events, listing, intents, key and lease; the
/// reopened store goes on appending at the right index.
pub async fn persistence(harness: &dyn StoreHarness) -> CheckResult<Persistence> {
    let store = harness.fresh().await;
    let before = write(&*store).await?;
    let Some(store) = harness.reopen(store).await else {
        return Ok(Persistence::NotPersistent);
    };
    verify(&*store, &before).await.map_err(|failure| {
        CheckFailure::new(format!("once reopened through the harness: {failure}"))
    })?;
    Ok(Persistence::Checked)
}

/// What was written before the reopen.
struct Written {
    runs: Vec<RunRecord>,
    events: Vec<Vec<Event>>,
    listed: Vec<RunRecord>,
    keyed: RunRecord,
}

async fn write(store: &dyn Store) -> CheckResult<Written> {
    let mut full = new_run("run-full", "session-1", T0);
    full.user_id = Some("user-1".into());
    full.parent_run_id = Some(run_id("run-parent"));
    full.input = "input \"é\"\n✓".into();
    full.params = json!({"n": 1, "nested": {"a": [true, null]}})
        .as_object()
        .cloned()
        .unwrap_or_default();
    full.metadata = Some(json!({"k": "v"}));
    let running = create_running(store, full).await?;
    let log = events(&running, 0..25, "persist");
    store
        .append_events(&running.run_id, &log)
        .await
        .succeeds("append_events(run-full, 0..25)")?;

    let done = create_running(store, new_run("run-done", "session-1", T0 + 1)).await?;
    let done_log = [
        event(&done, 0, "persist"),
        terminal_event(&done, 1, RunStatus::Completed),
    ];
    store
        .append_events(&done.run_id, &done_log[..1])
        .await
        .succeeds("append_events(run-done, 0..1)")?;
    let complete = Transition {
        content: Some("the answer".into()),
        ..transition(RunStatus::Running, RunStatus::Completed)
    };
    apply(store, &done.run_id, &complete, &done_log[1..]).await?;

    store
        .request_cancel(&run_id("run-future"), T0)
        .await
        .succeeds("request_cancel(run-future)")?;
    store
        .request_cancel(&running.run_id, T0)
        .await
        .succeeds("request_cancel(run-full)")?;
    let mut keyed = new_run("run-keyed", "session-2", now());
    keyed.idempotency_key = Some("key-persist".into());
    let keyed = create(store, keyed).await?;
    expect_eq(
        "acquire_lease(run-full, replica-a, 1h) before the reopen",
        &store
            .acquire_lease(
                &running.run_id,
                "replica-a",
                std::time::Duration::from_secs(3600),
            )
            .await
            .succeeds("acquire_lease(run-full)")?,
        &LeaseGrant::Granted,
    )?;

    let mut runs = Vec::new();
    let mut all_events = Vec::new();
    for id in [&running.run_id, &done.run_id, &keyed.run_id] {
        runs.push(get(store, id).await?);
        all_events.push(read_all(store, id, 100).await?);
    }
    Ok(Written {
        runs,
        events: all_events,
        listed: list_all(store, &RunFilter::default(), 100).await?,
        keyed,
    })
}

async fn verify(store: &dyn Store, before: &Written) -> CheckResult {
    for (run, events) in before.runs.iter().zip(&before.events) {
        let id = &run.run_id;
        expect_eq(
            format!("get_run({id}) after the reopen"),
            &get(store, id).await?,
            run,
        )?;
        expect_events(
            format!("the events of {id} after the reopen"),
            &read_all(store, id, 7).await?,
            events,
        )?;
    }
    expect_eq(
        "list_runs after the reopen",
        &list_all(store, &RunFilter::default(), 2).await?,
        &before.listed,
    )?;
    for id in ["run-future", "run-full"] {
        expect_eq(
            format!("cancel_requested({id}) after the reopen"),
            &store
                .cancel_requested(&run_id(id))
                .await
                .succeeds(format!("cancel_requested({id})"))?,
            &true,
        )?;
    }
    expect_eq(
        "cancel_requested(run-done) after the reopen",
        &store
            .cancel_requested(&run_id("run-done"))
            .await
            .succeeds("cancel_requested(run-done)")?,
        &false,
    )?;
    match store
        .create_run(new_run("run-future", "session-1", T0 + 5))
        .await
    {
        Ok(CreateOutcome::Created {
            cancel_requested: true,
            ..
        }) => {}
        other => fail!(
            "create_run(run-future) after the reopen, with its cancel intent recorded before: expected Created {{ cancel_requested: true }}, got {other:?}"
        ),
    }
    let mut retry = new_run("run-keyed-retry", "session-2", now());
    retry.idempotency_key = Some("key-persist".into());
    match store.create_run(retry).await {
        Ok(CreateOutcome::Existing(run)) if run == before.keyed => {}
        other => fail!(
            "create_run with the idempotency key of run-keyed after the reopen: expected Existing(run-keyed), got {other:?}"
        ),
    }
    let full = &before.runs[0];
    expect_eq(
        "acquire_lease(run-full, replica-b) after the reopen, while replica-a's lease lives",
        &store
            .acquire_lease(
                &full.run_id,
                "replica-b",
                std::time::Duration::from_secs(3600),
            )
            .await
            .succeeds("acquire_lease(run-full, replica-b)")?,
        &LeaseGrant::HeldBy("replica-a".into()),
    )?;
    let next = event(full, full.next_event_index(), "persist");
    store
        .append_events(&full.run_id, std::slice::from_ref(&next))
        .await
        .succeeds(format!(
            "append_events(run-full, [{}]) after the reopen",
            next.index()
        ))?;
    let mut expected = before.events[0].clone();
    expected.push(next);
    expect_events(
        "the events of run-full after appending once reopened",
        &read_all(store, &full.run_id, 100).await?,
        &expected,
    )
}
