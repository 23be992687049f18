//! The PostgreSQL [`Store`](bgrun_core::Store) of [bgrun](https://example.invalid/bgrun): many
//! replicas share one database; LISTEN/NOTIFY tells each of them when a run's log grew, a
//! cancel was requested or a durable stream changed.
//!
//! ```no_run
//! use bgrun_core::{NewRun, RunKind, RunTarget, Store};
//! use bgrun_store_postgres::{Notification, PostgresConfig, PostgresStore};
//!
//! # async fn example() -> Result<(), bgrun_core::StoreError> {
//! let store = PostgresStore::connect(
//!     PostgresConfig::new("postgres://bgrun@db.internal/bgrun").with_schema("bgrun"),
//! )
//! .await?;
//! let mut notifications = store.notifications();
//!
//! let created = store
//!     .create_run(NewRun::new(RunTarget::new(RunKind::Agent, "echo"), "hello"))
//!     .await?;
//! store.request_cancel(&created.run().run_id, bgrun_core::now()).await?;
//!
//! // Any replica listening on the schema hears of it.
//! if let Ok(Notification::Cancel { run_id }) = notifications.recv().await {
//!     assert_eq!(run_id, created.run().run_id);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # How it keeps the contract
//! - Every status write is one `UPDATE ... WHERE run_id = $1 AND status = $2`; events go in
//!   the same transaction.
//! - Appends lock the run's row (`FOR UPDATE`), check the log continues, insert the batch in
//!   one statement and move `last_event_index`; once committed, `pg_notify` tells every
//!   replica (in a transaction of its own: see `events::announce`).
//! - Creates, status changes, appends and lease takes/releases of different runs share
//!   transactions: a few writer tasks each commit everything queued at once, every write in a
//!   savepoint of its own so that a refused one fails alone (see `writer`).
//! - Connection errors are retried with backoff. Writes stay exactly-once across a retry whose
//!   earlier attempt may have committed: appends find their events already stored with the
//!   same JSON, creates and transitions find the token they wrote.
//! - A finished run is kept in memory once this store wrote or read it (bounded; it never
//!   changes again), so polling it costs no query (see `finished`).
//! - Leases expire by the database's clock (`now() + ttl`; `clock_timestamp()` in a batch), so replicas' clocks need not agree.
//! - Durable streams: each operation is one transaction on a pooled connection. An append
//!   locks the stream's row (`FOR UPDATE`, so one stream's appends serialise and offsets stay
//!   gapless), reads its producer's state, asks `bgrun_core::stream::plan_append`, and sends its
//!   writes, COMMIT and the notification in one pipelined round trip (see `streams`). An append
//!   or delete whose COMMIT's outcome is unknown fails rather than being repeated.
//! - Migrations run on connect, in one transaction under an advisory lock.
//!
//! Connections are unencrypted (`NoTls`); reach the database over a trusted network or a
//! local socket.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bulk;
mod cancel;
mod config;
mod cursor;
mod events;
mod fault;
mod finished;
mod lease;
mod migrate;
mod notify;
mod record;
mod runs;
mod store;
mod streams;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod writer;

pub use config::{PostgresConfig, MAX_SCHEMA_LEN};
pub use notify::Notification;
pub use store::PostgresStore;
