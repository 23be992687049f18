//! The client subcommands against a real server: run, status, watch, cancel, runs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::io::Read;
use std::process::{Command, Output, Stdio};

use common::{events, Server, BGRUN};
use serde_json::{json, Value};

/// `bgrun <args>` against `server`, to its exit.
async fn bgrun(server: &Server, args: &[&str]) -> Output {
    let mut command = client_command(server, args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn client_command(server: &Server, args: &[&str]) -> Command {
    let mut command = Command::new(BGRUN);
    command
        .args(args)
        .env("BGRUN_URL", &server.base)
        .env_remove("BGRUN_SECURITY_KEY")
        .stdin(Stdio::null());
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[tokio::test]
async fn run_streams_the_content() {
    let server = Server::start().await;
    let output = bgrun(&server, &["run", "agents/echo", "hello world"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "hello world\n");

    let output = bgrun(&server, &["run", "agents/fail", "x"]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("failed on purpose"),
        "{}",
        stderr(&output)
    );

    let output = bgrun(&server, &["run", "agents/nope", "x"]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("404"), "{}", stderr(&output));
}

#[tokio::test]
async fn watch_into_a_pipe_closed_early_ends_quietly() {
    let server = Server::start().await;
    let run_id = server
        .start_background(
            "/agents/ticker/runs",
            json!({"message": "go", "count": 100_000}),
        )
        .await;
    // Piped, the content streams to stdout.
    let mut child = client_command(&server, &["watch", "agents/ticker", &run_id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the first tick, then close the pipe, as `bgrun watch … | head -c 6` does.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(&first, b"tick 0");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
}

#[tokio::test]
async fn background_then_status_watch_runs_cancel() {
    let server = Server::start().await;
    let output = bgrun(
        &server,
        &[
            "run",
            "agents/ticker",
            "go",
            "--background",
            "--param",
            "count=3",
            "--json",
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let started: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(started["status"], "PENDING");
    let run_id = started["run_id"].as_str().unwrap();

    let output = bgrun(&server, &["watch", "agents/ticker", run_id]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "tick 0tick 1tick 2\n");

    let output = bgrun(&server, &["status", "agents/ticker", run_id]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("status: COMPLETED"), "{text}");
    assert!(text.contains("content: done 3"), "{text}");
    assert!(text.contains("last_event_index: 4"), "{text}");

    // The run alone: the client finds its component.
    let output = bgrun(&server, &["status", run_id]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), text);
    let output = bgrun(&server, &["watch", run_id]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "tick 0tick 1tick 2\n");
    let output = bgrun(&server, &["cancel", "no-such-run-yet"]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("bgrun cancel agents/echo no-such-run-yet"),
        "{}",
        stderr(&output)
    );

    let output = bgrun(
        &server,
        &[
            "runs",
            "agents/ticker",
            "--status",
            "COMPLETED",
            "--limit",
            "5",
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains(run_id), "{}", stdout(&output));

    let output = bgrun(&server, &["cancel", "agents/ticker", run_id]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("COMPLETED (cancelled: false)"),
        "{}",
        stdout(&output)
    );

    // Cancel before start: the run started later with that id never runs.
    let early = "0193e4a0-0000-7000-8000-0000000c11e1";
    let output = bgrun(&server, &["cancel", "agents/ticker", early]).await;
    assert!(
        stdout(&output).contains("CANCELLED (cancelled: true)"),
        "{}",
        stdout(&output)
    );
    let output = bgrun(&server, &["run", "agents/ticker", "go", "--run-id", early]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("cancelled"), "{}", stderr(&output));

    let output = bgrun(&server, &["status", "agents/ticker", "no-such-run"]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("404"), "{}", stderr(&output));
}

#[tokio::test]
async fn watch_reconnects_after_the_server_went_away() {
    let server = Server::start().await;
    let run_id = server
        .start_background(
            "/agents/ticker/runs",
            json!({"message": "go", "count": 100000, "delay_ms": 20}),
        )
        .await;
    let mut watch = client_command(&server, &["watch", "agents/ticker", &run_id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until watch has printed some content, so the server dies under an open stream.
    let mut out = watch.stdout.take().unwrap();
    let (seen, mut out) = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while !String::from_utf8_lossy(&seen).contains("tick 2") {
            let n = out.read(&mut buf).unwrap();
            assert!(n > 0, "watch ended early");
            seen.extend_from_slice(&buf[..n]);
        }
        (seen, out)
    })
    .await
    .unwrap();

    // The same port, the same database: the run is found interrupted, watch picks it up.
    let server = server.kill_and_restart_same_port().await;
    let (printed, exit, err) = tokio::task::spawn_blocking(move || {
        let mut bytes = seen;
        out.read_to_end(&mut bytes).unwrap();
        let status = watch.wait().unwrap();
        let mut err = String::new();
        watch
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (String::from_utf8(bytes).unwrap(), status, err)
    })
    .await
    .unwrap();
    assert!(!exit.success(), "the run ended ERROR");
    assert!(err.contains("interrupted"), "{err}");

    // Every content event exactly once, none twice across the reconnect.
    let path = format!("/agents/ticker/runs/{run_id}");
    let all = events(&server.resume(&path, None).await.read_to_end().await);
    let content: String = all
        .iter()
        .filter(|e| e["event"] == "RunContent")
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    assert_eq!(printed.trim_end_matches('\n'), content);
}
