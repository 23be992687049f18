//! Bad input gets a 4xx JSON `{"detail"}` and the server keeps serving; auth with a key.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use common::{Options, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Asserts a JSON error with `status` and a string `detail`.
async fn assert_error(response: reqwest::Response, status: u16, what: &str) {
    assert_error_in(response, &[status], what).await;
}

/// Asserts a JSON error with one of `statuses` and a string `detail`.
async fn assert_error_in(response: reqwest::Response, statuses: &[u16], what: &str) {
    let status = response.status().as_u16();
    assert!(statuses.contains(&status), "{what}: {status}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{what}: content-type {content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert!(body["detail"].is_string(), "{what}: {body}");
}

/// The server still works: /health and a whole echo run.
async fn assert_still_serving(server: &Server) {
    server.get_json("/health").await;
    let response = server
        .start_run(
            "/agents/echo/runs",
            json!({"message": "still here", "stream": false}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let run: Value = response.json().await.unwrap();
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["content"], "still here");
}

#[tokio::test]
async fn malformed_requests_get_json_4xx_and_the_server_keeps_serving() {
    let server = Server::start().await;
    let http = &server.http;
    let start = server.url("/agents/echo/runs");

    // Bad JSON: a 4xx, whatever the exact code.
    let response = http
        .post(&start)
        .header("content-type", "application/json")
        .body("{\"message\": ")
        .send()
        .await
        .unwrap();
    assert_error_in(response, &[400, 422], "bad JSON").await;

    let response = http
        .post(&start)
        .header("content-type", "text/plain")
        .body("message=hi")
        .send()
        .await
        .unwrap();
    assert_error(response, 415, "text/plain").await;

    // The server reads a refused body (up to 16 MiB) before answering: the connection stays
    // fit for the next request.
    let big = json!({"message": "x".repeat(1024 * 1024 + 1)});
    let response = http.post(&start).json(&big).send().await.unwrap();
    assert_error(response, 413, "a body over 1 MiB").await;

    for (body, what) in [
        (json!({"message": "hi", "stream": "maybe"}), "a bad bool"),
        (
            json!({"message": "hi", "background": 2}),
            "a bool that is 2",
        ),
        (json!({"message": "hi", "delay_ms": "soon"}), "a bad int"),
        (
            json!({"message": "hi", "delay_ms": 1.5}),
            "a fractional int",
        ),
        (
            json!({"message": "hi", "delay_ms": -1}),
            "an out-of-range int",
        ),
        (
            json!({"message": "hi", "delay_ms": 60001}),
            "over the range",
        ),
    ] {
        let mut body = body;
        body["background"] = body.get("background").cloned().unwrap_or(json!(true));
        let response = http.post(&start).json(&body).send().await.unwrap();
        assert_error(response, 422, what).await;
    }
    // The same in a form, and validation answers JSON before any SSE byte.
    let response = http
        .post(&start)
        .form(&[("message", "hi"), ("stream", "yes please")])
        .send()
        .await
        .unwrap();
    assert_error(response, 422, "a bad bool in a form").await;
    let response = http
        .post(server.url("/agents/ticker/runs"))
        .form(&[("message", "hi"), ("stream", "true"), ("count", "many")])
        .send()
        .await
        .unwrap();
    assert_error(response, 422, "a bad int with stream=true").await;

    let response = http.get(server.url("/no/such/route")).send().await.unwrap();
    assert_error(response, 404, "an unknown route").await;
    let response = http.delete(&start).send().await.unwrap();
    assert_error(response, 405, "a method the route lacks").await;
    let response = http
        .request(Method::PUT, server.url("/health"))
        .send()
        .await
        .unwrap();
    assert_error(response, 405, "PUT /health").await;

    let response = http
        .post(server.url("/agents/nope/runs"))
        .json(&json!({"message": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "an unknown component").await;
    let response = http
        .get(server.url("/agents/echo/runs/no-such-run"))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "an unknown run").await;

    let run_id = "0193e4a0-0000-7000-8000-00000000e2e1";
    let first = json!({"message": "hi", "run_id": run_id, "stream": false, "background": true});
    let response = http.post(&start).json(&first).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let again = json!({"message": "hi", "run_id": run_id, "stream": true});
    let response = http
        .post(server.url("/agents/ticker/runs"))
        .json(&again)
        .send()
        .await
        .unwrap();
    assert_error(response, 409, "a run_id that exists, for another component").await;

    let resume = server.url(&format!("/agents/echo/runs/{run_id}/resume"));
    let response = http
        .post(&resume)
        .json(&json!({"last_event_index": -1}))
        .send()
        .await
        .unwrap();
    assert_error(response, 422, "a negative last_event_index").await;
    let response = http
        .post(&resume)
        .json(&json!({"last_event_index": "two"}))
        .send()
        .await
        .unwrap();
    assert_error(response, 422, "a last_event_index that is no integer").await;
    let response = http
        .get(format!("{resume}?last_event_index=-3"))
        .send()
        .await
        .unwrap();
    assert_error(response, 422, "a negative last_event_index in the query").await;
    let response = http
        .post(&resume)
        .header("Last-Event-ID", "-5")
        .send()
        .await
        .unwrap();
    assert_error(response, 422, "a negative Last-Event-ID").await;

    let response = http
        .get(server.url("/agents/echo/runs?limit=0"))
        .send()
        .await
        .unwrap();
    assert_error(response, 422, "limit 0").await;
    let response = http
        .get(server.url("/agents/echo/runs?status=SLEEPING"))
        .send()
        .await
        .unwrap();
    assert_error(response, 422, "an unknown status").await;

    // Text no store could keep as sent (PostgreSQL's text holds no NUL), and an overlong
    // idempotency key: 422 on every store.
    let background = |body: serde_json::Value| {
        let mut body = body;
        body["stream"] = json!(false);
        body["background"] = json!(true);
        body
    };
    for (body, what) in [
        (json!({"message": "a\u{0}b"}), "a NUL in the message"),
        (
            json!({"message": "hi", "user_id": "a\u{0}b"}),
            "a NUL in user_id",
        ),
    ] {
        let response = http
            .post(&start)
            .json(&background(body))
            .send()
            .await
            .unwrap();
        assert_error(response, 422, what).await;
    }
    let response = http
        .post(&start)
        .form(&[
            ("message", "a\0b"),
            ("background", "true"),
            ("stream", "false"),
        ])
        .send()
        .await
        .unwrap();
    assert_error(response, 422, "a NUL in a form's message").await;
    let response = http
        .post(&start)
        .header("Idempotency-Key", "k".repeat(1025))
        .json(&background(json!({"message": "hi"})))
        .send()
        .await
        .unwrap();
    assert_error(response, 422, "an Idempotency-Key over 1024 bytes").await;
    // Any UTF-8 string is a key.
    let mut run_ids = Vec::new();
    for _ in 0..2 {
        let response = http
            .post(&start)
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes("clé ✓".as_bytes()).unwrap(),
            )
            .json(&background(json!({"message": "hi"})))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: serde_json::Value = response.json().await.unwrap();
        run_ids.push(body["run_id"].clone());
    }
    assert_eq!(run_ids[0], run_ids[1], "the key names its first run");

    // An id no run can have (over 256 bytes) is an unknown run, not a bad request.
    let no_run = "a".repeat(300);
    let response = http
        .post(server.url(&format!("/agents/echo/runs/{no_run}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        answer,
        json!({"run_id": no_run, "status": "CANCELLED", "cancelled": true})
    );
    let response = http
        .get(server.url(&format!("/agents/echo/runs/{no_run}/resume")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.text().await.unwrap();
    let expected =
        json!({"event": "error", "run_id": no_run, "error": format!("run {no_run} not found")});
    assert_eq!(body, format!("event: error\ndata: {expected}\n\n"));

    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_client_that_sends_its_whole_oversized_body_before_reading_gets_the_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = Server::start().await;
    // As most HTTP clients do: the whole request first, then the answer. 12 MiB is more than
    // loopback buffers hold: a server that answered and closed without reading would reset the
    // connection under the write.
    let body = vec![b'a'; 12 << 20];
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let head = format!(
        "POST /agents/echo/runs HTTP/1.1\r\nhost: 127.0.0.1\r\n\
         content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket
        .write_all(&body)
        .await
        .expect("the server read the body it refuses");
    let mut answer = vec![0u8; 12];
    socket.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn the_durable_streams_body_limit_is_a_flag() {
    let server = Server::start_with(Options {
        args: vec!["--stream-body-limit-bytes".into(), "16".into()],
        ..Options::default()
    })
    .await;
    let stream = server.url("/v1/stream/limited");
    let created = server
        .http
        .put(&stream)
        .header("content-type", "text/plain")
        .body("x".repeat(16))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    // The server may close the connection without reading the body: not back to the pool.
    let refused = server
        .http
        .post(&stream)
        .header("content-type", "text/plain")
        .header("connection", "close")
        .body("x".repeat(17))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let read = server
        .http
        .get(format!("{stream}?offset=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.text().await.unwrap(), "x".repeat(16));
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_security_key_guards_every_route_but_health() {
    let key = "e2e-secret";
    let server = Server::start_with(Options {
        security_key: Some(key.into()),
        ..Options::default()
    })
    .await;
    let http = &server.http;

    let health = http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "/health stays open");

    let response = http.get(server.url("/agents")).send().await.unwrap();
    assert_error(response, 401, "no bearer").await;
    let response = http
        .get(server.url("/agents"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "a wrong bearer").await;
    let response = http
        .post(server.url("/agents/echo/runs"))
        .json(&json!({"message": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "a start without a bearer").await;
    let response = http.get(server.url("/no/such/route")).send().await.unwrap();
    assert!(response.status().is_client_error());

    let response = http
        .get(server.url("/agents"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let agents: Value = response.json().await.unwrap();
    let ids: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"echo"), "{agents}");

    let response = http
        .post(server.url("/agents/echo/runs"))
        .bearer_auth(key)
        .json(&json!({"message": "with a key", "stream": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let run: Value = response.json().await.unwrap();
    assert_eq!(run["content"], "with a key");
    // The refused start created nothing: the one run is the one with a key.
    let page: Value = http
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
