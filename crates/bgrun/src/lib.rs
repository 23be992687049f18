//! Run AI agent, team and workflow runs in the background: a run is started, returns `PENDING`
//! with a `run_id` at once, executes in a detached task that survives its caller, persists its
//! status and every event, and can be polled, listed, cancelled (also before it starts) and
//! resumed from any event index, exactly once and in order, also after a restart.
//!
//! This crate re-exports the layers: [`bgrun_core`] (run model, [`Store`] trait),
//! [`bgrun_exec`] (the [`Engine`]), the stores behind features (`sqlite`, on by default;
//! `postgres`) and the HTTP server behind `http` (see [`layers`]).
//!
//! ```
//! use bgrun::{demo, Engine, RunStatus, StartRequest};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let engine = bgrun::open_sqlite(dir.path().join("bgrun.db"), demo::registry()).await?;
//!
//! let started = engine.start(StartRequest::agent("echo", "hello background world")).await?;
//! assert_eq!(started.run.status, RunStatus::Pending);
//!
//! let run = engine.wait(&started.run.run_id).await?;
//! assert!(run.has_completed());
//! assert_eq!(run.content.as_deref(), Some("hello background world"));
//! engine.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use bgrun_buffer::LogConfig;
/// For implementing [`Runnable`] and [`Store`].
pub use bgrun_core::async_trait;
pub use bgrun_core::{
    CancellationStage, Event, Frames, ParamSpec, RunFilter, RunId, RunKind, RunPage, RunRecord,
    RunStatus, RunTarget, SessionId, Store, StoreError,
};
pub use bgrun_exec::{
    demo, workflow, CancelOutcome, ChildRun, Chunk, ComponentInfo, Engine, EngineConfig,
    EngineError, EventStream, FramedStream, MetaFrame, Registry, Resume, RunContext, RunFailure,
    RunOutput, Runnable, StartRequest, Started,
};

/// The layers, for what the re-exports above leave out.
pub mod layers {
    pub use bgrun_buffer as buffer;
    pub use bgrun_core as core;
    pub use bgrun_exec as exec;
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub use bgrun_http as http;
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub use bgrun_store_postgres as postgres;
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    pub use bgrun_store_sqlite as sqlite;
}

/// Opens an engine over a SQLite file (created if missing) with the default configuration.
/// One process holds a file at a time; a second gets [`StoreError::Locked`].
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub async fn open_sqlite(
    path: impl AsRef<std::path::Path>,
    registry: Registry,
) -> Result<Engine, EngineError> {
    open_sqlite_with(path, registry, EngineConfig::default()).await
}

/// [`open_sqlite`] with a configuration (its `exclusive_store` is set: SQLite serves one
/// process).
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub async fn open_sqlite_with(
    path: impl AsRef<std::path::Path>,
    registry: Registry,
    config: EngineConfig,
) -> Result<Engine, EngineError> {
    let store = bgrun_store_sqlite::SqliteStore::open(path).await?;
    let config = EngineConfig {
        exclusive_store: true,
        ..config
    };
    Engine::open(std::sync::Arc::new(store), registry, config).await
}

/// Opens an engine over a PostgreSQL database (the schema is created and migrated if needed)
/// with the default configuration. Several engines, in one process or many, may share the
/// database: `exclusive_store` is off, so each leases the runs it executes.
///
/// `config` says where and how: `PostgresConfig::new("postgres://user@host/db")`, see
/// [`layers::postgres::PostgresConfig`].
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub async fn open_postgres(
    config: bgrun_store_postgres::PostgresConfig,
    registry: Registry,
) -> Result<Engine, EngineError> {
    open_postgres_with(config, registry, EngineConfig::default()).await
}

/// [`open_postgres`] with an engine configuration (its `exclusive_store` is cleared: a
/// PostgreSQL database is shared).
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub async fn open_postgres_with(
    config: bgrun_store_postgres::PostgresConfig,
    registry: Registry,
    engine: EngineConfig,
) -> Result<Engine, EngineError> {
    let store = bgrun_store_postgres::PostgresStore::connect(config).await?;
    let engine = EngineConfig {
        exclusive_store: false,
        ..engine
    };
    Engine::open(std::sync::Arc::new(store), registry, engine).await
}
