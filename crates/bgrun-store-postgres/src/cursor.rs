//! The opaque `list_runs` cursor: the position `(created_at, seq)` of a page's last run.

use bgrun_core::StoreError;

const PREFIX: &str = "pg1.";

/// Where a page ended: the last run's `created_at` and insertion sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) created_at: i64,
    pub(crate) seq: i64,
}

impl Cursor {
    pub(crate) fn encode(self) -> String {
        format!("{PREFIX}{}.{}", self.created_at, self.seq)
    }

    /// Reads a cursor this store handed out; anything else is `InvalidCursor`.
    pub(crate) fn decode(text: &str) -> Result<Self, StoreError> {
        let invalid = || StoreError::InvalidCursor(text.chars().take(64).collect());
        let rest = text.strip_prefix(PREFIX).ok_or_else(invalid)?;
        let (created_at, seq) = rest.split_once('.').ok_or_else(invalid)?;
        let created_at: i64 = created_at.parse().map_err(|_| invalid())?;
        let seq: i64 = seq.parse().map_err(|_| invalid())?;
        if seq < 1
            || !rest
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
        {
            return Err(invalid());
        }
        Ok(Self { created_at, seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let cursor = Cursor {
            created_at: -5,
            seq: 42,
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        for garbage in [
            "", "42", "pg1.", "pg1.1", "pg1.1.0", "pg1.a.1", "pg1.1.+2", "x.1.1",
        ] {
            assert!(
                matches!(Cursor::decode(garbage), Err(StoreError::InvalidCursor(_))),
                "{garbage:?}"
            );
        }
    }
}
