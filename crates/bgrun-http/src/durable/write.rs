//! Writes: `PUT` creates (or forks), `POST` appends or closes, `DELETE` deletes.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bgrun_core::stream::{AppendOutcome, ProducerClaim, StreamExpiry, StreamOffset};
use bgrun_exec::streams::{AppendStream, CreateStream, ForkRequest};

use super::{
    bad_request, check_path, is_canonical_number, text, value, CLOSED, EXPIRES_AT, FORKED_FROM,
    FORK_OFFSET, FORK_SUB_OFFSET, MAX_PRODUCER_ID_BYTES, NEXT_OFFSET, PREFIX, PRODUCER_EPOCH,
    PRODUCER_EXPECTED_SEQ, PRODUCER_ID, PRODUCER_RECEIVED_SEQ, PRODUCER_SEQ, SEQ, TTL,
};
use crate::error::{ApiError, ApiResult};
use crate::forms::read_limited;
use crate::state::AppState;

/// The largest integer a producer header may carry (clients in JavaScript count in doubles).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// `PUT`: create a stream, fork one, or confirm one created alike.
pub(super) async fn create(
    state: &AppState,
    path: &str,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    // The source as a path of this server, percent-decoded like the request's own path.
    let forked_from = match headers.get(&FORKED_FROM) {
        None => None,
        Some(value) => {
            let raw = value
                .to_str()
                .map_err(|_| bad_request("invalid Stream-Forked-From: not text"))?;
            let decoded = percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| bad_request("invalid Stream-Forked-From: not UTF-8"))?;
            // `/v1/stream/a` names `a`; `/v1/streamer/a` names no stream under the prefix.
            let source = decoded
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.strip_prefix('/'))
                .map_or(&*decoded, |rest| rest.trim_start_matches('/'))
                .to_owned();
            check_path(&source)?;
            Some(source)
        }
    };
    let content_type = match text(headers, &header::CONTENT_TYPE).map(str::trim) {
        None | Some("") => None,
        Some(content_type) if is_media_type(content_type) => Some(content_type.to_owned()),
        Some(_) => {
            return Err(bad_request(
                "invalid Content-Type: a media type such as text/plain",
            ))
        }
    };
    let expiry = expiry(headers)?;
    let fork_offset = match text(headers, &FORK_OFFSET) {
        None => None,
        Some(offset) => Some(
            StreamOffset::parse(offset).map_err(|_| bad_request("invalid Stream-Fork-Offset"))?,
        ),
    };
    let sub_offset = match text(headers, &FORK_SUB_OFFSET) {
        None if headers.contains_key(&FORK_SUB_OFFSET) => {
            return Err(bad_request("invalid Stream-Fork-Sub-Offset"))
        }
        None => None,
        Some(_) if forked_from.is_none() => {
            return Err(bad_request(
                "Stream-Fork-Sub-Offset needs Stream-Forked-From",
            ))
        }
        Some(sub) if !is_canonical_number(sub) => {
            return Err(bad_request("invalid Stream-Fork-Sub-Offset"))
        }
        Some(sub) => Some(
            sub.parse::<u64>()
                .map_err(|_| bad_request("invalid Stream-Fork-Sub-Offset"))?,
        ),
    };
    if sub_offset.is_some_and(|sub| sub > 0) && fork_offset.is_none() {
        return Err(bad_request(
            "a Stream-Fork-Sub-Offset above 0 needs Stream-Fork-Offset",
        ));
    }
    if fork_offset.is_some() && forked_from.is_none() {
        return Err(bad_request("Stream-Fork-Offset needs Stream-Forked-From"));
    }
    let fork = forked_from.map(|source| ForkRequest {
        source,
        offset: fork_offset,
        sub_offset: sub_offset.unwrap_or(0),
    });
    let body = read_limited(headers, body, state.config.stream_body_limit).await?;
    let created = state
        .engine
        .streams()
        .create(CreateStream {
            path: path.to_owned(),
            content_type,
            expiry,
            closed: text(headers, &CLOSED) == Some("true"),
            fork,
            body,
        })
        .await?;
    let info = created.info;
    let mut response = if created.created {
        let mut response = StatusCode::CREATED.into_response();
        response
            .headers_mut()
            .insert(header::LOCATION, value(location(headers, uri)));
        response
    } else {
        StatusCode::OK.into_response()
    };
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, value(&info.content_type));
    out.insert(NEXT_OFFSET, value(info.tail.to_string()));
    if info.closed {
        out.insert(CLOSED, value("true"));
    }
    Ok(response)
}

/// The absolute URL of the stream the request created: its own (percent-encoded) path on the
/// host it reached (`Host`, or over HTTP/2 the request's authority).
fn location(headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    let host = text(headers, &header::HOST)
        .or_else(|| uri.authority().map(|authority| authority.as_str()))
        .unwrap_or("localhost");
    let scheme = text(
        headers,
        &header::HeaderName::from_static("x-forwarded-proto"),
    )
    .filter(|scheme| matches!(*scheme, "http" | "https"))
    .unwrap_or("http");
    format!("{scheme}://{host}{}", uri.path())
}

/// Whether a `Content-Type` names a media type (`type/subtype`, parameters allowed).
fn is_media_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    essence
        .split_once('/')
        .is_some_and(|(kind, sub)| token(kind) && token(sub))
}

/// `Stream-TTL` or `Stream-Expires-At` (not both).
fn expiry(headers: &HeaderMap) -> ApiResult<Option<StreamExpiry>> {
    match (text(headers, &TTL), text(headers, &EXPIRES_AT)) {
        (Some(_), Some(_)) => Err(bad_request(
            "give Stream-TTL or Stream-Expires-At, not both",
        )),
        (Some(ttl), None) => {
            let secs = Some(ttl)
                .filter(|ttl| is_canonical_number(ttl))
                .and_then(|ttl| ttl.parse::<u64>().ok())
                .ok_or_else(|| bad_request("invalid Stream-TTL: seconds, as a whole number"))?;
            Ok(Some(StreamExpiry::Ttl { secs }))
        }
        (None, Some(at)) => {
            let parsed =
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| bad_request("invalid Stream-Expires-At: an RFC 3339 timestamp"))?;
            let millis = i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)
                .map_err(|_| bad_request("Stream-Expires-At is out of range"))?;
            Ok(Some(StreamExpiry::At {
                text: at.to_owned(),
                at: millis,
            }))
        }
        (None, None) if headers.contains_key(&TTL) || headers.contains_key(&EXPIRES_AT) => {
            Err(bad_request("invalid Stream-TTL or Stream-Expires-At"))
        }
        (None, None) => Ok(None),
    }
}

/// The producer headers: all three or none.
fn producer(headers: &HeaderMap) -> ApiResult<Option<ProducerClaim>> {
    let present = [&PRODUCER_ID, &PRODUCER_EPOCH, &PRODUCER_SEQ].map(|h| headers.contains_key(h));
    if present == [false; 3] {
        return Ok(None);
    }
    if present != [true; 3] {
        return Err(bad_request(
            "Producer-Id, Producer-Epoch and Producer-Seq go together",
        ));
    }
    let id = text(headers, &PRODUCER_ID)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| bad_request("invalid Producer-Id: must not be empty"))?;
    if id.len() > MAX_PRODUCER_ID_BYTES {
        return Err(bad_request(format!(
            "invalid Producer-Id: at most {MAX_PRODUCER_ID_BYTES} bytes"
        )));
    }
    let number = |name, what: &str| {
        text(headers, name)
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n <= MAX_SAFE_INTEGER)
            .ok_or_else(|| bad_request(format!("invalid {what}: a non-negative integer")))
    };
    Ok(Some(ProducerClaim {
        id: id.to_owned(),
        epoch: number(&PRODUCER_EPOCH, "Producer-Epoch")?,
        seq: number(&PRODUCER_SEQ, "Producer-Seq")?,
    }))
}

/// `POST`: append a message, close the stream, or both.
pub(super) async fn append(
    state: &AppState,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let producer = producer(headers)?;
    let close = text(headers, &CLOSED) == Some("true");
    let body = read_limited(headers, body, state.config.stream_body_limit).await?;
    if body.is_empty() && !close {
        return Err(bad_request("an append needs a body"));
    }
    let content_type = text(headers, &header::CONTENT_TYPE).map(str::to_owned);
    if !body.is_empty() && content_type.is_none() {
        return Err(bad_request("an append needs a Content-Type"));
    }
    let close_only = body.is_empty();
    let epoch = producer.as_ref().map(|claim| claim.epoch);
    let seq = producer.as_ref().map(|claim| claim.seq);
    let has_producer = producer.is_some();
    let outcome = state
        .engine
        .streams()
        .append(
            path,
            AppendStream {
                body,
                content_type,
                producer,
                stream_seq: text(headers, &SEQ).map(str::to_owned),
                close,
            },
        )
        .await?;
    let mut out = HeaderMap::new();
    let status = match outcome {
        AppendOutcome::Appended { tail, closed } => {
            out.insert(NEXT_OFFSET, value(tail.to_string()));
            if closed {
                out.insert(CLOSED, value("true"));
            }
            if let (Some(epoch), Some(seq)) = (epoch, seq) {
                out.insert(PRODUCER_EPOCH, value(epoch.to_string()));
                out.insert(PRODUCER_SEQ, value(seq.to_string()));
            }
            if has_producer && !close_only {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            }
        }
        AppendOutcome::Duplicate {
            tail,
            last_seq,
            closed,
        } => {
            out.insert(NEXT_OFFSET, value(tail.to_string()));
            if closed {
                out.insert(CLOSED, value("true"));
            }
            if let Some(epoch) = epoch {
                out.insert(PRODUCER_EPOCH, value(epoch.to_string()));
            }
            out.insert(PRODUCER_SEQ, value(last_seq.to_string()));
            StatusCode::NO_CONTENT
        }
        AppendOutcome::Closed { tail } => {
            out.insert(NEXT_OFFSET, value(tail.to_string()));
            out.insert(CLOSED, value("true"));
            if close_only && !has_producer {
                // Closing a closed stream changes nothing: success.
                StatusCode::NO_CONTENT
            } else {
                return Ok(refused(StatusCode::CONFLICT, "the stream is closed", out));
            }
        }
        AppendOutcome::StaleEpoch { current_epoch } => {
            out.insert(PRODUCER_EPOCH, value(current_epoch.to_string()));
            return Ok(refused(
                StatusCode::FORBIDDEN,
                "stale producer epoch: a newer epoch of this producer has written",
                out,
            ));
        }
        AppendOutcome::InvalidEpochSeq => {
            return Err(bad_request(
                "a new producer epoch must start at Producer-Seq 0",
            ))
        }
        AppendOutcome::SequenceGap { expected, received } => {
            out.insert(PRODUCER_EXPECTED_SEQ, value(expected.to_string()));
            out.insert(PRODUCER_RECEIVED_SEQ, value(received.to_string()));
            return Ok(refused(StatusCode::CONFLICT, "producer sequence gap", out));
        }
        AppendOutcome::SeqConflict => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Stream-Seq must sort after the stream's last one",
            ))
        }
        AppendOutcome::ContentTypeMismatch => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "the Content-Type is not the stream's",
            ))
        }
        AppendOutcome::NotFound => return Err(ApiError::not_found("stream not found")),
        AppendOutcome::Gone => return Err(ApiError::new(StatusCode::GONE, "stream is gone")),
    };
    Ok((status, out).into_response())
}

/// An error answer that carries protocol headers.
fn refused(status: StatusCode, detail: &str, headers: HeaderMap) -> Response {
    let mut response = ApiError::new(status, detail).into_response();
    response.headers_mut().extend(headers);
    response
}

/// `DELETE`.
pub(super) async fn delete(state: &AppState, path: &str) -> ApiResult<Response> {
    state.engine.streams().delete(path).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
