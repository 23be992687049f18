//! `agents/echo`: which component a client command is about.

use std::fmt;
use std::str::FromStr;

/// A component kind as the API's paths spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `agents`
    Agents,
    /// `teams`
    Teams,
    /// `workflows`
    Workflows,
}

impl Kind {
    /// The path segment: `agents`, `teams` or `workflows`.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Agents => "agents",
            Kind::Teams => "teams",
            Kind::Workflows => "workflows",
        }
    }

    /// The event type prefix of this kind's terminal events (`RunCompleted`, `TeamRunError`,
    /// `WorkflowCancelled`, ...).
    pub fn terminal_prefix(self) -> &'static str {
        match self {
            Kind::Agents => "Run",
            Kind::Teams => "TeamRun",
            Kind::Workflows => "Workflow",
        }
    }
}

/// A component: its kind and id, written `agents/echo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The kind.
    pub kind: Kind,
    /// The component id.
    pub id: String,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!("{s:?} is not a component: write KIND/ID, KIND being agents, teams or workflows (e.g. agents/echo)")
        };
        let (kind, id) = s.split_once('/').ok_or_else(usage)?;
        let kind = match kind {
            "agents" | "agent" => Kind::Agents,
            "teams" | "team" => Kind::Teams,
            "workflows" | "workflow" => Kind::Workflows,
            _ => return Err(usage()),
        };
        if id.is_empty() || id.contains('/') {
            return Err(usage());
        }
        Ok(Target {
            kind,
            id: id.to_owned(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.segment(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kind_and_id() {
        let target: Target = "agents/echo".parse().unwrap();
        assert_eq!(target.kind, Kind::Agents);
        assert_eq!(target.id, "echo");
        assert_eq!(target.to_string(), "agents/echo");
        assert_eq!(
            "team/pair".parse::<Target>().unwrap().kind,
            Kind::Teams,
            "the singular is accepted too"
        );
    }

    #[test]
    fn rejects_what_is_not_a_component() {
        for bad in ["echo", "agents/", "robots/echo", "agents/a/b", "/echo"] {
            let error = bad.parse::<Target>().unwrap_err();
            assert!(error.contains("KIND/ID"), "{bad}: {error}");
        }
    }
}
