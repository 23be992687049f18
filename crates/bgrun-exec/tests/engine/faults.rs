//! Faults under a running engine (PostgreSQL only): the store's server connections are killed
//! while a run streams, as a database restart or failover would; the run still ends with every
//! event stored exactly once.

use std::collections::HashSet;

use bgrun_core::{Event, RunStatus};
use bgrun_exec::StartRequest;
use futures::StreamExt;

use crate::fixture::*;

const COUNT: u64 = 3000;

/// Every stored event of the run, read from the store (the truth) in pages.
async fn stored_events(store: &dyn bgrun_core::Store, run_id: &bgrun_core::RunId) -> Vec<Event> {
    let mut all: Vec<Event> = Vec::new();
    loop {
        let after = all.last().map(Event::index);
        let page = store.read_events(run_id, after, 1000).await.unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Exactly indices 0..=COUNT+1, each once, each JSON once, ticks in order, the terminal event last.
fn assert_exact_log(events: &[Event], what: &str) {
    assert_eq!(
        events.len() as u64,
        COUNT + 2,
        "{what}: expected {} events",
        COUNT + 2
    );
    assert_gapless(events, 0);
    let distinct: HashSet<&str> = events.iter().map(Event::json).collect();
    assert_eq!(distinct.len(), events.len(), "{what}: a JSON text repeats");
    assert_eq!(events[0].event_type(), "RunStarted", "{what}");
    for (tick, event) in events[1..=COUNT as usize].iter().enumerate() {
        assert_eq!(event.event_type(), "RunContent", "{what}");
        assert_eq!(
            event.fields().unwrap()["content"],
            format!("tick {tick}"),
            "{what}: event {}",
            event.index()
        );
    }
    let last = events.last().unwrap();
    assert_eq!(last.event_type(), "RunCompleted", "{what}");
    assert_eq!(
        last.fields().unwrap()["content"],
        format!("done {COUNT}"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_connections_lose_and_repeat_no_event() {
    let f = fixture(Backend::postgres()).await;
    let Backend::Postgres(schema) = &f.backend else {
        unreachable!("a PostgreSQL fixture")
    };
    let run = f
        .engine
        .start(
            StartRequest::agent("ticker", "")
                .param("count", COUNT as i64)
                .param("delay_ms", 1),
        )
        .await
        .unwrap()
        .run;

    // Follow the run, and now and then (the events seen are durable by then) kill every
    // connection the store has: the writes in flight, the pooled ones, the listener. The last
    // kill comes with the last tick, as the run's end is being written.
    let mut kills = 0;
    let mut streamed = Vec::new();
    let mut stream = f.engine.events(&run.run_id, None);
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        if event.index() % 250 == 10 || event.index() == COUNT {
            kills += 1;
            schema.terminate_connections().await.unwrap();
        }
        streamed.push(event);
    }
    drop(stream);
    assert!(
        kills >= 3,
        "the run ended before the faults ({kills} kills)"
    );

    let ended = f.engine.wait(&run.run_id).await.unwrap();
    assert_eq!(ended.status, RunStatus::Completed, "{ended:?}");
    assert_eq!(
        ended.content.as_deref(),
        Some(format!("done {COUNT}").as_str())
    );
    assert_eq!(ended.last_event_index, Some(COUNT + 1));

    assert_exact_log(&streamed, "the live stream");
    let stored = stored_events(f.engine.store().as_ref(), &run.run_id).await;
    assert_exact_log(&stored, "the store");
    assert_eq!(stored, streamed);

    // A fresh store (new connections) reads the same.
    let fresh = schema.store().await.unwrap();
    assert_eq!(stored_events(&fresh, &run.run_id).await, stored);
    let record = bgrun_core::Store::get_run(&fresh, &run.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, RunStatus::Completed);
    assert_eq!(record.last_event_index, Some(COUNT + 1));
}
