//! Cancel intents: recorded whether or not the run exists yet, announced to every replica.

use bgrun_core::{RunId, StoreResult, Timestamp};
use deadpool_postgres::Transaction;

use crate::fault::Failure;
use crate::store::Inner;

/// The first key of the per-run advisory lock (two-key form, apart from the migration lock).
pub(crate) const RUN_LOCK_CLASS: i32 = 0x6267_7275; // "bgru"

/// Serialises the command-by-command `create_run` (which looks up idempotency keys and write
/// tokens before it inserts) and `request_cancel` of one run id until the transaction ends, so
/// that the create sees an intent recorded before it. (The set-based create needs no lock: see
/// `bulk::creates`.)
pub(crate) async fn lock(tx: &Transaction<'_>, run_id: &RunId) -> Result<(), Failure> {
    let statement = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .await?;
    tx.execute(&statement, &[&RUN_LOCK_CLASS, &run_id.as_str()])
        .await?;
    Ok(())
}

/// Whether an intent is recorded for `run_id`, seen from `tx`.
pub(crate) async fn exists(
    inner: &Inner,
    tx: &Transaction<'_>,
    run_id: &RunId,
) -> Result<bool, Failure> {
    let statement = tx
        .prepare_cached(
            &inner.sql("SELECT EXISTS (SELECT 1 FROM {s}.cancel_intents WHERE run_id = $1)"),
        )
        .await?;
    Ok(tx.query_one(&statement, &[&run_id.as_str()]).await?.get(0))
}

pub(crate) async fn request(inner: &Inner, run_id: &RunId, at: Timestamp) -> StoreResult<()> {
    let insert = inner.sql(
        "INSERT INTO {s}.cancel_intents (run_id, requested_at) VALUES ($1, $2) \
         ON CONFLICT (run_id) DO NOTHING",
    );
    inner
        .retry
        .run("requesting a cancel", |_| async {
            let mut client = inner.pool.get().await?;
            let tx = client.transaction().await?;
            lock(&tx, run_id).await?;
            let statement = tx.prepare_cached(&insert).await?;
            tx.execute(&statement, &[&run_id.as_str(), &at]).await?;
            let notify = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
            tx.execute(&notify, &[&inner.channels.cancel, &run_id.as_str()])
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
}

pub(crate) async fn requested(inner: &Inner, run_id: &RunId) -> StoreResult<bool> {
    let sql = inner.sql("SELECT EXISTS (SELECT 1 FROM {s}.cancel_intents WHERE run_id = $1)");
    inner
        .retry
        .run("reading a cancel intent", |_| async {
            let client = inner.pool.get().await?;
            let statement = client.prepare_cached(&sql).await?;
            Ok(client
                .query_one(&statement, &[&run_id.as_str()])
                .await?
                .get(0))
        })
        .await
}
