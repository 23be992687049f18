//! Durable streams: the SQL of their writes, run by the writer thread inside the batch
//! transaction, and of their reads, run on the reader pool.
//!
//! Every decision that could refuse a write (a path taken, a fork source gone, what
//! [`plan_append`] says) is made from rows read before the write changes any: a refused write
//! has written nothing, which the writer's group commit relies on. The refusals are outcomes,
//! not errors; the only write a refusal makes on purpose is the soft-delete of an expired,
//! forked stream that `create_stream` finds at its path, which is the contract's.

use bgrun_core::stream::{
    plan_append, AppendOutcome, CreateStreamOutcome, DeleteStreamOutcome, ForkOrigin, Millis,
    NewStream, ProducerClaim, ProducerState, StreamAppend, StreamExpiry, StreamId, StreamInfo,
    StreamMessage, StreamOffset, StreamSegment,
};
use bgrun_core::{StoreError, StoreResult};
use bytes::Bytes;
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};

/// The columns [`stream_from_row`] reads, in its order.
const STREAM_COLUMNS: &str = "id, path, content_type, ttl_secs, expires_at_text, expires_at, \
     created, last_access, tail, closed, closed_by_id, closed_by_epoch, closed_by_seq, \
     last_stream_seq, fork_source_path, fork_source_id, fork_offset, fork_sub_offset, inherited, \
     forks, soft_deleted";

fn sql(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::backend(context, e)
}

fn invalid(
    column: usize,
    error: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Integer, Box::new(error))
}

/// A client's u64 (an epoch, a sequence number, a sub-offset, a TTL) as SQLite keeps it: the
/// same 64 bits, so values past `i64::MAX` need no refusal. Only the TTL is ever compared in
/// SQL ([`EXPIRY_DEADLINE`]), which reads a negative one as the huge TTL it is.
fn bits_to_sql(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

/// The inverse of [`bits_to_sql`].
fn bits_from_sql(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

/// An offset as SQLite keeps it. Offsets count messages, so a stored one always fits.
fn offset_to_sql(offset: StreamOffset) -> StoreResult<i64> {
    i64::try_from(offset.get()).map_err(|_| {
        StoreError::backend(
            "storing a stream offset",
            format!("offset {offset} is too large"),
        )
    })
}

/// An offset used as a query bound: one past every storable offset reads as the largest.
fn offset_bound(offset: StreamOffset) -> i64 {
    i64::try_from(offset.get()).unwrap_or(i64::MAX)
}

fn offset_from_sql(value: i64, column: usize) -> rusqlite::Result<StreamOffset> {
    u64::try_from(value)
        .map(StreamOffset::new)
        .map_err(|e| invalid(column, e))
}

/// The offset `count` messages after `offset`.
fn advance(offset: StreamOffset, count: usize) -> StoreResult<StreamOffset> {
    u64::try_from(count)
        .ok()
        .and_then(|count| offset.get().checked_add(count))
        .map(StreamOffset::new)
        .ok_or_else(|| StoreError::backend("appending to a stream", "the stream is too long"))
}

/// Reads a stream selected with [`STREAM_COLUMNS`].
fn stream_from_row(row: &Row<'_>) -> rusqlite::Result<StreamInfo> {
    let expiry = match (
        row.get::<_, Option<i64>>(3)?,
        row.get::<_, Option<String>>(4)?,
        row.get::<_, Option<i64>>(5)?,
    ) {
        (Some(secs), _, _) => Some(StreamExpiry::Ttl {
            secs: bits_from_sql(secs),
        }),
        (None, Some(text), Some(at)) => Some(StreamExpiry::At { text, at }),
        _ => None,
    };
    let closed_by = match row.get::<_, Option<String>>(10)? {
        Some(id) => Some(ProducerClaim {
            id,
            epoch: bits_from_sql(row.get(11)?),
            seq: bits_from_sql(row.get(12)?),
        }),
        None => None,
    };
    let fork = match row.get::<_, Option<i64>>(15)? {
        Some(source_id) => Some(ForkOrigin {
            source_path: row.get(14)?,
            source_id: StreamId::new(source_id),
            offset: offset_from_sql(row.get(16)?, 16)?,
            sub_offset: bits_from_sql(row.get(17)?),
        }),
        None => None,
    };
    let inherited: Vec<StreamSegment> = match row.get_ref(18)?.as_str_or_null()? {
        Some(json) => serde_json::from_str(json).map_err(|e| invalid(18, e))?,
        None => Vec::new(),
    };
    Ok(StreamInfo {
        id: StreamId::new(row.get(0)?),
        path: row.get(1)?,
        content_type: row.get(2)?,
        expiry,
        created: row.get(6)?,
        last_access: row.get(7)?,
        tail: offset_from_sql(row.get(8)?, 8)?,
        closed: row.get(9)?,
        closed_by,
        last_stream_seq: row.get(13)?,
        fork,
        inherited,
        forks: u64::try_from(row.get::<_, i64>(19)?).map_err(|e| invalid(19, e))?,
        soft_deleted: row.get(20)?,
    })
}

/// The stream at `path`, soft-deleted or expired ones included.
fn by_path(conn: &Connection, path: &str) -> StoreResult<Option<StreamInfo>> {
    conn.prepare_cached(&format!(
        "SELECT {STREAM_COLUMNS} FROM streams WHERE path = ?1"
    ))
    .and_then(|mut stmt| stmt.query_row([path], stream_from_row).optional())
    .map_err(sql("reading a stream"))
}

/// Stream `id`, soft-deleted or expired included.
fn by_id(conn: &Connection, id: StreamId) -> StoreResult<Option<StreamInfo>> {
    conn.prepare_cached(&format!(
        "SELECT {STREAM_COLUMNS} FROM streams WHERE id = ?1"
    ))
    .and_then(|mut stmt| stmt.query_row([id.get()], stream_from_row).optional())
    .map_err(sql("reading a stream"))
}

/// Writes `messages` after `tail`, one offset each.
fn insert_messages(
    conn: &Connection,
    id: StreamId,
    tail: StreamOffset,
    messages: &[Bytes],
) -> StoreResult<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO stream_messages (stream_id, msg_offset, data) VALUES (?1, ?2, ?3)",
        )
        .map_err(sql("preparing the stream message insert"))?;
    let mut offset = offset_to_sql(tail)?;
    for message in messages {
        offset = offset.checked_add(1).ok_or_else(|| {
            StoreError::backend("appending to a stream", "the stream is too long")
        })?;
        insert
            .execute(params![id.get(), offset, &message[..]])
            .map_err(sql("inserting a stream message"))?;
    }
    Ok(())
}

fn soft_delete(conn: &Connection, id: StreamId) -> StoreResult<()> {
    conn.prepare_cached("UPDATE streams SET soft_deleted = 1 WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute([id.get()]))
        .map_err(sql("soft-deleting a stream"))?;
    Ok(())
}

/// Removes stream `id` with its messages and producers; its source loses a fork, and a
/// soft-deleted source left without forks is removed the same way, up the chain.
fn remove(conn: &Connection, id: StreamId) -> StoreResult<()> {
    let mut next = Some(id.get());
    while let Some(id) = next {
        conn.prepare_cached("DELETE FROM stream_messages WHERE stream_id = ?1")
            .and_then(|mut stmt| stmt.execute([id]))
            .map_err(sql("deleting a stream's messages"))?;
        conn.prepare_cached("DELETE FROM stream_producers WHERE stream_id = ?1")
            .and_then(|mut stmt| stmt.execute([id]))
            .map_err(sql("deleting a stream's producers"))?;
        let source: Option<i64> = conn
            .prepare_cached("DELETE FROM streams WHERE id = ?1 RETURNING fork_source_id")
            .and_then(|mut stmt| stmt.query_row([id], |row| row.get(0)).optional())
            .map_err(sql("deleting a stream"))?
            .flatten();
        next = match source {
            None => None,
            Some(source) => {
                // MAX: a count that is somehow already 0 stays 0 rather than going negative.
                let left: Option<(i64, bool)> = conn
                    .prepare_cached(
                        "UPDATE streams SET forks = MAX(forks - 1, 0) WHERE id = ?1 \
                         RETURNING forks, soft_deleted",
                    )
                    .and_then(|mut stmt| {
                        stmt.query_row([source], |row| Ok((row.get(0)?, row.get(1)?)))
                            .optional()
                    })
                    .map_err(sql("counting a stream's forks down"))?;
                match left {
                    Some((0, true)) => Some(source),
                    _ => None,
                }
            }
        };
    }
    Ok(())
}

/// `Store::create_stream`.
pub(crate) fn create(conn: &Connection, new: NewStream) -> StoreResult<CreateStreamOutcome> {
    // An expired stream without forks at the path: removed, but only once nothing can refuse
    // the create any more.
    let mut replaced = None;
    if let Some(existing) = by_path(conn, &new.path)? {
        if existing.soft_deleted {
            return Ok(CreateStreamOutcome::PathGone);
        }
        if existing.is_expired(new.now) {
            if existing.forks > 0 {
                soft_delete(conn, existing.id)?;
                return Ok(CreateStreamOutcome::PathGone);
            }
            replaced = Some(existing.id);
        } else if new.matches(&existing) {
            return Ok(CreateStreamOutcome::Existing(existing));
        } else {
            return Ok(CreateStreamOutcome::Conflict(existing));
        }
    }
    if let Some(fork) = &new.fork {
        // The expired stream being replaced is as good as gone already, as a source too.
        let source = match replaced {
            Some(id) if id == fork.source_id => None,
            _ => by_id(conn, fork.source_id)?,
        };
        match source {
            None => return Ok(CreateStreamOutcome::SourceMissing),
            Some(source) if source.soft_deleted => return Ok(CreateStreamOutcome::SourceGone),
            Some(_) => {}
        }
    }
    let inherited = match &new.fork {
        Some(fork) => Some(
            serde_json::to_string(&fork.inherited)
                .map_err(|e| StoreError::backend("encoding a fork's segments", e))?,
        ),
        None => None,
    };
    let start = new
        .fork
        .as_ref()
        .map_or(StreamOffset::ZERO, |fork| fork.offset);
    let tail = advance(start, new.messages.len())?;
    // Nothing can refuse the create from here on. The source cannot be removed by this
    // cascade: it is not soft-deleted, and only soft-deleted sources are.
    if let Some(id) = replaced {
        remove(conn, id)?;
    }
    let (ttl_secs, expires_at_text, expires_at) = match &new.expiry {
        None => (None, None, None),
        Some(StreamExpiry::Ttl { secs }) => (Some(bits_to_sql(*secs)), None, None),
        Some(StreamExpiry::At { text, at }) => (None, Some(text.as_str()), Some(*at)),
    };
    let fork = new.fork.as_ref();
    let tail_sql = offset_to_sql(tail)?;
    let fork_offset = fork.map(|fork| offset_to_sql(fork.offset)).transpose()?;
    let id: i64 = conn
        .prepare_cached(
            "INSERT INTO streams (path, content_type, ttl_secs, expires_at_text, expires_at, \
             created, last_access, tail, closed, fork_source_path, fork_source_id, fork_offset, \
             fork_sub_offset, inherited) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) RETURNING id",
        )
        .and_then(|mut stmt| {
            stmt.query_row(
                params![
                    new.path,
                    new.content_type,
                    ttl_secs,
                    expires_at_text,
                    expires_at,
                    new.now,
                    tail_sql,
                    new.closed,
                    fork.map(|fork| fork.source_path.as_str()),
                    fork.map(|fork| fork.source_id.get()),
                    fork_offset,
                    fork.map(|fork| bits_to_sql(fork.sub_offset)),
                    inherited,
                ],
                |row| row.get(0),
            )
        })
        .map_err(sql("inserting a stream"))?;
    let id = StreamId::new(id);
    insert_messages(conn, id, start, &new.messages)?;
    if let Some(fork) = fork {
        conn.prepare_cached("UPDATE streams SET forks = forks + 1 WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute([fork.source_id.get()]))
            .map_err(sql("counting a stream's forks up"))?;
    }
    let (fork, inherited) = match new.fork {
        Some(fork) => (
            Some(ForkOrigin {
                source_path: fork.source_path,
                source_id: fork.source_id,
                offset: fork.offset,
                sub_offset: fork.sub_offset,
            }),
            fork.inherited,
        ),
        None => (None, Vec::new()),
    };
    Ok(CreateStreamOutcome::Created(StreamInfo {
        id,
        path: new.path,
        content_type: new.content_type,
        expiry: new.expiry,
        created: new.now,
        last_access: new.now,
        tail,
        closed: new.closed,
        closed_by: None,
        last_stream_seq: None,
        fork,
        inherited,
        forks: 0,
        soft_deleted: false,
    }))
}

/// A producer's state on stream `id`.
fn producer_state(
    conn: &Connection,
    id: StreamId,
    producer_id: &str,
) -> StoreResult<Option<ProducerState>> {
    conn.prepare_cached(
        "SELECT epoch, last_seq, updated FROM stream_producers \
         WHERE stream_id = ?1 AND producer_id = ?2",
    )
    .and_then(|mut stmt| {
        stmt.query_row(params![id.get(), producer_id], |row| {
            Ok(ProducerState {
                epoch: bits_from_sql(row.get(0)?),
                last_seq: bits_from_sql(row.get(1)?),
                updated: row.get(2)?,
            })
        })
        .optional()
    })
    .map_err(sql("reading a stream producer"))
}

/// `Store::append_stream`.
pub(crate) fn append(
    conn: &Connection,
    path: &str,
    append: &StreamAppend,
) -> StoreResult<AppendOutcome> {
    let stream = by_path(conn, path)?;
    let producer = match (&stream, &append.producer) {
        (Some(stream), Some(claim)) => producer_state(conn, stream.id, &claim.id)?,
        _ => None,
    };
    let plan = match plan_append(stream.as_ref(), producer.as_ref(), append) {
        Ok(plan) => plan,
        Err(outcome) => return Ok(outcome),
    };
    // `plan_append` accepts no append without a stream.
    let Some(stream) = stream else {
        return Ok(AppendOutcome::NotFound);
    };
    let tail = advance(stream.tail, append.messages.len())?;
    let new_tail = offset_to_sql(tail)?;
    insert_messages(conn, stream.id, stream.tail, &append.messages)?;
    if let Some((producer_id, state)) = &plan.producer {
        conn.prepare_cached(
            "INSERT INTO stream_producers (stream_id, producer_id, epoch, last_seq, updated) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (stream_id, producer_id) DO UPDATE SET epoch = excluded.epoch, \
             last_seq = excluded.last_seq, updated = excluded.updated",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                stream.id.get(),
                producer_id,
                bits_to_sql(state.epoch),
                bits_to_sql(state.last_seq),
                state.updated,
            ])
        })
        .map_err(sql("recording a stream producer"))?;
    }
    // The stream was open (`plan_append` refuses a closed one), so it had no closer to keep.
    let closer = plan.closed_by.as_ref();
    conn.prepare_cached(
        "UPDATE streams SET tail = ?2, last_access = MAX(last_access, ?3), closed = ?4, closed_by_id = ?5, \
         closed_by_epoch = ?6, closed_by_seq = ?7, \
         last_stream_seq = COALESCE(?8, last_stream_seq) WHERE id = ?1",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            stream.id.get(),
            new_tail,
            append.now,
            plan.close,
            closer.map(|claim| claim.id.as_str()),
            closer.map(|claim| bits_to_sql(claim.epoch)),
            closer.map(|claim| bits_to_sql(claim.seq)),
            plan.stream_seq,
        ])
    })
    .map_err(sql("updating a stream"))?;
    Ok(AppendOutcome::Appended {
        tail,
        closed: plan.close,
    })
}

/// `Store::delete_stream`.
pub(crate) fn delete(
    conn: &Connection,
    path: &str,
    only: Option<StreamId>,
    expired_at: Option<Millis>,
) -> StoreResult<DeleteStreamOutcome> {
    let Some(stream) = by_path(conn, path)? else {
        return Ok(DeleteStreamOutcome::NotFound);
    };
    if only.is_some_and(|only| only != stream.id) {
        return Ok(DeleteStreamOutcome::NotFound);
    }
    // `Store::expire_stream`: judged again here, where no write can come in between.
    if expired_at.is_some_and(|now| !stream.is_expired(now)) {
        return Ok(DeleteStreamOutcome::NotExpired);
    }
    if stream.soft_deleted {
        return Ok(DeleteStreamOutcome::Gone);
    }
    if stream.forks > 0 {
        soft_delete(conn, stream.id)?;
        return Ok(DeleteStreamOutcome::SoftDeleted);
    }
    remove(conn, stream.id)?;
    Ok(DeleteStreamOutcome::Deleted)
}

/// `Store::touch_stream`: `last_access` only ever moves forward.
pub(crate) fn touch(conn: &Connection, id: StreamId, now: Millis) -> StoreResult<()> {
    conn.prepare_cached("UPDATE streams SET last_access = ?2 WHERE id = ?1 AND last_access < ?2")
        .and_then(|mut stmt| stmt.execute(params![id.get(), now]))
        .map_err(sql("touching a stream"))?;
    Ok(())
}

/// [`StreamInfo::expiry_deadline`] in SQL: the expression of the `streams_expiry` index
/// (migration 3), which the query below must repeat exactly for SQLite to use the index. CASE
/// branches keep every product and sum inside i64 (SQLite would turn an overflow into a REAL).
const EXPIRY_DEADLINE: &str = "CASE \
     WHEN ttl_secs IS NULL THEN CASE WHEN expires_at_text IS NOT NULL THEN expires_at END \
     WHEN ttl_secs < 0 OR ttl_secs > 9223372036854775 THEN \
         CASE WHEN last_access > 0 THEN 9223372036854775807 \
              ELSE last_access + 9223372036854775807 END \
     WHEN last_access > 9223372036854775807 - ttl_secs * 1000 THEN 9223372036854775807 \
     ELSE last_access + ttl_secs * 1000 \
     END";

/// The query of [`expired`]: the `streams_expiry` index's own condition (so that SQLite may use
/// the partial index), then a range of it, in its order.
fn expired_query() -> String {
    format!(
        "SELECT path, id FROM streams \
         WHERE soft_deleted = 0 AND (ttl_secs IS NOT NULL OR expires_at_text IS NOT NULL) \
         AND {EXPIRY_DEADLINE} <= ?1 \
         ORDER BY {EXPIRY_DEADLINE}, id LIMIT ?2"
    )
}

/// `Store::expired_streams`: a range scan of the `streams_expiry` index, up to `now`.
pub(crate) fn expired(
    conn: &Connection,
    now: Millis,
    limit: usize,
) -> StoreResult<Vec<(String, StreamId)>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.prepare_cached(&expired_query())
        .and_then(|mut stmt| {
            stmt.query_map(params![now, limit], |row| {
                Ok((row.get(0)?, StreamId::new(row.get(1)?)))
            })?
            .collect()
        })
        .map_err(sql("listing expired streams"))
}

/// `Store::stream_info`.
pub(crate) fn info(conn: &Connection, path: &str) -> StoreResult<Option<StreamInfo>> {
    by_path(conn, path)
}

/// `Store::read_stream`: one range scan of the stream's messages, stopped (not limited) once
/// `max_bytes` is reached, since the byte budget is not a row count.
pub(crate) fn read(
    conn: &Connection,
    id: StreamId,
    after: StreamOffset,
    upto: Option<StreamOffset>,
    max_bytes: usize,
) -> StoreResult<Vec<StreamMessage>> {
    let after = offset_bound(after);
    let upto = upto.map_or(i64::MAX, offset_bound);
    if after >= upto {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT msg_offset, data FROM stream_messages \
             WHERE stream_id = ?1 AND msg_offset > ?2 AND msg_offset <= ?3 ORDER BY msg_offset",
        )
        .map_err(sql("preparing a stream read"))?;
    let mut rows = stmt
        .query(params![id.get(), after, upto])
        .map_err(sql("reading a stream"))?;
    let mut messages = Vec::new();
    let mut total = 0usize;
    while let Some(row) = rows.next().map_err(sql("reading a stream"))? {
        let message = (|| {
            Ok::<_, rusqlite::Error>(StreamMessage {
                offset: offset_from_sql(row.get(0)?, 0)?,
                data: Bytes::copy_from_slice(row.get_ref(1)?.as_blob()?),
            })
        })()
        .map_err(sql("reading a stream message"))?;
        total = total.saturating_add(message.data.len());
        messages.push(message);
        if total >= max_bytes {
            break;
        }
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;

    fn migrated() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = schema::open_writer(&dir.path().join("s.db")).unwrap();
        schema::migrate(&mut conn).unwrap();
        (dir, conn)
    }

    fn stream(path: &str, expiry: Option<StreamExpiry>, now: Millis) -> NewStream {
        NewStream {
            path: path.into(),
            content_type: "text/plain".into(),
            expiry,
            closed: false,
            fork: None,
            messages: Vec::new(),
            now,
        }
    }

    #[test]
    fn the_sql_deadline_is_the_models_whatever_the_ttl() {
        let (_dir, conn) = migrated();
        let ttls = [
            0,
            1,
            9_223_372_036_854_775,
            9_223_372_036_854_776,
            i64::MAX as u64,
            1 << 63,
            u64::MAX,
        ];
        let times = [i64::MIN, -5_000, 0, 1_700_000_000_000, i64::MAX];
        let mut n = 0;
        for secs in ttls {
            for now in times {
                n += 1;
                let new = stream(&format!("ttl/{n}"), Some(StreamExpiry::Ttl { secs }), now);
                let CreateStreamOutcome::Created(info) = create(&conn, new).unwrap() else {
                    panic!("not created");
                };
                let deadline: Option<i64> = conn
                    .query_row(
                        &format!("SELECT {EXPIRY_DEADLINE} FROM streams WHERE id = ?1"),
                        [info.id.get()],
                        |row| row.get(0),
                    )
                    .unwrap();
                assert_eq!(deadline, info.expiry_deadline(), "ttl {secs} s at {now}");
            }
        }
        let at = StreamExpiry::At {
            text: "then".into(),
            at: 42,
        };
        for (path, expiry) in [("at", Some(at)), ("never", None)] {
            let CreateStreamOutcome::Created(info) =
                create(&conn, stream(path, expiry, 0)).unwrap()
            else {
                panic!("not created");
            };
            let deadline: Option<i64> = conn
                .query_row(
                    &format!("SELECT {EXPIRY_DEADLINE} FROM streams WHERE id = ?1"),
                    [info.id.get()],
                    |row| row.get(0),
                )
                .unwrap();
            assert_eq!(deadline, info.expiry_deadline(), "{path}");
        }
    }

    #[test]
    fn the_expired_streams_query_walks_the_index_in_its_order() {
        let (_dir, conn) = migrated();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", expired_query()))
            .unwrap()
            .query_map(params![0, 10], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("; ");
        assert!(plan.contains("USING INDEX streams_expiry"), "{plan}");
        // Sorted by the index itself, not afterwards.
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
