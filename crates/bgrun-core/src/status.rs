//! The run status machine.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{InvalidInput, InvalidTransition};

/// Where a run is in its life.
///
/// `PENDING -> RUNNING | CANCELLED | ERROR`; `RUNNING -> COMPLETED | ERROR | CANCELLED | PAUSED`;
/// `PAUSED -> RUNNING | CANCELLED`; terminal statuses have no exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RunStatus {
    /// Persisted, waiting for a slot.
    Pending,
    /// Executing.
    Running,
    /// Suspended; resumes to `RUNNING`.
    Paused,
    /// Finished successfully (terminal).
    Completed,
    /// Failed (terminal).
    Error,
    /// Cancelled (terminal).
    Cancelled,
}

impl RunStatus {
    /// Every status, in life order.
    pub const ALL: [RunStatus; 6] = [
        Self::Pending,
        Self::Running,
        Self::Paused,
        Self::Completed,
        Self::Error,
        Self::Cancelled,
    ];

    /// The exact wire name: `PENDING`, `RUNNING`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Paused => "PAUSED",
            Self::Completed => "COMPLETED",
            Self::Error => "ERROR",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Parses a wire name (exact, upper case).
    pub fn parse(name: &str) -> Result<Self, InvalidInput> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == name)
            .ok_or_else(|| {
                InvalidInput::new(format!(
                    "unknown status {name:?}: expected one of PENDING, RUNNING, PAUSED, COMPLETED, ERROR, CANCELLED"
                ))
            })
    }

    /// True for `COMPLETED`, `ERROR` and `CANCELLED`.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Error | Self::Cancelled)
    }

    /// Whether the status machine allows going from `self` to `next`.
    pub const fn can_become(self, next: RunStatus) -> bool {
        use RunStatus::*;
        matches!(
            (self, next),
            (Pending, Running | Cancelled | Error)
                | (Running, Completed | Error | Cancelled | Paused)
                | (Paused, Running | Cancelled)
        )
    }

    /// `Ok(())` when [`can_become`](Self::can_become), else the typed error.
    pub fn check_transition(self, next: RunStatus) -> Result<(), InvalidTransition> {
        if self.can_become(next) {
            Ok(())
        } else {
            Err(InvalidTransition {
                from: self,
                to: next,
            })
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunStatus {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// When a cancelled run was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CancellationStage {
    /// Before its component started.
    Pending,
    /// While its component executed.
    Executing,
}

impl CancellationStage {
    /// The wire name: `PENDING` or `EXECUTING`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Executing => "EXECUTING",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Result<Self, InvalidInput> {
        match name {
            "PENDING" => Ok(Self::Pending),
            "EXECUTING" => Ok(Self::Executing),
            other => Err(InvalidInput::new(format!(
                "unknown cancellation stage {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RunStatus::*;
    use super::*;

    #[test]
    fn transitions_follow_the_machine() {
        let allowed = [
            (Pending, Running),
            (Pending, Cancelled),
            (Pending, Error),
            (Running, Completed),
            (Running, Error),
            (Running, Cancelled),
            (Running, Paused),
            (Paused, Running),
            (Paused, Cancelled),
        ];
        for from in RunStatus::ALL {
            for to in RunStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        assert_eq!(
            Completed.check_transition(Running),
            Err(InvalidTransition {
                from: Completed,
                to: Running
            })
        );
    }

    #[test]
    fn names_round_trip() {
        for status in RunStatus::ALL {
            assert_eq!(RunStatus::parse(status.as_str()), Ok(status));
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{status}\"")
            );
        }
        assert!(RunStatus::parse("running").is_err());
        assert!(Completed.is_terminal() && !Paused.is_terminal());
    }
}
