//! What every engine test uses: a store of each kind, an engine over it, a gated agent.

use std::sync::Arc;

use bgrun_core::{Event, RunId, Store};
use bgrun_exec::{demo, Engine, EngineConfig};
use bgrun_store_sqlite::SqliteStore;
use futures::StreamExt;

pub use bgrun_testkit::runnables::Gated;

/// Where the runs are stored: each test runs on SQLite and on PostgreSQL.
pub enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(bgrun_store_postgres::testing::TestSchema),
}

impl Backend {
    pub fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().unwrap())
    }

    pub fn postgres() -> Self {
        Self::Postgres(bgrun_store_postgres::testing::TestSchema::new())
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(dir) => {
                Arc::new(SqliteStore::open(dir.path().join("runs.db")).await.unwrap())
            }
            Self::Postgres(schema) => Arc::new(schema.store().await.unwrap()),
        }
    }

    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            exclusive_store: matches!(self, Self::Sqlite(_)),
            ..EngineConfig::default()
        }
    }
}

pub struct Fixture {
    pub backend: Backend,
    pub engine: Engine,
    pub gated: Gated,
}

pub async fn open_engine(backend: &Backend, gated: &Gated, config: EngineConfig) -> Engine {
    let registry = demo::registry().with(gated.clone());
    Engine::open(backend.store().await, registry, config)
        .await
        .unwrap()
}

pub async fn fixture_with(
    backend: Backend,
    config: impl FnOnce(EngineConfig) -> EngineConfig,
) -> Fixture {
    let gated = Gated::new();
    let config = config(backend.config());
    let engine = open_engine(&backend, &gated, config).await;
    Fixture {
        backend,
        engine,
        gated,
    }
}

pub async fn fixture(backend: Backend) -> Fixture {
    fixture_with(backend, |config| config).await
}

pub async fn all_events(engine: &Engine, run_id: &RunId, after: Option<u64>) -> Vec<Event> {
    engine
        .events(run_id, after)
        .map(|event| event.unwrap())
        .collect()
        .await
}

pub fn types(events: &[Event]) -> Vec<&str> {
    events.iter().map(Event::event_type).collect()
}

pub fn assert_gapless(events: &[Event], first: u64) {
    for (offset, event) in events.iter().enumerate() {
        assert_eq!(event.index(), first + offset as u64);
        assert_eq!(
            event.fields().unwrap()["event_index"],
            first + offset as u64
        );
    }
}

/// Waits until the run's component has emitted its first event (the run is RUNNING).
pub async fn wait_running(engine: &Engine, run_id: &RunId) {
    let mut events = engine.events(run_id, None);
    while let Some(event) = events.next().await {
        if event.unwrap().event_type() == "RunContent" {
            return;
        }
    }
    panic!("run ended before it streamed");
}

/// Every test named, once per store: `mod sqlite` and `mod postgres` beside them.
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::fixture::Backend::sqlite()).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::fixture::Backend::postgres()).await
            })*
        }
    };
}
