//! The runs an engine executes or queues, by id, and the cancels that came before their run.
//!
//! A start reads the run's cancel intents as it creates the run, and launches it afterwards. A
//! cancel recorded between the two is not in what the start read, and may look for the run here
//! before it is launched: it is then kept, and the launch finds it. Both happen under one lock,
//! so either the cancel sees the run or the launch sees the cancel.
//!
//! A run stored and started in one write (`Store::create_and_start_run`, or
//! `create_and_start_leased` with its lease) is `RUNNING` in the store before its launch holds
//! it here: it is marked starting from before that write until its launch, so that the sweep
//! of runs left `RUNNING` leaves it alone.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bgrun_core::RunId;

use crate::active::ActiveRun;

/// How many cancels of runs not held here are kept. One is needed only between a run's create
/// and its launch moments later; a bound keeps cancels of runs executed elsewhere (which every
/// replica hears of) from piling up.
const EARLY_CANCELS_KEPT: usize = 4096;

/// The runs held here, and the cancels that found their run not held (yet).
#[derive(Debug, Default)]
pub(crate) struct ActiveRuns {
    runs: HashMap<RunId, Arc<ActiveRun>>,
    /// Each kept cancel with the number it was kept under, so that forgetting the oldest never
    /// forgets a newer cancel of the same run.
    early_cancels: HashMap<RunId, u64>,
    early_order: VecDeque<(RunId, u64)>,
    kept: u64,
    /// Runs being stored and started, not held yet, with how many starts of each are under
    /// way (a client-chosen id may be started twice at once; one of them is refused).
    starting: HashMap<RunId, usize>,
}

impl ActiveRuns {
    pub(crate) fn get(&self, run_id: &RunId) -> Option<&Arc<ActiveRun>> {
        self.runs.get(run_id)
    }

    /// True when the run is held here or being started here.
    pub(crate) fn holds_or_starts(&self, run_id: &RunId) -> bool {
        self.runs.contains_key(run_id) || self.starting.contains_key(run_id)
    }

    /// Marks a run as being started here until [`Self::started`].
    pub(crate) fn starting(&mut self, run_id: &RunId) {
        *self.starting.entry(run_id.clone()).or_default() += 1;
    }

    /// The run's start is over (launched, refused or failed).
    pub(crate) fn started(&mut self, run_id: &RunId) {
        if let Some(count) = self.starting.get_mut(run_id) {
            *count -= 1;
            if *count == 0 {
                self.starting.remove(run_id);
            }
        }
    }

    pub(crate) fn runs(&self) -> impl Iterator<Item = &Arc<ActiveRun>> {
        self.runs.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.runs.len()
    }

    pub(crate) fn remove(&mut self, run_id: &RunId) {
        self.runs.remove(run_id);
    }

    /// Holds `run`; true when a cancel of it came first (the caller cancels it).
    pub(crate) fn insert(&mut self, run: Arc<ActiveRun>) -> bool {
        let cancelled = self.early_cancels.remove(&run.run_id).is_some();
        self.runs.insert(run.run_id.clone(), run);
        cancelled
    }

    /// Cancels the run if it is held here and returns it; else keeps the cancel for its launch.
    pub(crate) fn cancel(&mut self, run_id: &RunId) -> Option<Arc<ActiveRun>> {
        if let Some(run) = self.runs.get(run_id) {
            run.cancel.cancel();
            return Some(run.clone());
        }
        self.kept += 1;
        self.early_cancels.insert(run_id.clone(), self.kept);
        self.early_order.push_back((run_id.clone(), self.kept));
        if self.early_order.len() > EARLY_CANCELS_KEPT {
            if let Some((oldest, number)) = self.early_order.pop_front() {
                if self.early_cancels.get(&oldest) == Some(&number) {
                    self.early_cancels.remove(&oldest);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use bgrun_buffer::{EventLog, LogConfig};

    use super::*;
    use crate::active::test_run as run;

    fn id(id: &str) -> RunId {
        RunId::parse(id).unwrap()
    }

    #[test]
    fn a_cancel_reaches_its_run_whether_it_comes_before_or_after_the_launch() {
        let log = EventLog::new(LogConfig::default());
        let mut active = ActiveRuns::default();

        let held = run(&log, "held");
        assert!(!active.insert(held.clone()));
        assert!(active.cancel(&id("held")).is_some());
        assert!(held.cancel.is_cancelled());

        assert!(active.cancel(&id("early")).is_none());
        let early = run(&log, "early");
        assert!(active.insert(early), "the launch finds the cancel");
        // Taken by that launch: a later run of another id is not affected.
        assert!(!active.insert(run(&log, "other")));
    }

    #[test]
    fn a_run_is_held_from_its_start_until_it_is_removed() {
        let log = EventLog::new(LogConfig::default());
        let mut active = ActiveRuns::default();
        let started = id("started");
        assert!(!active.holds_or_starts(&started));
        active.starting(&started);
        active.starting(&started);
        assert!(
            active.holds_or_starts(&started),
            "stored RUNNING, not launched yet"
        );
        active.started(&started);
        assert!(
            active.holds_or_starts(&started),
            "one of two starts of the id still under way"
        );
        active.insert(run(&log, "started"));
        active.started(&started);
        assert!(active.holds_or_starts(&started), "launched");
        active.remove(&started);
        assert!(!active.holds_or_starts(&started));
    }

    #[test]
    fn cancels_of_runs_never_launched_here_are_kept_up_to_a_bound() {
        let log = EventLog::new(LogConfig::default());
        let mut active = ActiveRuns::default();
        active.cancel(&id("first"));
        // Cancelled twice: forgetting the older of its two entries keeps the newer.
        active.cancel(&id("again"));
        active.cancel(&id("again"));
        for n in 0..EARLY_CANCELS_KEPT - 1 {
            active.cancel(&id(&format!("elsewhere-{n}")));
        }
        assert_eq!(active.early_order.len(), EARLY_CANCELS_KEPT);
        assert_eq!(active.early_cancels.len(), EARLY_CANCELS_KEPT);
        assert!(
            !active.insert(run(&log, "first")),
            "the oldest is forgotten"
        );
        assert!(active.insert(run(&log, "again")));
    }
}
