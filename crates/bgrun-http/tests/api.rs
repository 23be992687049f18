//! The HTTP contract over `tower::ServiceExt::oneshot`: every route and its error paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request};
use bgrun_core::{RunId, RunStatus};
use bgrun_http::HttpConfig;
use common::{fixture, fixture_with, form_request, indices, types};
use futures::StreamExt;
use serde_json::{json, Value};

const RUN_FIELDS: [&str; 13] = [
    "run_id",
    "session_id",
    "user_id",
    "agent_id",
    "status",
    "content",
    "error",
    "cancellation_stage",
    "parent_run_id",
    "metadata",
    "created_at",
    "updated_at",
    "last_event_index",
];

fn assert_run_fields(run: &Value) {
    let object = run.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = RUN_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected, "{run}");
}

#[tokio::test]
async fn health_unknown_paths_and_wrong_methods_answer_json() {
    let f = fixture().await;
    let health = f.get("/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));
    f.get("/nowhere").await.assert_error(404);
    f.get("/agents/echo").await.assert_error(404);
    f.get("/robots/echo/runs").await.assert_error(404);
    f.get("/agent/echo/runs").await.assert_error(404);
    f.get("/agents/echo/runs/x/cancel").await.assert_error(405);
    f.post_empty("/health").await.assert_error(405);
    f.send(
        Request::delete("/agents/echo/runs")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .assert_error(405);
    // A WebSocket route asked without an upgrade.
    let plain = f.get("/agents/ws").await;
    assert!(plain.status.is_client_error(), "{}", plain.status);
    plain.assert_error(plain.status.as_u16());
    f.get("/robots/ws").await.assert_error(404);
}

#[tokio::test]
async fn components_are_listed_by_kind() {
    let f = fixture().await;
    let agents = f.get("/agents").await;
    assert_eq!(agents.status, 200);
    let agents_json = agents.json();
    let ids_owned: Vec<String> = agents_json
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids_owned, ["echo", "fail", "gated", "ticker"]);
    let echo = &agents_json[0];
    assert_eq!(echo["name"], "echo");
    assert!(echo["description"].is_string());
    assert_eq!(echo.as_object().unwrap().len(), 3);
    let teams = f.get("/teams").await;
    assert_eq!(teams.status, 200);
    assert!(teams.json().is_array());
    f.get("/robots").await.assert_error(404);
}

#[tokio::test]
async fn a_background_start_is_202_pending_and_polls_to_completion() {
    let f = fixture().await;
    let answer = f
        .post_form(
            "/agents/echo/runs",
            "message=hello+big+world&stream=false&background=true&user_id=u1&metadata=%7B%22k%22%3A1%7D",
        )
        .await;
    assert_eq!(answer.status, 202);
    let accepted = answer.json();
    assert_eq!(accepted["status"], "PENDING");
    assert_eq!(accepted.as_object().unwrap().len(), 3);
    let run_id = RunId::parse(accepted["run_id"].as_str().unwrap()).unwrap();
    f.wait(&run_id).await;
    let run = f.get(&format!("/agents/echo/runs/{run_id}")).await;
    assert_eq!(run.status, 200);
    let run = run.json();
    assert_run_fields(&run);
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["content"], "hello big world");
    assert_eq!(run["agent_id"], "echo");
    assert_eq!(run["user_id"], "u1");
    assert_eq!(run["metadata"], json!({"k": 1}));
    assert_eq!(run["session_id"], accepted["session_id"]);
    assert_eq!(run["error"], Value::Null);
    assert_eq!(run["cancellation_stage"], Value::Null);
    assert_eq!(run["parent_run_id"], Value::Null);
    assert_eq!(run["last_event_index"], 4);
    assert!(run["created_at"].is_i64() && run["updated_at"].is_i64());

    // The session must match when given; another component or run is 404.
    let session = run["session_id"].as_str().unwrap();
    assert_eq!(
        f.get(&format!("/agents/echo/runs/{run_id}?session_id={session}"))
            .await
            .status,
        200
    );
    f.get(&format!("/agents/echo/runs/{run_id}?session_id=other"))
        .await
        .assert_error(404);
    f.get(&format!("/agents/ticker/runs/{run_id}"))
        .await
        .assert_error(404);
    f.get("/agents/echo/runs/nope").await.assert_error(404);
    f.get(&format!("/agents/nope/runs/{run_id}"))
        .await
        .assert_error(404);
}

#[tokio::test]
async fn a_blocking_start_answers_the_finished_run() {
    let f = fixture().await;
    let answer = f
        .post_json(
            "/agents/echo/runs",
            json!({"message": "a b", "stream": false, "background": false, "session_id": "s1", "delay_ms": 1}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let run = answer.json();
    assert_run_fields(&run);
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["content"], "a b");
    assert_eq!(run["session_id"], "s1");

    let failed = f
        .post_form("/agents/fail/runs", "message=x&stream=0&background=FALSE")
        .await
        .json();
    assert_eq!(failed["status"], "ERROR");
    assert_eq!(failed["error"], "failed on purpose");
}

#[tokio::test]
async fn a_streamed_start_is_sse_framed_exactly() {
    let f = fixture().await;
    let answer = f
        .post_form("/agents/echo/runs", "message=one+two+three")
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), "text/event-stream");
    let frames = answer.frames();
    assert_eq!(
        types(&frames),
        [
            "RunStarted",
            "RunContent",
            "RunContent",
            "RunContent",
            "RunCompleted"
        ]
    );
    assert_eq!(indices(&frames), [0, 1, 2, 3, 4]);
    assert!(frames.iter().all(|frame| frame.id.is_some()));
    assert_eq!(frames[1].data["content"], "one ");
    assert_eq!(frames[3].data["content"], "three");
    assert_eq!(frames[4].data["content"], "one two three");
    let run_id = frames[0].data["run_id"].as_str().unwrap();
    assert!(frames.iter().all(|frame| frame.data["run_id"] == run_id));
    // Each frame is the stored event, byte for byte.
    let stored = f
        .engine
        .events(&RunId::parse(run_id).unwrap(), None)
        .map(|event| event.unwrap().json().to_owned())
        .collect::<Vec<_>>()
        .await;
    let text = answer.text();
    for json in stored {
        assert!(text.contains(&format!("\ndata: {json}\n\n")));
    }

    // Background streams too.
    let answer = f
        .post_json(
            "/agents/ticker/runs",
            json!({"message": "m", "stream": true, "background": true, "count": 3}),
        )
        .await;
    assert_eq!(
        types(&answer.frames()),
        [
            "RunStarted",
            "RunContent",
            "RunContent",
            "RunContent",
            "RunCompleted"
        ]
    );
}

#[tokio::test]
async fn the_three_encodings_are_accepted_and_others_refused() {
    let f = fixture().await;
    let boundary = "XyZ123";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\nfrom multipart\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\nfalse\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"background\"\r\n\r\nfalse\r\n\
         --{boundary}--\r\n"
    );
    let answer = f
        .send(
            Request::post("/agents/echo/runs")
                .header(
                    header::CONTENT_TYPE,
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(Body::from(multipart))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["content"], "from multipart");

    let answer = f
        .send(
            Request::post("/agents/echo/runs")
                .header(
                    header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded; charset=UTF-8",
                )
                .body(Body::from("message=x&stream=false"))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, 200);

    for content_type in [
        Some("text/plain"),
        Some("application/xml"),
        Some("multipart/form-data"),
        None,
    ] {
        let mut request = Request::post("/agents/echo/runs");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        f.send(request.body(Body::from("message=x")).unwrap())
            .await
            .assert_error(415);
    }
}

#[tokio::test]
async fn bad_starts_are_json_errors_before_any_sse_byte() {
    let f = fixture().await;
    f.post_form("/agents/nope/runs", "message=x")
        .await
        .assert_error(404);
    f.post_form("/robots/echo/runs", "message=x")
        .await
        .assert_error(404);
    for form in [
        "stream=true",
        "message=x&stream=yes",
        "message=x&background=2",
        "message=x&delay_ms=abc",
        "message=x&delay_ms=60001",
        "message=x&delay_ms=-1",
        "message=x&count=1.5",
        "message=x&metadata=%5B%5D",
        "message=x&metadata=%7Bbroken",
        "message=x&panic=maybe",
    ] {
        let component = if form.contains("panic") {
            "fail"
        } else if form.contains("count") {
            "ticker"
        } else {
            "echo"
        };
        f.post_form(&format!("/agents/{component}/runs"), form)
            .await
            .assert_error(422);
    }
    for body in [
        json!({"message": 5}),
        json!({"message": "x", "stream": "nope"}),
        json!({"message": "x", "delay_ms": true}),
        json!({"message": "x", "metadata": [1]}),
        json!([1, 2]),
    ] {
        f.post_json("/agents/echo/runs", body)
            .await
            .assert_error(422);
    }
    let broken = f
        .send(
            Request::post("/agents/echo/runs")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
    broken.assert_error(422);

    // Booleans in any case, integers as strings.
    let answer = f
        .post_form(
            "/agents/ticker/runs",
            "message=x&stream=False&background=TRUE&count=2",
        )
        .await;
    assert_eq!(answer.status, 202);

    // An existing run_id, for any component: 409.
    f.post_form("/agents/echo/runs", "message=x&run_id=mine&stream=false")
        .await;
    f.post_form("/agents/ticker/runs", "message=x&run_id=mine")
        .await
        .assert_error(409);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let f = fixture_with(HttpConfig {
        body_limit: 1000,
        ..HttpConfig::default()
    })
    .await;
    let big = format!("message={}", "a".repeat(2000));
    f.post_form("/agents/echo/runs", &big)
        .await
        .assert_error(413);
    // Also without a declared length (a chunked body).
    let chunks = futures::stream::iter(
        (0..20).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a'; 100]))),
    );
    f.send(
        Request::post("/agents/echo/runs")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from_stream(chunks))
            .unwrap(),
    )
    .await
    .assert_error(413);
    // The default is 1 MiB.
    let f = fixture().await;
    let big = format!("message={}", "a".repeat(1024 * 1024 + 1));
    f.post_form("/agents/echo/runs", &big)
        .await
        .assert_error(413);
}

#[tokio::test]
async fn an_idempotency_key_answers_for_the_first_run_in_the_mode_asked() {
    let f = fixture().await;
    let start = |form: &'static str| {
        let mut request = form_request("/agents/echo/runs", form);
        request
            .headers_mut()
            .insert("Idempotency-Key", "key-1".parse().unwrap());
        request
    };
    let first = f
        .send(start("message=a+b&stream=false&background=true"))
        .await;
    assert_eq!(first.status, 202);
    let run_id = first.json()["run_id"].as_str().unwrap().to_owned();
    let again = f
        .send(start("message=other&stream=false&background=false"))
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["run_id"], run_id.as_str());
    assert_eq!(again.json()["content"], "a b");
    let streamed = f.send(start("message=other")).await;
    let frames = streamed.frames();
    assert_eq!(types(&frames).last(), Some(&"RunCompleted"));
    assert!(frames
        .iter()
        .all(|frame| frame.data["run_id"] == run_id.as_str()));
    let background = f
        .send(start("message=other&stream=false&background=true"))
        .await;
    assert_eq!(background.status, 202);
    assert_eq!(background.json()["run_id"], run_id.as_str());
    assert_eq!(background.json()["status"], "COMPLETED");
    let list = f.get("/agents/echo/runs").await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn runs_are_listed_newest_first_with_a_cursor() {
    let f = fixture().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let session = if n % 2 == 0 { "even" } else { "odd" };
        let run_id = f
            .start_background("echo", &format!("message=m{n}&session_id={session}"))
            .await;
        f.wait(&run_id).await;
        ids.push(run_id.to_string());
    }
    f.start_background("ticker", "message=x&count=0").await;
    ids.reverse();
    let page = f.get("/agents/echo/runs?limit=2").await.json();
    let got: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, &ids[..2]);
    assert_run_fields(&page["data"][0]);
    let mut all: Vec<String> = got.iter().map(|id| (*id).to_owned()).collect();
    let mut cursor = page["next_cursor"].as_str().unwrap().to_owned();
    loop {
        let page = f
            .get(&format!("/agents/echo/runs?limit=2&cursor={cursor}"))
            .await
            .json();
        all.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|run| run["run_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(all, ids);
    let everything = f.get("/agents/echo/runs").await.json();
    assert_eq!(everything["data"].as_array().unwrap().len(), 5);
    assert_eq!(everything["next_cursor"], Value::Null);
    let odd = f.get("/agents/echo/runs?session_id=odd").await.json();
    assert_eq!(odd["data"].as_array().unwrap().len(), 2);
    let completed = f
        .get("/agents/echo/runs?status=COMPLETED&limit=100")
        .await
        .json();
    assert_eq!(completed["data"].as_array().unwrap().len(), 5);
    let running = f.get("/agents/echo/runs?status=RUNNING").await.json();
    assert_eq!(running["data"], json!([]));

    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "status=running",
        "status=DONE",
        "cursor=garbage",
    ] {
        f.get(&format!("/agents/echo/runs?{query}"))
            .await
            .assert_error(422);
    }
    f.get("/agents/nope/runs").await.assert_error(404);
}

#[tokio::test]
async fn cancel_before_start_while_running_and_after_the_end() {
    let f = fixture().await;
    // Before start: the intent is recorded, the later run never executes.
    let early = f.post_empty("/agents/echo/runs/early/cancel").await;
    assert_eq!(early.status, 200);
    assert_eq!(
        early.json(),
        json!({"run_id": "early", "status": "CANCELLED", "cancelled": true})
    );
    let run_id = f.start_background("echo", "message=a+b&run_id=early").await;
    let run = f.wait(&run_id).await;
    assert_eq!(run.status, RunStatus::Cancelled);
    let run = f.get("/agents/echo/runs/early").await.json();
    assert_eq!(run["cancellation_stage"], "PENDING");
    assert_eq!(run["last_event_index"], 0);
    let frames = f.get("/agents/echo/runs/early/resume").await.frames();
    assert_eq!(types(&frames), ["RunCancelled"]);

    // While running: it stops and keeps its partial content.
    let run_id = f.start_background("gated", "message=x").await;
    f.wait_events(&run_id, 2).await;
    let answer = f
        .post_json(&format!("/agents/gated/runs/{run_id}/cancel"), json!({}))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["cancelled"], true);
    assert_eq!(answer.json()["status"], "CANCELLED");
    let run = f.get(&format!("/agents/gated/runs/{run_id}")).await.json();
    assert_eq!(run["status"], "CANCELLED");
    assert_eq!(run["cancellation_stage"], "EXECUTING");
    assert_eq!(run["content"], "hello ");

    // After the end: left as it is.
    let done = f
        .post_form("/agents/echo/runs", "message=x&stream=false")
        .await
        .json();
    let done_id = done["run_id"].as_str().unwrap();
    let answer = f
        .post_form(&format!("/agents/echo/runs/{done_id}/cancel"), "")
        .await;
    assert_eq!(
        answer.json(),
        json!({"run_id": done_id, "status": "COMPLETED", "cancelled": false})
    );
    // A run of another component is not this path's; bad bodies are refused.
    f.post_empty(&format!("/agents/ticker/runs/{done_id}/cancel"))
        .await
        .assert_error(404);
    f.post_empty("/agents/nope/runs/x/cancel")
        .await
        .assert_error(404);
    f.send(
        Request::post("/agents/echo/runs/x/cancel")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("stop"))
            .unwrap(),
    )
    .await
    .assert_error(415);
}

#[tokio::test]
async fn resume_gives_exactly_the_events_after_the_index() {
    let f = fixture().await;
    let run_id = f.start_background("ticker", "message=x&count=5").await;
    f.wait(&run_id).await;
    let base = format!("/agents/ticker/runs/{run_id}/resume");
    // 7 events: RunStarted, 5 ticks, RunCompleted.
    let all = f.post_empty(&base).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.content_type(), "text/event-stream");
    let frames = all.frames();
    assert_eq!(frames[0].id, None);
    assert_eq!(
        frames[0].data,
        json!({"event": "replay", "run_id": run_id.as_str(), "status": "COMPLETED",
            "total_events": 7, "last_event_index_requested": -1})
    );
    assert_eq!(indices(&frames), [0, 1, 2, 3, 4, 5, 6]);

    for answer in [
        f.get(&format!("{base}?last_event_index=2")).await,
        f.post_form(&base, "last_event_index=2").await,
        f.post_json(&base, json!({"last_event_index": 2, "session_id": null}))
            .await,
        f.send(
            Request::get(&base)
                .header("Last-Event-ID", "2")
                .body(Body::empty())
                .unwrap(),
        )
        .await,
        f.send(
            Request::post(&base)
                .header("Last-Event-ID", "2")
                .body(Body::empty())
                .unwrap(),
        )
        .await,
    ] {
        let frames = answer.frames();
        assert_eq!(frames[0].event, "replay");
        assert_eq!(frames[0].data["total_events"], 4);
        assert_eq!(frames[0].data["last_event_index_requested"], 2);
        assert_eq!(indices(&frames), [3, 4, 5, 6]);
    }
    // The field wins over the header.
    let answer = f
        .send(
            Request::get(format!("{base}?last_event_index=5"))
                .header("Last-Event-ID", "1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(indices(&answer.frames()), [6]);
    // At or past the end: a replay frame and nothing else, also for an index past i64 (taken
    // as i64::MAX).
    for index in [
        "6",
        "100",
        "18446744073709551615",
        "99999999999999999999999",
    ] {
        let frames = f
            .get(&format!("{base}?last_event_index={index}"))
            .await
            .frames();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].event, "replay");
        assert_eq!(frames[0].data["total_events"], 0);
    }
    let past = f
        .post_json(&base, json!({"last_event_index": u64::MAX}))
        .await
        .frames();
    assert_eq!(past.len(), 1);
    assert_eq!(past[0].data["last_event_index_requested"], i64::MAX);
    for query in [
        "last_event_index=-1",
        "last_event_index=x",
        "last_event_index=1.5",
    ] {
        f.get(&format!("{base}?{query}")).await.assert_error(422);
        let form = query.to_owned();
        f.post_form(&base, &form).await.assert_error(422);
    }
    f.post_json(&base, json!({"last_event_index": -3}))
        .await
        .assert_error(422);
    f.send(
        Request::get(&base)
            .header("Last-Event-ID", "abc")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .assert_error(422);
    f.send(
        Request::post(&base)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("x"))
            .unwrap(),
    )
    .await
    .assert_error(415);
    f.get("/agents/nope/runs/x/resume").await.assert_error(404);

    // An unknown run (or one of another component): an error frame, then the end.
    for path in [
        "/agents/ticker/runs/unknown/resume".to_owned(),
        format!("/agents/echo/runs/{run_id}/resume"),
    ] {
        let frames = f.get(&path).await.frames();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].event, "error");
        assert_eq!(frames[0].id, None);
        assert!(frames[0].data["error"].is_string());
    }
}

#[tokio::test]
async fn a_live_resume_catches_up_then_follows() {
    let f = fixture().await;
    let run_id = f.start_background("gated", "message=x").await;
    f.wait_events(&run_id, 2).await;
    let response = raw(
        &f.app,
        Request::get(format!(
            "/agents/gated/runs/{run_id}/resume?last_event_index=0"
        ))
        .body(Body::empty())
        .unwrap(),
    )
    .await;
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    while !text.contains("\"hello \"") {
        let chunk = body.next().await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    f.gate.add_permits(1);
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let frames = common::parse_sse(&text);
    assert_eq!(
        frames[0].data,
        json!({"event": "catch_up", "run_id": run_id.as_str(), "status": "RUNNING",
            "missed_events": 1, "current_event_count": 2})
    );
    assert_eq!(
        frames[1].data,
        json!({"event": "subscribed", "run_id": run_id.as_str(), "status": "RUNNING",
            "current_event_count": 2})
    );
    assert_eq!(indices(&frames), [1, 2, 3]);
    assert_eq!(types(&frames), ["RunContent", "RunContent", "RunCompleted"]);
}

async fn raw(app: &axum::Router, request: Request<Body>) -> axum::response::Response {
    tower::ServiceExt::oneshot(app.clone(), request)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_quiet_stream_sends_keepalive_comments() {
    let f = fixture_with(HttpConfig {
        keepalive: std::time::Duration::from_millis(20),
        ..HttpConfig::default()
    })
    .await;
    let response = raw(
        &f.app,
        form_request("/agents/gated/runs", "message=x&background=true"),
    )
    .await;
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    while !text.contains(": keepalive\n\n") {
        let chunk = body.next().await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    f.gate.add_permits(1);
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let frames = common::parse_sse(&text);
    assert_eq!(
        types(&frames),
        ["RunStarted", "RunContent", "RunContent", "RunCompleted"]
    );
}

#[tokio::test]
async fn auth_guards_every_route_but_health() {
    let f = fixture_with(HttpConfig {
        security_key: Some("sekret".into()),
        ..HttpConfig::default()
    })
    .await;
    assert_eq!(f.get("/health").await.status, 200);
    for (method, uri) in [
        (Method::GET, "/agents"),
        (Method::GET, "/metrics"),
        (Method::GET, "/openapi.json"),
        (Method::GET, "/agents/echo/runs"),
        (Method::POST, "/agents/echo/runs"),
        (Method::GET, "/agents/echo/runs/x"),
        (Method::POST, "/agents/echo/runs/x/cancel"),
        (Method::POST, "/agents/echo/runs/x/resume"),
        (Method::GET, "/agents/echo/runs/x/resume"),
    ] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("sekret"),
            Some("Basic sekret"),
        ] {
            let mut request = Request::builder().method(method.clone()).uri(uri);
            if let Some(auth) = auth {
                request = request.header(header::AUTHORIZATION, auth);
            }
            f.send(request.body(Body::empty()).unwrap())
                .await
                .assert_error(401);
        }
    }
    let ok = f
        .send(
            Request::get("/agents")
                .header(header::AUTHORIZATION, "Bearer sekret")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(ok.status, 200);
    let mut start = form_request("/agents/echo/runs", "message=x&stream=false");
    start
        .headers_mut()
        .insert(header::AUTHORIZATION, "Bearer sekret".parse().unwrap());
    assert_eq!(f.send(start).await.json()["status"], "COMPLETED");
}

#[tokio::test]
async fn metrics_count_runs_by_status_and_events() {
    let f = fixture().await;
    f.post_form("/agents/echo/runs", "message=a+b&stream=false")
        .await;
    f.post_form("/agents/fail/runs", "message=a&stream=false")
        .await;
    let answer = f.get("/metrics").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), "text/plain; version=0.0.4");
    let text = answer.text();
    for line in [
        "bgrun_runs_total{status=\"PENDING\"} 2",
        "bgrun_runs_total{status=\"RUNNING\"} 2",
        "bgrun_runs_total{status=\"COMPLETED\"} 1",
        "bgrun_runs_total{status=\"ERROR\"} 1",
        "bgrun_runs_total{status=\"CANCELLED\"} 0",
        // echo: 4 events; fail: 2.
        "bgrun_events_appended_total 6",
        // Both were answered from memory.
        "bgrun_events_read_total 0",
        "# TYPE bgrun_runs_total counter",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}

#[tokio::test]
async fn the_openapi_document_spells_every_route_per_kind() {
    let f = fixture().await;
    let doc = f.get("/openapi.json").await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (kind, key) in [
        ("agents", "agent_id"),
        ("teams", "team_id"),
        ("workflows", "workflow_id"),
    ] {
        for (path, methods) in [
            (format!("/{kind}"), &["get"][..]),
            (format!("/{kind}/{{{key}}}/runs"), &["get", "post"][..]),
            (format!("/{kind}/{{{key}}}/runs/{{run_id}}"), &["get"][..]),
            (
                format!("/{kind}/{{{key}}}/runs/{{run_id}}/cancel"),
                &["post"][..],
            ),
            (
                format!("/{kind}/{{{key}}}/runs/{{run_id}}/resume"),
                &["get", "post"][..],
            ),
            (format!("/{kind}/ws"), &["get"][..]),
        ] {
            for method in methods {
                assert!(paths[&path][*method].is_object(), "{method} {path}");
            }
        }
    }
    for path in ["/health", "/metrics", "/openapi.json"] {
        assert!(paths.contains_key(path), "{path}");
    }
}

#[tokio::test]
async fn teams_and_workflows_answer_under_their_own_kind() {
    let f = fixture().await;
    let team = f
        .post_form("/teams/pair/runs", "message=hi+there&stream=false&count=2")
        .await;
    assert_eq!(team.status, 200, "{}", team.text());
    let team = team.json();
    assert_eq!(team["team_id"], "pair");
    assert_eq!(team["status"], "COMPLETED");
    assert!(team.get("agent_id").is_none());
    assert_eq!(team.as_object().unwrap().len(), RUN_FIELDS.len());
    let run_id = team["run_id"].as_str().unwrap();
    f.get(&format!("/agents/pair/runs/{run_id}"))
        .await
        .assert_error(404);
    let listed = f.get("/teams/pair/runs").await.json();
    assert_eq!(listed["data"][0]["run_id"], run_id);
    // Forwarded member events keep their run_id and take the team's next index.
    let frames = f
        .get(&format!("/teams/pair/runs/{run_id}/resume"))
        .await
        .frames();
    let data = &frames[1..];
    assert_eq!(data.first().unwrap().event, "TeamRunStarted");
    assert_eq!(data.last().unwrap().event, "TeamRunCompleted");
    assert!(data.iter().any(|frame| frame.data["run_id"] != run_id));
    assert_eq!(indices(&frames), (0..data.len() as u64).collect::<Vec<_>>());

    let workflow = f
        .post_json(
            "/workflows/pipeline/runs",
            json!({"message": "go", "count": 1}),
        )
        .await;
    let frames = workflow.frames();
    assert_eq!(types(&frames).first(), Some(&"WorkflowStarted"));
    assert_eq!(types(&frames).last(), Some(&"WorkflowCompleted"));
    let run_id = frames[0].data["run_id"].as_str().unwrap();
    let run = f
        .get(&format!("/workflows/pipeline/runs/{run_id}"))
        .await
        .json();
    assert_eq!(run["workflow_id"], "pipeline");
    assert_eq!(run["status"], "COMPLETED");
}
