//! The writer thread: the one connection that writes, with group commit.
//!
//! Async callers send a [`Command`] over a bounded channel and await a oneshot reply. The thread
//! takes the first queued command and every other one already queued (up to [`MAX_BATCH`]),
//! runs them all in one transaction, commits once, and only then replies: a caller learns of
//! success only once its write is committed. A command that is refused (a lost compare-and-set,
//! an index conflict, a taken run id) has written nothing and fails alone; see
//! `Writer::guarded` for how that holds without a savepoint per command.
//!
//! The writer does not checkpoint: SQLite would copy the WAL into the database (and sync it)
//! inside the commit that crosses the threshold, holding up every caller of that batch for
//! milliseconds. A checkpointer thread with its own connection does it instead, when the writer
//! reports that the WAL has grown past [`CHECKPOINT_PAGES`], concurrently with later commits.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bgrun_core::stream::{
    AppendOutcome, CreateStreamOutcome, DeleteStreamOutcome, Millis, NewStream, StreamAppend,
    StreamId,
};
use bgrun_core::{
    now, CreateAndStart, CreateOutcome, Event, LeaseGrant, NewRun, RunId, RunRecord, StoreError,
    StoreResult, Timestamp, Transition, TransitionOutcome,
};
use rusqlite::hooks::Wal;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::lock::FileLock;
use crate::recent::{Known, RecentRuns};
use crate::{ops, schema, streams};

/// The most commands one transaction takes.
pub(crate) const MAX_BATCH: usize = 4096;

/// How many commands may wait for the writer before senders wait too.
pub(crate) const QUEUE_CAPACITY: usize = 16 * 1024;

/// The WAL size, in pages, past which the writer asks for a checkpoint (16 MiB of 4 KiB pages;
/// SQLite's own default is 1,000). Once a checkpoint has copied the whole WAL, the next commit
/// starts it over. A checkpoint copies each page once however often the WAL holds it, and the
/// hot pages of `runs` and its indexes are in nearly every commit: fewer, larger checkpoints
/// copy and sync less.
pub(crate) const CHECKPOINT_PAGES: i32 = 4000;

/// The WAL size, in pages, past which the writer finishes a checkpoint itself between two batches
/// (see `Writer::maybe_checkpoint`).
pub(crate) const WAL_LIMIT_PAGES: i32 = 4 * CHECKPOINT_PAGES;

/// How many pages the WAL grows by, once past [`CHECKPOINT_PAGES`], between two requests for a
/// checkpoint. While commits keep coming, a checkpoint never copies the last frames, so the WAL
/// stays past the threshold until it starts over; asking after every commit had the
/// checkpointer copy a few pages and sync the database hundreds of times a second.
pub(crate) const CHECKPOINT_STEP_PAGES: i32 = CHECKPOINT_PAGES / 4;

/// How long after a checkpoint that left frames behind the checkpointer copies them unasked.
const CATCH_UP: Duration = Duration::from_secs(1);

/// What the writer does about the WAL after a commit.
#[derive(Debug, PartialEq, Eq)]
enum CheckpointAction {
    Nothing,
    /// Ask the checkpointer thread (it copies concurrently with later commits).
    Request,
    /// Checkpoint on the writer's own connection, between two batches.
    Finish,
}

/// When to checkpoint, from the WAL's size in pages after each commit.
#[derive(Debug)]
struct CheckpointSchedule {
    /// The size at which the checkpointer is asked next.
    next_request: i32,
}

impl CheckpointSchedule {
    fn new() -> Self {
        Self {
            next_request: CHECKPOINT_PAGES,
        }
    }

    fn after_commit(&mut self, wal_pages: i32) -> CheckpointAction {
        if wal_pages >= WAL_LIMIT_PAGES {
            self.next_request = CHECKPOINT_PAGES;
            CheckpointAction::Finish
        } else if wal_pages < CHECKPOINT_PAGES {
            // Small, or started over since the last request.
            self.next_request = CHECKPOINT_PAGES;
            CheckpointAction::Nothing
        } else if wal_pages >= self.next_request {
            self.next_request = wal_pages + CHECKPOINT_STEP_PAGES;
            CheckpointAction::Request
        } else {
            CheckpointAction::Nothing
        }
    }
}

thread_local! {
    /// The WAL's size in pages after the last commit on this thread, as SQLite reports it.
    static WAL_PAGES: Cell<i32> = const { Cell::new(0) };
}

/// SQLite's WAL hook on the writer connection (called on the committing thread). Installing it
/// replaces SQLite's automatic checkpoint.
fn note_wal_pages(_: &Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// The checkpointer thread: a connection of its own that copies the WAL into the database each
/// time the writer asks, until the writer goes away.
struct Checkpointer {
    nudge: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    /// Starts the thread, or `None` (SQLite then checkpoints in the writer's commits).
    fn spawn(path: &Path) -> Option<Self> {
        let conn = match schema::open_writer(path) {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "no checkpointer connection; the writer checkpoints");
                return None;
            }
        };
        let (nudge, nudges) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("bgrun-sqlite-ckpt".into())
            .spawn(move || {
                checkpoint_when_asked(&nudges, CATCH_UP, || {
                    // PASSIVE: copies what no reader still needs, never waits for the writer.
                    // Its row: busy, frames in the WAL, frames copied.
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                    })
                });
                if let Err((_, error)) = conn.close() {
                    tracing::warn!(%error, "closing the SQLite checkpointer connection");
                }
            });
        match thread {
            Ok(thread) => Some(Self { nudge, thread }),
            Err(error) => {
                tracing::warn!(%error, "no checkpointer thread; the writer checkpoints");
                None
            }
        }
    }
}

/// The checkpointer's loop, until every sender of `nudges` is gone: a checkpoint each time it
/// is asked, and `catch_up` after one that left frames behind (committed while it copied) if
/// not asked before: the writer asks only once per [`CHECKPOINT_STEP_PAGES`], and when writes
/// stop, what they left is copied all the same. `checkpoint` answers the frames in the WAL and
/// how many of them it copied.
fn checkpoint_when_asked(
    nudges: &std::sync::mpsc::Receiver<()>,
    catch_up: Duration,
    mut checkpoint: impl FnMut() -> rusqlite::Result<(i64, i64)>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut behind = false;
    loop {
        let next = if behind {
            nudges.recv_timeout(catch_up)
        } else {
            nudges.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        if let Err(RecvTimeoutError::Disconnected) = next {
            return;
        }
        match checkpoint() {
            Ok((frames, copied)) => behind = copied < frames,
            Err(error) => {
                behind = false;
                tracing::warn!(%error, "checkpointing the SQLite WAL");
            }
        }
    }
}

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
    /// `Store::create_and_start_run`.
    CreateAndStart {
        run: Box<NewRun>,
        started: Event,
        /// `Store::create_and_start_leased`: the lease's owner and ttl.
        lease: Option<(String, Duration)>,
        reply: Reply<CreateAndStart>,
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
    /// `Store::create_stream`.
    CreateStream {
        stream: Box<NewStream>,
        reply: Reply<CreateStreamOutcome>,
    },
    /// `Store::append_stream`.
    AppendStream {
        path: String,
        append: Box<StreamAppend>,
        reply: Reply<AppendOutcome>,
    },
    /// `Store::delete_stream`.
    DeleteStream {
        path: String,
        only: Option<StreamId>,
        /// `Store::expire_stream`: delete only if expired at this time.
        expired_at: Option<Millis>,
        reply: Reply<DeleteStreamOutcome>,
    },
    /// `Store::touch_stream`.
    TouchStream {
        id: StreamId,
        now: Millis,
        reply: Reply<()>,
    },
}

/// A command's result, held until the batch commits.
// Held in a `Vec` reused across batches: unboxed, a created record costs no extra allocation.
#[allow(clippy::large_enum_variant)]
/// A command's reply and its result; a write of a run's record with the run's row id.
enum Done {
    Create(
        Reply<CreateOutcome>,
        StoreResult<(CreateOutcome, Option<i64>)>,
    ),
    CreateAndStart(
        Reply<CreateAndStart>,
        StoreResult<(CreateAndStart, Option<i64>)>,
    ),
    Unit(Reply<()>, StoreResult<()>),
    Transition(
        Reply<TransitionOutcome>,
        StoreResult<(TransitionOutcome, Option<i64>)>,
    ),
    Lease(Reply<LeaseGrant>, StoreResult<LeaseGrant>),
    Count(Reply<u64>, StoreResult<u64>),
    CreateStream(Reply<CreateStreamOutcome>, StoreResult<CreateStreamOutcome>),
    AppendStream(Reply<AppendOutcome>, StoreResult<AppendOutcome>),
    DeleteStream(Reply<DeleteStreamOutcome>, StoreResult<DeleteStreamOutcome>),
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

impl Command {
    /// The run whose record this command may change (its status, log end or times).
    fn changed_run(&self) -> Option<&RunId> {
        match self {
            Self::Append { run_id, .. } | Self::Transition { run_id, .. } => Some(run_id),
            // A create changes no existing record: a taken id or key refuses it.
            _ => None,
        }
    }
}

impl Done {
    /// The record a committed command left, when it says.
    fn committed_run(&self) -> Option<(i64, RunRecord)> {
        match self {
            Self::Create(_, Ok((CreateOutcome::Created { run, .. }, Some(seq))))
            | Self::CreateAndStart(
                _,
                Ok((
                    CreateAndStart {
                        created: CreateOutcome::Created { run, .. },
                        started: None,
                    },
                    Some(seq),
                )),
            )
            | Self::CreateAndStart(
                _,
                Ok((
                    CreateAndStart {
                        started: Some(run), ..
                    },
                    Some(seq),
                )),
            ) => Some((*seq, run.clone())),
            Self::Transition(_, Ok((TransitionOutcome::Applied(run), Some(seq)))) => {
                Some((*seq, RunRecord::clone(run)))
            }
            _ => None,
        }
    }

    /// Replies, turning a success into an error when the batch did not commit.
    fn send(self, failed_commit: Option<&str>) {
        match self {
            Self::Create(reply, result) => send(reply, result.map(|(done, _)| done), failed_commit),
            Self::CreateAndStart(reply, result) => {
                send(reply, result.map(|(done, _)| done), failed_commit)
            }
            Self::Unit(reply, result) => send(reply, result, failed_commit),
            Self::Transition(reply, result) => {
                send(reply, result.map(|(done, _)| done), failed_commit)
            }
            Self::Lease(reply, result) => send(reply, result, failed_commit),
            Self::Count(reply, result) => send(reply, result, failed_commit),
            Self::CreateStream(reply, result) => send(reply, result, failed_commit),
            Self::AppendStream(reply, result) => send(reply, result, failed_commit),
            Self::DeleteStream(reply, result) => send(reply, result, failed_commit),
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
    recent: Arc<RecentRuns>,
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
                    let mut writer = Writer::new(conn, stats, recent);
                    let checkpointer = writer.checkpoint_on_its_own(&path);
                    writer.serve(receiver);
                    // Both connections are closed (the writer's in `serve`, which also let the
                    // checkpointer go) before the lock is released.
                    if let Some(thread) = checkpointer {
                        if thread.join().is_err() {
                            tracing::error!("the SQLite checkpointer thread panicked");
                        }
                    }
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
    /// The records it committed last, for `get_run` (see `recent.rs`).
    recent: Arc<RecentRuns>,
    /// The runs the current batch appends to.
    appended: HashSet<RunId>,
    /// The runs whose status the current batch changes, as last committed (those it held).
    known: HashMap<RunId, Known>,
    /// The number of the last batch begun.
    batch_number: u64,
    _ends_batches: EndsBatchesOnDrop,
    done: Vec<Done>,
    /// Asks the checkpointer thread for a checkpoint; `None`: SQLite checkpoints in commits.
    checkpoints: Option<std::sync::mpsc::SyncSender<()>>,
    checkpoint_schedule: CheckpointSchedule,
}

/// The transaction of the current batch cannot be trusted any more.
#[derive(Debug)]
struct Broken(String);

/// Ends every batch when the writer goes away (returning or panicking), so that no `get_run`
/// waits for a batch that will not end.
#[derive(Debug)]
struct EndsBatchesOnDrop(Arc<RecentRuns>);

impl Drop for EndsBatchesOnDrop {
    fn drop(&mut self) {
        self.0.writer_stopped();
    }
}

impl Writer {
    pub(crate) fn new(conn: Connection, stats: Arc<WriterStats>, recent: Arc<RecentRuns>) -> Self {
        Self {
            conn,
            stats,
            _ends_batches: EndsBatchesOnDrop(Arc::clone(&recent)),
            recent,
            appended: HashSet::new(),
            known: HashMap::new(),
            batch_number: 0,
            done: Vec::with_capacity(MAX_BATCH),
            checkpoints: None,
            checkpoint_schedule: CheckpointSchedule::new(),
        }
    }

    /// Hands checkpoints to a thread of their own; returns it (to join once the writer is done).
    fn checkpoint_on_its_own(&mut self, path: &Path) -> Option<std::thread::JoinHandle<()>> {
        let Checkpointer { nudge, thread } = Checkpointer::spawn(path)?;
        self.conn.wal_hook(Some(note_wal_pages));
        self.checkpoints = Some(nudge);
        Some(thread)
    }

    /// Asks for a checkpoint when the last commit left the WAL large; never waits. Finishes one
    /// itself when the WAL grew past [`WAL_LIMIT_PAGES`].
    fn maybe_checkpoint(&mut self) {
        let Some(nudge) = &self.checkpoints else {
            return;
        };
        match self.checkpoint_schedule.after_commit(WAL_PAGES.get()) {
            CheckpointAction::Nothing => {}
            // Full: a checkpoint is already asked for.
            CheckpointAction::Request => {
                let _ = nudge.try_send(());
            }
            CheckpointAction::Finish => {
                // The checkpointer copies concurrently with commits, so while writes keep
                // coming it never copies the very last frame, and the WAL (which starts over
                // only once all of it is copied) keeps growing. Here no commit runs
                // concurrently: what is left is copied (most of it already was), and the next
                // commit starts it over.
                WAL_PAGES.set(0);
                if let Err(error) =
                    self.conn
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::warn!(%error, "checkpointing the SQLite WAL");
                }
            }
        }
    }

    /// Serves batches until the channel closes, then closes the connection.
    fn serve(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while receiver.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
            self.execute(&mut batch);
        }
        self.checkpoints = None;
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
        // A record a command of the batch returns is not the run's last state if the batch
        // also appends to it: such runs are read from the database until the commit, and stay
        // forgotten after it.
        self.appended.clear();
        self.appended
            .extend(batch.iter().filter_map(|command| match command {
                Command::Append { run_id, .. } => Some(run_id.clone()),
                _ => None,
            }));
        self.recent.forget(&self.appended);
        // The others whose status changes are answered once the batch ends.
        self.batch_number += 1;
        let appended = &self.appended;
        self.known.clear();
        self.recent.begin_batch(
            self.batch_number,
            batch
                .iter()
                .filter_map(Command::changed_run)
                .filter(|run_id| !appended.contains(*run_id)),
            &mut self.known,
        );
        let outcome = self.run_batch(batch);
        let failed = outcome.err().map(|Broken(why)| why);
        if let Some(why) = &failed {
            tracing::error!(why = %why, "a batch of SQLite writes failed");
            // Commands not reached yet fail too.
            for command in batch.drain(..) {
                self.done.push(failed_command(command));
            }
        }
        // Before the replies: a caller told of its write finds it here.
        let appended = &self.appended;
        self.recent.end_batch(
            self.done
                .iter()
                .filter(|_| failed.is_none())
                .filter_map(Done::committed_run)
                .filter(|(_, run)| !appended.contains(&run.run_id)),
        );
        for done in self.done.drain(..) {
            done.send(failed.as_deref());
        }
        // After the replies: waking the checkpointer holds up no caller.
        if failed.is_none() {
            self.maybe_checkpoint();
        }
    }

    fn run_batch(&mut self, batch: &mut Vec<Command>) -> Result<(), Broken> {
        let broken = |what: &'static str| move |e: rusqlite::Error| Broken(format!("{what}: {e}"));
        self.statement("BEGIN IMMEDIATE").map_err(broken("BEGIN"))?;
        let now_secs = now();
        let outcome = (|| {
            for command in batch.drain(..) {
                self.run_command(command, now_secs)?;
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

    /// Runs one command; its result waits in `self.done` for the commit. `Err` when the batch
    /// broke (the command's own reply then carries the error).
    fn run_command(&mut self, command: Command, now_secs: Timestamp) -> Result<(), Broken> {
        let mut broken = None;
        let done = match command {
            Command::Create { run, reply } => Done::Create(
                reply,
                guarded(&self.conn, &mut broken, |conn| ops::create(conn, *run)),
            ),
            Command::CreateAndStart {
                run,
                started,
                lease,
                reply,
            } => Done::CreateAndStart(
                reply,
                guarded(&self.conn, &mut broken, |conn| {
                    let lease = lease.as_ref().map(|(owner, ttl)| (owner.as_str(), *ttl));
                    ops::create_and_start(conn, *run, &started, lease)
                }),
            ),
            Command::Append {
                run_id,
                events,
                reply,
            } => Done::Unit(
                reply,
                guarded(&self.conn, &mut broken, |conn| {
                    ops::append(conn, &run_id, &events, now_secs)
                }),
            ),
            Command::Transition {
                run_id,
                transition,
                events,
                reply,
            } => Done::Transition(
                reply,
                // Taken: a second change of the run in this batch reads the row the first left.
                guarded(&self.conn, &mut broken, |conn| {
                    ops::transition(
                        conn,
                        &run_id,
                        &transition,
                        &events,
                        self.known.remove(&run_id),
                    )
                }),
            ),
            Command::RequestCancel { run_id, at, reply } => Done::Unit(
                reply,
                guarded(&self.conn, &mut broken, |conn| {
                    ops::request_cancel(conn, &run_id, at)
                }),
            ),
            Command::AcquireLease {
                run_id,
                owner,
                ttl,
                reply,
            } => Done::Lease(
                reply,
                guarded(&self.conn, &mut broken, |conn| {
                    ops::acquire_lease(conn, &run_id, &owner, ttl)
                }),
            ),
            Command::RenewLeases { owner, ttl, reply } => Done::Count(
                reply,
                guarded(&self.conn, &mut broken, |conn| {
                    ops::renew_leases(conn, &owner, ttl)
                }),
            ),
            Command::ReleaseLease {
                run_id,
                owner,
                reply,
            } => Done::Unit(
                reply,
                guarded(&self.conn, &mut broken, |conn| {
                    ops::release_lease(conn, &run_id, &owner)
                }),
            ),
            Command::CreateStream { stream, reply } => Done::CreateStream(
                reply,
                guarded(&self.conn, &mut broken, |conn| {
                    streams::create(conn, *stream)
                }),
            ),
            Command::AppendStream {
                path,
                append,
                reply,
            } => Done::AppendStream(
                reply,
                guarded(&self.conn, &mut broken, |conn| {
                    streams::append(conn, &path, &append)
                }),
            ),
            Command::DeleteStream {
                path,
                only,
                expired_at,
                reply,
            } => Done::DeleteStream(
                reply,
                guarded(&self.conn, &mut broken, |conn| {
                    streams::delete(conn, &path, only, expired_at)
                }),
            ),
            Command::TouchStream { id, now, reply } => Done::Unit(
                reply,
                guarded(&self.conn, &mut broken, |conn| {
                    streams::touch(conn, id, now)
                }),
            ),
        };
        self.done.push(done);
        broken.map_or(Ok(()), Err)
    }
}

/// Runs one write of the batch.
///
/// Every write checks what can refuse it (a taken id, a lost compare-and-set, an index that does
/// not continue the log) before it changes a row, so a refused write has written nothing and the
/// batch goes on without it. That is what a savepoint per write would guarantee, without the
/// cost of one (SQLite copies each page a savepoint touches). A write that fails after changing
/// rows (an I/O error, a full disk) breaks the batch: `broken` is set, the batch is rolled back
/// and every write in it fails.
fn guarded<T>(
    conn: &Connection,
    broken: &mut Option<Broken>,
    op: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    let changes_before = conn.total_changes();
    let result = op(conn);
    if let Err(error) = &result {
        let why = if conn.is_autocommit() {
            // SQLite rolled the whole transaction back.
            format!("the transaction was rolled back: {error}")
        } else if conn.total_changes() != changes_before {
            format!("a write failed after changing rows: {error}")
        } else {
            return result;
        };
        *broken = Some(Broken(why.clone()));
        return Err(StoreError::backend("writing a batch", why));
    }
    result
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
        Command::CreateAndStart { reply, .. } => Done::CreateAndStart(reply, failed()),
        Command::Append { reply, .. }
        | Command::RequestCancel { reply, .. }
        | Command::ReleaseLease { reply, .. }
        | Command::TouchStream { reply, .. } => Done::Unit(reply, failed()),
        Command::Transition { reply, .. } => Done::Transition(reply, failed()),
        Command::AcquireLease { reply, .. } => Done::Lease(reply, failed()),
        Command::RenewLeases { reply, .. } => Done::Count(reply, failed()),
        Command::CreateStream { reply, .. } => Done::CreateStream(reply, failed()),
        Command::AppendStream { reply, .. } => Done::AppendStream(reply, failed()),
        Command::DeleteStream { reply, .. } => Done::DeleteStream(reply, failed()),
    }
}

#[cfg(test)]
mod tests {
    use bgrun_core::{Envelope, RunKind, RunStatus, RunTarget, IDEMPOTENCY_WINDOW_SECS};
    use rusqlite::OptionalExtension;

    use super::*;

    fn event(run: &NewRun, index: u64) -> Event {
        let envelope = Envelope {
            run_id: &run.run_id,
            session_id: &run.session_id,
            created_at: run.created_at,
        };
        Event::render(envelope, index, "RunContent", &Default::default())
    }

    #[test]
    fn the_checkpointer_is_asked_once_per_step_not_after_every_commit() {
        let mut schedule = CheckpointSchedule::new();
        let mut requests = Vec::new();
        let mut finished_at = None;
        // Commits of 7 pages each, until the writer finishes a checkpoint itself.
        for pages in (7..).step_by(7) {
            match schedule.after_commit(pages) {
                CheckpointAction::Nothing => {}
                CheckpointAction::Request => requests.push(pages),
                CheckpointAction::Finish => {
                    finished_at = Some(pages);
                    break;
                }
            }
        }
        let finished_at = finished_at.unwrap();
        assert!((WAL_LIMIT_PAGES..WAL_LIMIT_PAGES + 7).contains(&finished_at));
        assert_eq!(
            requests.len() as i32,
            (WAL_LIMIT_PAGES - CHECKPOINT_PAGES) / CHECKPOINT_STEP_PAGES
        );
        assert!((CHECKPOINT_PAGES..CHECKPOINT_PAGES + 7).contains(&requests[0]));
        for pair in requests.windows(2) {
            assert!(pair[1] - pair[0] >= CHECKPOINT_STEP_PAGES);
        }
        // The WAL started over: asked again once it is past the threshold.
        assert_eq!(schedule.after_commit(7), CheckpointAction::Nothing);
        assert_eq!(
            schedule.after_commit(CHECKPOINT_PAGES),
            CheckpointAction::Request
        );
        assert_eq!(
            schedule.after_commit(CHECKPOINT_PAGES + 7),
            CheckpointAction::Nothing
        );
    }

    #[test]
    fn a_checkpoint_that_left_frames_behind_is_followed_by_one_unasked() {
        let (nudge, nudges) = std::sync::mpsc::sync_channel(1);
        let (calls, called) = std::sync::mpsc::channel();
        let checkpointer = std::thread::spawn(move || {
            let mut answers = [(10, 4), (12, 12), (20, 20)].into_iter();
            checkpoint_when_asked(&nudges, Duration::from_millis(5), || {
                let answer = answers.next().unwrap();
                calls.send(answer).unwrap();
                Ok(answer)
            });
        });
        nudge.send(()).unwrap();
        let wait = Duration::from_secs(10);
        assert_eq!(called.recv_timeout(wait).unwrap(), (10, 4));
        // Six frames were left: copied without being asked.
        assert_eq!(called.recv_timeout(wait).unwrap(), (12, 12));
        // All copied: the next one only when asked.
        nudge.send(()).unwrap();
        assert_eq!(called.recv_timeout(wait).unwrap(), (20, 20));
        drop(nudge);
        checkpointer.join().unwrap();
        assert!(called.try_recv().is_err());
    }

    fn writer() -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = schema::open_writer(&dir.path().join("w.db")).unwrap();
        schema::migrate(&mut conn).unwrap();
        (
            dir,
            Writer::new(
                conn,
                Arc::default(),
                Arc::new(RecentRuns::new(crate::recent::DEFAULT_BYTES)),
            ),
        )
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
            .query_row(
                "SELECT SUM(last_index - first_index + 1) FROM event_blocks",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(events, 2);
    }

    #[test]
    fn the_cache_never_keeps_a_record_a_later_write_of_its_batch_changed() {
        let (_dir, mut writer) = writer();
        let a = new_run("a");
        let record = a.clone().into_record();
        let started = bgrun_core::Event::render(
            bgrun_core::Envelope {
                run_id: &record.run_id,
                session_id: &record.session_id,
                created_at: record.created_at,
            },
            0,
            "RunStarted",
            &Default::default(),
        );
        let (created, _) = oneshot::channel();
        let (appended, _) = oneshot::channel();
        // The create's record says no events; the append in the same batch stores one.
        writer.execute(&mut vec![
            Command::Create {
                run: Box::new(a),
                reply: created,
            },
            Command::Append {
                run_id: record.run_id.clone(),
                events: vec![started],
                reply: appended,
            },
        ]);
        assert_eq!(status_of(&writer, "a"), Some(("PENDING".into(), Some(0))));
        assert_eq!(writer.recent.get(&record.run_id), None);

        // A create alone is remembered as committed.
        let (created, _) = oneshot::channel();
        writer.execute(&mut vec![Command::Create {
            run: Box::new(new_run("b")),
            reply: created,
        }]);
        let b = writer.recent.get(&RunId::parse("b").unwrap()).unwrap();
        assert_eq!((b.status, b.last_event_index), (RunStatus::Pending, None));
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

    #[test]
    fn a_write_that_fails_after_changing_rows_breaks_the_batch() {
        let (_dir, writer) = writer();
        writer.statement("BEGIN IMMEDIATE").unwrap();
        let mut broken = None;
        let refused = guarded(&writer.conn, &mut broken, |_| -> StoreResult<()> {
            Err(StoreError::RunNotFound(RunId::parse("x").unwrap()))
        });
        assert!(matches!(refused, Err(StoreError::RunNotFound(_))));
        assert!(broken.is_none());
        let half_done = guarded(&writer.conn, &mut broken, |conn| -> StoreResult<()> {
            conn.execute("INSERT INTO cancel_intents VALUES ('x', 1)", [])
                .unwrap();
            Err(StoreError::backend("test", "failed halfway"))
        });
        assert!(matches!(half_done, Err(StoreError::Backend { .. })));
        assert!(matches!(broken, Some(Broken(why)) if why.contains("failed halfway")));
    }

    #[test]
    fn a_taken_run_id_does_not_free_an_expired_idempotency_key() {
        let (_dir, mut writer) = writer();
        let mut old = new_run("old");
        old.idempotency_key = Some("k".into());
        old.created_at = 1_000;
        let mut clash = new_run("old");
        clash.idempotency_key = Some("k".into());
        clash.created_at = 1_000 + IDEMPOTENCY_WINDOW_SECS;
        let (first, mut first_done) = oneshot::channel();
        let (second, mut second_done) = oneshot::channel();
        writer.execute(&mut vec![
            Command::Create {
                run: Box::new(old),
                reply: first,
            },
            Command::Create {
                run: Box::new(clash),
                reply: second,
            },
        ]);
        first_done.try_recv().unwrap().unwrap();
        assert!(matches!(
            second_done.try_recv().unwrap(),
            Err(StoreError::RunExists(_))
        ));
        let key: Option<String> = writer
            .conn
            .query_row(
                "SELECT idempotency_key FROM runs WHERE run_id = 'old'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(key.as_deref(), Some("k"));
    }

    #[test]
    fn stream_writes_in_one_batch_see_each_other() {
        use bgrun_core::stream::ProducerClaim;

        let (_dir, mut writer) = writer();
        let stream = NewStream {
            path: "s".into(),
            content_type: "text/plain".into(),
            expiry: None,
            closed: false,
            fork: None,
            messages: vec![bytes::Bytes::from_static(b"a")],
            now: 1,
        };
        let produced = |seq| StreamAppend {
            messages: vec![bytes::Bytes::from_static(b"b")],
            producer: Some(ProducerClaim {
                id: "p".into(),
                epoch: 0,
                seq,
            }),
            now: 2,
            ..StreamAppend::default()
        };
        let (create, mut created) = oneshot::channel();
        let (first, mut appended) = oneshot::channel();
        let (retry, mut retried) = oneshot::channel();
        let (delete, mut deleted) = oneshot::channel();
        let (again, mut created_again) = oneshot::channel();
        writer.execute(&mut vec![
            Command::CreateStream {
                stream: Box::new(stream.clone()),
                reply: create,
            },
            Command::AppendStream {
                path: "s".into(),
                append: Box::new(produced(0)),
                reply: first,
            },
            Command::AppendStream {
                path: "s".into(),
                append: Box::new(produced(0)),
                reply: retry,
            },
            Command::DeleteStream {
                path: "s".into(),
                only: None,
                expired_at: None,
                reply: delete,
            },
            Command::CreateStream {
                stream: Box::new(stream),
                reply: again,
            },
        ]);
        assert_eq!(writer.stats.batches.load(Ordering::Relaxed), 1);
        let CreateStreamOutcome::Created(first_stream) = created.try_recv().unwrap().unwrap()
        else {
            panic!("the first create did not create");
        };
        let two = bgrun_core::stream::StreamOffset::new(2);
        assert_eq!(
            appended.try_recv().unwrap().unwrap(),
            AppendOutcome::Appended {
                tail: two,
                closed: false
            }
        );
        assert_eq!(
            retried.try_recv().unwrap().unwrap(),
            AppendOutcome::Duplicate {
                tail: two,
                last_seq: 0,
                closed: false
            }
        );
        assert_eq!(
            deleted.try_recv().unwrap().unwrap(),
            DeleteStreamOutcome::Deleted
        );
        let CreateStreamOutcome::Created(second_stream) =
            created_again.try_recv().unwrap().unwrap()
        else {
            panic!("the path was not free again");
        };
        assert!(second_stream.id > first_stream.id);
        let rows: i64 = writer
            .conn
            .query_row(
                "SELECT COUNT(*) FROM stream_messages WHERE stream_id = ?1",
                [first_stream.id.get()],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(rows, 0);
    }

    /// A transition of a run the writer holds as it last committed it takes the record (and
    /// row id) from there; a second change of the run in the same batch reads the row the first
    /// left, and a run the cache let go is read.
    #[test]
    fn status_changes_of_held_runs_read_no_row_and_stay_exact() {
        let (_dir, mut writer) = writer();
        let (a, b) = (new_run("a"), new_run("b"));
        let mut ignored = Vec::new();
        let mut created = vec![];
        for run in [&a, &b] {
            let (reply, answer) = oneshot::channel();
            created.push(Command::CreateAndStart {
                run: Box::new(run.clone()),
                started: event(run, 0),
                lease: None,
                reply,
            });
            ignored.push(answer);
        }
        writer.execute(&mut created);
        assert!(writer.recent.get(&a.run_id).is_some());
        // `b` left the cache: its transition reads the row.
        writer.recent.forget([&b.run_id]);

        let transition = |run: &NewRun, from, to, index| {
            let (reply, answer) = oneshot::channel();
            let command = Command::Transition {
                run_id: run.run_id.clone(),
                transition: Box::new(Transition::new(from, to)),
                events: vec![event(run, index)],
                reply,
            };
            (command, answer)
        };
        let (pause_a, mut paused_a) = transition(&a, RunStatus::Running, RunStatus::Paused, 1);
        // Written against the record held before the batch, this would apply.
        let (end_a, mut ended_a) = transition(&a, RunStatus::Running, RunStatus::Completed, 2);
        let (resume_a, mut resumed_a) = transition(&a, RunStatus::Paused, RunStatus::Running, 2);
        let (end_b, mut ended_b) = transition(&b, RunStatus::Running, RunStatus::Completed, 1);
        writer.execute(&mut vec![pause_a, end_a, resume_a, end_b]);

        let applied = |outcome: StoreResult<TransitionOutcome>| match outcome.unwrap() {
            TransitionOutcome::Applied(run) => *run,
            other => panic!("not applied: {other:?}"),
        };
        let paused = applied(paused_a.try_recv().unwrap());
        assert_eq!(
            (paused.status, paused.last_event_index, &paused.input),
            (RunStatus::Paused, Some(1), &a.input)
        );
        assert_eq!(
            ended_a.try_recv().unwrap().unwrap(),
            TransitionOutcome::Conflict {
                actual: RunStatus::Paused
            }
        );
        let resumed = applied(resumed_a.try_recv().unwrap());
        assert_eq!(
            (resumed.status, resumed.last_event_index),
            (RunStatus::Running, Some(2))
        );
        let ended = applied(ended_b.try_recv().unwrap());
        assert_eq!(
            (ended.status, ended.last_event_index, &ended.session_id),
            (RunStatus::Completed, Some(1), &b.session_id)
        );
        assert_eq!(status_of(&writer, "a"), Some(("RUNNING".into(), Some(2))));
        assert_eq!(status_of(&writer, "b"), Some(("COMPLETED".into(), Some(1))));
        // The cache holds each run as its last write left it, row id included: a further
        // change by the cached record lands on the run's own row and log.
        assert_eq!(writer.recent.get(&a.run_id), Some(resumed));
        let (end_a, mut ended_a) = transition(&a, RunStatus::Running, RunStatus::Completed, 3);
        writer.execute(&mut vec![end_a]);
        assert_eq!(
            applied(ended_a.try_recv().unwrap()).status,
            RunStatus::Completed
        );
        assert_eq!(status_of(&writer, "a"), Some(("COMPLETED".into(), Some(3))));
        let blocks: Vec<(String, i64)> = writer
            .conn
            .prepare(
                "SELECT r.run_id, b.last_index FROM event_blocks b JOIN runs r ON r.seq = b.run_seq \
                 ORDER BY r.run_id, b.last_index",
            )
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let expected: Vec<(String, i64)> =
            [("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0), ("b", 1)]
                .iter()
                .map(|(id, index)| (id.to_string(), *index))
                .collect();
        assert_eq!(blocks, expected);
        drop(ignored);
    }
}
