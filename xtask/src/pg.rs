//! PostgreSQL for the tests: the one `BGRUN_TEST_PG_URL` names, a local server, or a
//! throwaway cluster started here and stopped when its guard drops.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// The variable the PostgreSQL store's tests read their database URL from.
pub const URL_VAR: &str = "BGRUN_TEST_PG_URL";

/// A server the development machines usually have: trust auth, database `test`.
const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

const HOW_TO_GET_ONE: &str = "no PostgreSQL found for the tests: set BGRUN_TEST_PG_URL to a \
    database URL (postgres://user@host:port/db), or run a server on 127.0.0.1:5432 with a \
    database `test` that user `postgres` reaches without a password, or install PostgreSQL's \
    server binaries (`apt-get install postgresql`; initdb and pg_ctl on PATH or under \
    /usr/lib/postgresql/*/bin) so a throwaway cluster can be started";

/// A throwaway PostgreSQL cluster in a temporary folder: trust auth, listening on 127.0.0.1 on
/// a free port and on a unix socket in the folder. Dropping it stops the server and removes
/// the folder.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    run_as: Option<String>,
    url: String,
}

impl PgCluster {
    /// `postgres://postgres@127.0.0.1:<port>/test`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data.to_string_lossy().into_owned();
        let stopped = run(
            self.run_as.as_deref(),
            &pg_ctl,
            &["stop", "-D", &data, "-m", "fast", "-w"],
        );
        if let Err(error) = stopped {
            eprintln!("could not stop the throwaway PostgreSQL: {error:#}");
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {error}", self.dir.display());
        }
    }
}

/// The URL the tests should use, and the cluster to keep alive while they run (if one was
/// started): `BGRUN_TEST_PG_URL` when set; else the server at 127.0.0.1:5432 when it answers;
/// else a throwaway cluster; else an error saying how to get PostgreSQL.
pub fn test_database_url() -> Result<(String, Option<PgCluster>)> {
    if let Ok(url) = std::env::var(URL_VAR) {
        if !url.trim().is_empty() {
            return Ok((url, None));
        }
    }
    if local_server_answers() {
        return Ok((LOCAL_URL.to_string(), None));
    }
    let cluster = start_throwaway().context(HOW_TO_GET_ONE)?;
    Ok((cluster.url().to_string(), Some(cluster)))
}

/// Whether `LOCAL_URL` accepts a query (with `psql`), or at least connections (with
/// `pg_isready`, when `psql` is missing).
fn local_server_answers() -> bool {
    let psql = Command::new("psql")
        .args([LOCAL_URL, "-XAtqc", "SELECT 1"])
        .output();
    match psql {
        Ok(output) => {
            output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "1"
        }
        Err(_) => Command::new("pg_isready")
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                "5432",
                "-U",
                "postgres",
                "-d",
                "test",
            ])
            .status()
            .is_ok_and(|status| status.success()),
    }
}

/// Starts a throwaway cluster (see [`PgCluster`]) with a database `test`. As root, the server
/// runs as the `postgres` user when there is one, else as `nobody` (PostgreSQL refuses root).
pub fn start_throwaway() -> Result<PgCluster> {
    let bin = server_bin_dir().context("initdb and pg_ctl not found")?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("bgrun-pg-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let run_as = if is_root() {
        let user = if user_exists("postgres") {
            "postgres"
        } else {
            "nobody"
        };
        let owner = format!("{user}:");
        run(
            None,
            Path::new("chown"),
            &["-R", &owner, &dir.to_string_lossy()],
        )?;
        Some(user.to_string())
    } else {
        None
    };
    let data = dir.join("data");
    // From here on, the guard cleans up whatever was started.
    let mut cluster = PgCluster {
        dir: dir.clone(),
        data: data.clone(),
        bin: bin.clone(),
        run_as,
        url: String::new(),
    };
    let user = cluster.run_as.as_deref();
    let data_arg = data.to_string_lossy().into_owned();
    run(
        user,
        &bin.join("initdb"),
        &[
            "-D",
            &data_arg,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
    )?;
    let port = free_port()?;
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
        dir.display()
    );
    let log = dir.join("server.log").to_string_lossy().into_owned();
    run(
        user,
        &bin.join("pg_ctl"),
        &[
            "start", "-D", &data_arg, "-l", &log, "-w", "-t", "60", "-o", &options,
        ],
    )
    .with_context(|| format!("starting PostgreSQL (its log: {log})"))?;
    let port_arg = port.to_string();
    let createdb = bin.join("createdb");
    let createdb = if createdb.exists() {
        createdb
    } else {
        PathBuf::from("createdb")
    };
    run(
        user,
        &createdb,
        &["-h", "127.0.0.1", "-p", &port_arg, "-U", "postgres", "test"],
    )?;
    cluster.url = format!("postgres://postgres@127.0.0.1:{port}/test");
    Ok(cluster)
}

/// The folder holding `initdb` and `pg_ctl`: from PATH, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn server_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    });
    if let Some(dir) = on_path {
        // Resolve a symlinked initdb to its real folder, where the other server binaries are.
        return std::fs::canonicalize(dir.join("initdb"))
            .ok()
            .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
            .filter(|real| real.join("pg_ctl").is_file())
            .or(Some(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

fn user_exists(user: &str) -> bool {
    Command::new("id")
        .arg(user)
        .output()
        .is_ok_and(|output| output.status.success())
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Runs `program` (as `user` through `runuser`, when given); fails with its output.
fn run(user: Option<&str>, program: &Path, args: &[&str]) -> Result<Output> {
    let mut command = match user {
        Some(user) => {
            let mut command = Command::new("runuser");
            command.args(["-u", user, "--"]).arg(program);
            command
        }
        None => Command::new(program),
    };
    command.args(args);
    let output = command
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} failed ({}): {}{}",
            program.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}
