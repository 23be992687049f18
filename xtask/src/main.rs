//! bgrun's developer tasks, in plain Rust so there are no scripts to keep in sync.
//!
//! - `cargo xtask test-all`: fmt check, clippy `-D warnings`, every test (SQLite and
//!   PostgreSQL) and the doc tests.
//! - `cargo xtask bench [--quick]`: the benchmarks; a table on stdout and the rows as JSON in
//!   `target/bench/latest.json`.
//! - `cargo xtask pg`: a throwaway PostgreSQL cluster, its URL printed, until Ctrl-C.
//! - `cargo xtask ds-conformance [--store sqlite|postgres|all] [--url BASE]`: the official
//!   Durable Streams conformance suite and the npm client test against `bgrun serve` (test-all
//!   runs it when `node` is on PATH).

mod ds;
mod pg;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test-all") => test_all(),
        Some("bench") => bench(args.iter().any(|arg| arg == "--quick")),
        Some("pg") => pg_forever(),
        Some("ds-conformance") => ds::ds_conformance(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <test-all | bench [--quick] | pg | ds-conformance>");
            std::process::exit(2);
        }
    };
    if let Err(error) = result {
        eprintln!("\nxtask: {error:#}");
        std::process::exit(1);
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

fn run(step: &str, command: &mut Command) -> Result<()> {
    eprintln!("\n== {step}: {command:?}");
    let status = command
        .status()
        .with_context(|| format!("{step}: could not start {command:?}"))?;
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}

fn test_all() -> Result<()> {
    run("fmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    let (url, _cluster) = pg::test_database_url()?;
    eprintln!("\n== PostgreSQL for the tests: {url}");
    run(
        "tests (SQLite and PostgreSQL) and doc tests",
        cargo()
            .args(["test", "--workspace", "--all-features", "--no-fail-fast"])
            .env(pg::URL_VAR, &url),
    )?;
    if ds::node_available() {
        eprintln!("\n== Durable Streams conformance (node is on PATH)");
        ds::ds_conformance(&[])?;
    } else {
        eprintln!(
            "\n== SKIPPED: the Durable Streams conformance suite and npm client test \
             (`node` and `npm` are not on PATH; install Node.js 18+ to run them)"
        );
    }
    eprintln!("\ntest-all: every step passed");
    Ok(())
}

fn bench(quick: bool) -> Result<()> {
    let out_dir = root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let mut rows = Vec::new();
    // The PostgreSQL rows (P1-P3 on PostgreSQL, R1 the live tail across replicas) need a
    // database, provisioned as for test-all and kept alive here.
    let (pg_url, _cluster) = pg::test_database_url()?;
    // `streams` (D1-D3) also starts the Node reference server: it needs node and npm.
    let benches: [(&str, &str, &[&str]); 4] = [
        ("bgrun", "engine", &["--features", "postgres"]),
        ("bgrun-exec", "replicas", &[]),
        ("bgrun-http", "http", &[]),
        ("bgrun-http", "streams", &[]),
    ];
    for (package, name, features) in benches {
        let out = out_dir.join(format!("{name}.json"));
        let mut command = cargo();
        command.args(["bench", "-p", package]).args(features);
        command.args(["--bench", name, "--", "--out"]);
        command.arg(&out).env(pg::URL_VAR, &pg_url);
        if quick {
            command.arg("--quick");
        }
        run(&format!("bench {name}"), &mut command)?;
        let text =
            std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
        let these: Vec<serde_json::Value> =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", out.display()))?;
        rows.extend(these);
    }
    print_table(&rows);
    let latest = out_dir.join("latest.json");
    std::fs::write(&latest, serde_json::to_string_pretty(&rows)?)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("\n{cores} cores; rows written to {}", latest.display());
    Ok(())
}

fn print_table(rows: &[serde_json::Value]) {
    println!(
        "\n{:<5} {:<9} {:<16} {:>14} {:>14} {:>7}",
        "id", "store", "metric", "bgrun", "raw", "ratio"
    );
    for row in rows {
        let text = |key: &str| row[key].as_str().unwrap_or("").to_owned();
        let number = |key: &str| row[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<5} {:<9} {:<16} {:>14.1} {:>14.1} {:>7.2}",
            text("id"),
            text("store"),
            text("metric"),
            number("value"),
            number("raw"),
            number("ratio")
        );
    }
}

fn pg_forever() -> Result<()> {
    let cluster = pg::start_throwaway()?;
    println!("{}", cluster.url());
    eprintln!("throwaway PostgreSQL running; Ctrl-C stops and removes it");
    let (sender, receiver) = std::sync::mpsc::channel::<()>();
    ctrlc::set_handler(move || {
        let _ = sender.send(());
    })
    .context("installing the Ctrl-C handler")?;
    let _ = receiver.recv();
    // Dropping the cluster stops the server and removes its folder.
    drop(cluster);
    Ok(())
}
