//! `GET /{kind}/{id}/runs/{run_id}` and `GET /{kind}/{id}/runs`: reading runs.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use bgrun_core::{RunFilter, RunId, RunRecord, RunStatus, RunTarget, SessionId};
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::forms::{parse_urlencoded, Fields};
use crate::state::AppState;
use crate::view::RunView;

/// The most runs one page holds.
const MAX_LIMIT: i64 = 100;
/// The runs of a page when `limit` is not sent.
const DEFAULT_LIMIT: usize = 20;

fn query_fields(query: Option<&str>) -> ApiResult<Fields> {
    parse_urlencoded(query.unwrap_or("").as_bytes())
}

/// The run `run_id` of `target`, else 404.
pub(crate) async fn find_run(
    state: &AppState,
    target: &RunTarget,
    run_id: &str,
) -> ApiResult<RunRecord> {
    let not_found = || ApiError::not_found(format!("run {run_id:?} not found"));
    let Ok(run_id) = RunId::parse(run_id) else {
        return Err(not_found());
    };
    match state.engine.get_run(&run_id).await? {
        Some(run) if &run.target == target => Ok(run),
        _ => Err(not_found()),
    }
}

/// `GET /{kind}/{id}/runs/{run_id}`.
pub(crate) async fn get(
    State(state): State<AppState>,
    Path((kind, id, run_id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<RunView>> {
    let target = state.target(&kind, &id)?;
    let mut query = query_fields(query.as_deref())?;
    let session_id = query.string("session_id")?;
    let run = find_run(&state, &target, &run_id).await?;
    if session_id.is_some_and(|session_id| session_id != run.session_id.as_str()) {
        return Err(ApiError::not_found(format!(
            "run {run_id:?} not found in this session"
        )));
    }
    Ok(Json(RunView(run)))
}

/// `GET /{kind}/{id}/runs?session_id=&status=&limit=&cursor=`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Path((kind, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let target = state.target(&kind, &id)?;
    let mut query = query_fields(query.as_deref())?;
    let session_id = query
        .string("session_id")?
        .map(SessionId::parse)
        .transpose()?;
    let status = query
        .string("status")?
        .map(|status| RunStatus::parse(&status))
        .transpose()?;
    let limit = match query.string("limit")? {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<i64>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => limit as usize,
            _ => {
                return Err(ApiError::invalid(format!(
                    "limit must be an integer in 1..={MAX_LIMIT}"
                )))
            }
        },
    };
    let cursor = query.string("cursor")?;
    let filter = RunFilter {
        session_id,
        status,
        target: Some(target),
        parent_run_id: None,
    };
    let page = state
        .engine
        .list_runs(&filter, limit, cursor.as_deref())
        .await
        .map_err(|error| match error {
            bgrun_exec::EngineError::Store(bgrun_core::StoreError::InvalidCursor(detail)) => {
                ApiError::invalid(format!("invalid cursor: {detail}"))
            }
            other => ApiError::from(other),
        })?;
    let data: Vec<RunView> = page.runs.into_iter().map(RunView).collect();
    Ok(Json(json!({"data": data, "next_cursor": page.next_cursor})))
}
