//! Behaviour particular to the PostgreSQL store: migrations racing, notifications across
//! stores, retries over killed connections. The shared contract is in `conformance.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::time::Duration;

use bgrun_core::{
    Envelope, Event, NewRun, RunKind, RunRecord, RunStatus, RunTarget, Store, StoreError,
    Transition, TransitionOutcome,
};
use bgrun_store_postgres::testing::TestSchema;
use bgrun_store_postgres::{Notification, PostgresConfig, PostgresStore};
use tokio::sync::broadcast;

/// How long a test waits for something that should happen at once before it fails.
const BOUND: Duration = Duration::from_secs(20);

fn events(run: &RunRecord, from: u64, count: u64) -> Vec<Event> {
    let envelope = Envelope {
        run_id: &run.run_id,
        session_id: &run.session_id,
        created_at: run.created_at,
    };
    (from..from + count)
        .map(|index| {
            let mut fields = serde_json::Map::new();
            fields.insert("content".into(), format!("token {index}").into());
            Event::render(envelope, index, "RunContent", &fields)
        })
        .collect()
}

async fn running_run(store: &PostgresStore) -> RunRecord {
    let run = store
        .create_run(NewRun::new(RunTarget::new(RunKind::Agent, "a"), "in"))
        .await
        .unwrap()
        .run()
        .clone();
    let outcome = store
        .transition(
            &run.run_id,
            &Transition::new(RunStatus::Pending, RunStatus::Running),
            &[],
        )
        .await
        .unwrap();
    match outcome {
        TransitionOutcome::Applied(run) => *run,
        other => panic!("expected Applied, got {other:?}"),
    }
}

async fn next_matching(
    receiver: &mut broadcast::Receiver<Notification>,
    wanted: impl Fn(&Notification) -> bool,
) -> Notification {
    tokio::time::timeout(BOUND, async {
        loop {
            match receiver.recv().await {
                Ok(notification) if wanted(&notification) => return notification,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("notifications closed"),
            }
        }
    })
    .await
    .expect("the notification did not arrive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_migrate_once() {
    let schema = TestSchema::new();
    let stores = futures::future::join_all((0..4).map(|_| schema.store())).await;
    let stores: Vec<PostgresStore> = stores.into_iter().map(Result::unwrap).collect();

    let (client, connection) = tokio_postgres::connect(schema.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let versions: Vec<i64> = client
        .query(
            &format!(
                "SELECT version FROM \"{}\".schema_migrations ORDER BY version",
                schema.name()
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    // Every replica sees what another wrote.
    let run = running_run(&stores[0]).await;
    assert_eq!(
        stores[3]
            .get_run(&run.run_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        RunStatus::Running
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_replicas_hear_of_appends_transitions_and_cancels() {
    let schema = TestSchema::new();
    let writer = schema.store().await.unwrap();
    let reader = schema.store().await.unwrap();
    let mut notifications = reader.notifications();

    let run = running_run(&writer).await;
    writer
        .append_events(&run.run_id, &events(&run, 0, 3))
        .await
        .unwrap();
    let heard = next_matching(&mut notifications, |n| {
        matches!(n, Notification::Durable { .. })
    })
    .await;
    assert_eq!(
        heard,
        Notification::Durable {
            run_id: run.run_id.clone(),
            last_event_index: 2
        }
    );

    let mut end = Transition::new(RunStatus::Running, RunStatus::Completed);
    end.content = Some("done".into());
    assert!(writer
        .transition(&run.run_id, &end, &events(&run, 3, 1))
        .await
        .unwrap()
        .applied());
    let heard = next_matching(&mut notifications, |n| {
        matches!(n, Notification::Durable { .. })
    })
    .await;
    assert_eq!(
        heard,
        Notification::Durable {
            run_id: run.run_id.clone(),
            last_event_index: 3
        }
    );

    let later = bgrun_core::RunId::generate();
    writer
        .request_cancel(&later, bgrun_core::now())
        .await
        .unwrap();
    let heard = next_matching(&mut notifications, |n| {
        matches!(n, Notification::Cancel { .. })
    })
    .await;
    assert_eq!(heard, Notification::Cancel { run_id: later });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_do_not_hear_each_other() {
    let ours = TestSchema::new();
    let theirs = TestSchema::new();
    let store = ours.store().await.unwrap();
    let other = theirs.store().await.unwrap();
    let mut notifications = store.notifications();

    let foreign = bgrun_core::RunId::generate();
    other.request_cancel(&foreign, 0).await.unwrap();
    let own = bgrun_core::RunId::generate();
    store.request_cancel(&own, 0).await.unwrap();
    // Notifications of one connection arrive in commit order: ours is the first one heard.
    let heard = next_matching(&mut notifications, |_| true).await;
    assert_eq!(heard, Notification::Cancel { run_id: own });
    assert!(!store.cancel_requested(&foreign).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_survive_killed_connections_without_loss_or_duplicates() {
    const BATCHES: u64 = 200;
    const BATCH: u64 = 5;
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let mut notifications = store.notifications();
    let run = running_run(&store).await;

    let writer = {
        let store = store.clone();
        let run = run.clone();
        tokio::spawn(async move {
            for batch in 0..BATCHES {
                store
                    .append_events(&run.run_id, &events(&run, batch * BATCH, BATCH))
                    .await
                    .unwrap_or_else(|error| panic!("batch {batch}: {error}"));
            }
        })
    };
    // Kill the store's connections (the listener's too) while the appends stream in, each
    // time the log has grown by 100 more events, until the writer is done.
    let mut writer = writer;
    let mut kills = 0;
    let mut killed_at = 0;
    loop {
        tokio::select! {
            finished = &mut writer => {
                finished.unwrap();
                break;
            }
            heard = next_matching(&mut notifications, |n| matches!(n, Notification::Durable { .. })) => {
                if let Notification::Durable { last_event_index, .. } = heard {
                    if last_event_index >= killed_at + 100 {
                        killed_at = last_event_index;
                        kills += schema.terminate_connections().await.unwrap();
                    }
                }
            }
        }
    }
    assert!(kills > 0, "no connection was killed");

    let stored = store.read_events(&run.run_id, None, 10_000).await.unwrap();
    assert_eq!(stored, events(&run, 0, BATCHES * BATCH));
    let record = store.get_run(&run.run_id).await.unwrap().unwrap();
    assert_eq!(record.last_event_index, Some(BATCHES * BATCH - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_on_a_run_that_does_not_exist_is_refused_and_leaves_nothing() {
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let new = NewRun::new(RunTarget::new(RunKind::Agent, "a"), "in");
    let hour = Duration::from_secs(3600);
    match store.acquire_lease(&new.run_id, "replica-a", hour).await {
        Err(StoreError::RunNotFound(id)) => assert_eq!(id, new.run_id),
        other => panic!("expected RunNotFound, got {other:?}"),
    }
    // Nothing was left behind for the id: once the run exists, its lease is free.
    let run_id = new.run_id.clone();
    store.create_run(new).await.unwrap();
    assert_eq!(
        store
            .acquire_lease(&run_id, "replica-b", hour)
            .await
            .unwrap(),
        bgrun_core::LeaseGrant::Granted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_creates_survive_killed_connections_each_stored_once_started_and_leased() {
    const CREATORS: usize = 4;
    const RUNS_EACH: usize = 60;
    const OWNER: &str = "replica-a";
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let (progress, mut created) = tokio::sync::watch::channel(0_usize);
    let progress = std::sync::Arc::new(progress);
    let creators: Vec<_> = (0..CREATORS)
        .map(|_| {
            let store = store.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut runs = Vec::new();
                for i in 0..RUNS_EACH {
                    let mut new = NewRun::new(RunTarget::new(RunKind::Agent, "a"), "in");
                    // Every fifth with an idempotency key: created command by command.
                    if i % 5 == 0 {
                        new.idempotency_key = Some(format!("key-{}", new.run_id));
                    }
                    let record = new.clone().into_record();
                    let started = events(&record, 0, 1).remove(0);
                    let outcome = store
                        .create_and_start_leased(new, &started, OWNER, Duration::from_secs(3600))
                        .await
                        .unwrap_or_else(|error| panic!("creating {}: {error}", record.run_id));
                    assert_eq!(
                        outcome.created,
                        bgrun_core::CreateOutcome::Created {
                            run: record.clone(),
                            cancel_requested: false
                        }
                    );
                    let running = outcome.started.expect("started at create");
                    runs.push((running, started));
                    progress.send_modify(|count| *count += 1);
                }
                runs
            })
        })
        .collect();
    // Kill the store's connections each time 40 more runs were created, until all are.
    let mut kills = 0;
    let mut killed_at = 0;
    while killed_at + 40 <= CREATORS * RUNS_EACH {
        let target = killed_at + 40;
        created.wait_for(|count| *count >= target).await.unwrap();
        killed_at = target;
        kills += schema.terminate_connections().await.unwrap();
    }
    assert!(kills > 0, "no connection was killed");
    let mut runs = Vec::new();
    for creator in creators {
        runs.extend(creator.await.unwrap());
    }
    assert_eq!(runs.len(), CREATORS * RUNS_EACH);
    for (running, started) in runs {
        let id = &running.run_id;
        assert_eq!(running.status, RunStatus::Running);
        assert_eq!(store.get_run(id).await.unwrap().as_ref(), Some(&running));
        assert_eq!(store.read_events(id, None, 10).await.unwrap(), [started]);
        assert_eq!(
            store
                .acquire_lease(id, "replica-b", Duration::from_secs(60))
                .await
                .unwrap(),
            bgrun_core::LeaseGrant::HeldBy(OWNER.into()),
            "the lease of {id}"
        );
    }
    assert!(store.orphaned_runs(10).await.unwrap().is_empty());
}

/// A finished run never changes again: once a store ended it, or read it ended, it answers
/// `get_run` from memory. With the runs table out of the way, such runs are still answered,
/// and a run still running (which may yet change) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_are_answered_from_memory_and_running_ones_from_the_table() {
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let other = schema.store().await.unwrap();
    let (ended, read_ended, running) = (
        running_run(&store).await,
        running_run(&store).await,
        running_run(&store).await,
    );
    let mut completed = Transition::new(RunStatus::Running, RunStatus::Completed);
    completed.content = Some("done".into());
    let mut finished = Vec::new();
    for run in [&ended, &read_ended] {
        match store
            .transition(&run.run_id, &completed, &events(run, 0, 2))
            .await
            .unwrap()
        {
            TransitionOutcome::Applied(run) => finished.push(*run),
            outcome => panic!("not applied: {outcome:?}"),
        }
    }
    // `other` learns of one finished run by reading it, and reads the running one.
    assert_eq!(
        other.get_run(&read_ended.run_id).await.unwrap().as_ref(),
        Some(&finished[1])
    );
    assert_eq!(
        other
            .get_run(&running.run_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        RunStatus::Running
    );

    let name = schema.name();
    schema
        .execute(&format!("ALTER TABLE \"{name}\".runs RENAME TO runs_away"))
        .await
        .unwrap();
    assert_eq!(
        store.get_run(&ended.run_id).await.unwrap().as_ref(),
        Some(&finished[0])
    );
    assert_eq!(
        other.get_run(&read_ended.run_id).await.unwrap().as_ref(),
        Some(&finished[1])
    );
    for store in [&store, &other] {
        assert!(store.get_run(&running.run_id).await.is_err());
    }
    // `other` never held `ended`: it has to ask the table.
    assert!(other.get_run(&ended.run_id).await.is_err());
    schema
        .execute(&format!("ALTER TABLE \"{name}\".runs_away RENAME TO runs"))
        .await
        .unwrap();
    assert_eq!(
        other.get_run(&ended.run_id).await.unwrap().as_ref(),
        Some(&finished[0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_server_refuses_fails_alone_and_the_writes_batched_with_it_commit() {
    const RUNS: usize = 24;
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    // The server refuses any event whose JSON says "boom", as it would a violated constraint.
    let name = schema.name();
    schema
        .execute(&format!(
            "CREATE FUNCTION \"{name}\".refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.json LIKE '%boom%' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER refuse_boom BEFORE INSERT ON \"{name}\".events \
             FOR EACH ROW EXECUTE FUNCTION \"{name}\".refuse_boom();"
        ))
        .await
        .unwrap();
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(running_run(&store).await);
    }
    let refused = &runs[RUNS / 2];
    let mut boom = events(refused, 0, 3);
    let mut fields = serde_json::Map::new();
    fields.insert("content".into(), "boom".into());
    boom[1] = Event::render(
        Envelope {
            run_id: &refused.run_id,
            session_id: &refused.session_id,
            created_at: refused.created_at,
        },
        1,
        "RunContent",
        &fields,
    );

    // All at once, so that the writers batch them together (the outcome must not depend on it).
    let appends = runs.iter().map(|run| {
        let store = store.clone();
        let events = if run.run_id == refused.run_id {
            boom.clone()
        } else {
            events(run, 0, 5)
        };
        let run_id = run.run_id.clone();
        async move { store.append_events(&run_id, &events).await }
    });
    let results = futures::future::join_all(appends).await;

    for (run, result) in runs.iter().zip(results) {
        let stored = store.read_events(&run.run_id, None, 100).await.unwrap();
        let record = store.get_run(&run.run_id).await.unwrap().unwrap();
        if run.run_id == refused.run_id {
            let error = result.unwrap_err();
            assert!(error.to_string().contains("refused by the test"), "{error}");
            assert_eq!(stored, []);
            assert_eq!(record.last_event_index, None);
        } else {
            result.unwrap();
            assert_eq!(stored, events(run, 0, 5));
            assert_eq!(record.last_event_index, Some(4));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_and_asks_for_a_resync() {
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let mut notifications = store.notifications();
    assert!(schema.terminate_connections().await.unwrap() > 0);
    next_matching(&mut notifications, |n| *n == Notification::Resync).await;
    // And it listens again.
    let run_id = bgrun_core::RunId::generate();
    store.request_cancel(&run_id, 0).await.unwrap();
    let heard = next_matching(&mut notifications, |n| {
        matches!(n, Notification::Cancel { .. })
    })
    .await;
    assert_eq!(heard, Notification::Cancel { run_id });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_cancels_retry_over_killed_connections() {
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let run = running_run(&store).await;
    // Warm the pool so there are idle connections to kill.
    store.get_run(&run.run_id).await.unwrap();
    schema.terminate_connections().await.unwrap();
    assert_eq!(
        store.get_run(&run.run_id).await.unwrap().unwrap().status,
        RunStatus::Running
    );
    schema.terminate_connections().await.unwrap();
    store.request_cancel(&run.run_id, 1).await.unwrap();
    schema.terminate_connections().await.unwrap();
    assert!(store.cancel_requested(&run.run_id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_content_holds_a_nul_still_ends() {
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    // A component's output may hold a NUL, which PostgreSQL's text cannot: the run must still
    // end (it becomes U+FFFD in the runs row; the events keep it, escaped in their JSON).
    for (to, content, error) in [
        (RunStatus::Completed, Some("a\0b"), None),
        (RunStatus::Error, None, Some("bad\0 output")),
    ] {
        let run = running_run(&store).await;
        let end = Transition {
            content: content.map(str::to_owned),
            error: error.map(str::to_owned),
            ..Transition::new(RunStatus::Running, to)
        };
        let outcome = store.transition(&run.run_id, &end, &[]).await.unwrap();
        assert!(outcome.applied(), "{outcome:?}");
        let stored = store.get_run(&run.run_id).await.unwrap().unwrap();
        assert_eq!(stored.status, to);
        assert_eq!(
            (stored.content.as_deref(), stored.error.as_deref()),
            (
                content.map(|_| "a\u{FFFD}b"),
                error.map(|_| "bad\u{FFFD} output")
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_idempotency_key_is_freed_for_a_new_run() {
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let mut old = NewRun::new(RunTarget::new(RunKind::Agent, "a"), "in");
    old.idempotency_key = Some("key".into());
    old.created_at = 1_000;
    let first = store.create_run(old.clone()).await.unwrap().run().clone();

    let mut again = NewRun::new(RunTarget::new(RunKind::Agent, "a"), "in");
    again.idempotency_key = Some("key".into());
    again.created_at = 1_000 + bgrun_core::IDEMPOTENCY_WINDOW_SECS - 1;
    let outcome = store.create_run(again.clone()).await.unwrap();
    assert_eq!(outcome, bgrun_core::CreateOutcome::Existing(first.clone()));

    again.created_at = 1_000 + bgrun_core::IDEMPOTENCY_WINDOW_SECS;
    let outcome = store.create_run(again.clone()).await.unwrap();
    assert!(matches!(outcome, bgrun_core::CreateOutcome::Created { .. }));
    assert_eq!(outcome.run().run_id, again.run_id);
    // The old run is still there.
    assert_eq!(store.get_run(&first.run_id).await.unwrap(), Some(first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_clear_errors() {
    let url = bgrun_store_postgres::testing::database_url();
    let error = PostgresStore::connect(PostgresConfig::new(&url).with_schema("bad\"name"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("schema"), "{error}");
    let error = PostgresStore::connect(PostgresConfig::new("not a url ::"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Backend { .. }), "{error}");
}
