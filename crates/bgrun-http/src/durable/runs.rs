//! Every run, read-only, as a JSON stream at `/v1/stream/runs/{run_id}`: its events are the
//! messages (event `i` ends at offset `i + 1`), and the stream is closed once the run is
//! terminal. A Durable Streams client resumes a run by offset like any other stream.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bgrun_core::stream::StreamOffset;
use bgrun_core::{Event, RunId, RunRecord};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;

use super::read::{parse_query, push_control, push_event, Live, ReadQuery, Start};
use super::{cursor, value, CLOSED, CURSOR, NEXT_OFFSET, UP_TO_DATE};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The most events one catch-up response carries.
const READ_EVENTS: usize = 4096;

pub(super) async fn handle(
    state: &AppState,
    method: &Method,
    run_id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let result = match *method {
        Method::GET => get(state, run_id, query, headers).await,
        Method::HEAD => head(state, run_id).await,
        _ => Ok(super::method_not_allowed(
            "GET, HEAD, OPTIONS",
            "a run's stream is read-only",
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn run(state: &AppState, run_id: &str) -> ApiResult<RunRecord> {
    let not_found = || ApiError::not_found(format!("run {run_id} not found"));
    let run_id = RunId::parse(run_id).map_err(|_| not_found())?;
    state.engine.get_run(&run_id).await?.ok_or_else(not_found)
}

fn json_type() -> HeaderValue {
    HeaderValue::from_static("application/json")
}

async fn head(state: &AppState, run_id: &str) -> ApiResult<Response> {
    let run = run(state, run_id).await?;
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, json_type());
    out.insert(
        NEXT_OFFSET,
        value(StreamOffset::new(run.event_count()).to_string()),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if run.status.is_terminal() {
        out.insert(CLOSED, value("true"));
    }
    Ok(response)
}

/// Events as a JSON array.
fn array(events: &[Event]) -> Bytes {
    let mut out =
        BytesMut::with_capacity(events.iter().map(|e| e.json().len() + 1).sum::<usize>() + 2);
    out.put_u8(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(event.json().as_bytes());
    }
    out.put_u8(b']');
    out.freeze()
}

/// The index of the last event before `offset`, as stores and the engine count.
fn last_index(offset: u64) -> Option<u64> {
    offset.checked_sub(1)
}

async fn get(
    state: &AppState,
    run_id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let run = run(state, run_id).await?;
    let query = parse_query(query)?;
    let count = run.event_count();
    let after = match query.start {
        Start::Beginning => 0,
        Start::Now => count,
        // Past the tail reads as the tail: no answer hands out an offset the run has not reached.
        Start::After(offset) => offset.get().min(count),
    };
    if query.live == Live::Sse {
        return Ok(sse(state, run.run_id, after, &query));
    }
    let terminal = run.status.is_terminal();
    if query.start == Start::Now && query.live == Live::No {
        let mut out = HeaderMap::new();
        out.insert(header::CONTENT_TYPE, json_type());
        out.insert(NEXT_OFFSET, value(StreamOffset::new(count).to_string()));
        out.insert(UP_TO_DATE, value("true"));
        out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if terminal {
            out.insert(CLOSED, value("true"));
        }
        return Ok((StatusCode::OK, out, "[]").into_response());
    }
    let mut events = if after < count {
        state
            .engine
            .store()
            .read_events(&run.run_id, last_index(after), READ_EVENTS)
            .await
            .map_err(bgrun_exec::EngineError::from)?
    } else {
        Vec::new()
    };
    let mut count = count;
    let mut terminal = terminal;
    let mut cursor_header = None;
    if query.live == Live::LongPoll {
        cursor_header = Some(cursor::respond(query.cursor.as_deref()));
        if events.is_empty() && !terminal {
            let mut live = state.engine.events(&run.run_id, last_index(after));
            let next = state
                .unless_shutting_down(tokio::time::timeout(
                    state.config.stream_long_poll,
                    live.next_batch(),
                ))
                .await;
            // None: the server is shutting down; Err: the wait timed out. Nothing came.
            if let Some(Ok(batch)) = next {
                events = batch?;
                let now = self::run(state, run_id).await?;
                count = now
                    .event_count()
                    .max(events.last().map_or(0, |e| e.index() + 1));
                terminal = now.status.is_terminal();
            }
        }
        if events.is_empty() {
            let mut out = HeaderMap::new();
            out.insert(NEXT_OFFSET, value(StreamOffset::new(count).to_string()));
            out.insert(UP_TO_DATE, value("true"));
            out.insert(CURSOR, value(cursor_header.unwrap_or_default()));
            if terminal {
                out.insert(CLOSED, value("true"));
            }
            return Ok((StatusCode::NO_CONTENT, out).into_response());
        }
    }
    let next = events.last().map_or(count.max(after), |e| e.index() + 1);
    let up_to_date = next >= count;
    let at_end = terminal && up_to_date;
    let etag = value(format!(
        "\"run:{}:{}:{}{}\"",
        run.run_id,
        query.start_text,
        StreamOffset::new(next),
        if at_end { ":c" } else { "" }
    ));
    let cache = super::read::cache_control(state, up_to_date);
    if super::read::if_none_match(headers, &etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache)],
        )
            .into_response());
    }
    let mut response = (StatusCode::OK, array(&events)).into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, json_type());
    out.insert(NEXT_OFFSET, value(StreamOffset::new(next).to_string()));
    out.insert(header::ETAG, etag);
    out.insert(header::CACHE_CONTROL, cache);
    if up_to_date {
        out.insert(UP_TO_DATE, value("true"));
    }
    if at_end {
        out.insert(CLOSED, value("true"));
    }
    if let Some(cursor) = cursor_header {
        out.insert(CURSOR, value(cursor));
    }
    Ok(response)
}

/// `live=sse`: the run's events after `after`: first a control event when the reader starts
/// at the tail; then each batch as one `data` event (an array of its events) followed by its
/// `control` event, `upToDate` only once the reader has every event stored so far; the last
/// control event says `streamClosed` once the run is terminal, and the stream ends. Ended after
/// `stream_sse_lifetime` like every stream's SSE read.
fn sse(state: &AppState, run_id: RunId, after: u64, query: &ReadQuery) -> Response {
    let events = state
        .engine
        .events(&run_id, last_index(after))
        .ready_chunks(1024);
    let engine = state.engine.clone();
    let timeout = state.config.stream_long_poll;
    let shutdown = state.shutdown.clone();
    let client_cursor = query.cursor.clone();
    let ends = tokio::time::Instant::now() + state.config.stream_sse_lifetime;
    let frames = futures::stream::unfold(Some((events, after, true)), move |state| {
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        let client_cursor = client_cursor.clone();
        let run_id = run_id.clone();
        async move {
            let (mut events, next, first) = state?;
            let mut out = BytesMut::new();
            let cursor = cursor::respond(client_cursor.as_deref());
            if first {
                // A reader at the tail hears so at once, not after the first wait.
                let run = engine.get_run(&run_id).await.ok().flatten()?;
                if next >= run.event_count() {
                    let offset = StreamOffset::new(next);
                    if run.status.is_terminal() {
                        push_control(&mut out, offset, true, false, None);
                        return Some((Ok(out.freeze()), None));
                    }
                    push_control(&mut out, offset, false, true, Some(&cursor));
                    return Some((
                        Ok::<Bytes, std::io::Error>(out.freeze()),
                        Some((events, next, false)),
                    ));
                }
            }
            let left = ends.saturating_duration_since(tokio::time::Instant::now());
            let batch = tokio::select! {
                batch = tokio::time::timeout(timeout.min(left), events.next()) => batch,
                () = shutdown.cancelled() => return None,
            };
            let more = |state| Some(state).filter(|_| tokio::time::Instant::now() < ends);
            match batch {
                Err(_) => {
                    push_control(
                        &mut out,
                        StreamOffset::new(next),
                        false,
                        true,
                        Some(&cursor),
                    );
                    Some((Ok(out.freeze()), more((events, next, false))))
                }
                Ok(None) => {
                    push_control(&mut out, StreamOffset::new(next), true, false, None);
                    Some((Ok(out.freeze()), None))
                }
                Ok(Some(batch)) => {
                    let mut received = Vec::with_capacity(batch.len());
                    for event in batch {
                        match event {
                            Ok(event) => received.push(event),
                            Err(error) => {
                                tracing::warn!(%error, "reading a run's events for SSE");
                                return None;
                            }
                        }
                    }
                    let next = received.last().map_or(next, |e| e.index() + 1);
                    let payload = array(&received);
                    push_event(&mut out, "data", &String::from_utf8_lossy(&payload));
                    let stored = engine
                        .get_run(&run_id)
                        .await
                        .ok()
                        .flatten()
                        .map_or(next, |run| run.event_count());
                    push_control(
                        &mut out,
                        StreamOffset::new(next),
                        false,
                        next >= stored,
                        Some(&cursor),
                    );
                    Some((Ok(out.freeze()), more((events, next, false))))
                }
            }
        }
    })
    .boxed();
    let mut response = Response::new(Body::from_stream(frames));
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
