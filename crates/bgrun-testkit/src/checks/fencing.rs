//! Fenced writes: an engine whose lease another took over writes nothing more.

use std::sync::Arc;
use std::time::Duration;

use bgrun_core::{LeaseGrant, RunStatus, Store, StoreError, TransitionOutcome};

use crate::support::{
    create, event, expect_eq, expect_events, fail, get, new_run, read_all, transition, CheckResult,
    Succeeds, T0,
};

const HOUR: Duration = Duration::from_secs(60 * 60);
const A: &str = "replica-a";
const B: &str = "replica-b";

fn is_fenced<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) -> CheckResult {
    match result {
        Err(StoreError::Fenced { .. }) => Ok(()),
        other => fail!("{what}: expected Err(Fenced), got {other:?}"),
    }
}

/// A store that fences writes ([`Store::fences_writes`]) applies `append_events_fenced` and
/// `transition_fenced` only for the owner of the run's lease, and refuses every other writer
/// with `Fenced`, writing nothing; a store that does not fence applies them like the unfenced
/// calls.
pub async fn fencing(store: Arc<dyn Store>) -> CheckResult {
    let store = store.as_ref();
    let run = create(store, new_run("fenced", "s", T0)).await?;
    let id = &run.run_id;
    let started = event(&run, 0, "started");
    if !store.fences_writes() {
        let what = "transition_fenced on a store that does not fence";
        match store
            .transition_fenced(
                id,
                &transition(RunStatus::Pending, RunStatus::Running),
                std::slice::from_ref(&started),
                A,
            )
            .await
            .succeeds(what)?
        {
            TransitionOutcome::Applied(_) => {}
            other => fail!("{what}: expected Applied, got {other:?}"),
        }
        store
            .append_events_fenced(id, &[event(&run, 1, "more")], B)
            .await
            .succeeds("append_events_fenced on a store that does not fence")?;
        return Ok(());
    }

    // No lease at all: nobody's fenced write goes through.
    is_fenced(
        "transition_fenced of a run nobody leases",
        store
            .transition_fenced(
                id,
                &transition(RunStatus::Pending, RunStatus::Running),
                std::slice::from_ref(&started),
                A,
            )
            .await,
    )?;
    expect_eq(
        "status after a refused fenced transition",
        &get(store, id).await?.status,
        &RunStatus::Pending,
    )?;

    // A holds the lease: A writes, B is refused and writes nothing.
    let grant = store
        .acquire_lease(id, A, HOUR)
        .await
        .succeeds("acquire_lease(A)")?;
    expect_eq("acquire_lease(A)", &grant, &LeaseGrant::Granted)?;
    match store
        .transition_fenced(
            id,
            &transition(RunStatus::Pending, RunStatus::Running),
            std::slice::from_ref(&started),
            A,
        )
        .await
        .succeeds("transition_fenced by the lease owner")?
    {
        TransitionOutcome::Applied(_) => {}
        other => fail!("transition_fenced by the lease owner: expected Applied, got {other:?}"),
    }
    let more = event(&run, 1, "more");
    is_fenced(
        "append_events_fenced by another owner",
        store
            .append_events_fenced(id, std::slice::from_ref(&more), B)
            .await,
    )?;
    is_fenced(
        "transition_fenced by another owner",
        store
            .transition_fenced(
                id,
                &transition(RunStatus::Running, RunStatus::Completed),
                &[],
                B,
            )
            .await,
    )?;
    expect_events(
        "events after refused writes",
        &read_all(store, id, 100).await?,
        std::slice::from_ref(&started),
    )?;
    expect_eq(
        "status after refused writes",
        &get(store, id).await?.status,
        &RunStatus::Running,
    )?;

    // A's lease lapses and B takes the run over: now A is the one refused.
    store
        .acquire_lease(id, A, Duration::ZERO)
        .await
        .succeeds("letting A's lease lapse")?;
    let grant = store
        .acquire_lease(id, B, HOUR)
        .await
        .succeeds("acquire_lease(B) after A's lapsed")?;
    expect_eq(
        "acquire_lease(B) after A's lease lapsed",
        &grant,
        &LeaseGrant::Granted,
    )?;
    is_fenced(
        "append_events_fenced by the owner whose lease was taken over",
        store
            .append_events_fenced(id, std::slice::from_ref(&more), A)
            .await,
    )?;
    store
        .append_events_fenced(id, std::slice::from_ref(&more), B)
        .await
        .succeeds("append_events_fenced by the new owner")?;
    expect_events(
        "events after the takeover",
        &read_all(store, id, 100).await?,
        &[started, more],
    )?;
    Ok(())
}
