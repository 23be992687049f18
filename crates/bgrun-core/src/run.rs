//! The run record and what creating and changing one takes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::id::{RunId, SessionId};
use crate::status::{CancellationStage, RunStatus};
use crate::target::RunTarget;

/// Seconds since the Unix epoch, the unit of every timestamp in bgrun.
pub type Timestamp = i64;

/// The current time in [`Timestamp`] units.
pub fn now() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as Timestamp)
        .unwrap_or(0)
}

/// The memory a JSON value holds, as [`RunRecord::estimated_bytes`] counts it.
fn value_bytes(value: &Value) -> usize {
    let node = std::mem::size_of::<Value>();
    node + match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(text) => text.len(),
        Value::Array(items) => items.iter().map(value_bytes).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| key.len() + value_bytes(value))
            .sum(),
    }
}

/// How long an idempotency key keeps pointing at the run it created, in seconds.
pub const IDEMPOTENCY_WINDOW_SECS: Timestamp = 24 * 60 * 60;

/// A run as the store holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's id.
    pub run_id: RunId,
    /// Its session.
    pub session_id: SessionId,
    /// Its owner, if any.
    pub user_id: Option<String>,
    /// The component it executes.
    pub target: RunTarget,
    /// The run that started it (team member, workflow step).
    pub parent_run_id: Option<RunId>,
    /// Its status.
    pub status: RunStatus,
    /// The input message.
    pub input: String,
    /// The component's parameters, validated.
    pub params: Map<String, Value>,
    /// The final content, set when the run ends.
    pub content: Option<String>,
    /// What went wrong, set when the run ends `ERROR`.
    pub error: Option<String>,
    /// When a cancelled run was stopped, set when it ends `CANCELLED`.
    pub cancellation_stage: Option<CancellationStage>,
    /// Client metadata stored with the run.
    pub metadata: Option<Value>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its status or log last changed.
    pub updated_at: Timestamp,
    /// The index of its last stored event; `None` before the first.
    pub last_event_index: Option<u64>,
}

impl RunRecord {
    /// True once the run is terminal (`COMPLETED`, `ERROR`, `CANCELLED`): a poll loop over it ends.
    pub fn has_completed(&self) -> bool {
        self.status.is_terminal()
    }

    /// An estimate of the memory the record holds, in bytes: its own size and its text and
    /// JSON. For caches of records bounded by the memory they take.
    pub fn estimated_bytes(&self) -> usize {
        let text = |text: &Option<String>| text.as_ref().map_or(0, String::len);
        std::mem::size_of::<RunRecord>()
            + self.input.len()
            + self.target.component_id.len()
            + text(&self.user_id)
            + text(&self.content)
            + text(&self.error)
            + self
                .params
                .iter()
                .map(|(key, value)| key.len() + value_bytes(value))
                .sum::<usize>()
            + self.metadata.as_ref().map_or(0, value_bytes)
    }

    /// How many events the run has stored: its last index + 1.
    pub fn event_count(&self) -> u64 {
        self.last_event_index.map_or(0, |last| last + 1)
    }

    /// The index the run's next event takes.
    pub fn next_event_index(&self) -> u64 {
        self.event_count()
    }
}

/// What `Store::create_run` takes: a new `PENDING` run.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// The run's id.
    pub run_id: RunId,
    /// Its session.
    pub session_id: SessionId,
    /// Its owner, if any.
    pub user_id: Option<String>,
    /// The component it executes.
    pub target: RunTarget,
    /// The run that started it.
    pub parent_run_id: Option<RunId>,
    /// The input message.
    pub input: String,
    /// Validated parameters.
    pub params: Map<String, Value>,
    /// Client metadata.
    pub metadata: Option<Value>,
    /// A client's idempotency key: a second create with the same key within
    /// [`IDEMPOTENCY_WINDOW_SECS`] returns the first run instead of creating one.
    pub idempotency_key: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
}

impl NewRun {
    /// A new run of `target` with a generated id and session, no parameters.
    pub fn new(target: RunTarget, input: impl Into<String>) -> Self {
        Self {
            run_id: RunId::generate(),
            session_id: SessionId::generate(),
            user_id: None,
            target,
            parent_run_id: None,
            input: input.into(),
            params: Map::new(),
            metadata: None,
            idempotency_key: None,
            created_at: now(),
        }
    }

    /// The record this becomes once created: `PENDING`, no events.
    pub fn into_record(self) -> RunRecord {
        RunRecord {
            run_id: self.run_id,
            session_id: self.session_id,
            user_id: self.user_id,
            target: self.target,
            parent_run_id: self.parent_run_id,
            status: RunStatus::Pending,
            input: self.input,
            params: self.params,
            content: None,
            error: None,
            cancellation_stage: None,
            metadata: self.metadata,
            created_at: self.created_at,
            updated_at: self.created_at,
            last_event_index: None,
        }
    }
}

/// What `Store::create_run` did.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// The run was created `PENDING`.
    Created {
        /// The new record.
        run: RunRecord,
        /// A cancel intent was recorded for this `run_id` before it existed: the run must end
        /// `CANCELLED` without executing.
        cancel_requested: bool,
    },
    /// The idempotency key already named this run; nothing was created.
    Existing(RunRecord),
}

impl CreateOutcome {
    /// The run created or found.
    pub fn run(&self) -> &RunRecord {
        match self {
            Self::Created { run, .. } | Self::Existing(run) => run,
        }
    }
}

/// What `Store::create_and_start_run` did.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateAndStart {
    /// What the create did; its record is the run as created (`PENDING`).
    pub created: CreateOutcome,
    /// The run as it is stored after the same write moved it `PENDING -> RUNNING` with its
    /// first event; `None` when the write did not start it (the run was not created, a cancel
    /// intent was recorded for it, or the store starts runs in a write of their own).
    pub started: Option<RunRecord>,
}

/// A compare-and-set status change: applied only if the run is in `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The status the writer expects the run to be in.
    pub from: RunStatus,
    /// The new status; `from -> to` must be allowed by the status machine.
    pub to: RunStatus,
    /// The final content (set on terminal transitions).
    pub content: Option<String>,
    /// The error (set when `to` is `ERROR`).
    pub error: Option<String>,
    /// The stage (set when `to` is `CANCELLED`).
    pub cancellation_stage: Option<CancellationStage>,
    /// When it happened.
    pub at: Timestamp,
}

impl Transition {
    /// `from -> to`, nothing else set, now.
    pub fn new(from: RunStatus, to: RunStatus) -> Self {
        Self {
            from,
            to,
            content: None,
            error: None,
            cancellation_stage: None,
            at: now(),
        }
    }
}

/// What a compare-and-set transition did.
#[derive(Debug, Clone, PartialEq)]
pub enum TransitionOutcome {
    /// The run was in `from`; it is now in `to`, and the events given with it are stored.
    Applied(Box<RunRecord>),
    /// The run was not in `from`; nothing was written.
    Conflict {
        /// The status it was in.
        actual: RunStatus,
    },
}

impl TransitionOutcome {
    /// True when the transition won.
    pub fn applied(&self) -> bool {
        matches!(self, Self::Applied(_))
    }
}

/// Which runs `Store::list_runs` returns. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    /// Runs of this session.
    pub session_id: Option<SessionId>,
    /// Runs in this status.
    pub status: Option<RunStatus>,
    /// Runs of this component.
    pub target: Option<RunTarget>,
    /// Children of this run.
    pub parent_run_id: Option<RunId>,
}

/// One page of `Store::list_runs`, newest first by creation order.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<RunRecord>,
    /// Pass to the next call for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Whether a lease was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseGrant {
    /// The caller holds the lease now.
    Granted,
    /// Another owner holds a live lease.
    HeldBy(String),
}
