//! `bgrun`: runs AI agent, team and workflow runs in the background, durably and resumably.
//!
//! `bgrun serve` starts the server (the runs API of shared/API.md); the other subcommands are
//! its client, speaking HTTP to the server at `--url` (`BGRUN_URL`):
//!
//! ```text
//! bgrun serve --bind 127.0.0.1:7777 --database-url sqlite://bgrun.db
//! bgrun run agents/echo "hello world"              # streams the run's content
//! bgrun run agents/ticker go --param count=100 --background
//! bgrun status agents/ticker RUN_ID
//! bgrun watch agents/ticker RUN_ID                 # follows it to its end, reconnecting
//! bgrun cancel agents/ticker RUN_ID
//! bgrun status RUN_ID                              # the component found by asking the server
//! bgrun runs agents/ticker --status RUNNING --limit 5
//! ```
//!
//! Exit status: 0 on success (for `run` and `watch`: the run completed), 1 on an error (a
//! `--url` that is no http:// URL among them) or a run that ended `ERROR` or `CANCELLED`, 2 on
//! a usage error clap finds (a missing argument, an unknown flag, a bad value).

mod client;
mod commands;
mod serve;
mod sse;
mod target;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc rather than the system allocator: less time per request of the server's (see
/// Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

/// The `bgrun` command line.
#[derive(Parser)]
#[command(
    name = "bgrun",
    version,
    about = "Background runs for AI agents, teams and workflows"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `bgrun` does.
#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(serve::ServeArgs),
    /// Start a run and stream its content (or, with --background, print its id).
    Run(commands::RunArgs),
    /// Show a run.
    Status(commands::StatusArgs),
    /// Follow a run to its end, reconnecting after a dropped connection.
    Watch(commands::WatchArgs),
    /// Cancel a run (also one not started yet).
    Cancel(commands::CancelArgs),
    /// List a component's runs, newest first.
    Runs(commands::RunsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    init_logging(default_log);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Run(args) => commands::run(args).await,
            Command::Status(args) => commands::status(args).await,
            Command::Watch(args) => commands::watch(args).await,
            Command::Cancel(args) => commands::cancel(args).await,
            Command::Runs(args) => commands::runs(args).await,
        }
    });
    // Whatever is still running (a stream the server was told to drop) must not hold the exit.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `BGRUN_LOG` (or `RUST_LOG`), `default` when neither is set.
fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_env("BGRUN_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
