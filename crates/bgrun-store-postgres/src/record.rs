//! Rows of the `runs` table to and from [`RunRecord`]s.

use bgrun_core::{
    CancellationStage, InvalidInput, RunId, RunKind, RunRecord, RunStatus, RunTarget, SessionId,
    StoreError,
};
use serde_json::{Map, Value};
use tokio_postgres::Row;

/// The columns [`from_row`] reads, in a form to paste after `SELECT` or `RETURNING`.
pub(crate) const RUN_COLUMNS: &str = "run_id, session_id, user_id, kind, component_id, \
    parent_run_id, status, input, params, content, error, cancellation_stage, metadata, \
    created_at, updated_at, last_event_index";

/// `text` as a `text` column can hold it: PostgreSQL's holds no NUL character, which becomes
/// U+FFFD. For what components produce (a run's content, its error): refusing it would leave
/// the run unable to end. (What clients send is checked before it gets here.)
pub(crate) fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Decodes a row holding [`RUN_COLUMNS`].
pub(crate) fn from_row(row: &Row) -> Result<RunRecord, StoreError> {
    decode(row).map_err(|error| StoreError::backend("decoding a stored run", error))
}

fn decode(row: &Row) -> Result<RunRecord, Box<dyn std::error::Error + Send + Sync>> {
    let params: String = row.try_get("params")?;
    let params: Map<String, Value> = serde_json::from_str(&params)?;
    let metadata: Option<String> = row.try_get("metadata")?;
    let metadata: Option<Value> = metadata.as_deref().map(serde_json::from_str).transpose()?;
    let parent: Option<String> = row.try_get("parent_run_id")?;
    let stage: Option<String> = row.try_get("cancellation_stage")?;
    let last: Option<i64> = row.try_get("last_event_index")?;
    Ok(RunRecord {
        run_id: RunId::parse(row.try_get::<_, String>("run_id")?)?,
        session_id: SessionId::parse(row.try_get::<_, String>("session_id")?)?,
        user_id: row.try_get("user_id")?,
        target: RunTarget::new(
            RunKind::parse(row.try_get("kind")?)?,
            row.try_get::<_, String>("component_id")?,
        ),
        parent_run_id: parent.map(RunId::parse).transpose()?,
        status: RunStatus::parse(row.try_get("status")?)?,
        input: row.try_get("input")?,
        params,
        content: row.try_get("content")?,
        error: row.try_get("error")?,
        cancellation_stage: stage.as_deref().map(CancellationStage::parse).transpose()?,
        metadata,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_event_index: last.map(to_index).transpose()?,
    })
}

/// An `event_index` as stored (BIGINT) to the model's `u64`.
pub(crate) fn to_index(stored: i64) -> Result<u64, InvalidInput> {
    u64::try_from(stored).map_err(|_| InvalidInput::new(format!("negative event_index {stored}")))
}

/// An `event_index` to its stored form; indices past `i64::MAX` cannot be stored.
pub(crate) fn to_stored(index: u64) -> Result<i64, StoreError> {
    i64::try_from(index).map_err(|_| {
        StoreError::backend(
            "storing an event",
            InvalidInput::new(format!("event_index {index} is too large for PostgreSQL")),
        )
    })
}
