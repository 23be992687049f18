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
//! The checks are deterministic: they never sleep and assert no timings. Races are real (the
//! suite spawns tokio tasks, so run it on a multi-thread runtime), but every interleaving has
//! one right answer. A lease granted with a zero ttl counts as lapsed at once, which is how the
//! suite tests expiry without waiting.
#![deny(missing_docs)]

pub mod checks;
mod harness;
mod report;
mod suite;
mod support;

pub use harness::StoreHarness;
pub use report::{CheckFailure, ConformanceFailures, ConformanceReport, FailedCheck, SkippedCheck};
pub use suite::{assert_conformance, conformance};
