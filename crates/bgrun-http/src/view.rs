//! How runs look on the wire.

use bgrun_core::{RunKind, RunRecord};
use serde_json::{json, Map, Value};

/// The `{agent|team|workflow}_id` key of a kind.
pub(crate) fn component_key(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Agent => "agent_id",
        RunKind::Team => "team_id",
        RunKind::Workflow => "workflow_id",
    }
}

/// A run as GET answers it: every field present, `null` when it has no value.
pub(crate) fn run_json(run: &RunRecord) -> Value {
    let mut object = Map::with_capacity(14);
    object.insert("run_id".into(), json!(run.run_id));
    object.insert("session_id".into(), json!(run.session_id));
    object.insert("user_id".into(), json!(run.user_id));
    object.insert(
        component_key(run.target.kind).into(),
        json!(run.target.component_id),
    );
    object.insert("status".into(), json!(run.status));
    object.insert("content".into(), json!(run.content));
    object.insert("error".into(), json!(run.error));
    object.insert("cancellation_stage".into(), json!(run.cancellation_stage));
    object.insert("parent_run_id".into(), json!(run.parent_run_id));
    object.insert(
        "metadata".into(),
        run.metadata.clone().unwrap_or(Value::Null),
    );
    object.insert("created_at".into(), json!(run.created_at));
    object.insert("updated_at".into(), json!(run.updated_at));
    object.insert("last_event_index".into(), json!(run.last_event_index));
    Value::Object(object)
}
