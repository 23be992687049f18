//! How to reach the database and how the store behaves on it.

use std::time::Duration;

use bgrun_core::StoreError;

/// The longest schema name accepted: channel names (`<schema>_durable`) must stay within
/// PostgreSQL's 63-byte identifier limit.
pub const MAX_SCHEMA_LEN: usize = 48;

/// Settings for [`PostgresStore::connect`](crate::PostgresStore::connect).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// A libpq-style URL or key/value string: `postgres://user@host:5432/db`.
    pub url: String,
    /// The schema holding bgrun's tables, created if missing. Letters, digits and `_`, not
    /// starting with a digit, at most [`MAX_SCHEMA_LEN`] bytes. Default `bgrun`.
    pub schema: String,
    /// The most pooled connections (the LISTEN connection is extra). Default 16.
    pub pool_size: usize,
    /// How long opening one connection may take. Default 10 s.
    pub connect_timeout: Duration,
    /// The `application_name` the connections report (in `pg_stat_activity`), overriding the
    /// URL's. Default `None`: the URL's, or `bgrun`.
    pub application_name: Option<String>,
    /// How many times an operation is retried after a connection error (reads, cancels,
    /// leases, and writes whose retry is made safe). Default 8.
    pub max_retries: u32,
    /// The first retry's delay, doubled per retry up to 1 s. Default 25 ms.
    pub retry_base_delay: Duration,
    /// How many notifications a slow [`notifications`](crate::PostgresStore::notifications)
    /// receiver may fall behind before it sees `Lagged`. Default 1024.
    pub notification_capacity: usize,
}

impl PostgresConfig {
    /// The defaults, for the database at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "bgrun".into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(10),
            application_name: None,
            max_retries: 8,
            retry_base_delay: Duration::from_millis(25),
            notification_capacity: 1024,
        }
    }

    /// The same, using `schema`.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The same, with at most `pool_size` pooled connections.
    pub fn with_pool_size(mut self, pool_size: usize) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// The same, reporting `name` as the connections' `application_name`.
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Parses the URL and applies the settings that live in the connection config.
    pub(crate) fn pg_config(&self) -> Result<tokio_postgres::Config, StoreError> {
        validate_schema(&self.schema)?;
        if self.pool_size == 0 {
            return Err(invalid_config("pool_size must be at least 1"));
        }
        let mut pg: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|error| StoreError::backend("parsing the PostgreSQL URL", error))?;
        pg.connect_timeout(self.connect_timeout);
        // The listening connection only ever receives: without keepalives a peer or middlebox
        // that drops it silently (a NAT, a load balancer) would go unnoticed for the system's
        // default two hours, with no reconnect and no re-sync. Settings in the URL win.
        if pg.get_keepalives_idle() == DEFAULT_KEEPALIVES_IDLE {
            pg.keepalives_idle(KEEPALIVES_IDLE);
        }
        if pg.get_keepalives_interval().is_none() {
            pg.keepalives_interval(KEEPALIVES_INTERVAL);
        }
        if pg.get_keepalives_retries().is_none() {
            pg.keepalives_retries(KEEPALIVES_RETRIES);
        }
        match &self.application_name {
            Some(name) => {
                pg.application_name(name);
            }
            None if pg.get_application_name().is_none() => {
                pg.application_name("bgrun");
            }
            None => {}
        }
        Ok(pg)
    }
}

/// tokio-postgres's idle time before the first keepalive probe, when the URL sets none.
const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
/// Idle time before the first keepalive probe: with the interval and retries below, a silently
/// dropped connection is found within about a minute.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVES_RETRIES: u32 = 3;

fn validate_schema(schema: &str) -> Result<(), StoreError> {
    let mut chars = schema.chars();
    let valid_start = chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_');
    let valid_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid_start && valid_rest && schema.len() <= MAX_SCHEMA_LEN {
        Ok(())
    } else {
        Err(invalid_config(format!(
            "schema {schema:?} must be letters, digits and _, not start with a digit, \
             and be at most {MAX_SCHEMA_LEN} bytes"
        )))
    }
}

fn invalid_config(message: impl Into<String>) -> StoreError {
    StoreError::backend(
        "invalid PostgreSQL store configuration",
        bgrun_core::InvalidInput::new(message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(validate_schema("bgrun").is_ok());
        assert!(validate_schema("_t_0a").is_ok());
        assert!(validate_schema("").is_err());
        assert!(validate_schema("9x").is_err());
        assert!(validate_schema("a\"b").is_err());
        assert!(validate_schema(&"a".repeat(MAX_SCHEMA_LEN + 1)).is_err());
    }

    #[test]
    fn application_name_defaults_to_bgrun_unless_the_url_sets_one() {
        let config = PostgresConfig::new("postgres://u@h/db");
        assert_eq!(
            config.pg_config().unwrap().get_application_name(),
            Some("bgrun")
        );
        let config = PostgresConfig::new("postgres://u@h/db?application_name=x");
        assert_eq!(
            config.pg_config().unwrap().get_application_name(),
            Some("x")
        );
        let config = config.with_application_name("y");
        assert_eq!(
            config.pg_config().unwrap().get_application_name(),
            Some("y")
        );
    }

    #[test]
    fn connections_probe_an_idle_peer_within_a_minute_unless_the_url_says_otherwise() {
        let pg = PostgresConfig::new("postgres://u@h/db")
            .pg_config()
            .unwrap();
        assert!(pg.get_keepalives());
        let found_dead_after = pg.get_keepalives_idle()
            + pg.get_keepalives_interval().unwrap() * pg.get_keepalives_retries().unwrap();
        assert!(
            found_dead_after <= Duration::from_secs(60),
            "{found_dead_after:?}"
        );

        let pg = PostgresConfig::new(
            "postgres://u@h/db?keepalives_idle=5&keepalives_interval=2&keepalives_retries=9",
        )
        .pg_config()
        .unwrap();
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(5));
        assert_eq!(pg.get_keepalives_interval(), Some(Duration::from_secs(2)));
        assert_eq!(pg.get_keepalives_retries(), Some(9));
    }
}
