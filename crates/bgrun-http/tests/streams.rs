//! The Durable Streams routes over the router (SQLite): what bgrun's own clients and operators
//! rely on beyond the official suite (run by `cargo xtask ds-conformance`): JSON errors with the
//! protocol's headers, producers, closure, long-poll wake-ups, forks, and runs as streams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{header, Request};
use bgrun_http::HttpConfig;
use common::{fixture, fixture_with, header, offset, Answer, Fixture};
use serde_json::{json, Value};

const OFFSET: &str = "stream-next-offset";

async fn put(f: &Fixture, path: &str, content_type: &str, body: &str) -> Answer {
    f.send(
        Request::put(format!("/v1/stream/{path}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.to_owned()))
            .unwrap(),
    )
    .await
}

async fn append(
    f: &Fixture,
    path: &str,
    content_type: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> Answer {
    let mut request =
        Request::post(format!("/v1/stream/{path}")).header(header::CONTENT_TYPE, content_type);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    f.send(request.body(Body::from(body.to_owned())).unwrap())
        .await
}

#[tokio::test]
async fn a_json_stream_is_created_appended_and_read_by_offset() {
    let f = fixture().await;
    let created = put(
        &f,
        "chat/room-1",
        "application/json",
        r#"[{"n":1},{"n":2}]"#,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(header(&created, OFFSET), Some(offset(1).as_str()));
    assert!(header(&created, "location")
        .unwrap()
        .ends_with("/v1/stream/chat/room-1"));
    let spaced = put(&f, "chat/room%202", "text/plain", "").await;
    assert_eq!(
        header(&spaced, "location"),
        Some("http://localhost/v1/stream/chat/room%202")
    );
    let again = put(&f, "chat/room-1", "application/json; charset=utf-8", "").await;
    assert_eq!(again.status, 200);
    let conflict = put(&f, "chat/room-1", "text/plain", "").await;
    conflict.assert_error(409);

    let appended = append(&f, "chat/room-1", "application/json", r#"{"n":3}"#, &[]).await;
    assert_eq!(appended.status, 204);
    assert_eq!(header(&appended, OFFSET), Some(offset(2).as_str()));

    let all = f.get("/v1/stream/chat/room-1").await;
    assert_eq!(all.json(), json!([{"n":1},{"n":2},{"n":3}]));
    assert_eq!(header(&all, "stream-up-to-date"), Some("true"));
    assert_eq!(header(&all, "x-content-type-options"), Some("nosniff"));
    let rest = f
        .get(&format!("/v1/stream/chat/room-1?offset={}", offset(1)))
        .await;
    assert_eq!(rest.json(), json!([{"n":3}]));
    assert_eq!(header(&rest, OFFSET), Some(offset(2).as_str()));

    let etag = header(&all, "etag").unwrap().to_owned();
    let cached = f
        .send(
            Request::get("/v1/stream/chat/room-1")
                .header(header::IF_NONE_MATCH, etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(cached.status, 304);

    let bad = append(&f, "chat/room-1", "application/json", "{", &[]).await;
    bad.assert_error(400);
    let empty = append(&f, "chat/room-1", "application/json", "[]", &[]).await;
    empty.assert_error(400);
    let missing = f.get("/v1/stream/nowhere").await;
    missing.assert_error(404);
    assert_eq!(header(&missing, "x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn idempotent_producers_write_once_and_stale_epochs_are_fenced() {
    let f = fixture().await;
    put(&f, "log", "text/plain", "").await;
    let producer = |epoch: &'static str, seq: &'static str| {
        [
            ("producer-id", "writer"),
            ("producer-epoch", epoch),
            ("producer-seq", seq),
        ]
    };
    let first = append(&f, "log", "text/plain", "a", &producer("0", "0")).await;
    assert_eq!(first.status, 200);
    let retry = append(&f, "log", "text/plain", "a", &producer("0", "0")).await;
    assert_eq!(retry.status, 204);
    assert_eq!(header(&retry, "producer-seq"), Some("0"));
    let gap = append(&f, "log", "text/plain", "c", &producer("0", "2")).await;
    gap.assert_error(409);
    assert_eq!(header(&gap, "producer-expected-seq"), Some("1"));
    assert_eq!(header(&gap, "producer-received-seq"), Some("2"));
    let bumped = append(&f, "log", "text/plain", "b", &producer("1", "0")).await;
    assert_eq!(bumped.status, 200);
    let zombie = append(&f, "log", "text/plain", "z", &producer("0", "1")).await;
    zombie.assert_error(403);
    assert_eq!(header(&zombie, "producer-epoch"), Some("1"));
    let partial = append(&f, "log", "text/plain", "x", &[("producer-id", "w")]).await;
    partial.assert_error(400);
    assert_eq!(f.get("/v1/stream/log").await.text(), "ab");
}

#[tokio::test]
async fn a_closed_stream_refuses_appends_and_says_so_at_its_tail() {
    let f = fixture().await;
    put(&f, "doc", "text/plain", "one").await;
    let closed = append(&f, "doc", "text/plain", "two", &[("stream-closed", "true")]).await;
    assert_eq!(closed.status, 204);
    assert_eq!(header(&closed, "stream-closed"), Some("true"));
    let late = append(&f, "doc", "text/plain", "three", &[]).await;
    late.assert_error(409);
    assert_eq!(header(&late, "stream-closed"), Some("true"));
    assert_eq!(header(&late, OFFSET), Some(offset(2).as_str()));
    let read = f.get("/v1/stream/doc").await;
    assert_eq!(read.text(), "onetwo");
    assert_eq!(header(&read, "stream-closed"), Some("true"));
    // A live read at the end of a closed stream answers at once.
    let tail = f
        .get(&format!(
            "/v1/stream/doc?offset={}&live=long-poll",
            offset(2)
        ))
        .await;
    assert_eq!(tail.status, 204);
    assert_eq!(header(&tail, "stream-closed"), Some("true"));
}

#[tokio::test]
async fn a_long_poll_at_the_tail_answers_with_the_next_append() {
    let f = fixture().await;
    put(&f, "feed", "text/plain", "first").await;
    let app = f.app.clone();
    let waiting = tokio::spawn(async move {
        use tower::ServiceExt;
        let response = app
            .oneshot(
                Request::get(format!(
                    "/v1/stream/feed?offset={}&live=long-poll",
                    offset(1)
                ))
                .body(Body::empty())
                .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, body)
    });
    // Appended once the read waits at the tail: the append wakes it.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while f.engine.streams().waiting_readers() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the long-poll never waited");
    append(&f, "feed", "text/plain", "second", &[]).await;
    let (status, headers, body) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"second");
    assert_eq!(headers[OFFSET], offset(2).as_str());
    assert!(headers["stream-cursor"]
        .to_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
}

#[tokio::test]
async fn sse_of_a_binary_stream_is_base64_and_ends_after_the_close() {
    let f = fixture().await;
    put(&f, "bin", "application/octet-stream", "\u{0}\u{1}").await;
    append(
        &f,
        "bin",
        "application/octet-stream",
        "\r\n",
        &[("stream-closed", "true")],
    )
    .await;
    let sse = f.get("/v1/stream/bin?offset=-1&live=sse").await;
    assert_eq!(header(&sse, "stream-sse-data-encoding"), Some("base64"));
    assert_eq!(
        sse.text(),
        format!(
            "event: data\ndata:AAENCg==\n\nevent: control\ndata:{}\n\n",
            json!({"streamNextOffset": offset(2), "streamClosed": true})
        )
    );
}

#[tokio::test]
async fn a_fork_reads_through_its_source_which_is_only_soft_deleted_while_forked() {
    let f = fixture().await;
    put(&f, "src", "text/plain", "a").await;
    append(&f, "src", "text/plain", "b", &[]).await;
    let fork = f
        .send(
            Request::put("/v1/stream/fork")
                .header("stream-forked-from", "/v1/stream/src")
                .header("stream-fork-offset", offset(1))
                .body(Body::from("c"))
                .unwrap(),
        )
        .await;
    assert_eq!(fork.status, 201, "{}", fork.text());
    assert_eq!(header(&fork, "content-type"), Some("text/plain"));
    assert_eq!(f.get("/v1/stream/fork").await.text(), "ac");
    let deleted = f
        .send(
            Request::delete("/v1/stream/src")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(deleted.status, 204);
    f.get("/v1/stream/src").await.assert_error(410);
    put(&f, "src", "text/plain", "").await.assert_error(409);
    assert_eq!(f.get("/v1/stream/fork").await.text(), "ac");
    f.send(
        Request::delete("/v1/stream/fork")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    // The last fork gone, the source is removed and its path free again.
    assert_eq!(put(&f, "src", "text/plain", "").await.status, 201);
}

#[tokio::test]
async fn a_run_is_a_read_only_json_stream_of_its_events() {
    let f = fixture().await;
    let run_id = f.start_background("echo", "message=hello+big+world").await;
    f.wait(&run_id).await;
    let path = format!("/v1/stream/runs/{run_id}");
    let all = f.get(&path).await;
    assert_eq!(all.status, 200);
    let events: Vec<Value> = serde_json::from_value(all.json()).unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "RunStarted",
            "RunContent",
            "RunContent",
            "RunContent",
            "RunCompleted"
        ]
    );
    assert_eq!(header(&all, OFFSET), Some(offset(5).as_str()));
    assert_eq!(header(&all, "stream-closed"), Some("true"));
    let rest = f.get(&format!("{path}?offset={}", offset(3))).await;
    let rest: Vec<Value> = serde_json::from_value(rest.json()).unwrap();
    assert_eq!(
        rest.iter()
            .map(|e| e["event_index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 4]
    );
    let head = f
        .send(Request::head(&path).body(Body::empty()).unwrap())
        .await;
    assert_eq!(header(&head, OFFSET), Some(offset(5).as_str()));
    append(&f, &format!("runs/{run_id}"), "application/json", "{}", &[])
        .await
        .assert_error(405);
    f.get("/v1/stream/runs/no-such-run").await.assert_error(404);
}

#[tokio::test]
async fn overlong_paths_and_producer_ids_are_bad_requests() {
    let f = fixture().await;
    let long = "p".repeat(1025);
    put(&f, &long, "text/plain", "").await.assert_error(400);
    f.get(&format!("/v1/stream/{long}")).await.assert_error(400);
    assert_eq!(
        put(&f, &"p".repeat(1024), "text/plain", "").await.status,
        201
    );
    put(&f, "short", "text/plain", "").await;
    let id = "i".repeat(257);
    append(
        &f,
        "short",
        "text/plain",
        "x",
        &[
            ("producer-id", id.as_str()),
            ("producer-epoch", "0"),
            ("producer-seq", "0"),
        ],
    )
    .await
    .assert_error(400);
}

#[tokio::test]
async fn a_character_split_where_a_read_chunk_ends_goes_out_whole() {
    let f = fixture().await;
    put(&f, "big-text", "text/plain", "").await;
    // A 1.5 MiB message (past one read chunk) ending in the first byte of "é".
    let mut first = vec![b'a'; 3 << 19];
    first.push(0xC3);
    let send = |body: Vec<u8>, close: bool| {
        let mut request =
            Request::post("/v1/stream/big-text").header(header::CONTENT_TYPE, "text/plain");
        if close {
            request = request.header("stream-closed", "true");
        }
        request.body(Body::from(body)).unwrap()
    };
    assert_eq!(f.send(send(first, false)).await.status, 204);
    assert_eq!(f.send(send(vec![0xA9, b'!'], true)).await.status, 204);
    let sse = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        f.get("/v1/stream/big-text?offset=-1&live=sse"),
    )
    .await
    .expect("the SSE read of a closed stream ended");
    let text = sse.text();
    let data: String = text
        .split("\n\n")
        .filter(|event| event.starts_with("event: data"))
        .flat_map(|event| event.lines().skip(1))
        .map(|line| line.strip_prefix("data:").unwrap())
        .collect();
    assert_eq!(data.len(), (3 << 19) + "é!".len());
    assert!(data.ends_with("aé!"));
    assert!(text.contains("\"streamClosed\":true"));
}

#[tokio::test]
async fn a_character_split_between_appends_at_a_read_chunks_end_does_not_stall_the_catch_up() {
    // The SSE connection ends after 10 s; a catch-up that waited for an append instead of
    // reading what is stored would not deliver the last appends within that time.
    let f = fixture_with(HttpConfig {
        stream_sse_lifetime: std::time::Duration::from_secs(10),
        stream_long_poll: std::time::Duration::from_secs(60),
        ..HttpConfig::default()
    })
    .await;
    put(&f, "split-text", "text/plain", "").await;
    let send = |body: Vec<u8>| {
        Request::post("/v1/stream/split-text")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(body))
            .unwrap()
    };
    // The second append takes the first read chunk (1 MiB) past its end and stops inside "é";
    // the third completes it. The stream stays open.
    assert_eq!(f.send(send(vec![b'a'; 600 << 10])).await.status, 204);
    let mut second = vec![b'b'; 500 << 10];
    second.push(0xC3);
    assert_eq!(f.send(send(second)).await.status, 204);
    assert_eq!(f.send(send(vec![0xA9, b'!'])).await.status, 204);
    let sse = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        f.get("/v1/stream/split-text?offset=-1&live=sse"),
    )
    .await
    .expect("the SSE connection ended at its lifetime");
    let data: String = sse
        .text()
        .split("\n\n")
        .filter(|event| event.starts_with("event: data"))
        .flat_map(|event| event.lines().skip(1))
        .map(|line| line.strip_prefix("data:").unwrap())
        .collect();
    assert_eq!(data.len(), (600 << 10) + (500 << 10) + "é!".len());
    assert!(data.ends_with("bé!"));
}

#[tokio::test]
async fn a_stream_deleted_under_a_catching_up_sse_reader_ends_its_read() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let f = fixture_with(HttpConfig {
        stream_sse_lifetime: std::time::Duration::from_secs(30),
        ..HttpConfig::default()
    })
    .await;
    put(&f, "doomed", "application/octet-stream", "").await;
    // Three read chunks (1 MiB each) of backlog: the reader is not at the tail after the first.
    for _ in 0..3 {
        let append = Request::post("/v1/stream/doomed")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(vec![7u8; 1 << 20]))
            .unwrap();
        assert_eq!(f.send(append).await.status, 204);
    }
    let response = f
        .app
        .clone()
        .oneshot(
            Request::get("/v1/stream/doomed?offset=-1&live=sse")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first
        .data_ref()
        .is_some_and(|data| data.starts_with(b"event: data")));
    let deleted = f
        .send(
            Request::delete("/v1/stream/doomed")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(deleted.status, 204);
    // What follows the delete: at most what was read before it, then the end, well before the
    // connection's lifetime (a reader looping on empty reads sent a control event per read).
    let rest = tokio::time::timeout(std::time::Duration::from_secs(20), body.collect())
        .await
        .expect("the read went on after its stream was deleted")
        .unwrap()
        .to_bytes();
    let controls = rest
        .split(|&byte| byte == b'\n')
        .filter(|line| line.starts_with(b"event: control"))
        .count();
    assert!(controls <= 3, "{controls} control events after the delete");
}

#[tokio::test]
async fn control_characters_in_paths_and_encoded_fork_sources() {
    let f = fixture().await;
    put(&f, "a%00b", "text/plain", "").await.assert_error(400);
    assert_eq!(put(&f, "caf%C3%A9", "text/plain", "x").await.status, 201);
    let fork = f
        .send(
            Request::put("/v1/stream/fork-of-cafe")
                .header("stream-forked-from", "/v1/stream/caf%C3%A9")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(fork.status, 201, "{}", fork.text());
    assert_eq!(f.get("/v1/stream/fork-of-cafe").await.text(), "x");
    // The prefix is a path segment: `/v1/streamcafé` names no stream under it.
    let not_a_source = f
        .send(
            Request::put("/v1/stream/fork-of-nothing")
                .header("stream-forked-from", "/v1/streamcaf%C3%A9")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_ne!(not_a_source.status, 201, "{}", not_a_source.text());
    let orphan_offset = f
        .send(
            Request::put("/v1/stream/not-a-fork")
                .header("stream-fork-offset", offset(0))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    orphan_offset.assert_error(400);
}
