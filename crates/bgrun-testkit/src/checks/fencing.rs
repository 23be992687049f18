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

/// `lease_and_transition` takes the lease and applies the transition in one write, or neither:
/// `Fenced` while another owner holds a live lease; a `Conflict` keeps the lease taken.
/// `transition_and_release` applies the transition and drops the owner's lease, or, on a
/// `Conflict`, keeps it; on a fencing store another owner's is `Fenced`.
pub async fn leased_transitions(store: Arc<dyn Store>) -> CheckResult {
    let store = store.as_ref();
    let run = create(store, new_run("leased", "s", T0)).await?;
    let id = &run.run_id;
    let started = event(&run, 0, "started");
    let start = transition(RunStatus::Pending, RunStatus::Running);
    let grant = store
        .acquire_lease(id, B, HOUR)
        .await
        .succeeds("acquire_lease(B)")?;
    expect_eq("acquire_lease(B)", &grant, &LeaseGrant::Granted)?;
    is_fenced(
        "lease_and_transition(A) while B holds a live lease",
        store
            .lease_and_transition(id, &start, std::slice::from_ref(&started), A, HOUR)
            .await,
    )?;
    expect_eq(
        "status after a refused lease_and_transition",
        &get(store, id).await?.status,
        &RunStatus::Pending,
    )?;
    expect_events(
        "events after a refused lease_and_transition",
        &read_all(store, id, 100).await?,
        &[],
    )?;

    store
        .release_lease(id, B)
        .await
        .succeeds("release_lease(B)")?;
    match store
        .lease_and_transition(id, &start, std::slice::from_ref(&started), A, HOUR)
        .await
        .succeeds("lease_and_transition(A) of a run nobody leases")?
    {
        TransitionOutcome::Applied(record) => expect_eq(
            "the status lease_and_transition returns",
            &record.status,
            &RunStatus::Running,
        )?,
        other => fail!("lease_and_transition(A): expected Applied, got {other:?}"),
    }
    expect_eq(
        "acquire_lease(B) after lease_and_transition(A)",
        &store
            .acquire_lease(id, B, HOUR)
            .await
            .succeeds("acquire_lease(B)")?,
        &LeaseGrant::HeldBy(A.into()),
    )?;
    expect_eq(
        "lease_and_transition(A) again, from PENDING",
        &store
            .lease_and_transition(id, &start, &[], A, HOUR)
            .await
            .succeeds("lease_and_transition(A) again")?,
        &TransitionOutcome::Conflict {
            actual: RunStatus::Running,
        },
    )?;

    let done = event(&run, 1, "done");
    let end = transition(RunStatus::Running, RunStatus::Completed);
    if store.fences_writes() {
        is_fenced(
            "transition_and_release(B) while A holds the lease",
            store
                .transition_and_release(id, &end, std::slice::from_ref(&done), B)
                .await,
        )?;
    }
    match store
        .transition_and_release(id, &end, std::slice::from_ref(&done), A)
        .await
        .succeeds("transition_and_release(A) by the lease owner")?
    {
        TransitionOutcome::Applied(_) => {}
        other => fail!("transition_and_release(A): expected Applied, got {other:?}"),
    }
    expect_events(
        "events after transition_and_release(A)",
        &read_all(store, id, 100).await?,
        &[started, done],
    )?;
    expect_eq(
        "acquire_lease(B) after transition_and_release(A) released A's lease",
        &store
            .acquire_lease(id, B, HOUR)
            .await
            .succeeds("acquire_lease(B)")?,
        &LeaseGrant::Granted,
    )?;
    expect_eq(
        "transition_and_release(B) of an ended run",
        &store
            .transition_and_release(id, &end, &[], B)
            .await
            .succeeds("transition_and_release(B) of an ended run")?,
        &TransitionOutcome::Conflict {
            actual: RunStatus::Completed,
        },
    )?;
    expect_eq(
        "acquire_lease(A) after B's transition_and_release was a Conflict (B keeps its lease)",
        &store
            .acquire_lease(id, A, HOUR)
            .await
            .succeeds("acquire_lease(A)")?,
        &LeaseGrant::HeldBy(B.into()),
    )
}
