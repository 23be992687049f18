//! bgrun's engine: runs components in detached tasks over a [`Store`](bgrun_core::Store),
//! durably, cancellably and resumably.
//!
//! `start` persists `PENDING` and returns at once; the run executes under a concurrency limit,
//! its events go to the store in batches (group commit) and reach subscribers only once stored;
//! `cancel` works before start, while queued and while running; `resume` gives the rest of a
//! run's events after any index, from memory or from the store.
//!
//! ```
//! use bgrun_core::{RunKind, RunStatus};
//! use bgrun_exec::{ComponentInfo, Engine, EngineConfig, Registry, RunContext, RunFailure, RunOutput, Runnable, StartRequest};
//! use futures::StreamExt;
//!
//! struct Shout;
//!
//! #[bgrun_core::async_trait]
//! impl Runnable for Shout {
//!     fn info(&self) -> ComponentInfo {
//!         ComponentInfo::new(RunKind::Agent, "shout")
//!     }
//!     async fn run(&self, ctx: RunContext) -> Result<RunOutput, RunFailure> {
//!         ctx.emit_content(&ctx.input().to_uppercase()).await?;
//!         Ok(RunOutput::default())
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let store = bgrun_store_sqlite::SqliteStore::open(dir.path().join("runs.db")).await?;
//! let engine = Engine::open(
//!     std::sync::Arc::new(store),
//!     Registry::new().with(Shout),
//!     EngineConfig { exclusive_store: true, ..EngineConfig::default() },
//! ).await?;
//!
//! let started = engine.start(StartRequest::agent("shout", "hello")).await?;
//! assert_eq!(started.run.status, RunStatus::Pending);
//!
//! let run_id = started.run.run_id;
//! let types: Vec<String> = engine.events(&run_id, None)
//!     .map(|event| event.unwrap().event_type().to_owned())
//!     .collect().await;
//! assert_eq!(types, ["RunStarted", "RunContent", "RunCompleted"]);
//! let run = engine.get_run(&run_id).await?.unwrap();
//! assert_eq!(run.content.as_deref(), Some("HELLO"));
//! engine.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod active;
mod active_runs;
mod config;
mod content;
mod context;
pub mod demo;
mod engine;
mod error;
mod metrics;
mod recovery;
mod registry;
mod remote;
mod resume;
mod runnable;
mod runner;
pub mod streams;
pub mod workflow;

pub use config::EngineConfig;
pub use context::{ChildRun, EmitError, RunContext};
pub use engine::{CancelOutcome, Engine, StartRequest, Started, MAX_IDEMPOTENCY_KEY_BYTES};
pub use error::{EngineError, EngineResult};
pub use metrics::EngineMetrics;
pub use registry::Registry;
pub use resume::{Chunk, EventStream, FramedStream, MetaFrame, Resume};
pub use runnable::{ComponentInfo, RunFailure, RunOutput, Runnable};
