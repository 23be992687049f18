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
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
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
        Start::After(offset) => offset.get(),
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
            let next = tokio::time::timeout(state.config.stream_long_poll, live.next_batch()).await;
            // Err: the wait timed out, nothing came.
            if let Ok(batch) = next {
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
            out.insert(NEXT_OFFSET, value(StreamOffset::new(after).to_string()));
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
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|asked| asked == etag)
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let mut response = (StatusCode::OK, array(&events)).into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, json_type());
    out.insert(NEXT_OFFSET, value(StreamOffset::new(next).to_string()));
    out.insert(header::ETAG, etag);
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

/// `live=sse`: the run's events after `after` as `data` events (each an array of one event),
/// each batch followed by a `control` event; the last control event says `streamClosed` once
/// the run is terminal, and the stream ends.
fn sse(state: &AppState, run_id: RunId, after: u64, query: &ReadQuery) -> Response {
    let events = state
        .engine
        .events(&run_id, last_index(after))
        .ready_chunks(1024);
    let timeout = state.config.stream_long_poll;
    let shutdown = state.shutdown.clone();
    let client_cursor = query.cursor.clone();
    let frames = futures::stream::unfold(Some((events, after)), move |state| {
        let shutdown = shutdown.clone();
        let client_cursor = client_cursor.clone();
        async move {
            let (mut events, next) = state?;
            let mut out = BytesMut::new();
            let batch = tokio::select! {
                batch = tokio::time::timeout(timeout, events.next()) => batch,
                () = shutdown.cancelled() => return None,
            };
            let cursor = cursor::respond(client_cursor.as_deref());
            match batch {
                Err(_) => {
                    push_control(
                        &mut out,
                        StreamOffset::new(next),
                        false,
                        true,
                        Some(&cursor),
                    );
                    Some((
                        Ok::<Bytes, std::io::Error>(out.freeze()),
                        Some((events, next)),
                    ))
                }
                Ok(None) => {
                    push_control(&mut out, StreamOffset::new(next), true, false, None);
                    Some((Ok(out.freeze()), None))
                }
                Ok(Some(batch)) => {
                    let mut next = next;
                    for event in batch {
                        match event {
                            Ok(event) => {
                                next = event.index() + 1;
                                push_event(&mut out, "data", &format!("[{}]", event.json()));
                            }
                            Err(error) => {
                                tracing::warn!(%error, "reading a run's events for SSE");
                                return Some((Ok(out.freeze()), None));
                            }
                        }
                    }
                    push_control(
                        &mut out,
                        StreamOffset::new(next),
                        false,
                        true,
                        Some(&cursor),
                    );
                    Some((Ok(out.freeze()), Some((events, next))))
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
