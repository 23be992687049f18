//! The SQL of each write, run by the writer thread inside the batch transaction.
//!
//! Every write checks whatever can refuse it before it changes a row: a refused write has
//! written nothing (the writer relies on it). The writer's transaction holds the database's
//! write lock, so a write reads the run (a status change need not, when the writer holds the
//! run as it last committed it), checks its status and log end, then updates the row by its
//! rowid: two statements plus one insert per block of events, and a refusal is explained from
//! the same read.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bgrun_core::{
    CreateAndStart, CreateOutcome, Event, LeaseGrant, NewRun, RunId, RunStatus, StoreError,
    StoreResult, Timestamp, Transition, TransitionOutcome, IDEMPOTENCY_WINDOW_SECS,
};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

use crate::blocks;
use crate::codec::{
    index_to_sql, metadata_to_sql, params_to_sql, run_from_row, RUN_COLUMNS, SELECT_RUN, SEQ_COLUMN,
};
use crate::recent::Known;

fn sql(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::backend(context, e)
}

/// The current time in Unix milliseconds, the unit of lease expiry.
pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn expiry(now_ms: i64, ttl: Duration) -> i64 {
    now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// `Store::create_run`; with the new run's row id (`None`: an earlier run's, by its key).
pub(crate) fn create(conn: &Connection, run: NewRun) -> StoreResult<(CreateOutcome, Option<i64>)> {
    insert_run(conn, run, None).map(|(outcome, seq)| (outcome.created, seq))
}

/// `Store::create_and_start_run`: the run's row is inserted `RUNNING` with its `RunStarted`
/// event, as `create` followed by the `PENDING -> RUNNING` transition would leave it, in one
/// insert rather than an insert, a read and an update.
///
/// With `lease` (`Store::create_and_start_leased`), a run it starts is also leased to that
/// owner, in the same transaction. With the new run's row id, as [`create`].
pub(crate) fn create_and_start(
    conn: &Connection,
    run: NewRun,
    started: &Event,
    lease: Option<(&str, Duration)>,
) -> StoreResult<(CreateAndStart, Option<i64>)> {
    // Checked before the create: once it is written, a refused start would break the batch.
    if started.index() != 0 {
        return Err(StoreError::IndexConflict {
            run_id: run.run_id,
            expected: 0,
            got: started.index(),
        });
    }
    insert_run(conn, run, Some((started, lease)))
}

/// Creates `run`: `PENDING`, or, given its `RunStarted` event (index 0) and with no cancel
/// intent waiting for it, `RUNNING` with that event (and leased, given a lease's owner and ttl).
/// With the row id of the run it inserted.
fn insert_run(
    conn: &Connection,
    run: NewRun,
    start: Option<(&Event, Option<(&str, Duration)>)>,
) -> StoreResult<(CreateAndStart, Option<i64>)> {
    if let Some(key) = &run.idempotency_key {
        let earlier = conn
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE idempotency_key = ?1"
            ))
            .and_then(|mut stmt| stmt.query_row([key], run_from_row).optional())
            .map_err(sql("looking up an idempotency key"))?;
        if let Some(earlier) = earlier {
            if run.created_at.saturating_sub(earlier.created_at) < IDEMPOTENCY_WINDOW_SECS {
                return Ok((
                    CreateAndStart {
                        created: CreateOutcome::Existing(earlier),
                        started: None,
                    },
                    None,
                ));
            }
            // The key's window has passed: it is free for this run, if the run can be created
            // (a refused write must change nothing).
            let taken: bool = conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM runs WHERE run_id = ?1)")
                .and_then(|mut stmt| stmt.query_row([run.run_id.as_str()], |row| row.get(0)))
                .map_err(sql("checking a run id"))?;
            if taken {
                return Err(StoreError::RunExists(run.run_id));
            }
            conn.prepare_cached(
                "UPDATE runs SET idempotency_key = NULL WHERE idempotency_key = ?1",
            )
            .and_then(|mut stmt| stmt.execute([key]))
            .map_err(sql("freeing an expired idempotency key"))?;
        }
    }
    let cancel_requested: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM cancel_intents WHERE run_id = ?1)")
        .and_then(|mut stmt| stmt.query_row([run.run_id.as_str()], |row| row.get(0)))
        .map_err(sql("checking for a cancel intent"))?;
    // A run asked to cancel is created `PENDING`, for the engine to cancel it.
    let (start, lease) = match start {
        Some((event, lease)) if !cancel_requested => (
            Some((
                Transition::new(RunStatus::Pending, RunStatus::Running).at,
                // Encoded before the insert: a refusal comes before the run is written.
                blocks::blocks(std::slice::from_ref(event))?,
            )),
            lease,
        ),
        _ => (None, None),
    };
    let (status, updated_at, last_event_index) = match &start {
        Some((at, _)) => (RunStatus::Running, *at, Some(0)),
        None => (RunStatus::Pending, run.created_at, None),
    };
    let inserted = conn
        .prepare_cached(
            "INSERT INTO runs (run_id, session_id, user_id, kind, component_id, parent_run_id, \
             status, input, params, metadata, idempotency_key, created_at, updated_at, \
             last_event_index) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                run.run_id.as_str(),
                run.session_id.as_str(),
                run.user_id,
                run.target.kind.as_str(),
                run.target.component_id,
                run.parent_run_id.as_ref().map(RunId::as_str),
                status.as_str(),
                run.input,
                params_to_sql(&run.params),
                metadata_to_sql(run.metadata.as_ref()),
                run.idempotency_key,
                run.created_at,
                updated_at,
                last_event_index,
            ])
        });
    match inserted {
        Ok(_) => {
            let seq = conn.last_insert_rowid();
            let created = run.into_record();
            let started = match start {
                Some((at, blocks)) => {
                    insert_blocks(conn, seq, &blocks)?;
                    if let Some((owner, ttl)) = lease {
                        lease_new_run(conn, &created.run_id, owner, ttl)?;
                    }
                    let mut running = created.clone();
                    running.status = RunStatus::Running;
                    running.updated_at = at;
                    running.last_event_index = Some(0);
                    Some(running)
                }
                None => None,
            };
            Ok((
                CreateAndStart {
                    created: CreateOutcome::Created {
                        run: created,
                        cancel_requested,
                    },
                    started,
                },
                Some(seq),
            ))
        }
        // The idempotency key was checked (and freed if stale) above, so the one unique
        // constraint left to break is the run id's.
        Err(rusqlite::Error::SqliteFailure(error, _))
            if error.code == ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::RunExists(run.run_id))
        }
        Err(error) => Err(StoreError::backend("inserting a run", error)),
    }
}

/// The index a log whose last index is `last` takes next.
fn next_index(last: Option<u64>) -> u64 {
    last.map_or(0, |last| last + 1)
}

/// The first event of `events` that does not continue a log whose next index is `next`.
fn misfit(run_id: &RunId, next: u64, events: &[Event]) -> Option<StoreError> {
    (0u64..)
        .zip(events)
        .find(|(offset, event)| event.index() != next + offset)
        .map(|(offset, event)| StoreError::IndexConflict {
            run_id: run_id.clone(),
            expected: next + offset,
            got: event.index(),
        })
}

/// The `last_event_index` a log must have for `events` to continue it, and the one it has
/// after them; `None` when `events` do not even follow each other (or are empty).
fn expected_and_new_last(events: &[Event]) -> StoreResult<Option<(Option<i64>, i64)>> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(None);
    };
    let consecutive = events
        .windows(2)
        .all(|pair| pair[0].index().checked_add(1) == Some(pair[1].index()));
    if !consecutive {
        return Ok(None);
    }
    let expected = first.index().checked_sub(1).map(index_to_sql).transpose()?;
    Ok(Some((expected, index_to_sql(last.index())?)))
}

/// The run's seq, status and last event index, read to explain a refused write.
fn log_state(conn: &Connection, run_id: &RunId) -> StoreResult<(i64, RunStatus, Option<u64>)> {
    let found = conn
        .prepare_cached("SELECT seq, status, last_event_index FROM runs WHERE run_id = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([run_id.as_str()], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                ))
            })
            .optional()
        })
        .map_err(sql("reading a run"))?;
    let (seq, status, last) = found.ok_or_else(|| StoreError::RunNotFound(run_id.clone()))?;
    let status = RunStatus::parse(&status).map_err(|e| StoreError::backend("reading a run", e))?;
    let last = last
        .map(u64::try_from)
        .transpose()
        .map_err(|e| StoreError::backend("reading a run", e))?;
    Ok((seq, status, last))
}

/// What a refused write should have looked like: `Ok` only if, on a second look, it fits.
fn explain_refusal(run_id: &RunId, last: Option<u64>, events: &[Event]) -> StoreResult<()> {
    match misfit(run_id, next_index(last), events) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Writes `events` (consecutive, as the caller checked) as blocks.
fn insert_events(conn: &Connection, seq: i64, events: &[Event]) -> StoreResult<()> {
    insert_blocks(conn, seq, &blocks::blocks(events)?)
}

/// Inserts the blocks of the run whose rowid is `seq`.
fn insert_blocks(conn: &Connection, seq: i64, blocks: &[blocks::Block]) -> StoreResult<()> {
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO event_blocks (run_seq, last_index, first_index, codec, body) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(sql("inserting events"))?;
    for block in blocks {
        let (first, last) = (
            index_to_sql(block.first_index)?,
            index_to_sql(block.last_index)?,
        );
        insert
            .execute(params![seq, last, first, block.codec.to_sql(), block.body])
            .map_err(sql("inserting events"))?;
    }
    Ok(())
}

/// `Store::append_events`.
pub(crate) fn append(
    conn: &Connection,
    run_id: &RunId,
    events: &[Event],
    now_secs: Timestamp,
) -> StoreResult<()> {
    // Indexes beyond SQLite's integers are refused before anything is read.
    let new_last = expected_and_new_last(events)?.map(|(_, new_last)| new_last);
    let (seq, status, last) = log_state(conn, run_id)?;
    if status.is_terminal() {
        return Err(StoreError::RunEnded {
            run_id: run_id.clone(),
            status,
        });
    }
    explain_refusal(run_id, last, events)?;
    let Some(new_last) = new_last else {
        // Empty: nothing to write to a live run.
        return Ok(());
    };
    conn.prepare_cached(
        "UPDATE runs SET last_event_index = ?1, updated_at = MAX(updated_at, ?2) WHERE seq = ?3",
    )
    .and_then(|mut stmt| stmt.execute(params![new_last, now_secs, seq]))
    .map_err(sql("moving a run's last event index"))?;
    insert_events(conn, seq, events)
}

/// `Store::transition`; with the run's row id when it is applied.
///
/// The run is checked, then updated by its rowid: the writer's transaction holds the
/// database's write lock, so nothing changes the row in between. The run is `known` when the
/// writer holds it as it last committed it (`recent.rs`), else read. An `UPDATE .. RETURNING`
/// would do it in one statement, but SQLite buffers what `RETURNING` returns in a temporary
/// b-tree opened and closed on every execution, which cost more than the read.
pub(crate) fn transition(
    conn: &Connection,
    run_id: &RunId,
    transition: &Transition,
    events: &[Event],
    known: Option<Known>,
) -> StoreResult<(TransitionOutcome, Option<i64>)> {
    transition.from.check_transition(transition.to)?;
    // Indexes beyond SQLite's integers are refused before anything is read.
    let new_last = expected_and_new_last(events)?.map(|(_, new_last)| new_last);
    let (mut run, seq) = match known {
        Some(Known { seq, run }) => (Arc::unwrap_or_clone(run), seq),
        None => conn
            .prepare_cached(SELECT_RUN)
            .and_then(|mut stmt| {
                stmt.query_row([run_id.as_str()], |row| {
                    Ok((run_from_row(row)?, row.get::<_, i64>(SEQ_COLUMN)?))
                })
                .optional()
            })
            .map_err(sql("reading a run"))?
            .ok_or_else(|| StoreError::RunNotFound(run_id.clone()))?,
    };
    // The status is compared first, as the loser of a race must learn it.
    if run.status != transition.from {
        return Ok((TransitionOutcome::Conflict { actual: run.status }, None));
    }
    explain_refusal(run_id, run.last_event_index, events)?;
    conn.prepare_cached(
        "UPDATE runs SET status = ?1, updated_at = ?2, content = COALESCE(?3, content), \
         error = COALESCE(?4, error), cancellation_stage = COALESCE(?5, cancellation_stage), \
         last_event_index = COALESCE(?6, last_event_index) WHERE seq = ?7",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            transition.to.as_str(),
            transition.at,
            transition.content,
            transition.error,
            transition.cancellation_stage.map(|stage| stage.as_str()),
            new_last,
            seq,
        ])
    })
    .map_err(sql("updating a run's status"))?;
    insert_events(conn, seq, events)?;
    if transition.to == RunStatus::Cancelled {
        forget_cancel_intent(conn, run_id)?;
    }
    // The row as the UPDATE left it.
    run.status = transition.to;
    run.updated_at = transition.at;
    if let Some(content) = &transition.content {
        run.content = Some(content.clone());
    }
    if let Some(error) = &transition.error {
        run.error = Some(error.clone());
    }
    if let Some(stage) = transition.cancellation_stage {
        run.cancellation_stage = Some(stage);
    }
    if let Some(last) = events.last() {
        run.last_event_index = Some(last.index());
    }
    Ok((TransitionOutcome::Applied(Box::new(run)), Some(seq)))
}

/// Drops the run's cancel intent, in the write that ends it `CANCELLED` (see
/// `Store::cancel_requested`).
fn forget_cancel_intent(conn: &Connection, run_id: &RunId) -> StoreResult<()> {
    conn.prepare_cached("DELETE FROM cancel_intents WHERE run_id = ?1")
        .and_then(|mut stmt| stmt.execute([run_id.as_str()]))
        .map_err(sql("dropping a cancel intent"))?;
    Ok(())
}

/// `Store::request_cancel`: the first intent's time is kept.
pub(crate) fn request_cancel(conn: &Connection, run_id: &RunId, at: Timestamp) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO cancel_intents (run_id, requested_at) VALUES (?1, ?2) \
         ON CONFLICT (run_id) DO NOTHING",
    )
    .and_then(|mut stmt| stmt.execute(params![run_id.as_str(), at]))
    .map_err(sql("recording a cancel intent"))?;
    Ok(())
}

/// The lease of a run created in this transaction: a lease row its id may have kept (from
/// before a restore, say) belongs to no run of this store, and is replaced.
fn lease_new_run(conn: &Connection, run_id: &RunId, owner: &str, ttl: Duration) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO leases (run_id, owner, expires_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner, \
         expires_at = excluded.expires_at",
    )
    .and_then(|mut stmt| stmt.execute(params![run_id.as_str(), owner, expiry(now_millis(), ttl)]))
    .map_err(sql("leasing a new run"))?;
    Ok(())
}

/// `Store::acquire_lease`.
pub(crate) fn acquire_lease(
    conn: &Connection,
    run_id: &RunId,
    owner: &str,
    ttl: Duration,
) -> StoreResult<LeaseGrant> {
    let now_ms = now_millis();
    let changed = conn
        .prepare_cached(
            "INSERT INTO leases (run_id, owner, expires_at) SELECT ?1, ?2, ?3 \
             WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = ?1) \
             ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner, \
             expires_at = excluded.expires_at \
             WHERE leases.owner = excluded.owner OR leases.expires_at <= ?4",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![run_id.as_str(), owner, expiry(now_ms, ttl), now_ms])
        })
        .map_err(sql("taking a lease"))?;
    if changed > 0 {
        return Ok(LeaseGrant::Granted);
    }
    // Not taken: held by another owner, or (no lease row) the run does not exist.
    let holder: Option<String> = conn
        .prepare_cached("SELECT owner FROM leases WHERE run_id = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([run_id.as_str()], |row| row.get(0))
                .optional()
        })
        .map_err(sql("reading a lease"))?;
    holder
        .map(LeaseGrant::HeldBy)
        .ok_or_else(|| StoreError::RunNotFound(run_id.clone()))
}

/// `Store::renew_leases`: only live leases are extended.
pub(crate) fn renew_leases(conn: &Connection, owner: &str, ttl: Duration) -> StoreResult<u64> {
    let now_ms = now_millis();
    let renewed = conn
        .prepare_cached("UPDATE leases SET expires_at = ?1 WHERE owner = ?2 AND expires_at > ?3")
        .and_then(|mut stmt| stmt.execute(params![expiry(now_ms, ttl), owner, now_ms]))
        .map_err(sql("renewing leases"))?;
    Ok(renewed as u64)
}

/// `Store::release_lease`.
pub(crate) fn release_lease(conn: &Connection, run_id: &RunId, owner: &str) -> StoreResult<()> {
    conn.prepare_cached("DELETE FROM leases WHERE run_id = ?1 AND owner = ?2")
        .and_then(|mut stmt| stmt.execute(params![run_id.as_str(), owner]))
        .map_err(sql("releasing a lease"))?;
    Ok(())
}
