//! Several real `bgrun serve` processes ("replicas") on one PostgreSQL schema behave as one
//! server: resume and cancel on any of them, a killed one's runs ended or run by a live one, and
//! a frozen one fenced off the runs it lost.
//!
//! Each test has a schema of its own (`TestSchema`, dropped at the end, also on failure), given
//! to the servers through `BGRUN_PG_SCHEMA`; the database comes from `BGRUN_TEST_PG_URL`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::future::Future;
use std::time::Duration;

use bgrun_store_postgres::testing::TestSchema;
use common::*;
use serde_json::{json, Value};

/// Leases short enough that a dead or frozen replica's runs are taken over in a few seconds.
const SHORT_LEASES: [&str; 4] = ["--lease-ttl-secs", "2", "--lease-renew-secs", "1"];

/// A safety net against a hang, not a timing assertion.
const TEST_GUARD: Duration = Duration::from_secs(180);

/// A replica on the test's schema, with `args` after `serve`.
async fn replica(schema: &TestSchema, args: &[&str]) -> Server {
    Server::start_with(
        Options::database(schema.url(), args).with_env("BGRUN_PG_SCHEMA", schema.name()),
    )
    .await
}

async fn guarded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_GUARD, test)
        .await
        .expect("the test hung");
}

fn run_path(run_id: &str) -> String {
    format!("/agents/ticker/runs/{run_id}")
}

fn index(event: &Value) -> u64 {
    event["event_index"].as_u64().unwrap()
}

/// The raw `data:` JSON of each data frame, and the frames' meta event names.
fn split(frames: &[Frame]) -> (Vec<String>, Vec<String>) {
    let mut raws = Vec::new();
    let mut metas = Vec::new();
    for frame in frames {
        match frame {
            Frame::Data { raw, .. } => raws.push(raw.clone()),
            Frame::Meta { event, .. } => metas.push(event.clone()),
        }
    }
    (raws, metas)
}

/// Every event of a run, replayed from the start by `server`.
async fn replay(server: &Server, path: &str) -> Vec<Frame> {
    let mut sse = server.resume(path, None).await;
    sse.read_to_end().await
}

/// Reads `count` data frames of a start's SSE answer (no meta frames there).
async fn read_frames(sse: &mut Sse, count: usize) -> Vec<Frame> {
    let mut frames = Vec::new();
    while frames.len() < count {
        let frame = sse.next().await.expect("the stream ended early");
        assert!(frame.is_data(), "a start's stream has no meta frames");
        frames.push(frame);
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_replica_gives_exactly_the_rest_live() {
    let schema = TestSchema::new();
    let a = replica(&schema, &[]).await;
    let b = replica(&schema, &[]).await;
    guarded(async {
        let response = a
            .start_run(
                "/agents/ticker/runs",
                json!({"message": "go", "count": 300, "delay_ms": 5,
                       "stream": true, "background": true}),
            )
            .await;
        let mut on_a = Sse::new(response);
        let seen = read_frames(&mut on_a, 20).await;
        drop(on_a);
        let run_id = seen[0].data()["run_id"].as_str().unwrap().to_owned();
        let path = run_path(&run_id);
        let last = index(seen.last().unwrap().data());
        assert_gapless(&events(&seen), 0, last);

        // The client reconnects to B: exactly the rest, identical JSON, live.
        let rest = b.resume(&path, Some(last as i64)).await.read_to_end().await;
        let (rest_raw, metas) = split(&rest);
        assert!(
            metas == ["catch_up", "subscribed"] || metas == ["subscribed"] || metas == ["replay"],
            "{metas:?}"
        );
        let rest = events(&rest);
        assert_gapless(&rest, last + 1, 301);
        assert_eq!(rest.last().unwrap()["event"], "RunCompleted");
        assert_eq!(rest.last().unwrap()["content"], "done 300");

        // What A streamed plus what B streamed is the run's log, byte for byte, on both.
        let (mut whole, _) = split(&seen);
        whole.extend(rest_raw);
        for server in [&a, &b] {
            let (stored, metas) = split(&replay(server, &path).await);
            assert_eq!(metas, ["replay"]);
            assert_eq!(whole, stored);
        }
        let run = b.get_json(&path).await;
        assert_eq!(run["status"], "COMPLETED");
        assert_eq!(run["last_event_index"], 301);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_another_replica_stops_the_run() {
    let schema = TestSchema::new();
    let a = replica(&schema, &[]).await;
    let b = replica(&schema, &[]).await;
    guarded(async {
        let run_id = a
            .start_background(
                "/agents/ticker/runs",
                json!({"message": "go", "count": 100_000, "delay_ms": 5}),
            )
            .await;
        let path = run_path(&run_id);
        // B sees it executing (on A) with events stored.
        b.poll_json(&path, |run| {
            run["status"] == "RUNNING" && run["last_event_index"].as_u64() >= Some(3)
        })
        .await;

        let response = b
            .http
            .post(b.url(&format!("{path}/cancel")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["run_id"], run_id.as_str());
        assert_eq!(answer["cancelled"], true, "{answer}");
        assert!(
            answer["status"] == "CANCELLED" || answer["status"] == "RUNNING",
            "{answer}"
        );

        // B follows the run A executes to its end.
        let run = b.wait_terminal(&path).await;
        assert_eq!(run["status"], "CANCELLED", "{run}");
        assert_eq!(run["cancellation_stage"], "EXECUTING");
        for server in [&a, &b] {
            let all = events(&replay(server, &path).await);
            let last = index(all.last().unwrap());
            assert_gapless(&all, 0, last);
            assert_eq!(run["last_event_index"], last);
            let counts = tally(&all);
            assert_eq!(counts["RunStarted"], 1);
            assert_eq!(counts["RunCancelled"], 1);
            assert_eq!(all.last().unwrap()["event"], "RunCancelled");
            assert_eq!(
                counts.len(),
                3,
                "only started, content, cancelled: {counts:?}"
            );
        }
        assert_eq!(a.get_json(&path).await, run);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_runs_are_ended_or_run_by_a_live_one() {
    let schema = TestSchema::new();
    let mut a_args = SHORT_LEASES.to_vec();
    a_args.extend(["--max-concurrency", "2"]);
    let mut a = replica(&schema, &a_args).await;
    let b = replica(&schema, &SHORT_LEASES).await;
    guarded(async {
        // Two runs executing on A (its two slots); a client follows the first.
        let response = a
            .start_run(
                "/agents/ticker/runs",
                json!({"message": "go", "count": 100_000, "delay_ms": 5,
                       "stream": true, "background": true}),
            )
            .await;
        let mut on_a = Sse::new(response);
        let seen = read_frames(&mut on_a, 10).await;
        let followed = seen[0].data()["run_id"].as_str().unwrap().to_owned();
        let other = a
            .start_background(
                "/agents/ticker/runs",
                json!({"message": "go", "count": 100_000, "delay_ms": 5}),
            )
            .await;
        a.poll_json(&run_path(&other), |run| run["status"] == "RUNNING")
            .await;
        // Three more wait, PENDING, for a slot on A.
        let mut queued = Vec::new();
        for words in ["one", "two three", "four five six"] {
            queued.push(
                a.start_background("/agents/echo/runs", json!({ "message": words }))
                    .await,
            );
        }
        for run_id in &queued {
            let run = a.get_json(&format!("/agents/echo/runs/{run_id}")).await;
            assert_eq!(run["status"], "PENDING", "{run}");
        }
        // The client saw a few more events, then A dies.
        let more = read_frames(&mut on_a, 5).await;
        let last_seen = index(more.last().unwrap().data());
        drop(on_a);
        a.signal("KILL");
        a.wait_exit().await;

        // The client reconnects to B from the last event it saw: no duplicate, no gap, then
        // B's RunError once A's lease lapsed.
        let rest = b
            .resume(&run_path(&followed), Some(last_seen as i64))
            .await
            .read_to_end()
            .await;
        let rest = events(&rest);
        let terminal = rest.last().expect("the rest ends with the run's end");
        assert_gapless(&rest, last_seen + 1, index(terminal));
        assert_eq!(terminal["event"], "RunError", "{terminal}");
        assert_eq!(terminal["error"], "interrupted");
        assert_eq!(tally(&rest).get("RunError"), Some(&1));

        for run_id in [&followed, &other] {
            let path = run_path(run_id);
            let run = b.wait_terminal(&path).await;
            assert_eq!(run["status"], "ERROR", "{run}");
            assert_eq!(run["error"], "interrupted");
            let all = events(&replay(&b, &path).await);
            let last = index(all.last().unwrap());
            assert_gapless(&all, 0, last);
            assert_eq!(run["last_event_index"], last);
            // Once terminal, the run's content is its terminal event's.
            assert_eq!(run["content"], all.last().unwrap()["content"], "{run}");
            assert_eq!(all.last().unwrap()["event"], "RunError");
            assert_eq!(tally(&all).get("RunError"), Some(&1));
        }

        // The queued runs complete on B, each executed once.
        for (run_id, words) in queued.iter().zip(["one", "two three", "four five six"]) {
            let path = format!("/agents/echo/runs/{run_id}");
            let run = b.wait_terminal(&path).await;
            assert_eq!(run["status"], "COMPLETED", "{run}");
            assert_eq!(run["content"], words);
            let all = events(&replay(&b, &path).await);
            let words = words.split(' ').count();
            assert_gapless(&all, 0, words as u64 + 1);
            let counts = tally(&all);
            assert_eq!(counts["RunStarted"], 1);
            assert_eq!(counts["RunContent"], words);
            assert_eq!(counts["RunCompleted"], 1);
        }
        assert_eq!(b.metric("bgrun_runs_total{status=\"COMPLETED\"}").await, 3);
        assert_eq!(b.metric("bgrun_runs_total{status=\"ERROR\"}").await, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_whose_run_was_taken_over_writes_nothing_more() {
    let schema = TestSchema::new();
    let a = replica(&schema, &SHORT_LEASES).await;
    let b = replica(&schema, &SHORT_LEASES).await;
    guarded(async {
        // Three seconds of work on A, frozen near its start.
        let response = a
            .start_run(
                "/agents/ticker/runs",
                json!({"message": "go", "count": 300, "delay_ms": 10,
                       "stream": true, "background": true}),
            )
            .await;
        let mut on_a = Sse::new(response);
        let seen = read_frames(&mut on_a, 5).await;
        let run_id = seen[0].data()["run_id"].as_str().unwrap().to_owned();
        let path = run_path(&run_id);
        a.signal("STOP");

        // Past A's lease, B ends the run.
        let ended = b.poll_json(&path, |run| run["status"] == "ERROR").await;
        assert_eq!(ended["error"], "interrupted");
        let (before, _) = split(&replay(&b, &path).await);
        let last = ended["last_event_index"].as_u64().unwrap();
        assert_eq!(before.len() as u64, last + 1);

        // A wakes up and goes on with the run until its component ends: every write refused.
        a.signal("CONT");
        let started = std::time::Instant::now();
        while a.metric("bgrun_runs_active").await > 0 {
            assert!(started.elapsed() < HANG_GUARD, "A never let the run go");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(on_a);
        for server in [&a, &b] {
            let run = server.get_json(&path).await;
            assert_eq!(run["status"], "ERROR", "{run}");
            assert_eq!(run["error"], "interrupted");
            assert_eq!(run["last_event_index"], last);
            let frames = replay(server, &path).await;
            let (after, _) = split(&frames);
            assert_eq!(after, before, "A wrote nothing more");
            let all = events(&frames);
            assert_eq!(all.last().unwrap()["event"], "RunError");
            assert_eq!(tally(&all).get("RunError"), Some(&1));
        }
        assert_eq!(a.metric("bgrun_runs_total{status=\"COMPLETED\"}").await, 0);
        assert_eq!(a.metric("bgrun_runs_total{status=\"ERROR\"}").await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_ends_its_runs_and_leaves_its_queue_to_a_live_one() {
    let schema = TestSchema::new();
    let mut a_args = SHORT_LEASES.to_vec();
    a_args.extend(["--max-concurrency", "1", "--shutdown-grace-secs", "0"]);
    let mut a = replica(&schema, &a_args).await;
    let b = replica(&schema, &SHORT_LEASES).await;
    guarded(async {
        let running = a
            .start_background(
                "/agents/ticker/runs",
                json!({"message": "go", "count": 100_000, "delay_ms": 5}),
            )
            .await;
        let path = run_path(&running);
        a.poll_json(&path, |run| run["status"] == "RUNNING").await;
        let queued = a
            .start_background("/agents/echo/runs", json!({"message": "still wanted"}))
            .await;
        let queued_path = format!("/agents/echo/runs/{queued}");
        assert_eq!(a.get_json(&queued_path).await["status"], "PENDING");

        // No grace: A interrupts its run, stores its end and exits.
        a.signal("TERM");
        let status = a.wait_exit().await;
        assert!(status.success(), "{status}\n{}", a.log());
        let run = b.get_json(&path).await;
        assert_eq!(
            run["status"], "ERROR",
            "A stored the end before exiting: {run}"
        );
        assert_eq!(run["error"], "interrupted");
        let all = events(&replay(&b, &path).await);
        assert_gapless(&all, 0, run["last_event_index"].as_u64().unwrap());
        let terminal = all.last().unwrap();
        assert_eq!(terminal["event"], "RunError");
        assert_eq!(terminal["error"], "interrupted");
        assert_eq!(b.metric("bgrun_runs_total{status=\"ERROR\"}").await, 0);

        // The queued run is B's to run.
        let run = b.wait_terminal(&queued_path).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        assert_eq!(run["content"], "still wanted");
        assert_eq!(b.metric("bgrun_runs_total{status=\"COMPLETED\"}").await, 1);
    })
    .await;
}

#[test]
fn bad_lease_and_schema_settings_are_clear_errors_at_start() {
    for (args, expected) in [
        (
            &["--lease-ttl-secs", "2", "--lease-renew-secs", "2"][..],
            "must be less than",
        ),
        (&["--lease-ttl-secs", "0"], "--lease-ttl-secs"),
        (&["--shutdown-grace-secs", "soon"], "--shutdown-grace-secs"),
        (&["--pg-schema", "no-dashes"], "is not a schema name"),
    ] {
        let output = std::process::Command::new(BGRUN)
            .arg("serve")
            .args(args)
            .env("BGRUN_BIND", format!("127.0.0.1:{}", free_port()))
            .env("BGRUN_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env_remove("BGRUN_PG_SCHEMA")
            .env_remove("BGRUN_LEASE_TTL_SECS")
            .env_remove("BGRUN_LEASE_RENEW_SECS")
            .env_remove("BGRUN_SHUTDOWN_GRACE_SECS")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
