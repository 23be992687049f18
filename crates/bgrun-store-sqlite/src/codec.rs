//! Rows to records and back: the column list of `runs`, JSON text for maps, text for enums.

use bgrun_core::{
    CancellationStage, InvalidInput, RunId, RunKind, RunRecord, RunStatus, RunTarget, SessionId,
    StoreError,
};
use rusqlite::types::Type;
use rusqlite::Row;
use serde_json::{Map, Value};

/// The columns [`run_from_row`] reads, in its order, as a literal (for `concat!`).
macro_rules! run_columns {
    () => {
        "run_id, session_id, user_id, kind, component_id, parent_run_id, status, input, params, \
         content, error, cancellation_stage, metadata, created_at, updated_at, last_event_index, \
         seq"
    };
}

/// The columns [`run_from_row`] reads, in its order.
pub(crate) const RUN_COLUMNS: &str = run_columns!();

/// One run by its id, as [`run_from_row`] reads it.
pub(crate) const SELECT_RUN: &str =
    concat!("SELECT ", run_columns!(), " FROM runs WHERE run_id = ?1");

/// [`RUN_COLUMNS`] qualified with the table alias `r`.
pub(crate) const RUN_COLUMNS_R: &str = "r.run_id, r.session_id, r.user_id, r.kind, \
     r.component_id, r.parent_run_id, r.status, r.input, r.params, r.content, r.error, \
     r.cancellation_stage, r.metadata, r.created_at, r.updated_at, r.last_event_index, r.seq";

/// The index of `seq` in [`RUN_COLUMNS`].
pub(crate) const SEQ_COLUMN: usize = 16;

fn invalid(
    column: usize,
    error: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Text, Box::new(error))
}

fn parsed<T>(
    row: &Row<'_>,
    column: usize,
    parse: impl FnOnce(String) -> Result<T, InvalidInput>,
) -> rusqlite::Result<T> {
    let text: String = row.get(column)?;
    parse(text).map_err(|e| invalid(column, e))
}

fn json_column(row: &Row<'_>, column: usize) -> rusqlite::Result<Option<Value>> {
    let text: Option<String> = row.get(column)?;
    text.map(|text| serde_json::from_str(&text).map_err(|e| invalid(column, e)))
        .transpose()
}

/// An event index read back from SQLite (stored as a non-negative INTEGER).
pub(crate) fn index_from_sql(value: i64, column: usize) -> rusqlite::Result<u64> {
    u64::try_from(value).map_err(|e| invalid(column, e))
}

/// An event index as SQLite stores it.
pub(crate) fn index_to_sql(index: u64) -> Result<i64, StoreError> {
    i64::try_from(index).map_err(|_| {
        StoreError::backend(
            "storing an event",
            format!("event_index {index} is too large"),
        )
    })
}

/// Reads a run selected with [`RUN_COLUMNS`].
pub(crate) fn run_from_row(row: &Row<'_>) -> rusqlite::Result<RunRecord> {
    let params = match json_column(row, 8)? {
        Some(Value::Object(map)) => map,
        Some(Value::Null) | None => Map::new(),
        Some(_) => return Err(invalid(8, InvalidInput::new("params is not a JSON object"))),
    };
    let last_event_index = row
        .get::<_, Option<i64>>(15)?
        .map(|index| index_from_sql(index, 15))
        .transpose()?;
    Ok(RunRecord {
        run_id: parsed(row, 0, RunId::parse)?,
        session_id: parsed(row, 1, SessionId::parse)?,
        user_id: row.get(2)?,
        target: RunTarget {
            kind: parsed(row, 3, |text| RunKind::parse(&text))?,
            component_id: row.get(4)?,
        },
        parent_run_id: row
            .get::<_, Option<String>>(5)?
            .map(|id| RunId::parse(id).map_err(|e| invalid(5, e)))
            .transpose()?,
        status: parsed(row, 6, |text| RunStatus::parse(&text))?,
        input: row.get(7)?,
        params,
        content: row.get(9)?,
        error: row.get(10)?,
        cancellation_stage: row
            .get::<_, Option<String>>(11)?
            .map(|stage| CancellationStage::parse(&stage).map_err(|e| invalid(11, e)))
            .transpose()?,
        metadata: json_column(row, 12)?,
        created_at: row.get(13)?,
        updated_at: row.get(14)?,
        last_event_index,
    })
}

/// A run's parameters as JSON text.
pub(crate) fn params_to_sql(params: &Map<String, Value>) -> String {
    // Serialising a map of `Value`s cannot fail.
    serde_json::to_string(params).unwrap_or_else(|_| "{}".to_owned())
}

/// Metadata as JSON text.
pub(crate) fn metadata_to_sql(metadata: Option<&Value>) -> Option<String> {
    metadata.map(Value::to_string)
}

/// The text of a list cursor: the position of the last run of a page.
pub(crate) fn encode_cursor(created_at: i64, seq: i64) -> String {
    format!("{created_at}.{seq}")
}

/// Parses a cursor from [`encode_cursor`].
pub(crate) fn decode_cursor(cursor: &str) -> Result<(i64, i64), StoreError> {
    let bad = || StoreError::InvalidCursor(format!("{cursor:?} is not a cursor this store made"));
    let (created_at, seq) = cursor.rsplit_once('.').ok_or_else(bad)?;
    let created_at: i64 = created_at.parse().map_err(|_| bad())?;
    let seq: i64 = seq.parse().map_err(|_| bad())?;
    if seq <= 0
        || !cursor
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err(bad());
    }
    Ok((created_at, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(
            decode_cursor(&encode_cursor(1_700_000_000, 42)).unwrap(),
            (1_700_000_000, 42)
        );
        assert_eq!(decode_cursor(&encode_cursor(-5, 1)).unwrap(), (-5, 1));
        for bad in [
            "", "42", "x.1", "1.x", "1.0", "1.-3", "1.+3", " 1.2", "1..2",
        ] {
            assert!(
                matches!(decode_cursor(bad), Err(StoreError::InvalidCursor(_))),
                "{bad:?}"
            );
        }
    }
}
