//! Run logs: appending (gapless, retry-safe) and reading.

use bgrun_core::{Event, RunId, RunStatus, StoreError, StoreResult, Timestamp};
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use crate::fault::{Attempt, Failure};
use crate::notify::Channels;
use crate::record::{to_index, to_stored};
use crate::store::Inner;

/// `append_events` inside the writer's transaction (its own savepoint), holding the run's row
/// lock; the caller checked contiguity and announces the events once committed.
pub(crate) async fn append_in(
    inner: &Inner,
    tx: &Transaction<'_>,
    run_id: &RunId,
    events: &[Event],
    fence: Option<&str>,
    attempt: Attempt,
) -> Result<(), Failure> {
    let Some(first) = events.first() else {
        return Ok(());
    };
    let lock = tx
        .prepare_cached(
            &inner
                .sql("SELECT status, last_event_index FROM {s}.runs WHERE run_id = $1 FOR UPDATE"),
        )
        .await?;
    // Pipelined: the lock and the fence check in one round trip.
    let id = run_id.as_str();
    let params: [&(dyn ToSql + Sync); 1] = [&id];
    let (row, fenced) = futures::join!(
        tx.query_opt(&lock, &params),
        crate::lease::check_fence(inner, tx, run_id, fence)
    );
    let row = row?.ok_or_else(|| StoreError::RunNotFound(run_id.clone()))?;
    fenced?;
    let status = RunStatus::parse(row.get(0))
        .map_err(|error| StoreError::backend("decoding a run's status", error))?;
    let last: Option<i64> = row.get(1);
    let next = match last {
        Some(last) => to_index(last).map_err(|e| StoreError::backend("reading a run", e))? + 1,
        None => 0,
    };
    if first.index() < next && already_stored(inner, tx, attempt, run_id, events).await? {
        return Ok(());
    }
    if status.is_terminal() {
        // A terminal run takes nothing more.
        return Err(StoreError::RunEnded {
            run_id: run_id.clone(),
            status,
        }
        .into());
    }
    if first.index() != next {
        return Err(StoreError::IndexConflict {
            run_id: run_id.clone(),
            expected: next,
            got: first.index(),
        }
        .into());
    }
    write(inner, tx, run_id, events, bgrun_core::now()).await?;
    Ok(())
}

/// Tells listeners (every replica) that each run's log is stored up to its index, after the
/// commit that stored it (the writer's, on its connection).
///
/// Not in the writing transaction: a transaction that notifies holds a database-wide lock from
/// its commit's start to its end, WAL flush included, so notifying writes would commit one
/// at a time (P2 of `cargo xtask bench` doubled without it). A notification-only transaction
/// with `synchronous_commit = off` holds it for microseconds. A notification is a hint: if
/// this one is lost (the process dies right after the commit), the run's next write, its
/// recovery, or a listener's resync tells the same.
pub(crate) async fn announce(
    inner: &Inner,
    client: &deadpool_postgres::Object,
    stored: &[(RunId, u64)],
) {
    if stored.is_empty() {
        return;
    }
    let payloads: Vec<String> = stored
        .iter()
        .map(|(run_id, last)| Channels::durable_payload(run_id, *last))
        .collect();
    // One autocommit statement for the whole batch; `set_config(.., true)` lasts for its
    // transaction, and the CTE runs before the notifications.
    let sent = async {
        let notify = client
            .prepare_cached(
                "WITH quick AS (SELECT set_config('synchronous_commit', 'off', true)) \
                 SELECT pg_notify($1, payload) FROM quick, unnest($2::text[]) AS payload",
            )
            .await?;
        client
            .execute(&notify, &[&inner.channels.durable, &payloads])
            .await
    }
    .await;
    if let Err(error) = sent {
        tracing::warn!(runs = stored.len(), %error, "cannot announce stored events; listeners catch up later");
    }
}

/// Rejects a batch whose indices do not follow each other.
pub(crate) fn check_contiguous(run_id: &RunId, events: &[Event]) -> StoreResult<()> {
    let Some(first) = events.first() else {
        return Ok(());
    };
    for (offset, event) in events.iter().enumerate() {
        let expected = first.index() + offset as u64;
        if event.index() != expected {
            return Err(StoreError::IndexConflict {
                run_id: run_id.clone(),
                expected,
                got: event.index(),
            });
        }
    }
    Ok(())
}

/// On a retry, true when an earlier attempt did commit this very batch: every event at its
/// indices is stored with identical JSON. (On a first attempt an overlap is a conflict.)
async fn already_stored(
    inner: &Inner,
    tx: &Transaction<'_>,
    attempt: Attempt,
    run_id: &RunId,
    events: &[Event],
) -> Result<bool, Failure> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(false);
    };
    if !attempt.is_retry() {
        return Ok(false);
    }
    let rows = tx
        .query(
            &inner.sql(
                "SELECT json FROM {s}.events WHERE run_id = $1 AND event_index BETWEEN $2 AND $3 \
                 ORDER BY event_index",
            ),
            &[
                &run_id.as_str(),
                &to_stored(first.index())?,
                &to_stored(last.index())?,
            ],
        )
        .await?;
    Ok(rows.len() == events.len()
        && rows
            .iter()
            .zip(events)
            .all(|(row, event)| row.get::<_, &str>(0) == event.json()))
}

/// Inserts `events` (already checked to continue the log) and moves the run's
/// `last_event_index` (and `updated_at` to `at`), inside the caller's transaction. The caller
/// [`announce`]s them once committed.
pub(crate) async fn write(
    inner: &Inner,
    tx: &Transaction<'_>,
    run_id: &RunId,
    events: &[Event],
    at: Timestamp,
) -> Result<(), Failure> {
    let Some(last) = events.last() else {
        return Ok(());
    };
    let advance = tx
        .prepare_cached(&inner.sql(
            "UPDATE {s}.runs SET last_event_index = $2, updated_at = $3 \
             WHERE run_id = $1",
        ))
        .await?;
    let last = to_stored(last.index())?;
    // Pipelined: both in one round trip (a failure of either fails the caller's savepoint).
    let id = run_id.as_str();
    let params: [&(dyn ToSql + Sync); 3] = [&id, &last, &at];
    let (inserted, advanced) = futures::join!(
        insert(inner, tx, run_id, events),
        tx.execute(&advance, &params)
    );
    inserted?;
    advanced?;
    Ok(())
}

/// One multi-row INSERT of the batch: three arrays unnested server-side, one round trip with
/// a statement prepared once per connection.
///
/// Chosen over binary COPY (`BinaryCopyInWriter`) by measurement:
/// `BGRUN_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p
/// bgrun-store-postgres --example insert_vs_copy` (debug build, 2-core machine shared with
/// other builds, PostgreSQL 15 on localhost, median of 100 committed batches, three runs):
/// 1,000-row batches 2.37-2.62 ms INSERT vs 3.55-4.56 ms COPY; 10-row batches 159-293 µs
/// INSERT vs 216-461 µs COPY.
async fn insert(
    inner: &Inner,
    tx: &Transaction<'_>,
    run_id: &RunId,
    events: &[Event],
) -> Result<(), Failure> {
    let mut indices = Vec::with_capacity(events.len());
    for event in events {
        indices.push(to_stored(event.index())?);
    }
    let types: Vec<&str> = events.iter().map(Event::event_type).collect();
    let jsons: Vec<&str> = events.iter().map(Event::json).collect();
    let statement = tx
        .prepare_cached(&inner.sql(
            "INSERT INTO {s}.events (run_id, event_index, event_type, json) \
             SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[])",
        ))
        .await?;
    tx.execute(&statement, &[&run_id.as_str(), &indices, &types, &jsons])
        .await?;
    Ok(())
}

/// At most `limit` events after `after`, in order.
pub(crate) async fn read(
    inner: &Inner,
    run_id: &RunId,
    after: Option<u64>,
    limit: usize,
) -> StoreResult<Vec<Event>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let after = match after {
        Some(after) => i64::try_from(after).unwrap_or(i64::MAX),
        None => -1,
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let sql = inner.sql(
        "SELECT event_index, event_type, json FROM {s}.events \
         WHERE run_id = $1 AND event_index > $2 ORDER BY event_index LIMIT $3",
    );
    inner
        .retry
        .run("reading events", |_| async {
            let client = inner.pool.get().await?;
            let statement = client.prepare_cached(&sql).await?;
            let rows = client
                .query(&statement, &[&run_id.as_str(), &after, &limit])
                .await?;
            let mut events = Vec::with_capacity(rows.len());
            for row in rows {
                let index = to_index(row.get(0))
                    .map_err(|error| StoreError::backend("decoding an event", error))?;
                events.push(Event::from_parts(
                    index,
                    row.get::<_, &str>(1),
                    row.get::<_, &str>(2),
                ));
            }
            Ok(events)
        })
        .await
}
