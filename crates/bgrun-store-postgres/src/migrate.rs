//! Versioned schema migrations, applied on connect.
//!
//! Every replica runs them as it starts, in one transaction holding a transaction-scoped
//! advisory lock, so replicas starting at once apply each version exactly once and none sees a
//! half-built schema. `{s}` in a migration stands for the quoted schema name.

use bgrun_core::StoreError;
use deadpool_postgres::Pool;

use crate::fault::{Failure, RetryPolicy};

/// The advisory lock key serialising migrations ("bgrun" + 1, as bytes).
const MIGRATION_LOCK: i64 = 0x0062_6772_756e_0001;

/// `(version, SQL)`, in order. Never edit a released migration: add the next one.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE {s}.runs (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        user_id TEXT,
        kind TEXT NOT NULL,
        component_id TEXT NOT NULL,
        parent_run_id TEXT,
        status TEXT NOT NULL,
        input TEXT NOT NULL,
        params TEXT NOT NULL,
        content TEXT,
        error TEXT,
        cancellation_stage TEXT,
        metadata TEXT,
        idempotency_key TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        last_event_index BIGINT,
        write_token TEXT,
        CONSTRAINT runs_run_id_key UNIQUE (run_id),
        CONSTRAINT runs_idempotency_key_key UNIQUE (idempotency_key)
    );
    CREATE INDEX runs_newest ON {s}.runs (created_at DESC, seq DESC);
    CREATE INDEX runs_session ON {s}.runs (session_id, created_at DESC, seq DESC);
    CREATE INDEX runs_parent ON {s}.runs (parent_run_id, created_at DESC, seq DESC)
        WHERE parent_run_id IS NOT NULL;
    CREATE INDEX runs_live ON {s}.runs (seq) WHERE status IN ('RUNNING', 'PAUSED');

    CREATE TABLE {s}.events (
        run_id TEXT NOT NULL,
        event_index BIGINT NOT NULL,
        event_type TEXT NOT NULL,
        json TEXT NOT NULL,
        PRIMARY KEY (run_id, event_index)
    );

    CREATE TABLE {s}.cancel_intents (
        run_id TEXT PRIMARY KEY,
        requested_at BIGINT NOT NULL
    );

    CREATE TABLE {s}.leases (
        run_id TEXT PRIMARY KEY REFERENCES {s}.runs (run_id),
        owner TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX leases_owner ON {s}.leases (owner);
    "#,
    ),
    (
        2,
        // Durable streams (`crate::streams`). The u64s a client chooses (TTL seconds, producer
        // epochs and sequence numbers, fork sub-offsets) are stored as their bit pattern, so
        // that every value round-trips; offsets, counts and times are plain BIGINTs.
        r#"
    CREATE TABLE {s}.streams (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        path TEXT NOT NULL,
        content_type TEXT NOT NULL,
        ttl_secs BIGINT,
        expires_at BIGINT,
        expires_text TEXT,
        created BIGINT NOT NULL,
        last_access BIGINT NOT NULL,
        tail BIGINT NOT NULL,
        closed BOOLEAN NOT NULL,
        closer_id TEXT,
        closer_epoch BIGINT,
        closer_seq BIGINT,
        last_stream_seq TEXT,
        fork_path TEXT,
        fork_id BIGINT REFERENCES {s}.streams (id),
        fork_offset BIGINT,
        fork_sub_offset BIGINT,
        inherited JSONB NOT NULL,
        forks BIGINT NOT NULL DEFAULT 0,
        soft_deleted BOOLEAN NOT NULL DEFAULT false,
        write_token TEXT NOT NULL,
        CONSTRAINT streams_path_key UNIQUE (path)
    );
    CREATE INDEX streams_fork_id ON {s}.streams (fork_id) WHERE fork_id IS NOT NULL;

    CREATE TABLE {s}.stream_messages (
        stream_id BIGINT NOT NULL,
        msg_offset BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (stream_id, msg_offset)
    );

    CREATE TABLE {s}.stream_producers (
        stream_id BIGINT NOT NULL,
        producer_id TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        updated BIGINT NOT NULL,
        PRIMARY KEY (stream_id, producer_id)
    );
    "#,
    ),
    (
        3,
        // Finding expired streams (`Store::expired_streams`). Streams with a Stream-Expires-At
        // by that time; TTL streams by id alone. A TTL stream's deadline moves with
        // `last_access`, which every append and read writes: an index over `last_access` would
        // make each of those updates non-HOT (new entries in every index of `streams`), a cost
        // on the hot path to save the sweep, once a minute, reading the TTL streams' rows.
        // Soft-deleted streams and streams that never expire are left out of both.
        r#"
    CREATE INDEX streams_expires_at ON {s}.streams (expires_at, id)
        WHERE ttl_secs IS NULL AND expires_text IS NOT NULL AND NOT soft_deleted;
    CREATE INDEX streams_ttl ON {s}.streams (id)
        WHERE ttl_secs IS NOT NULL AND NOT soft_deleted;
    "#,
    ),
    (
        4,
        // A replica's leases by run id. On `(owner)` alone, the writers' release of a batch's
        // leases was planned as a loop over the runs, each reading every lease of the owner:
        // in bench P2, 54 ms of a 91 ms statement ending 245 runs. Keyed by both, each run's
        // lease is one lookup, and a renewal reads the owner's leases in the order it locks
        // them.
        r#"
    CREATE INDEX leases_owner_run ON {s}.leases (owner, run_id);
    DROP INDEX {s}.leases_owner;
    "#,
    ),
    (
        5,
        // No foreign key from a lease to its run. Its check cost every lease taken a query and
        // a key-share lock of the run's row (a write to its page): about a quarter of the
        // statement that creates, leases and starts a run (30 of 125 us, pg_stat_statements).
        // Runs are never deleted, and a lease is taken only for a run that exists: the
        // statements that take one check it in the same statement (`lease`, `bulk`).
        r#"
    ALTER TABLE {s}.leases DROP CONSTRAINT IF EXISTS leases_run_id_fkey;
    "#,
    ),
];

/// The schema name as a quoted identifier (the name is already validated: no quotes inside).
pub(crate) fn quoted(schema: &str) -> String {
    format!("\"{schema}\"")
}

/// Brings `schema` up to the latest version.
pub(crate) async fn migrate(
    pool: &Pool,
    schema: &str,
    retry: &RetryPolicy,
) -> Result<(), StoreError> {
    let s = quoted(schema);
    retry
        .run("migrating the PostgreSQL schema", |_| async {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
                     version BIGINT PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 );"
            ))
            .await?;
            let applied: Option<i64> = tx
                .query_one(
                    &format!("SELECT max(version) FROM {s}.schema_migrations"),
                    &[],
                )
                .await?
                .get(0);
            let applied = applied.unwrap_or(0);
            let latest = MIGRATIONS.last().map_or(0, |(version, _)| *version);
            if applied > latest {
                return Err(Failure::Store(StoreError::backend(
                    "checking the PostgreSQL schema version",
                    bgrun_core::InvalidInput::new(format!(
                        "schema {schema} is at version {applied}, newer than this bgrun knows \
                         ({latest}); upgrade bgrun"
                    )),
                )));
            }
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
                tx.batch_execute(&sql.replace("{s}", &s)).await?;
                tx.execute(
                    &format!("INSERT INTO {s}.schema_migrations (version) VALUES ($1)"),
                    &[version],
                )
                .await?;
                tracing::info!(schema, version, "applied bgrun PostgreSQL migration");
            }
            tx.commit().await?;
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase() {
        assert!(MIGRATIONS.windows(2).all(|pair| pair[0].0 < pair[1].0));
        assert!(MIGRATIONS.iter().all(|(version, _)| *version > 0));
    }
}
