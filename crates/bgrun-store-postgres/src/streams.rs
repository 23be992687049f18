//! Durable streams ([`bgrun_core::stream`]): creating, appending to, reading and deleting them.
//!
//! A stream is a row of `streams`, unique by path (a path's one incarnation, live or
//! soft-deleted); its messages are rows of `stream_messages` keyed by `(stream_id,
//! msg_offset)`, its idempotent producers rows of `stream_producers`. A fork's origin and its
//! inherited segments (as JSON) are columns of its row: they never change.
//!
//! Each operation is one transaction of its own on a pooled connection (streams do not go
//! through the run writers' group commit). The transaction is begun and ended by hand
//! ([`Open`]) so that `BEGIN` travels in one round trip with the first reads, and `COMMIT`
//! with the last writes and the notification: a transaction of appends is two round trips (lock
//! the stream and read its producers; write, commit, notify). The appends to one stream that
//! arrive while one of its transactions is under way share the next one (see [`append`]).
//!
//! Concurrent writes to one stream serialise on its row lock (`FOR UPDATE`); creates of one
//! path on an advisory lock (the row does not exist yet). A fork's row is locked before its
//! source's, all the way up a chain, so the cascades of deletes take locks in one order (a
//! deadlock that a create replacing an expired fork can still run into is broken by the server
//! and retried: nothing of it was committed).
//!
//! Retries: a failure before `COMMIT` was sent leaves nothing behind and is retried like any
//! transient failure. A connection lost once `COMMIT` may have been sent leaves the outcome
//! unknown: a create recognises its own earlier success by a write token (as runs do), while an
//! append or a delete is not idempotent and fails with a backend error rather than being
//! repeated blindly.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bgrun_core::stream::{
    plan_append, AppendOutcome, CreateStreamOutcome, DeleteStreamOutcome, ForkOrigin, Millis,
    NewStream, ProducerClaim, ProducerState, StreamAppend, StreamExpiry, StreamId, StreamInfo,
    StreamMessage, StreamOffset, StreamSegment,
};
use bgrun_core::{InvalidInput, StoreError, StoreResult};
use deadpool_postgres::Object;
use tokio::sync::oneshot;
use tokio_postgres::error::Severity;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{Error, Row};

use crate::fault::{Attempt, Failure};
use crate::notify::Channels;
use crate::runs::write_token;
use crate::store::Inner;

/// The first key of the per-path advisory lock of creates (two-key form, apart from the
/// migration lock and the runs' lock class).
const PATH_LOCK_CLASS: i32 = 0x6267_7374; // "bgst"

/// How many messages one statement of [`read`] looks at, at most: a read stops at its byte
/// budget within a batch, and only fetches the next batch while the budget is not spent.
const READ_BATCH: i64 = 1024;

/// A statement parameter.
type Param<'a> = &'a (dyn ToSql + Sync);

/// The columns [`decode`] reads, to paste after `SELECT` or `RETURNING`.
const COLUMNS: &str = "id, path, content_type, ttl_secs, expires_at, expires_text, created, \
    last_access, tail, closed, closer_id, closer_epoch, closer_seq, last_stream_seq, fork_path, \
    fork_id, fork_offset, fork_sub_offset, inherited, forks, soft_deleted";

/// The statements, with the schema substituted once (they are prepared per connection, keyed
/// by their text).
pub(crate) struct Sql {
    info: String,
    lock_path: String,
    lock_id: String,
    path_lock: String,
    producers: String,
    append_messages: String,
    advance: String,
    save_producers: String,
    create: String,
    add_fork: String,
    soft_delete: String,
    drop_messages: String,
    drop_producers: String,
    drop_stream: String,
    drop_fork: String,
    read: String,
    touch: String,
    expired: String,
}

/// A TTL stream's [`StreamInfo::expiry_deadline`] in SQL: its last access plus its TTL,
/// saturating at i64::MAX. The TTL is a client u64 stored bit for bit, so a negative one is one
/// past i64::MAX seconds. CASE evaluates only the branch it takes, so no product or sum here
/// can overflow (PostgreSQL would fail the query).
const TTL_DEADLINE: &str = "CASE \
     WHEN ttl_secs < 0 OR ttl_secs > 9223372036854775 THEN \
         CASE WHEN last_access > 0 THEN 9223372036854775807 \
              ELSE last_access + 9223372036854775807 END \
     WHEN last_access > 9223372036854775807 - ttl_secs * 1000 THEN 9223372036854775807 \
     ELSE last_access + ttl_secs * 1000 \
     END";

impl Sql {
    pub(crate) fn new(quoted_schema: &str) -> Self {
        let sql = |template: &str| template.replace("{s}", quoted_schema);
        Self {
            info: sql(&format!(
                "SELECT {COLUMNS} FROM {{s}}.streams WHERE path = $1"
            )),
            lock_path: sql(&format!(
                "SELECT {COLUMNS}, write_token FROM {{s}}.streams WHERE path = $1 FOR UPDATE"
            )),
            lock_id: sql(&format!(
                "SELECT {COLUMNS} FROM {{s}}.streams WHERE id = $1 FOR UPDATE"
            )),
            path_lock: format!("SELECT pg_advisory_xact_lock({PATH_LOCK_CLASS}, hashtext($1))"),
            // Sent after the stream's row lock is granted, so it reads the state the last
            // writer of the stream committed (a join in the locking statement would not).
            producers: sql("SELECT p.producer_id, p.epoch, p.last_seq, p.updated \
                 FROM {s}.stream_producers p JOIN {s}.streams s ON s.id = p.stream_id \
                 WHERE s.path = $1 AND p.producer_id = ANY($2::text[])"),
            append_messages: sql(
                "INSERT INTO {s}.stream_messages (stream_id, msg_offset, data) \
                 SELECT $1, $2::bigint + m.ord, m.data \
                 FROM unnest($3::bytea[]) WITH ORDINALITY AS m(data, ord)",
            ),
            advance: sql(
                "UPDATE {s}.streams SET tail = $2, closed = $3, closer_id = $4, \
                 closer_epoch = $5, closer_seq = $6, \
                 last_stream_seq = $7, last_access = GREATEST(last_access, $8) \
                 WHERE id = $1",
            ),
            save_producers: sql(
                "INSERT INTO {s}.stream_producers (stream_id, producer_id, epoch, last_seq, \
                 updated) SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::bigint[], \
                 $5::bigint[]) \
                 ON CONFLICT (stream_id, producer_id) DO UPDATE SET epoch = EXCLUDED.epoch, \
                 last_seq = EXCLUDED.last_seq, updated = EXCLUDED.updated",
            ),
            create: sql(&format!(
                "WITH created AS ( \
                     INSERT INTO {{s}}.streams (path, content_type, ttl_secs, expires_at, \
                     expires_text, created, last_access, tail, closed, fork_path, fork_id, \
                     fork_offset, fork_sub_offset, inherited, write_token) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $12, $13, $14, $15) \
                     RETURNING {COLUMNS} \
                 ), messages AS ( \
                     INSERT INTO {{s}}.stream_messages (stream_id, msg_offset, data) \
                     SELECT created.id, $11::bigint + m.ord, m.data \
                     FROM created, unnest($16::bytea[]) WITH ORDINALITY AS m(data, ord) \
                 ) \
                 SELECT * FROM created"
            )),
            add_fork: sql("UPDATE {s}.streams SET forks = forks + 1 WHERE id = $1"),
            soft_delete: sql("UPDATE {s}.streams SET soft_deleted = true WHERE id = $1"),
            drop_messages: sql("DELETE FROM {s}.stream_messages WHERE stream_id = $1"),
            drop_producers: sql("DELETE FROM {s}.stream_producers WHERE stream_id = $1"),
            drop_stream: sql("DELETE FROM {s}.streams WHERE id = $1"),
            drop_fork: sql("UPDATE {s}.streams SET forks = forks - 1 WHERE id = $1 \
                 RETURNING soft_deleted, forks, fork_id"),
            // The messages of one batch whose predecessors (in the batch) hold fewer than $4
            // bytes, and always the first. `octet_length` reads a stored value's size without
            // detoasting it, so messages past the budget are never fetched.
            read: sql("SELECT msg_offset, data FROM ( \
                     SELECT msg_offset, data, row_number() OVER w AS n, \
                     sum(octet_length(data)) OVER w - octet_length(data) AS before \
                     FROM ( \
                         SELECT msg_offset, data FROM {s}.stream_messages \
                         WHERE stream_id = $1 AND msg_offset > $2 AND msg_offset <= $3 \
                         ORDER BY msg_offset LIMIT $5 \
                     ) batch \
                     WINDOW w AS (ORDER BY msg_offset ROWS UNBOUNDED PRECEDING) \
                 ) sized WHERE n = 1 OR before < $4 ORDER BY msg_offset"),
            touch: sql(
                "UPDATE {s}.streams SET last_access = $2 WHERE id = $1 AND last_access < $2",
            ),
            // Each half matches its partial index of migration 3 (Expires-At streams in
            // deadline order; TTL streams, whose deadline is computed from their row) and is
            // limited on its own, so that a backlog of expired streams is never sorted whole.
            // A row with both a TTL and an Expires-At is a TTL stream, as `decode` reads it.
            expired: sql(&format!(
                "SELECT path, id FROM ( \
                     (SELECT path, id, expires_at AS deadline FROM {{s}}.streams \
                     WHERE ttl_secs IS NULL AND expires_text IS NOT NULL AND NOT soft_deleted \
                     AND expires_at <= $1 ORDER BY expires_at, id LIMIT $2) \
                     UNION ALL \
                     (SELECT path, id, {TTL_DEADLINE} AS deadline FROM {{s}}.streams \
                     WHERE ttl_secs IS NOT NULL AND NOT soft_deleted \
                     AND {TTL_DEADLINE} <= $1 ORDER BY deadline, id LIMIT $2) \
                 ) expired ORDER BY deadline, id LIMIT $2"
            )),
        }
    }
}

/// One autocommit statement sending the notifications, pipelined right after `COMMIT` (see
/// `events::announce` for why not inside the writing transaction).
const NOTIFY: &str = "WITH quick AS (SELECT set_config('synchronous_commit', 'off', true)) \
     SELECT pg_notify($1, payload) FROM quick, unnest($2::text[]) AS payload";

/// A transaction on a pooled connection, begun and ended by hand: the first statement sent on
/// [`client`](Open::client) must be `BEGIN`, and the owner calls [`ended`](Open::ended) once
/// a `COMMIT` (or `ROLLBACK`) was answered. `tokio_postgres::Transaction` would await `BEGIN`
/// and `COMMIT` alone, a round trip each.
///
/// Dropped while the transaction may still be open (a failure, or the caller's future dropped
/// half-way), it takes its connection out of the pool and closes it: the server rolls the
/// transaction back, and no pooled connection is left inside a transaction.
struct Open {
    /// `None` once the transaction ended and the connection went back (or away).
    client: Option<Object>,
}

impl Open {
    fn new(client: Object) -> Self {
        Self {
            client: Some(client),
        }
    }

    /// The connection, while the transaction is open.
    fn client(&self) -> Result<&Object, Failure> {
        self.client.as_ref().ok_or_else(|| {
            Failure::Store(StoreError::backend(
                "writing a stream",
                "the transaction has already ended",
            ))
        })
    }

    /// The server ended the transaction: the connection goes back to the pool.
    fn ended(&mut self) {
        self.client = None;
    }

    /// The connection's state is unknown: close it rather than pool it.
    fn discard(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }

    /// Rolls back whatever is open (nothing when the transaction already ended). A rollback that
    /// fails discards the connection, which rolls back too.
    async fn rollback(&mut self) {
        let Some(client) = &self.client else {
            return;
        };
        match client.batch_execute("ROLLBACK").await {
            Ok(()) => self.ended(),
            Err(_) => self.discard(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.discard();
    }
}

/// What an unknown commit outcome means for a write.
#[derive(Debug, Clone, Copy)]
enum Unknown {
    /// Retry: the write recognises its own earlier success.
    Retry,
    /// Fail with this context: repeating the write could apply it twice.
    Fail(&'static str),
}

/// Whether the server answered `error` to a statement and stays up: an ERROR, not a FATAL
/// (which ends the session, and may come after a COMMIT was done, e.g. when the backend is
/// terminated before the answer went out).
fn answered(error: &Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.parsed_severity() == Some(Severity::Error))
}

/// Reads the answers of the last round trip (the writes, then `COMMIT`), ends `open`
/// accordingly, and says whether the transaction committed.
fn settle(
    open: &mut Open,
    writes: impl IntoIterator<Item = Result<(), Error>>,
    commit: Result<(), Error>,
    unknown: Unknown,
) -> Result<(), Failure> {
    match &commit {
        // Answered: the transaction ended (as a rollback if a write had failed).
        Ok(()) => open.ended(),
        Err(error) if answered(error) => open.ended(),
        Err(_) => open.discard(),
    }
    // The server executes the statements in order: the first failure tells what happened.
    let error = match writes.into_iter().find_map(Result::err) {
        // A write the server refused (even fatally): COMMIT was not executed, or was answered
        // as a ROLLBACK. Retrying is safe where the refusal is transient.
        Some(error) if error.code().is_some() => return Err(Failure::Db(error)),
        // The connection failed: COMMIT may have been executed all the same.
        Some(error) => error,
        None => match commit {
            Ok(()) => return Ok(()),
            // Refused at commit (a serialization failure, a deferred constraint): rolled back.
            Err(error) if answered(&error) => return Err(Failure::Db(error)),
            Err(error) => error,
        },
    };
    match unknown {
        Unknown::Retry => Err(Failure::Db(error)),
        // Not transient: the retry loop hands it to the caller as it is.
        Unknown::Fail(context) => Err(Failure::Store(StoreError::backend(
            format!(
                "{context}: the connection failed while committing, so the write may or may \
                 not have been stored"
            ),
            error,
        ))),
    }
}

/// `future`'s result when there is one to run; polled in place, so a statement it sends keeps
/// its position in a pipeline.
async fn maybe<T>(
    future: Option<impl Future<Output = Result<T, Error>>>,
) -> Result<Option<T>, Error> {
    match future {
        Some(future) => future.await.map(Some),
        None => Ok(None),
    }
}

/// Ignores a statement's row count.
fn done<T>(result: Result<T, Error>) -> Result<(), Error> {
    result.map(|_| ())
}

/// Logs a notification that could not be sent: it is a hint, the write stands.
fn check_notified<T>(result: Result<T, Error>, id: StreamId) {
    if let Err(error) = result {
        tracing::warn!(stream = %id, %error, "cannot announce a stream change; listeners catch up later");
    }
}

/// A client-chosen u64 as stored: its bit pattern (see migration 2).
fn bits(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

/// The u64 whose bit pattern was stored.
fn from_bits(stored: i64) -> u64 {
    u64::from_ne_bytes(stored.to_ne_bytes())
}

/// An offset as stored; those past `i64::MAX` cannot be.
fn stored_offset(offset: StreamOffset) -> Result<i64, StoreError> {
    i64::try_from(offset.get()).map_err(|_| {
        StoreError::backend(
            "storing a stream offset",
            InvalidInput::new(format!(
                "offset {} is too large for PostgreSQL",
                offset.get()
            )),
        )
    })
}

/// A stored offset or count.
fn count(stored: i64) -> Result<u64, InvalidInput> {
    u64::try_from(stored).map_err(|_| InvalidInput::new(format!("negative count {stored}")))
}

/// The offset after `messages` more messages past `tail`.
fn tail_after(tail: StreamOffset, messages: usize) -> Result<StreamOffset, StoreError> {
    u64::try_from(messages)
        .ok()
        .and_then(|messages| tail.get().checked_add(messages))
        .map(StreamOffset::new)
        .ok_or_else(|| {
            StoreError::backend(
                "appending to a stream",
                InvalidInput::new("the stream's tail would overflow"),
            )
        })
}

/// Decodes a row holding [`COLUMNS`].
fn info(row: &Row) -> Result<StreamInfo, StoreError> {
    decode(row).map_err(|error| StoreError::backend("decoding a stored stream", error))
}

fn decode(row: &Row) -> Result<StreamInfo, Box<dyn StdError + Send + Sync>> {
    let ttl: Option<i64> = row.try_get("ttl_secs")?;
    let at: Option<i64> = row.try_get("expires_at")?;
    let at_text: Option<String> = row.try_get("expires_text")?;
    let expiry = match (ttl, at, at_text) {
        (Some(secs), _, _) => Some(StreamExpiry::Ttl {
            secs: from_bits(secs),
        }),
        (None, Some(at), Some(text)) => Some(StreamExpiry::At { text, at }),
        _ => None,
    };
    let closer_id: Option<String> = row.try_get("closer_id")?;
    let closer_epoch: Option<i64> = row.try_get("closer_epoch")?;
    let closer_seq: Option<i64> = row.try_get("closer_seq")?;
    let closed_by = match (closer_id, closer_epoch, closer_seq) {
        (Some(id), Some(epoch), Some(seq)) => Some(ProducerClaim {
            id,
            epoch: from_bits(epoch),
            seq: from_bits(seq),
        }),
        _ => None,
    };
    let fork_path: Option<String> = row.try_get("fork_path")?;
    let fork_id: Option<i64> = row.try_get("fork_id")?;
    let fork_offset: Option<i64> = row.try_get("fork_offset")?;
    let fork_sub_offset: Option<i64> = row.try_get("fork_sub_offset")?;
    let fork = match (fork_path, fork_id, fork_offset) {
        (Some(source_path), Some(source_id), Some(offset)) => Some(ForkOrigin {
            source_path,
            source_id: StreamId::new(source_id),
            offset: StreamOffset::new(count(offset)?),
            sub_offset: fork_sub_offset.map_or(0, from_bits),
        }),
        _ => None,
    };
    let Json(inherited): Json<Vec<StreamSegment>> = row.try_get("inherited")?;
    Ok(StreamInfo {
        id: StreamId::new(row.try_get("id")?),
        path: row.try_get("path")?,
        content_type: row.try_get("content_type")?,
        expiry,
        created: row.try_get("created")?,
        last_access: row.try_get("last_access")?,
        tail: StreamOffset::new(count(row.try_get("tail")?)?),
        closed: row.try_get("closed")?,
        closed_by,
        last_stream_seq: row.try_get("last_stream_seq")?,
        fork,
        inherited,
        forks: count(row.try_get("forks")?)?,
        soft_deleted: row.try_get("soft_deleted")?,
    })
}

fn producer_state(row: &Row) -> Result<ProducerState, StoreError> {
    let decoded = (|| -> Result<ProducerState, Error> {
        Ok(ProducerState {
            epoch: from_bits(row.try_get("epoch")?),
            last_seq: from_bits(row.try_get("last_seq")?),
            updated: row.try_get("updated")?,
        })
    })();
    decoded.map_err(|error| StoreError::backend("decoding a stream producer", error))
}

/// What an operation on `open` returned, once whatever it left open is rolled back (when it
/// failed half-way).
async fn closing<T>(mut open: Open, result: Result<T, Failure>) -> Result<T, Failure> {
    if result.is_err() {
        open.rollback().await;
    }
    result
}

pub(crate) async fn create(inner: &Inner, new: NewStream) -> StoreResult<CreateStreamOutcome> {
    let token = write_token();
    let plan = CreatePlan::new(&new)?;
    let (new, plan, token) = (&new, &plan, token.as_str());
    inner
        .retry
        .run("creating a stream", |attempt| async move {
            let mut open = Open::new(inner.pool.get().await?);
            let result = create_in(inner, &mut open, new, plan, token, attempt).await;
            closing(open, result).await
        })
        .await
}

/// What [`create`] stores, in the form it binds.
struct CreatePlan<'a> {
    ttl_secs: Option<i64>,
    expires_at: Option<i64>,
    expires_text: Option<&'a str>,
    /// The fork offset (0 for a stream that is no fork): its messages follow it.
    base: i64,
    tail: i64,
    fork_path: Option<&'a str>,
    fork_id: Option<i64>,
    fork_offset: Option<i64>,
    fork_sub_offset: Option<i64>,
    inherited: Json<&'a [StreamSegment]>,
    data: Vec<&'a [u8]>,
}

impl<'a> CreatePlan<'a> {
    fn new(new: &'a NewStream) -> StoreResult<Self> {
        let (ttl_secs, expires_at, expires_text) = match &new.expiry {
            None => (None, None, None),
            Some(StreamExpiry::Ttl { secs }) => (Some(bits(*secs)), None, None),
            Some(StreamExpiry::At { text, at }) => (None, Some(*at), Some(text.as_str())),
        };
        let fork = new.fork.as_ref();
        let start = fork.map_or(StreamOffset::ZERO, |fork| fork.offset);
        Ok(Self {
            ttl_secs,
            expires_at,
            expires_text,
            base: stored_offset(start)?,
            tail: stored_offset(tail_after(start, new.messages.len())?)?,
            fork_path: fork.map(|fork| fork.source_path.as_str()),
            fork_id: fork.map(|fork| fork.source_id.get()),
            fork_offset: fork.map(|fork| stored_offset(fork.offset)).transpose()?,
            fork_sub_offset: fork.map(|fork| bits(fork.sub_offset)),
            inherited: Json(fork.map_or(&[][..], |fork| fork.inherited.as_slice())),
            data: new.messages.iter().map(|message| &message[..]).collect(),
        })
    }
}

async fn create_in(
    inner: &Inner,
    open: &mut Open,
    new: &NewStream,
    plan: &CreatePlan<'_>,
    token: &str,
    attempt: Attempt,
) -> Result<CreateStreamOutcome, Failure> {
    let sql = &inner.streams;
    let client = open.client()?;
    let (path_lock, lock_path, lock_id, create, add_fork) = futures::try_join!(
        client.prepare_cached(&sql.path_lock),
        client.prepare_cached(&sql.lock_path),
        client.prepare_cached(&sql.lock_id),
        client.prepare_cached(&sql.create),
        client.prepare_cached(&sql.add_fork),
    )?;
    // One round trip: begin, take the path, lock what lives there and the fork's source.
    let path: [Param<'_>; 1] = [&new.path];
    let source_key = plan.fork_id.as_ref().map(|id| -> [Param<'_>; 1] { [id] });
    let (began, locked, existing, source) = futures::join!(
        client.batch_execute("BEGIN"),
        client.execute(&path_lock, &path),
        client.query_opt(&lock_path, &path),
        maybe(
            source_key
                .as_ref()
                .map(|key| client.query_opt(&lock_id, key))
        ),
    );
    began?;
    locked?;
    let existing = existing?;
    let source = source?.flatten().map(|row| info(&row)).transpose()?;

    let mut removed = Vec::new();
    if let Some(row) = existing {
        let stream = info(&row)?;
        let stored_token: Option<&str> = row.try_get("write_token")?;
        if attempt.is_retry() && stored_token == Some(token) {
            // An earlier attempt of this very call committed; its answer was lost.
            open.rollback().await;
            return Ok(CreateStreamOutcome::Created(stream));
        }
        if stream.soft_deleted {
            open.rollback().await;
            return Ok(CreateStreamOutcome::PathGone);
        }
        if !stream.is_expired(new.now) {
            open.rollback().await;
            return Ok(if new.matches(&stream) {
                CreateStreamOutcome::Existing(stream)
            } else {
                CreateStreamOutcome::Conflict(stream)
            });
        }
        if stream.forks > 0 {
            // Expired while forked: soft-deleted, as a delete would, and the path stays taken.
            let (soft_delete, notify) = futures::try_join!(
                client.prepare_cached(&sql.soft_delete),
                client.prepare_cached(NOTIFY),
            )?;
            let id = stream.id.get();
            let id: [Param<'_>; 1] = [&id];
            let payload = vec![Channels::stream_payload(stream.id)];
            let notice: [Param<'_>; 2] = [&inner.channels.stream, &payload];
            let (deleted, committed, notified) = futures::join!(
                client.execute(&soft_delete, &id),
                client.batch_execute("COMMIT"),
                client.execute(&notify, &notice),
            );
            check_notified(notified, stream.id);
            settle(open, [done(deleted)], committed, Unknown::Retry)?;
            return Ok(CreateStreamOutcome::PathGone);
        }
        // Expired and unforked: deleted, and the path is free.
        removed = remove(inner, client, &stream).await?;
    }

    if let Some(fork) = &new.fork {
        match &source {
            None => {
                open.rollback().await;
                return Ok(CreateStreamOutcome::SourceMissing);
            }
            Some(source) if source.soft_deleted => {
                open.rollback().await;
                return Ok(CreateStreamOutcome::SourceGone);
            }
            // The expired stream just removed was the source itself.
            Some(_) if removed.contains(&fork.source_id) => {
                open.rollback().await;
                return Ok(CreateStreamOutcome::SourceMissing);
            }
            Some(_) => {}
        }
    }

    let notify = client.prepare_cached(NOTIFY).await?;
    let payload: Vec<String> = removed
        .iter()
        .copied()
        .map(Channels::stream_payload)
        .collect();
    let notice: [Param<'_>; 2] = [&inner.channels.stream, &payload];
    let row: [Param<'_>; 16] = [
        &new.path,
        &new.content_type,
        &plan.ttl_secs,
        &plan.expires_at,
        &plan.expires_text,
        &new.now,
        &plan.tail,
        &new.closed,
        &plan.fork_path,
        &plan.fork_id,
        &plan.base,
        &plan.fork_offset,
        &plan.fork_sub_offset,
        &plan.inherited,
        &token,
        &plan.data,
    ];
    // One round trip: count the fork, insert the stream and its messages, commit, and tell the
    // readers of a removed expired stream.
    let (added, created, committed, notified) = futures::join!(
        maybe(
            source_key
                .as_ref()
                .map(|key| client.execute(&add_fork, key))
        ),
        client.query_one(&create, &row),
        client.batch_execute("COMMIT"),
        maybe((!payload.is_empty()).then(|| client.execute(&notify, &notice))),
    );
    if let Some(id) = removed.first() {
        check_notified(notified, *id);
    }
    let (row, inserted) = match created {
        Ok(row) => (Some(row), Ok(())),
        Err(error) => (None, Err(error)),
    };
    settle(open, [done(added), inserted], committed, Unknown::Retry)?;
    match row {
        Some(row) => Ok(CreateStreamOutcome::Created(info(&row)?)),
        // `settle` has reported the insert's failure.
        None => Err(Failure::Store(StoreError::backend(
            "creating a stream",
            "the insert returned no row",
        ))),
    }
}

/// Removes `stream` (locked, without forks) with its messages and producers, inside the
/// caller's transaction, and takes it off its source's fork count; a soft-deleted source left
/// without forks goes the same way, and so on up the chain. Returns the removed streams.
async fn remove(
    inner: &Inner,
    client: &Object,
    stream: &StreamInfo,
) -> Result<Vec<StreamId>, Failure> {
    let sql = &inner.streams;
    let (drop_messages, drop_producers, drop_stream, drop_fork) = futures::try_join!(
        client.prepare_cached(&sql.drop_messages),
        client.prepare_cached(&sql.drop_producers),
        client.prepare_cached(&sql.drop_stream),
        client.prepare_cached(&sql.drop_fork),
    )?;
    let mut removed = Vec::new();
    let mut id = stream.id.get();
    let mut source = stream.fork.as_ref().map(|fork| fork.source_id.get());
    loop {
        // One round trip per stream of the chain. The fork's row goes before its source's is
        // updated: the source's row lock comes second, as everywhere.
        let this: [Param<'_>; 1] = [&id];
        let parent = source.as_ref().map(|id| -> [Param<'_>; 1] { [id] });
        let (messages, producers, row, parent) = futures::join!(
            client.execute(&drop_messages, &this),
            client.execute(&drop_producers, &this),
            client.execute(&drop_stream, &this),
            maybe(
                parent
                    .as_ref()
                    .map(|parent| client.query_opt(&drop_fork, parent))
            ),
        );
        messages?;
        producers?;
        row?;
        removed.push(StreamId::new(id));
        let (Some(parent_id), Some(parent)) = (source, parent?.flatten()) else {
            return Ok(removed);
        };
        let soft_deleted: bool = parent.try_get("soft_deleted")?;
        let forks: i64 = parent.try_get("forks")?;
        if !soft_deleted || forks > 0 {
            return Ok(removed);
        }
        id = parent_id;
        source = parent.try_get("fork_id")?;
    }
}

pub(crate) async fn info_at(inner: &Inner, path: &str) -> StoreResult<Option<StreamInfo>> {
    inner
        .retry
        .run("reading a stream", |_| async {
            let client = inner.pool.get().await?;
            let statement = client.prepare_cached(&inner.streams.info).await?;
            match client.query_opt(&statement, &[&path]).await? {
                Some(row) => Ok(Some(info(&row)?)),
                None => Ok(None),
            }
        })
        .await
}

/// The most appends one transaction takes.
const MAX_BATCH: usize = 256;

/// The bytes of messages past which a transaction takes no more appends (it always takes one).
const MAX_BATCH_BYTES: usize = 8 << 20;

/// One caller's append, waiting for its stream's next transaction.
struct Queued {
    append: StreamAppend,
    reply: oneshot::Sender<StoreResult<AppendOutcome>>,
}

/// The appends waiting for their stream's next transaction, by path: an entry exists while a
/// task writes that stream's appends (see [`append`]).
#[derive(Default)]
pub(crate) struct Queues(Mutex<HashMap<String, Vec<Queued>>>);

impl Queues {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Queued>>> {
        // A panic elsewhere while holding the lock leaves the map consistent (each change is
        // one insert, push, drain or remove).
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Appends to one stream: group commit per stream. The first append to a stream that finds no
/// transaction of the stream under way starts a task that writes it; the appends arriving
/// meanwhile queue, and the task writes all of them in its next transaction, until none wait.
///
/// Appends to one stream serialise on its row lock anyway (offsets are positions), each holding
/// it until its COMMIT is flushed: one transaction for all that queued makes them share that
/// flush. Each append is still decided by [`plan_append`] inside the transaction that writes
/// it, from the stream and producer state as the appends before it (in the same transaction or
/// committed ones) left it, exactly as if they ran one after the other.
///
/// The task writes an append whose caller went away meanwhile (its outcome was unknown to that
/// caller from the moment it was sent anyway).
pub(crate) async fn append(
    inner: &Arc<Inner>,
    path: &str,
    append: StreamAppend,
) -> StoreResult<AppendOutcome> {
    let (reply, answer) = oneshot::channel();
    let queued = Queued { append, reply };
    let first = {
        let mut queues = inner.stream_appends.lock();
        match queues.get_mut(path) {
            Some(waiting) => {
                waiting.push(queued);
                None
            }
            None => {
                queues.insert(path.to_owned(), Vec::new());
                Some(queued)
            }
        }
    };
    if let Some(first) = first {
        tokio::spawn(write_appends(inner.clone(), path.to_owned(), first));
    }
    answer.await.map_err(|_| StoreError::Closed)?
}

/// Forgets the stream's queue if its task ends early (a panic): the appends still queued then
/// learn `Closed`, and the next one starts a task again.
struct Writing<'a> {
    inner: &'a Inner,
    path: &'a str,
    done: bool,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.inner.stream_appends.lock().remove(self.path);
        }
    }
}

/// The task writing `path`'s appends, `first` and then batches of those that queued, until
/// none wait.
async fn write_appends(inner: Arc<Inner>, path: String, first: Queued) {
    let mut writing = Writing {
        inner: &inner,
        path: &path,
        done: false,
    };
    let mut batch = vec![first];
    loop {
        let appends: Vec<&StreamAppend> = batch.iter().map(|queued| &queued.append).collect();
        let result = write_batch(&inner, &path, &appends).await;
        reply(batch, result);
        let mut queues = inner.stream_appends.lock();
        let Some(waiting) = queues.get_mut(&path) else {
            writing.done = true;
            return;
        };
        if waiting.is_empty() {
            queues.remove(&path);
            writing.done = true;
            return;
        }
        let mut bytes = 0;
        let take = waiting
            .iter()
            .take(MAX_BATCH)
            .take_while(|queued| {
                let first = bytes == 0;
                bytes += queued
                    .append
                    .messages
                    .iter()
                    .map(|m| m.len())
                    .sum::<usize>()
                    .max(1);
                first || bytes <= MAX_BATCH_BYTES
            })
            .count();
        batch = waiting.drain(..take).collect();
    }
}

/// Answers each queued append.
fn reply(batch: Vec<Queued>, result: StoreResult<Vec<AppendOutcome>>) {
    match result {
        Ok(outcomes) => {
            for (queued, outcome) in batch.into_iter().zip(outcomes) {
                // A caller that went away does not need its answer.
                let _ = queued.reply.send(Ok(outcome));
            }
        }
        Err(error) => {
            // The batch failed as a whole, and so did each of its appends: each learns the
            // same (one the error itself, with its source).
            let copies = batch.len().saturating_sub(1);
            let mut errors: Vec<StoreError> = (0..copies).map(|_| copy(&error)).collect();
            errors.push(error);
            for (queued, error) in batch.into_iter().zip(errors) {
                let _ = queued.reply.send(Err(error));
            }
        }
    }
}

/// The same error, for another caller (errors cannot be cloned; a backend's source is kept as
/// its message).
fn copy(error: &StoreError) -> StoreError {
    match error {
        StoreError::Closed => StoreError::Closed,
        StoreError::Backend { context, source } => {
            StoreError::backend(context.clone(), source.to_string())
        }
        other => StoreError::backend("appending to a stream", other.to_string()),
    }
}

/// One transaction of appends to the stream at `path`: their outcomes, in order.
async fn write_batch(
    inner: &Inner,
    path: &str,
    appends: &[&StreamAppend],
) -> StoreResult<Vec<AppendOutcome>> {
    inner
        .retry
        .run("appending to a stream", |_| async move {
            let mut open = Open::new(inner.pool.get().await?);
            let result = batch_in(inner, &mut open, path, appends).await;
            closing(open, result).await
        })
        .await
}

async fn batch_in(
    inner: &Inner,
    open: &mut Open,
    path: &str,
    appends: &[&StreamAppend],
) -> Result<Vec<AppendOutcome>, Failure> {
    let sql = &inner.streams;
    let client = open.client()?;
    let (lock, producers, insert, advance, save, notify) = futures::try_join!(
        client.prepare_cached(&sql.lock_path),
        client.prepare_cached(&sql.producers),
        client.prepare_cached(&sql.append_messages),
        client.prepare_cached(&sql.advance),
        client.prepare_cached(&sql.save_producers),
        client.prepare_cached(NOTIFY),
    )?;
    // Round trip one: begin, lock the stream, read the writing producers' states (sent once
    // the lock is granted, so they are what the stream's last writer committed).
    let mut claimed: Vec<&str> = appends
        .iter()
        .filter_map(|append| append.producer.as_ref().map(|claim| claim.id.as_str()))
        .collect();
    claimed.sort_unstable();
    claimed.dedup();
    let at: [Param<'_>; 1] = [&path];
    let claims: [Param<'_>; 2] = [&path, &claimed];
    let (began, stream, stored) = futures::join!(
        client.batch_execute("BEGIN"),
        client.query_opt(&lock, &at),
        maybe((!claimed.is_empty()).then(|| client.query(&producers, &claims))),
    );
    began?;
    let Some(mut stream) = stream?.map(|row| info(&row)).transpose()? else {
        // No stream: each append learns so from `plan_append`.
        open.rollback().await;
        return Ok(appends
            .iter()
            .map(|append| match plan_append(None, None, append) {
                Err(outcome) => outcome,
                Ok(_) => AppendOutcome::NotFound,
            })
            .collect());
    };
    let mut states: HashMap<String, ProducerState> = HashMap::new();
    for row in stored?.unwrap_or_default() {
        states.insert(row.try_get("producer_id")?, producer_state(&row)?);
    }

    // Each append decided in order, on the state the ones before it left.
    let start = stream.tail;
    let mut data: Vec<&[u8]> = Vec::new();
    let mut saved: HashMap<&str, ProducerState> = HashMap::new();
    let mut outcomes = Vec::with_capacity(appends.len());
    let mut changed = false;
    let mut accepted = false;
    for append in appends {
        let state = append
            .producer
            .as_ref()
            .and_then(|claim| states.get(&claim.id));
        match plan_append(Some(&stream), state, append) {
            Err(outcome) => outcomes.push(outcome),
            Ok(plan) => {
                accepted = true;
                changed |= !append.messages.is_empty() || plan.close;
                data.extend(append.messages.iter().map(|message| &message[..]));
                stream.tail = tail_after(stream.tail, append.messages.len())?;
                stream.closed = plan.close;
                stream.closed_by = plan.closed_by;
                if plan.stream_seq.is_some() {
                    stream.last_stream_seq = plan.stream_seq;
                }
                // Never back: replicas' clocks differ.
                stream.last_access = stream.last_access.max(append.now);
                if let Some((producer, state)) = plan.producer {
                    states.insert(producer, state);
                    if let Some(claim) = &append.producer {
                        saved.insert(claim.id.as_str(), state);
                    }
                }
                outcomes.push(AppendOutcome::Appended {
                    tail: stream.tail,
                    closed: stream.closed,
                });
            }
        }
    }
    if !accepted {
        open.rollback().await;
        return Ok(outcomes);
    }

    // Round trip two: the messages, the stream's new state and the producers', COMMIT, and
    // (only once that committed, in a transaction of its own) the notification.
    let id = stream.id.get();
    let base = stored_offset(start)?;
    let tail = stored_offset(stream.tail)?;
    let closer = stream.closed_by.as_ref();
    let closer_id = closer.map(|claim| claim.id.as_str());
    let closer_epoch = closer.map(|claim| bits(claim.epoch));
    let closer_seq = closer.map(|claim| bits(claim.seq));
    let producer_ids: Vec<&str> = saved.keys().copied().collect();
    let epochs: Vec<i64> = producer_ids.iter().map(|p| bits(saved[p].epoch)).collect();
    let seqs: Vec<i64> = producer_ids
        .iter()
        .map(|p| bits(saved[p].last_seq))
        .collect();
    let updated: Vec<Millis> = producer_ids.iter().map(|p| saved[p].updated).collect();
    let payload = vec![Channels::stream_payload(stream.id)];
    let messages: [Param<'_>; 3] = [&id, &base, &data];
    let state: [Param<'_>; 8] = [
        &id,
        &tail,
        &stream.closed,
        &closer_id,
        &closer_epoch,
        &closer_seq,
        &stream.last_stream_seq,
        &stream.last_access,
    ];
    let producers: [Param<'_>; 5] = [&id, &producer_ids, &epochs, &seqs, &updated];
    let notice: [Param<'_>; 2] = [&inner.channels.stream, &payload];
    let (inserted, advanced, kept, committed, notified) = futures::join!(
        maybe((!data.is_empty()).then(|| client.execute(&insert, &messages))),
        client.execute(&advance, &state),
        maybe((!producer_ids.is_empty()).then(|| client.execute(&save, &producers))),
        client.batch_execute("COMMIT"),
        maybe(changed.then(|| client.execute(&notify, &notice))),
    );
    check_notified(notified, stream.id);
    settle(
        open,
        [done(inserted), done(advanced), done(kept)],
        committed,
        Unknown::Fail("appending to a stream"),
    )?;
    Ok(outcomes)
}

pub(crate) async fn read(
    inner: &Inner,
    id: StreamId,
    after: StreamOffset,
    upto: Option<StreamOffset>,
    max_bytes: usize,
) -> StoreResult<Vec<StreamMessage>> {
    // No stored offset lies past i64::MAX.
    let Ok(after) = i64::try_from(after.get()) else {
        return Ok(Vec::new());
    };
    let upto = upto.map_or(i64::MAX, |upto| {
        i64::try_from(upto.get()).unwrap_or(i64::MAX)
    });
    if upto <= after {
        return Ok(Vec::new());
    }
    let budget = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    inner
        .retry
        .run("reading a stream", |_| async {
            let client = inner.pool.get().await?;
            let statement = client.prepare_cached(&inner.streams.read).await?;
            let mut messages = Vec::new();
            let mut from = after;
            let mut total: i64 = 0;
            loop {
                let rows = client
                    .query(
                        &statement,
                        &[&id.get(), &from, &upto, &(budget - total), &READ_BATCH],
                    )
                    .await?;
                // Every message of the batch fitted: there may be more.
                let whole_batch = i64::try_from(rows.len()) == Ok(READ_BATCH);
                for row in rows {
                    let offset: i64 = row.try_get(0)?;
                    let data: Vec<u8> = row.try_get(1)?;
                    total = total.saturating_add(i64::try_from(data.len()).unwrap_or(i64::MAX));
                    from = offset;
                    messages.push(StreamMessage {
                        offset: StreamOffset::new(count(offset).map_err(|error| {
                            StoreError::backend("decoding a stream message", error)
                        })?),
                        data: data.into(),
                    });
                }
                if !whole_batch || total >= budget {
                    return Ok(messages);
                }
            }
        })
        .await
}

pub(crate) async fn delete(
    inner: &Inner,
    path: &str,
    only: Option<StreamId>,
    expired_at: Option<Millis>,
) -> StoreResult<DeleteStreamOutcome> {
    inner
        .retry
        .run("deleting a stream", |_| async move {
            let mut open = Open::new(inner.pool.get().await?);
            let result = delete_in(inner, &mut open, path, only, expired_at).await;
            closing(open, result).await
        })
        .await
}

async fn delete_in(
    inner: &Inner,
    open: &mut Open,
    path: &str,
    only: Option<StreamId>,
    expired_at: Option<Millis>,
) -> Result<DeleteStreamOutcome, Failure> {
    const CONTEXT: &str = "deleting a stream";
    let sql = &inner.streams;
    let client = open.client()?;
    let (lock, soft_delete, notify) = futures::try_join!(
        client.prepare_cached(&sql.lock_path),
        client.prepare_cached(&sql.soft_delete),
        client.prepare_cached(NOTIFY),
    )?;
    let at: [Param<'_>; 1] = [&path];
    let (began, stream) =
        futures::join!(client.batch_execute("BEGIN"), client.query_opt(&lock, &at));
    began?;
    let stream = stream?.map(|row| info(&row)).transpose()?;
    let Some(stream) = stream.filter(|stream| only.is_none_or(|only| only == stream.id)) else {
        open.rollback().await;
        return Ok(DeleteStreamOutcome::NotFound);
    };
    if stream.soft_deleted {
        open.rollback().await;
        return Ok(DeleteStreamOutcome::Gone);
    }
    // `Store::expire_stream`: judged again under the row lock, where no write comes in between.
    if expired_at.is_some_and(|now| !stream.is_expired(now)) {
        open.rollback().await;
        return Ok(DeleteStreamOutcome::NotExpired);
    }
    let payload = vec![Channels::stream_payload(stream.id)];
    let notice: [Param<'_>; 2] = [&inner.channels.stream, &payload];
    if stream.forks > 0 {
        // Its forks still read its messages: gone for everyone else until they are deleted.
        let id = stream.id.get();
        let id: [Param<'_>; 1] = [&id];
        let (deleted, committed, notified) = futures::join!(
            client.execute(&soft_delete, &id),
            client.batch_execute("COMMIT"),
            client.execute(&notify, &notice),
        );
        check_notified(notified, stream.id);
        settle(open, [done(deleted)], committed, Unknown::Fail(CONTEXT))?;
        return Ok(DeleteStreamOutcome::SoftDeleted);
    }
    remove(inner, client, &stream).await?;
    let (committed, notified) = futures::join!(
        client.batch_execute("COMMIT"),
        client.execute(&notify, &notice),
    );
    check_notified(notified, stream.id);
    settle(open, [], committed, Unknown::Fail(CONTEXT))?;
    Ok(DeleteStreamOutcome::Deleted)
}

pub(crate) async fn expired(
    inner: &Inner,
    now: Millis,
    limit: usize,
) -> StoreResult<Vec<(String, StreamId)>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    inner
        .retry
        .run("listing expired streams", |_| async {
            let client = inner.pool.get().await?;
            let statement = client.prepare_cached(&inner.streams.expired).await?;
            let rows = client.query(&statement, &[&now, &limit]).await?;
            rows.iter()
                .map(|row| -> Result<_, Failure> {
                    Ok((row.try_get(0)?, StreamId::new(row.try_get(1)?)))
                })
                .collect()
        })
        .await
}

pub(crate) async fn touch(inner: &Inner, id: StreamId, now: Millis) -> StoreResult<()> {
    // Idempotent (it only ever moves `last_access` forward): retried freely.
    inner
        .retry
        .run("recording a stream read", |_| async {
            let client = inner.pool.get().await?;
            let statement = client.prepare_cached(&inner.streams.touch).await?;
            client.execute(&statement, &[&id.get(), &now]).await?;
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_chosen_numbers_round_trip_through_their_stored_form() {
        for value in [0, 1, u64::from(u32::MAX), i64::MAX as u64, u64::MAX] {
            assert_eq!(from_bits(bits(value)), value);
        }
    }

    #[test]
    fn offsets_too_large_to_store_are_errors() {
        assert_eq!(stored_offset(StreamOffset::new(7)).ok(), Some(7));
        assert!(stored_offset(StreamOffset::BEYOND).is_err());
        assert!(tail_after(StreamOffset::new(u64::MAX), 1).is_err());
        assert_eq!(
            tail_after(StreamOffset::new(3), 2).ok(),
            Some(StreamOffset::new(5))
        );
    }
}
