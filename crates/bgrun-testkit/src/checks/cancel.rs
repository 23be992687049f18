//! Cancel intents, also for runs that do not exist yet.

use std::sync::Arc;

use bgrun_core::{
    CancellationStage, CreateOutcome, RunFilter, RunId, RunStatus, Store, Transition,
};

use crate::support::{
    apply, create, create_running, expect_eq, fail, get, list_all, new_run, run_id, transition,
    CheckResult, Succeeds, T0,
};

async fn requested(store: &dyn Store, id: &RunId) -> CheckResult<bool> {
    store
        .cancel_requested(id)
        .await
        .succeeds(format!("cancel_requested({id})"))
}

/// A cancel intent recorded before its run exists is reported by the `create_run` of that id
/// (`Created { cancel_requested: true }`), and by `cancel_requested`, before and after; it
/// creates no run. Other runs report `false`. `request_cancel` is idempotent and works on
/// pending, running and terminal runs without changing their status. The write that ends a
/// run `CANCELLED` drops its intents.
pub async fn cancel_intents(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    let early = run_id("run-early");
    expect_eq(
        "cancel_requested of an id nobody cancelled",
        &requested(store, &early).await?,
        &false,
    )?;
    store
        .request_cancel(&early, T0)
        .await
        .succeeds("request_cancel(run-early) before the run exists")?;
    expect_eq(
        "cancel_requested(run-early) after request_cancel, before the run exists",
        &requested(store, &early).await?,
        &true,
    )?;
    store
        .request_cancel(&early, T0 + 1)
        .await
        .succeeds("request_cancel(run-early) a second time")?;
    expect_eq(
        "cancel_requested(run-early) after a second request_cancel",
        &requested(store, &early).await?,
        &true,
    )?;
    expect_eq(
        "get_run(run-early) after a cancel intent (an intent creates no run)",
        &store.get_run(&early).await.succeeds("get_run(run-early)")?,
        &None,
    )?;
    expect_eq(
        "the runs listed after a cancel intent for a run that does not exist",
        &list_all(store, &RunFilter::default(), 10).await?,
        &Vec::new(),
    )?;

    let new = new_run("run-early", "session-1", T0 + 2);
    let expected = new.clone().into_record();
    match store.create_run(new).await {
        Ok(CreateOutcome::Created {
            run,
            cancel_requested: true,
        }) => expect_eq("the run created after its cancel intent", &run, &expected)?,
        other => fail!(
            "create_run(run-early) after request_cancel(run-early): expected Created {{ cancel_requested: true }}, got {other:?}"
        ),
    }
    expect_eq(
        "cancel_requested(run-early) once the run exists",
        &requested(store, &early).await?,
        &true,
    )?;

    let plain = create(store, new_run("run-plain", "session-1", T0 + 3)).await?;
    expect_eq(
        "cancel_requested of a run nobody cancelled",
        &requested(store, &plain.run_id).await?,
        &false,
    )?;

    // Intents on existing runs: recorded, status untouched.
    let running = create_running(store, new_run("run-running", "session-1", T0)).await?;
    let pending = create(store, new_run("run-pending", "session-1", T0)).await?;
    let cancelled = create(store, new_run("run-done", "session-1", T0)).await?;
    let cancel = Transition {
        cancellation_stage: Some(CancellationStage::Pending),
        ..transition(RunStatus::Pending, RunStatus::Cancelled)
    };
    let cancelled = apply(store, &cancelled.run_id, &cancel, &[]).await?;
    for run in [&running, &pending, &cancelled] {
        let id = &run.run_id;
        for attempt in 0..2 {
            store
                .request_cancel(id, T0 + 10 + attempt)
                .await
                .succeeds(format!("request_cancel({id}) while it is {}", run.status))?;
        }
        expect_eq(
            format!("cancel_requested({id}) after request_cancel"),
            &requested(store, id).await?,
            &true,
        )?;
        expect_eq(
            format!("get_run({id}) after request_cancel (an intent changes no status)"),
            &get(store, id).await?,
            run,
        )?;
    }
    expect_eq(
        "cancel_requested(run-plain) after intents for other runs",
        &requested(store, &plain.run_id).await?,
        &false,
    )?;

    // The write that ends a run CANCELLED drops its intents (an intent recorded once it had
    // ended stays: run-done above).
    for (id, stage) in [
        ("run-cancel-pending", CancellationStage::Pending),
        ("run-cancel-running", CancellationStage::Executing),
    ] {
        let new = new_run(id, "session-1", T0 + 4);
        let run = match stage {
            CancellationStage::Pending => create(store, new).await?,
            CancellationStage::Executing => create_running(store, new).await?,
        };
        store
            .request_cancel(&run.run_id, T0 + 20)
            .await
            .succeeds(format!("request_cancel({id})"))?;
        let cancel = Transition {
            cancellation_stage: Some(stage),
            ..transition(run.status, RunStatus::Cancelled)
        };
        apply(store, &run.run_id, &cancel, &[]).await?;
        expect_eq(
            format!("cancel_requested({id}) once the run ended CANCELLED"),
            &requested(store, &run.run_id).await?,
            &false,
        )?;
    }
    Ok(())
}
