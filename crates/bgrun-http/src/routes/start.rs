//! `POST /{kind}/{id}/runs`: start a run, answered in one of four modes.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bgrun_exec::{StartRequest, Started};

use crate::error::{ApiError, ApiResult};
use crate::forms::{read_fields, EmptyBody, StartFields};
use crate::metrics::HttpMetrics;
use crate::sse::{CancelOnDrop, SseStream};
use crate::state::AppState;
use crate::view::RunView;

/// The answer to a background start, written straight from the run (no JSON tree built).
#[derive(serde::Serialize)]
struct Accepted<'a> {
    run_id: &'a bgrun_core::RunId,
    session_id: &'a bgrun_core::SessionId,
    status: bgrun_core::RunStatus,
}

/// The header that makes a repeated start answer for the run it first created.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Starts a run through the engine, counting it.
pub(crate) async fn start_run(state: &AppState, request: StartRequest) -> ApiResult<Started> {
    let started = state.engine.start(request).await?;
    if started.created {
        HttpMetrics::count(&state.metrics.starts);
    }
    Ok(started)
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(value) => {
            // Any string: a header value's bytes, read as UTF-8.
            let key = std::str::from_utf8(value.as_bytes())
                .map_err(|_| ApiError::invalid("Idempotency-Key must be UTF-8 text"))?;
            Ok((!key.is_empty()).then(|| key.to_owned()))
        }
    }
}

/// `POST /{kind}/{id}/runs`.
pub(crate) async fn handler(
    State(state): State<AppState>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let target = state.target(&kind, &id)?;
    let fields = read_fields(&headers, body, state.config.body_limit, EmptyBody::Refused).await?;
    let StartFields {
        stream,
        background,
        mut request,
    } = StartFields::parse(fields, target, true)?;
    request.idempotency_key = idempotency_key(&headers)?;
    let started = start_run(&state, request).await?;
    let run = started.run;
    match (stream, background) {
        (false, true) => Ok((
            StatusCode::ACCEPTED,
            Json(Accepted {
                run_id: &run.run_id,
                session_id: &run.session_id,
                status: run.status,
            }),
        )
            .into_response()),
        (false, false) => {
            let finished = tokio::select! {
                finished = state.engine.wait(&run.run_id) => finished?,
                _ = state.shutdown.cancelled() => state
                    .engine
                    .get_run(&run.run_id)
                    .await?
                    .unwrap_or(run),
            };
            Ok(Json(RunView(finished)).into_response())
        }
        (true, background) => {
            HttpMetrics::count(&state.metrics.streams);
            let guard = (!background && started.created)
                .then(|| CancelOnDrop::new(state.engine.clone(), run.run_id.clone()));
            Ok(SseStream {
                prefix: Vec::new(),
                events: Some(state.engine.events(&run.run_id, None)),
                run_id: run.run_id,
                kind: run.target.kind,
                guard,
                keepalive: state.config.keepalive,
                shutdown: state.shutdown.clone(),
            }
            .into_response())
        }
    }
}
