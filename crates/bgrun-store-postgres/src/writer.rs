//! The writers: cross-run group commit of the hot writes.
//!
//! `create_run`, `transition`, `append_events` (fenced or not), `acquire_lease` and
//! `release_lease` are sent as a [`Command`] to a writer task: creates to one of their own (so
//! that starting a run never waits behind the batches of runs executing), the others to one of
//! [`WRITERS`], chosen by the run id (so one run's writes are always executed in order by one
//! writer, and two writers never wait for each other's row locks on one run; a run's first
//! write after its create is only sent once the create is answered). A create made while no
//! other is open is executed in its caller's task instead, as the writer would have executed it
//! alone ([`Writers::create`]). A writer takes the first queued command and every
//! other one already queued (up to [`MAX_BATCH`]) and executes them on its pooled connection:
//! first the common-case commands as a few set-based statements in one transaction
//! ([`crate::bulk`]: one round trip whatever the batch's size), then the rest command by
//! command in another, each in a `SAVEPOINT` of its own (sent in the same round trip as the
//! command's first statement). It replies once a command's transaction committed (a caller
//! learns of success only once its write is durable, and many writes share one WAL flush) and
//! announces the stored events in one notification-only statement.
//!
//! A command that is refused (a lost compare-and-set, an index conflict, a taken run id, a
//! fenced write) is rolled back to its savepoint and fails alone. When the connection fails (or
//! the commit's outcome is unknown), every command of the batch is executed again in a later
//! batch as a retry ([`Attempt::is_retry`]): their write tokens and already-stored checks
//! recognise an earlier attempt that did commit, as they do for the single-call retries.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Weak;
use std::time::Duration;

use bgrun_core::{
    CreateAndStart, Event, LeaseGrant, NewRun, RunId, StoreError, StoreResult, Transition,
    TransitionOutcome,
};
use deadpool_postgres::Transaction;
use tokio::sync::{mpsc, oneshot};

use crate::fault::{Attempt, Failure};
use crate::store::Inner;
use crate::{bulk, events, lease, runs};

/// How many writer tasks for the writes after a run's create (each using one pooled connection
/// at a time); creates have one more of their own.
pub(crate) const WRITERS: usize = 4;

/// The most commands one transaction takes.
pub(crate) const MAX_BATCH: usize = 512;

/// How many commands may wait for one writer before senders wait too.
const QUEUE_CAPACITY: usize = 4096;

/// Sent at the start of every writer transaction: its statements find their rows by key.
///
/// A prepared statement's plan is cached on its connection, and PostgreSQL keeps a generic plan
/// made while a table was small until the table is next analyzed. Planned on a near-empty
/// `runs` (a new schema, the first minute of a deployment), the writers' statements scanned the
/// whole table for each batch, a cost that grew with every run stored: with `EXPLAIN ANALYZE`
/// (auto_explain) in bench P1, 4,534 of 4,554 transition statements scanned `runs`, 466 µs
/// median, against 114 µs for the index plans. With sequential scans priced out, every plan
/// these statements can get looks rows up by their index, whatever the table's size when it
/// was made. A macro, so that `concat!` joins it to the statements sent with it.
macro_rules! by_key {
    () => {
        "SET LOCAL enable_seqscan = off"
    };
}
pub(crate) use by_key;

type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// What `create_and_start_leased` asks of a create besides the run: start it with `event`
/// (index 0) as `transition` (`PENDING -> RUNNING`) and lease it to `owner` for `ttl`, unless a
/// cancel intent waits for it.
pub(crate) struct LeasedStart {
    pub(crate) event: Event,
    pub(crate) transition: Transition,
    pub(crate) owner: String,
    pub(crate) ttl: Duration,
}

/// A write, as callers send it to a writer.
pub(crate) enum Command {
    Create {
        run: Box<NewRun>,
        /// Also start and lease the run (`create_and_start_leased`).
        start: Option<Box<LeasedStart>>,
        token: String,
        reply: Reply<CreateAndStart>,
    },
    Append {
        run_id: RunId,
        events: Vec<Event>,
        fence: Option<String>,
        reply: Reply<()>,
    },
    Transition {
        run_id: RunId,
        transition: Box<Transition>,
        events: Vec<Event>,
        /// The lease owner the write is fenced by.
        fence: Option<String>,
        /// Take the run's lease for `fence` (lasting this long) first.
        lease: Option<Duration>,
        /// Drop `fence`'s lease once the transition is applied.
        release: bool,
        token: String,
        reply: Reply<TransitionOutcome>,
    },
    AcquireLease {
        run_id: RunId,
        owner: String,
        ttl: Duration,
        reply: Reply<LeaseGrant>,
    },
    ReleaseLease {
        run_id: RunId,
        owner: String,
        reply: Reply<()>,
    },
}

/// What a command produced, held until the batch commits.
pub(crate) enum Output {
    Created(Box<CreateAndStart>),
    Unit,
    Transitioned(TransitionOutcome),
    Lease(LeaseGrant),
}

fn send<T>(reply: Reply<T>, result: StoreResult<T>) {
    // The caller may have gone away (its future dropped); the write stands regardless.
    let _ = reply.send(result);
}

fn unexpected() -> StoreError {
    StoreError::backend(
        "executing a batch of writes",
        "a command produced another's output",
    )
}

impl Command {
    /// The run the command writes.
    pub(crate) fn run_id(&self) -> &RunId {
        match self {
            Self::Create { run, .. } => &run.run_id,
            Self::Append { run_id, .. }
            | Self::Transition { run_id, .. }
            | Self::AcquireLease { run_id, .. }
            | Self::ReleaseLease { run_id, .. } => run_id,
        }
    }

    fn context(&self) -> &'static str {
        match self {
            Self::Create { .. } => "creating a run",
            Self::Append { .. } => "appending events",
            Self::Transition { .. } => "changing a run's status",
            Self::AcquireLease { .. } => "acquiring a lease",
            Self::ReleaseLease { .. } => "releasing a lease",
        }
    }

    async fn execute(
        &self,
        inner: &Inner,
        tx: &Transaction<'_>,
        attempt: Attempt,
    ) -> Result<Output, Failure> {
        match self {
            Self::Create {
                run, start, token, ..
            } => runs::create_and_start_in(inner, tx, run, start.as_deref(), token, attempt)
                .await
                .map(|outcome| Output::Created(Box::new(outcome))),
            Self::Append {
                run_id,
                events,
                fence,
                ..
            } => events::append_in(inner, tx, run_id, events, fence.as_deref(), attempt)
                .await
                .map(|()| Output::Unit),
            Self::Transition {
                run_id,
                transition,
                events,
                fence,
                lease,
                release,
                token,
                ..
            } => {
                if let (Some(ttl), Some(owner)) = (lease, fence) {
                    if let LeaseGrant::HeldBy(_) =
                        lease::acquire_in(inner, tx, run_id, owner, *ttl).await?
                    {
                        return Err(StoreError::Fenced {
                            run_id: run_id.clone(),
                            owner: owner.clone(),
                        }
                        .into());
                    }
                }
                let outcome = runs::transition_in(
                    inner,
                    tx,
                    run_id,
                    transition,
                    events,
                    fence.as_deref(),
                    token,
                    attempt,
                )
                .await?;
                if let (true, Some(owner), TransitionOutcome::Applied(_)) =
                    (release, fence, &outcome)
                {
                    lease::release_in(inner, tx, run_id, owner).await?;
                }
                Ok(Output::Transitioned(outcome))
            }
            Self::AcquireLease {
                run_id, owner, ttl, ..
            } => lease::acquire_in(inner, tx, run_id, owner, *ttl)
                .await
                .map(Output::Lease),
            Self::ReleaseLease { run_id, owner, .. } => lease::release_in(inner, tx, run_id, owner)
                .await
                .map(|()| Output::Unit),
        }
    }

    /// The run and last event index a committed output stored, to announce.
    pub(crate) fn stored(&self, output: &Output) -> Option<(RunId, u64)> {
        match (self, output) {
            // A create that started its run stored event 0 in the write that made the run
            // visible: nobody can follow the run before it, and a follower reads the table
            // before it waits for notifications. Nothing to announce.
            (Self::Create { .. }, _) => None,
            (Self::Append { run_id, events, .. }, Output::Unit) => {
                Some((run_id.clone(), events.last()?.index()))
            }
            (
                Self::Transition { run_id, events, .. },
                Output::Transitioned(TransitionOutcome::Applied(_)),
            ) => Some((run_id.clone(), events.last()?.index())),
            _ => None,
        }
    }

    pub(crate) fn reply(self, result: StoreResult<Output>) {
        match self {
            Self::Create { reply, .. } => send(
                reply,
                result.and_then(|output| match output {
                    Output::Created(outcome) => Ok(*outcome),
                    _ => Err(unexpected()),
                }),
            ),
            Self::Append { reply, .. } | Self::ReleaseLease { reply, .. } => send(
                reply,
                result.and_then(|output| match output {
                    Output::Unit => Ok(()),
                    _ => Err(unexpected()),
                }),
            ),
            Self::Transition { reply, .. } => send(
                reply,
                result.and_then(|output| match output {
                    Output::Transitioned(outcome) => Ok(outcome),
                    _ => Err(unexpected()),
                }),
            ),
            Self::AcquireLease { reply, .. } => send(
                reply,
                result.and_then(|output| match output {
                    Output::Lease(grant) => Ok(grant),
                    _ => Err(unexpected()),
                }),
            ),
        }
    }
}

/// A command and how many times it has been attempted.
pub(crate) struct Queued {
    pub(crate) command: Command,
    pub(crate) attempt: u32,
}

/// The senders to the writer tasks; the tasks stop once these are dropped.
pub(crate) struct Writers {
    senders: Vec<mpsc::Sender<Queued>>,
    creates: mpsc::Sender<Queued>,
    /// Creates submitted and not yet answered, wherever they execute.
    open_creates: AtomicUsize,
}

/// A create counted in [`Writers::open_creates`] until dropped (answered, or its caller gone).
struct OpenCreate<'a>(&'a AtomicUsize);

impl<'a> OpenCreate<'a> {
    /// Counts one more open create; also says whether it is the only one.
    fn enter(open: &'a AtomicUsize) -> (Self, bool) {
        let before = open.fetch_add(1, Ordering::AcqRel);
        (Self(open), before == 0)
    }
}

impl Drop for OpenCreate<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Writers {
    /// Starts the writer tasks. They hold `inner` weakly: the store's last clone going away
    /// drops the senders, which stops them.
    pub(crate) fn spawn(inner: &Weak<Inner>) -> Self {
        let writer = || {
            let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
            tokio::spawn(serve(inner.clone(), receiver));
            sender
        };
        Self {
            senders: (0..WRITERS).map(|_| writer()).collect(),
            creates: writer(),
            open_creates: AtomicUsize::new(0),
        }
    }

    /// Creates a run: in the caller's task when no other create is open (the creates
    /// writer's batch would hold this one alone, and two hand-offs between tasks are spared),
    /// else by the creates writer, batched with the others. What the caller's attempt leaves to
    /// retry goes to the writer.
    pub(crate) async fn create(
        &self,
        inner: &Inner,
        run: Box<NewRun>,
        start: Option<Box<LeasedStart>>,
        token: String,
    ) -> StoreResult<CreateAndStart> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            command: Command::Create {
                run,
                start,
                token,
                reply,
            },
            attempt: 0,
        };
        let (_open, alone) = OpenCreate::enter(&self.open_creates);
        if alone {
            // Dropping this future part-way is safe: statements already sent complete on the
            // connection (which returns to the pool in order), and a transaction not committed
            // is rolled back when dropped.
            for queued in run_batch(inner, vec![queued]).await {
                tokio::time::sleep(retry_delay(inner, queued.attempt)).await;
                self.creates
                    .send(queued)
                    .await
                    .map_err(|_| StoreError::Closed)?;
            }
        } else {
            self.creates
                .send(queued)
                .await
                .map_err(|_| StoreError::Closed)?;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Sends the command that `make` builds around its reply to the run's writer, and waits
    /// for the reply (which comes once the command's batch committed). Creates go through
    /// [`Writers::create`].
    pub(crate) async fn submit<T>(
        &self,
        run_id: &RunId,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> StoreResult<T> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            command: make(reply),
            attempt: 0,
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        run_id.as_str().hash(&mut hasher);
        let writer = &self.senders[(hasher.finish() % self.senders.len() as u64) as usize];
        writer.send(queued).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// One writer task: batches until every sender is gone.
async fn serve(inner: Weak<Inner>, mut receiver: mpsc::Receiver<Queued>) {
    let mut batch: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
    loop {
        if batch.is_empty() {
            match receiver.recv().await {
                Some(queued) => batch.push(queued),
                None => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(queued) => batch.push(queued),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else {
            for queued in batch.drain(..) {
                queued.command.reply(Err(StoreError::Closed));
            }
            return;
        };
        let again = run_batch(&inner, std::mem::take(&mut batch)).await;
        if let Some(attempt) = again.iter().map(|queued| queued.attempt).max() {
            let delay = retry_delay(&inner, attempt);
            drop(inner);
            tokio::time::sleep(delay).await;
        }
        batch = again;
    }
}

/// How long to wait before the `attempt`th attempt of a write.
fn retry_delay(inner: &Inner, attempt: u32) -> Duration {
    inner
        .retry
        .base_delay
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(Duration::from_secs(1))
}

/// `queued` failed transiently: back in the queue as a retry, or answered if out of retries.
fn retry_or_fail(inner: &Inner, mut queued: Queued, failure: Failure, again: &mut Vec<Queued>) {
    if failure.is_transient() && queued.attempt < inner.retry.max_retries {
        tracing::debug!(
            context = queued.command.context(),
            attempt = queued.attempt,
            error = ?failure,
            "PostgreSQL write failed on a connection error; retrying"
        );
        queued.attempt += 1;
        again.push(queued);
    } else {
        let context = queued.command.context();
        queued.command.reply(Err(failure.into_store_error(context)));
    }
}

/// Executes and commits one batch; replies to what is settled and returns what is to be retried.
///
/// Its common-case commands first, as set-based statements ([`bulk`]); what those did not
/// settle then command by command.
async fn run_batch(inner: &Inner, mut batch: Vec<Queued>) -> Vec<Queued> {
    // In run id order (a stable sort keeps one run's commands in theirs): every statement then
    // locks rows in that order, as the lease renewal does, so no two transactions wait for each
    // other in a cycle.
    batch.sort_by(|a, b| a.command.run_id().as_str().cmp(b.command.run_id().as_str()));
    let (fast, mut slow) = bulk::split(batch);
    let mut again = Vec::new();
    if !fast.is_empty() {
        match inner.pool.get().await {
            Ok(client) => match bulk::execute(inner, &client, fast).await {
                Ok(bulk::Executed { applied, declined }) => {
                    let stored: Vec<(RunId, u64)> = applied
                        .iter()
                        .filter_map(|(queued, output)| queued.command.stored(output))
                        .collect();
                    for (queued, output) in applied {
                        remember_finished(inner, &output);
                        queued.command.reply(Ok(output));
                    }
                    // After the replies: listeners elsewhere need not hold up the writers here.
                    events::announce(inner, &client, &stored).await;
                    slow.extend(declined);
                }
                Err(bulk::Refused::Rolledback(commands)) => slow.extend(commands),
                Err(bulk::Refused::Unknown(commands, failure)) => {
                    for queued in commands {
                        retry_or_fail(inner, queued, failure.batch(), &mut again);
                    }
                }
            },
            // The command-by-command path meets the same failure and retries.
            Err(_) => slow.extend(fast),
        }
    }
    if !slow.is_empty() {
        again.extend(run_commands(inner, slow).await);
    }
    again
}

/// Keeps the run a committed transition ended (see [`crate::finished`]), before its caller
/// learns of it.
fn remember_finished(inner: &Inner, output: &Output) {
    if let Output::Transitioned(TransitionOutcome::Applied(run)) = output {
        inner.finished.remember(run);
    }
}

/// Executes `batch` command by command, each in a savepoint, in one transaction.
async fn run_commands(inner: &Inner, batch: Vec<Queued>) -> Vec<Queued> {
    let mut again = Vec::new();
    let mut client = match inner.pool.get().await {
        Ok(client) => client,
        Err(error) => {
            let failure = Failure::Pool(error);
            for queued in batch {
                retry_or_fail(inner, queued, Failure::batch(&failure), &mut again);
            }
            return again;
        }
    };
    let mut executed: Vec<(Queued, Result<Output, Failure>)> = Vec::with_capacity(batch.len());
    let mut broken: Option<Failure> = None;
    {
        let tx = match client.transaction().await {
            Ok(tx) => tx,
            Err(error) => {
                let failure = Failure::Db(error);
                for queued in batch {
                    retry_or_fail(inner, queued, Failure::batch(&failure), &mut again);
                }
                return again;
            }
        };
        let mut pending = batch.into_iter();
        // The previous command's savepoint is released (kept, if it was rolled back to) as the
        // next one is taken, so they do not nest.
        let mut savepoint_sql = concat!(by_key!(), "; SAVEPOINT command");
        for queued in pending.by_ref() {
            // One round trip: the savepoint is sent before the command's first statement.
            let (savepoint, result) = futures::join!(
                tx.batch_execute(savepoint_sql),
                queued
                    .command
                    .execute(inner, &tx, Attempt::new(queued.attempt))
            );
            let result = match (savepoint, result) {
                (Ok(()), result) => result,
                (Err(error), _) => Err(Failure::Db(error)),
            };
            if result.is_err() {
                if let Err(error) = tx.batch_execute("ROLLBACK TO SAVEPOINT command").await {
                    // The transaction (or the connection) is gone: nothing of it commits.
                    broken = Some(Failure::Db(error));
                    executed.push((queued, result));
                    break;
                }
            }
            executed.push((queued, result));
            savepoint_sql = "RELEASE SAVEPOINT command; SAVEPOINT command";
        }
        let rest: Vec<Queued> = pending.collect();
        if broken.is_none() {
            if let Err(error) = tx.commit().await {
                broken = Some(Failure::Db(error));
            }
        }
        if let Some(failure) = &broken {
            // The outcome of every command is unknown: all of them again, as retries.
            for (queued, _) in executed.drain(..) {
                retry_or_fail(inner, queued, Failure::batch(failure), &mut again);
            }
            again.extend(rest);
            return again;
        }
    }
    let stored: Vec<(RunId, u64)> = executed
        .iter()
        .filter_map(|(queued, result)| queued.command.stored(result.as_ref().ok()?))
        .collect();
    events::announce(inner, &client, &stored).await;
    drop(client);
    for (queued, result) in executed {
        match result {
            Ok(output) => {
                remember_finished(inner, &output);
                queued.command.reply(Ok(output));
            }
            Err(failure) => retry_or_fail(inner, queued, failure, &mut again),
        }
    }
    again
}
