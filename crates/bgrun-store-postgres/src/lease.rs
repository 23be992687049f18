//! Leases: which replica executes a run, timed on the database's clock so that replicas'
//! clocks need not agree; and the runs whose lease lapsed.

use std::time::Duration;

use bgrun_core::{LeaseGrant, RunId, RunRecord, StoreError, StoreResult};

use crate::fault::Failure;
use crate::record::{from_row, RUN_COLUMNS};
use crate::store::Inner;

/// `acquire_lease` inside the writer's transaction (its own savepoint). Timed on
/// `clock_timestamp()`, not the batch transaction's start. A lease is taken only for a run
/// that exists (the table has no foreign key to `runs`: see migration 5).
pub(crate) async fn acquire_in(
    inner: &Inner,
    tx: &deadpool_postgres::Transaction<'_>,
    run_id: &RunId,
    owner: &str,
    ttl: Duration,
) -> Result<LeaseGrant, Failure> {
    let take = tx
        .prepare_cached(&inner.sql(
            "INSERT INTO {s}.leases AS lease (run_id, owner, expires_at) \
             SELECT $1, $2, clock_timestamp() + make_interval(secs => $3) \
             WHERE EXISTS (SELECT 1 FROM {s}.runs WHERE run_id = $1) \
             ON CONFLICT (run_id) DO UPDATE SET owner = EXCLUDED.owner, \
             expires_at = EXCLUDED.expires_at \
             WHERE lease.owner = EXCLUDED.owner OR lease.expires_at <= clock_timestamp() \
             RETURNING owner",
        ))
        .await?;
    let holder = tx
        .prepare_cached(&inner.sql(
            "SELECT (SELECT owner FROM {s}.leases WHERE run_id = $1), \
             EXISTS (SELECT 1 FROM {s}.runs WHERE run_id = $1)",
        ))
        .await?;
    let secs = ttl.as_secs_f64();
    // The holder may release between the two statements: then take it again.
    loop {
        let taken = tx
            .query_opt(&take, &[&run_id.as_str(), &owner, &secs])
            .await?;
        if taken.is_some() {
            return Ok(LeaseGrant::Granted);
        }
        let row = tx.query_one(&holder, &[&run_id.as_str()]).await?;
        match (row.get::<_, Option<String>>(0), row.get::<_, bool>(1)) {
            (Some(holder), _) => return Ok(LeaseGrant::HeldBy(holder)),
            (None, false) => return Err(StoreError::RunNotFound(run_id.clone()).into()),
            (None, true) => {}
        }
    }
}

/// Inside a write's transaction: refuses it unless `owner` holds the run's lease row. The row is
/// share-locked until the write commits, so a takeover waits for it (and it for a takeover).
pub(crate) async fn check_fence(
    inner: &Inner,
    tx: &deadpool_postgres::Transaction<'_>,
    run_id: &RunId,
    owner: Option<&str>,
) -> Result<(), Failure> {
    let Some(owner) = owner else {
        return Ok(());
    };
    let holder = tx
        .prepare_cached(&inner.sql("SELECT owner FROM {s}.leases WHERE run_id = $1 FOR SHARE"))
        .await?;
    let row = tx.query_opt(&holder, &[&run_id.as_str()]).await?;
    if row.as_ref().map(|row| row.get::<_, &str>(0)) == Some(owner) {
        Ok(())
    } else {
        Err(StoreError::Fenced {
            run_id: run_id.clone(),
            owner: owner.to_owned(),
        }
        .into())
    }
}

pub(crate) async fn renew(inner: &Inner, owner: &str, ttl: Duration) -> StoreResult<u64> {
    // The rows locked in run id order first, as writers lock them: a renewal and a batch never
    // wait for each other in a cycle (a deadlock PostgreSQL breaks only after a second).
    let sql = inner.sql(
        "UPDATE {s}.leases SET expires_at = now() + make_interval(secs => $2) \
         WHERE run_id IN (SELECT run_id FROM {s}.leases WHERE owner = $1 AND expires_at > now() \
         ORDER BY run_id FOR NO KEY UPDATE)",
    );
    let secs = ttl.as_secs_f64();
    inner
        .retry
        .run("renewing leases", |_| async {
            let client = inner.pool.get().await?;
            let statement = client.prepare_cached(&sql).await?;
            Ok(client.execute(&statement, &[&owner, &secs]).await?)
        })
        .await
}

/// `release_lease` inside the writer's transaction (its own savepoint).
pub(crate) async fn release_in(
    inner: &Inner,
    tx: &deadpool_postgres::Transaction<'_>,
    run_id: &RunId,
    owner: &str,
) -> Result<(), Failure> {
    let release = tx
        .prepare_cached(&inner.sql("DELETE FROM {s}.leases WHERE run_id = $1 AND owner = $2"))
        .await?;
    tx.execute(&release, &[&run_id.as_str(), &owner]).await?;
    Ok(())
}

pub(crate) async fn orphaned(inner: &Inner, limit: usize) -> StoreResult<Vec<RunRecord>> {
    let columns = RUN_COLUMNS
        .split(", ")
        .map(|column| format!("r.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = inner.sql(&format!(
        "SELECT {columns} FROM {{s}}.runs r LEFT JOIN {{s}}.leases l ON l.run_id = r.run_id \
         WHERE r.status IN ('RUNNING', 'PAUSED') AND (l.run_id IS NULL OR l.expires_at <= now()) \
         ORDER BY r.seq LIMIT $1"
    ));
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    inner
        .retry
        .run("finding orphaned runs", |_| async {
            let client = inner.pool.get().await?;
            let statement = client.prepare_cached(&sql).await?;
            let rows = client.query(&statement, &[&limit]).await?;
            rows.iter()
                .map(|row| from_row(row).map_err(Failure::from))
                .collect()
        })
        .await
}
