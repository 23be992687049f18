//! The conformance suite every bgrun [`Store`](bgrun_core::Store) backend runs: one call, the
//! whole contract.
//!
//! A backend's test implements [`StoreHarness`] (how to open a fresh store and, for a persistent
//! backend, how to reopen one) and calls [`assert_conformance`]. This is the whole test of the
//! example in-memory store that lives in the bgrun repository under `tests/memory-store`:
//!
//! ```
//! use std::sync::Arc;
//!
//! use bgrun_core::{async_trait, Store};
//! use bgrun_example_memory_store::MemoryStore;
//! use bgrun_testkit::{assert_conformance, StoreHarness};
//!
//! struct Harness;
//!
//! #[async_trait]
//! impl StoreHarness for Harness {
//!     async fn fresh(&self) -> Arc<dyn Store> {
//!         Arc::new(MemoryStore::new())
//!     }
//!
//!     async fn reopen(&self, _store: Arc<dyn Store>) -> Option<Arc<dyn Store>> {
//!         None // memory does not persist: the persistence check is skipped
//!     }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() {
//! // In a backend's tests: `#[tokio::test(flavor = "multi_thread")] async fn conformance() { ... }`
//! assert_conformance(&Harness).await;
//! # }
//! ```
//!
//! [`conformance`] returns the verdict instead of panicking; each check is also a plain
//! `pub async fn` in [`checks`], to run one on its own while fixing it.
//!
//! # What the suite holds a store to
//!
//! The [`Store`](bgrun_core::Store) contract, with these readings where its docs leave room:
//!
//! - [`create_and_get`](checks::create_and_get), [`duplicates_and_idempotency`](checks::duplicates_and_idempotency):
//!   every field round-trips; a taken `run_id` is `RunExists`; a recent idempotency key gives
//!   `Existing` and creates nothing.
//! - [`create_and_start`](checks::create_and_start): `create_and_start_run` starts (`RUNNING`
//!   with its event 0) only a run it created with no cancel intent, in the same write, or
//!   starts nothing (the default); a first event not at index 0 creates nothing.
//! - [`create_and_start_leased`](checks::create_and_start_leased): the same for
//!   `create_and_start_leased`, and a run it starts is leased to the given owner in that write
//!   (another owner is refused the lease, the owner's fenced writes apply, it is not orphaned);
//!   a run it does not start holds no lease.
//! - [`transitions`](checks::transitions), [`cas_races`](checks::cas_races): the status machine
//!   is checked before anything is written (`InvalidTransition`); the compare-and-set before the
//!   event indices, so the loser of a race always learns `Conflict { actual }`; `updated_at`
//!   becomes the transition's `at`; an unknown run is `RunNotFound`.
//! - [`append_and_read`](checks::append_and_read), [`append_rejections`](checks::append_rejections),
//!   [`large_log`](checks::large_log), [`append_races`](checks::append_races),
//!   [`concurrent_writers`](checks::concurrent_writers): gapless logs, exact JSON text,
//!   `IndexConflict { expected, got }` for anything else, an empty append to a live run a no-op,
//!   an append to a terminal run `RunEnded { run_id, status }`.
//! - [`cancel_intents`](checks::cancel_intents): intents before the run exists, idempotent.
//! - [`list_paging`](checks::list_paging): newest `created_at` first, ties newest insertion
//!   first; the page that ends the list has no `next_cursor`; cursors are positions, not offsets.
//! - [`leases`](checks::leases): a lease is live while now < its expiry, so a zero ttl lapses at
//!   once; `renew_leases` extends live leases only.
//! - [`persistence`](checks::persistence): all of the above survives a new store instance.
//!
//! Durable streams are optional: a store whose `supports_streams` is false has the `streams_`
//! checks skipped ([`checks::STREAMS_UNSUPPORTED`]). One that keeps them is held to:
//!
//! - [`streams_create`](checks::streams_create): `Existing` and `Conflict` write nothing, not
//!   even `last_access`; a repeated create with another body is still `Existing`.
//! - [`streams_append_and_read`](checks::streams_append_and_read): a fork's `read_stream`
//!   returns only its own messages (offsets after the fork offset); `max_bytes` 0 still returns
//!   one message; stream ids are never reused, not even a deleted stream's by another path;
//!   `delete_stream` naming another stream's id is `NotFound` and deletes nothing.
//! - [`streams_producers`](checks::streams_producers), [`streams_stream_seq`](checks::streams_stream_seq),
//!   [`streams_close`](checks::streams_close): every refusal of `plan_append` (`Duplicate`
//!   included) writes nothing, not even `last_access` or the producer's state; an append
//!   without `Stream-Seq` keeps the last one.
//! - [`streams_forks`](checks::streams_forks), [`streams_expiry`](checks::streams_expiry): a
//!   soft-deleted fork still counts in its source's `forks` (its own forks read through it);
//!   `touch_stream` of a missing stream is `Ok`.
//! - [`streams_expired_listing`](checks::streams_expired_listing): `expired_streams` lists what
//!   `StreamInfo::is_expired` says, earliest deadline first and ties by id, never soft-deleted
//!   streams, and computes deadlines of TTLs past `i64::MAX` (seconds or milliseconds) without
//!   overflowing; listing writes nothing.
//! - [`streams_concurrency`](checks::streams_concurrency): one producer write sent twice at
//!   once is taken once; concurrent appends get every offset exactly once.
//! - [`streams_persistence`](checks::streams_persistence): streams, messages, producer state,
//!   closers, soft deletes and the id sequence survive a new store instance.
//!
//! The checks are deterministic: they never sleep and assert no timings. Races are real (the
//! suite spawns tokio tasks, so run it on a multi-thread runtime), but every interleaving has
//! one right answer. A lease granted with a zero ttl counts as lapsed at once, which is how the
//! suite tests expiry without waiting.
#![deny(missing_docs)]

pub mod bench;
pub mod checks;
mod harness;
mod report;
pub mod runnables;
mod suite;
mod support;

pub use harness::StoreHarness;
pub use report::{CheckFailure, ConformanceFailures, ConformanceReport, FailedCheck, SkippedCheck};
pub use suite::{assert_conformance, conformance};
