//! What `/v1/stream` keeps of the Durable Streams protocol (PROTOCOL.md, 2026-01-24) and the
//! HTTP rules it builds on beyond the official conformance suite (0.3.6, run by `cargo xtask
//! ds-conformance`): each test was a deviation found in review, failing before its fix; none
//! contradicts the suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bgrun_http::HttpConfig;
use common::{fixture, fixture_with, header, offset, Answer, Fixture};
use futures::StreamExt;
use serde_json::Value;
use tower::ServiceExt;

const OFFSET: &str = "stream-next-offset";

fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(body.into()).unwrap()
}

async fn put(f: &Fixture, path: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Answer {
    f.send(request("PUT", &format!("/v1/stream/{path}"), headers, body))
        .await
}

async fn post(f: &Fixture, path: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Answer {
    f.send(request(
        "POST",
        &format!("/v1/stream/{path}"),
        headers,
        body,
    ))
    .await
}

/// SSE events as a spec-following client (and `@durable-streams/client`) sees them: `(event,
/// data)`, one optional space after `data:` stripped, the data lines of an event joined by LF.
fn sse_events(text: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let mut event: Option<String> = None;
    let mut data: Vec<String> = Vec::new();
    for line in text.split('\n') {
        if line.is_empty() {
            if event.is_some() || !data.is_empty() {
                events.push((
                    event.take().unwrap_or_else(|| "message".to_owned()),
                    data.join("\n"),
                ));
                data.clear();
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => data.push(value.to_owned()),
            _ => {}
        }
    }
    events
}

/// The text of the `data` events, in order, concatenated (what a text-stream reader rebuilds).
fn sse_text(events: &[(String, String)]) -> String {
    events
        .iter()
        .filter(|(event, _)| event == "data")
        .map(|(_, data)| data.as_str())
        .collect()
}

fn controls(events: &[(String, String)]) -> Vec<Value> {
    events
        .iter()
        .filter(|(event, _)| event == "control")
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect()
}

/// A stream of `count` messages of `size` bytes each (more than one catch-up read carries).
async fn big_stream(f: &Fixture, path: &str, auth: &[(&str, &str)], count: usize, size: usize) {
    let mut headers = vec![("content-type", "text/plain")];
    headers.extend_from_slice(auth);
    assert_eq!(put(f, path, &headers, "").await.status, 201);
    for _ in 0..count {
        let answer = post(f, path, &headers, vec![b'x'; size]).await;
        assert_eq!(answer.status, 204, "{}", answer.text());
    }
}

// ---- SSE data fidelity (5.7, 4: bytes at an offset never change) ----

/// `data:` is written with no space, so a line that starts with a space loses it: every SSE
/// client strips one optional space after `data:` (the official client's `parseSSEStream`
/// does). Writing `data: ` before such a line keeps the suite's `data:line1` framing.
#[tokio::test]
async fn sse_text_keeps_leading_spaces() {
    let f = fixture().await;
    let text = "  two spaces\n one space\nnone";
    let created = put(
        &f,
        "spaces",
        &[("content-type", "text/plain"), ("stream-closed", "true")],
        text,
    )
    .await;
    assert_eq!(created.status, 201);
    let sse = f.get("/v1/stream/spaces?offset=-1&live=sse").await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse_text(&sse_events(&sse.text())), text);
}

/// Each SSE step decodes its bytes with `from_utf8_lossy`, so a character whose bytes two
/// appends split (a writer piping output in chunks) becomes two U+FFFD when the second append
/// arrives live; a catch-up read returns the very bytes.
#[tokio::test]
async fn sse_text_keeps_a_character_split_across_appends() {
    let f = fixture().await;
    let text = [("content-type", "text/plain")];
    put(&f, "split", &text, b"caf\xC3".to_vec()).await;
    let app = f.app.clone();
    let reader = tokio::spawn(async move {
        let response = app
            .oneshot(request(
                "GET",
                "/v1/stream/split?offset=-1&live=sse",
                &[],
                Body::empty(),
            ))
            .await
            .unwrap();
        let body = tokio::time::timeout(
            Duration::from_secs(20),
            axum::body::to_bytes(response.into_body(), usize::MAX),
        )
        .await
        .expect("the SSE read did not end after the close")
        .unwrap();
        String::from_utf8_lossy(&body).into_owned()
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while f.engine.streams().waiting_readers() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the SSE read never waited at the tail");
    let closed = post(
        &f,
        "split",
        &[("content-type", "text/plain"), ("stream-closed", "true")],
        b"\xA9!".to_vec(),
    )
    .await;
    assert_eq!(closed.status, 204);
    assert_eq!(f.get("/v1/stream/split").await.text(), "café!");
    let sse = reader.await.unwrap();
    assert_eq!(sse_text(&sse_events(&sse)), "café!", "{sse:?}");
}

/// 5.7 / 8.2: "Server SHOULD close connections roughly every ~60 seconds to enable CDN
/// collapsing". An SSE read of an open stream used to never end.
#[tokio::test]
async fn sse_of_an_open_stream_ends_after_its_lifetime() {
    // The default lifetime is 60 s (the protocol's "about every 60 seconds"); a short one here.
    let f = fixture_with(HttpConfig {
        stream_sse_lifetime: Duration::from_millis(300),
        stream_long_poll: Duration::from_millis(100),
        ..HttpConfig::default()
    })
    .await;
    put(&f, "open", &[("content-type", "text/plain")], "x").await;
    let response = f
        .app
        .clone()
        .oneshot(request(
            "GET",
            "/v1/stream/open?offset=-1&live=sse",
            &[],
            Body::empty(),
        ))
        .await
        .unwrap();
    let ended = tokio::time::timeout(
        Duration::from_secs(30),
        axum::body::to_bytes(response.into_body(), usize::MAX),
    )
    .await;
    let body = ended
        .expect("the SSE connection was still open after 30 s")
        .unwrap();
    // It ends after a control event, with the data it had, and not as a closed stream.
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.contains("data:x"), "{text}");
    assert!(text.trim_end().ends_with('}'), "{text}");
    assert!(!text.contains("streamClosed"), "{text}");
}

// ---- Run streams (/v1/stream/runs/{run_id}) ----

/// 5.7: a `control` event is "emitted after every data event". A run's SSE writes one data
/// event per run event and one control event per batch (up to 1024 events).
#[tokio::test]
async fn run_sse_pairs_every_data_event_with_a_control_event() {
    let f = fixture().await;
    let run_id = f.start_background("echo", "message=one+two+three").await;
    f.wait(&run_id).await;
    let sse = f
        .get(&format!("/v1/stream/runs/{run_id}?offset=-1&live=sse"))
        .await;
    let events = sse_events(&sse.text());
    // Every run event once, however the data events batch them.
    let delivered: usize = events
        .iter()
        .filter(|(event, _)| event == "data")
        .map(|(_, data)| serde_json::from_str::<Vec<Value>>(data).unwrap().len())
        .sum();
    assert_eq!(delivered, 5);
    for (i, (event, _)) in events.iter().enumerate() {
        if event == "data" {
            assert_eq!(
                events.get(i + 1).map(|(e, _)| e.as_str()),
                Some("control"),
                "data event {i} is not followed by a control event: {events:?}"
            );
        }
    }
}

/// 5.5 / 5.7: up-to-date means "all data available"; a run's SSE marks every control event
/// `upToDate: true`, also after the first 1024 events of a run that has 3002.
#[tokio::test]
async fn run_sse_is_up_to_date_only_at_the_tail() {
    let f = fixture().await;
    let run_id = f.start_background("ticker", "message=go&count=3000").await;
    f.wait(&run_id).await;
    let tail = offset(3002);
    let sse = f
        .get(&format!("/v1/stream/runs/{run_id}?offset=-1&live=sse"))
        .await;
    let controls = controls(&sse_events(&sse.text()));
    assert!(!controls.is_empty());
    for control in &controls {
        if control["upToDate"] == true {
            assert_eq!(control["streamNextOffset"], tail.as_str(), "{control}");
        }
    }
    assert_eq!(controls.last().unwrap()["streamNextOffset"], tail.as_str());
}

/// 6 (`now`, SSE mode): "Servers MUST immediately begin the SSE stream from the tail position;
/// the first control event MUST include the tail offset ... upToDate: true". At the tail of a
/// running run, nothing is sent until an event comes or the long-poll timeout passes.
#[tokio::test]
async fn run_sse_at_the_tail_of_a_running_run_starts_with_a_control_event() {
    let f = fixture_with(HttpConfig {
        stream_long_poll: Duration::from_secs(30),
        ..HttpConfig::default()
    })
    .await;
    let run_id = f.start_background("gated", "message=x").await;
    f.wait_events(&run_id, 2).await; // RunStarted, RunContent; then it waits for its gate
    let response = f
        .app
        .clone()
        .oneshot(request(
            "GET",
            &format!("/v1/stream/runs/{run_id}?offset=now&live=sse"),
            &[],
            Body::empty(),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    let first = tokio::time::timeout(Duration::from_secs(3), async {
        while !text.contains("\n\n") {
            match body.next().await {
                Some(chunk) => text.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
                None => break,
            }
        }
    })
    .await;
    drop(body);
    f.gate.add_permits(1);
    f.wait(&run_id).await;
    assert!(first.is_ok(), "no SSE event within 3 s (got {text:?})");
    let events = sse_events(&text);
    let (event, data) = events.first().expect("no event");
    assert_eq!(event, "control", "{text:?}");
    let control: Value = serde_json::from_str(data).unwrap();
    assert_eq!(control["streamNextOffset"], offset(2).as_str());
    assert_eq!(control["upToDate"], true);
}

/// A run read from an offset past its tail answers `Stream-Next-Offset` = that offset (an offset
/// the run never had; `0000000000000001_...` even becomes `..._18446744073709551615`), so a
/// client following it skips the events that come next. A generic stream answers its tail.
#[tokio::test]
async fn run_read_past_the_tail_never_hands_out_an_offset_past_the_tail() {
    let f = fixture().await;
    let run_id = f.start_background("echo", "message=one+two+three").await;
    f.wait(&run_id).await;
    for asked in [offset(50), "0000000000000001_0000000000000000".to_owned()] {
        let read = f
            .get(&format!("/v1/stream/runs/{run_id}?offset={asked}"))
            .await;
        assert!(
            read.status == 400 || header(&read, OFFSET) == Some(offset(5).as_str()),
            "offset {asked}: {} {:?}",
            read.status,
            header(&read, OFFSET)
        );
    }
}

// ---- Offsets and live reads ----

/// 5.6 (on 204): "Servers MUST include a Stream-Next-Offset header indicating the current tail
/// offset". A long-poll from an offset past the tail (a client's offset of a deleted and
/// re-created stream, say) waits for messages that are not coming and answers 204 with the
/// client's offset; it is never woken by the appends it should return.
#[tokio::test]
async fn long_poll_past_the_tail_answers_with_the_tail_offset() {
    let f = fixture_with(HttpConfig {
        stream_long_poll: Duration::from_millis(300),
        ..HttpConfig::default()
    })
    .await;
    put(&f, "short", &[("content-type", "text/plain")], "a").await;
    let poll = f
        .get(&format!(
            "/v1/stream/short?offset={}&live=long-poll",
            offset(9)
        ))
        .await;
    assert!(
        poll.status == 400
            || (poll.status == 204 && header(&poll, OFFSET) == Some(offset(1).as_str())),
        "{} {:?}",
        poll.status,
        header(&poll, OFFSET)
    );
}

/// 5.5: `400 Bad Request`: "Malformed offset or invalid parameters". An unknown `live` mode
/// (`live=longpoll`, `live=true`) is read as a catch-up instead.
#[tokio::test]
async fn an_unknown_live_mode_is_a_bad_request() {
    let f = fixture().await;
    put(&f, "modes", &[("content-type", "text/plain")], "a").await;
    for mode in ["longpoll", "true", "SSE"] {
        let read = f
            .get(&format!("/v1/stream/modes?offset=-1&live={mode}"))
            .await;
        read.assert_error(400);
    }
}

// ---- Caching (8.1, 10.2, 10.7; RFC 9110) ----

/// 8.1: on a matching `If-None-Match`, "servers MUST respond with 304". RFC 9110 13.1.2: the
/// field is a list (or `*`) compared weakly. Only a byte-identical single tag matches.
#[tokio::test]
async fn if_none_match_follows_http_matching() {
    let f = fixture().await;
    put(&f, "tags", &[("content-type", "text/plain")], "a").await;
    let full = f.get("/v1/stream/tags").await;
    let etag = header(&full, "etag").unwrap().to_owned();
    for asked in [
        format!("\"other\", {etag}"),
        format!("W/{etag}"),
        "*".to_owned(),
    ] {
        let cached = f
            .send(request(
                "GET",
                "/v1/stream/tags",
                &[("if-none-match", asked.as_str())],
                Body::empty(),
            ))
            .await;
        assert_eq!(cached.status, 304, "If-None-Match: {asked}");
    }
}

/// RFC 9110 15.4.5: a 304 "MUST generate ... Cache-Control" that a 200 would have sent; a
/// cache revalidating a range short of the tail loses its `max-age`.
#[tokio::test]
async fn not_modified_carries_the_cache_control_of_the_full_answer() {
    let f = fixture().await;
    big_stream(&f, "big", &[], 5, 300_000).await;
    let full = f.get("/v1/stream/big").await;
    assert_eq!(full.status, 200);
    assert_eq!(
        header(&full, "stream-up-to-date"),
        None,
        "one read took it all"
    );
    let etag = header(&full, "etag").unwrap().to_owned();
    let cached = f
        .send(request(
            "GET",
            "/v1/stream/big",
            &[("if-none-match", etag.as_str())],
            Body::empty(),
        ))
        .await;
    assert_eq!(cached.status, 304);
    assert_eq!(
        header(&cached, "cache-control"),
        header(&full, "cache-control")
    );
}

/// 10.2: "servers MUST enforce access controls even when using shared caches"; 8.1 / 10.7:
/// `private` (or `no-store`) for non-public data. With a security key, a read short of the tail
/// still says `public`, which lets a shared cache store a response to an authorized request
/// (RFC 9111 3.5) and serve it to anyone.
#[tokio::test]
async fn authenticated_reads_are_not_public() {
    let f = fixture_with(HttpConfig {
        security_key: Some("k".to_owned()),
        ..HttpConfig::default()
    })
    .await;
    let auth = [("authorization", "Bearer k")];
    big_stream(&f, "secret", &auth, 5, 300_000).await;
    let read = f
        .send(request("GET", "/v1/stream/secret", &auth, Body::empty()))
        .await;
    assert_eq!(read.status, 200);
    let cache_control = header(&read, "cache-control").unwrap_or("");
    assert!(!cache_control.contains("public"), "{cache_control}");
}

// ---- Headers on every response (10.7), CORS, methods ----

/// With a security key, the bearer check answers before the stream routes: a CORS preflight
/// (which never carries `Authorization`) gets 401 without CORS headers, so no browser can call
/// the streams, and the 401 lacks `X-Content-Type-Options: nosniff` (10.7: "on all responses").
#[tokio::test]
async fn a_security_key_keeps_preflights_and_browser_headers_working() {
    let f = fixture_with(HttpConfig {
        security_key: Some("k".to_owned()),
        ..HttpConfig::default()
    })
    .await;
    let preflight = f
        .send(request(
            "OPTIONS",
            "/v1/stream/browser",
            &[
                ("origin", "https://example.com"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
            Body::empty(),
        ))
        .await;
    assert!(preflight.status.is_success(), "{}", preflight.status);
    assert_eq!(header(&preflight, "access-control-allow-origin"), Some("*"));
    assert!(header(&preflight, "access-control-allow-headers")
        .unwrap_or("")
        .contains("authorization"));
    let refused = f.get("/v1/stream/browser").await;
    assert_eq!(refused.status, 401);
    assert_eq!(header(&refused, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&refused, "access-control-allow-origin"), Some("*"));
}

/// 5.4: `HEAD` "is the canonical way to find the tail offset, TTL, and expiry", but
/// `Access-Control-Expose-Headers` leaves out `Stream-TTL` and `Stream-Expires-At`, so a
/// cross-origin browser client cannot read them.
#[tokio::test]
async fn ttl_and_expiry_are_exposed_to_browsers() {
    let f = fixture().await;
    put(&f, "ttl", &[("stream-ttl", "3600")], "").await;
    let head = f
        .send(request("HEAD", "/v1/stream/ttl", &[], Body::empty()))
        .await;
    assert_eq!(header(&head, "stream-ttl"), Some("3600"));
    let exposed = header(&head, "access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("stream-ttl"), "{exposed}");
    assert!(exposed.contains("stream-expires-at"), "{exposed}");
}

/// RFC 9110 15.5.6: "The origin server MUST generate an Allow header field in a 405 response".
#[tokio::test]
async fn method_not_allowed_says_which_methods_are() {
    let f = fixture().await;
    let patch = f
        .send(request("PATCH", "/v1/stream/any", &[], Body::empty()))
        .await;
    assert_eq!(patch.status, 405);
    assert!(header(&patch, "allow").is_some_and(|allow| allow.contains("GET")));
    let run_id = f.start_background("echo", "message=hi").await;
    f.wait(&run_id).await;
    let append = post(
        &f,
        &format!("runs/{run_id}"),
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(append.status, 405);
    let allow = header(&append, "allow").unwrap_or("").to_ascii_uppercase();
    assert!(
        allow.contains("GET") && allow.contains("HEAD") && !allow.contains("POST"),
        "{allow}"
    );
}

// ---- Create (5.1) ----

/// 5.1: `400 Bad Request`: "Invalid headers". A `Content-Type` that is no media type is
/// dropped silently and the stream created as `application/octet-stream`; the client's later
/// appends with its own type are then 409.
#[tokio::test]
async fn an_invalid_content_type_on_create_is_not_silently_replaced() {
    let f = fixture().await;
    let created = put(&f, "typed", &[("content-type", "garbage")], "").await;
    if created.status != 400 {
        let head = f
            .send(request("HEAD", "/v1/stream/typed", &[], Body::empty()))
            .await;
        assert_eq!(
            head.content_type(),
            "garbage",
            "created as {}",
            head.content_type()
        );
    }
}

/// 5.1: an existing stream whose "configuration (content type, TTL/expiry) matches the request"
/// is `200`. `Stream-Expires-At` is compared as text, so the same instant written another way
/// (`...00Z` / `...00.000Z` / `+00:00`) is a 409.
#[tokio::test]
async fn the_same_expiry_instant_confirms_a_create() {
    let f = fixture().await;
    let created = put(
        &f,
        "expiring",
        &[("stream-expires-at", "2099-01-01T00:00:00Z")],
        "",
    )
    .await;
    assert_eq!(created.status, 201);
    for same in ["2099-01-01T00:00:00.000Z", "2099-01-01T00:00:00+00:00"] {
        let again = put(&f, "expiring", &[("stream-expires-at", same)], "").await;
        assert_eq!(again.status, 200, "{same}: {}", again.text());
    }
}

// ---- Append (5.2) ----

/// 5.2: "Servers MUST return 409 Conflict when the content type is valid but does not match the
/// stream's configured type". An `application/json` append to a text stream is parsed as JSON
/// before the stream's type is looked at, so a body that is not JSON (or `[]`) is a 400.
#[tokio::test]
async fn a_json_append_to_a_text_stream_is_a_type_conflict() {
    let f = fixture().await;
    put(&f, "plain", &[("content-type", "text/plain")], "a").await;
    for body in ["{", "[]"] {
        let append = post(&f, "plain", &[("content-type", "application/json")], body).await;
        append.assert_error(409);
    }
}
