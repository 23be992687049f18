//! The writer thread: the one connection that writes, with group commit.
//!
//! Async callers send a [`Command`] over a bounded channel and await a oneshot reply. The thread
//! takes the first queued command and every other one already queued (up to [`MAX_BATCH`]),
//! runs them all in one transaction, each inside its own savepoint so that a command that fails
//! (a lost compare-and-set, an index conflict, a taken run id) undoes only its own writes, commits
//! once, and only then replies: a caller learns of success only once its write is durable.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bgrun_core::{
    now, CreateOutcome, Event, InvalidTransition, LeaseGrant, NewRun, RunId, RunStatus, StoreError,
    StoreResult, Timestamp, Transition, TransitionOutcome, IDEMPOTENCY_WINDOW_SECS,
};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{index_to_sql, metadata_to_sql, params_to_sql, run_from_row, RUN_COLUMNS};
use crate::lock::FileLock;
use crate::schema;

/// The most commands one transaction takes.
pub(crate) const MAX_BATCH: usize = 4096;

/// How many commands may wait for the writer before senders wait too.
pub(crate) const QUEUE_CAPACITY: usize = 16 * 1024;

/// Where a command's result goes.
pub(crate) type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// A write, as the async side sends it to the writer thread.
#[derive(Debug)]
pub(crate) enum Command {
    /// `Store::create_run`.
    Create {
        run: Box<NewRun>,
        reply: Reply<CreateOutcome>,
    },
    /// `Store::append_events`.
    Append {
        run_id: RunId,
        events: Vec<Event>,
        reply: Reply<()>,
    },
    /// `Store::transition`.
    Transition {
        run_id: RunId,
        transition: Box<Transition>,
        events: Vec<Event>,
        reply: Reply<TransitionOutcome>,
    },
    /// `Store::request_cancel`.
    RequestCancel {
        run_id: RunId,
        at: Timestamp,
        reply: Reply<()>,
    },
    /// `Store::acquire_lease`.
    AcquireLease {
        run_id: RunId,
        owner: String,
        ttl: Duration,
        reply: Reply<LeaseGrant>,
    },
    /// `Store::renew_leases`.
    RenewLeases {
        owner: String,
        ttl: Duration,
        reply: Reply<u64>,
    },
    /// `Store::release_lease`.
    ReleaseLease {
        run_id: RunId,
        owner: String,
        reply: Reply<()>,
    },
}

/// A command's result, held until the batch commits.
// Held in a `Vec` reused across batches: unboxed, a created record costs no extra allocation.
#[allow(clippy::large_enum_variant)]
enum Done {
    Create(Reply<CreateOutcome>, StoreResult<CreateOutcome>),
    Unit(Reply<()>, StoreResult<()>),
    Transition(Reply<TransitionOutcome>, StoreResult<TransitionOutcome>),
    Lease(Reply<LeaseGrant>, StoreResult<LeaseGrant>),
    Count(Reply<u64>, StoreResult<u64>),
}

fn send<T>(reply: Reply<T>, result: StoreResult<T>, failed_commit: Option<&str>) {
    let result = match (result, failed_commit) {
        (Ok(_), Some(why)) => Err(StoreError::backend(
            "committing a batch of writes",
            why.to_owned(),
        )),
        (result, _) => result,
    };
    // The caller may have gone away (its future dropped); the write stands regardless.
    let _ = reply.send(result);
}

impl Done {
    /// Replies, turning a success into an error when the batch did not commit.
    fn send(self, failed_commit: Option<&str>) {
        match self {
            Self::Create(reply, result) => send(reply, result, failed_commit),
            Self::Unit(reply, result) => send(reply, result, failed_commit),
            Self::Transition(reply, result) => send(reply, result, failed_commit),
            Self::Lease(reply, result) => send(reply, result, failed_commit),
            Self::Count(reply, result) => send(reply, result, failed_commit),
        }
    }
}

/// Counters the writer keeps, shared with the store.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    /// Transactions committed (or attempted).
    pub(crate) batches: AtomicU64,
    /// Commands executed.
    pub(crate) commands: AtomicU64,
}

/// Starts the writer thread: takes the file lock, opens and migrates the database, then
/// serves commands until every sender is dropped. Returns once the database is ready.
pub(crate) async fn spawn(
    path: PathBuf,
    stats: Arc<WriterStats>,
) -> Result<(mpsc::Sender<Command>, std::thread::JoinHandle<()>), StoreError> {
    let (commands, receiver) = mpsc::channel(QUEUE_CAPACITY);
    let (ready_tx, ready_rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("bgrun-sqlite-writer".into())
        .spawn(move || {
            let started = FileLock::acquire(&path).and_then(|lock| {
                let mut conn = schema::open_writer(&path)?;
                let migrated = schema::migrate(&mut conn)?;
                if migrated > 0 {
                    tracing::info!(path = %path.display(), migrated, "migrated the SQLite schema");
                }
                Ok((lock, conn))
            });
            match started {
                Ok((lock, conn)) => {
                    if ready_tx.send(Ok(())).is_err() {
                        return;
                    }
                    Writer::new(conn, stats).serve(receiver);
                    // The connection is closed (in `serve`) before the lock is released.
                    drop(lock);
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                }
            }
        })
        .map_err(|e| StoreError::backend("starting the SQLite writer thread", e))?;
    match ready_rx.await {
        Ok(Ok(())) => Ok((commands, thread)),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => {
            let _ = thread.join();
            Err(StoreError::backend(
                "starting the SQLite writer thread",
                "the writer thread stopped before it was ready",
            ))
        }
    }
}

/// The writer: its connection and its reusable buffers.
pub(crate) struct Writer {
    conn: Connection,
    stats: Arc<WriterStats>,
    done: Vec<Done>,
}

/// The transaction of the current batch cannot be trusted any more.
struct Broken(String);

impl Writer {
    pub(crate) fn new(conn: Connection, stats: Arc<WriterStats>) -> Self {
        Self {
            conn,
            stats,
            done: Vec::with_capacity(MAX_BATCH),
        }
    }

    /// Serves batches until the channel closes, then closes the connection.
    fn serve(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while receiver.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
            self.execute(&mut batch);
        }
        if let Err((_, error)) = self.conn.close() {
            tracing::warn!(%error, "closing the SQLite writer connection");
        }
    }

    /// Runs `batch` in one transaction and replies to every command.
    pub(crate) fn execute(&mut self, batch: &mut Vec<Command>) {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .commands
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let outcome = self.run_batch(batch);
        let failed = outcome.err().map(|Broken(why)| why);
        if let Some(why) = &failed {
            tracing::error!(why = %why, "a batch of SQLite writes failed");
            // Commands not reached yet fail too.
            for command in batch.drain(..) {
                self.done.push(failed_command(command));
            }
        }
        for done in self.done.drain(..) {
            done.send(failed.as_deref());
        }
    }

    fn run_batch(&mut self, batch: &mut Vec<Command>) -> Result<(), Broken> {
        let broken = |what: &'static str| move |e: rusqlite::Error| Broken(format!("{what}: {e}"));
        self.statement("BEGIN IMMEDIATE").map_err(broken("BEGIN"))?;
        let now_secs = now();
        let outcome = (|| {
            for command in batch.drain(..) {
                let done = self.run_command(command, now_secs)?;
                self.done.push(done);
            }
            self.statement("COMMIT").map_err(broken("COMMIT"))
        })();
        if outcome.is_err() && !self.conn.is_autocommit() {
            if let Err(error) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(%error, "rolling back a failed batch");
            }
        }
        outcome
    }

    /// Executes one cached statement that returns no rows.
    fn statement(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(drop)
    }

    /// Runs one command inside a savepoint, rolled back if the command fails.
    fn run_command(&self, command: Command, now_secs: Timestamp) -> Result<Done, Broken> {
        Ok(match command {
            Command::Create { run, reply } => {
                Done::Create(reply, self.guarded(|conn| create(conn, *run))?)
            }
            Command::Append {
                run_id,
                events,
                reply,
            } => Done::Unit(
                reply,
                self.guarded(|conn| append(conn, &run_id, &events, now_secs))?,
            ),
            Command::Transition {
                run_id,
                transition,
                events,
                reply,
            } => Done::Transition(
                reply,
                self.guarded(|conn| transition_run(conn, &run_id, &transition, &events))?,
            ),
            Command::RequestCancel { run_id, at, reply } => Done::Unit(
                reply,
                self.guarded(|conn| request_cancel(conn, &run_id, at))?,
            ),
            Command::AcquireLease {
                run_id,
                owner,
                ttl,
                reply,
            } => Done::Lease(
                reply,
                self.guarded(|conn| acquire_lease(conn, &run_id, &owner, ttl))?,
            ),
            Command::RenewLeases { owner, ttl, reply } => {
                Done::Count(reply, self.guarded(|conn| renew_leases(conn, &owner, ttl))?)
            }
            Command::ReleaseLease {
                run_id,
                owner,
                reply,
            } => Done::Unit(
                reply,
                self.guarded(|conn| release_lease(conn, &run_id, &owner))?,
            ),
        })
    }

    /// Runs `op` inside `SAVEPOINT cmd`: kept on success, undone on failure. An error that
    /// leaves the transaction unusable breaks the whole batch.
    fn guarded<T>(
        &self,
        op: impl FnOnce(&Connection) -> StoreResult<T>,
    ) -> Result<StoreResult<T>, Broken> {
        let broken = |what: &'static str| move |e: rusqlite::Error| Broken(format!("{what}: {e}"));
        self.statement("SAVEPOINT cmd")
            .map_err(broken("SAVEPOINT"))?;
        let result = op(&self.conn);
        if self.conn.is_autocommit() {
            // SQLite rolled the whole transaction back (I/O error, full disk, ...): the writes
            // of earlier commands in this batch are gone.
            let why = match &result {
                Err(error) => error.to_string(),
                Ok(_) => "the transaction ended unexpectedly".to_owned(),
            };
            return Err(Broken(why));
        }
        if result.is_err() {
            self.statement("ROLLBACK TO cmd")
                .map_err(broken("ROLLBACK TO SAVEPOINT"))?;
        }
        self.statement("RELEASE cmd")
            .map_err(broken("RELEASE SAVEPOINT"))?;
        Ok(result)
    }
}

/// The reply of a command the batch never reached.
fn failed_command(command: Command) -> Done {
    fn failed<T>() -> StoreResult<T> {
        Err(StoreError::backend(
            "writing",
            "the batch failed before this command ran",
        ))
    }
    match command {
        Command::Create { reply, .. } => Done::Create(reply, failed()),
        Command::Append { reply, .. }
        | Command::RequestCancel { reply, .. }
        | Command::ReleaseLease { reply, .. } => Done::Unit(reply, failed()),
        Command::Transition { reply, .. } => Done::Transition(reply, failed()),
        Command::AcquireLease { reply, .. } => Done::Lease(reply, failed()),
        Command::RenewLeases { reply, .. } => Done::Count(reply, failed()),
    }
}

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

fn create(conn: &Connection, run: NewRun) -> StoreResult<CreateOutcome> {
    if let Some(key) = &run.idempotency_key {
        let earlier = conn
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE idempotency_key = ?1"
            ))
            .and_then(|mut stmt| stmt.query_row([key], run_from_row).optional())
            .map_err(sql("looking up an idempotency key"))?;
        if let Some(earlier) = earlier {
            if run.created_at.saturating_sub(earlier.created_at) < IDEMPOTENCY_WINDOW_SECS {
                return Ok(CreateOutcome::Existing(earlier));
            }
            // The key's window has passed: it is free for this run.
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
    let inserted = conn
        .prepare_cached(
            "INSERT INTO runs (run_id, session_id, user_id, kind, component_id, parent_run_id, \
             status, input, params, metadata, idempotency_key, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                run.run_id.as_str(),
                run.session_id.as_str(),
                run.user_id,
                run.target.kind.as_str(),
                run.target.component_id,
                run.parent_run_id.as_ref().map(RunId::as_str),
                RunStatus::Pending.as_str(),
                run.input,
                params_to_sql(&run.params),
                metadata_to_sql(run.metadata.as_ref()),
                run.idempotency_key,
                run.created_at,
            ])
        });
    match inserted {
        Ok(_) => Ok(CreateOutcome::Created {
            run: run.into_record(),
            cancel_requested,
        }),
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

/// Checks that `events` continue a log whose last index is `last`, stores them, and moves the
/// run's `last_event_index`. Nothing is written when they do not fit.
fn store_events(
    conn: &Connection,
    run_id: &RunId,
    seq: i64,
    last: Option<i64>,
    events: &[Event],
) -> StoreResult<Option<i64>> {
    if events.is_empty() {
        return Ok(last);
    }
    let next = match last {
        Some(last) => u64::try_from(last).map_or(0, |last| last + 1),
        None => 0,
    };
    for (offset, event) in (0u64..).zip(events) {
        if event.index() != next + offset {
            return Err(StoreError::IndexConflict {
                run_id: run_id.clone(),
                expected: next + offset,
                got: event.index(),
            });
        }
    }
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO events (run_seq, event_index, event_type, json) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(sql("preparing the event insert"))?;
    let mut last_index = last;
    for event in events {
        let index = index_to_sql(event.index())?;
        insert
            .execute(params![seq, index, event.event_type(), event.json()])
            .map_err(sql("inserting an event"))?;
        last_index = Some(index);
    }
    Ok(last_index)
}

fn append(
    conn: &Connection,
    run_id: &RunId,
    events: &[Event],
    now_secs: Timestamp,
) -> StoreResult<()> {
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
        .map_err(sql("reading a run to append to"))?;
    let Some((seq, status, last)) = found else {
        return Err(StoreError::RunNotFound(run_id.clone()));
    };
    let status = RunStatus::parse(&status).map_err(|e| StoreError::backend("reading a run", e))?;
    if status.is_terminal() {
        // bgrun-core has no error for "this run has ended"; the status machine's is the
        // closest: a terminal status has no exit (the conformance suite expects this one).
        return Err(InvalidTransition {
            from: status,
            to: status,
        }
        .into());
    }
    if events.is_empty() {
        return Ok(());
    }
    let last = store_events(conn, run_id, seq, last, events)?;
    conn.prepare_cached(
        "UPDATE runs SET last_event_index = ?1, updated_at = MAX(updated_at, ?2) WHERE seq = ?3",
    )
    .and_then(|mut stmt| stmt.execute(params![last, now_secs, seq]))
    .map_err(sql("updating a run's last event"))?;
    Ok(())
}

fn transition_run(
    conn: &Connection,
    run_id: &RunId,
    transition: &Transition,
    events: &[Event],
) -> StoreResult<TransitionOutcome> {
    transition.from.check_transition(transition.to)?;
    // The compare-and-set: one statement, applied only if the run is still in `from`.
    let updated = conn
        .prepare_cached(&format!(
            "UPDATE runs SET status = ?1, updated_at = ?2, \
             content = COALESCE(?3, content), error = COALESCE(?4, error), \
             cancellation_stage = COALESCE(?5, cancellation_stage) \
             WHERE run_id = ?6 AND status = ?7 RETURNING {RUN_COLUMNS}"
        ))
        .and_then(|mut stmt| {
            stmt.query_row(
                params![
                    transition.to.as_str(),
                    transition.at,
                    transition.content,
                    transition.error,
                    transition.cancellation_stage.map(|stage| stage.as_str()),
                    run_id.as_str(),
                    transition.from.as_str(),
                ],
                |row| {
                    Ok((
                        run_from_row(row)?,
                        row.get::<_, i64>(crate::codec::SEQ_COLUMN)?,
                    ))
                },
            )
            .optional()
        })
        .map_err(sql("updating a run's status"))?;
    let Some((mut record, seq)) = updated else {
        let actual: Option<String> = conn
            .prepare_cached("SELECT status FROM runs WHERE run_id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([run_id.as_str()], |row| row.get(0))
                    .optional()
            })
            .map_err(sql("reading a run's status"))?;
        return match actual {
            None => Err(StoreError::RunNotFound(run_id.clone())),
            Some(actual) => Ok(TransitionOutcome::Conflict {
                actual: RunStatus::parse(&actual)
                    .map_err(|e| StoreError::backend("reading a run's status", e))?,
            }),
        };
    };
    if !events.is_empty() {
        let last = record.last_event_index.map(index_to_sql).transpose()?;
        let last = store_events(conn, run_id, seq, last, events)?;
        conn.prepare_cached("UPDATE runs SET last_event_index = ?1 WHERE seq = ?2")
            .and_then(|mut stmt| stmt.execute(params![last, seq]))
            .map_err(sql("updating a run's last event"))?;
        record.last_event_index = events.last().map(Event::index);
    }
    Ok(TransitionOutcome::Applied(Box::new(record)))
}

fn request_cancel(conn: &Connection, run_id: &RunId, at: Timestamp) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO cancel_intents (run_id, requested_at) VALUES (?1, ?2) \
         ON CONFLICT (run_id) DO NOTHING",
    )
    .and_then(|mut stmt| stmt.execute(params![run_id.as_str(), at]))
    .map_err(sql("recording a cancel intent"))?;
    Ok(())
}

fn acquire_lease(
    conn: &Connection,
    run_id: &RunId,
    owner: &str,
    ttl: Duration,
) -> StoreResult<LeaseGrant> {
    let now_ms = now_millis();
    let changed = conn
        .prepare_cached(
            "INSERT INTO leases (run_id, owner, expires_at) VALUES (?1, ?2, ?3) \
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
    let holder: String = conn
        .prepare_cached("SELECT owner FROM leases WHERE run_id = ?1")
        .and_then(|mut stmt| stmt.query_row([run_id.as_str()], |row| row.get(0)))
        .map_err(sql("reading a lease"))?;
    Ok(LeaseGrant::HeldBy(holder))
}

fn renew_leases(conn: &Connection, owner: &str, ttl: Duration) -> StoreResult<u64> {
    let now_ms = now_millis();
    let renewed = conn
        .prepare_cached("UPDATE leases SET expires_at = ?1 WHERE owner = ?2 AND expires_at > ?3")
        .and_then(|mut stmt| stmt.execute(params![expiry(now_ms, ttl), owner, now_ms]))
        .map_err(sql("renewing leases"))?;
    Ok(renewed as u64)
}

fn release_lease(conn: &Connection, run_id: &RunId, owner: &str) -> StoreResult<()> {
    conn.prepare_cached("DELETE FROM leases WHERE run_id = ?1 AND owner = ?2")
        .and_then(|mut stmt| stmt.execute(params![run_id.as_str(), owner]))
        .map_err(sql("releasing a lease"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use bgrun_core::{Envelope, RunKind, RunTarget};

    use super::*;

    fn event(run: &NewRun, index: u64) -> Event {
        let envelope = Envelope {
            run_id: &run.run_id,
            session_id: &run.session_id,
            created_at: run.created_at,
        };
        Event::render(envelope, index, "RunContent", &Default::default())
    }

    fn writer() -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = schema::open_writer(&dir.path().join("w.db")).unwrap();
        schema::migrate(&mut conn).unwrap();
        (dir, Writer::new(conn, Arc::default()))
    }

    fn new_run(id: &str) -> NewRun {
        let mut run = NewRun::new(RunTarget::new(RunKind::Agent, "echo"), "hi");
        run.run_id = RunId::parse(id).unwrap();
        run
    }

    fn status_of(writer: &Writer, id: &str) -> Option<(String, Option<i64>)> {
        writer
            .conn
            .query_row(
                "SELECT status, last_event_index FROM runs WHERE run_id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .unwrap()
    }

    #[test]
    fn a_failing_command_in_a_batch_undoes_only_itself() {
        let (_dir, mut writer) = writer();
        let a = new_run("a");
        let b = new_run("b");
        let (create_a, mut created_a) = oneshot::channel();
        let (create_a_again, mut created_a_again) = oneshot::channel();
        let (bad_transition, mut bad_transitioned) = oneshot::channel();
        let (append_missing, mut appended_missing) = oneshot::channel();
        let (append_a, mut appended_a) = oneshot::channel();
        let (lost_cas, mut lost) = oneshot::channel();
        let (create_b, mut created_b) = oneshot::channel();
        let mut batch = vec![
            Command::Create {
                run: Box::new(a.clone()),
                reply: create_a,
            },
            Command::Create {
                run: Box::new(a.clone()),
                reply: create_a_again,
            },
            // The status update of this transition is written, then its events do not fit:
            // the savepoint must take the status update back.
            Command::Transition {
                run_id: a.run_id.clone(),
                transition: Box::new(Transition::new(RunStatus::Pending, RunStatus::Running)),
                events: vec![event(&a, 5)],
                reply: bad_transition,
            },
            Command::Append {
                run_id: RunId::parse("missing").unwrap(),
                events: vec![event(&a, 0)],
                reply: append_missing,
            },
            Command::Append {
                run_id: a.run_id.clone(),
                events: vec![event(&a, 0), event(&a, 1)],
                reply: append_a,
            },
            Command::Transition {
                run_id: a.run_id.clone(),
                transition: Box::new(Transition::new(RunStatus::Running, RunStatus::Completed)),
                events: vec![],
                reply: lost_cas,
            },
            Command::Create {
                run: Box::new(b.clone()),
                reply: create_b,
            },
        ];
        writer.execute(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(writer.stats.batches.load(Ordering::Relaxed), 1);

        assert!(matches!(
            created_a.try_recv().unwrap(),
            Ok(CreateOutcome::Created {
                cancel_requested: false,
                ..
            })
        ));
        assert!(matches!(
            created_a_again.try_recv().unwrap(),
            Err(StoreError::RunExists(id)) if id == a.run_id
        ));
        assert!(matches!(
            bad_transitioned.try_recv().unwrap(),
            Err(StoreError::IndexConflict {
                expected: 0,
                got: 5,
                ..
            })
        ));
        assert!(matches!(
            appended_missing.try_recv().unwrap(),
            Err(StoreError::RunNotFound(_))
        ));
        appended_a.try_recv().unwrap().unwrap();
        assert_eq!(
            lost.try_recv().unwrap().unwrap(),
            TransitionOutcome::Conflict {
                actual: RunStatus::Pending
            }
        );
        assert!(matches!(
            created_b.try_recv().unwrap(),
            Ok(CreateOutcome::Created { .. })
        ));

        assert_eq!(status_of(&writer, "a"), Some(("PENDING".into(), Some(1))));
        assert_eq!(status_of(&writer, "b"), Some(("PENDING".into(), None)));
        assert_eq!(status_of(&writer, "missing"), None);
        let events: i64 = writer
            .conn
            .query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
            .unwrap();
        assert_eq!(events, 2);
    }

    #[test]
    fn an_expired_idempotency_key_is_freed_and_a_live_one_returns_the_run() {
        let (_dir, mut writer) = writer();
        let mut old = new_run("old");
        old.idempotency_key = Some("k".into());
        old.created_at = 1_000;
        let mut retry = new_run("retry");
        retry.idempotency_key = Some("k".into());
        retry.created_at = 1_000 + IDEMPOTENCY_WINDOW_SECS - 1;
        let mut later = new_run("later");
        later.idempotency_key = Some("k".into());
        later.created_at = 1_000 + IDEMPOTENCY_WINDOW_SECS;
        let replies: Vec<_> = [old, retry, later]
            .into_iter()
            .map(|run| {
                let (reply, response) = oneshot::channel();
                writer.execute(&mut vec![Command::Create {
                    run: Box::new(run),
                    reply,
                }]);
                response
            })
            .collect();
        let outcomes: Vec<CreateOutcome> = replies
            .into_iter()
            .map(|mut response| response.try_recv().unwrap().unwrap())
            .collect();
        assert!(matches!(&outcomes[0], CreateOutcome::Created { .. }));
        assert!(
            matches!(&outcomes[1], CreateOutcome::Existing(run) if run.run_id.as_str() == "old")
        );
        assert!(
            matches!(&outcomes[2], CreateOutcome::Created { run, .. } if run.run_id.as_str() == "later")
        );
        assert_eq!(writer.stats.batches.load(Ordering::Relaxed), 3);
    }
}
