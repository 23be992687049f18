//! `GET /{kind}`: the registered components of a kind.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiResult;
use crate::state::{parse_kind, AppState};

/// `GET /{kind}` → `[{"id", "name", "description"}]`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Path(kind): Path<String>,
) -> ApiResult<Json<Value>> {
    let kind = parse_kind(&kind)?;
    let components: Vec<Value> = state
        .engine
        .registry()
        .list(kind)
        .into_iter()
        .map(|info| json!({"id": info.id, "name": info.name, "description": info.description}))
        .collect();
    Ok(Json(Value::Array(components)))
}
