//! The checks of the suite, each a plain `pub async fn` that a backend's test can also run on its
//! own. Each returns what it expected and what happened when the store breaks the contract.
//!
//! Checks taking an `Arc<dyn Store>` expect a fresh, empty store and use it alone (they create
//! the runs and streams they need, with fixed ids, paths and timestamps). The `streams_` checks
//! need a store whose [`supports_streams`](bgrun_core::Store::supports_streams) is true; the
//! suite skips them for others, with [`STREAMS_UNSUPPORTED`] as the reason.

mod cancel;
mod events;
mod fencing;
mod leases;
mod list;
mod persistence;
mod runs;
mod status;
mod streams;

pub use cancel::cancel_intents;
pub use events::{append_and_read, append_races, append_rejections, concurrent_writers, large_log};
pub use fencing::{fencing, leased_transitions};
pub use leases::leases;
pub use list::list_paging;
pub use persistence::{persistence, Persistence};
pub use runs::{
    create_and_get, create_and_start, create_and_start_leased, duplicates_and_idempotency,
};
pub use status::{cas_races, transitions};
pub use streams::{
    streams_append_and_read, streams_close, streams_concurrency, streams_create,
    streams_expired_listing, streams_expiry, streams_forks, streams_persistence, streams_producers,
    streams_stream_seq, STREAMS_UNSUPPORTED,
};

/// The names of the checks, in the order [`conformance`](crate::conformance) runs them; failures
/// and reports name checks this way.
pub const NAMES: [&str; 27] = [
    "create_and_get",
    "duplicates_and_idempotency",
    "create_and_start",
    "create_and_start_leased",
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
    "streams_create",
    "streams_append_and_read",
    "streams_producers",
    "streams_stream_seq",
    "streams_close",
    "streams_forks",
    "streams_expiry",
    "streams_expired_listing",
    "streams_concurrency",
    "persistence",
    "streams_persistence",
];
