//! What a run executes: a kind of component and its id.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;

/// The three kinds of component a run can execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// A single agent run.
    Agent,
    /// A team: runs member agents as child runs.
    Team,
    /// A workflow: runs steps, some as child runs.
    Workflow,
}

impl RunKind {
    /// Every kind.
    pub const ALL: [RunKind; 3] = [Self::Agent, Self::Team, Self::Workflow];

    /// `agent`, `team` or `workflow`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Team => "team",
            Self::Workflow => "workflow",
        }
    }

    /// `agents`, `teams` or `workflows`: the path segment of the HTTP API.
    pub const fn plural(self) -> &'static str {
        match self {
            Self::Agent => "agents",
            Self::Team => "teams",
            Self::Workflow => "workflows",
        }
    }

    /// Parses the singular or the plural name.
    pub fn parse(name: &str) -> Result<Self, InvalidInput> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name || kind.plural() == name)
            .ok_or_else(|| {
                InvalidInput::new(format!(
                    "unknown kind {name:?}: expected agent, team or workflow"
                ))
            })
    }

    /// The name of the run's first event: `RunStarted`, `TeamRunStarted`, `WorkflowStarted`.
    pub const fn started_event(self) -> &'static str {
        match self {
            Self::Agent => "RunStarted",
            Self::Team => "TeamRunStarted",
            Self::Workflow => "WorkflowStarted",
        }
    }

    /// The name of the event that streams content, whose `content` fields make up a run's content.
    pub const fn content_event(self) -> &'static str {
        match self {
            Self::Agent => "RunContent",
            Self::Team => "TeamRunContent",
            Self::Workflow => "WorkflowRunContent",
        }
    }

    /// The name of the terminal event for a terminal status.
    pub const fn terminal_event(self, outcome: Outcome) -> &'static str {
        match (self, outcome) {
            (Self::Agent, Outcome::Completed) => "RunCompleted",
            (Self::Agent, Outcome::Error) => "RunError",
            (Self::Agent, Outcome::Cancelled) => "RunCancelled",
            (Self::Team, Outcome::Completed) => "TeamRunCompleted",
            (Self::Team, Outcome::Error) => "TeamRunError",
            (Self::Team, Outcome::Cancelled) => "TeamRunCancelled",
            (Self::Workflow, Outcome::Completed) => "WorkflowCompleted",
            (Self::Workflow, Outcome::Error) => "WorkflowError",
            (Self::Workflow, Outcome::Cancelled) => "WorkflowCancelled",
        }
    }
}

/// How a run ended: the terminal statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `COMPLETED`.
    Completed,
    /// `ERROR`.
    Error,
    /// `CANCELLED`.
    Cancelled,
}

impl Outcome {
    /// The terminal status of this outcome.
    pub const fn status(self) -> crate::RunStatus {
        match self {
            Self::Completed => crate::RunStatus::Completed,
            Self::Error => crate::RunStatus::Error,
            Self::Cancelled => crate::RunStatus::Cancelled,
        }
    }
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The component a run executes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunTarget {
    /// Agent, team or workflow.
    pub kind: RunKind,
    /// The component's id, as registered.
    pub component_id: String,
}

impl RunTarget {
    /// A target of this kind and component id.
    pub fn new(kind: RunKind, component_id: impl Into<String>) -> Self {
        Self {
            kind,
            component_id: component_id.into(),
        }
    }
}

impl fmt::Display for RunTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.plural(), self.component_id)
    }
}
