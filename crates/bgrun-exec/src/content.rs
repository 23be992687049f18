//! The content of a run so far, read from its stored events: for runs this engine does not
//! execute (another replica does, or a dead process left them), whose content is only stored
//! once they end.
//!
//! A `RUNNING` run polled here would otherwise be read from its first event at every poll. The
//! content built so far is kept for a few runs, with the index it reaches, so that a poll reads
//! only the events stored since.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bgrun_core::{Event, RunId, RunRecord};
use serde_json::Value;

use crate::engine::Engine;
use crate::error::EngineResult;

/// How many runs' partial content is kept; beyond, the least recently read is dropped.
const KEPT_RUNS: usize = 256;

/// How many events one store read takes.
const PAGE: usize = 1000;

/// Partial contents of runs executed elsewhere.
#[derive(Debug, Default)]
pub(crate) struct PartialContents {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    runs: HashMap<RunId, Partial>,
    /// Ticks at each read, to tell the least recently read.
    clock: u64,
}

#[derive(Debug, Clone)]
struct Partial {
    /// The index of the first event not yet read.
    next: u64,
    content: String,
    read_at: u64,
}

impl PartialContents {
    fn kept(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The run's content so far: what is kept of it, and the events stored since.
    pub(crate) async fn content(&self, engine: &Engine, run: &RunRecord) -> EngineResult<String> {
        let kept = self.kept().runs.get(&run.run_id).cloned();
        let (mut next, mut content) = kept.map_or((0, String::new()), |partial| {
            (partial.next, partial.content)
        });
        next = read_content(engine, run, next, &mut content).await?;
        let mut kept = self.kept();
        kept.clock += 1;
        let read_at = kept.clock;
        if !kept.runs.contains_key(&run.run_id) && kept.runs.len() >= KEPT_RUNS {
            let oldest = kept
                .runs
                .iter()
                .min_by_key(|(_, partial)| partial.read_at)
                .map(|(run_id, _)| run_id.clone());
            if let Some(oldest) = oldest {
                kept.runs.remove(&oldest);
            }
        }
        let partial = kept.runs.entry(run.run_id.clone()).or_insert(Partial {
            next: 0,
            content: String::new(),
            read_at,
        });
        // Two reads at once: the one further along is kept.
        if next >= partial.next {
            partial.next = next;
            partial.content.clone_from(&content);
        }
        partial.read_at = read_at;
        Ok(content)
    }

    /// Forgets a run (it ended: its record holds its content).
    pub(crate) fn forget(&self, run_id: &RunId) {
        self.kept().runs.remove(run_id);
    }
}

/// The whole content of a run, read from its first stored event.
pub(crate) async fn stored_content(engine: &Engine, run: &RunRecord) -> EngineResult<String> {
    let mut content = String::new();
    read_content(engine, run, 0, &mut content).await?;
    Ok(content)
}

/// Appends to `content` the run's own content events from index `next` on; returns the index
/// after the last event read.
async fn read_content(
    engine: &Engine,
    run: &RunRecord,
    mut next: u64,
    content: &mut String,
) -> EngineResult<u64> {
    let content_event = run.target.kind.content_event();
    loop {
        let events = engine
            .inner
            .store
            .read_events(&run.run_id, next.checked_sub(1), PAGE)
            .await?;
        let Some(last) = events.last() else {
            return Ok(next);
        };
        next = last.index() + 1;
        for event in events
            .iter()
            .filter(|event| event.event_type() == content_event)
        {
            content.push_str(&own_content(event, run).unwrap_or_default());
        }
    }
}

/// An event's `content` when it is the run's own (not forwarded from a child).
fn own_content(event: &Event, run: &RunRecord) -> Option<String> {
    let mut fields = event.fields().ok()?;
    if fields.get("run_id").and_then(Value::as_str) != Some(run.run_id.as_str()) {
        return None;
    }
    match fields.remove("content") {
        Some(Value::String(text)) => Some(text),
        _ => None,
    }
}
