//! The Durable Streams protocol under `/v1/stream/{path}`: generic streams kept in the
//! engine's store (create, append, close, delete, HEAD, catch-up, long-poll and SSE reads,
//! idempotent producers, forks, TTLs), and every run readable as a JSON stream at
//! `/v1/stream/runs/{run_id}`.
//!
//! Errors keep bgrun's `{"detail": ...}` body; the protocol's status codes and headers are the
//! contract.

mod cursor;
mod read;
mod runs;
mod write;

use axum::body::Body;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use bgrun_exec::streams::StreamError;

use crate::error::ApiError;
use crate::state::AppState;

/// The longest stream path accepted, in bytes (PostgreSQL indexes the path; an index entry has
/// a size limit far above this).
pub(crate) const MAX_PATH_BYTES: usize = 1024;
/// The longest `Producer-Id` accepted, in bytes (indexed too).
pub(crate) const MAX_PRODUCER_ID_BYTES: usize = 256;

/// Where the protocol's streams live.
pub(crate) const PREFIX: &str = "/v1/stream";
/// The path prefix of runs read as streams.
const RUNS: &str = "runs/";

pub(crate) const NEXT_OFFSET: HeaderName = HeaderName::from_static("stream-next-offset");
pub(crate) const UP_TO_DATE: HeaderName = HeaderName::from_static("stream-up-to-date");
pub(crate) const CURSOR: HeaderName = HeaderName::from_static("stream-cursor");
pub(crate) const CLOSED: HeaderName = HeaderName::from_static("stream-closed");
pub(crate) const SEQ: HeaderName = HeaderName::from_static("stream-seq");
pub(crate) const TTL: HeaderName = HeaderName::from_static("stream-ttl");
pub(crate) const EXPIRES_AT: HeaderName = HeaderName::from_static("stream-expires-at");
pub(crate) const FORKED_FROM: HeaderName = HeaderName::from_static("stream-forked-from");
pub(crate) const FORK_OFFSET: HeaderName = HeaderName::from_static("stream-fork-offset");
pub(crate) const FORK_SUB_OFFSET: HeaderName = HeaderName::from_static("stream-fork-sub-offset");
pub(crate) const SSE_ENCODING: HeaderName = HeaderName::from_static("stream-sse-data-encoding");
pub(crate) const PRODUCER_ID: HeaderName = HeaderName::from_static("producer-id");
pub(crate) const PRODUCER_EPOCH: HeaderName = HeaderName::from_static("producer-epoch");
pub(crate) const PRODUCER_SEQ: HeaderName = HeaderName::from_static("producer-seq");
pub(crate) const PRODUCER_EXPECTED_SEQ: HeaderName =
    HeaderName::from_static("producer-expected-seq");
pub(crate) const PRODUCER_RECEIVED_SEQ: HeaderName =
    HeaderName::from_static("producer-received-seq");

/// The routes, with their own auth (preflights pass) inside the protocol's headers, so that
/// a 401 carries them too.
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/stream/{*path}", any(dispatch))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_key_but_preflight,
        ))
        .layer(axum::middleware::map_response(protocol_headers))
}

/// 405, saying which methods the path has.
pub(crate) fn method_not_allowed(allow: &'static str, detail: &str) -> Response {
    let mut response = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, detail).into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// One handler for every method: the protocol's method set (and its 405) is its own.
async fn dispatch(
    State(state): State<AppState>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method == Method::OPTIONS {
        return StatusCode::NO_CONTENT.into_response();
    }
    if let Err(error) = check_path(&path) {
        return error.into_response();
    }
    if let Some(run_id) = path.strip_prefix(RUNS) {
        return runs::handle(&state, &method, run_id, query.as_deref(), &headers).await;
    }
    let result = match method {
        Method::PUT => write::create(&state, &path, &uri, &headers, body).await,
        Method::POST => write::append(&state, &path, &headers, body).await,
        Method::DELETE => write::delete(&state, &path).await,
        Method::HEAD => read::head(&state, &path).await,
        Method::GET => read::get(&state, &path, query.as_deref(), &headers).await,
        _ => Ok(method_not_allowed(
            "GET, HEAD, POST, PUT, DELETE, OPTIONS",
            "Method Not Allowed",
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// What browsers need on every response of the protocol (errors included): CORS, and no
/// content sniffing.
async fn protocol_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");
    set(
        headers,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        "GET, POST, PUT, DELETE, HEAD, OPTIONS",
    );
    set(
        headers,
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        "content-type, authorization, if-none-match, stream-seq, stream-ttl, stream-expires-at, \
         stream-closed, producer-id, producer-epoch, producer-seq, stream-forked-from, \
         stream-fork-offset, stream-fork-sub-offset",
    );
    set(
        headers,
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        "stream-next-offset, stream-cursor, stream-up-to-date, stream-closed, producer-epoch, \
         producer-seq, producer-expected-seq, producer-received-seq, stream-sse-data-encoding, \
         stream-ttl, stream-expires-at, etag, content-type, location",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        headers,
        HeaderName::from_static("cross-origin-resource-policy"),
        "cross-origin",
    );
    response
}

/// The answer to a stream error.
impl From<StreamError> for ApiError {
    fn from(error: StreamError) -> Self {
        let status = match &error {
            StreamError::NotFound | StreamError::SourceNotFound => StatusCode::NOT_FOUND,
            StreamError::Gone => StatusCode::GONE,
            StreamError::Conflict
            | StreamError::PathGone
            | StreamError::SourceGone
            | StreamError::ContentTypeMismatch => StatusCode::CONFLICT,
            StreamError::ForkOffsetBeyondTail
            | StreamError::ForkTooDeep
            | StreamError::InvalidSubOffset(_)
            | StreamError::InvalidJson(_)
            | StreamError::EmptyJsonArray => StatusCode::BAD_REQUEST,
            StreamError::Unsupported => StatusCode::NOT_IMPLEMENTED,
            _ => {
                // The store's own words stay in the log, not in the answer.
                tracing::error!(%error, "a durable stream operation failed");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the stream store failed; retry (an idempotent producer's retry is safe)",
                );
            }
        };
        ApiError::new(status, error.to_string())
    }
}

/// A stream path is at most [`MAX_PATH_BYTES`] and holds no control characters (PostgreSQL
/// text cannot hold NUL; no client means one).
pub(crate) fn check_path(path: &str) -> Result<(), ApiError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(bad_request(format!(
            "a stream path is at most {MAX_PATH_BYTES} bytes"
        )));
    }
    if path.chars().any(char::is_control) {
        return Err(bad_request("a stream path holds no control characters"));
    }
    Ok(())
}

/// 400 with `detail`.
pub(crate) fn bad_request(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, detail)
}

/// A header's value as text, if present (and text).
pub(crate) fn text<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// A header value from text this module made (offsets, numbers, content types it accepted).
pub(crate) fn value(text: impl AsRef<str>) -> HeaderValue {
    HeaderValue::from_str(text.as_ref()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether `text` is a decimal number without sign or leading zeros (`0`, `17`).
pub(crate) fn is_canonical_number(text: &str) -> bool {
    text == "0"
        || (!text.is_empty() && !text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit()))
}
