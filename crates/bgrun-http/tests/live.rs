//! The server on a real socket: WebSocket sessions, a client disconnect cancelling its
//! foreground run, and graceful shutdown ending open streams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bgrun_core::{CancellationStage, RunId, RunStatus};
use bgrun_http::{serve, HttpConfig};
use common::{fixture_with, Fixture};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(30);

struct Server {
    f: Fixture,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn server(config: HttpConfig) -> Server {
    let f = fixture_with(HttpConfig::default()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, f.engine.clone(), config, async move {
        let _ = stopped.await;
    }));
    Server {
        f,
        addr,
        stop: Some(stop),
        task,
    }
}

/// Sends a raw HTTP/1.1 form POST and reads until `needle` shows in the response.
async fn post_until(addr: SocketAddr, path: &str, form: &str, needle: &str) -> (TcpStream, String) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while !seen.contains(needle) {
        let read = tokio::time::timeout(LIMIT, socket.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(read > 0, "closed before {needle:?}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    (socket, seen)
}

#[tokio::test]
async fn a_client_disconnect_cancels_a_foreground_stream_only() {
    let s = server(HttpConfig::default()).await;
    let (socket, seen) = post_until(
        s.addr,
        "/agents/gated/runs",
        "message=x&run_id=fg",
        "hello ",
    )
    .await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("id: 0\nevent: RunStarted\ndata: {"), "{seen}");
    drop(socket);
    let run = tokio::time::timeout(LIMIT, s.f.engine.wait(&RunId::parse("fg").unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.cancellation_stage, Some(CancellationStage::Executing));
    assert_eq!(run.content.as_deref(), Some("hello "));

    let (socket, _) = post_until(
        s.addr,
        "/agents/gated/runs",
        "message=x&run_id=bg&background=true",
        "hello ",
    )
    .await;
    drop(socket);
    s.f.gate.add_permits(1);
    let run = s.f.wait(&RunId::parse("bg").unwrap()).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.content.as_deref(), Some("hello world"));
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_leaves_their_runs_going() {
    let mut s = server(HttpConfig::default()).await;
    let (mut socket, _) = post_until(
        s.addr,
        "/agents/gated/runs",
        "message=x&run_id=live&background=false",
        "hello ",
    )
    .await;
    s.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut s.task)
        .await
        .expect("serve did not return")
        .unwrap()
        .unwrap();
    // The stream ended: the connection reaches its end.
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, socket.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    // A server stopping is not a client leaving: the run goes on.
    let run_id = RunId::parse("live").unwrap();
    assert_eq!(s.f.status(&run_id).await, RunStatus::Running);
    s.f.gate.add_permits(1);
    assert_eq!(s.f.wait(&run_id).await.status, RunStatus::Completed);
}

/// Sends one raw HTTP/1.1 request on a new connection (closed after the answer).
async fn send_raw(addr: SocketAddr, head: &str, body: &str) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{head} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    socket
}

async fn read_answer(mut socket: TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, socket.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn shutdown_answers_a_waiting_long_poll_at_once() {
    // A long-poll that would wait a minute, and a shutdown that waits 30 s for open requests:
    // the long-poll must be answered (as a wait that timed out), not cut off.
    let mut s = server(HttpConfig {
        stream_long_poll: Duration::from_secs(60),
        shutdown_timeout: Duration::from_secs(30),
        ..HttpConfig::default()
    })
    .await;
    let created = read_answer(send_raw(s.addr, "PUT /v1/stream/feed", "first").await).await;
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let poll = send_raw(
        s.addr,
        &format!(
            "GET /v1/stream/feed?offset={}&live=long-poll",
            common::offset(1)
        ),
        "",
    )
    .await;
    tokio::time::timeout(LIMIT, async {
        while s.f.engine.streams().waiting_readers() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the long-poll never waited");
    s.stop.take().unwrap().send(()).unwrap();
    let answer = read_answer(poll).await;
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    assert!(answer.contains("stream-up-to-date: true"), "{answer}");
    assert!(
        answer.contains(&format!("stream-next-offset: {}", common::offset(1))),
        "{answer}"
    );
    // Nothing else held the shutdown up.
    tokio::time::timeout(Duration::from_secs(10), &mut s.task)
        .await
        .expect("serve did not return")
        .unwrap()
        .unwrap();
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr, path: &str, auth: Option<&str>) -> Socket {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(auth) = auth {
        request
            .headers_mut()
            .insert("authorization", auth.parse().unwrap());
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
}

async fn send(socket: &mut Socket, frame: &str) {
    socket.send(Message::text(frame)).await.unwrap();
}

async fn recv(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(LIMIT, socket.next())
            .await
            .expect("no frame")
            .expect("socket closed")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

/// Receives frames until (and with) the one whose `event` is `last`.
async fn recv_until(socket: &mut Socket, last: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = recv(socket).await;
        let done = frame["event"] == last;
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

#[tokio::test]
async fn the_websocket_protocol() {
    let s = server(HttpConfig::default()).await;
    let mut ws = connect(s.addr, "/agents/ws", None).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"event": "connected", "requires_auth": false})
    );
    send(&mut ws, r#"{"action":"ping"}"#).await;
    assert_eq!(recv(&mut ws).await, json!({"event": "pong"}));
    for bad in [
        "not json",
        "[1]",
        r#"{"action": 5}"#,
        r#"{"no_action": 1}"#,
        r#"{"action": "fly"}"#,
        r#"{"action": "start-agent", "message": "x"}"#,
        r#"{"action": "start-agent", "agent_id": "nope", "message": "x"}"#,
        r#"{"action": "start-agent", "agent_id": "echo"}"#,
        r#"{"action": "start-agent", "agent_id": "echo", "message": "x", "delay_ms": "slow"}"#,
        r#"{"action": "cancel"}"#,
        r#"{"action": "reconnect", "run_id": 3}"#,
        r#"{"action": "reconnect", "run_id": "r", "last_event_index": -1}"#,
    ] {
        send(&mut ws, bad).await;
        let frame = recv(&mut ws).await;
        assert_eq!(frame["event"], "error", "{bad} -> {frame}");
        assert!(frame["error"].is_string());
    }
    // Still open.
    send(&mut ws, r#"{"action":"ping"}"#).await;
    assert_eq!(recv(&mut ws).await, json!({"event": "pong"}));

    send(
        &mut ws,
        r#"{"action":"start-agent","agent_id":"echo","message":"a b","session_id":"s","user_id":"u"}"#,
    )
    .await;
    let events = recv_until(&mut ws, "RunCompleted").await;
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["RunStarted", "RunContent", "RunContent", "RunCompleted"]
    );
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event["event_index"], index);
        assert_eq!(event["session_id"], "s");
    }
    let run_id = events[0]["run_id"].as_str().unwrap().to_owned();
    // The frames are the stored events, byte for byte as SSE sends them.
    let stored: Vec<Value> =
        s.f.engine
            .events(&RunId::parse(run_id.as_str()).unwrap(), None)
            .map(|event| serde_json::from_str(event.unwrap().json()).unwrap())
            .collect()
            .await;
    assert_eq!(events, stored);

    send(
        &mut ws,
        &json!({"action": "reconnect", "run_id": run_id, "agent_id": "echo", "last_event_index": 1}).to_string(),
    )
    .await;
    let frames = recv_until(&mut ws, "RunCompleted").await;
    assert_eq!(
        frames[0],
        json!({"event": "replay", "run_id": run_id, "status": "COMPLETED", "total_events": 2, "last_event_index_requested": 1})
    );
    assert_eq!(frames[1]["event_index"], 2);
    assert_eq!(frames.len(), 3);

    send(&mut ws, r#"{"action":"reconnect","run_id":"missing"}"#).await;
    let frame = recv(&mut ws).await;
    assert_eq!(frame["event"], "error");
    assert_eq!(frame["run_id"], "missing");

    send(&mut ws, r#"{"action":"cancel","run_id":"later"}"#).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"event": "cancel", "run_id": "later", "status": "CANCELLED", "cancelled": true})
    );

    // A live run: its events stream, a cancel stops it, its RunCancelled follows.
    send(
        &mut ws,
        r#"{"action":"start-agent","agent_id":"gated","message":"x","run_id":"g1"}"#,
    )
    .await;
    let first = recv_until(&mut ws, "RunContent").await;
    assert_eq!(first[0]["event"], "RunStarted");
    send(&mut ws, r#"{"action":"cancel","run_id":"g1"}"#).await;
    // The answer and the run's last event come in either order.
    let (mut answer, mut cancelled) = (None, false);
    while answer.is_none() || !cancelled {
        let frame = recv(&mut ws).await;
        match frame["event"].as_str() {
            Some("cancel") => answer = Some(frame),
            Some("RunCancelled") => cancelled = true,
            _ => {}
        }
    }
    let answer = answer.unwrap();
    assert_eq!(answer["run_id"], "g1");
    assert_eq!(answer["cancelled"], true);
}

#[tokio::test]
async fn websocket_workflows_stream_like_sse() {
    let s = server(HttpConfig::default()).await;
    let mut ws = connect(s.addr, "/workflows/ws", None).await;
    recv(&mut ws).await;
    send(
        &mut ws,
        r#"{"action":"start-workflow","workflow_id":"pipeline","message":"go now","session_id":null,"count":2}"#,
    )
    .await;
    let events = recv_until(&mut ws, "WorkflowCompleted").await;
    assert_eq!(events[0]["event"], "WorkflowStarted");
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event["event_index"], index);
    }
}

#[tokio::test]
async fn websocket_auth() {
    let config = HttpConfig {
        security_key: Some("k".into()),
        ..HttpConfig::default()
    };
    let s = server(config).await;
    let mut ws = connect(s.addr, "/agents/ws", Some("Bearer k")).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"event": "connected", "requires_auth": false})
    );
    let mut ws = connect(s.addr, "/agents/ws", None).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"event": "connected", "requires_auth": true})
    );
    for action in [
        r#"{"action":"start-agent","agent_id":"echo","message":"x"}"#,
        r#"{"action":"cancel","run_id":"x"}"#,
        r#"{"action":"reconnect","run_id":"x"}"#,
    ] {
        send(&mut ws, action).await;
        let frame = recv(&mut ws).await;
        assert_eq!(frame["event"], "auth_error", "{frame}");
        assert!(frame["error"].is_string());
    }
    // Nothing was cancelled or started.
    assert!(s
        .f
        .engine
        .get_run(&RunId::parse("x").unwrap())
        .await
        .unwrap()
        .is_none());
    send(&mut ws, r#"{"action":"ping"}"#).await;
    assert_eq!(recv(&mut ws).await, json!({"event": "pong"}));
    send(&mut ws, r#"{"action":"authenticate","token":"wrong"}"#).await;
    assert_eq!(recv(&mut ws).await["event"], "auth_error");
    send(&mut ws, r#"{"action":"authenticate"}"#).await;
    assert_eq!(recv(&mut ws).await["event"], "error");
    send(&mut ws, r#"{"action":"authenticate","token":"k"}"#).await;
    assert_eq!(recv(&mut ws).await, json!({"event": "authenticated"}));
    send(
        &mut ws,
        r#"{"action":"start-agent","agent_id":"echo","message":"x"}"#,
    )
    .await;
    recv_until(&mut ws, "RunCompleted").await;
    // Plain HTTP still needs the header.
    let (_, seen) = post_until(s.addr, "/agents/echo/runs", "message=x", "\r\n\r\n").await;
    assert!(seen.starts_with("HTTP/1.1 401"), "{seen}");
}
