//! `bgrun serve`: the settings, the store they name, the server, and a prompt stop on SIGTERM.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bgrun_core::Store;
use bgrun_exec::{Engine, EngineConfig};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// How long runs still executing at a stop may go on before they are interrupted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long, past the grace, open connections may take to close at a stop.
const DRAIN_EXTRA: Duration = Duration::from_secs(1);

/// `bgrun serve`: each flag has an environment variable; the flag wins.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT.
    #[arg(long, env = "BGRUN_BIND", default_value = "127.0.0.1:7777", value_parser = parse_bind)]
    bind: String,
    /// Database: sqlite://<path> (relative, or absolute as sqlite:///abs/dir/bgrun.db) or
    /// postgres://...
    #[arg(
        long,
        env = "BGRUN_DATABASE_URL",
        default_value = "sqlite://bgrun.db",
        value_parser = DatabaseUrl::parse,
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

    let security_key = match args.security_key {
        Some(key) if key.is_empty() => bail!(
            "BGRUN_SECURITY_KEY (--security-key) is empty: set a key, or unset it to run without auth"
        ),
        key => key,
    };
    let listener = TcpListener::bind(&args.bind)
        .await
        .with_context(|| format!("cannot listen on {} (BGRUN_BIND)", args.bind))?;
    let address = listener
        .local_addr()
        .context("reading the listening address")?;

    let (store, exclusive_store) = open_store(&args.database_url).await?;
    let mut config = EngineConfig {
        max_concurrency: usize::try_from(args.max_concurrency).unwrap_or(usize::MAX),
        exclusive_store,
        ..EngineConfig::default()
    };
    config.log.finished_ttl = Duration::from_secs(args.buffer_ttl_secs);
    let engine = Engine::open(store, bgrun_exec::demo::registry(), config)
        .await
        .with_context(|| format!("opening the engine on {}", args.database_url))?;

    let http = bgrun_http::HttpConfig {
        security_key,
        ..bgrun_http::HttpConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = bgrun_http::serve(listener, engine.clone(), http, async move {
        let _ = stopped.await;
    });
    tokio::pin!(server);
    eprintln!(
        "bgrun listening on http://{address} (database {})",
        args.database_url
    );
    tracing::info!(%address, database = %args.database_url, "ready");

    let signal_name = tokio::select! {
        result = &mut server => {
            // The server stopped by itself: that is a failure.
            engine.shutdown(SHUTDOWN_GRACE).await;
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
            engine.shutdown(SHUTDOWN_GRACE),
            tokio::time::timeout(SHUTDOWN_GRACE + DRAIN_EXTRA, &mut server)
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
async fn open_store(url: &DatabaseUrl) -> anyhow::Result<(Arc<dyn Store>, bool)> {
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
                .with_application_name("bgrun");
            let store = bgrun_store_postgres::PostgresStore::connect(config)
                .await
                .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
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
