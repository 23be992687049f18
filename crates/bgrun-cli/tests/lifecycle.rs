//! Starting and stopping `bgrun serve`: settings, SIGTERM, a locked database.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

use common::{Options, Server, BGRUN};
use serde_json::json;

/// `bgrun serve` with these environment variables, to its exit (a bad setting exits at once).
fn serve_with(env: &[(&str, &str)], args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(BGRUN);
    command
        .arg("serve")
        .args(args)
        .current_dir(dir.path())
        .env_remove("BGRUN_SECURITY_KEY")
        .env_remove("BGRUN_MAX_CONCURRENCY")
        .env_remove("BGRUN_BUFFER_TTL_SECS")
        .env_remove("BGRUN_DATABASE_URL")
        .env("BGRUN_BIND", format!("127.0.0.1:{}", common::free_port()))
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn assert_refused(output: &Output, needle: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{what}: exited {}", output.status);
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: stderr does not say {needle:?}:\n{stderr}"
    );
}

/// Environment, what stderr must say, what the case is.
type Case = (
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
);

#[test]
fn a_bad_setting_is_a_clear_error_and_a_failed_exit() {
    let cases: &[Case] = &[
        (
            &[("BGRUN_MAX_CONCURRENCY", "0")],
            "max-concurrency",
            "max concurrency 0",
        ),
        (
            &[("BGRUN_MAX_CONCURRENCY", "many")],
            "max-concurrency",
            "max concurrency not a number",
        ),
        (
            &[("BGRUN_BIND", "nonsense")],
            "HOST:PORT",
            "an unparsable bind",
        ),
        (
            &[("BGRUN_BIND", "127.0.0.1:99999")],
            "HOST:PORT",
            "a port out of range",
        ),
        (
            &[("BGRUN_DATABASE_URL", "mysql://root@db/x")],
            "scheme",
            "an unknown URL scheme",
        ),
        (
            &[("BGRUN_DATABASE_URL", "sqlite://")],
            "path",
            "sqlite without a path",
        ),
        (
            &[("BGRUN_BUFFER_TTL_SECS", "-1")],
            "buffer-ttl-secs",
            "a negative TTL",
        ),
        (&[("BGRUN_SECURITY_KEY", "")], "empty", "an empty key"),
    ];
    for (env, needle, what) in cases {
        assert_refused(&serve_with(env, &[]), needle, what);
    }
    // A directory that does not exist for the database.
    let output = serve_with(
        &[("BGRUN_DATABASE_URL", "sqlite:///no/such/dir/bgrun.db")],
        &[],
    );
    assert_refused(
        &output,
        "/no/such/dir/bgrun.db",
        "a database in no directory",
    );
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = taken.local_addr().unwrap().to_string();
    let output = serve_with(&[], &["--bind", &bind]);
    assert_refused(&output, &bind, "a port in use");
}

#[tokio::test]
async fn the_flag_wins_over_the_environment() {
    // The environment's bind is garbage, the flag's is good: the server starts.
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut child = Command::new(BGRUN)
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("BGRUN_BIND", "garbage")
        .env(
            "BGRUN_DATABASE_URL",
            format!("sqlite://{}/b.db", dir.path().display()),
        )
        .env_remove("BGRUN_SECURITY_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let healthy = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Err(status);
        }
        if let Ok(response) = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
        {
            break Ok(response.status());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(healthy.unwrap(), 200);
}

#[tokio::test]
async fn a_database_another_server_holds_is_refused() {
    let server = Server::start().await;
    let url = format!("sqlite://{}", server.db.display());
    let output = serve_with(&[("BGRUN_DATABASE_URL", &url)], &[]);
    assert_refused(&output, "lock", "a SQLite file held by another process");
    server.get_json("/health").await; // the first one is unharmed
}

#[tokio::test]
async fn sigterm_stops_the_server_with_status_zero() {
    let mut server = Server::start().await;
    server.signal("TERM");
    let status = server.wait_exit().await;
    assert!(status.success(), "{status}\n{}", server.log());
    assert!(server.log().contains("listening on"), "{}", server.log());
}

#[tokio::test]
async fn sigterm_with_a_run_and_a_stream_open_still_exits_zero() {
    let server = Server::start().await;
    let response = server
        .start_run(
            "/agents/ticker/runs",
            json!({"message": "go", "stream": true, "background": true, "count": 100000, "delay_ms": 50}),
        )
        .await;
    let mut sse = common::Sse::new(response);
    let first = sse.next_event().await.unwrap();
    let run_path = format!("/agents/ticker/runs/{}", first["run_id"].as_str().unwrap());

    let mut server = server;
    server.signal("TERM");
    let status = server.wait_exit().await;
    assert!(status.success(), "{status}\n{}", server.log());
    drop(sse);

    // The run did not finish in the grace period: it ended interrupted.
    let server = server.start_again().await;
    let run = server.get_json(&run_path).await;
    assert_eq!(run["status"], "ERROR", "{run}");
    assert_eq!(run["error"], "interrupted");
}

#[tokio::test]
async fn sigterm_while_idle_keeps_finished_runs() {
    let server = Server::start_with(Options::default()).await;
    let response = server
        .start_run(
            "/agents/echo/runs",
            json!({"message": "kept across", "stream": false}),
        )
        .await;
    let run: serde_json::Value = response.json().await.unwrap();
    let server = server.stop_and_restart().await;
    let path = format!("/agents/echo/runs/{}", run["run_id"].as_str().unwrap());
    let again = server.get_json(&path).await;
    assert_eq!(again, run);
}
