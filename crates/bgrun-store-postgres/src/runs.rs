//! Runs: creating (idempotency keys, cancel intents), reading, listing, and the status
//! compare-and-set.

use bgrun_core::{
    CreateAndStart, CreateOutcome, Event, LeaseGrant, NewRun, RunFilter, RunId, RunPage, RunRecord,
    RunStatus, StoreError, StoreResult, Transition, TransitionOutcome, IDEMPOTENCY_WINDOW_SECS,
    MAX_PAGE_SIZE,
};
use deadpool_postgres::Transaction;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::cancel;
use crate::cursor::Cursor;
use crate::events;
use crate::fault::{Attempt, Failure};
use crate::record::{from_row, storable, RUN_COLUMNS};
use crate::store::Inner;
use crate::writer::LeasedStart;

/// A token naming one call of a write, stored with the row it writes, so that a retry after
/// an unknown commit outcome recognises its own earlier success.
pub(crate) fn write_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `create_run`, or with `start` `create_and_start_leased`, inside the writer's transaction
/// (its own savepoint): the run is created as [`create_in`] does and, when it is new and no
/// cancel intent waits for it, leased and started with the same statements a separate
/// `lease_and_transition` would execute, in the same transaction.
pub(crate) async fn create_and_start_in(
    inner: &Inner,
    tx: &Transaction<'_>,
    run: &NewRun,
    start: Option<&LeasedStart>,
    token: &str,
    attempt: Attempt,
) -> Result<CreateAndStart, Failure> {
    let created = create_in(inner, tx, run, token, attempt).await?;
    let (
        Some(start),
        CreateOutcome::Created {
            run: stored,
            cancel_requested,
        },
    ) = (start, &created)
    else {
        return Ok(CreateAndStart {
            created,
            started: None,
        });
    };
    if stored.status != RunStatus::Pending {
        // A retry that found its earlier attempt, which committed the run started (a cancel
        // intent recorded since is reported with it, for the engine to cancel the run).
        return Ok(CreateAndStart {
            started: Some(stored.clone()),
            created: CreateOutcome::Created {
                run: NewRun::clone(run).into_record(),
                cancel_requested: *cancel_requested,
            },
        });
    }
    if *cancel_requested {
        return Ok(CreateAndStart {
            created,
            started: None,
        });
    }
    if let LeaseGrant::HeldBy(_) =
        crate::lease::acquire_in(inner, tx, &run.run_id, &start.owner, start.ttl).await?
    {
        // Only a lease row left without its run could be in the way: the run stays PENDING
        // for the caller to lease and start.
        return Ok(CreateAndStart {
            created,
            started: None,
        });
    }
    let outcome = transition_in(
        inner,
        tx,
        &run.run_id,
        &start.transition,
        std::slice::from_ref(&start.event),
        Some(&start.owner),
        token,
        attempt,
    )
    .await?;
    let started = match outcome {
        TransitionOutcome::Applied(running) => Some(*running),
        TransitionOutcome::Conflict { .. } => None,
    };
    Ok(CreateAndStart { created, started })
}

/// `create_run` inside the writer's transaction (its own savepoint): `attempt` tells whether an
/// earlier attempt of this very call may have committed (then `token` recognises it).
pub(crate) async fn create_in(
    inner: &Inner,
    tx: &Transaction<'_>,
    run: &NewRun,
    token: &str,
    attempt: Attempt,
) -> Result<CreateOutcome, Failure> {
    let params = serde_json::Value::Object(run.params.clone()).to_string();
    let metadata = run.metadata.as_ref().map(serde_json::Value::to_string);
    cancel::lock(tx, &run.run_id).await?;
    if let Some(key) = &run.idempotency_key {
        let find_key = inner.sql(&format!(
            "SELECT {RUN_COLUMNS}, seq, write_token FROM {{s}}.runs WHERE idempotency_key = $1 FOR UPDATE"
        ));
        if let Some(row) = tx.query_opt(find_key.as_str(), &[key]).await? {
            let existing = from_row(&row)?;
            let ours =
                attempt.is_retry() && row.get::<_, Option<&str>>("write_token") == Some(token);
            if ours {
                let cancel_requested = cancel::exists(inner, tx, &run.run_id).await?;
                return Ok(CreateOutcome::Created {
                    run: existing,
                    cancel_requested,
                });
            }
            if existing.created_at > run.created_at - IDEMPOTENCY_WINDOW_SECS {
                return Ok(CreateOutcome::Existing(existing));
            }
            let seq: i64 = row.get("seq");
            let free_key = inner.sql("UPDATE {s}.runs SET idempotency_key = NULL WHERE seq = $1");
            tx.execute(free_key.as_str(), &[&seq]).await?;
        }
    }
    // A taken run id inserts nothing (rather than failing the statement) so that the same
    // transaction can tell whose it is.
    let insert = tx
        .prepare_cached(&inner.sql(&format!(
            "INSERT INTO {{s}}.runs (run_id, session_id, user_id, kind, component_id, \
             parent_run_id, status, input, params, metadata, idempotency_key, created_at, \
             updated_at, write_token) \
             VALUES ($1, $2, $3, $4, $5, $6, 'PENDING', $7, $8, $9, $10, $11, $11, $12) \
             ON CONFLICT ON CONSTRAINT runs_run_id_key DO NOTHING \
             RETURNING {RUN_COLUMNS}"
        )))
        .await?;
    let inserted = tx
        .query_opt(
            &insert,
            &[
                &run.run_id.as_str(),
                &run.session_id.as_str(),
                &run.user_id,
                &run.target.kind.as_str(),
                &run.target.component_id,
                &run.parent_run_id.as_ref().map(RunId::as_str),
                &run.input,
                &params,
                &metadata,
                &run.idempotency_key,
                &run.created_at,
                &token,
            ],
        )
        .await;
    let record = match inserted {
        Ok(Some(row)) => from_row(&row)?,
        Ok(None) => {
            return ours_after_all(inner, tx, &run.run_id, token, attempt.is_retry()).await;
        }
        Err(error) => match error.as_db_error().map(|db| (db.code(), db.constraint())) {
            // Another replica created a run with this key since we looked: look again.
            Some((&SqlState::UNIQUE_VIOLATION, Some("runs_idempotency_key_key"))) => {
                return Err(Failure::Race(error));
            }
            _ => return Err(error.into()),
        },
    };
    let cancel_requested = cancel::exists(inner, tx, &run.run_id).await?;
    Ok(CreateOutcome::Created {
        run: record,
        cancel_requested,
    })
}

/// The run id is taken: by our own earlier attempt (whose commit we did not hear about), or
/// by someone else (`RunExists`).
async fn ours_after_all(
    inner: &Inner,
    tx: &Transaction<'_>,
    run_id: &RunId,
    token: &str,
    is_retry: bool,
) -> Result<CreateOutcome, Failure> {
    if is_retry {
        let find_id = inner.sql(&format!(
            "SELECT {RUN_COLUMNS}, write_token FROM {{s}}.runs WHERE run_id = $1"
        ));
        if let Some(row) = tx.query_opt(find_id.as_str(), &[&run_id.as_str()]).await? {
            if row.get::<_, Option<&str>>("write_token") == Some(token) {
                let cancel_requested = cancel::exists(inner, tx, run_id).await?;
                return Ok(CreateOutcome::Created {
                    run: from_row(&row)?,
                    cancel_requested,
                });
            }
        }
    }
    Err(StoreError::RunExists(run_id.clone()).into())
}

pub(crate) async fn get(inner: &Inner, run_id: &RunId) -> StoreResult<Option<RunRecord>> {
    let sql = inner.sql(&format!(
        "SELECT {RUN_COLUMNS} FROM {{s}}.runs WHERE run_id = $1"
    ));
    inner
        .retry
        .run("reading a run", |_| async {
            let client = inner.pool.get().await?;
            let statement = client.prepare_cached(&sql).await?;
            match client.query_opt(&statement, &[&run_id.as_str()]).await? {
                Some(row) => Ok(Some(from_row(&row)?)),
                None => Ok(None),
            }
        })
        .await
}

pub(crate) async fn list(
    inner: &Inner,
    filter: &RunFilter,
    limit: usize,
    cursor: Option<&str>,
) -> StoreResult<RunPage> {
    let after = cursor.map(Cursor::decode).transpose()?;
    let limit = limit.clamp(1, MAX_PAGE_SIZE);
    let status = filter.status.map(|status| status.as_str());
    let kind = filter.target.as_ref().map(|target| target.kind.as_str());
    let component = filter
        .target
        .as_ref()
        .map(|target| target.component_id.as_str());
    let session = filter.session_id.as_ref().map(|id| id.as_str());
    let parent = filter.parent_run_id.as_ref().map(RunId::as_str);
    let (created_at, seq) = after.map_or((None, None), |c| (Some(c.created_at), Some(c.seq)));
    // Fetch one more than asked to learn whether a next page exists.
    let fetch = (limit + 1) as i64;

    let mut conditions = Vec::new();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    for (column, value) in [
        ("session_id", &session),
        ("status", &status),
        ("kind", &kind),
        ("component_id", &component),
        ("parent_run_id", &parent),
    ] {
        if let Some(value) = value {
            params.push(value);
            conditions.push(format!("{column} = ${}", params.len()));
        }
    }
    if let (Some(created_at), Some(seq)) = (&created_at, &seq) {
        params.push(created_at);
        params.push(seq);
        conditions.push(format!(
            "(created_at, seq) < (${}, ${})",
            params.len() - 1,
            params.len()
        ));
    }
    params.push(&fetch);
    let where_clause = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = inner.sql(&format!(
        "SELECT {RUN_COLUMNS}, seq FROM {{s}}.runs {where_clause} \
         ORDER BY created_at DESC, seq DESC LIMIT ${}",
        params.len()
    ));
    inner
        .retry
        .run("listing runs", |_| async {
            let client = inner.pool.get().await?;
            let statement = client.prepare_cached(&sql).await?;
            let rows = client.query(&statement, &params).await?;
            let mut runs = Vec::with_capacity(rows.len().min(limit));
            let mut last = None;
            for row in rows.iter().take(limit) {
                let run = from_row(row)?;
                last = Some(Cursor {
                    created_at: run.created_at,
                    seq: row.get("seq"),
                });
                runs.push(run);
            }
            let next_cursor = if rows.len() > limit {
                last.map(Cursor::encode)
            } else {
                None
            };
            Ok(RunPage { runs, next_cursor })
        })
        .await
}

/// `transition` inside the writer's transaction (its own savepoint); the caller checked the
/// transition and the events' contiguity, and announces the events once committed.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn transition_in(
    inner: &Inner,
    tx: &Transaction<'_>,
    run_id: &RunId,
    transition: &Transition,
    events: &[Event],
    fence: Option<&str>,
    token: &str,
    attempt: Attempt,
) -> Result<TransitionOutcome, Failure> {
    let cas = tx
        .prepare_cached(&inner.sql(&format!(
            "UPDATE {{s}}.runs SET status = $3, content = COALESCE($4, content), \
             error = COALESCE($5, error), cancellation_stage = COALESCE($6, cancellation_stage), \
             updated_at = $7, write_token = $8 \
             WHERE run_id = $1 AND status = $2 RETURNING {RUN_COLUMNS}"
        )))
        .await?;
    // Pipelined: the fence check and the compare-and-set in one round trip. A fenced write is
    // refused, and the caller's savepoint rolls back its compare-and-set.
    let stage = transition.cancellation_stage.map(|stage| stage.as_str());
    let (id, from, to) = (
        run_id.as_str(),
        transition.from.as_str(),
        transition.to.as_str(),
    );
    let content = transition.content.as_deref().map(storable);
    let error = transition.error.as_deref().map(storable);
    let params: [&(dyn ToSql + Sync); 8] = [
        &id,
        &from,
        &to,
        &content,
        &error,
        &stage,
        &transition.at,
        &token,
    ];
    let (fenced, updated) = futures::join!(
        crate::lease::check_fence(inner, tx, run_id, fence),
        tx.query_opt(&cas, &params)
    );
    let updated = updated?;
    let Some(row) = updated else {
        let current = inner.sql(&format!(
            "SELECT {RUN_COLUMNS}, write_token FROM {{s}}.runs WHERE run_id = $1"
        ));
        // A retry finds its earlier attempt (whose COMMIT went unheard) by its token before the
        // fence: that attempt may have dropped the lease with it, as a run's last write does.
        let outcome = lost(tx, &current, run_id, token, attempt.is_retry()).await?;
        if let TransitionOutcome::Applied(_) = outcome {
            return Ok(outcome);
        }
        fenced?;
        return Ok(outcome);
    };
    fenced?;
    let mut record = from_row(&row)?;
    if let Some(first) = events.first() {
        let next = record.next_event_index();
        if first.index() != next {
            return Err(StoreError::IndexConflict {
                run_id: run_id.clone(),
                expected: next,
                got: first.index(),
            }
            .into());
        }
        events::write(inner, tx, run_id, events, transition.at).await?;
        record.last_event_index = events.last().map(Event::index);
    }
    if transition.to == RunStatus::Cancelled {
        // Its work done (see `Store::cancel_requested`).
        let forget = tx
            .prepare_cached(&inner.sql("DELETE FROM {s}.cancel_intents WHERE run_id = $1"))
            .await?;
        tx.execute(&forget, &[&run_id.as_str()]).await?;
    }
    Ok(TransitionOutcome::Applied(Box::new(record)))
}

/// The compare-and-set matched no row: the run is missing, in another status, or (on a retry)
/// already changed by our own earlier attempt.
async fn lost(
    tx: &Transaction<'_>,
    current: &str,
    run_id: &RunId,
    token: &str,
    is_retry: bool,
) -> Result<TransitionOutcome, Failure> {
    let row = tx
        .query_opt(current, &[&run_id.as_str()])
        .await?
        .ok_or_else(|| StoreError::RunNotFound(run_id.clone()))?;
    let run = from_row(&row)?;
    if is_retry && row.get::<_, Option<&str>>("write_token") == Some(token) {
        return Ok(TransitionOutcome::Applied(Box::new(run)));
    }
    Ok(TransitionOutcome::Conflict { actual: run.status })
}
