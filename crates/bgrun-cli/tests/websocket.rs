//! The WebSocket protocol on `/agents/ws`: connected, ping, start, reconnect, cancel, bad
//! frames, auth.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use common::{events, Options, Server};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(server: &Server, bearer: Option<&str>) -> Socket {
    let url = format!("ws://127.0.0.1:{}/agents/ws", server.port);
    let mut request = url.into_client_request().unwrap();
    if let Some(key) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
}

async fn send(socket: &mut Socket, frame: Value) {
    socket.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next text frame as JSON (pings and pongs of the transport are skipped).
async fn recv(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(common::HANG_GUARD, socket.next())
            .await
            .expect("no frame for a long while: the server hangs");
        match frame.unwrap().unwrap() {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Frames up to and including `run_id`'s terminal event.
async fn recv_run(socket: &mut Socket, terminal: &[&str]) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = recv(socket).await;
        assert!(
            !["error", "auth_error"].contains(&frame["event"].as_str().unwrap_or_default()),
            "the server refused: {frame}"
        );
        let done = frame["event"]
            .as_str()
            .is_some_and(|event| terminal.contains(&event));
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

const AGENT_END: &[&str] = &["RunCompleted", "RunError", "RunCancelled"];

#[tokio::test]
async fn connect_ping_start_reconnect() {
    let server = Server::start().await;
    let mut socket = connect(&server, None).await;
    assert_eq!(
        recv(&mut socket).await,
        json!({"event": "connected", "requires_auth": false})
    );
    send(&mut socket, json!({"action": "ping"})).await;
    assert_eq!(recv(&mut socket).await, json!({"event": "pong"}));

    send(
        &mut socket,
        json!({"action": "start-workflow", "agent_id": "echo", "message": "hello web socket",
               "session_id": "ws-session", "user_id": "ws-user"}),
    )
    .await;
    let run = recv_run(&mut socket, AGENT_END).await;
    let types: Vec<&str> = run.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "RunStarted",
            "RunContent",
            "RunContent",
            "RunContent",
            "RunCompleted"
        ]
    );
    let run_id = run[0]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(run[0]["session_id"], "ws-session");

    // Each frame is the JSON an SSE data line carries.
    let path = format!("/agents/echo/runs/{run_id}");
    let sse = events(&server.resume(&path, None).await.read_to_end().await);
    assert_eq!(sse, run);
    let record = server.get_json(&path).await;
    assert_eq!(record["user_id"], "ws-user");
    assert_eq!(record["content"], "hello web socket");

    // Reconnect after index 1: the meta frames of resume, then events 2..
    send(
        &mut socket,
        json!({"action": "reconnect", "run_id": run_id, "agent_id": "echo",
               "session_id": "ws-session", "last_event_index": 1}),
    )
    .await;
    let replay = recv(&mut socket).await;
    assert_eq!(replay["event"], "replay", "{replay}");
    assert_eq!(replay["total_events"], 3);
    assert_eq!(replay["last_event_index_requested"], 1);
    let rest = recv_run(&mut socket, AGENT_END).await;
    assert_eq!(rest, run[2..]);

    // The socket is still usable.
    send(&mut socket, json!({"action": "ping"})).await;
    assert_eq!(recv(&mut socket).await, json!({"event": "pong"}));
}

#[tokio::test]
async fn cancel_over_the_socket() {
    let server = Server::start().await;
    let mut socket = connect(&server, None).await;
    recv(&mut socket).await; // connected
    send(
        &mut socket,
        json!({"action": "start-workflow", "agent_id": "ticker", "message": "go",
               "count": 100000, "delay_ms": 20}),
    )
    .await;
    let started = recv(&mut socket).await;
    assert_eq!(started["event"], "RunStarted", "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_owned();
    send(&mut socket, json!({"action": "cancel", "run_id": run_id})).await;
    let mut answer = None;
    let mut cancelled = None;
    while answer.is_none() || cancelled.is_none() {
        let frame = recv(&mut socket).await;
        match frame["event"].as_str().unwrap() {
            "cancel" => answer = Some(frame),
            "RunCancelled" => cancelled = Some(frame),
            "RunContent" => {}
            other => panic!("unexpected {other}: {frame}"),
        }
    }
    let answer = answer.unwrap();
    assert_eq!(answer["run_id"], run_id.as_str());
    assert_eq!(answer["cancelled"], true);
    assert!(
        ["RUNNING", "CANCELLED"].contains(&answer["status"].as_str().unwrap()),
        "{answer}"
    );
    let run = server
        .get_json(&format!("/agents/ticker/runs/{run_id}"))
        .await;
    assert_eq!(run["status"], "CANCELLED");
    assert_eq!(run["cancellation_stage"], "EXECUTING");
}

#[tokio::test]
async fn a_ping_and_a_cancel_are_answered_while_a_fast_run_streams() {
    let server = Server::start().await;
    let mut socket = connect(&server, None).await;
    recv(&mut socket).await; // connected
                             // No delay: the server always has frames of this run to send.
    send(
        &mut socket,
        json!({"action": "start-agent", "agent_id": "ticker", "message": "go",
               "count": 10_000_000}),
    )
    .await;
    let started = recv(&mut socket).await;
    assert_eq!(started["event"], "RunStarted", "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_owned();
    send(&mut socket, json!({"action": "ping"})).await;
    send(&mut socket, json!({"action": "cancel", "run_id": run_id})).await;
    let (mut pong, mut answer, mut cancelled) = (false, None, false);
    while !pong || answer.is_none() || !cancelled {
        let frame = recv(&mut socket).await;
        match frame["event"].as_str().unwrap() {
            "pong" => pong = true,
            "cancel" => answer = Some(frame),
            "RunCancelled" => cancelled = true,
            "RunContent" => {}
            other => panic!("unexpected {other}: {frame}"),
        }
    }
    let answer = answer.unwrap();
    assert_eq!(answer["cancelled"], true, "{answer}");
    let run = server
        .get_json(&format!("/agents/ticker/runs/{run_id}"))
        .await;
    assert_eq!(
        run["status"], "CANCELLED",
        "not left to stream its 10,000,000 ticks"
    );
}

#[tokio::test]
async fn malformed_frames_get_an_error_and_the_socket_stays_open() {
    let server = Server::start().await;
    let mut socket = connect(&server, None).await;
    recv(&mut socket).await; // connected
    for bad in [
        "not json",
        "[1, 2]",
        "\"ping\"",
        "{}",
        "{\"action\": 5}",
        "{\"action\": \"dance\"}",
        "{\"action\": \"start-workflow\", \"agent_id\": 7, \"message\": \"hi\"}",
        "{\"action\": \"reconnect\", \"agent_id\": \"echo\"}",
        "{\"action\": \"cancel\"}",
    ] {
        socket.send(Message::text(bad)).await.unwrap();
        let answer = recv(&mut socket).await;
        assert_eq!(answer["event"], "error", "{bad}: {answer}");
        assert!(answer["error"].is_string(), "{bad}: {answer}");
    }
    send(&mut socket, json!({"action": "ping"})).await;
    assert_eq!(recv(&mut socket).await, json!({"event": "pong"}));
}

#[tokio::test]
async fn a_key_is_asked_for_over_the_socket() {
    let key = "ws-secret";
    let server = Server::start_with(Options {
        security_key: Some(key.into()),
        ..Options::default()
    })
    .await;

    // An upgrade with a valid bearer needs no more.
    let mut socket = connect(&server, Some(key)).await;
    assert_eq!(
        recv(&mut socket).await,
        json!({"event": "connected", "requires_auth": false})
    );
    drop(socket);

    let mut socket = connect(&server, None).await;
    assert_eq!(
        recv(&mut socket).await,
        json!({"event": "connected", "requires_auth": true})
    );
    send(&mut socket, json!({"action": "ping"})).await;
    assert_eq!(recv(&mut socket).await, json!({"event": "pong"}));
    send(
        &mut socket,
        json!({"action": "start-workflow", "agent_id": "echo", "message": "too early"}),
    )
    .await;
    assert_eq!(recv(&mut socket).await["event"], "auth_error");
    send(
        &mut socket,
        json!({"action": "authenticate", "token": "wrong"}),
    )
    .await;
    assert_eq!(recv(&mut socket).await["event"], "auth_error");
    send(&mut socket, json!({"action": "authenticate", "token": key})).await;
    assert_eq!(recv(&mut socket).await, json!({"event": "authenticated"}));
    send(
        &mut socket,
        json!({"action": "start-workflow", "agent_id": "echo", "message": "now fine"}),
    )
    .await;
    let run = recv_run(&mut socket, AGENT_END).await;
    assert_eq!(run.last().unwrap()["content"], "now fine");

    // The refused start created nothing.
    let page: Value = server
        .http
        .get(server.url("/agents/echo/runs"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");
}
