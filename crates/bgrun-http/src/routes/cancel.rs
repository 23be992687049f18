//! `POST /{kind}/{id}/runs/{run_id}/cancel`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use bgrun_core::{RunId, RunStatus, RunTarget};
use bgrun_exec::CancelOutcome;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::forms::{read_fields, EmptyBody};
use crate::state::AppState;

/// Cancels `run_id` unless it is a run of another component (404). An unknown id records the
/// intent (cancel before start); an id no run can have (no valid run id) is answered as an
/// unknown one, with nothing to record.
pub(crate) async fn cancel_run(
    state: &AppState,
    target: &RunTarget,
    run_id: &str,
) -> ApiResult<Value> {
    let Ok(run_id) = RunId::parse(run_id) else {
        return Ok(json!({"run_id": run_id, "status": RunStatus::Cancelled, "cancelled": true}));
    };
    if let Some(run) = state
        .engine
        .store()
        .get_run(&run_id)
        .await
        .map_err(bgrun_exec::EngineError::from)?
    {
        if &run.target != target {
            return Err(ApiError::not_found(format!("run {run_id} not found")));
        }
    }
    Ok(outcome_json(&state.engine.cancel(&run_id).await?))
}

/// The JSON of a cancel's answer.
fn outcome_json(outcome: &CancelOutcome) -> Value {
    json!({"run_id": outcome.run_id, "status": outcome.status, "cancelled": outcome.cancelled})
}

/// `POST /{kind}/{id}/runs/{run_id}/cancel`.
pub(crate) async fn handler(
    State(state): State<AppState>,
    Path((kind, id, run_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let target = state.target(&kind, &id)?;
    read_fields(&headers, body, state.config.body_limit, EmptyBody::Allowed).await?;
    Ok(Json(cancel_run(&state, &target, &run_id).await?))
}
