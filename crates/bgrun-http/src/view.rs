//! How runs look on the wire.

use bgrun_core::{RunKind, RunRecord};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// The `{agent|team|workflow}_id` key of a kind.
pub(crate) fn component_key(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Agent => "agent_id",
        RunKind::Team => "team_id",
        RunKind::Workflow => "workflow_id",
    }
}

/// A run as GET answers it: every field present, `null` when it has no value. Serialized
/// straight from the record, in this order, with no JSON tree built first.
pub(crate) struct RunView(pub(crate) RunRecord);

impl Serialize for RunView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let run = &self.0;
        let mut map = serializer.serialize_map(Some(13))?;
        map.serialize_entry("run_id", &run.run_id)?;
        map.serialize_entry("session_id", &run.session_id)?;
        map.serialize_entry("user_id", &run.user_id)?;
        map.serialize_entry(component_key(run.target.kind), &run.target.component_id)?;
        map.serialize_entry("status", &run.status)?;
        map.serialize_entry("content", &run.content)?;
        map.serialize_entry("error", &run.error)?;
        map.serialize_entry("cancellation_stage", &run.cancellation_stage)?;
        map.serialize_entry("parent_run_id", &run.parent_run_id)?;
        map.serialize_entry("metadata", &run.metadata)?;
        map.serialize_entry("created_at", &run.created_at)?;
        map.serialize_entry("updated_at", &run.updated_at)?;
        map.serialize_entry("last_event_index", &run.last_event_index)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bgrun_core::{CancellationStage, NewRun, RunId, RunStatus, RunTarget};
    use serde_json::json;

    use super::*;

    #[test]
    fn a_run_is_every_field_in_the_contracts_order() {
        let mut new = NewRun::new(RunTarget::new(RunKind::Team, "research"), "hi");
        new.run_id = RunId::parse("r1").unwrap();
        new.parent_run_id = Some(RunId::parse("p1").unwrap());
        new.metadata = Some(json!({"k": [1, "two"]}));
        let mut run = new.into_record();
        run.status = RunStatus::Cancelled;
        run.cancellation_stage = Some(CancellationStage::Executing);
        run.content = Some("partial \"quoted\"".into());
        run.last_event_index = Some(7);
        let expected = format!(
            r#"{{"run_id":"r1","session_id":"{}","user_id":null,"team_id":"research","status":"CANCELLED","content":"partial \"quoted\"","error":null,"cancellation_stage":"EXECUTING","parent_run_id":"p1","metadata":{{"k":[1,"two"]}},"created_at":{},"updated_at":{},"last_event_index":7}}"#,
            run.session_id.as_str(),
            run.created_at,
            run.updated_at
        );
        assert_eq!(
            serde_json::to_string(&RunView(run.clone())).unwrap(),
            expected
        );

        let pending = NewRun::new(RunTarget::new(RunKind::Agent, "echo"), "x").into_record();
        let text = serde_json::to_string(&RunView(pending)).unwrap();
        assert!(
            text.contains(r#","agent_id":"echo","status":"PENDING","content":null,"#),
            "{text}"
        );
        assert!(text.contains(r#""metadata":null,"#), "{text}");
        assert!(text.ends_with(r#""last_event_index":null}"#), "{text}");
    }
}
