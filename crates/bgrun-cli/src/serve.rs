//! `bgrun serve`: the settings, the store they name, the server, and a prompt stop on SIGTERM.
//!
//! Replicas: any number of servers on one PostgreSQL database and schema (`BGRUN_PG_SCHEMA`)
//! act as one; each leases the runs it executes (`BGRUN_LEASE_TTL_SECS`, renewed every
//! `BGRUN_LEASE_RENEW_SECS`), so a dead or frozen one's runs are taken over by a live one about a
//! lease TTL later. On SIGTERM a server stops taking runs, lets executing ones go on for
//! `BGRUN_SHUTDOWN_GRACE_SECS`, then ends them `ERROR` "interrupted" (a retryable component's run
//! is left with its lease released, for another replica to run again) and exits; its queued
//! `PENDING` runs stay `PENDING`, adopted by another replica once they waited a lease TTL.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bgrun_core::Store;
use bgrun_exec::{Engine, EngineConfig};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// How long, past the longer of the runs' grace and the HTTP server's own wait, open
/// connections may take to close at a stop.
const DRAIN_EXTRA: Duration = Duration::from_secs(1);

/// `bgrun serve`: each flag has an environment variable; the flag wins.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT.
    #[arg(long, env = "BGRUN_BIND", default_value = "127.0.0.1:7777", value_parser = parse_bind)]
    bind: String,
    /// Database: sqlite://PATH (relative, or absolute as sqlite:///abs/dir/bgrun.db) or
    /// postgres://...
    #[arg(
        long,
        env = "BGRUN_DATABASE_URL",
        default_value = "sqlite://bgrun.db",
        value_parser = DatabaseUrlParser,
        hide_env_values = true
    )]
    database_url: DatabaseUrl,
    /// Bearer key every route but /health then requires (unset: no auth).
    #[arg(long, env = "BGRUN_SECURITY_KEY", hide_env_values = true)]
    security_key: Option<String>,
    /// Runs executing at once in this process; the others wait, PENDING, in start order.
    #[arg(
        long,
        env = "BGRUN_MAX_CONCURRENCY",
        default_value_t = 32,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_concurrency: u32,
    /// Seconds a finished run's events stay in memory (then only the database has them).
    #[arg(long, env = "BGRUN_BUFFER_TTL_SECS", default_value_t = 1800)]
    buffer_ttl_secs: u64,
    /// PostgreSQL schema holding bgrun's tables (created if missing); replicas sharing runs use
    /// the same one. Letters, digits and _, not starting with a digit, at most 48 bytes.
    /// Ignored with SQLite.
    #[arg(long, env = "BGRUN_PG_SCHEMA", default_value = "bgrun", value_parser = parse_schema)]
    pg_schema: String,
    /// Seconds a run's lease lasts without renewal: a replica that dies (or freezes) has its
    /// runs taken over by a live one about this long after. PostgreSQL only.
    #[arg(
        long,
        env = "BGRUN_LEASE_TTL_SECS",
        default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    lease_ttl_secs: u64,
    /// Seconds between lease renewals, each also a look for lapsed leases, cancels and
    /// long-waiting PENDING runs of other replicas. Must be less than --lease-ttl-secs.
    /// PostgreSQL only.
    #[arg(
        long,
        env = "BGRUN_LEASE_RENEW_SECS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    lease_renew_secs: u64,
    /// Seconds runs still executing at a stop (SIGTERM, SIGINT) may go on; then they end ERROR
    /// "interrupted" (retryable components: left for another replica to run again). Queued
    /// PENDING runs are left for another replica (or the next start).
    #[arg(
        long,
        env = "BGRUN_SHUTDOWN_GRACE_SECS",
        default_value_t = 3,
        value_parser = clap::value_parser!(u64).range(0..=3_600)
    )]
    shutdown_grace_secs: u64,
    /// Seconds the server gives requests still in flight at a stop (SIGTERM, SIGINT) to finish,
    /// once it stopped accepting, ended its SSE streams and WebSocket sessions (clients resume)
    /// and answered its long-polls; then it closes them. Runs are stopped meanwhile, with
    /// --shutdown-grace-secs.
    #[arg(
        long,
        env = "BGRUN_HTTP_SHUTDOWN_SECS",
        default_value_t = 3,
        value_parser = clap::value_parser!(u64).range(0..=3_600)
    )]
    http_shutdown_secs: u64,
    /// The largest body of a Durable Streams create or append, in bytes (413 beyond).
    #[arg(
        long,
        env = "BGRUN_STREAM_BODY_LIMIT_BYTES",
        default_value_t = 16 * 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1..=1 << 30)
    )]
    stream_body_limit_bytes: u64,
    /// Seconds a Durable Streams long-poll read waits at the tail before it answers 204 (and
    /// between the control events of an SSE read at the tail).
    #[arg(
        long,
        env = "BGRUN_STREAM_LONG_POLL_SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3_600)
    )]
    stream_long_poll_secs: u64,
    /// Seconds a Durable Streams SSE read stays open before the server ends it (the client
    /// reconnects from its offset).
    #[arg(
        long,
        env = "BGRUN_STREAM_SSE_LIFETIME_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    stream_sse_lifetime_secs: u64,
    /// Seconds between sweeps that delete expired Durable Streams (an expired stream is also
    /// gone at its next access).
    #[arg(
        long,
        env = "BGRUN_STREAM_SWEEP_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    stream_sweep_secs: u64,
}

/// Letters, digits and `_`, not starting with a digit, at most 48 bytes (PostgreSQL's limit
/// on the notification channels named after the schema).
fn parse_schema(schema: &str) -> Result<String, String> {
    const MAX_LEN: usize = 48;
    let mut chars = schema.chars();
    let valid_start = chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_');
    let valid_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid_start && valid_rest && schema.len() <= MAX_LEN {
        Ok(schema.to_owned())
    } else {
        Err(format!(
            "{schema:?} is not a schema name: letters, digits and _, not starting with a digit, \
             at most {MAX_LEN} bytes"
        ))
    }
}

/// The engine's settings from the server's; a renewal period not shorter than the lease is an
/// error.
fn engine_config(args: &ServeArgs) -> anyhow::Result<EngineConfig> {
    if args.lease_renew_secs >= args.lease_ttl_secs {
        bail!(
            "BGRUN_LEASE_RENEW_SECS (--lease-renew-secs) is {} but must be less than \
             BGRUN_LEASE_TTL_SECS (--lease-ttl-secs), {}: leases would lapse before renewal",
            args.lease_renew_secs,
            args.lease_ttl_secs
        );
    }
    let mut config = EngineConfig {
        max_concurrency: usize::try_from(args.max_concurrency).unwrap_or(usize::MAX),
        lease_ttl: Duration::from_secs(args.lease_ttl_secs),
        lease_renew_every: Duration::from_secs(args.lease_renew_secs),
        ..EngineConfig::default()
    };
    config.log.finished_ttl = Duration::from_secs(args.buffer_ttl_secs);
    config.stream_sweep_every = Duration::from_secs(args.stream_sweep_secs);
    Ok(config)
}

/// The HTTP layer's settings from the server's.
fn http_config(args: &ServeArgs, security_key: Option<String>) -> bgrun_http::HttpConfig {
    bgrun_http::HttpConfig {
        security_key,
        stream_body_limit: usize::try_from(args.stream_body_limit_bytes).unwrap_or(usize::MAX),
        stream_long_poll: Duration::from_secs(args.stream_long_poll_secs),
        stream_sse_lifetime: Duration::from_secs(args.stream_sse_lifetime_secs),
        shutdown_timeout: Duration::from_secs(args.http_shutdown_secs),
        ..bgrun_http::HttpConfig::default()
    }
}

/// Where the runs are stored.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (the URL as given).
    Postgres(String),
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            // Never print the password.
            DatabaseUrl::Postgres(url) => match reqwest::Url::parse(url) {
                Ok(mut url) => {
                    if url.password().is_some() {
                        let _ = url.set_password(Some("***"));
                    }
                    write!(f, "{url}")
                }
                Err(_) => f.write_str("postgres://(unparsable)"),
            },
        }
    }
}

impl DatabaseUrl {
    /// Reads `sqlite://<path>` or `postgres://...` (`postgresql://` too).
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(String::from(
                    "sqlite:// needs a path: sqlite://bgrun.db (relative) or sqlite:///abs/dir/bgrun.db",
                ));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        // Only the scheme goes in the message: the rest may hold a password.
        let scheme = url.split_once(':').map_or("(none)", |(scheme, _)| scheme);
        Err(format!(
            "unknown database URL scheme {scheme:?}: expected sqlite://<path> or postgres://..."
        ))
    }
}

/// [`DatabaseUrl::parse`] for clap, whose own message for a bad value would quote the value,
/// password included.
#[derive(Clone)]
struct DatabaseUrlParser;

impl clap::builder::TypedValueParser for DatabaseUrlParser {
    type Value = DatabaseUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DatabaseUrl, clap::Error> {
        let invalid = |message: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid --database-url (BGRUN_DATABASE_URL): {message}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| invalid("not UTF-8"))?;
        DatabaseUrl::parse(text).map_err(|message| invalid(&message))
    }
}

/// Checks HOST:PORT (a numeric port, a host); the host is resolved when binding.
fn parse_bind(bind: &str) -> Result<String, String> {
    let usage =
        || format!("{bind:?} is not HOST:PORT (e.g. 127.0.0.1:7777, [::1]:7777, localhost:7777)");
    let (host, port) = bind.rsplit_once(':').ok_or_else(usage)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(usage());
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(usage()); // an IPv6 address needs its brackets
    }
    Ok(bind.to_owned())
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Signals first: a stop asked for during start-up is not lost.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let security_key = match args.security_key.clone() {
        Some(key) if key.is_empty() => bail!(
            "BGRUN_SECURITY_KEY (--security-key) is empty: set a key, or unset it to run without auth"
        ),
        key => key,
    };
    let mut config = engine_config(&args)?;
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    let listener = TcpListener::bind(&args.bind)
        .await
        .with_context(|| format!("cannot listen on {} (BGRUN_BIND)", args.bind))?;
    let address = listener
        .local_addr()
        .context("reading the listening address")?;

    let (store, exclusive_store) = open_store(&args.database_url, &args.pg_schema).await?;
    config.exclusive_store = exclusive_store;
    let engine = Engine::open(store, bgrun_exec::demo::registry(), config)
        .await
        .with_context(|| format!("opening the engine on {}", args.database_url))?;

    let http = http_config(&args, security_key);
    let drain_for = grace.max(http.shutdown_timeout) + DRAIN_EXTRA;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = bgrun_http::serve(listener, engine.clone(), http, async move {
        let _ = stopped.await;
    });
    tokio::pin!(server);
    let schema = match args.database_url {
        DatabaseUrl::Postgres(_) => format!(", schema {}", args.pg_schema),
        DatabaseUrl::Sqlite(_) => String::new(),
    };
    eprintln!(
        "bgrun listening on http://{address} (database {}{schema})",
        args.database_url
    );
    tracing::info!(%address, database = %args.database_url, schema = %args.pg_schema, "ready");

    let signal_name = tokio::select! {
        result = &mut server => {
            // The server stopped by itself: that is a failure.
            engine.shutdown(grace).await;
            result.context("the HTTP server failed")?;
            bail!("the HTTP server stopped unexpectedly");
        }
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!("{signal_name}: stopping (a second signal stops at once)");
    let _ = stop.send(());
    // Runs get the grace period; streams following them end with their terminal events.
    let drain = async {
        let (_, served) = tokio::join!(
            engine.shutdown(grace),
            tokio::time::timeout(drain_for, &mut server)
        );
        match served {
            Ok(result) => result.context("the HTTP server failed while stopping"),
            Err(_) => {
                tracing::warn!("connections still open at the stop were dropped");
                Ok(())
            }
        }
    };
    tokio::select! {
        result = drain => {
            tracing::info!("stopped");
            result
        }
        _ = sigterm.recv() => bail!("stopped at once by a second signal"),
        _ = sigint.recv() => bail!("stopped at once by a second signal"),
    }
}

/// Opens the store the URL names; also says whether it serves this process alone.
#[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
async fn open_store(url: &DatabaseUrl, schema: &str) -> anyhow::Result<(Arc<dyn Store>, bool)> {
    match url {
        DatabaseUrl::Sqlite(path) => {
            let store = bgrun_store_sqlite::SqliteStore::open(path)
                .await
                .with_context(|| format!("opening the SQLite database {}", path.display()))?;
            Ok((Arc::new(store), true))
        }
        #[cfg(feature = "postgres")]
        DatabaseUrl::Postgres(raw) => {
            let config = bgrun_store_postgres::PostgresConfig::new(raw.clone())
                .with_schema(schema)
                .with_application_name("bgrun");
            let store = bgrun_store_postgres::PostgresStore::connect(config)
                .await
                .with_context(|| format!("connecting to PostgreSQL at {url} (schema {schema})"))?;
            Ok((Arc::new(store), false))
        }
        #[cfg(not(feature = "postgres"))]
        DatabaseUrl::Postgres(_) => bail!(
            "postgres support is not in this build of bgrun (build bgrun-cli with the `postgres` feature)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://bgrun.db").unwrap(),
            DatabaseUrl::Sqlite("bgrun.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///abs/dir/bgrun.db").unwrap(),
            DatabaseUrl::Sqlite("/abs/dir/bgrun.db".into())
        );
        assert!(matches!(
            DatabaseUrl::parse("postgres://u:p@h/db").unwrap(),
            DatabaseUrl::Postgres(_)
        ));
        assert!(DatabaseUrl::parse("sqlite://").is_err());
        let error = DatabaseUrl::parse("mysql://root:secret@h/db").unwrap_err();
        assert!(error.contains("\"mysql\""), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn postgres_urls_print_without_password() {
        let url = DatabaseUrl::parse("postgres://bgrun:secret@db:5432/bgrun").unwrap();
        assert_eq!(url.to_string(), "postgres://bgrun:***@db:5432/bgrun");
    }

    /// `bgrun serve`'s arguments alone, for parsing in tests.
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        use clap::Parser;
        Serve::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .map(|serve| serve.args)
    }

    #[test]
    fn a_bad_database_url_is_refused_without_its_password() {
        let error = parse(&["--database-url", "postgress://bgrun:secret@db/bgrun"])
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("--database-url"), "{error}");
        assert!(error.contains("\"postgress\""), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn lease_and_grace_settings() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.pg_schema, "bgrun");
        assert_eq!(args.shutdown_grace_secs, 3);
        let http = http_config(&args, None);
        assert_eq!(
            http.shutdown_timeout,
            bgrun_http::HttpConfig::default().shutdown_timeout
        );
        let args_http = parse(&["--http-shutdown-secs", "30"]).unwrap();
        assert_eq!(
            http_config(&args_http, None).shutdown_timeout,
            Duration::from_secs(30)
        );
        let config = engine_config(&args).unwrap();
        assert_eq!(config.lease_ttl, Duration::from_secs(20));
        assert_eq!(config.lease_renew_every, Duration::from_secs(5));

        let args = parse(&["--lease-ttl-secs", "2", "--lease-renew-secs", "1"]).unwrap();
        let config = engine_config(&args).unwrap();
        assert_eq!(config.lease_ttl, Duration::from_secs(2));
        assert_eq!(config.lease_renew_every, Duration::from_secs(1));

        for (ttl, renew) in [("5", "5"), ("2", "10")] {
            let args = parse(&["--lease-ttl-secs", ttl, "--lease-renew-secs", renew]).unwrap();
            let error = engine_config(&args).unwrap_err().to_string();
            assert!(error.contains("must be less than"), "{error}");
        }
        for bad in [
            &["--lease-ttl-secs", "0"][..],
            &["--lease-renew-secs", "0"],
            &["--lease-ttl-secs", "x"],
            &["--shutdown-grace-secs", "-1"],
            &["--http-shutdown-secs", "3601"],
            &["--pg-schema", "9x"],
            &["--pg-schema", "a-b"],
            &["--pg-schema", ""],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durable_streams_settings() {
        let args = parse(&[]).unwrap();
        let http = http_config(&args, None);
        let defaults = bgrun_http::HttpConfig::default();
        assert_eq!(http.stream_body_limit, defaults.stream_body_limit);
        assert_eq!(http.stream_long_poll, defaults.stream_long_poll);
        assert_eq!(http.stream_sse_lifetime, defaults.stream_sse_lifetime);
        let defaults = EngineConfig::default();
        assert_eq!(
            engine_config(&args).unwrap().stream_sweep_every,
            defaults.stream_sweep_every
        );

        let args = parse(&[
            "--stream-body-limit-bytes",
            "1024",
            "--stream-long-poll-secs",
            "2",
            "--stream-sse-lifetime-secs",
            "30",
            "--stream-sweep-secs",
            "5",
        ])
        .unwrap();
        let http = http_config(&args, None);
        assert_eq!(http.stream_body_limit, 1024);
        assert_eq!(http.stream_long_poll, Duration::from_secs(2));
        assert_eq!(http.stream_sse_lifetime, Duration::from_secs(30));
        assert_eq!(
            engine_config(&args).unwrap().stream_sweep_every,
            Duration::from_secs(5)
        );
        for bad in [
            &["--stream-body-limit-bytes", "0"][..],
            &["--stream-body-limit-bytes", "2147483648"],
            &["--stream-long-poll-secs", "0"],
            &["--stream-sse-lifetime-secs", "x"],
            &["--stream-sweep-secs", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn schema_names() {
        for good in ["bgrun", "_t_0a", "Tenant_7"] {
            assert_eq!(parse_schema(good).unwrap(), good);
        }
        for bad in ["", "9x", "a\"b", "a.b", &"a".repeat(49)] {
            assert!(parse_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bind_addresses() {
        for good in ["127.0.0.1:7777", "[::1]:0", "localhost:80", "0.0.0.0:65535"] {
            assert_eq!(parse_bind(good).unwrap(), good);
        }
        for bad in ["7777", "127.0.0.1", ":7777", "h:99999", "h:x", "::1:7777"] {
            assert!(parse_bind(bad).is_err(), "{bad}");
        }
    }
}
