//! Teams and workflows: runs of runs, forwarded events, parallel steps, cancel cascade.

use std::sync::Arc;

use bgrun_core::{Event, RunFilter, RunId, RunKind, RunStatus, RunTarget};
use bgrun_exec::workflow::{Step, StepInput, Workflow};
use bgrun_exec::{ComponentInfo, Engine, MetaFrame, RunFailure, StartRequest};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::fixture::*;

fn workflow(id: &str, input: &str) -> StartRequest {
    StartRequest::new(RunTarget::new(RunKind::Workflow, id), input)
}

fn field(event: &Event, name: &str) -> Value {
    event.fields().unwrap()[name].clone()
}

async fn children_of(engine: &Engine, parent: &RunId) -> Vec<bgrun_core::RunRecord> {
    let filter = RunFilter {
        parent_run_id: Some(parent.clone()),
        ..RunFilter::default()
    };
    engine.list_runs(&filter, 100, None).await.unwrap().runs
}

/// Steps that finish in the opposite order of their declaration.
fn reversed_parallel() -> Workflow {
    let second_done = Arc::new(Semaphore::new(0));
    let (first_gate, second_gate) = (second_done.clone(), second_done);
    Workflow::new(
        ComponentInfo::new(RunKind::Workflow, "reversed"),
        vec![Step::parallel(
            "both",
            vec![
                Step::function("first", move |_, _: StepInput| {
                    let gate = first_gate.clone();
                    async move {
                        // Finishes only after the second step did.
                        let _permit = gate
                            .acquire()
                            .await
                            .map_err(|_| RunFailure::new("closed"))?;
                        Ok("one".to_owned())
                    }
                }),
                Step::function("second", move |_, _: StepInput| {
                    let gate = second_gate.clone();
                    async move {
                        gate.add_permits(1);
                        Ok("two".to_owned())
                    }
                }),
            ],
        )],
    )
}

/// A workflow whose second step fails, and one that handles the same failure.
fn failing_workflows() -> [Workflow; 2] {
    let unhandled = Workflow::new(
        ComponentInfo::new(RunKind::Workflow, "unhandled"),
        vec![Step::agent("greet", "echo"), Step::agent("boom", "fail")],
    );
    let handled = Workflow::new(
        ComponentInfo::new(RunKind::Workflow, "handled"),
        vec![Step::function("guarded", |ctx, _: StepInput| async move {
            let target = RunTarget::new(RunKind::Agent, "fail");
            match ctx.run_child(target, "x", Default::default()).await {
                Ok(_) => Ok("no failure?".to_owned()),
                Err(failure) => Ok(format!("recovered from: {failure}")),
            }
        })],
    );
    [unhandled, handled]
}

async fn engine_with_workflows(backend: Backend) -> Fixture {
    let gated = Gated::new();
    let [unhandled, handled] = failing_workflows();
    let registry = bgrun_exec::demo::registry()
        .with(gated.clone())
        .with(reversed_parallel())
        .with(unhandled)
        .with(handled);
    let engine = Engine::open(backend.store().await, registry, backend.config())
        .await
        .unwrap();
    Fixture {
        backend,
        engine,
        gated,
    }
}

async fn the_pipeline_runs_its_steps_as_child_runs(backend: Backend) {
    let f = fixture(backend).await;
    let run = f
        .engine
        .start(workflow("pipeline", "rust async").param("count", 3))
        .await
        .unwrap()
        .run;
    let done = f.engine.wait(&run.run_id).await.unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    let report = done.content.unwrap();
    assert_eq!(
        report,
        "Report on \"rust async\"\nweb: done 3\ndeep: done 3\nanalysis: rust async"
    );

    let events = all_events(&f.engine, &run.run_id, None).await;
    assert_gapless(&events, 0);
    assert_eq!(events.first().unwrap().event_type(), "WorkflowStarted");
    let last = events.last().unwrap();
    assert_eq!(last.event_type(), "WorkflowCompleted");
    assert_eq!(field(last, "content"), report.as_str());
    // The workflow's own events carry its run_id; forwarded ones their child's.
    let own: Vec<&Event> = events
        .iter()
        .filter(|event| field(event, "run_id") == run.run_id.as_str())
        .collect();
    let own_steps: Vec<(String, String)> = own
        .iter()
        .filter(|event| {
            event.event_type() != "WorkflowStarted" && event.event_type() != "WorkflowCompleted"
        })
        .map(|event| {
            (
                event.event_type().to_owned(),
                field(event, "step_name").as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let research_start = own_steps
        .iter()
        .position(|step| step == &("ParallelExecutionStarted".into(), "research".into()))
        .unwrap();
    let research_end = own_steps
        .iter()
        .position(|step| step == &("ParallelExecutionCompleted".into(), "research".into()))
        .unwrap();
    for branch in ["web", "deep"] {
        for kind in ["StepStarted", "StepCompleted"] {
            let at = own_steps
                .iter()
                .position(|step| step == &(kind.to_owned(), branch.to_owned()))
                .unwrap();
            assert!(
                research_start < at && at < research_end,
                "{kind} {branch} inside the group"
            );
        }
    }
    assert_eq!(
        own_steps.first().unwrap(),
        &("StepStarted".into(), "research".into())
    );
    assert_eq!(
        &own_steps[own_steps.len() - 4..],
        &[
            ("StepStarted".into(), "analysis".into()),
            ("StepCompleted".into(), "analysis".into()),
            ("StepStarted".into(), "report".into()),
            ("StepCompleted".into(), "report".into()),
        ]
    );

    // Three child runs (web, deep, analysis), each a real run with its own complete log, all of
    // it forwarded into the workflow's stream.
    let children = children_of(&f.engine, &run.run_id).await;
    assert_eq!(children.len(), 3);
    for child in &children {
        assert_eq!(child.status, RunStatus::Completed);
        assert_eq!(child.session_id, run.session_id);
        let own_log = all_events(&f.engine, &child.run_id, None).await;
        assert_gapless(&own_log, 0);
        let forwarded: Vec<Value> = events
            .iter()
            .filter(|event| field(event, "run_id") == child.run_id.as_str())
            .map(|event| {
                let mut fields = event.fields().unwrap();
                fields.remove("event_index");
                Value::Object(fields)
            })
            .collect();
        let original: Vec<Value> = own_log
            .iter()
            .map(|event| {
                let mut fields = event.fields().unwrap();
                fields.remove("event_index");
                Value::Object(fields)
            })
            .collect();
        assert_eq!(
            forwarded, original,
            "child {} forwarded whole, in order",
            child.run_id
        );
    }
}

async fn parallel_results_come_back_in_declared_order(backend: Backend) {
    let f = engine_with_workflows(backend).await;
    let run = f.engine.start(workflow("reversed", "")).await.unwrap().run;
    let done = f.engine.wait(&run.run_id).await.unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.content.as_deref(), Some("first: one\nsecond: two"));
    let completed: Vec<String> = all_events(&f.engine, &run.run_id, None)
        .await
        .iter()
        .filter(|event| event.event_type() == "StepCompleted")
        .map(|event| field(event, "step_name").as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        completed,
        ["second", "first", "both"],
        "finished in reverse"
    );
}

async fn a_child_error_ends_the_parent_error_unless_handled(backend: Backend) {
    let f = engine_with_workflows(backend).await;
    let run = f
        .engine
        .start(workflow("unhandled", "hi"))
        .await
        .unwrap()
        .run;
    let done = f.engine.wait(&run.run_id).await.unwrap();
    assert_eq!(done.status, RunStatus::Error);
    assert!(done.error.unwrap().contains("failed on purpose"));
    let events = all_events(&f.engine, &run.run_id, None).await;
    assert_eq!(events.last().unwrap().event_type(), "WorkflowError");
    assert_gapless(&events, 0);

    let run = f.engine.start(workflow("handled", "hi")).await.unwrap().run;
    let done = f.engine.wait(&run.run_id).await.unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert!(done.content.unwrap().starts_with("recovered from:"));
    let children = children_of(&f.engine, &run.run_id).await;
    assert_eq!(children[0].status, RunStatus::Error);
}

async fn cancelling_a_team_leaves_no_member_running(backend: Backend) {
    let f = fixture(backend).await;
    let team = f
        .engine
        .start(
            StartRequest::new(RunTarget::new(RunKind::Team, "pair"), "a b")
                .param("count", 1000)
                .param("delay_ms", 20),
        )
        .await
        .unwrap()
        .run;
    // Wait until the ticker member streams into the team's log.
    let mut stream = f.engine.events(&team.run_id, None);
    let mut ticks = 0;
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        if event.event_type() == "RunContent"
            && field(&event, "content")
                .as_str()
                .unwrap()
                .starts_with("tick")
        {
            ticks += 1;
            if ticks == 2 {
                break;
            }
        }
    }
    drop(stream);
    let outcome = f.engine.cancel(&team.run_id).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Cancelled);
    let team = f.engine.wait(&team.run_id).await.unwrap();
    assert_eq!(team.status, RunStatus::Cancelled);
    let events = all_events(&f.engine, &team.run_id, None).await;
    assert_gapless(&events, 0);
    assert_eq!(events.last().unwrap().event_type(), "TeamRunCancelled");
    assert_eq!(
        events
            .iter()
            .filter(|event| event.event_type() == "TeamRunCancelled")
            .count(),
        1
    );
    let members = children_of(&f.engine, &team.run_id).await;
    assert_eq!(members.len(), 2);
    for member in &members {
        assert!(
            member.has_completed(),
            "member {} is {}",
            member.run_id,
            member.status
        );
    }
    let ticker = members
        .iter()
        .find(|member| member.target.component_id == "ticker")
        .unwrap();
    assert_eq!(ticker.status, RunStatus::Cancelled);
}

async fn resuming_a_workflow_mid_parallel_gives_exactly_the_rest(backend: Backend) {
    let f = fixture(backend).await;
    let run = f
        .engine
        .start(
            workflow("pipeline", "x y")
                .param("count", 30)
                .param("delay_ms", 2),
        )
        .await
        .unwrap()
        .run;
    let mut stream = f.engine.events(&run.run_id, None);
    let mut seen = Vec::new();
    let mut ticks_in_group = 0;
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        let tick = event.event_type() == "RunContent";
        seen.push(event);
        if tick {
            ticks_in_group += 1;
            if ticks_in_group == 5 {
                break;
            }
        }
    }
    drop(stream);
    let last = seen.last().unwrap().index();
    let resume = f.engine.resume(&run.run_id, Some(last)).await.unwrap();
    assert!(matches!(
        resume.meta.last(),
        Some(MetaFrame::Subscribed {
            status: RunStatus::Running,
            ..
        })
    ));
    let rest: Vec<Event> = resume.events.map(|event| event.unwrap()).collect().await;
    assert_gapless(&rest, last + 1);
    let mut whole = seen.clone();
    whole.extend(rest);
    assert_eq!(whole, all_events(&f.engine, &run.run_id, None).await);
    assert_eq!(whole.last().unwrap().event_type(), "WorkflowCompleted");
}

crate::on_every_store!(
    the_pipeline_runs_its_steps_as_child_runs,
    parallel_results_come_back_in_declared_order,
    a_child_error_ends_the_parent_error_unless_handled,
    cancelling_a_team_leaves_no_member_running,
    resuming_a_workflow_mid_parallel_gives_exactly_the_rest,
);
