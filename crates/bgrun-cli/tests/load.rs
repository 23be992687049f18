//! Many subscribers on one run, and a subscriber that reads nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{assert_gapless, events, Options, Server};
use serde_json::{json, Value};

const SUBSCRIBERS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_each_get_every_event() {
    // One slot: a blocker holds it, so the watched run stays PENDING until every subscriber is
    // in; then the blocker is cancelled and the run goes out to all of them at once.
    let server = Server::start_with(Options {
        env: vec![("BGRUN_MAX_CONCURRENCY".into(), "1".into())],
        ..Options::default()
    })
    .await;
    let blocker = server
        .start_background(
            "/agents/ticker/runs",
            json!({"message": "hold", "count": 1000, "delay_ms": 60000}),
        )
        .await;
    let run_id = server
        .start_background(
            "/agents/ticker/runs",
            json!({"message": "go", "count": 200}),
        )
        .await;
    let run_path = format!("/agents/ticker/runs/{run_id}");

    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::channel::<()>(SUBSCRIBERS);
    let mut subscribers = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let http = server.http.clone();
        let url = server.url(&format!("{run_path}/resume"));
        let joined = joined_tx.clone();
        subscribers.push(tokio::spawn(async move {
            let response = http.post(url).json(&json!({})).send().await.unwrap();
            let mut sse = common::Sse::new(response);
            let (metas, first) = {
                let first = sse.next().await.unwrap();
                joined.send(()).await.unwrap();
                let mut rest = vec![first];
                rest.extend(sse.read_to_end().await);
                let metas: Vec<String> = rest
                    .iter()
                    .filter_map(|f| match f {
                        common::Frame::Meta { event, .. } => Some(event.clone()),
                        common::Frame::Data { .. } => None,
                    })
                    .collect();
                (metas, events(&rest))
            };
            (metas, first)
        }));
    }
    drop(joined_tx);
    for _ in 0..SUBSCRIBERS {
        joined_rx.recv().await.unwrap();
    }
    // Everyone is subscribed to the PENDING run; let it start.
    let cancel: Value = server
        .http
        .post(server.url(&format!("/agents/ticker/runs/{blocker}/cancel")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancel["cancelled"], true);

    for subscriber in subscribers {
        let (metas, events) = subscriber.await.unwrap();
        assert_eq!(metas, ["subscribed"], "the run was PENDING when they came");
        assert_gapless(&events, 0, 201);
        assert_eq!(events.last().unwrap()["content"], "done 200");
    }
}

/// Ticks of the run a stalled reader follows: about 180 MB of events as JSON, which a server
/// holding them for the reader could not fit under the bound below.
const STALLED_TICKS: u64 = 1_200_000;
/// What the server's RSS must stay under while the reader reads nothing. (Measured: ~125 MiB
/// for this run with no reader at all, ~150 MiB with the stalled one.)
const RSS_BOUND_KIB: u64 = 256 * 1024;

#[tokio::test]
async fn a_reader_that_reads_nothing_does_not_grow_the_server() {
    let server = Server::start().await;
    let run_id = server
        .start_background(
            "/agents/ticker/runs",
            json!({"message": "go", "count": STALLED_TICKS}),
        )
        .await;
    let run_path = format!("/agents/ticker/runs/{run_id}");
    // Subscribed, then not read at all until the run completes.
    let stalled = server.resume(&run_path, None).await;

    let mut peak = server.rss_kib();
    loop {
        let run = server.get_json(&run_path).await;
        peak = peak.max(server.rss_kib());
        if run["status"] == "COMPLETED" {
            break;
        }
        assert_eq!(run["status"], "RUNNING", "{run}");
        // The poll's pace only; nothing waits on it.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak = peak.max(server.rss_kib());
    eprintln!("the server's peak RSS with a stalled reader: {peak} KiB");
    assert!(
        peak < RSS_BOUND_KIB,
        "the server grew to {peak} KiB with a stalled reader"
    );

    // The stalled reader still gets every event, from the store where memory let them go.
    let mut stalled = stalled;
    let mut expected = 0u64;
    while let Some(event) = stalled.next_event_skip_meta().await {
        assert_eq!(event["event_index"], expected);
        expected += 1;
    }
    assert_eq!(expected, STALLED_TICKS + 2);
}
