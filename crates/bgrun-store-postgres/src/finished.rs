//! Finished runs kept in memory, so that `get_run` of one needs no query.
//!
//! A terminal run never changes again (terminal states have no exit, a terminal run takes no
//! events, and no run is deleted), so a record read or written once it is terminal stays true
//! whichever replica wrote it: the cache needs no invalidation, across replicas too. It is
//! filled by this store's own terminal transitions and by reads that find a run terminal, and
//! holds at most [`MAX_BYTES`] of records (estimated), the least useful leaving first; a record
//! larger than [`MAX_RECORD_BYTES`] is not kept.

use std::sync::Arc;

use bgrun_core::{RunId, RunRecord};
use quick_cache::sync::Cache;
use quick_cache::Weighter;

/// The bound of the cache: the estimated bytes of the records it holds.
pub(crate) const MAX_BYTES: u64 = 16 << 20;

/// A record estimated larger than this is read from the database each time.
pub(crate) const MAX_RECORD_BYTES: usize = 16 << 10;

/// A typical finished record's estimated size, to size the cache's table.
const TYPICAL_RECORD_BYTES: u64 = 1024;

/// See the module documentation.
pub(crate) struct FinishedRuns {
    runs: Cache<RunId, Finished, ByBytes>,
}

/// A finished run and its estimated size (the cache's weight of it, computed once).
#[derive(Clone)]
struct Finished {
    run: Arc<RunRecord>,
    bytes: u64,
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<RunId, Finished> for ByBytes {
    fn weight(&self, _: &RunId, finished: &Finished) -> u64 {
        finished.bytes
    }
}

impl FinishedRuns {
    /// An empty cache holding at most `max_bytes` of records.
    pub(crate) fn new(max_bytes: u64) -> Self {
        let items = usize::try_from(max_bytes / TYPICAL_RECORD_BYTES)
            .unwrap_or(usize::MAX)
            .max(1);
        Self {
            runs: Cache::with_weighter(items, max_bytes, ByBytes),
        }
    }

    /// The run, if it is held (and so finished).
    pub(crate) fn get(&self, run_id: &RunId) -> Option<RunRecord> {
        self.runs
            .get(run_id)
            .map(|finished| RunRecord::clone(&finished.run))
    }

    /// Keeps `run` if it is finished (and small enough).
    pub(crate) fn remember(&self, run: &RunRecord) {
        if !run.has_completed() {
            return;
        }
        let bytes = run.estimated_bytes();
        if bytes > MAX_RECORD_BYTES {
            return;
        }
        self.runs.insert(
            run.run_id.clone(),
            Finished {
                run: Arc::new(run.clone()),
                bytes: bytes as u64,
            },
        );
    }
}

impl std::fmt::Debug for FinishedRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinishedRuns")
            .field("runs", &self.runs.len())
            .field("bytes", &self.runs.weight())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bgrun_core::{NewRun, RunKind, RunStatus, RunTarget};

    use super::*;

    fn run(status: RunStatus) -> RunRecord {
        let mut run = NewRun::new(RunTarget::new(RunKind::Agent, "echo"), "hi").into_record();
        run.status = status;
        run
    }

    #[test]
    fn only_finished_runs_of_a_bounded_size_are_kept() {
        let finished = FinishedRuns::new(MAX_BYTES);
        let completed = run(RunStatus::Completed);
        let running = run(RunStatus::Running);
        let mut large = run(RunStatus::Error);
        large.error = Some("x".repeat(MAX_RECORD_BYTES));
        for run in [&completed, &running, &large] {
            finished.remember(run);
        }
        assert_eq!(finished.get(&completed.run_id), Some(completed));
        assert_eq!(finished.get(&running.run_id), None);
        assert_eq!(finished.get(&large.run_id), None);
    }

    #[test]
    fn it_holds_no_more_than_its_bound() {
        let one = run(RunStatus::Completed).estimated_bytes() as u64;
        let finished = FinishedRuns::new(100 * one);
        let runs: Vec<RunRecord> = (0..1000).map(|_| run(RunStatus::Cancelled)).collect();
        for run in &runs {
            finished.remember(run);
        }
        let held = runs
            .iter()
            .filter(|run| finished.get(&run.run_id).is_some())
            .count();
        assert!(held > 0 && held <= 100, "{held} held");
        assert!(finished.runs.weight() <= 100 * one);
    }
}
