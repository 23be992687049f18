//! `cargo xtask ds-conformance`: the official Durable Streams server conformance suite
//! (`@durable-streams/server-conformance-tests` from npm, pinned, unmodified) against
//! `bgrun serve`, once on SQLite and once on PostgreSQL.
//!
//! The suite is installed with npm into `target/ds-conformance/` (a `package.json` written
//! there pins it; npm writes the lockfile beside it). Each store gets its own `bgrun serve`
//! (built first) on a free port; the suite's own runner is pointed at the server's root URL
//! (it adds `/v1/stream/...` itself). Its full output goes to
//! `target/ds-conformance/suite-<store>.log`; its summary is printed. Any failure makes the
//! command fail.
//!
//! Options: `--store sqlite|postgres|all` (default `all`), `--url <base>` (run the suite
//! against a server already running there instead, e.g. the Node reference server),
//! `--verbose` (stream the suite's whole output too).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::{cargo, pg, root, run};

/// The suite version, pinned exactly (its dependencies are pinned by the lockfile npm writes).
pub const SUITE_VERSION: &str = "0.3.6";
const SUITE_PACKAGE: &str = "@durable-streams/server-conformance-tests";
/// The suite's runner (a bin of the package): `--run <base-url>` runs vitest once.
const SUITE_BIN: &str = "server-conformance-tests";

/// vitest's settings for the suite's run (in `target/ds-conformance/`, its working directory):
/// the suite's entry as the only test file, and the timeouts upstream's CLI config uses.
const VITEST_CONFIG: &str = r#"// Written by cargo xtask ds-conformance.
import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["node_modules/@durable-streams/server-conformance-tests/dist/test-runner.js"],
    exclude: [],
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
})
"#;

/// How long `bgrun serve` may take to answer `/health`.
const HEALTH_DEADLINE: Duration = Duration::from_secs(30);
/// How long `bgrun serve` may take to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// The suite's counts, from its summary line (`Tests  3 failed | 335 passed (338)`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    failed: u32,
    passed: u32,
    skipped: u32,
    total: u32,
}

/// What one run of the suite gave.
struct Outcome {
    label: String,
    exit_ok: bool,
    counts: Option<Counts>,
    summary: Vec<String>,
    log: PathBuf,
    /// The npm client test against the same server (`None`: not run, as with `--url`).
    client: Option<Result<String, String>>,
}

pub fn ds_conformance(args: &[String]) -> Result<()> {
    let mut store = "all".to_string();
    let mut url: Option<String> = None;
    let mut verbose = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--store" => store = rest.next().context("--store needs a value")?.clone(),
            "--url" => url = Some(rest.next().context("--url needs a value")?.clone()),
            "--verbose" => verbose = true,
            other => bail!(
                "ds-conformance: unknown argument {other:?} (usage: cargo xtask ds-conformance \
                 [--store sqlite|postgres|all] [--url <base>] [--verbose])"
            ),
        }
    }
    let stores: &[&str] = match store.as_str() {
        "all" => &["sqlite", "postgres"],
        "sqlite" => &["sqlite"],
        "postgres" => &["postgres"],
        other => bail!("--store {other:?}: expected sqlite, postgres or all"),
    };

    let dir = root().join("target/ds-conformance");
    let suite = install_suite(&dir)?;
    let mut outcomes = Vec::new();
    if let Some(base) = url {
        outcomes.push(run_suite(&suite, &dir, &base, "url", verbose)?);
    } else {
        run("build bgrun", cargo().args(["build", "-p", "bgrun-cli"]))?;
        let bgrun = root().join("target/debug/bgrun");
        for store in stores {
            outcomes.push(against_bgrun(&bgrun, &suite, &dir, store, verbose)?);
        }
    }

    println!("\nDurable Streams conformance ({SUITE_PACKAGE}@{SUITE_VERSION}):");
    let mut all_passed = true;
    for outcome in &outcomes {
        let client_ok = !matches!(outcome.client, Some(Err(_)));
        let verdict = match outcome.counts {
            Some(counts) if outcome.exit_ok && counts.failed == 0 && client_ok => "PASS",
            _ => "FAIL",
        };
        all_passed &= verdict == "PASS";
        let counts = outcome.counts.map_or_else(
            || "no summary found".to_string(),
            |c| {
                format!(
                    "{} tests: {} passed, {} failed, {} skipped",
                    c.total, c.passed, c.failed, c.skipped
                )
            },
        );
        println!("  {verdict} {:<9} {counts}", outcome.label);
        for line in &outcome.summary {
            println!("      {line}");
        }
        println!("      full output: {}", outcome.log.display());
        match &outcome.client {
            Some(Ok(report)) => println!("      npm client ({CLIENT_DIR}): {report}"),
            Some(Err(why)) => println!("      npm client ({CLIENT_DIR}) FAILED: {why}"),
            None => {}
        }
    }
    if !all_passed {
        bail!("ds-conformance: the suite failed");
    }
    Ok(())
}

/// The npm client test, in the repository (its `package.json` pins the client).
const CLIENT_DIR: &str = "tests/ds-client";
/// Its script.
const CLIENT_SCRIPT: &str = "resume-run.mjs";

/// Runs the npm client test (a live run read through `@durable-streams/client`, resumed by
/// offset) against `base`: installed into `target/ds-client` (copied there so node_modules stay
/// out of the tree). `Ok` with its report, `Err` with why it failed.
fn run_client_test(base: &str) -> Result<String, String> {
    let source = root().join(CLIENT_DIR);
    let dir = root().join("target/ds-client");
    let prepare = || -> Result<()> {
        std::fs::create_dir_all(&dir)?;
        for file in ["package.json", CLIENT_SCRIPT] {
            std::fs::copy(source.join(file), dir.join(file))
                .with_context(|| format!("copying {CLIENT_DIR}/{file}"))?;
        }
        run(
            "npm install (the Durable Streams client)",
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund"])
                .current_dir(&dir),
        )
    };
    prepare().map_err(|error| format!("{error:#}"))?;
    eprintln!("\n== npm client test against {base}");
    let output = Command::new("node")
        .arg(CLIENT_SCRIPT)
        .arg(base)
        .current_dir(&dir)
        .output()
        .map_err(|error| format!("starting node: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if output.status.success() {
        Ok(stdout.replace('\n', "; "))
    } else {
        Err(format!("{}\n{stdout}\n{stderr}", output.status))
    }
}

/// Whether `node` and `npm` are on PATH (`cargo xtask test-all` runs the suite only then).
pub fn node_available() -> bool {
    ["node", "npm"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

/// Writes the pinning `package.json` and runs `npm install`; returns the suite's runner.
fn install_suite(dir: &Path) -> Result<PathBuf> {
    if !node_available() {
        bail!("ds-conformance needs `node` and `npm` on PATH (Node.js 18 or later)");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let manifest = serde_json::json!({
        "name": "bgrun-ds-conformance",
        "private": true,
        "description": "Written by cargo xtask ds-conformance: the pinned Durable Streams suite.",
        "dependencies": { SUITE_PACKAGE: SUITE_VERSION },
    });
    let manifest_path = dir.join("package.json");
    let text = serde_json::to_string_pretty(&manifest)? + "\n";
    if std::fs::read_to_string(&manifest_path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&manifest_path, text)
            .with_context(|| format!("writing {}", manifest_path.display()))?;
    }
    run(
        "npm install (the conformance suite)",
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(dir),
    )?;
    let installed = dir
        .join("node_modules")
        .join(SUITE_PACKAGE)
        .join("package.json");
    let installed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&installed)
            .with_context(|| format!("reading {}", installed.display()))?,
    )?;
    if installed["version"].as_str() != Some(SUITE_VERSION) {
        bail!(
            "npm installed {SUITE_PACKAGE}@{} but {SUITE_VERSION} is pinned",
            installed["version"]
        );
    }
    // The runner starts vitest in its working directory, which finds no test file there (its
    // entry is under node_modules, which vitest excludes by default; upstream issue #284, fix
    // pending in PR #407): this config, the one that fix adds, makes vitest run the entry.
    let config_path = dir.join("vitest.config.mjs");
    std::fs::write(&config_path, VITEST_CONFIG)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let bin = dir.join("node_modules/.bin").join(SUITE_BIN);
    if !bin.exists() {
        bail!("{} is missing after npm install", bin.display());
    }
    Ok(bin)
}

/// Starts `bgrun serve` on `store`, runs the suite against it, stops it.
fn against_bgrun(
    bgrun: &Path,
    suite: &Path,
    dir: &Path,
    store: &str,
    verbose: bool,
) -> Result<Outcome> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    // Kept alive (a throwaway cluster) until the server is stopped.
    let mut _cluster = None;
    let mut schema = None;
    let database_url = match store {
        "sqlite" => {
            let db_dir = dir.join(format!("db-{}-{stamp}", std::process::id()));
            std::fs::create_dir_all(&db_dir)?;
            format!("sqlite://{}", db_dir.join("bgrun.db").display())
        }
        _ => {
            let (url, cluster) = pg::test_database_url()?;
            _cluster = cluster;
            schema = Some(format!("ds_conformance_{}_{stamp}", std::process::id()));
            url
        }
    };
    let mut server = Server::start(bgrun, dir, store, &database_url, schema.as_deref())?;
    let outcome = run_suite(suite, dir, &server.base, store, verbose).map(|mut outcome| {
        outcome.client = Some(run_client_test(&server.base));
        outcome
    });
    server.stop();
    if let Some(schema) = &schema {
        drop_schema(&database_url, schema);
    }
    if store == "sqlite" {
        if let Some(path) = database_url.strip_prefix("sqlite://") {
            if let Some(db_dir) = Path::new(path).parent() {
                let _ = std::fs::remove_dir_all(db_dir);
            }
        }
    }
    outcome
}

/// Runs the suite's own runner against `base`; its output to a log file (and the terminal
/// with `verbose`); the counts from its summary.
fn run_suite(suite: &Path, dir: &Path, base: &str, label: &str, verbose: bool) -> Result<Outcome> {
    let log_path = dir.join(format!("suite-{label}.log"));
    let mut log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    eprintln!(
        "\n== conformance suite against {base} ({label}); output in {}",
        log_path.display()
    );
    // The runner looks for `vitest` beside itself, then on PATH (as under npx): the
    // install's `node_modules/.bin` goes first on PATH.
    let bin_dir = dir.join("node_modules/.bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(&path)))?;
    let started = Instant::now();
    let mut child = Command::new(suite)
        .args(["--run", base])
        .current_dir(dir)
        .env("PATH", path)
        .env("CI", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", suite.display()))?;
    // stderr is drained on a thread of its own so neither pipe can fill and stall the suite.
    let stderr = child.stderr.take().context("the suite's stderr")?;
    let stderr_lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(std::result::Result::ok)
            .collect::<Vec<_>>()
    });
    let stdout = child.stdout.take().context("the suite's stdout")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stdout)
        .lines()
        .map_while(std::result::Result::ok)
    {
        let plain = strip_ansi(&line);
        writeln!(log, "{plain}")?;
        if verbose {
            println!("{plain}");
        }
        lines.push(plain);
    }
    let status = child.wait()?;
    for line in stderr_lines.join().unwrap_or_default() {
        let plain = strip_ansi(&line);
        writeln!(log, "{plain}")?;
        if verbose {
            eprintln!("{plain}");
        }
        lines.push(plain);
    }
    eprintln!("   suite exited {status} after {:.0?}", started.elapsed());
    let summary: Vec<String> = lines
        .iter()
        .map(|line| line.trim())
        .filter(|line| {
            ["Test Files", "Tests ", "Duration", "Errors"]
                .iter()
                .any(|prefix| line.starts_with(prefix))
        })
        .map(str::to_string)
        .collect();
    let counts = lines
        .iter()
        .rev()
        .find_map(|line| parse_tests_line(line.trim()));
    Ok(Outcome {
        label: label.to_string(),
        exit_ok: status.success(),
        counts,
        summary,
        log: log_path,
        client: None,
    })
}

/// `Tests  3 failed | 330 passed | 5 skipped (338)` → the counts.
fn parse_tests_line(line: &str) -> Option<Counts> {
    let rest = line.strip_prefix("Tests")?.trim();
    let (parts, total) = rest.rsplit_once('(')?;
    let mut counts = Counts {
        total: total.trim_end_matches(')').trim().parse().ok()?,
        ..Counts::default()
    };
    for part in parts.split('|') {
        let mut words = part.split_whitespace();
        let number: u32 = words.next()?.parse().ok()?;
        match words.next()? {
            "failed" => counts.failed += number,
            "passed" => counts.passed += number,
            _ => counts.skipped += number,
        }
    }
    Some(counts)
}

/// The text without ANSI escape sequences (the runner forces colour on).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, then one final byte in @..~.
                for next in chars.by_ref() {
                    if ('@'..='~').contains(&next) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Best effort: removes the schema a PostgreSQL run used (needs `psql`).
fn drop_schema(url: &str, schema: &str) {
    let dropped = Command::new("psql")
        .args([
            url,
            "-XAtqc",
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !dropped {
        eprintln!("   note: could not drop PostgreSQL schema {schema} (psql missing?)");
    }
}

/// A `bgrun serve` process of ours.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Server {
    fn start(
        bgrun: &Path,
        dir: &Path,
        store: &str,
        database_url: &str,
        schema: Option<&str>,
    ) -> Result<Server> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("finding a free port")?
            .port();
        let log = dir.join(format!("bgrun-{store}.log"));
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(bgrun);
        command
            .arg("serve")
            .env_remove("BGRUN_SECURITY_KEY")
            .env("BGRUN_BIND", format!("127.0.0.1:{port}"))
            .env("BGRUN_DATABASE_URL", database_url)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if let Some(schema) = schema {
            command.env("BGRUN_PG_SCHEMA", schema);
        }
        eprintln!(
            "\n== bgrun serve on {store}, port {port}; log in {}",
            log.display()
        );
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bgrun.display()))?;
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        if let Err(error) = server.wait_healthy(port) {
            server.stop();
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            return Err(error.context(format!("bgrun serve did not start; its log:\n{log}")));
        }
        Ok(server)
    }

    fn wait_healthy(&mut self, port: u16) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("bgrun serve exited with {status}");
            }
            if health_ok(port) {
                return Ok(());
            }
            if started.elapsed() > HEALTH_DEADLINE {
                bail!("/health did not answer 200 within {HEALTH_DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to this process alone, then SIGKILL if it has not exited in time.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < STOP_DEADLINE {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET /health` answers 200 (plain HTTP/1.0 over a socket; xtask has no HTTP client).
fn health_ok(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vitest_summary() {
        assert_eq!(
            parse_tests_line("Tests  6 failed | 332 passed (338)"),
            Some(Counts {
                failed: 6,
                passed: 332,
                skipped: 0,
                total: 338
            })
        );
        assert_eq!(
            parse_tests_line("Tests  330 passed | 8 skipped (338)"),
            Some(Counts {
                failed: 0,
                passed: 330,
                skipped: 8,
                total: 338
            })
        );
        assert_eq!(parse_tests_line("Test Files  1 failed (1)"), None);
    }

    #[test]
    fn strips_colour() {
        assert_eq!(
            strip_ansi("\u{1b}[1m\u{1b}[31mTests\u{1b}[39m\u{1b}[22m  1"),
            "Tests  1"
        );
    }
}
