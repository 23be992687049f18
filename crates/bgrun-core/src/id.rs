//! Identifiers of runs and sessions.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;

/// The longest id a client may choose, in bytes.
pub const MAX_ID_LEN: usize = 256;

fn validate(what: &'static str, value: &str) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::new(format!("{what} must not be empty")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(InvalidInput::new(format!(
            "{what} is longer than {MAX_ID_LEN} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidInput::new(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// A new time-ordered id (UUID v7 text).
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7().to_string().into())
            }

            /// Accepts a client-chosen id: non-empty, at most [`MAX_ID_LEN`] bytes, no control
            /// characters.
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidInput> {
                let value = value.into();
                validate($what, &value)?;
                Ok(Self(value.into()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidInput;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidInput;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// Identifies a run: a UUID v7 unless the client chose one.
    RunId,
    "run_id"
);
string_id!(
    /// Groups runs of one conversation.
    SessionId,
    "session_id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_uuid_v7_and_ordered() {
        let a = RunId::generate();
        let b = RunId::generate();
        let parsed = uuid::Uuid::parse_str(a.as_str()).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert!(a < b);
    }

    #[test]
    fn bad_ids_are_rejected() {
        assert!(RunId::parse("").is_err());
        assert!(RunId::parse("a\nb").is_err());
        assert!(RunId::parse("x".repeat(MAX_ID_LEN + 1)).is_err());
        assert_eq!(RunId::parse("my-run").unwrap().as_str(), "my-run");
        assert!(serde_json::from_str::<SessionId>("\"\"").is_err());
    }
}
