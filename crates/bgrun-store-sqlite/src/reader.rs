//! Reads: a small pool of read-only connections, used from `spawn_blocking`.
//!
//! In WAL mode readers never wait for the writer and see every committed write; the writer
//! replies only after it commits, so a read that follows an acknowledged write sees it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bgrun_core::{Event, Frames, RunFilter, RunId, RunPage, RunRecord, StoreError, StoreResult};
use bytes::Bytes;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use tokio::sync::Semaphore;

use crate::blocks;
use crate::codec::{
    decode_cursor, encode_cursor, index_from_sql, run_from_row, RUN_COLUMNS, RUN_COLUMNS_R,
    SELECT_RUN, SEQ_COLUMN,
};
use crate::ops::now_millis;
use crate::schema;

/// How many reads run at once, and so how many read connections a store opens at most. Reads
/// beyond that wait for a connection instead of opening (and then closing) one of their own:
/// opening a connection parses the schema, which costs more than most reads.
const MAX_READERS: usize = 8;

/// The read-only connections of one store.
#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection: a read holds one from before it leaves the runtime until its
    /// connection is back in `idle`.
    permits: Arc<Semaphore>,
}

fn sql(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::backend(context, e)
}

fn to_sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl Readers {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::with_capacity(MAX_READERS)),
            permits: Arc::new(Semaphore::new(MAX_READERS)),
        }
    }

    /// Runs `read` on a pooled connection on tokio's blocking pool.
    pub(crate) async fn with<T, F>(self: &Arc<Self>, read: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| StoreError::backend("waiting for a read connection", e))?;
        let readers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = readers.take()?;
            let result = read(&conn);
            readers.give_back(conn);
            result
        })
        .await
        .map_err(|e| StoreError::backend("running a read", e))?
    }

    fn take(&self) -> StoreResult<Connection> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => schema::open_reader(&self.path),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Never more than MAX_READERS: one per permit.
        idle.push(conn);
    }
}

/// `Store::get_run`.
pub(crate) fn get_run(conn: &Connection, run_id: &RunId) -> StoreResult<Option<RunRecord>> {
    conn.prepare_cached(SELECT_RUN)
        .and_then(|mut stmt| stmt.query_row([run_id.as_str()], run_from_row).optional())
        .map_err(sql("reading a run"))
}

/// `Store::list_runs`; `limit` is already within 1..=MAX_PAGE_SIZE.
pub(crate) fn list_runs(
    conn: &Connection,
    filter: &RunFilter,
    limit: usize,
    cursor: Option<&str>,
) -> StoreResult<RunPage> {
    let mut query = format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1");
    let mut args: Vec<Value> = Vec::with_capacity(7);
    if let Some(session_id) = &filter.session_id {
        query.push_str(" AND session_id = ?");
        args.push(Value::Text(session_id.as_str().to_owned()));
    }
    if let Some(status) = filter.status {
        query.push_str(" AND status = ?");
        args.push(Value::Text(status.as_str().to_owned()));
    }
    if let Some(target) = &filter.target {
        query.push_str(" AND kind = ? AND component_id = ?");
        args.push(Value::Text(target.kind.as_str().to_owned()));
        args.push(Value::Text(target.component_id.clone()));
    }
    if let Some(parent) = &filter.parent_run_id {
        query.push_str(" AND parent_run_id = ?");
        args.push(Value::Text(parent.as_str().to_owned()));
    }
    if let Some(cursor) = cursor {
        let (created_at, seq) = decode_cursor(cursor)?;
        query.push_str(" AND (created_at, seq) < (?, ?)");
        args.push(Value::Integer(created_at));
        args.push(Value::Integer(seq));
    }
    // One more than asked: whether it comes back says whether there is a next page. Written
    // into the statement, not bound: SQLite prepares a statement with a bound `LIMIT` anew for
    // each value.
    query.push_str(&format!(
        " ORDER BY created_at DESC, seq DESC LIMIT {}",
        to_sql_limit(limit).saturating_add(1)
    ));

    let mut stmt = conn
        .prepare_cached(&query)
        .map_err(sql("preparing a run listing"))?;
    let mut rows = stmt
        .query(params_from_iter(args))
        .map_err(sql("listing runs"))?;
    let mut runs = Vec::with_capacity(limit.min(64));
    let mut last_position = None;
    let mut more = false;
    while let Some(row) = rows.next().map_err(sql("listing runs"))? {
        if runs.len() == limit {
            more = true;
            break;
        }
        let run = run_from_row(row).map_err(sql("reading a listed run"))?;
        let seq: i64 = row.get(SEQ_COLUMN).map_err(sql("reading a listed run"))?;
        last_position = Some((run.created_at, seq));
        runs.push(run);
    }
    let next_cursor = match last_position {
        Some((created_at, seq)) if more => Some(encode_cursor(created_at, seq)),
        _ => None,
    };
    Ok(RunPage { runs, next_cursor })
}

/// `Store::read_events`.
pub(crate) fn read_events(
    conn: &Connection,
    run_id: &RunId,
    after: Option<u64>,
    limit: usize,
) -> StoreResult<Vec<Event>> {
    let after = match after {
        None => -1,
        Some(after) => match i64::try_from(after) {
            Ok(after) => after,
            // No stored index is that large.
            Err(_) => return Ok(Vec::new()),
        },
    };
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare_cached(BLOCKS_AFTER)
        .map_err(sql("preparing an event read"))?;
    let mut rows = stmt
        .query(params![run_id.as_str(), after])
        .map_err(sql("reading events"))?;
    let after = u64::try_from(after).ok();
    let mut events = Vec::with_capacity(limit.min(4096));
    while events.len() < limit {
        let Some(row) = rows.next().map_err(sql("reading events"))? else {
            break;
        };
        let (first, _, codec, body) = block_row(row)?;
        blocks::decode(first, codec, body, after, limit, &mut events)?;
    }
    Ok(events)
}

/// The blocks of run `?1` holding events after index `?2`, in order. No `LIMIT`: SQLite
/// prepares a statement with a bound `LIMIT` anew for each value (the planner uses it), and the
/// rows are stepped through only as far as a read needs.
const BLOCKS_AFTER: &str = "SELECT first_index, last_index, codec, body FROM event_blocks \
     WHERE run_seq = (SELECT seq FROM runs WHERE run_id = ?1) AND last_index > ?2 \
     ORDER BY last_index";

/// A row of [`BLOCKS_AFTER`]: the block's first and last index, codec and body.
fn block_row<'row>(
    row: &'row rusqlite::Row<'_>,
) -> StoreResult<(u64, u64, blocks::Codec, &'row [u8])> {
    let read = || -> rusqlite::Result<_> {
        let first = index_from_sql(row.get(0)?, 0)?;
        let last = index_from_sql(row.get(1)?, 1)?;
        Ok((
            first,
            last,
            row.get::<_, i64>(2)?,
            row.get_ref(3)?.as_blob()?,
        ))
    };
    let (first, last, codec, body) = read().map_err(sql("reading events"))?;
    Ok((first, last, blocks::Codec::from_sql(codec)?, body))
}

/// The size past which a read's frames of uncompressed blocks go on in a new chunk: a few large
/// writes rather than one per block, in buffers the allocator keeps for reuse (a buffer of
/// megabytes is mapped and zeroed by the kernel anew each time). An LZ4 block (up to
/// `MAX_BLOCK_BYTES` of events) is expanded into a chunk of its own.
const FRAMES_CHUNK: usize = 192 * 1024;

/// `Store::read_event_frames`: what [`read_events`] reads, as frames.
pub(crate) fn read_event_frames(
    conn: &Connection,
    run_id: &RunId,
    after: Option<u64>,
    limit: usize,
) -> StoreResult<Frames> {
    let first_index = after.map_or(0, |after| after.saturating_add(1));
    let mut frames = Frames {
        first_index,
        ..Frames::default()
    };
    let Some(after_sql) = after.map_or(Some(-1), |after| i64::try_from(after).ok()) else {
        // No stored index is that large.
        return Ok(frames);
    };
    if limit == 0 {
        return Ok(frames);
    }
    let mut stmt = conn
        .prepare_cached(BLOCKS_AFTER)
        .map_err(sql("preparing an event read"))?;
    let mut rows = stmt
        .query(params![run_id.as_str(), after_sql])
        .map_err(sql("reading events"))?;
    let mut page = Vec::new();
    let mut read = 0;
    while read < limit {
        let Some(row) = rows.next().map_err(sql("reading events"))? else {
            break;
        };
        let (first, last, codec, body) = block_row(row)?;
        if read == 0 {
            // As `read_events`: the first event stored after `after`.
            frames.first_index = first.max(first_index);
        }
        if codec == blocks::Codec::Lz4 {
            // Expanded into a chunk of its own: not copied into the page.
            let (chunk, count) = blocks::lz4_frames((first, last), body, after, limit - read)?;
            flush_page(&mut page, &mut frames.chunks);
            frames.chunks.push(chunk);
            read += count;
        } else {
            // Grown as it fills, not reserved: a chunk keeps its buffer's whole capacity, and
            // a page may be flushed after one small block (an LZ4 block following it).
            read +=
                blocks::push_frames(&mut page, (first, last), codec, body, after, limit - read)?;
            if page.len() >= FRAMES_CHUNK {
                flush_page(&mut page, &mut frames.chunks);
            }
        }
    }
    frames.count = read as u64;
    flush_page(&mut page, &mut frames.chunks);
    Ok(frames)
}

/// Moves what `page` holds into a chunk of its own, leaving it empty.
fn flush_page(page: &mut Vec<u8>, chunks: &mut Vec<Bytes>) {
    if !page.is_empty() {
        chunks.push(Bytes::from(std::mem::take(page)));
    }
}

/// `Store::cancel_requested`.
pub(crate) fn cancel_requested(conn: &Connection, run_id: &RunId) -> StoreResult<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM cancel_intents WHERE run_id = ?1)")
        .and_then(|mut stmt| stmt.query_row([run_id.as_str()], |row| row.get(0)))
        .map_err(sql("checking for a cancel intent"))
}

/// `Store::orphaned_runs`: `RUNNING` or `PAUSED`, and no live lease; oldest first.
pub(crate) fn orphaned_runs(conn: &Connection, limit: usize) -> StoreResult<Vec<RunRecord>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS_R} FROM runs r LEFT JOIN leases l ON l.run_id = r.run_id \
             WHERE r.status IN ('RUNNING', 'PAUSED') \
             AND (l.run_id IS NULL OR l.expires_at <= ?1) \
             ORDER BY r.seq LIMIT ?2"
        ))
        .map_err(sql("preparing the orphan query"))?;
    let runs = stmt
        .query_map(params![now_millis(), to_sql_limit(limit)], run_from_row)
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(sql("finding orphaned runs"))?;
    Ok(runs)
}
