//! The state an engine keeps for a run it executes: its log writer, content, cancellation.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bgrun_buffer::{LogError, StreamWriter};
use bgrun_core::{Envelope, Event, RunId, RunKind, RunStatus, SessionId};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One run this engine executes (or has queued).
#[derive(Debug)]
pub(crate) struct ActiveRun {
    pub(crate) run_id: RunId,
    pub(crate) session_id: SessionId,
    pub(crate) kind: RunKind,
    pub(crate) writer: StreamWriter<RunId>,
    content: Mutex<String>,
    /// Fired by a cancel request (or a failed store write): the component's future is dropped.
    pub(crate) cancel: CancellationToken,
    /// The status as this engine knows it; terminal once the run's end is stored.
    pub(crate) status: watch::Sender<RunStatus>,
    store_failure: Mutex<Option<String>>,
    /// Runs this run started (team members, workflow steps).
    children: Mutex<Vec<Arc<ActiveRun>>>,
    /// The starts of its children under way: a start goes on when the component that made it
    /// is dropped (cancelled), and the run settles its children only once they are launched.
    pub(crate) child_starts: tokio_util::task::TaskTracker,
    /// Fired when the run's task has ended, however it ended (also when it left the run to
    /// another engine without a terminal status).
    pub(crate) ended: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ActiveRun {
    pub(crate) fn new(
        run_id: RunId,
        session_id: SessionId,
        kind: RunKind,
        writer: StreamWriter<RunId>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            run_id,
            session_id,
            kind,
            writer,
            content: Mutex::new(String::new()),
            cancel,
            status: watch::Sender::new(RunStatus::Pending),
            store_failure: Mutex::new(None),
            children: Mutex::new(Vec::new()),
            child_starts: tokio_util::task::TaskTracker::new(),
            ended: CancellationToken::new(),
        }
    }

    /// Holds `child` until it ends; the children that ended are let go here, so a parent that
    /// starts many holds only the ones still running (each holds its log).
    pub(crate) fn add_child(&self, child: Arc<ActiveRun>) {
        let mut children = lock(&self.children);
        children.retain(|child| !child.ended.is_cancelled());
        children.push(child);
    }

    /// Cancels every child still running and waits until each has ended.
    pub(crate) async fn settle_children(&self) {
        // A child being started when the component ended is launched first (its token, a child
        // of this run's, is cancelled if this run was).
        self.child_starts.close();
        self.child_starts.wait().await;
        let children: Vec<Arc<ActiveRun>> = lock(&self.children).drain(..).collect();
        for child in &children {
            if !child.status.borrow().is_terminal() {
                child.cancel.cancel();
            }
        }
        for child in children {
            child.ended.cancelled().await;
        }
    }

    /// Appends a child's event under this run's next index, keeping the child's `run_id`.
    pub(crate) async fn forward(&self, event: &Event) -> Result<u64, LogError> {
        let fields = event.fields().ok();
        self.writer
            .append(|index| match &fields {
                Some(fields) => {
                    let mut fields = fields.clone();
                    fields.insert("event_index".into(), Value::from(index));
                    Event::from_parts(index, event.event_type(), Value::Object(fields).to_string())
                }
                None => event.clone(),
            })
            .await
    }

    /// Renders an event of this run for the next index.
    pub(crate) fn render(
        &self,
        index: u64,
        event_type: &str,
        fields: &Map<String, Value>,
    ) -> Event {
        Event::render(
            Envelope {
                run_id: &self.run_id,
                session_id: &self.session_id,
                created_at: bgrun_core::now(),
            },
            index,
            event_type,
            fields,
        )
    }

    /// Appends an event of this run, counting its content when it is a content event.
    pub(crate) async fn emit(
        &self,
        event_type: &str,
        fields: &Map<String, Value>,
    ) -> Result<u64, LogError> {
        if event_type == self.kind.content_event() {
            if let Some(Value::String(text)) = fields.get("content") {
                lock(&self.content).push_str(text);
            }
        }
        self.writer
            .append(|index| self.render(index, event_type, fields))
            .await
    }

    pub(crate) fn content(&self) -> String {
        lock(&self.content).clone()
    }

    pub(crate) fn set_store_failure(&self, message: String) {
        lock(&self.store_failure).get_or_insert(message);
        self.cancel.cancel();
    }

    pub(crate) fn store_failure(&self) -> Option<String> {
        lock(&self.store_failure).clone()
    }
}

/// A run held by no engine, with its log in `log`: for unit tests.
#[cfg(test)]
pub(crate) fn test_run(log: &bgrun_buffer::EventLog<RunId>, id: &str) -> Arc<ActiveRun> {
    #[allow(clippy::unwrap_used)]
    let run_id = RunId::parse(id).unwrap();
    #[allow(clippy::unwrap_used)]
    let writer = log.open(run_id.clone(), 0).unwrap();
    Arc::new(ActiveRun::new(
        run_id,
        SessionId::generate(),
        RunKind::Agent,
        writer,
        CancellationToken::new(),
    ))
}

#[cfg(test)]
mod tests {
    use bgrun_buffer::{EventLog, LogConfig};

    use super::*;

    #[test]
    fn a_parent_holds_only_its_children_still_running() {
        let log = EventLog::new(LogConfig::default());
        let parent = test_run(&log, "parent");
        let ended: Vec<_> = (0..100)
            .map(|n| test_run(&log, &format!("done-{n}")))
            .collect();
        for child in &ended {
            parent.add_child(child.clone());
            child.ended.cancel();
        }
        let running = test_run(&log, "running");
        parent.add_child(running.clone());
        let held: Vec<RunId> = lock(&parent.children)
            .iter()
            .map(|child| child.run_id.clone())
            .collect();
        assert_eq!(held, std::slice::from_ref(&running.run_id));
    }
}
