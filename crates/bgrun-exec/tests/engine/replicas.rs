//! Several engines on one PostgreSQL database behave as one: resume and cancel anywhere,
//! orphaned runs recovered by whoever is alive.

use std::time::Duration;

use bgrun_core::{
    Event, LeaseGrant, NewRun, RunId, RunKind, RunStatus, RunTarget, Store, Transition,
};
use bgrun_exec::{Engine, EngineConfig, MetaFrame, StartRequest};
use bgrun_store_postgres::testing::TestSchema;
use futures::StreamExt;

use crate::fixture::*;

/// Two engines ("replicas") on one schema, each with its own store connection pool.
async fn replicas(schema: &TestSchema, config: impl Fn() -> EngineConfig) -> (Engine, Engine) {
    let mut engines = Vec::new();
    for _ in 0..2 {
        let store = std::sync::Arc::new(schema.store().await.unwrap());
        let engine = Engine::open(store, bgrun_exec::demo::registry(), config())
            .await
            .unwrap();
        engines.push(engine);
    }
    let b = engines.pop().unwrap();
    let a = engines.pop().unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_resume_on_another_replica_gives_exactly_the_rest_live() {
    let schema = TestSchema::new();
    let (a, b) = replicas(&schema, EngineConfig::default).await;
    let run = a
        .start(
            StartRequest::agent("ticker", "")
                .param("count", 200)
                .param("delay_ms", 2),
        )
        .await
        .unwrap()
        .run;
    // A client reads a few events from A, then reconnects to B.
    let mut on_a = a.events(&run.run_id, None);
    let mut seen = Vec::new();
    while seen.len() < 20 {
        seen.push(on_a.next().await.unwrap().unwrap());
    }
    drop(on_a);
    let last = seen.last().unwrap().index();
    let resume = b.resume(&run.run_id, Some(last)).await.unwrap();
    assert!(matches!(
        resume.meta.last(),
        Some(MetaFrame::Subscribed {
            status: RunStatus::Running,
            ..
        })
    ));
    let rest: Vec<Event> = resume.events.map(|event| event.unwrap()).collect().await;
    assert_gapless(&rest, last + 1);
    assert_eq!(rest.last().unwrap().event_type(), "RunCompleted");
    let mut whole = seen;
    whole.extend(rest);
    assert_eq!(whole, all_events(&a, &run.run_id, None).await);
    assert_eq!(whole.len(), 202);
}

/// `wait` on a replica that does not execute the run follows it to its end from where its log
/// stands, and once it has ended answers it as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_replica_waits_for_a_run_another_executes() {
    let schema = TestSchema::new();
    let gated = Gated::new();
    let mut engines = Vec::new();
    for _ in 0..2 {
        let store = std::sync::Arc::new(schema.store().await.unwrap());
        let registry = bgrun_exec::demo::registry().with(gated.clone());
        engines.push(
            Engine::open(store, registry, EngineConfig::default())
                .await
                .unwrap(),
        );
    }
    let (a, b) = (&engines[0], &engines[1]);
    let run = a
        .start(StartRequest::agent("gated", "in"))
        .await
        .unwrap()
        .run;
    // Held RUNNING by its gate, with its first content stored: B follows it from there.
    let mut on_b = b.events(&run.run_id, None);
    while on_b.next().await.unwrap().unwrap().event_type() != "RunContent" {}
    drop(on_b);
    let waiting = tokio::spawn({
        let (b, run_id) = (b.clone(), run.run_id.clone());
        async move { b.wait(&run_id).await }
    });
    gated.gate.add_permits(1);
    let ended = waiting.await.unwrap().unwrap();
    assert_eq!(ended.status, RunStatus::Completed);
    assert_eq!(ended.content.as_deref(), Some("hello world"));
    assert_eq!(ended, a.get_run(&run.run_id).await.unwrap().unwrap());
    // Ended: both answer it as it is.
    assert_eq!(b.wait(&run.run_id).await.unwrap(), ended);
    assert_eq!(a.wait(&run.run_id).await.unwrap(), ended);
    let unknown = RunId::generate();
    assert!(matches!(
        b.wait(&unknown).await,
        Err(bgrun_exec::EngineError::RunNotFound(id)) if id == unknown
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_polling_a_run_executed_elsewhere_reads_only_its_new_events() {
    let schema = TestSchema::new();
    let engine = Engine::open(
        std::sync::Arc::new(schema.store().await.unwrap()),
        bgrun_exec::demo::registry(),
        EngineConfig::default(),
    )
    .await
    .unwrap();
    // The run is executed "elsewhere": written straight to the store, leased by another owner.
    let elsewhere = schema.store().await.unwrap();
    let run = elsewhere
        .create_run(NewRun::new(RunTarget::new(RunKind::Agent, "ticker"), "x"))
        .await
        .unwrap()
        .run()
        .clone();
    assert_eq!(
        elsewhere
            .acquire_lease(&run.run_id, "elsewhere", Duration::from_secs(600))
            .await
            .unwrap(),
        LeaseGrant::Granted
    );
    let envelope = bgrun_core::Envelope {
        run_id: &run.run_id,
        session_id: &run.session_id,
        created_at: run.created_at,
    };
    let tick = |index: u64| {
        let mut fields = serde_json::Map::new();
        fields.insert("content".into(), format!("tick {index}. ").into());
        Event::render(envelope, index, "RunContent", &fields)
    };
    let started = Event::render(envelope, 0, "RunStarted", &serde_json::Map::new());
    elsewhere
        .transition(
            &run.run_id,
            &Transition::new(RunStatus::Pending, RunStatus::Running),
            &[started],
        )
        .await
        .unwrap();
    let ticks = |range: std::ops::Range<u64>| range.map(tick).collect::<Vec<_>>();
    let content =
        |range: std::ops::Range<u64>| range.map(|i| format!("tick {i}. ")).collect::<String>();
    elsewhere
        .append_events(&run.run_id, &ticks(1..51))
        .await
        .unwrap();

    let read_before = engine.metrics().events_read;
    let polled = engine.get_run(&run.run_id).await.unwrap().unwrap();
    assert_eq!(polled.status, RunStatus::Running);
    assert_eq!(polled.content.as_deref(), Some(content(1..51).as_str()));
    let first_poll = engine.metrics().events_read - read_before;
    assert_eq!(first_poll, 51, "the first poll reads the whole log");

    elsewhere
        .append_events(&run.run_id, &ticks(51..61))
        .await
        .unwrap();
    let polled = engine.get_run(&run.run_id).await.unwrap().unwrap();
    assert_eq!(polled.content.as_deref(), Some(content(1..61).as_str()));
    assert_eq!(
        engine.metrics().events_read - read_before - first_poll,
        10,
        "the next poll reads only the 10 events stored since"
    );
    let polled = engine.get_run(&run.run_id).await.unwrap().unwrap();
    assert_eq!(polled.content.as_deref(), Some(content(1..61).as_str()));
    assert_eq!(
        engine.metrics().events_read - read_before,
        61,
        "nothing new"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_cancel_sent_to_another_replica_stops_the_run() {
    let schema = TestSchema::new();
    let (a, b) = replicas(&schema, EngineConfig::default).await;
    let run = a
        .start(
            StartRequest::agent("ticker", "")
                .param("count", 100_000)
                .param("delay_ms", 5),
        )
        .await
        .unwrap()
        .run;
    wait_running(&a, &run.run_id).await;
    let outcome = b.cancel(&run.run_id).await.unwrap();
    assert!(outcome.cancelled, "{outcome:?}");
    assert_eq!(
        outcome.status,
        RunStatus::Cancelled,
        "B waited for A to stop it"
    );
    // B follows the run executed on A to its end.
    let run = b.wait(&run.run_id).await.unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    let events = all_events(&b, &run.run_id, None).await;
    assert_gapless(&events, 0);
    assert_eq!(events.last().unwrap().event_type(), "RunCancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_run_whose_replica_died_is_ended_by_a_live_one() {
    let schema = TestSchema::new();
    let (a, _b) = replicas(&schema, || EngineConfig {
        lease_renew_every: Duration::from_millis(20),
        ..EngineConfig::default()
    })
    .await;
    // What a dead replica leaves: a RUNNING run with a lease that has lapsed.
    let store = schema.store().await.unwrap();
    let mut new_run = NewRun::new(RunTarget::new(RunKind::Agent, "echo"), "left behind");
    new_run.run_id = RunId::parse("orphan").unwrap();
    let orphan = bgrun_core::Store::create_run(&store, new_run)
        .await
        .unwrap()
        .run()
        .clone();
    let granted = bgrun_core::Store::acquire_lease(&store, &orphan.run_id, "dead", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(granted, LeaseGrant::Granted);
    bgrun_core::Store::transition(
        &store,
        &orphan.run_id,
        &Transition::new(RunStatus::Pending, RunStatus::Running),
        &[],
    )
    .await
    .unwrap();
    // No restart: a live replica's periodic recovery finds it.
    let run = a.wait(&orphan.run_id).await.unwrap();
    assert_eq!(run.status, RunStatus::Error);
    assert_eq!(run.error.as_deref(), Some("interrupted"));
    let events = all_events(&a, &orphan.run_id, None).await;
    assert_eq!(types(&events), ["RunError"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_run_queued_on_a_dead_replica_is_run_by_a_live_one() {
    let schema = TestSchema::new();
    let (a, b) = replicas(&schema, || EngineConfig {
        lease_renew_every: Duration::from_millis(20),
        ..EngineConfig::default()
    })
    .await;
    // Queued by a replica that died before starting it, a while ago.
    let store = schema.store().await.unwrap();
    let mut queued = NewRun::new(RunTarget::new(RunKind::Agent, "echo"), "still wanted");
    queued.created_at -= 3600;
    let queued = bgrun_core::Store::create_run(&store, queued)
        .await
        .unwrap()
        .run()
        .clone();
    let run = a.wait(&queued.run_id).await.unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.content.as_deref(), Some("still wanted"));
    // Both replicas may have queued it; exactly one executed it.
    let events = all_events(&b, &queued.run_id, None).await;
    assert_eq!(
        types(&events),
        ["RunStarted", "RunContent", "RunContent", "RunCompleted"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_engine_whose_lease_was_taken_over_writes_nothing_more() {
    let schema = TestSchema::new();
    let gated = Gated::new();
    // A lease that lapses at once and is never renewed: as if this engine were frozen.
    let frozen = EngineConfig {
        lease_ttl: Duration::ZERO,
        lease_renew_every: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    let store = std::sync::Arc::new(schema.store().await.unwrap());
    let registry = bgrun_exec::demo::registry().with(gated.clone());
    let engine = Engine::open(store.clone(), registry, frozen).await.unwrap();
    let run = engine
        .start(StartRequest::agent("gated", "x"))
        .await
        .unwrap()
        .run;
    wait_running(&engine, &run.run_id).await;

    // Another replica takes the run over.
    let taken = bgrun_core::Store::acquire_lease(
        store.as_ref(),
        &run.run_id,
        "the-other-replica",
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(taken, LeaseGrant::Granted);

    // The frozen engine wakes up and tries to go on: every write is refused.
    gated.gate.add_permits(1);
    engine.wait(&run.run_id).await.unwrap();
    let stored = bgrun_core::Store::get_run(store.as_ref(), &run.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, RunStatus::Running, "the new owner's to end");
    let events = bgrun_core::Store::read_events(store.as_ref(), &run.run_id, None, 100)
        .await
        .unwrap();
    assert_eq!(types(&events), ["RunStarted", "RunContent"]);
    assert_eq!(stored.last_event_index, Some(1));
}
