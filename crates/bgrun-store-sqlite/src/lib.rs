//! bgrun's embedded store: a [`Store`](bgrun_core::Store) in one SQLite file.
//!
//! ```
//! use bgrun_core::{Envelope, Event, NewRun, RunKind, RunTarget, Store};
//! use bgrun_store_sqlite::SqliteStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("bgrun.db")).await?;
//!
//! let created = store.create_run(NewRun::new(RunTarget::new(RunKind::Agent, "echo"), "hi")).await?;
//! let run = created.run();
//! let envelope = Envelope { run_id: &run.run_id, session_id: &run.session_id, created_at: run.created_at };
//! let started = Event::render(envelope, 0, "RunStarted", &Default::default());
//! store.append_events(&run.run_id, &[started.clone()]).await?;
//!
//! assert_eq!(store.read_events(&run.run_id, None, 100).await?, vec![started]);
//! assert_eq!(store.get_run(&run.run_id).await?.unwrap().last_event_index, Some(0));
//! # Ok(())
//! # }
//! ```
//!
//! How it works:
//!
//! - WAL mode, `synchronous = NORMAL`; the schema is versioned (`PRAGMA user_version`) and
//!   migrated in one transaction when the store opens.
//! - One writer thread owns the only writing connection. It commits every write queued at the
//!   moment in one transaction (group commit) and replies once that transaction is committed. A
//!   refused write (a lost compare-and-set, an index conflict, a taken id) writes nothing, so it
//!   fails alone while the rest of its batch commits.
//! - A run's events are stored a block per append (one row for all the events of one write), so
//!   a replay reads a few rows where it would read one per event.
//! - Reads run on a small pool of read-only connections on tokio's blocking pool. `get_run`
//!   first looks in the records the writer last committed (up to 16 MiB of them): as the file's
//!   only writer, the store knows them to be current.
//! - Durable streams live in the same file: a row per stream, its messages keyed by (stream,
//!   offset), its idempotent producers; their writes share the writer's group commit.
//! - One process per file: a lock on `<path>.lock`, held until the store is dropped, makes a
//!   second opener (in any process) fail with
//!   [`StoreError::Locked`](bgrun_core::StoreError::Locked).
#![deny(missing_docs)]

mod blocks;
mod codec;
mod lock;
mod ops;
mod reader;
mod recent;
mod schema;
mod store;
mod streams;
mod writer;

pub use store::{SqliteStore, WriteStats};
