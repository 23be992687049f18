//! Creating and reading runs.

use std::sync::Arc;

use bgrun_core::{now, CreateOutcome, NewRun, RunFilter, RunKind, RunTarget, Store, StoreError};
use serde_json::json;

use crate::support::{
    create, expect_eq, fail, get, list_all, new_run, run_id, session_id, CheckResult, Succeeds, T0,
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
