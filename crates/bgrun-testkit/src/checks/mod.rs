//! The checks of the suite, each a plain `pub async fn` that a backend's test can also run on its
//! own. Each returns what it expected and what happened when the store breaks the contract.
//!
//! Checks taking an `Arc<dyn Store>` expect a fresh, empty store and use it alone (they create
//! the runs they need, with fixed ids and timestamps).

mod cancel;
mod events;
mod fencing;
mod leases;
mod list;
mod persistence;
mod runs;
mod status;

pub use cancel::cancel_intents;
pub use events::{append_and_read, append_races, append_rejections, concurrent_writers, large_log};
pub use fencing::{fencing, leased_transitions};
pub use leases::leases;
pub use list::list_paging;
pub use persistence::{persistence, Persistence};
pub use runs::{create_and_get, duplicates_and_idempotency};
pub use status::{cas_races, transitions};

/// The names of the checks, in the order [`conformance`](crate::conformance) runs them; failures
/// and reports name checks this way.
pub const NAMES: [&str; 15] = [
    "create_and_get",
    "duplicates_and_idempotency",
    "transitions",
    "cas_races",
    "append_and_read",
    "append_rejections",
    "large_log",
    "append_races",
    "concurrent_writers",
    "cancel_intents",
    "list_paging",
    "leases",
    "fencing",
    "leased_transitions",
    "persistence",
];
