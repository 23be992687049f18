//! Leases: who executes a run, and which runs nobody executes any more.

use std::sync::Arc;
use std::time::Duration;

use bgrun_core::{LeaseGrant, RunRecord, RunStatus, Store, StoreError};

use crate::support::{
    apply, create, create_running, ensure, expect_eq, fail, get, new_run, run_id, transition,
    CheckResult, Succeeds, T0,
};

const HOUR: Duration = Duration::from_secs(60 * 60);
const LAPSED: Duration = Duration::ZERO;
const A: &str = "replica-a";
const B: &str = "replica-b";

/// The sorted ids of the orphaned runs, each checked against `get_run`.
async fn orphans(store: &dyn Store, limit: usize) -> CheckResult<Vec<String>> {
    let runs = store
        .orphaned_runs(limit)
        .await
        .succeeds(format!("orphaned_runs({limit})"))?;
    ensure!(
        runs.len() <= limit,
        "orphaned_runs({limit}) returned {} runs, more than the limit",
        runs.len()
    );
    let mut ids = Vec::new();
    for run in runs {
        expect_eq(
            format!("the record orphaned_runs returns for {}", run.run_id),
            &run,
            &get(store, &run.run_id).await?,
        )?;
        ids.push(run.run_id.to_string());
    }
    ids.sort();
    Ok(ids)
}

async fn expect_orphans(store: &dyn Store, expected: &[&str], after: &str) -> CheckResult {
    expect_eq(
        format!("orphaned_runs after {after}"),
        &orphans(store, 100).await?,
        &expected.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
    )
}

async fn acquire(
    store: &dyn Store,
    run: &RunRecord,
    owner: &str,
    ttl: Duration,
    expected: LeaseGrant,
    context: &str,
) -> CheckResult {
    let what = format!(
        "acquire_lease({}, {owner}, ttl {ttl:?}) {context}",
        run.run_id
    );
    expect_eq(
        &what,
        &store
            .acquire_lease(&run.run_id, owner, ttl)
            .await
            .succeeds(&what)?,
        &expected,
    )
}

async fn renew(
    store: &dyn Store,
    owner: &str,
    ttl: Duration,
    expected: u64,
    context: &str,
) -> CheckResult {
    let what = format!("renew_leases({owner}, ttl {ttl:?}) {context}");
    expect_eq(
        &what,
        &store.renew_leases(owner, ttl).await.succeeds(&what)?,
        &expected,
    )
}

/// Leases without waiting (a zero ttl lapses at once): a live lease is `HeldBy` its owner for
/// others and `Granted` again to its owner; a lapsed one goes to whoever asks. `renew_leases`
/// extends only the owner's live leases and says how many; `release_lease` drops only the
/// owner's. `orphaned_runs` holds exactly the `RUNNING` and `PAUSED` runs without a live lease,
/// never a `PENDING` or terminal one, at most `limit`. A lease on a run that does not exist is
/// `RunNotFound`, and leaves nothing behind for its id.
pub async fn leases(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    let pending = create(store, new_run("run-pending", "session-1", T0)).await?;
    let run1 = create_running(store, new_run("run-1", "session-1", T0)).await?;
    let run2 = create_running(store, new_run("run-2", "session-1", T0)).await?;
    let run3 = create_running(store, new_run("run-3", "session-1", T0)).await?;
    let paused = create_running(store, new_run("run-paused", "session-1", T0)).await?;
    let paused = apply(
        store,
        &paused.run_id,
        &transition(RunStatus::Running, RunStatus::Paused),
        &[],
    )
    .await?;
    let done = create_running(store, new_run("run-done", "session-1", T0)).await?;
    let done = apply(
        store,
        &done.run_id,
        &transition(RunStatus::Running, RunStatus::Completed),
        &[],
    )
    .await?;
    expect_orphans(
        store,
        &["run-1", "run-2", "run-3", "run-paused"],
        "creating runs without leases (RUNNING and PAUSED runs without a lease are orphaned, PENDING and terminal ones never)",
    )
    .await?;

    acquire(
        store,
        &run1,
        A,
        HOUR,
        LeaseGrant::Granted,
        "on a run without a lease",
    )
    .await?;
    acquire(
        store,
        &run1,
        B,
        HOUR,
        LeaseGrant::HeldBy(A.into()),
        "while replica-a holds it",
    )
    .await?;
    acquire(
        store,
        &run1,
        A,
        HOUR,
        LeaseGrant::Granted,
        "again by its holder",
    )
    .await?;
    expect_orphans(
        store,
        &["run-2", "run-3", "run-paused"],
        "replica-a leased run-1",
    )
    .await?;

    acquire(
        store,
        &run2,
        A,
        LAPSED,
        LeaseGrant::Granted,
        "on a run without a lease",
    )
    .await?;
    expect_orphans(
        store,
        &["run-2", "run-3", "run-paused"],
        "a lease on run-2 with a zero ttl (lapsed at once)",
    )
    .await?;
    acquire(
        store,
        &run2,
        B,
        HOUR,
        LeaseGrant::Granted,
        "after replica-a's lease lapsed",
    )
    .await?;
    acquire(
        store,
        &run2,
        A,
        HOUR,
        LeaseGrant::HeldBy(B.into()),
        "after replica-b took it",
    )
    .await?;
    acquire(
        store,
        &paused,
        A,
        HOUR,
        LeaseGrant::Granted,
        "on a PAUSED run",
    )
    .await?;
    expect_orphans(store, &["run-3"], "leases on run-1, run-2 and run-paused").await?;

    renew(store, A, HOUR, 2, "holding run-1 and run-paused").await?;
    renew(store, B, HOUR, 1, "holding run-2").await?;
    renew(store, "replica-none", HOUR, 0, "holding nothing").await?;
    renew(store, A, LAPSED, 2, "holding run-1 and run-paused").await?;
    expect_orphans(
        store,
        &["run-1", "run-3", "run-paused"],
        "replica-a renewed its leases with a zero ttl",
    )
    .await?;
    renew(
        store,
        A,
        HOUR,
        0,
        "whose leases all lapsed (only live leases are renewed)",
    )
    .await?;
    expect_orphans(
        store,
        &["run-1", "run-3", "run-paused"],
        "renew_leases of lapsed leases",
    )
    .await?;
    acquire(
        store,
        &run1,
        B,
        HOUR,
        LeaseGrant::Granted,
        "after replica-a's lease lapsed",
    )
    .await?;
    acquire(
        store,
        &paused,
        A,
        HOUR,
        LeaseGrant::Granted,
        "after its own lease lapsed",
    )
    .await?;
    expect_orphans(store, &["run-3"], "run-1 and run-paused were leased again").await?;

    store
        .release_lease(&run1.run_id, A)
        .await
        .succeeds("release_lease(run-1, replica-a), which replica-b holds")?;
    acquire(
        store,
        &run1,
        A,
        HOUR,
        LeaseGrant::HeldBy(B.into()),
        "after another owner's release_lease",
    )
    .await?;
    store
        .release_lease(&run1.run_id, B)
        .await
        .succeeds("release_lease(run-1, replica-b)")?;
    expect_orphans(store, &["run-1", "run-3"], "replica-b released run-1").await?;
    let one = orphans(store, 1).await?;
    ensure!(
        one.len() == 1 && (one[0] == "run-1" || one[0] == "run-3"),
        "orphaned_runs(1) with run-1 and run-3 orphaned: expected one of them, got {one:?}"
    );
    acquire(
        store,
        &run1,
        A,
        HOUR,
        LeaseGrant::Granted,
        "after its holder released it",
    )
    .await?;
    store
        .release_lease(&run3.run_id, A)
        .await
        .succeeds("release_lease(run-3, replica-a), which has no lease")?;

    acquire(
        store,
        &pending,
        A,
        LAPSED,
        LeaseGrant::Granted,
        "on a PENDING run",
    )
    .await?;
    acquire(
        store,
        &done,
        A,
        LAPSED,
        LeaseGrant::Granted,
        "on a COMPLETED run",
    )
    .await?;
    expect_orphans(
        store,
        &["run-3"],
        "lapsed leases on a PENDING and a COMPLETED run",
    )
    .await?;
    apply(
        store,
        &run3.run_id,
        &transition(RunStatus::Running, RunStatus::Error),
        &[],
    )
    .await?;
    expect_orphans(store, &[], "run-3 ended ERROR").await?;

    let missing = run_id("run-missing");
    match store.acquire_lease(&missing, A, HOUR).await {
        Err(StoreError::RunNotFound(id)) if id == missing => {}
        other => fail!(
            "acquire_lease(run-missing, {A}) of a run that does not exist: expected Err(RunNotFound(run-missing)), got {other:?}"
        ),
    }
    // Nothing left for the id: once the run exists, its lease is free for anyone.
    let created = create(store, new_run("run-missing", "session-1", T0)).await?;
    acquire(
        store,
        &created,
        B,
        HOUR,
        LeaseGrant::Granted,
        "once the run exists, after a lease on its id was refused",
    )
    .await
}
