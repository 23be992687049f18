//! Creating and reading runs.

use std::sync::Arc;
use std::time::Duration;

use bgrun_core::{
    now, CreateAndStart, CreateOutcome, Event, LeaseGrant, NewRun, RunFilter, RunKind, RunRecord,
    RunStatus, RunTarget, Store, StoreError, StoreResult, TransitionOutcome,
};
use serde_json::json;

use crate::support::{
    apply, create, ensure, event, events, expect_eq, expect_events, fail, get, list_all, new_run,
    read_all, run_id, session_id, transition, CheckResult, Succeeds, T0,
};

/// `create_run` then `get_run` give back every field exactly as given: a run with every field
/// set (unicode, quotes and newlines in text, nested parameters and metadata), a minimal one and
/// one of each kind. `get_run` of an unknown id is `None`.
pub async fn create_and_get(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    let full = NewRun {
        run_id: run_id("run-full ✓"),
        session_id: session_id("session \"one\""),
        user_id: Some("user-é 7".into()),
        target: RunTarget::new(RunKind::Team, "team/research é"),
        parent_run_id: Some(run_id("run-parent")),
        input: "multi\nline \"input\" with \\ backslash, unicode é ✓ 🚀 and a tab\t".into(),
        params: json!({
            "max_tokens": 256,
            "temperature": 0.5,
            "stream": true,
            "tags": ["a", "b"],
            "nested": {"none": null, "negative": -3, "text": "x\ny"}
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
        metadata: Some(json!({"source": "conformance", "list": [1, 2, 3], "deep": {"k": "v"}})),
        idempotency_key: Some("key-full".into()),
        created_at: T0,
    };
    let mut minimal = new_run("run-minimal", "session-2", T0 + 1);
    minimal.input = String::new();
    let mut workflow = new_run("run-workflow", "session-2", T0 + 2);
    workflow.target = RunTarget::new(RunKind::Workflow, "wf-1");
    workflow.metadata = Some(json!([1, "two"]));
    let mut agent = new_run("run-agent", "session-3", T0 + 2);
    agent.user_id = Some(String::new());

    for new in [full, minimal, workflow, agent] {
        let expected = new.clone().into_record();
        let id = new.run_id.clone();
        let outcome = store
            .create_run(new)
            .await
            .succeeds(format!("create_run({id})"))?;
        expect_eq(
            format!("create_run({id}) of a new run"),
            &outcome,
            &CreateOutcome::Created {
                run: expected.clone(),
                cancel_requested: false,
            },
        )?;
        expect_eq(
            format!("get_run({id}) after creating it"),
            &get(store, &id).await?,
            &expected,
        )?;
    }
    let missing = run_id("run-never-created");
    expect_eq(
        "get_run of an id never created",
        &store
            .get_run(&missing)
            .await
            .succeeds("get_run(run-never-created)")?,
        &None,
    )?;
    Ok(())
}

/// A second `create_run` with a taken `run_id` is `RunExists` and changes nothing; one with the
/// idempotency key of a recent run returns `Existing` with that run and creates nothing; another
/// key creates.
pub async fn duplicates_and_idempotency(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    let first = create(store, new_run("run-dup", "session-1", T0)).await?;
    let mut duplicate = new_run("run-dup", "session-2", T0 + 5);
    duplicate.input = "another input".into();
    match store.create_run(duplicate).await {
        Err(StoreError::RunExists(id)) if id == first.run_id => {}
        other => fail!(
            "create_run with a run_id that exists: expected Err(RunExists(run-dup)), got {other:?}"
        ),
    }
    expect_eq(
        "get_run(run-dup) after a duplicate create_run",
        &get(store, &first.run_id).await?,
        &first,
    )?;

    // Idempotency keys are matched within a window ending now, so these runs are created now.
    let at = now();
    let mut keyed = new_run("run-key-a", "session-1", at);
    keyed.idempotency_key = Some("key-1".into());
    let keyed = create(store, keyed).await?;
    let mut retry = new_run("run-key-b", "session-9", at);
    retry.idempotency_key = Some("key-1".into());
    retry.input = "the same request, sent again".into();
    match store.create_run(retry).await {
        Ok(CreateOutcome::Existing(run)) => expect_eq(
            "create_run with the idempotency key of run-key-a: the Existing run",
            &run,
            &keyed,
        )?,
        other => fail!(
            "create_run with the idempotency key of run-key-a: expected Ok(Existing(run-key-a)), got {other:?}"
        ),
    }
    expect_eq(
        "get_run(run-key-b), whose create_run hit an idempotency key",
        &store
            .get_run(&run_id("run-key-b"))
            .await
            .succeeds("get_run(run-key-b)")?,
        &None,
    )?;

    let mut other_key = new_run("run-key-c", "session-1", at);
    other_key.idempotency_key = Some("key-2".into());
    create(store, other_key).await?;

    let ids: Vec<String> = list_all(store, &RunFilter::default(), 100)
        .await?
        .into_iter()
        .map(|run| run.run_id.to_string())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    expect_eq(
        "the runs stored after a duplicate and an idempotent create",
        &sorted,
        &vec!["run-dup".to_owned(), "run-key-a".into(), "run-key-c".into()],
    )?;
    Ok(())
}

/// `create_and_start_run` is `create_run` and, for a run it created with no cancel intent,
/// `PENDING -> RUNNING` with the given event 0, in one write. A store may start nothing
/// (`started: None`, the default); whatever it reports must be what it stored. A run with a
/// cancel intent, an idempotent repeat and a taken id are never started, and a first event that
/// is not index 0 is refused before anything is created.
pub async fn create_and_start(store: Arc<dyn Store>) -> CheckResult {
    start_at_create(&*store, StartAtCreate::Unleased).await
}

/// `create_and_start_leased` is [`create_and_start`]'s `create_and_start_run` with, for a run it
/// starts, the run's lease taken for the given owner in the same write: another owner is then
/// refused the lease, the owner's fenced writes apply, and the run is not orphaned. A run it
/// does not start (a cancel intent, a taken id, an idempotent repeat) gets no lease.
pub async fn create_and_start_leased(store: Arc<dyn Store>) -> CheckResult {
    start_at_create(&*store, StartAtCreate::Leased).await
}

const OWNER: &str = "replica-a";
const OTHER: &str = "replica-b";
const HOUR: Duration = Duration::from_secs(60 * 60);

/// Which of the store's create-and-start methods a check calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartAtCreate {
    /// `create_and_start_run`.
    Unleased,
    /// `create_and_start_leased`, for [`OWNER`], lasting an hour.
    Leased,
}

impl StartAtCreate {
    async fn call(
        self,
        store: &dyn Store,
        run: NewRun,
        started: &Event,
    ) -> StoreResult<CreateAndStart> {
        match self {
            Self::Unleased => store.create_and_start_run(run, started).await,
            Self::Leased => {
                store
                    .create_and_start_leased(run, started, OWNER, HOUR)
                    .await
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Unleased => "create_and_start_run",
            Self::Leased => "create_and_start_leased",
        }
    }

    /// That the run's lease is held by [`OWNER`] (`leased`) or by nobody: asks for it as
    /// [`OTHER`], and gives back what that took.
    async fn expect_lease(
        self,
        store: &dyn Store,
        run: &RunRecord,
        leased: bool,
        context: &str,
    ) -> CheckResult {
        if self == Self::Unleased {
            return Ok(());
        }
        let what = format!("acquire_lease({}, {OTHER}) {context}", run.run_id);
        let grant = store
            .acquire_lease(&run.run_id, OTHER, HOUR)
            .await
            .succeeds(&what)?;
        let expected = if leased {
            LeaseGrant::HeldBy(OWNER.into())
        } else {
            LeaseGrant::Granted
        };
        expect_eq(&what, &grant, &expected)?;
        if grant == LeaseGrant::Granted {
            store
                .release_lease(&run.run_id, OTHER)
                .await
                .succeeds(format!("release_lease({}, {OTHER})", run.run_id))?;
        }
        Ok(())
    }
}

async fn start_at_create(store: &dyn Store, how: StartAtCreate) -> CheckResult {
    let name = how.name();
    let new = new_run("run-started", "session-1", T0);
    let record = new.clone().into_record();
    let started = event(&record, 0, "started");
    let outcome = how
        .call(store, new, &started)
        .await
        .succeeds(format!("{name}(run-started)"))?;
    expect_eq(
        format!("{name}(run-started): what the create did"),
        &outcome.created,
        &CreateOutcome::Created {
            run: record.clone(),
            cancel_requested: false,
        },
    )?;
    let stored = get(store, &record.run_id).await?;
    match &outcome.started {
        Some(running) => {
            ensure!(
                running.status == RunStatus::Running && running.last_event_index == Some(0),
                "{name}(run-started): expected the started run RUNNING with event 0, got {running:?}"
            );
            how.expect_lease(store, running, true, "after it was started")
                .await?;
            if how == StartAtCreate::Leased {
                let orphans = store
                    .orphaned_runs(10)
                    .await
                    .succeeds("orphaned_runs(10)")?;
                ensure!(
                    orphans.is_empty(),
                    "orphaned_runs after {name}(run-started): expected none (its lease is live), got {orphans:?}"
                );
            }
            expect_eq(
                "get_run(run-started) after it was started",
                &stored,
                running,
            )?;
            // Listed as stored, which a store answering `get_run` from memory does not show.
            let running_filter = RunFilter {
                status: Some(RunStatus::Running),
                ..RunFilter::default()
            };
            expect_eq(
                "list_runs(RUNNING) after run-started was started",
                &list_all(store, &running_filter, 10).await?,
                &vec![running.clone()],
            )?;
            expect_events(
                "the events of run-started",
                &read_all(store, &record.run_id, 10).await?,
                std::slice::from_ref(&started),
            )?;
            // Its log continues after event 0 (fenced by the lease where it was leased).
            let end = transition(RunStatus::Running, RunStatus::Completed);
            let end_events = events(&record, 1..3, "end");
            if how == StartAtCreate::Leased {
                let outcome = store
                    .transition_fenced(&record.run_id, &end, &end_events, OWNER)
                    .await
                    .succeeds(format!("transition_fenced(run-started, {OWNER})"))?;
                ensure!(
                    matches!(outcome, TransitionOutcome::Applied(_)),
                    "transition_fenced(run-started, {OWNER}) by the owner of the lease {name} took: expected Applied, got {outcome:?}"
                );
            } else {
                apply(store, &record.run_id, &end, &end_events).await?;
            }
        }
        None => {
            expect_eq(
                "get_run(run-started), created but not started",
                &stored,
                &record,
            )?;
            expect_events(
                "the events of run-started, created but not started",
                &read_all(store, &record.run_id, 10).await?,
                &[],
            )?;
            how.expect_lease(store, &record, false, "after it was created, not started")
                .await?;
        }
    }

    // A cancel intent recorded before the run: created, reported, not started.
    let early = new_run("run-cancelled-early", "session-1", T0);
    let early_record = early.clone().into_record();
    store
        .request_cancel(&early_record.run_id, T0)
        .await
        .succeeds("request_cancel(run-cancelled-early)")?;
    let outcome = how
        .call(store, early, &event(&early_record, 0, "started"))
        .await
        .succeeds(format!("{name}(run-cancelled-early)"))?;
    expect_eq(
        format!("{name} of a run with a cancel intent"),
        &outcome,
        &CreateAndStart {
            created: CreateOutcome::Created {
                run: early_record.clone(),
                cancel_requested: true,
            },
            started: None,
        },
    )?;
    expect_eq(
        "get_run(run-cancelled-early), not started",
        &get(store, &early_record.run_id).await?,
        &early_record,
    )?;
    how.expect_lease(store, &early_record, false, "with a cancel intent")
        .await?;

    // A taken id: refused, and the run that has it is left as it was.
    let before = get(store, &early_record.run_id).await?;
    let duplicate = new_run("run-cancelled-early", "session-2", T0 + 1);
    let duplicate_record = duplicate.clone().into_record();
    match how
        .call(store, duplicate, &event(&duplicate_record, 0, "dup"))
        .await
    {
        Err(StoreError::RunExists(id)) if id == early_record.run_id => {}
        other => fail!("{name} with a run_id that exists: expected Err(RunExists), got {other:?}"),
    }
    expect_eq(
        format!("get_run(run-cancelled-early) after a duplicate {name}"),
        &get(store, &early_record.run_id).await?,
        &before,
    )?;
    expect_events(
        format!("the events of run-cancelled-early after a duplicate {name}"),
        &read_all(store, &early_record.run_id, 10).await?,
        &[],
    )?;
    how.expect_lease(store, &early_record, false, "after a duplicate create")
        .await?;

    // A run with a new idempotency key is started as any other.
    let mut fresh = new_run("run-keyed-started", "session-1", now());
    fresh.idempotency_key = Some("key-fresh".into());
    let fresh_record = fresh.clone().into_record();
    let fresh_started = event(&fresh_record, 0, "started");
    let outcome = how
        .call(store, fresh, &fresh_started)
        .await
        .succeeds(format!(
            "{name}(run-keyed-started) with a new idempotency key"
        ))?;
    expect_eq(
        format!("{name}(run-keyed-started): what the create did"),
        &outcome.created,
        &CreateOutcome::Created {
            run: fresh_record.clone(),
            cancel_requested: false,
        },
    )?;
    if let Some(running) = &outcome.started {
        expect_eq(
            "get_run(run-keyed-started) after it was started",
            &get(store, &fresh_record.run_id).await?,
            running,
        )?;
        expect_events(
            "the events of run-keyed-started",
            &read_all(store, &fresh_record.run_id, 10).await?,
            std::slice::from_ref(&fresh_started),
        )?;
        how.expect_lease(store, running, true, "after it was started")
            .await?;
    }

    // An idempotent repeat: the earlier run, untouched.
    let at = now();
    let mut keyed = new_run("run-keyed", "session-1", at);
    keyed.idempotency_key = Some("key-start".into());
    let keyed = create(store, keyed).await?;
    let mut repeat = new_run("run-keyed-again", "session-1", at);
    repeat.idempotency_key = Some("key-start".into());
    let repeat_record = repeat.clone().into_record();
    let outcome = how
        .call(store, repeat, &event(&repeat_record, 0, "again"))
        .await
        .succeeds(format!("{name} with the idempotency key of run-keyed"))?;
    expect_eq(
        format!("{name} with the idempotency key of run-keyed"),
        &outcome,
        &CreateAndStart {
            created: CreateOutcome::Existing(keyed.clone()),
            started: None,
        },
    )?;
    expect_eq(
        format!("get_run(run-keyed) after an idempotent {name}"),
        &get(store, &keyed.run_id).await?,
        &keyed,
    )?;
    how.expect_lease(store, &keyed, false, "after an idempotent repeat")
        .await?;

    // A first event that is not index 0: refused, nothing created.
    let wrong = new_run("run-wrong-first", "session-1", T0);
    let wrong_record = wrong.clone().into_record();
    match how
        .call(store, wrong, &event(&wrong_record, 1, "wrong"))
        .await
    {
        Err(StoreError::IndexConflict { .. }) => {
            expect_eq(
                format!("get_run(run-wrong-first) after a refused {name}"),
                &store
                    .get_run(&wrong_record.run_id)
                    .await
                    .succeeds("get_run(run-wrong-first)")?,
                &None,
            )?;
        }
        // A store that does not start runs at create ignores the event.
        Ok(CreateAndStart { started: None, .. }) => {}
        other => fail!(
            "{name} with a first event at index 1: expected Err(IndexConflict), got {other:?}"
        ),
    }
    Ok(())
}
