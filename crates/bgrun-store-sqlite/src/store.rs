//! [`SqliteStore`]: the [`Store`] implementation.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bgrun_core::stream::{
    AppendOutcome, CreateStreamOutcome, DeleteStreamOutcome, Millis, NewStream, StreamAppend,
    StreamId, StreamInfo, StreamMessage, StreamOffset,
};
use bgrun_core::{
    async_trait, CreateAndStart, CreateOutcome, Event, Frames, LeaseGrant, NewRun, RunFilter,
    RunId, RunPage, RunRecord, Store, StoreError, StoreResult, Timestamp, Transition,
    TransitionOutcome, MAX_PAGE_SIZE,
};
use tokio::runtime::RuntimeFlavor;
use tokio::sync::{mpsc, oneshot};

use crate::reader::{self, Readers};
use crate::recent::{self, Lookup, RecentRuns};
use crate::streams;
use crate::writer::{self, Command, Reply, WriterStats};

/// A [`Store`] in one SQLite file.
///
/// Writes go to one writer thread that commits whatever is queued in one transaction (group
/// commit); reads run on a pool of read-only connections on tokio's blocking pool. No call
/// blocks an async runtime thread. The file is locked for the store's lifetime: a second store on
/// it, in this process or another, fails with [`StoreError::Locked`]. Dropping the store stops
/// the writer thread and releases the lock before `drop` returns.
///
/// A write whose future is dropped after it was queued still happens.
pub struct SqliteStore {
    path: PathBuf,
    commands: Option<mpsc::Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    readers: Arc<Readers>,
    stats: Arc<WriterStats>,
    recent: Arc<RecentRuns>,
}

/// How much the writer thread has done: `commands / batches` is the group-commit factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// Transactions the writer ran.
    pub batches: u64,
    /// Write commands it executed, across all batches.
    pub commands: u64,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("open", &self.commands.is_some())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, takes its lock (`<path>.lock`) and
    /// brings its schema up to date. The blocking work runs on the store's own writer thread.
    ///
    /// Fails with [`StoreError::Locked`] when another store holds the file.
    pub async fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        let path = path.as_ref().to_path_buf();
        let stats = Arc::new(WriterStats::default());
        let recent = Arc::new(RecentRuns::new(recent::DEFAULT_BYTES));
        let (commands, writer) =
            writer::spawn(path.clone(), Arc::clone(&stats), Arc::clone(&recent)).await?;
        Ok(Self {
            recent,
            readers: Arc::new(Readers::new(path.clone())),
            path,
            commands: Some(commands),
            writer: Some(writer),
            stats,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the writer thread has done so far.
    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            commands: self.stats.commands.load(Ordering::Relaxed),
        }
    }

    /// Finishes the queued writes, stops the writer thread and releases the lock, waiting on the
    /// blocking pool rather than on the caller's thread (which `drop` does).
    pub async fn close(mut self) -> StoreResult<()> {
        self.commands = None;
        if let Some(writer) = self.writer.take() {
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .map_err(|e| StoreError::backend("closing the store", e))?
                .map_err(|_| {
                    StoreError::backend("closing the store", "the writer thread panicked")
                })?;
        }
        Ok(())
    }

    async fn write<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> StoreResult<T> {
        let commands = self.commands.as_ref().ok_or(StoreError::Closed)?;
        let (reply, response) = oneshot::channel();
        commands
            .send(command(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        response.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once the queue is drained; joining it
        // means the lock is free when `drop` returns, so the file can be reopened at once.
        self.commands = None;
        if let Some(writer) = self.writer.take() {
            let join = move || writer.join();
            let joined = match tokio::runtime::Handle::try_current() {
                // Dropped on a runtime's worker: the wait for the queue to drain must not hold up
                // the tasks queued on that worker.
                Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(join)
                }
                _ => join(),
            };
            if joined.is_err() {
                tracing::error!(path = %self.path.display(), "the SQLite writer thread panicked");
            }
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_run(&self, run: NewRun) -> StoreResult<CreateOutcome> {
        self.write(|reply| Command::Create {
            run: Box::new(run),
            reply,
        })
        .await
    }

    async fn create_and_start_run(
        &self,
        run: NewRun,
        started: &Event,
    ) -> StoreResult<CreateAndStart> {
        self.write(|reply| Command::CreateAndStart {
            run: Box::new(run),
            started: started.clone(),
            lease: None,
            reply,
        })
        .await
    }

    async fn create_and_start_leased(
        &self,
        run: NewRun,
        started: &Event,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<CreateAndStart> {
        self.write(|reply| Command::CreateAndStart {
            run: Box::new(run),
            started: started.clone(),
            lease: Some((owner.to_owned(), ttl)),
            reply,
        })
        .await
    }

    async fn get_run(&self, run_id: &RunId) -> StoreResult<Option<RunRecord>> {
        match self.recent.lookup(run_id) {
            Lookup::Committed(run) => return Ok(Some(RunRecord::clone(&run))),
            // Its status is being written: what the batch commits is answered, not the row
            // as it was.
            Lookup::Changing(batch) => {
                self.recent.batch_ended(batch).await;
                if let Lookup::Committed(run) = self.recent.lookup(run_id) {
                    return Ok(Some(RunRecord::clone(&run)));
                }
            }
            Lookup::Unknown => {}
        }
        let run_id = run_id.clone();
        self.readers
            .with(move |conn| reader::get_run(conn, &run_id))
            .await
    }

    async fn list_runs(
        &self,
        filter: &RunFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<RunPage> {
        let filter = filter.clone();
        let limit = limit.clamp(1, MAX_PAGE_SIZE);
        let cursor = cursor.map(str::to_owned);
        self.readers
            .with(move |conn| reader::list_runs(conn, &filter, limit, cursor.as_deref()))
            .await
    }

    async fn append_events(&self, run_id: &RunId, events: &[Event]) -> StoreResult<()> {
        self.write(|reply| Command::Append {
            run_id: run_id.clone(),
            events: events.to_vec(),
            reply,
        })
        .await
    }

    async fn transition(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
    ) -> StoreResult<TransitionOutcome> {
        // Refused before it costs a trip to the writer.
        transition.from.check_transition(transition.to)?;
        self.write(|reply| Command::Transition {
            run_id: run_id.clone(),
            transition: Box::new(transition.clone()),
            events: events.to_vec(),
            reply,
        })
        .await
    }

    async fn read_events(
        &self,
        run_id: &RunId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let run_id = run_id.clone();
        self.readers
            .with(move |conn| reader::read_events(conn, &run_id, after, limit))
            .await
    }

    async fn read_event_frames(
        &self,
        run_id: &RunId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Option<Frames>> {
        let run_id = run_id.clone();
        self.readers
            .with(move |conn| reader::read_event_frames(conn, &run_id, after, limit))
            .await
            .map(Some)
    }

    async fn request_cancel(&self, run_id: &RunId, at: Timestamp) -> StoreResult<()> {
        self.write(|reply| Command::RequestCancel {
            run_id: run_id.clone(),
            at,
            reply,
        })
        .await
    }

    async fn cancel_requested(&self, run_id: &RunId) -> StoreResult<bool> {
        let run_id = run_id.clone();
        self.readers
            .with(move |conn| reader::cancel_requested(conn, &run_id))
            .await
    }

    async fn acquire_lease(
        &self,
        run_id: &RunId,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<LeaseGrant> {
        self.write(|reply| Command::AcquireLease {
            run_id: run_id.clone(),
            owner: owner.to_owned(),
            ttl,
            reply,
        })
        .await
    }

    async fn renew_leases(&self, owner: &str, ttl: Duration) -> StoreResult<u64> {
        self.write(|reply| Command::RenewLeases {
            owner: owner.to_owned(),
            ttl,
            reply,
        })
        .await
    }

    async fn release_lease(&self, run_id: &RunId, owner: &str) -> StoreResult<()> {
        self.write(|reply| Command::ReleaseLease {
            run_id: run_id.clone(),
            owner: owner.to_owned(),
            reply,
        })
        .await
    }

    async fn orphaned_runs(&self, limit: usize) -> StoreResult<Vec<RunRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.readers
            .with(move |conn| reader::orphaned_runs(conn, limit))
            .await
    }

    fn supports_streams(&self) -> bool {
        true
    }

    async fn create_stream(&self, stream: NewStream) -> StoreResult<CreateStreamOutcome> {
        self.write(|reply| Command::CreateStream {
            stream: Box::new(stream),
            reply,
        })
        .await
    }

    async fn stream_info(&self, path: &str) -> StoreResult<Option<StreamInfo>> {
        let path = path.to_owned();
        self.readers
            .with(move |conn| streams::info(conn, &path))
            .await
    }

    async fn append_stream(&self, path: &str, append: StreamAppend) -> StoreResult<AppendOutcome> {
        self.write(|reply| Command::AppendStream {
            path: path.to_owned(),
            append: Box::new(append),
            reply,
        })
        .await
    }

    async fn read_stream(
        &self,
        id: StreamId,
        after: StreamOffset,
        upto: Option<StreamOffset>,
        max_bytes: usize,
    ) -> StoreResult<Vec<StreamMessage>> {
        if upto.is_some_and(|upto| upto <= after) {
            // An empty range: no trip to a read connection.
            return Ok(Vec::new());
        }
        self.readers
            .with(move |conn| streams::read(conn, id, after, upto, max_bytes))
            .await
    }

    async fn delete_stream(
        &self,
        path: &str,
        only: Option<StreamId>,
    ) -> StoreResult<DeleteStreamOutcome> {
        self.write(|reply| Command::DeleteStream {
            path: path.to_owned(),
            only,
            expired_at: None,
            reply,
        })
        .await
    }

    async fn expire_stream(
        &self,
        path: &str,
        id: StreamId,
        now: Millis,
    ) -> StoreResult<DeleteStreamOutcome> {
        self.write(|reply| Command::DeleteStream {
            path: path.to_owned(),
            only: Some(id),
            expired_at: Some(now),
            reply,
        })
        .await
    }

    async fn touch_stream(&self, id: StreamId, now: Millis) -> StoreResult<()> {
        self.write(|reply| Command::TouchStream { id, now, reply })
            .await
    }

    async fn expired_streams(
        &self,
        now: Millis,
        limit: usize,
    ) -> StoreResult<Vec<(String, StreamId)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.readers
            .with(move |conn| streams::expired(conn, now, limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use bgrun_core::{Envelope, RunKind, RunStatus, RunTarget};

    use super::*;

    fn agent_run() -> NewRun {
        NewRun::new(RunTarget::new(RunKind::Agent, "echo"), "hi")
    }

    #[tokio::test]
    async fn a_second_open_is_locked_until_the_first_store_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bgrun.db");
        let first = SqliteStore::open(&path).await.unwrap();
        match SqliteStore::open(&path).await {
            Err(StoreError::Locked(message)) => {
                assert!(message.contains("bgrun.db"), "{message}")
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        // The first store still works after the failed open.
        let created = first.create_run(agent_run()).await.unwrap();
        drop(first);

        let second = SqliteStore::open(&path).await.unwrap();
        assert_eq!(
            second
                .get_run(&created.run().run_id)
                .await
                .unwrap()
                .as_ref(),
            Some(created.run())
        );
        second.close().await.unwrap();
        SqliteStore::open(&path).await.unwrap();
    }

    #[tokio::test]
    async fn reopening_keeps_runs_events_intents_and_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bgrun.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let run = store.create_run(agent_run()).await.unwrap().run().clone();
        let envelope = Envelope {
            run_id: &run.run_id,
            session_id: &run.session_id,
            created_at: run.created_at,
        };
        let events: Vec<Event> = (0..3)
            .map(|i| Event::render(envelope, i, "RunContent", &Default::default()))
            .collect();
        let mut start = Transition::new(RunStatus::Pending, RunStatus::Running);
        start.at = run.created_at + 1;
        assert!(store
            .transition(&run.run_id, &start, &events[..1])
            .await
            .unwrap()
            .applied());
        store
            .append_events(&run.run_id, &events[1..])
            .await
            .unwrap();
        let cancelled = RunId::parse("not-yet").unwrap();
        store.request_cancel(&cancelled, 5).await.unwrap();
        drop(store);

        let store = SqliteStore::open(&path).await.unwrap();
        let stored = store.get_run(&run.run_id).await.unwrap().unwrap();
        assert_eq!(stored.status, RunStatus::Running);
        assert_eq!(stored.last_event_index, Some(2));
        assert_eq!(
            store.read_events(&run.run_id, None, 10).await.unwrap(),
            events
        );
        assert_eq!(
            store.read_events(&run.run_id, Some(0), 1).await.unwrap(),
            events[1..2]
        );
        assert!(store.cancel_requested(&cancelled).await.unwrap());
        // The migration did not run again (it would fail on the existing tables).
        assert_eq!(store.write_stats(), WriteStats::default());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(dir.path().join("bgrun.db"))
                .await
                .unwrap(),
        );
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.create_run(agent_run()).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let stats = store.write_stats();
        assert_eq!(stats.commands, 200);
        assert!(stats.batches >= 1 && stats.batches <= 200);
        let page = store
            .list_runs(&RunFilter::default(), MAX_PAGE_SIZE, None)
            .await
            .unwrap();
        assert_eq!(page.runs.len(), 200);
        assert_eq!(page.next_cursor, None);
    }

    #[tokio::test]
    async fn pages_follow_cursors_and_foreign_cursors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("bgrun.db"))
            .await
            .unwrap();
        let mut ids = Vec::new();
        for created_at in [10, 30, 20, 20] {
            let mut run = agent_run();
            run.created_at = created_at;
            ids.push(store.create_run(run).await.unwrap().run().run_id.clone());
        }
        // Newest first by creation time, ties by insertion order (later first).
        let expected = [&ids[1], &ids[3], &ids[2], &ids[0]];
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list_runs(&RunFilter::default(), 3, cursor.as_deref())
                .await
                .unwrap();
            seen.extend(page.runs.into_iter().map(|run| run.run_id));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.iter().collect::<Vec<_>>(), expected);
        assert!(matches!(
            store
                .list_runs(&RunFilter::default(), 3, Some("garbage"))
                .await,
            Err(StoreError::InvalidCursor(_))
        ));
    }
}
