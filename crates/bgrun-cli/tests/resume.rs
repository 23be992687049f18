//! Resume end to end: after a disconnect, after a restart, after a SIGKILL, and deep into a
//! long run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use common::{assert_gapless, events, Frame, Server};
use serde_json::{json, Value};

/// Checks the meta frames a resume after `k` opens with, for a run of `total` events when it
/// is terminal; returns whether the answer was a replay.
fn check_metas(metas: &[(String, Value)], run_id: &str, k: i64) -> bool {
    let names: Vec<&str> = metas.iter().map(|(name, _)| name.as_str()).collect();
    for (_, data) in metas {
        assert_eq!(data["run_id"], run_id);
    }
    match names.as_slice() {
        ["replay"] => {
            let replay = &metas[0].1;
            assert_eq!(replay["status"], "COMPLETED");
            assert_eq!(replay["last_event_index_requested"], k);
            true
        }
        ["catch_up", "subscribed"] => {
            let (catch_up, subscribed) = (&metas[0].1, &metas[1].1);
            let count = catch_up["current_event_count"].as_i64().unwrap();
            assert_eq!(catch_up["missed_events"].as_i64().unwrap(), count - (k + 1));
            assert!(subscribed["current_event_count"].as_i64().unwrap() >= count);
            false
        }
        ["subscribed"] => false,
        other => panic!("unexpected meta frames {other:?}"),
    }
}

#[tokio::test]
async fn a_client_that_disconnects_resumes_with_exactly_the_rest() {
    let server = Server::start().await;
    let response = server
        .start_run(
            "/agents/ticker/runs",
            json!({"message": "go", "stream": true, "background": true, "count": 200, "delay_ms": 2}),
        )
        .await;
    let mut sse = common::Sse::new(response);
    let mut seen = Vec::new();
    for _ in 0..7 {
        seen.push(sse.next_event().await.unwrap());
    }
    assert_gapless(&seen, 0, 6);
    let run_id = seen[0]["run_id"].as_str().unwrap().to_owned();
    drop(sse); // the client goes away; in background mode the run goes on

    let run_path = format!("/agents/ticker/runs/{run_id}");
    let mut resumed = server.resume(&run_path, Some(6)).await;
    let (metas, first) = resumed.metas().await;
    let replay = check_metas(&metas, &run_id, 6);
    let mut rest = vec![first.unwrap()];
    rest.extend(events(&resumed.read_to_end().await));
    assert_gapless(&rest, 7, 201);
    if replay {
        assert_eq!(metas[0].1["total_events"], 195);
    }
    for event in &rest[..rest.len() - 1] {
        let i = event["event_index"].as_u64().unwrap();
        assert_eq!(event["event"], "RunContent");
        assert_eq!(event["content"], format!("tick {}", i - 1));
    }
    assert_eq!(rest.last().unwrap()["event"], "RunCompleted");

    let run = server.get_json(&run_path).await;
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["content"], "done 200");
    assert_eq!(run["last_event_index"], 201);
}

#[tokio::test]
async fn resume_after_a_restart_replays_from_the_store() {
    let server = Server::start().await;
    let run_id = server
        .start_background(
            "/agents/echo/runs",
            json!({"message": "one two three four"}),
        )
        .await;
    let run_path = format!("/agents/echo/runs/{run_id}");
    server.wait_terminal(&run_path).await;
    let before = events(&server.resume(&run_path, None).await.read_to_end().await);
    assert_gapless(&before, 0, 5);

    let server = server.stop_and_restart().await;
    let mut replay = server.resume(&run_path, None).await;
    let frames = replay.read_to_end().await;
    let Frame::Meta { event, data } = &frames[0] else {
        panic!("a replay opens with its meta frame: {frames:?}")
    };
    assert_eq!(event, "replay");
    assert_eq!(data["status"], "COMPLETED");
    assert_eq!(data["total_events"], 6);
    assert_eq!(data["last_event_index_requested"], -1);
    assert_eq!(
        events(&frames),
        before,
        "the identical JSON after a restart"
    );

    // From the middle, by the field and by the `Last-Event-ID` header.
    let tail = events(&server.resume(&run_path, Some(2)).await.read_to_end().await);
    assert_eq!(tail, before[3..]);
    let response = server
        .http
        .post(server.url(&format!("{run_path}/resume")))
        .header("Last-Event-ID", "3")
        .send()
        .await
        .unwrap();
    let tail = events(&common::Sse::new(response).read_to_end().await);
    assert_eq!(tail, before[4..]);

    let run = server.get_json(&run_path).await;
    assert_eq!(run["content"], "one two three four");
    assert_eq!(run["status"], "COMPLETED");
}

#[tokio::test]
async fn a_run_killed_mid_way_ends_interrupted_and_keeps_what_clients_saw() {
    let server = Server::start().await;
    let response = server
        .start_run(
            "/agents/ticker/runs",
            json!({"message": "go", "stream": true, "background": true, "count": 100000, "delay_ms": 20}),
        )
        .await;
    let mut sse = common::Sse::new(response);
    let mut seen = Vec::new();
    for _ in 0..5 {
        match sse.next().await.unwrap() {
            Frame::Data { data, raw, .. } => seen.push((data, raw)),
            Frame::Meta { event, .. } => panic!("meta frame {event} in a start stream"),
        }
    }
    let run_id = seen[0].0["run_id"].as_str().unwrap().to_owned();
    let run_path = format!("/agents/ticker/runs/{run_id}");

    let server = server.kill_and_restart().await;
    drop(sse);
    let run = server.get_json(&run_path).await;
    assert_eq!(run["status"], "ERROR", "{run}");
    assert_eq!(run["error"], "interrupted");

    let all = events(&server.resume(&run_path, None).await.read_to_end().await);
    let last = all.last().unwrap();
    assert_gapless(&all, 0, last["event_index"].as_u64().unwrap());
    for (i, (data, raw)) in seen.iter().enumerate() {
        assert_eq!(&all[i], data, "event {i} as a client saw it");
        let stored: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(all[i], stored);
    }
    assert_eq!(last["event"], "RunError");
    assert_eq!(last["error"], "interrupted");
    assert_eq!(run["last_event_index"], last["event_index"]);
    for event in &all[1..all.len() - 1] {
        assert_eq!(event["event"], "RunContent");
    }
}

#[tokio::test]
async fn a_long_run_resumed_from_99_gives_every_later_event() {
    let server = Server::start().await;
    let run_id = server
        .start_background(
            "/agents/ticker/runs",
            json!({"message": "go", "count": 20000}),
        )
        .await;
    let run_path = format!("/agents/ticker/runs/{run_id}");
    // Events: RunStarted (0), RunContent "tick 0".."tick 19999" (1..=20000), RunCompleted (20001).
    let check = |rest: &[Value]| {
        assert_gapless(rest, 100, 20001);
        assert_eq!(rest.len(), 19_902);
        for event in &rest[..rest.len() - 1] {
            let i = event["event_index"].as_u64().unwrap();
            assert_eq!(event["content"], format!("tick {}", i - 1));
        }
        let last = rest.last().unwrap();
        assert_eq!(last["event"], "RunCompleted");
        assert_eq!(last["content"], "done 20000");
    };
    // While it runs (or just after), then once more when it surely finished.
    let live = events(&server.resume(&run_path, Some(99)).await.read_to_end().await);
    check(&live);
    let mut replay = server.resume(&run_path, Some(99)).await;
    let (metas, first) = replay.metas().await;
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0].0, "replay");
    assert_eq!(metas[0].1["total_events"], 19_902);
    let mut again = vec![first.unwrap()];
    again.extend(events(&replay.read_to_end().await));
    assert_eq!(again, live);

    // At or past the last event: a replay frame and nothing else.
    let frames = server
        .resume(&run_path, Some(20001))
        .await
        .read_to_end()
        .await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].data()["total_events"], 0);
}
