//! Fixtures shared by the HTTP tests: an engine over SQLite in a tempdir with the demo
//! components and a gated agent, requests, and a strict SSE parser.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use bgrun_core::{RunId, RunRecord, RunStatus};
use bgrun_exec::{demo, Engine, EngineConfig};
use bgrun_http::{router, HttpConfig};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::Semaphore;
use tower::ServiceExt;

pub use bgrun_testkit::runnables::Gated;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub engine: Engine,
    pub gate: Arc<Semaphore>,
    pub app: Router,
}

pub async fn fixture_with(config: HttpConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = bgrun_store_sqlite::SqliteStore::open(dir.path().join("runs.db"))
        .await
        .unwrap();
    let gated = Gated::new();
    let gate = gated.gate.clone();
    let registry = demo::registry().with(gated);
    let engine = Engine::open(
        Arc::new(store),
        registry,
        EngineConfig {
            exclusive_store: true,
            ..EngineConfig::default()
        },
    )
    .await
    .unwrap();
    let app = router(engine.clone(), config);
    Fixture {
        dir,
        engine,
        gate,
        app,
    }
}

/// A Durable Streams offset after `n` messages.
pub fn offset(n: u64) -> String {
    format!("0000000000000000_{n:016}")
}

/// A response header as text.
pub fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer.headers.get(name).map(|v| v.to_str().unwrap())
}

pub async fn fixture() -> Fixture {
    fixture_with(HttpConfig::default()).await
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap())
            .unwrap_or("")
    }

    /// Asserts a JSON error `{"detail": ...}` with this status.
    pub fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "{}", self.text());
        assert!(
            self.content_type().starts_with("application/json"),
            "{}",
            self.content_type()
        );
        let json = self.json();
        assert!(json["detail"].is_string(), "{json}");
        assert_eq!(json.as_object().unwrap().len(), 1, "{json}");
    }

    pub fn frames(&self) -> Vec<Frame> {
        parse_sse(&self.text())
    }
}

impl Fixture {
    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn post_form(&self, uri: &str, form: &str) -> Answer {
        self.send(form_request(uri, form)).await
    }

    pub async fn post_json(&self, uri: &str, json: Value) -> Answer {
        self.send(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json.to_string()))
                .unwrap(),
        )
        .await
    }

    pub async fn post_empty(&self, uri: &str) -> Answer {
        self.send(
            Request::builder()
                .method(Method::POST)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// Starts a run in the background (202) and returns its id.
    pub async fn start_background(&self, component: &str, form: &str) -> RunId {
        let answer = self
            .post_form(
                &format!("/agents/{component}/runs"),
                &format!("stream=false&background=true&{form}"),
            )
            .await;
        assert_eq!(answer.status, 202, "{}", answer.text());
        RunId::parse(answer.json()["run_id"].as_str().unwrap()).unwrap()
    }

    pub async fn wait(&self, run_id: &RunId) -> RunRecord {
        tokio::time::timeout(Duration::from_secs(30), self.engine.wait(run_id))
            .await
            .expect("run did not end")
            .unwrap()
    }

    /// Waits until the run has stored at least `count` events.
    pub async fn wait_events(&self, run_id: &RunId, count: usize) {
        let mut events = self.engine.events(run_id, None);
        for _ in 0..count {
            tokio::time::timeout(Duration::from_secs(30), events.next())
                .await
                .expect("no event")
                .expect("stream ended")
                .unwrap();
        }
    }

    pub async fn status(&self, run_id: &RunId) -> RunStatus {
        self.engine.get_run(run_id).await.unwrap().unwrap().status
    }
}

pub fn form_request(uri: &str, form: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .unwrap()
}

/// One SSE frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Parses an SSE text strictly: each frame is `id: n\nevent: t\ndata: json\n\n` or
/// `event: t\ndata: json\n\n`, or the comment `: keepalive\n\n`; anything else fails.
pub fn parse_sse(text: &str) -> Vec<Frame> {
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text:?}");
    let mut frames = Vec::new();
    for block in text.split_terminator("\n\n") {
        if block == ": keepalive" {
            continue;
        }
        let lines: Vec<&str> = block.split('\n').collect();
        let (id, rest) = match lines.as_slice() {
            [id, event, data] => {
                let id = id
                    .strip_prefix("id: ")
                    .unwrap_or_else(|| panic!("{block:?}"));
                (Some(id.parse::<u64>().unwrap()), [*event, *data])
            }
            [event, data] => (None, [*event, *data]),
            _ => panic!("bad frame {block:?}"),
        };
        let event = rest[0]
            .strip_prefix("event: ")
            .unwrap_or_else(|| panic!("{block:?}"));
        let data = rest[1]
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("{block:?}"));
        let data: Value = serde_json::from_str(data).unwrap();
        if let Some(id) = id {
            assert_eq!(data["event_index"], id, "{block}");
            assert_eq!(data["event"], event, "{block}");
        }
        frames.push(Frame {
            id,
            event: event.to_owned(),
            data,
        });
    }
    frames
}

/// The event types of the data frames.
pub fn types(frames: &[Frame]) -> Vec<&str> {
    frames
        .iter()
        .filter(|frame| frame.id.is_some())
        .map(|frame| frame.event.as_str())
        .collect()
}

/// The data frames' indices.
pub fn indices(frames: &[Frame]) -> Vec<u64> {
    frames.iter().filter_map(|frame| frame.id).collect()
}
