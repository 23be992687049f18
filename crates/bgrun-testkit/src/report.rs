//! What the suite reports: checks passed, skipped and failed.

use std::fmt;

/// Why a check failed: what it expected and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    message: String,
}

impl CheckFailure {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// What was expected and what happened.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CheckFailure {}

/// A check the suite did not run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedCheck {
    /// The check's name (see [`checks::NAMES`](crate::checks::NAMES)).
    pub check: &'static str,
    /// Why it was skipped.
    pub reason: String,
}

/// The checks that passed and those that were skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConformanceReport {
    /// The names of the checks that passed, in the order they ran.
    pub passed: Vec<&'static str>,
    /// The checks that were skipped.
    pub skipped: Vec<SkippedCheck>,
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} checks passed", self.passed.len())?;
        for skipped in &self.skipped {
            write!(f, "; skipped {}: {}", skipped.check, skipped.reason)?;
        }
        Ok(())
    }
}

/// A check that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedCheck {
    /// The check's name (see [`checks::NAMES`](crate::checks::NAMES)).
    pub check: &'static str,
    /// What went wrong.
    pub failure: CheckFailure,
}

/// The suite's verdict on a store that does not keep the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceFailures {
    /// The checks that failed, in the order they ran.
    pub failed: Vec<FailedCheck>,
    /// The checks that passed or were skipped.
    pub report: ConformanceReport,
}

impl ConformanceFailures {
    /// The names of the failed checks.
    pub fn names(&self) -> Vec<&'static str> {
        self.failed.iter().map(|failed| failed.check).collect()
    }

    /// How the check named `check` failed, if it did.
    pub fn failure(&self, check: &str) -> Option<&CheckFailure> {
        self.failed
            .iter()
            .find(|failed| failed.check == check)
            .map(|failed| &failed.failure)
    }
}

impl fmt::Display for ConformanceFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.failed.len() + self.report.passed.len() + self.report.skipped.len();
        writeln!(
            f,
            "the store failed {} of {total} conformance checks ({}):",
            self.failed.len(),
            self.report
        )?;
        for failed in &self.failed {
            writeln!(f, "- {}: {}", failed.check, failed.failure)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConformanceFailures {}
