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
//! WAL mode with `synchronous = NORMAL`; one writer thread owns the only writing connection and
//! commits every write queued at the moment in one transaction (group commit), each write in a
//! savepoint of its own so that one failing write undoes only itself; reads run on a pool of
//! read-only connections on tokio's blocking pool. One process per file: a lock on
//! `<path>.lock` makes a second opener fail with [`StoreError::Locked`](bgrun_core::StoreError).
#![deny(missing_docs)]

mod codec;
mod lock;
mod ops;
mod reader;
mod schema;
mod store;
mod writer;

pub use store::{SqliteStore, WriteStats};
