//! Test support: the test database's URL and a throwaway schema per test.
//!
//! Tests read the URL from `BGRUN_TEST_PG_URL`. When it is unset they fail (they never pass
//! silently): run `cargo xtask test-all`, which provides a PostgreSQL, or set the variable.

use crate::{PostgresConfig, PostgresStore};
use bgrun_core::StoreError;

/// The environment variable holding the test database's URL.
pub const URL_VAR: &str = "BGRUN_TEST_PG_URL";

/// The test database's URL, from [`URL_VAR`].
///
/// # Panics
/// When the variable is unset or empty, with a message saying how to get a database.
pub fn database_url() -> String {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{URL_VAR} is not set: the PostgreSQL store's tests need a database. Run \
             `cargo xtask test-all` (it finds or starts one), or start one with `cargo xtask pg` \
             and set {URL_VAR}=postgres://... to the URL it prints"
        ),
    }
}

/// A schema of its own for one test, named `t_<random>`, dropped (with everything in it) when
/// this guard is dropped, also when the test fails.
#[derive(Debug)]
pub struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    /// A fresh schema name on the database at [`database_url`]. The schema itself is created
    /// by the first store that connects to it.
    pub fn new() -> Self {
        Self {
            url: database_url(),
            name: format!("t_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// The schema's name; also the `application_name` of its stores' connections.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A store configuration on this schema: quick retries, a small pool, connections named
    /// after the schema (so a test can find and kill exactly its own).
    pub fn config(&self) -> PostgresConfig {
        let mut config = PostgresConfig::new(&self.url)
            .with_schema(&self.name)
            .with_pool_size(4)
            .with_application_name(&self.name);
        config.retry_base_delay = std::time::Duration::from_millis(10);
        config.max_retries = 10;
        config
    }

    /// Connects a store to this schema (creating it on first use).
    pub async fn store(&self) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(self.config()).await
    }

    /// Terminates every server connection of this schema's stores (as a crash or a failover
    /// would); returns how many. The stores reconnect on their own.
    pub async fn terminate_connections(&self) -> Result<u64, tokio_postgres::Error> {
        let client = connect(&self.url).await?;
        let row = client
            .query_one(TERMINATE_CONNECTIONS, &[&self.name])
            .await?;
        Ok(row.get::<_, i64>(0).unsigned_abs())
    }

    /// Runs `sql` (statements separated by `;`) on its own connection, to set a test's scene
    /// (a trigger, a lock held elsewhere).
    pub async fn execute(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        connect(&self.url).await?.batch_execute(sql).await
    }

    /// Drops the schema. A store still using it (a test's engine is often dropped after its
    /// schema, with runs still writing) may hold locks the drop waits for, or deadlock with it:
    /// its connections are terminated first, and a failed drop is tried again.
    async fn drop_schema(url: &str, name: &str) -> Result<(), tokio_postgres::Error> {
        const ATTEMPTS: u32 = 5;
        let client = connect(url).await?;
        let mut attempt = 1;
        loop {
            client.query_one(TERMINATE_CONNECTIONS, &[&name]).await?;
            match client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .await
            {
                Err(error) if error.as_db_error().is_some() && attempt < ATTEMPTS => {
                    // Backoff before the next attempt, not synchronisation: the stores that
                    // reconnect meanwhile are terminated again.
                    tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(attempt)))
                        .await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }
}

impl Default for TestSchema {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime, which cannot block: use a thread with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime
                .block_on(Self::drop_schema(&url, &name))
                .map_err(|error| error.to_string())
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop test schema {}: {error}", self.name),
            Err(_) => eprintln!(
                "could not drop test schema {}: the thread panicked",
                self.name
            ),
        }
    }
}

/// Terminates the server connections named `$1` (a schema's stores'); answers how many.
const TERMINATE_CONNECTIONS: &str =
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = $1";

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        // The connection ends with the client; its error, if any, surfaces through the client.
        let _ = connection.await;
    });
    Ok(client)
}
