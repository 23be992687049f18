//! Server-sent events, framed exactly as the contract says (`Event::push_frame`), written
//! straight from each event's stored JSON (never re-serialised) and batched: every event ready at
//! once goes out in one body chunk. Events a store keeps as frames go out as it read them.
//!
//! ```text
//! id: <event_index>
//! event: <event type>
//! data: <the event's JSON>
//!
//! ```
//! Meta frames have no `id:` line; `: keepalive` follows a quiet spell.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bgrun_core::{Event, RunId, RunKind};
use bgrun_exec::{Chunk, Engine, EventStream, FramedStream, MetaFrame};
use bytes::Bytes;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Appends one meta frame.
pub(crate) fn push_meta(out: &mut Vec<u8>, frame: &MetaFrame) {
    push_named(out, frame.name(), &frame.to_json().to_string());
}

fn push_named(out: &mut Vec<u8>, name: &str, data: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Cancels a run when dropped armed: the SSE body of a `stream=true, background=false` start
/// is dropped when its client goes away.
#[derive(Debug)]
pub(crate) struct CancelOnDrop {
    engine: Engine,
    run_id: RunId,
    armed: bool,
}

impl CancelOnDrop {
    /// Armed for this run.
    pub(crate) fn new(engine: Engine, run_id: RunId) -> Self {
        Self {
            engine,
            run_id,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let engine = self.engine.clone();
        let run_id = self.run_id.clone();
        runtime.spawn(async move {
            tracing::info!(%run_id, "client went away: cancelling its run");
            if let Err(error) = engine.cancel(&run_id).await {
                tracing::warn!(%run_id, %error, "cancelling after a disconnect failed");
            }
        });
    }
}

/// What an SSE answer streams.
pub(crate) struct SseStream {
    /// Frames to send first (meta frames).
    pub(crate) prefix: Vec<MetaFrame>,
    /// The run whose events follow.
    pub(crate) run_id: RunId,
    /// Its kind: its own terminal event ends the stream.
    pub(crate) kind: RunKind,
    /// The events (none after an `error` meta frame).
    pub(crate) events: Option<EventStream>,
    /// Cancels the run if the client leaves before the end.
    pub(crate) guard: Option<CancelOnDrop>,
    /// A comment after this long without an event.
    pub(crate) keepalive: Duration,
    /// Fired when the server shuts down: the stream ends.
    pub(crate) shutdown: CancellationToken,
}

struct State {
    prefix: Option<Bytes>,
    run_id: RunId,
    terminal: [&'static str; 3],
    events: Option<FramedStream>,
    /// Frames a store read, to send before reading on.
    frames: VecDeque<Bytes>,
    guard: Option<CancelOnDrop>,
    keepalive: Duration,
    shutdown: CancellationToken,
    done: bool,
}

impl State {
    fn finish(&mut self) {
        self.done = true;
        if let Some(guard) = self.guard.as_mut() {
            guard.disarm();
        }
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(prefix) = self.prefix.take() {
            return Some(prefix);
        }
        if let Some(frames) = self.frames.pop_front() {
            return Some(frames);
        }
        if self.done {
            return None;
        }
        let Some(events) = self.events.as_mut() else {
            self.finish();
            return None;
        };
        let batch = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {
                // The server stops; the client did not leave: the run goes on.
                self.finish();
                return None;
            }
            // `next_chunk` is cancel-safe: a keepalive does not lose a read in flight.
            next = tokio::time::timeout(self.keepalive, events.next_chunk()) => match next {
                Err(_) => return Some(Bytes::from_static(KEEPALIVE)),
                Ok(Ok(batch)) if batch.is_empty() => {
                    self.finish();
                    return None;
                }
                Ok(batch) => batch,
            },
        };
        let batch = match batch {
            Ok(Chunk::Events(batch)) => batch,
            // The run's own terminal event ends the stream here too: it is the last of its
            // log, so it ends a chunk. Failing that, the end of the stream does (the store has
            // no more and the run ended).
            Ok(Chunk::Frames(frames)) => {
                let ends_run = frames
                    .chunks
                    .last()
                    .and_then(|chunk| last_frame(chunk))
                    .is_some_and(|(event_type, json)| {
                        self.terminal.contains(&event_type) && is_own(json, &self.run_id)
                    });
                self.frames.extend(frames.chunks);
                if ends_run {
                    // What is queued is still sent.
                    self.finish();
                }
                return Some(self.frames.pop_front().unwrap_or_default());
            }
            Err(error) => {
                let mut out = Vec::new();
                let data =
                    json!({"event": "error", "run_id": self.run_id, "error": error.to_string()});
                push_named(&mut out, "error", &data.to_string());
                self.finish();
                return Some(Bytes::from(out));
            }
        };
        // Every frame is written once, into a buffer sized for all of them.
        let size: usize = batch.iter().map(Event::frame_len).sum();
        let mut out = Vec::with_capacity(size);
        for event in &batch {
            event.push_frame(&mut out);
            if self.terminal.contains(&event.event_type()) && event.run_id_is(&self.run_id) {
                self.finish();
                break;
            }
        }
        Some(Bytes::from(out))
    }
}

/// Whether an event is the run's own (not one forwarded from a child run).
trait OwnEvent {
    fn run_id_is(&self, run_id: &RunId) -> bool;
}

impl OwnEvent for Event {
    fn run_id_is(&self, run_id: &RunId) -> bool {
        is_own(self.json(), run_id)
    }
}

/// Whether an event's JSON is `run_id`'s own.
fn is_own(json: &str, run_id: &RunId) -> bool {
    // The envelope renders `"run_id":"<id>"` right after the event type; compare the text
    // rather than parse the whole event.
    match json.find(",\"run_id\":\"") {
        Some(start) => {
            let rest = &json[start + 11..];
            rest.starts_with(run_id.as_str()) && rest[run_id.as_str().len()..].starts_with('"')
        }
        None => false,
    }
}

/// The type and JSON of the last frame of a text of frames (each one `id:`, `event:` and
/// `data:` line and a blank line); `None` if it does not end with such a frame.
fn last_frame(frames: &[u8]) -> Option<(&str, &str)> {
    let body = frames.strip_suffix(b"\n\n")?;
    let start = body
        .windows(2)
        .rposition(|pair| pair == b"\n\n")
        .map_or(0, |at| at + 2);
    let mut lines = std::str::from_utf8(body.get(start..)?).ok()?.split('\n');
    lines.next()?.strip_prefix("id: ")?;
    let event_type = lines.next()?.strip_prefix("event: ")?;
    let json = lines.next()?.strip_prefix("data: ")?;
    lines.next().is_none().then_some((event_type, json))
}

impl SseStream {
    /// The 200 answer streaming this.
    pub(crate) fn into_response(self) -> Response {
        let mut prefix = Vec::new();
        for frame in &self.prefix {
            push_meta(&mut prefix, frame);
        }
        let terminal = [
            bgrun_core::Outcome::Completed,
            bgrun_core::Outcome::Error,
            bgrun_core::Outcome::Cancelled,
        ]
        .map(|outcome| self.kind.terminal_event(outcome));
        let state = State {
            prefix: (!prefix.is_empty()).then(|| Bytes::from(prefix)),
            run_id: self.run_id,
            terminal,
            events: self.events.map(EventStream::framed),
            frames: VecDeque::new(),
            guard: self.guard,
            keepalive: self.keepalive,
            shutdown: self.shutdown,
            done: false,
        };
        let body = futures::stream::unfold(state, |mut state| async move {
            let chunk = state.next_chunk().await?;
            Some((Ok::<Bytes, std::convert::Infallible>(chunk), state))
        });
        event_stream(Body::from_stream(body))
    }
}

/// The 200 answer of a resume of `run_id`, which no run can have (it is no valid run id): the
/// `error` meta frame of an unknown run, and the end.
pub(crate) fn unknown_run(run_id: &str) -> Response {
    let data =
        json!({"event": "error", "run_id": run_id, "error": format!("run {run_id} not found")});
    let mut out = Vec::new();
    push_named(&mut out, "error", &data.to_string());
    event_stream(Body::from(out))
}

/// A 200 answer with `body` as an event stream.
fn event_stream(body: Body) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bgrun_core::{Envelope, SessionId};

    #[test]
    fn frames_are_exact() {
        let run_id = RunId::parse("r").unwrap();
        let session_id = SessionId::parse("s").unwrap();
        let event = Event::render(
            Envelope {
                run_id: &run_id,
                session_id: &session_id,
                created_at: 1,
            },
            4,
            "RunContent",
            &serde_json::Map::new(),
        );
        let mut out = Vec::new();
        event.push_frame(&mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "id: 4\nevent: RunContent\ndata: {\"event\":\"RunContent\",\"run_id\":\"r\",\"session_id\":\"s\",\"created_at\":1,\"event_index\":4}\n\n"
        );
        assert!(event.run_id_is(&run_id));
        assert!(!event.run_id_is(&RunId::parse("x").unwrap()));
        let json = event.json();
        assert_eq!(last_frame(&out), Some(("RunContent", json)));
        let mut two = b"id: 3\nevent: RunStarted\ndata: {}\n\n".to_vec();
        two.extend_from_slice(&out);
        assert_eq!(last_frame(&two), Some(("RunContent", json)));
        for not_frames in [
            &b""[..],
            b"\n\n",
            b"id: 4\nevent: A\n\n",
            b"data: {}\n\n",
            &out[..out.len() - 1],
        ] {
            assert_eq!(last_frame(not_frames), None, "{not_frames:?}");
        }
        assert!(!event.run_id_is(&RunId::parse("").unwrap_or(RunId::parse("rr").unwrap())));
        let mut out = Vec::new();
        push_meta(
            &mut out,
            &MetaFrame::Error {
                run_id,
                error: "gone".into(),
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: error\ndata: {\"event\":\"error\",\"run_id\":\"r\",\"error\":\"gone\"}\n\n"
        );
    }
}
