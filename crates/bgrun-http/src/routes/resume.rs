//! `POST` and `GET /{kind}/{id}/runs/{run_id}/resume`: the meta frames, then exactly the
//! events after `last_event_index`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bgrun_core::{RunId, RunTarget};
use bgrun_exec::{EventStream, MetaFrame, Resume};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::forms::{parse_index, parse_urlencoded, read_fields, EmptyBody, Fields};
use crate::metrics::HttpMetrics;
use crate::sse::SseStream;
use crate::state::AppState;

const LAST_EVENT_ID: &str = "last-event-id";

/// Opens a resume of `run_id` of `target`: a run of another component reads as unknown.
pub(crate) async fn open(
    state: &AppState,
    target: &RunTarget,
    run_id: &RunId,
    last_event_index: Option<u64>,
) -> ApiResult<(Vec<MetaFrame>, Option<EventStream>)> {
    if let Ok(Some(run)) = state.engine.store().get_run(run_id).await {
        if &run.target != target {
            let frame = MetaFrame::Error {
                run_id: run_id.clone(),
                error: format!("run {run_id} not found"),
            };
            return Ok((vec![frame], None));
        }
    }
    let Resume { meta, events } = state.engine.resume(run_id, last_event_index).await?;
    Ok((meta, Some(events)))
}

/// The index a resume starts after: the field (or query parameter), else `Last-Event-ID`.
fn last_event_index(fields: &mut Fields, headers: &HeaderMap) -> ApiResult<Option<u64>> {
    if let Some(index) = fields.index("last_event_index")? {
        return Ok(Some(index));
    }
    match headers.get(LAST_EVENT_ID) {
        None => Ok(None),
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| ApiError::invalid("Last-Event-ID must be an integer"))?
                .trim();
            if text.is_empty() {
                return Ok(None);
            }
            parse_index("Last-Event-ID", &Value::from(text)).map(Some)
        }
    }
}

async fn answer(
    state: AppState,
    kind: &str,
    id: &str,
    run_id: &str,
    mut fields: Fields,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let index = last_event_index(&mut fields, headers)?;
    fields.string("session_id")?;
    let target = state.target(kind, id)?;
    let Ok(run_id) = RunId::parse(run_id) else {
        return Ok(crate::sse::unknown_run(run_id));
    };
    let (meta, events) = open(&state, &target, &run_id, index).await?;
    HttpMetrics::count(&state.metrics.streams);
    Ok(SseStream {
        prefix: meta,
        events,
        run_id,
        kind: target.kind,
        guard: None,
        keepalive: state.config.keepalive,
        shutdown: state.shutdown.clone(),
    }
    .into_response())
}

/// `POST /{kind}/{id}/runs/{run_id}/resume`.
pub(crate) async fn post(
    State(state): State<AppState>,
    Path((kind, id, run_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    state.target(&kind, &id)?;
    let fields = read_fields(&headers, body, state.config.body_limit, EmptyBody::Allowed).await?;
    answer(state, &kind, &id, &run_id, fields, &headers).await
}

/// `GET /{kind}/{id}/runs/{run_id}/resume?last_event_index=`.
pub(crate) async fn get(
    State(state): State<AppState>,
    Path((kind, id, run_id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    state.target(&kind, &id)?;
    let fields = parse_urlencoded(query.unwrap_or_default().as_bytes())?;
    answer(state, &kind, &id, &run_id, fields, &headers).await
}
