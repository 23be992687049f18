//! Connection settings and versioned migrations.
//!
//! The schema version is SQLite's `PRAGMA user_version`: migration `n` (1-based) brings the
//! database from version `n - 1` to `n`. Pending migrations run in one transaction together with
//! the version bump, so a crash leaves the database at the old version or the new one. Reopening
//! an up-to-date database runs nothing.

use std::path::Path;
use std::time::Duration;

use bgrun_core::StoreError;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// The migrations, oldest first. Never edit one that has shipped: append a new one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: runs, events, cancel intents, leases.
    r#"
    CREATE TABLE runs (
        seq                INTEGER PRIMARY KEY,
        run_id             TEXT NOT NULL UNIQUE,
        session_id         TEXT NOT NULL,
        user_id            TEXT,
        kind               TEXT NOT NULL,
        component_id       TEXT NOT NULL,
        parent_run_id      TEXT,
        status             TEXT NOT NULL,
        input              TEXT NOT NULL,
        params             TEXT NOT NULL,
        content            TEXT,
        error              TEXT,
        cancellation_stage TEXT,
        metadata           TEXT,
        idempotency_key    TEXT,
        created_at         INTEGER NOT NULL,
        updated_at         INTEGER NOT NULL,
        last_event_index   INTEGER
    );
    CREATE UNIQUE INDEX runs_idempotency_key ON runs (idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    -- list_runs pages newest first by (created_at, seq); seq is the rowid, the implicit last
    -- column of every index.
    CREATE INDEX runs_created ON runs (created_at);
    CREATE INDEX runs_session ON runs (session_id, created_at);
    CREATE INDEX runs_status ON runs (status, created_at);
    CREATE INDEX runs_target ON runs (kind, component_id, created_at);
    CREATE INDEX runs_parent ON runs (parent_run_id, created_at)
        WHERE parent_run_id IS NOT NULL;

    -- Keyed by the run's seq, not its text id: a compact key makes long logs cheap to write.
    CREATE TABLE events (
        run_seq     INTEGER NOT NULL,
        event_index INTEGER NOT NULL,
        event_type  TEXT NOT NULL,
        json        TEXT NOT NULL,
        PRIMARY KEY (run_seq, event_index)
    ) WITHOUT ROWID;

    -- No foreign key: an intent may precede its run.
    CREATE TABLE cancel_intents (
        run_id       TEXT PRIMARY KEY,
        requested_at INTEGER NOT NULL
    ) WITHOUT ROWID;

    -- expires_at: Unix milliseconds.
    CREATE TABLE leases (
        run_id     TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX leases_owner ON leases (owner, expires_at);
    "#,
    // 2: durable streams, their messages and their idempotent producers.
    r#"
    -- One row per stream, live or soft-deleted; a path holds at most one (a soft-deleted stream
    -- keeps its path until it is removed). AUTOINCREMENT: an id is never handed out again, so a
    -- reader still holding a deleted stream's id never sees the messages of a later stream.
    -- Times are Unix milliseconds. Producer epochs and sequence numbers, sub-offsets and TTLs
    -- are client u64s kept bit for bit in an INTEGER (never compared in SQL).
    CREATE TABLE streams (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        path             TEXT NOT NULL UNIQUE,
        content_type     TEXT NOT NULL,
        ttl_secs         INTEGER,
        expires_at_text  TEXT,
        expires_at       INTEGER,
        created          INTEGER NOT NULL,
        last_access      INTEGER NOT NULL,
        tail             INTEGER NOT NULL,
        closed           INTEGER NOT NULL,
        closed_by_id     TEXT,
        closed_by_epoch  INTEGER,
        closed_by_seq    INTEGER,
        last_stream_seq  TEXT,
        fork_source_path TEXT,
        fork_source_id   INTEGER,
        fork_offset      INTEGER,
        fork_sub_offset  INTEGER,
        -- The fork's inherited segments, as JSON; fixed when the fork is created.
        inherited        TEXT,
        forks            INTEGER NOT NULL DEFAULT 0,
        soft_deleted     INTEGER NOT NULL DEFAULT 0
    );

    -- msg_offset: the stream's tail right after the message (OFFSET is an SQL keyword).
    CREATE TABLE stream_messages (
        stream_id  INTEGER NOT NULL,
        msg_offset INTEGER NOT NULL,
        data       BLOB NOT NULL,
        PRIMARY KEY (stream_id, msg_offset)
    ) WITHOUT ROWID;

    CREATE TABLE stream_producers (
        stream_id   INTEGER NOT NULL,
        producer_id TEXT NOT NULL,
        epoch       INTEGER NOT NULL,
        last_seq    INTEGER NOT NULL,
        updated     INTEGER NOT NULL,
        PRIMARY KEY (stream_id, producer_id)
    ) WITHOUT ROWID;
    "#,
    // 3: the streams that expire, by the time they expire (`Store::expired_streams`). The
    // expression is `StreamInfo::expiry_deadline`: a TTL stream's last access plus its TTL
    // (saturating at i64::MAX: the TTL is a client u64 kept bit for bit, so a negative one is
    // one past i64::MAX seconds), else its Stream-Expires-At. `streams::EXPIRY_DEADLINE` must
    // stay this very expression, or the query no longer uses the index (a test checks it). The
    // rowid (the id) is the index's implicit last column: ties come out by id. Streams that
    // never expire, and soft-deleted ones, are left out.
    r#"
    CREATE INDEX streams_expiry ON streams (
        CASE
            WHEN ttl_secs IS NULL THEN CASE WHEN expires_at_text IS NOT NULL THEN expires_at END
            WHEN ttl_secs < 0 OR ttl_secs > 9223372036854775 THEN
                CASE WHEN last_access > 0 THEN 9223372036854775807
                     ELSE last_access + 9223372036854775807 END
            WHEN last_access > 9223372036854775807 - ttl_secs * 1000 THEN 9223372036854775807
            ELSE last_access + ttl_secs * 1000
        END
    ) WHERE soft_deleted = 0 AND (ttl_secs IS NOT NULL OR expires_at_text IS NOT NULL);
    "#,
    // 4: a run's events a block per append (`blocks.rs`): a replay steps through a row per
    // block, not per event. Keyed by the block's last index, so that the blocks holding events
    // after an index are a range of the key. The rows of the old table become blocks of one
    // event each, in the same format (lengths in bytes: `length` of a BLOB; `unhex` of eight hex
    // digits: four big-endian bytes).
    r#"
    CREATE TABLE event_blocks (
        run_seq     INTEGER NOT NULL,
        last_index  INTEGER NOT NULL,
        first_index INTEGER NOT NULL,
        body        BLOB NOT NULL,
        PRIMARY KEY (run_seq, last_index)
    );
    INSERT INTO event_blocks (run_seq, last_index, first_index, body)
        SELECT run_seq, event_index, event_index,
            -- `||` makes text of blobs; the CAST makes the bytes a blob again.
            CAST(unhex(printf('%08X', length(CAST(event_type AS BLOB)))) || event_type ||
                 unhex(printf('%08X', length(CAST(json AS BLOB)))) || json AS BLOB)
        FROM events ORDER BY run_seq, event_index;
    DROP TABLE events;
    "#,
    // 5: how a block's body is stored (`blocks::Codec`): 0 as written, 1 compressed with LZ4.
    // The blocks written before stay as they are.
    r#"
    ALTER TABLE event_blocks ADD COLUMN codec INTEGER NOT NULL DEFAULT 0;
    "#,
    // 6: codec 2, a block's frames as they are (small blocks are not compressed). Nothing
    // changes in the tables: the version tells an older build, which would not read such
    // blocks, that the file is newer than it.
    "",
];

/// The schema version this build writes.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn backend(context: &str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::backend(context, e)
}

/// Opens the read-write connection of the writer thread: WAL, `synchronous = NORMAL`.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| StoreError::backend(format!("opening {}", path.display()), e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(backend("setting busy_timeout"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(backend("enabling WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::backend(
            "enabling WAL",
            format!("SQLite kept journal_mode {mode:?}"),
        ));
    }
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = OFF;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -16000;",
    )
    .map_err(backend("configuring the connection"))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Opens a read-only connection for the reader pool.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| StoreError::backend(format!("opening {} to read", path.display()), e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(backend("setting busy_timeout"))?;
    conn.execute_batch("PRAGMA cache_size = -8000;")
        .map_err(backend("configuring a reader"))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Brings the schema up to [`latest_version`]; returns how many migrations ran.
///
/// A database written by a newer build (a higher version than this build knows) is refused
/// rather than guessed at.
pub(crate) fn migrate(conn: &mut Connection) -> Result<usize, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend("starting the migration"))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(backend("reading the schema version"))?;
    let latest = latest_version();
    if version > latest {
        return Err(StoreError::backend(
            "checking the schema version",
            format!(
                "the database has schema version {version}, newer than this build's {latest}; \
                 upgrade bgrun"
            ),
        ));
    }
    let pending = &MIGRATIONS[usize::try_from(version).unwrap_or(0)..];
    for (offset, sql) in pending.iter().enumerate() {
        let to = version + 1 + offset as i64;
        tx.execute_batch(sql)
            .map_err(|e| StoreError::backend(format!("migrating to schema version {to}"), e))?;
    }
    if !pending.is_empty() {
        // PRAGMA takes no parameters; `latest` is our own integer.
        tx.execute_batch(&format!("PRAGMA user_version = {latest}"))
            .map_err(backend("writing the schema version"))?;
    }
    tx.commit().map_err(backend("committing the migration"))?;
    Ok(pending.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bgrun_core::{Event, RunId};

    #[test]
    fn migrations_run_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut conn = open_writer(&path).unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS.len());
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        drop(conn);
        let mut conn = open_writer(&path).unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, latest_version());
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn migration_4_turns_each_stored_event_into_a_block_that_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut conn = open_writer(&path).unwrap();
        for migration in &MIGRATIONS[..3] {
            conn.execute_batch(migration).unwrap();
        }
        conn.execute_batch("PRAGMA user_version = 3").unwrap();
        conn.execute(
            "INSERT INTO runs (seq, run_id, session_id, kind, component_id, status, input, \
             params, created_at, updated_at, last_event_index) \
             VALUES (1, 'r', 's', 'agent', 'echo', 'COMPLETED', 'hi', '{}', 0, 0, 2)",
            [],
        )
        .unwrap();
        let events = [
            Event::from_parts(0, "RunStarted", r#"{"event":"RunStarted"}"#),
            Event::from_parts(1, "RunContent", r#"{"content":"é 日本 12:34"}"#),
            Event::from_parts(2, "RunCompleted", r#"{"event":"RunCompleted"}"#),
        ];
        for event in &events {
            conn.execute(
                "INSERT INTO events (run_seq, event_index, event_type, json) VALUES (1, ?1, ?2, ?3)",
                rusqlite::params![event.index() as i64, event.event_type(), event.json()],
            )
            .unwrap();
        }

        assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS.len() - 3);
        let run_id = RunId::parse("r").unwrap();
        assert_eq!(
            crate::reader::read_events(&conn, &run_id, None, 10).unwrap(),
            events
        );
        assert_eq!(
            crate::reader::read_events(&conn, &run_id, Some(0), 1).unwrap(),
            events[1..2]
        );
        let blocks: i64 = conn
            .query_row("SELECT COUNT(*) FROM event_blocks", [], |row| row.get(0))
            .unwrap();
        assert_eq!(blocks, 3);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut conn = open_writer(&path).unwrap();
        migrate(&mut conn).unwrap();
        conn.execute_batch(&format!("PRAGMA user_version = {}", latest_version() + 1))
            .unwrap();
        let error = migrate(&mut conn).unwrap_err();
        assert!(error.to_string().contains("newer"), "{error}");
    }
}
