//! Agent runs: start, poll, stream, resume, cancel, queue, fail, recover.

use std::time::Duration;

use bgrun_core::{
    CancellationStage, Event, Frames, NewRun, RunId, RunKind, RunRecord, RunStatus, RunTarget,
    Store, Transition,
};
use bgrun_exec::{Chunk, Engine, EngineConfig, EngineError, MetaFrame, StartRequest};
use futures::StreamExt;

use crate::fixture::*;

async fn a_background_run_is_pending_at_once_and_polls_to_completion(backend: Backend) {
    let f = fixture(backend).await;
    let started = f
        .engine
        .start(StartRequest::agent("echo", "hello big world"))
        .await
        .unwrap();
    assert!(started.created);
    assert_eq!(started.run.status, RunStatus::Pending);
    let stored = f.engine.store().get_run(&started.run.run_id).await.unwrap();
    assert!(
        stored.is_some(),
        "PENDING is persisted before start returns"
    );

    let run = f.engine.wait(&started.run.run_id).await.unwrap();
    assert!(run.has_completed());
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.content.as_deref(), Some("hello big world"));
    assert_eq!(run.last_event_index, Some(4));

    let events = all_events(&f.engine, &run.run_id, None).await;
    assert_eq!(
        types(&events),
        [
            "RunStarted",
            "RunContent",
            "RunContent",
            "RunContent",
            "RunCompleted"
        ]
    );
    assert_gapless(&events, 0);
    let contents: Vec<_> = events[1..4]
        .iter()
        .map(|event| event.fields().unwrap()["content"].clone())
        .collect();
    assert_eq!(contents, ["hello ", "big ", "world"]);
}

async fn resume_after_any_index_gives_exactly_the_rest(backend: Backend) {
    let f = fixture(backend).await;
    let run = f
        .engine
        .start(StartRequest::agent("ticker", "").param("count", 200))
        .await
        .unwrap()
        .run;
    // Read some events, then drop the stream as a client would.
    let mut stream = f.engine.events(&run.run_id, None);
    let mut seen = Vec::new();
    while seen.len() < 37 {
        seen.push(stream.next().await.unwrap().unwrap());
    }
    drop(stream);
    let last = seen.last().unwrap().index();
    let rest = all_events(&f.engine, &run.run_id, Some(last)).await;
    assert_gapless(&rest, last + 1);
    assert_eq!(rest.last().unwrap().event_type(), "RunCompleted");
    assert_eq!(seen.len() + rest.len(), 202);

    let resume = f.engine.resume(&run.run_id, Some(99)).await.unwrap();
    assert_eq!(
        resume.meta,
        [MetaFrame::Replay {
            run_id: run.run_id.clone(),
            status: RunStatus::Completed,
            total_events: 102,
            last_event_index_requested: 99,
        }]
    );
    let replayed: Vec<Event> = resume.events.map(|event| event.unwrap()).collect().await;
    assert_gapless(&replayed, 100);
    assert_eq!(replayed.len(), 102);

    let past_end = f.engine.resume(&run.run_id, Some(500)).await.unwrap();
    assert!(matches!(
        past_end.meta[0],
        MetaFrame::Replay {
            total_events: 0,
            ..
        }
    ));
    assert_eq!(past_end.events.count().await, 0);
}

async fn a_live_resume_catches_up_then_follows(backend: Backend) {
    let f = fixture(backend).await;
    let run = f
        .engine
        .start(StartRequest::agent("gated", "x"))
        .await
        .unwrap()
        .run;
    wait_running(&f.engine, &run.run_id).await;
    let resume = f.engine.resume(&run.run_id, None).await.unwrap();
    assert_eq!(
        resume.meta,
        [
            MetaFrame::CatchUp {
                run_id: run.run_id.clone(),
                status: RunStatus::Running,
                missed_events: 2,
                current_event_count: 2,
            },
            MetaFrame::Subscribed {
                run_id: run.run_id.clone(),
                status: RunStatus::Running,
                current_event_count: 2,
            }
        ]
    );
    let subscribed = f.engine.resume(&run.run_id, Some(1)).await.unwrap();
    assert!(matches!(
        subscribed.meta[..],
        [MetaFrame::Subscribed { .. }]
    ));
    f.gated.gate.add_permits(1);
    let events: Vec<Event> = resume.events.map(|event| event.unwrap()).collect().await;
    assert_eq!(
        types(&events),
        ["RunStarted", "RunContent", "RunContent", "RunCompleted"]
    );
    let tail: Vec<Event> = subscribed
        .events
        .map(|event| event.unwrap())
        .collect()
        .await;
    assert_eq!(types(&tail), ["RunContent", "RunCompleted"]);
}

async fn cancelling_a_running_run_keeps_its_partial_content(backend: Backend) {
    let f = fixture(backend).await;
    let run = f
        .engine
        .start(StartRequest::agent("gated", "x"))
        .await
        .unwrap()
        .run;
    wait_running(&f.engine, &run.run_id).await;
    let outcome = f.engine.cancel(&run.run_id).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Cancelled);
    assert!(outcome.cancelled);
    let run = f.engine.wait(&run.run_id).await.unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.cancellation_stage, Some(CancellationStage::Executing));
    assert_eq!(run.content.as_deref(), Some("hello "));
    let events = all_events(&f.engine, &run.run_id, None).await;
    assert_eq!(types(&events), ["RunStarted", "RunContent", "RunCancelled"]);
    assert_gapless(&events, 0);
    // A terminal run is left as it is.
    let again = f.engine.cancel(&run.run_id).await.unwrap();
    assert_eq!(
        (again.status, again.cancelled),
        (RunStatus::Cancelled, false)
    );
    let done = f
        .engine
        .start(StartRequest::agent("echo", "a"))
        .await
        .unwrap()
        .run;
    f.engine.wait(&done.run_id).await.unwrap();
    let late = f.engine.cancel(&done.run_id).await.unwrap();
    assert_eq!((late.status, late.cancelled), (RunStatus::Completed, false));
}

async fn a_cancel_before_start_ends_the_later_run_without_running_it(backend: Backend) {
    let f = fixture(backend).await;
    let run_id = RunId::parse("chosen-by-the-client").unwrap();
    let outcome = f.engine.cancel(&run_id).await.unwrap();
    assert_eq!(
        (outcome.status, outcome.cancelled),
        (RunStatus::Cancelled, true)
    );
    let started = f
        .engine
        .start(StartRequest::agent("gated", "never").run_id(run_id.clone()))
        .await
        .unwrap();
    assert_eq!(started.run.status, RunStatus::Pending);
    let run = f.engine.wait(&run_id).await.unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.cancellation_stage, Some(CancellationStage::Pending));
    let events = all_events(&f.engine, &run_id, None).await;
    assert_eq!(types(&events), ["RunCancelled"]);
    assert_eq!(events[0].index(), 0);
    assert!(f.gated.started().is_empty(), "the component never ran");
}

async fn a_cancel_racing_the_start_of_its_run_is_never_lost(backend: Backend) {
    let f = fixture(backend).await;
    let mut raced = Vec::new();
    for attempt in 0..40 {
        let run_id = RunId::parse(format!("raced-{attempt}")).unwrap();
        let start = f
            .engine
            .start(StartRequest::agent("gated", "raced").run_id(run_id.clone()));
        let (started, cancelled) = tokio::join!(start, f.engine.cancel(&run_id));
        assert!(started.unwrap().created);
        raced.push((run_id, cancelled.unwrap()));
    }
    // Whatever got past the cancel may finish now: a cancel answered as done must have stopped
    // its run anyway.
    f.gated.gate.add_permits(raced.len());
    for (run_id, cancel) in &raced {
        let run = f.engine.wait(run_id).await.unwrap();
        if cancel.cancelled {
            assert_eq!(
                run.status,
                RunStatus::Cancelled,
                "{run_id}: the cancel answered {cancel:?}"
            );
        }
    }
}

async fn text_a_store_cannot_keep_is_refused_before_anything_is_stored(backend: Backend) {
    let f = fixture(backend).await;
    let nul_message = f
        .engine
        .start(StartRequest::agent("echo", "a\0b").run_id(RunId::parse("nul-message").unwrap()));
    let mut nul_owner = StartRequest::agent("echo", "hi").run_id(RunId::parse("nul-user").unwrap());
    nul_owner.user_id = Some("a\0b".into());
    let longest = "é".repeat(bgrun_exec::MAX_IDEMPOTENCY_KEY_BYTES / 2);
    let too_long = StartRequest::agent("echo", "hi")
        .run_id(RunId::parse("long-key").unwrap())
        .idempotency_key(format!("{longest}x"));
    for (outcome, what) in [
        (nul_message.await, "a NUL in the message"),
        (f.engine.start(nul_owner).await, "a NUL in user_id"),
        (f.engine.start(too_long).await, "a key over the limit"),
    ] {
        assert!(
            matches!(outcome, Err(EngineError::InvalidInput(_))),
            "{what}: {outcome:?}"
        );
    }
    for run_id in ["nul-message", "nul-user", "long-key"] {
        let run_id = RunId::parse(run_id).unwrap();
        assert_eq!(f.engine.get_run(&run_id).await.unwrap(), None, "{run_id}");
    }
    // The longest key there may be is stored and recognised, on every store.
    let first = f
        .engine
        .start(StartRequest::agent("echo", "hi").idempotency_key(longest.clone()))
        .await
        .unwrap();
    let again = f
        .engine
        .start(StartRequest::agent("echo", "hi").idempotency_key(longest))
        .await
        .unwrap();
    assert!(first.created && !again.created);
    assert_eq!(again.run.run_id, first.run.run_id);
}

async fn a_start_whose_caller_goes_away_still_runs_its_run(backend: Backend) {
    let f = fixture(backend).await;
    let run_id = RunId::parse("caller-gone").unwrap();
    let mut start = Box::pin(
        f.engine
            .start(StartRequest::agent("echo", "hi there").run_id(run_id.clone())),
    );
    // Polled once (the create is under way), then dropped: a client hanging up.
    assert!(futures::poll!(start.as_mut()).is_pending());
    drop(start);
    // Shutting down waits for what the engine has under way, the start included.
    f.engine.shutdown(Duration::from_secs(30)).await;
    let run = f.engine.store().get_run(&run_id).await.unwrap();
    assert_eq!(
        run.map(|run| run.status),
        Some(RunStatus::Completed),
        "created, launched and run to its end"
    );
}

async fn a_run_left_running_while_the_engine_lives_is_ended(backend: Backend) {
    let f = fixture_with(backend, |config| EngineConfig {
        lease_ttl: Duration::from_millis(300),
        lease_renew_every: Duration::from_millis(100),
        ..config
    })
    .await;
    // RUNNING in the store, held by no engine: what an engine leaves when it cannot store a
    // run's end (or, on PostgreSQL, a replica that died holding a lease now lapsed).
    let store = f.engine.store();
    let new = NewRun::new(RunTarget::new(RunKind::Agent, "echo"), "left");
    let run = store.create_run(new).await.unwrap().run().clone();
    let running = store
        .transition(
            &run.run_id,
            &Transition::new(RunStatus::Pending, RunStatus::Running),
            &[],
        )
        .await
        .unwrap();
    assert!(running.applied());
    let ended = tokio::time::timeout(Duration::from_secs(60), f.engine.wait(&run.run_id))
        .await
        .expect("the run is still RUNNING a minute later")
        .unwrap();
    assert_eq!(ended.status, RunStatus::Error);
    assert_eq!(ended.error.as_deref(), Some("interrupted"));
}

async fn queued_runs_wait_their_turn_in_start_order_and_can_be_cancelled(backend: Backend) {
    // One slot: each run starts only once the one before ended, so the order is observable.
    let f = fixture_with(backend, |config| EngineConfig {
        max_concurrency: 1,
        ..config
    })
    .await;
    let mut runs = Vec::new();
    for name in ["r0", "r1", "r2", "r3", "r4"] {
        runs.push(
            f.engine
                .start(StartRequest::agent("gated", name))
                .await
                .unwrap()
                .run,
        );
    }
    wait_running(&f.engine, &runs[0].run_id).await;
    for queued in &runs[1..] {
        let run = f.engine.get_run(&queued.run_id).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Pending);
    }
    let cancelled = f.engine.cancel(&runs[3].run_id).await.unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    let run3 = f.engine.get_run(&runs[3].run_id).await.unwrap().unwrap();
    assert_eq!(run3.cancellation_stage, Some(CancellationStage::Pending));

    f.gated.gate.add_permits(4);
    for run in &runs {
        f.engine.wait(&run.run_id).await.unwrap();
    }
    assert_eq!(f.gated.started(), ["r0", "r1", "r2", "r4"]);
    // r0 started in the write that created it, the others in one of their own; r3 never.
    let metrics = f.engine.metrics();
    assert_eq!(metrics.runs_created, 5);
    assert_eq!(metrics.runs_started, 4);
    assert_eq!(metrics.runs_cancelled, 1);
}

async fn failures_and_panics_end_the_run_error_and_disturb_nothing_else(backend: Backend) {
    let f = fixture(backend).await;
    let bystander = f
        .engine
        .start(StartRequest::agent("gated", "b"))
        .await
        .unwrap()
        .run;
    let failed = f
        .engine
        .start(StartRequest::agent("fail", ""))
        .await
        .unwrap()
        .run;
    let panicked = f
        .engine
        .start(StartRequest::agent("fail", "").param("panic", "true"))
        .await
        .unwrap()
        .run;
    let failed = f.engine.wait(&failed.run_id).await.unwrap();
    assert_eq!(failed.status, RunStatus::Error);
    assert_eq!(failed.error.as_deref(), Some("failed on purpose"));
    assert_eq!(failed.content.as_deref(), Some("failed on purpose"));
    let panicked = f.engine.wait(&panicked.run_id).await.unwrap();
    assert_eq!(panicked.status, RunStatus::Error);
    assert!(panicked.error.unwrap().contains("panicked on purpose"));
    let events = all_events(&f.engine, &panicked.run_id, None).await;
    assert_eq!(types(&events), ["RunStarted", "RunError"]);

    f.gated.gate.add_permits(1);
    let bystander = f.engine.wait(&bystander.run_id).await.unwrap();
    assert_eq!(bystander.status, RunStatus::Completed);
}

async fn bad_requests_are_typed_errors(backend: Backend) {
    let f = fixture(backend).await;
    let unknown = f.engine.start(StartRequest::agent("nope", "")).await;
    assert!(matches!(unknown, Err(EngineError::UnknownComponent(_))));
    let bad_param = f
        .engine
        .start(StartRequest::agent("ticker", "").param("count", "-1"))
        .await;
    assert!(matches!(bad_param, Err(EngineError::InvalidInput(_))));
    let run = f
        .engine
        .start(StartRequest::agent("echo", "a"))
        .await
        .unwrap()
        .run;
    let duplicate = f
        .engine
        .start(StartRequest::agent("ticker", "").run_id(run.run_id.clone()))
        .await;
    assert!(matches!(duplicate, Err(EngineError::RunExists(_))));
    let missing = f
        .engine
        .resume(&RunId::parse("missing").unwrap(), None)
        .await
        .unwrap();
    assert!(matches!(missing.meta[..], [MetaFrame::Error { .. }]));
    assert_eq!(missing.events.count().await, 0);
    assert!(f
        .engine
        .get_run(&RunId::parse("missing").unwrap())
        .await
        .unwrap()
        .is_none());
}

async fn an_idempotency_key_returns_the_first_run(backend: Backend) {
    let f = fixture(backend).await;
    let first = f
        .engine
        .start(StartRequest::agent("echo", "once").idempotency_key("k1"))
        .await
        .unwrap();
    let second = f
        .engine
        .start(StartRequest::agent("echo", "twice").idempotency_key("k1"))
        .await
        .unwrap();
    assert!(first.created && !second.created);
    assert_eq!(first.run.run_id, second.run.run_id);
}

async fn events_evicted_from_memory_are_read_from_the_store(backend: Backend) {
    let f = fixture_with(backend, |config| EngineConfig {
        log: bgrun_buffer::LogConfig {
            max_stream_bytes: 4096,
            min_stream_events: 8,
            finished_ttl: Duration::ZERO,
            ..Default::default()
        },
        eviction_period: Duration::from_millis(1),
        ..config
    })
    .await;
    let run = f
        .engine
        .start(StartRequest::agent("ticker", "").param("count", 3000))
        .await
        .unwrap()
        .run;
    let live = all_events(&f.engine, &run.run_id, None).await;
    assert_eq!(live.len(), 3002);
    assert_gapless(&live, 0);
    let replay = all_events(&f.engine, &run.run_id, Some(10)).await;
    assert_eq!(replay, live[11..]);
}

/// A `ticker` run of `count` ticks, followed to its end: the run and its events.
async fn finished_ticker(engine: &Engine, count: u64) -> (RunRecord, Vec<Event>) {
    let run = engine
        .start(StartRequest::agent("ticker", "").param("count", count))
        .await
        .unwrap()
        .run;
    let events = all_events(engine, &run.run_id, None).await;
    (run, events)
}

async fn a_reopened_store_replays_a_finished_run_exactly(backend: Backend) {
    let f = fixture(backend).await;
    let (run, original) = finished_ticker(&f.engine, 100).await;
    f.engine.shutdown(Duration::from_secs(5)).await;
    let Fixture {
        backend,
        engine,
        gated,
    } = f;
    drop(engine);
    let engine = open_engine(&backend, &gated, backend.config()).await;
    let resume = engine.resume(&run.run_id, Some(49)).await.unwrap();
    assert!(matches!(
        resume.meta[..],
        [MetaFrame::Replay {
            total_events: 52,
            ..
        }]
    ));
    let replayed: Vec<Event> = resume.events.map(|event| event.unwrap()).collect().await;
    assert_eq!(replayed, original[50..]);

    // As an SSE stream takes it: the store's frames where it keeps them (SQLite), else events;
    // either way exactly the frames of the same events.
    let mut framed = engine.events(&run.run_id, Some(49)).framed();
    let (mut sent, mut stored_frames) = (Vec::new(), 0);
    loop {
        match framed.next_chunk().await.unwrap() {
            chunk if chunk.is_empty() => break,
            Chunk::Events(events) => events.iter().for_each(|event| event.push_frame(&mut sent)),
            Chunk::Frames(frames) => {
                stored_frames += frames.count;
                sent.extend_from_slice(&frames.to_vec());
            }
        }
    }
    assert_eq!(
        String::from_utf8(sent).unwrap(),
        String::from_utf8(Frames::of(&original[50..]).to_vec()).unwrap()
    );
    assert_eq!(framed.position(), 102);
    let keeps_frames = matches!(backend, Backend::Sqlite(_));
    assert_eq!(stored_frames, if keeps_frames { 52 } else { 0 });
}

/// A finished run its log still holds is framed as it is taken from memory, on any store (the
/// PostgreSQL store keeps no frames): the same bytes as its events' frames.
async fn a_finished_run_in_memory_is_replayed_as_frames(backend: Backend) {
    let f = fixture(backend).await;
    let (run, original) = finished_ticker(&f.engine, 100).await;
    assert_eq!(original.len(), 102);
    let mut framed = f.engine.events(&run.run_id, Some(9)).framed();
    let mut sent = Vec::new();
    loop {
        match framed.next_chunk().await.unwrap() {
            chunk if chunk.is_empty() => break,
            Chunk::Frames(frames) => sent.extend_from_slice(&frames.to_vec()),
            Chunk::Events(events) => panic!("events from memory: {}", events.len()),
        }
    }
    assert_eq!(
        String::from_utf8(sent).unwrap(),
        String::from_utf8(Frames::of(&original[10..]).to_vec()).unwrap()
    );
    assert_eq!(framed.position(), 102);
}

async fn an_engine_takes_over_what_a_dead_process_left(backend: Backend) {
    let (interrupted, queued) = {
        // What a process killed mid-run leaves behind: one RUNNING run with events, one PENDING.
        let store = backend.store().await;
        let mut running = NewRun::new(RunTarget::new(RunKind::Agent, "echo"), "a b");
        running.run_id = RunId::parse("was-running").unwrap();
        let running = store.create_run(running).await.unwrap().run().clone();
        let started = bgrun_core::Event::render(
            bgrun_core::Envelope {
                run_id: &running.run_id,
                session_id: &running.session_id,
                created_at: 0,
            },
            0,
            "RunStarted",
            &Default::default(),
        );
        store
            .transition(
                &running.run_id,
                &Transition::new(RunStatus::Pending, RunStatus::Running),
                &[started],
            )
            .await
            .unwrap();
        let queued = NewRun::new(RunTarget::new(RunKind::Agent, "echo"), "still queued");
        let queued = store.create_run(queued).await.unwrap().run().clone();
        (running.run_id, queued.run_id)
    };
    let gated = Gated::new();
    let engine = open_engine(&backend, &gated, backend.config()).await;
    let run = engine.wait(&interrupted).await.unwrap();
    assert_eq!(run.status, RunStatus::Error);
    assert_eq!(run.error.as_deref(), Some("interrupted"));
    let events = all_events(&engine, &interrupted, None).await;
    assert_eq!(types(&events), ["RunStarted", "RunError"]);
    assert_eq!(events[1].fields().unwrap()["error"], "interrupted");
    let queued = engine.wait(&queued).await.unwrap();
    assert_eq!(queued.status, RunStatus::Completed);
    assert_eq!(queued.content.as_deref(), Some("still queued"));
}

async fn a_retryable_run_interrupted_by_shutdown_runs_again_in_the_next_engine(backend: Backend) {
    let mut gated = Gated::new();
    gated.retryable = true;
    let engine = open_engine(&backend, &gated, backend.config()).await;
    let run = engine
        .start(StartRequest::agent("gated", "again"))
        .await
        .unwrap()
        .run;
    wait_running(&engine, &run.run_id).await;
    engine.shutdown(Duration::ZERO).await;
    let stored = engine.store().get_run(&run.run_id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Running, "left for recovery");
    drop(engine);

    let engine = open_engine(&backend, &gated, backend.config()).await;
    gated.gate.add_permits(1);
    let run = engine.wait(&run.run_id).await.unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(gated.started(), ["again", "again"]);
    let events = all_events(&engine, &run.run_id, None).await;
    assert_gapless(&events, 0);
    assert_eq!(events.last().unwrap().event_type(), "RunCompleted");
}

async fn shutdown_past_the_grace_period_interrupts_what_still_runs(backend: Backend) {
    let f = fixture(backend).await;
    let run = f
        .engine
        .start(StartRequest::agent("gated", "x"))
        .await
        .unwrap()
        .run;
    wait_running(&f.engine, &run.run_id).await;
    f.engine.shutdown(Duration::ZERO).await;
    let run = f
        .engine
        .store()
        .get_run(&run.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Error);
    assert_eq!(run.error.as_deref(), Some("interrupted"));
    assert!(matches!(
        f.engine.start(StartRequest::agent("echo", "late")).await,
        Err(EngineError::ShuttingDown)
    ));
    drop(f.backend);
}

crate::on_every_store!(
    a_background_run_is_pending_at_once_and_polls_to_completion,
    resume_after_any_index_gives_exactly_the_rest,
    a_live_resume_catches_up_then_follows,
    cancelling_a_running_run_keeps_its_partial_content,
    a_cancel_before_start_ends_the_later_run_without_running_it,
    a_cancel_racing_the_start_of_its_run_is_never_lost,
    text_a_store_cannot_keep_is_refused_before_anything_is_stored,
    a_start_whose_caller_goes_away_still_runs_its_run,
    a_run_left_running_while_the_engine_lives_is_ended,
    queued_runs_wait_their_turn_in_start_order_and_can_be_cancelled,
    failures_and_panics_end_the_run_error_and_disturb_nothing_else,
    bad_requests_are_typed_errors,
    an_idempotency_key_returns_the_first_run,
    events_evicted_from_memory_are_read_from_the_store,
    a_reopened_store_replays_a_finished_run_exactly,
    a_finished_run_in_memory_is_replayed_as_frames,
    an_engine_takes_over_what_a_dead_process_left,
    a_retryable_run_interrupted_by_shutdown_runs_again_in_the_next_engine,
    shutdown_past_the_grace_period_interrupts_what_still_runs,
);

/// Without leases (SQLite), a run that has a free slot is stored and started in one write and
/// ended in one more; one that waits for a slot is stored `PENDING` alone and started later by
/// a write of its own. Either way its log holds `RunStarted` once, at index 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_run_with_a_free_slot_is_created_and_started_in_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        bgrun_store_sqlite::SqliteStore::open(dir.path().join("runs.db"))
            .await
            .unwrap(),
    );
    let gated = Gated::new();
    let engine = bgrun_exec::Engine::open(
        store.clone(),
        bgrun_exec::demo::registry().with(gated.clone()),
        EngineConfig {
            exclusive_store: true,
            max_concurrency: 1,
            ..EngineConfig::default()
        },
    )
    .await
    .unwrap();

    let writes = store.write_stats().commands;
    let first = engine
        .start(StartRequest::agent("ticker", "").param("count", 0))
        .await
        .unwrap();
    assert_eq!(
        first.run.status,
        RunStatus::Pending,
        "a start answers the run as created"
    );
    let stored = store.get_run(&first.run.run_id).await.unwrap().unwrap();
    assert_ne!(
        stored.status,
        RunStatus::Pending,
        "started in the create's write"
    );
    let run = engine.wait(&first.run.run_id).await.unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(
        store.write_stats().commands - writes,
        2,
        "create-and-start, end"
    );
    let events = all_events(&engine, &run.run_id, None).await;
    assert_eq!(types(&events), ["RunStarted", "RunCompleted"]);
    assert_gapless(&events, 0);

    // The one slot taken: the next run waits, stored PENDING by its create alone.
    let holder = engine
        .start(StartRequest::agent("gated", "x"))
        .await
        .unwrap()
        .run;
    wait_running(&engine, &holder.run_id).await;
    let writes = store.write_stats().commands;
    let queued = engine
        .start(StartRequest::agent("ticker", "").param("count", 0))
        .await
        .unwrap()
        .run;
    assert_eq!(store.write_stats().commands - writes, 1, "the create alone");
    let stored = store.get_run(&queued.run_id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Pending);
    gated.gate.add_permits(1);
    let run = engine.wait(&queued.run_id).await.unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    let events = all_events(&engine, &run.run_id, None).await;
    assert_eq!(types(&events), ["RunStarted", "RunCompleted"]);
    assert_gapless(&events, 0);
}
