//! The runs as the writer last committed them, so that `get_run` needs no read.
//!
//! The store is its file's only writer (the file lock), and every write that changes a run's
//! record goes through the writer thread, so a record the writer committed stays true until the
//! writer changes that run again. The writer keeps this cache exact:
//!
//! - before a batch runs, it forgets every run the batch may change. The runs whose status it
//!   changes (and that it does not append to) are marked as changing: `get_run` of such a run
//!   waits for the batch to end ([`RecentRuns::batch_ended`]) and answers what it committed, a
//!   poll in the middle of a run's last write learning that the run ended rather than reading
//!   its row as it was. The others are read from the database until the commit (whatever is
//!   read there is true at the time it is read);
//! - after the commit, and before it replies, it remembers the records the batch's creates and
//!   status changes produced, except for runs the batch also appends to (the record a command
//!   returned may then be older than the row), and ends the batch. An append forgets its run
//!   until a later batch changes its status.
//!
//! The writer also takes the records of the runs whose status a batch changes as it forgets
//! them, with their row ids ([`Known`]): a status change of a run held here needs no read of its
//! row.
//!
//! A failed batch leaves its runs forgotten; a writer that stops ends every batch. The cache
//! holds at most [`RecentRuns::new`]'s bytes (an estimate of each record's size), oldest
//! remembered first out; a record larger than [`MAX_RECORD_BYTES`] is not kept.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bgrun_core::{RunId, RunRecord};
use tokio::sync::watch;

/// The default bound of the cache: the estimated bytes of the records it holds.
pub(crate) const DEFAULT_BYTES: usize = 16 << 20;

/// A record estimated larger than this is read from the database instead.
pub(crate) const MAX_RECORD_BYTES: usize = 16 << 10;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct RecentRuns {
    max_bytes: usize,
    inner: Mutex<Inner>,
    /// The number of the last batch that ended (`u64::MAX` once the writer stopped).
    ended: watch::Sender<u64>,
}

/// A run as the writer last committed it, and its row id (`seq`).
#[derive(Debug, Clone)]
pub(crate) struct Known {
    pub(crate) seq: i64,
    pub(crate) run: Arc<RunRecord>,
}

/// What the cache knows of a run.
#[derive(Debug, PartialEq)]
pub(crate) enum Lookup {
    /// The run as last committed.
    Committed(Arc<RunRecord>),
    /// The batch with this number is changing the run's status: look again once it ended.
    Changing(u64),
    /// Not held: read the database.
    Unknown,
}

#[derive(Debug, Default)]
struct Inner {
    runs: HashMap<RunId, Entry>,
    /// The runs whose status the batch in progress changes, and that batch's number.
    changing: HashSet<RunId>,
    batch: u64,
    /// The order records were remembered in, by their generation; an id whose entry has a
    /// newer generation (or none) is stale and skipped.
    order: VecDeque<(u64, RunId)>,
    next_generation: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    bytes: usize,
    known: Known,
}

impl RecentRuns {
    /// An empty cache holding at most `max_bytes` of records.
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new(Inner::default()),
            ended: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves no half-made change: each change is complete
        // before the next statement.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The run as last committed, if it is held.
    #[cfg(test)]
    pub(crate) fn get(&self, run_id: &RunId) -> Option<RunRecord> {
        match self.lookup(run_id) {
            Lookup::Committed(run) => Some(RunRecord::clone(&run)),
            Lookup::Changing(_) | Lookup::Unknown => None,
        }
    }

    /// What it knows of the run.
    pub(crate) fn lookup(&self, run_id: &RunId) -> Lookup {
        let inner = self.lock();
        if let Some(entry) = inner.runs.get(run_id) {
            Lookup::Committed(Arc::clone(&entry.known.run))
        } else if inner.changing.contains(run_id) {
            Lookup::Changing(inner.batch)
        } else {
            Lookup::Unknown
        }
    }

    /// Waits until the batch numbered `batch` ended (or the writer stopped).
    pub(crate) async fn batch_ended(&self, batch: u64) {
        let mut ended = self.ended.subscribe();
        // An error: the sender is gone with the store, and nothing waits any longer.
        let _ = ended.wait_for(|ended| *ended >= batch).await;
    }

    /// Starts batch number `batch` (each larger than the last), which changes the status of
    /// `changing`: they are forgotten and marked as changing until [`end_batch`](Self::end_batch).
    /// The records it held of them go to `taken`, for the batch's writes.
    pub(crate) fn begin_batch<'a>(
        &self,
        batch: u64,
        changing: impl IntoIterator<Item = &'a RunId>,
        taken: &mut HashMap<RunId, Known>,
    ) {
        let mut inner = self.lock();
        inner.batch = batch;
        for run_id in changing {
            if let Some(entry) = inner.runs.remove(run_id) {
                inner.bytes -= entry.bytes;
                taken.insert(run_id.clone(), entry.known);
            }
            inner.changing.insert(run_id.clone());
        }
    }

    /// Ends the batch in progress: remembers the records it committed (none if it failed),
    /// and wakes whoever waits for it.
    pub(crate) fn end_batch(&self, committed: impl IntoIterator<Item = (i64, RunRecord)>) {
        let batch = {
            let mut inner = self.lock();
            inner.changing.clear();
            self.remember_locked(&mut inner, committed);
            inner.batch
        };
        self.ended.send_replace(batch);
    }

    /// The writer stopped: nothing changes any more, and no one waits.
    pub(crate) fn writer_stopped(&self) {
        self.lock().changing.clear();
        self.ended.send_replace(u64::MAX);
    }

    /// Forgets runs about to change.
    pub(crate) fn forget<'a>(&self, run_ids: impl IntoIterator<Item = &'a RunId>) {
        let mut run_ids = run_ids.into_iter().peekable();
        if run_ids.peek().is_none() {
            return;
        }
        let mut inner = self.lock();
        for run_id in run_ids {
            if let Some(entry) = inner.runs.remove(run_id) {
                inner.bytes -= entry.bytes;
            }
        }
    }

    /// Remembers committed records, evicting the oldest past the bound.
    #[cfg(test)]
    fn remember(&self, runs: impl IntoIterator<Item = RunRecord>) {
        self.remember_locked(&mut self.lock(), runs.into_iter().map(|run| (0, run)));
    }

    fn remember_locked(&self, inner: &mut Inner, runs: impl IntoIterator<Item = (i64, RunRecord)>) {
        for (seq, run) in runs {
            let bytes = run.estimated_bytes();
            if bytes > MAX_RECORD_BYTES || bytes > self.max_bytes {
                if let Some(entry) = inner.runs.remove(&run.run_id) {
                    inner.bytes -= entry.bytes;
                }
                continue;
            }
            let generation = inner.next_generation;
            inner.next_generation += 1;
            inner.order.push_back((generation, run.run_id.clone()));
            let entry = Entry {
                generation,
                bytes,
                known: Known {
                    seq,
                    run: Arc::new(run),
                },
            };
            if let Some(old) = inner.runs.insert(entry.known.run.run_id.clone(), entry) {
                inner.bytes -= old.bytes;
            }
            inner.bytes += bytes;
        }
        inner.evict(self.max_bytes);
    }

    /// How many records it holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().runs.len()
    }
}

impl Inner {
    fn evict(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            let Some((generation, run_id)) = self.order.pop_front() else {
                break;
            };
            if self
                .runs
                .get(&run_id)
                .is_some_and(|entry| entry.generation == generation)
            {
                if let Some(entry) = self.runs.remove(&run_id) {
                    self.bytes -= entry.bytes;
                }
            }
        }
        // Forgotten and re-remembered runs leave stale ids behind; drop them before they
        // outnumber the live ones.
        if self.order.len() > 2 * self.runs.len() + 1024 {
            let runs = &self.runs;
            self.order.retain(|(generation, run_id)| {
                runs.get(run_id)
                    .is_some_and(|entry| entry.generation == *generation)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bgrun_core::{NewRun, RunKind, RunStatus, RunTarget};

    use super::*;

    fn run(input: &str) -> RunRecord {
        NewRun::new(RunTarget::new(RunKind::Agent, "echo"), input).into_record()
    }

    #[test]
    fn a_remembered_run_is_given_until_forgotten() {
        let recent = RecentRuns::new(DEFAULT_BYTES);
        let mut record = run("hi");
        recent.remember([record.clone()]);
        assert_eq!(recent.get(&record.run_id), Some(record.clone()));

        record.status = RunStatus::Running;
        recent.remember([record.clone()]);
        assert_eq!(
            recent.get(&record.run_id).unwrap().status,
            RunStatus::Running
        );

        recent.forget([&record.run_id]);
        assert_eq!(recent.get(&record.run_id), None);
        assert_eq!(recent.lock().bytes, 0);
    }

    fn is_pending(future: std::pin::Pin<&mut impl std::future::Future>) -> bool {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        future.poll(&mut context).is_pending()
    }

    #[test]
    fn a_run_whose_status_a_batch_changes_is_answered_once_the_batch_ends() {
        let recent = RecentRuns::new(DEFAULT_BYTES);
        let (mut record, other) = (run("hi"), run("other"));
        recent.remember([record.clone(), other.clone()]);

        let mut taken = HashMap::new();
        recent.begin_batch(1, [&record.run_id], &mut taken);
        assert_eq!(recent.lookup(&record.run_id), Lookup::Changing(1));
        // The batch's writes have the record it held.
        assert_eq!(*taken[&record.run_id].run, record);
        assert_eq!(taken.len(), 1);
        assert_eq!(
            recent.lookup(&other.run_id),
            Lookup::Committed(Arc::new(other.clone()))
        );
        let waiting = recent.batch_ended(1);
        tokio::pin!(waiting);
        assert!(is_pending(waiting.as_mut()));

        record.status = RunStatus::Completed;
        recent.end_batch([(7, record.clone())]);
        assert!(!is_pending(waiting.as_mut()));
        assert_eq!(
            recent.lookup(&record.run_id),
            Lookup::Committed(Arc::new(record.clone()))
        );

        // A failed batch leaves its runs to the database.
        taken.clear();
        recent.begin_batch(2, [&record.run_id], &mut taken);
        assert_eq!(taken[&record.run_id].seq, 7);
        recent.end_batch([]);
        assert_eq!(recent.lookup(&record.run_id), Lookup::Unknown);
        let ended = recent.batch_ended(2);
        tokio::pin!(ended);
        assert!(!is_pending(ended.as_mut()));
    }

    #[test]
    fn no_one_waits_once_the_writer_stopped() {
        let recent = RecentRuns::new(DEFAULT_BYTES);
        let record = run("hi");
        recent.begin_batch(1, [&record.run_id], &mut HashMap::new());
        let waiting = recent.batch_ended(1);
        tokio::pin!(waiting);
        assert!(is_pending(waiting.as_mut()));
        recent.writer_stopped();
        assert!(!is_pending(waiting.as_mut()));
        assert_eq!(recent.lookup(&record.run_id), Lookup::Unknown);
    }

    #[test]
    fn the_oldest_runs_go_first_past_the_bound() {
        let one = run("x").estimated_bytes();
        let recent = RecentRuns::new(4 * one);
        let runs: Vec<RunRecord> = (0..5).map(|_| run("x")).collect();
        // The first run remembered again (a status change) is younger than the second.
        recent.remember([runs[0].clone(), runs[1].clone()]);
        recent.remember([runs[0].clone()]);
        recent.remember(runs[2..].iter().cloned());
        assert_eq!(recent.len(), 4);
        assert!(recent.lock().bytes <= 4 * one);
        for (position, run) in runs.iter().enumerate() {
            let held = recent.get(&run.run_id).is_some();
            assert_eq!(held, position != 1, "run {position}");
        }
    }

    #[test]
    fn a_large_record_is_not_kept_and_its_older_version_goes() {
        let recent = RecentRuns::new(DEFAULT_BYTES);
        let mut record = run("hi");
        recent.remember([record.clone()]);
        record.content = Some("x".repeat(MAX_RECORD_BYTES));
        recent.remember([record.clone()]);
        assert_eq!(recent.get(&record.run_id), None);
        assert_eq!(recent.lock().bytes, 0);
    }

    #[test]
    fn stale_order_entries_do_not_accumulate() {
        let recent = RecentRuns::new(DEFAULT_BYTES);
        let record = run("hi");
        for _ in 0..10_000 {
            recent.remember([record.clone()]);
            recent.forget([&record.run_id]);
            recent.remember([record.clone()]);
        }
        let inner = recent.lock();
        assert_eq!(inner.runs.len(), 1);
        assert!(inner.order.len() <= 2 + 1024, "{}", inner.order.len());
    }
}
