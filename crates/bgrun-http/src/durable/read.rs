//! Reads: `HEAD`, catch-up `GET`, `live=long-poll` and `live=sse`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bgrun_core::stream::{media_type, StreamExpiry, StreamInfo, StreamMessage, StreamOffset};
use bgrun_exec::streams::{json, StreamError, Streams};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;

use super::{
    bad_request, cursor, value, CLOSED, CURSOR, EXPIRES_AT, NEXT_OFFSET, SSE_ENCODING, TTL,
    UP_TO_DATE,
};
use crate::error::ApiResult;
use crate::state::AppState;

/// The most message bytes one catch-up response (or one SSE read) carries.
pub(crate) const READ_CHUNK_BYTES: usize = 1 << 20;

/// How a `GET` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Live {
    /// Catch-up: what is there now.
    No,
    /// Wait at the tail for the next message.
    LongPoll,
    /// Server-sent events, catch-up then live.
    Sse,
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// `-1` or no offset: the beginning.
    Beginning,
    /// `now`: the tail.
    Now,
    /// After this offset.
    After(StreamOffset),
}

/// A `GET`'s query: `offset`, `live`, `cursor` (other parameters are ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadQuery {
    pub(crate) start: Start,
    /// The offset as the client wrote it (for the ETag).
    pub(crate) start_text: String,
    pub(crate) offset_given: bool,
    pub(crate) live: Live,
    pub(crate) cursor: Option<String>,
}

pub(crate) fn parse_query(query: Option<&str>) -> ApiResult<ReadQuery> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or_default())
        .map_err(|error| bad_request(format!("invalid query: {error}")))?;
    let mut offsets = pairs.iter().filter(|(name, _)| name == "offset");
    let offset = offsets.next().map(|(_, value)| value.as_str());
    if offsets.next().is_some() {
        return Err(bad_request("give one offset parameter"));
    }
    let start = match offset {
        None | Some("-1") => Start::Beginning,
        Some("") => return Err(bad_request("the offset parameter is empty")),
        Some("now") => Start::Now,
        Some(offset) => {
            Start::After(StreamOffset::parse(offset).map_err(|_| bad_request("invalid offset"))?)
        }
    };
    let live = match pairs.iter().find(|(name, _)| name == "live") {
        None => Live::No,
        Some((_, mode)) if mode == "long-poll" => Live::LongPoll,
        Some((_, mode)) if mode == "sse" => Live::Sse,
        Some((_, mode)) => {
            return Err(bad_request(format!(
                "unknown live mode {mode:?}: use long-poll or sse"
            )))
        }
    };
    if live != Live::No && offset.is_none() {
        return Err(bad_request("live reads need an offset parameter"));
    }
    Ok(ReadQuery {
        start,
        start_text: offset.unwrap_or("-1").to_owned(),
        offset_given: offset.is_some(),
        live,
        cursor: pairs
            .iter()
            .find(|(name, _)| name == "cursor")
            .map(|(_, cursor)| cursor.clone()),
    })
}

/// `HEAD`: the stream's metadata, never cached, no body.
pub(super) async fn head(state: &AppState, path: &str) -> ApiResult<Response> {
    let info = state.engine.streams().get(path).await?;
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    out.insert(NEXT_OFFSET, value(info.tail.to_string()));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    out.insert(header::CONTENT_TYPE, value(&info.content_type));
    if info.closed {
        out.insert(CLOSED, value("true"));
    }
    match &info.expiry {
        Some(StreamExpiry::Ttl { secs }) => {
            out.insert(TTL, value(secs.to_string()));
        }
        Some(StreamExpiry::At { text, .. }) => {
            out.insert(EXPIRES_AT, value(text));
        }
        None => {}
    }
    out.insert(header::ETAG, etag(&info, "-1", info.tail, info.closed));
    Ok(response)
}

/// Whether an `If-None-Match` header matches `etag` (RFC 9110 weak comparison: a list of
/// tags, `W/` tags, or `*`).
pub(crate) fn if_none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(asked) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let etag = etag.to_str().unwrap_or_default();
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    asked.trim() == "*" || asked.split(',').any(|tag| opaque(tag) == opaque(etag))
}

/// The `Cache-Control` of a catch-up answer: a range short of the tail never changes, so caches
/// may keep it (privately only, when reads need a key); one at the tail is revalidated.
pub(crate) fn cache_control(state: &AppState, up_to_date: bool) -> HeaderValue {
    match (up_to_date, state.config.security_key.is_some()) {
        (true, _) => HeaderValue::from_static("no-cache"),
        (false, false) => {
            HeaderValue::from_static("public, max-age=60, stale-while-revalidate=300")
        }
        (false, true) => {
            HeaderValue::from_static("private, max-age=60, stale-while-revalidate=300")
        }
    }
}

/// The ETag of a read: the stream, where the read started and ended, and whether it saw the
/// end of a closed stream. A deleted and re-created path gets other ETags.
fn etag(info: &StreamInfo, start: &str, end: StreamOffset, closed: bool) -> HeaderValue {
    value(format!(
        "\"{}:{start}:{end}{}\"",
        info.id,
        if closed { ":c" } else { "" }
    ))
}

fn is_json(info: &StreamInfo) -> bool {
    media_type(&info.content_type) == json::JSON
}

/// A response body of messages: a JSON stream's values as one array, else the bytes in order.
fn body(info: &StreamInfo, messages: &[StreamMessage]) -> Bytes {
    if is_json(info) {
        Bytes::from(json::array(messages.iter().map(|m| &m.data[..])))
    } else if messages.len() == 1 {
        messages[0].data.clone()
    } else {
        let mut out = BytesMut::with_capacity(messages.iter().map(|m| m.data.len()).sum());
        for message in messages {
            out.put_slice(&message.data);
        }
        out.freeze()
    }
}

/// `GET`.
pub(super) async fn get(
    state: &AppState,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let streams = state.engine.streams();
    let mut info = streams.get(path).await?;
    let query = parse_query(query)?;
    streams.touch(&info).await?;
    if query.live == Live::Sse {
        return Ok(sse(state, path, info, &query));
    }
    // An offset past the tail (from a stream deleted and created again, say) reads as the
    // tail: no answer hands out an offset the stream has not reached.
    let after = match query.start {
        Start::Beginning => StreamOffset::ZERO,
        Start::Now => info.tail,
        Start::After(offset) => offset.min(info.tail),
    };
    if query.start == Start::Now && query.live == Live::No {
        let mut response = (
            StatusCode::OK,
            if is_json(&info) { "[]" } else { "" }.to_owned(),
        )
            .into_response();
        let out = response.headers_mut();
        out.insert(header::CONTENT_TYPE, value(&info.content_type));
        out.insert(NEXT_OFFSET, value(info.tail.to_string()));
        out.insert(UP_TO_DATE, value("true"));
        out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if info.closed {
            out.insert(CLOSED, value("true"));
        }
        return Ok(response);
    }
    let mut messages = streams.read(&info, after, READ_CHUNK_BYTES).await?;
    let mut cursor_header = None;
    if query.live == Live::LongPoll {
        cursor_header = Some(cursor::respond(query.cursor.as_deref()));
        if messages.is_empty() && after >= info.tail {
            // Nothing to wait for on a closed stream; at shutdown, answered as a timed-out wait.
            let waited = if info.closed {
                None
            } else {
                state
                    .unless_shutting_down(streams.wait(path, after, state.config.stream_long_poll))
                    .await
                    .transpose()?
            };
            match waited {
                Some(waited) if !waited.timed_out && waited.info.tail > after => {
                    info = waited.info;
                    messages = streams.read(&info, after, READ_CHUNK_BYTES).await?;
                }
                waited => {
                    let closed = waited.as_ref().map_or(info.closed, |w| w.info.closed);
                    let tail = waited.map_or(info.tail, |w| w.info.tail);
                    let mut out = HeaderMap::new();
                    out.insert(NEXT_OFFSET, value(tail.max(after).to_string()));
                    out.insert(UP_TO_DATE, value("true"));
                    out.insert(CURSOR, value(cursor_header.unwrap_or_default()));
                    if closed {
                        out.insert(CLOSED, value("true"));
                    }
                    return Ok((StatusCode::NO_CONTENT, out).into_response());
                }
            }
        }
    }
    let next = messages.last().map_or(info.tail, |m| m.offset);
    let up_to_date = next >= info.tail;
    let at_closed_end = info.closed && up_to_date;
    let etag = etag(&info, &query.start_text, next, at_closed_end);
    let cache = cache_control(state, up_to_date);
    if if_none_match(headers, &etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache)],
        )
            .into_response());
    }
    let mut response = (StatusCode::OK, body(&info, &messages)).into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, value(&info.content_type));
    out.insert(NEXT_OFFSET, value(next.to_string()));
    out.insert(header::ETAG, etag);
    out.insert(header::CACHE_CONTROL, cache);
    if up_to_date {
        out.insert(UP_TO_DATE, value("true"));
    }
    if at_closed_end {
        out.insert(CLOSED, value("true"));
    }
    if let Some(cursor) = cursor_header {
        out.insert(CURSOR, value(cursor));
    }
    Ok(response)
}

/// How SSE `data:` payloads are written.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    /// A JSON stream: each message as an array of its values.
    Json,
    /// A text stream: the message's text.
    Text,
    /// Any other: base64 (announced in `Stream-SSE-Data-Encoding`).
    Base64,
}

/// Appends one SSE event; every line of the payload becomes a `data:` line, so a payload can
/// never end the event early or inject one (CR, LF and CRLF all split lines).
pub(super) fn push_event(out: &mut BytesMut, event: &str, payload: &str) {
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_u8(b'\n');
    let mut rest = payload;
    loop {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        let line = &rest.as_bytes()[..end];
        // A reader drops one space after `data:`: a line that starts with one keeps it only
        // behind another.
        out.put_slice(if line.first() == Some(&b' ') {
            b"data: "
        } else {
            b"data:"
        });
        out.put_slice(line);
        out.put_u8(b'\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    out.put_u8(b'\n');
}

/// One `data` event holding `messages` (a JSON stream's as one array), so that every data
/// event is followed by the control event that gives its end offset.
fn push_data(out: &mut BytesMut, encoding: Encoding, messages: &[StreamMessage]) {
    let bytes = || {
        let mut all = Vec::with_capacity(messages.iter().map(|m| m.data.len()).sum());
        for message in messages {
            all.extend_from_slice(&message.data);
        }
        all
    };
    let payload = match encoding {
        Encoding::Json => {
            String::from_utf8_lossy(&json::array(messages.iter().map(|m| &m.data[..]))).into_owned()
        }
        Encoding::Text => String::from_utf8_lossy(&bytes()).into_owned(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes()),
    };
    push_event(out, "data", &payload);
}

pub(super) fn push_control(
    out: &mut BytesMut,
    next: StreamOffset,
    closed: bool,
    up_to_date: bool,
    cursor: Option<&str>,
) {
    let mut control = serde_json::Map::new();
    control.insert("streamNextOffset".into(), next.to_string().into());
    if closed {
        control.insert("streamClosed".into(), true.into());
    } else {
        if let Some(cursor) = cursor {
            control.insert("streamCursor".into(), cursor.into());
        }
        if up_to_date {
            control.insert("upToDate".into(), true.into());
        }
    }
    push_event(
        out,
        "control",
        &serde_json::Value::Object(control).to_string(),
    );
}

/// `live=sse`: catch-up, then the live tail, as `data` and `control` events; ends after the
/// final control event of a closed stream, or when the server shuts down.
fn sse(state: &AppState, path: &str, info: StreamInfo, query: &ReadQuery) -> Response {
    let encoding = if is_json(&info) {
        Encoding::Json
    } else if media_type(&info.content_type).starts_with("text/") {
        Encoding::Text
    } else {
        Encoding::Base64
    };
    let start = match query.start {
        Start::Beginning => StreamOffset::ZERO,
        Start::Now => info.tail,
        Start::After(offset) => offset.min(info.tail),
    };
    let streams = state.engine.streams().clone();
    let path = path.to_owned();
    let client_cursor = query.cursor.clone();
    let timeout = state.config.stream_long_poll;
    let shutdown = state.shutdown.clone();
    // Ended after a while (the client reconnects from its last offset), so that caches and
    // proxies in front see fresh requests, as the protocol asks.
    let ends = tokio::time::Instant::now() + state.config.stream_sse_lifetime;
    let events = futures::stream::unfold(
        Some((info, start, None)),
        move |state: Option<SseState>| {
            let streams = streams.clone();
            let path = path.clone();
            let client_cursor = client_cursor.clone();
            let shutdown = shutdown.clone();
            async move {
                let (info, after, wait_past) = state?;
                let left = ends.saturating_duration_since(tokio::time::Instant::now());
                let step = tokio::select! {
                    step = sse_step(&streams, &path, info, after, wait_past, timeout.min(left), encoding, client_cursor.as_deref()) => step,
                    () = shutdown.cancelled() => return None,
                };
                match step {
                    Ok((chunk, next)) => {
                        let next = next.filter(|_| tokio::time::Instant::now() < ends);
                        Some((Ok::<Bytes, std::io::Error>(chunk), next))
                    }
                    Err(error) => {
                        tracing::debug!(%error, "an SSE stream read ended");
                        None
                    }
                }
            }
        },
    )
    .boxed();
    let mut response = Response::new(Body::from_stream(events));
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if matches!(encoding, Encoding::Base64) {
        out.insert(SSE_ENCODING, value("base64"));
    }
    response
}

/// One step of an SSE stream: what is there after `after` (waiting first when the last step
/// left the reader at the tail), as events; the state of the next step, `None` at the end.
#[allow(clippy::too_many_arguments)]
async fn sse_step(
    streams: &Streams,
    path: &str,
    mut info: StreamInfo,
    after: StreamOffset,
    wait_past: Option<StreamOffset>,
    timeout: Duration,
    encoding: Encoding,
    client_cursor: Option<&str>,
) -> Result<(Bytes, Option<SseState>), StreamError> {
    let mut out = BytesMut::new();
    if let Some(past) = wait_past {
        let waited = streams.wait(path, past, timeout).await?;
        info = waited.info;
        streams.touch(&info).await?;
        if waited.timed_out && !info.closed {
            // A keepalive that also tells caches where the reader is.
            let cursor = cursor::respond(client_cursor);
            push_control(&mut out, after, false, after >= info.tail, Some(&cursor));
            return Ok((out.freeze(), Some((info, after, Some(past)))));
        }
    }
    let mut messages = streams.read(&info, after, READ_CHUNK_BYTES).await?;
    if messages.is_empty() && after < info.tail {
        // Nothing where `info` says messages are: the stream was deleted (or replaced) since.
        // Its state now decides; an error ends the stream rather than loop on an empty read.
        let now = streams.get(path).await?;
        if now.id != info.id {
            return Err(StreamError::NotFound);
        }
        info = now;
        messages = streams.read(&info, after, READ_CHUNK_BYTES).await?;
    }
    let mut must_wait = false;
    if matches!(encoding, Encoding::Text) {
        must_wait = keep_whole_characters(streams, &info, &mut messages).await?;
    }
    if !messages.is_empty() {
        push_data(&mut out, encoding, &messages);
    }
    let next = messages.last().map_or(after, |m| m.offset);
    let at_tail = next >= info.tail;
    if info.closed && at_tail {
        push_control(&mut out, next, true, false, None);
        return Ok((out.freeze(), None));
    }
    let cursor = cursor::respond(client_cursor);
    push_control(&mut out, next, false, at_tail, Some(&cursor));
    let wait_past = if at_tail {
        Some(next)
    } else if must_wait {
        Some(info.tail)
    } else {
        None
    };
    Ok((out.freeze(), Some((info, next, wait_past))))
}

/// The state between two SSE steps: the stream, the reader's offset, and the tail it waits to
/// see passed before reading again (`None`: read at once).
type SseState = (StreamInfo, StreamOffset, Option<StreamOffset>);

/// Drops from `messages` the last ones that end inside a character (a character split across
/// appends goes out whole, with the append that ends it), first reading on past the chunk when
/// not one of them ends on a boundary; whether the reader must wait for an append before what
/// was held back can go out (nothing stored completes it yet). At the end of a closed stream
/// nothing can complete them: they go out as they are.
async fn keep_whole_characters(
    streams: &Streams,
    info: &StreamInfo,
    messages: &mut Vec<StreamMessage>,
) -> Result<bool, StreamError> {
    /// How much more a step reads to find the end of a split character.
    const READ_ON_BYTES: usize = 64 << 10;
    loop {
        let Some(last) = messages.last().map(|m| m.offset) else {
            return Ok(false);
        };
        if info.closed && last >= info.tail {
            return Ok(false);
        }
        let whole = whole_characters(messages);
        if whole == messages.len() {
            return Ok(false);
        }
        if whole > 0 || last >= info.tail {
            messages.truncate(whole);
            // What completes the held-back character may be stored already (this chunk ended
            // mid-character, before the tail): then the next step reads on at once.
            return Ok(last >= info.tail);
        }
        let more = streams.read(info, last, READ_ON_BYTES).await?;
        if more.is_empty() {
            messages.clear();
            return Ok(true);
        }
        messages.extend(more);
    }
}

/// How many of `messages`, from the first, end on a character boundary of their text (or hold
/// bytes that are no UTF-8 at all, which no later append can mend).
fn whole_characters(messages: &[StreamMessage]) -> usize {
    let mut bytes = Vec::new();
    let mut ends = Vec::with_capacity(messages.len());
    for message in messages {
        bytes.extend_from_slice(&message.data);
        ends.push(bytes.len());
    }
    let mut count = messages.len();
    while count > 0 {
        match std::str::from_utf8(&bytes[..ends[count - 1]]) {
            Ok(_) => return count,
            Err(error) if error.error_len().is_some() => return count,
            Err(_) => count -= 1,
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str) -> String {
        let mut out = BytesMut::new();
        push_event(&mut out, "data", payload);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn every_line_of_a_payload_is_a_data_line() {
        assert_eq!(event("a"), "event: data\ndata:a\n\n");
        assert_eq!(
            event("a\r\nevent: x\rdata: y\nz"),
            "event: data\ndata:a\ndata:event: x\ndata:data: y\ndata:z\n\n"
        );
        assert_eq!(event(""), "event: data\ndata:\n\n");
    }

    #[test]
    fn queries_are_checked() {
        assert!(parse_query(Some("offset=")).is_err());
        assert!(parse_query(Some("offset=1_1&offset=1_2")).is_err());
        assert!(parse_query(Some("offset=1,2")).is_err());
        assert!(parse_query(Some("live=sse")).is_err());
        let query = parse_query(Some("offset=now&live=long-poll&x=y")).unwrap();
        assert_eq!((query.start, query.live), (Start::Now, Live::LongPoll));
        assert_eq!(parse_query(None).unwrap().start, Start::Beginning);
    }
}
