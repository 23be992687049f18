//! The client commands: run, status, watch, cancel, runs.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::{CallError, Client, Remote};
use crate::sse::Frame;
use crate::target::{Kind, Target};

/// `println!` that leaves a closed stdout be (`bgrun watch … | head`): the reader is gone, which
/// is no error; [`Render`] notices it and the command ends.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `bgrun run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The component, e.g. agents/echo.
    target: Target,
    /// The run's input.
    message: String,
    /// Start the run detached and print its id instead of streaming it.
    #[arg(long)]
    background: bool,
    /// A component parameter, NAME=VALUE (repeatable), e.g. --param count=100.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// The run's id (default: one the server makes).
    #[arg(long)]
    run_id: Option<String>,
    /// The run's session (default: a new one).
    #[arg(long)]
    session_id: Option<String>,
    /// The run's owner.
    #[arg(long)]
    user_id: Option<String>,
    /// A JSON object stored with the run.
    #[arg(long, value_parser = parse_object)]
    metadata: Option<Value>,
    /// Sent as the `Idempotency-Key` header: a repeated start with the same key creates nothing
    /// new and answers for the run the first one created.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Print the server's JSON (events as JSON lines) instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

/// A run, after its component when that is known: `[KIND/ID] RUN`.
#[derive(clap::Args)]
pub struct RunRef {
    /// The run, after its component (e.g. `agents/echo RUN`); without one, the server's
    /// components are asked in turn which has the run.
    #[arg(value_name = "[KIND/ID] RUN", num_args = 1..=2, required = true)]
    words: Vec<String>,
}

impl RunRef {
    /// The run's component and id.
    async fn resolve(&self, client: &Client) -> anyhow::Result<(Target, String)> {
        match self.words.as_slice() {
            [target, run_id] => Ok((target.parse().map_err(anyhow::Error::msg)?, run_id.clone())),
            [run_id] => Ok((find_component(client, run_id).await?, run_id.clone())),
            _ => bail!("expected [KIND/ID] RUN"),
        }
    }
}

/// The component that has run `run_id`: each of the server's components is asked in turn.
async fn find_component(client: &Client, run_id: &str) -> anyhow::Result<Target> {
    for kind in [Kind::Agents, Kind::Teams, Kind::Workflows] {
        let components = client
            .json(Method::GET, client.url(&[kind.segment()]), None)
            .await?;
        for component in components.as_array().into_iter().flatten() {
            let Some(id) = component["id"].as_str() else {
                continue;
            };
            let target = Target {
                kind,
                id: id.to_owned(),
            };
            match client
                .send(Method::GET, client.runs_url(&target, &[run_id]), None)
                .await
            {
                Ok(_) => return Ok(target),
                Err(CallError::Fatal(_)) => continue,
                Err(CallError::Transient(error)) => return Err(error),
            }
        }
    }
    bail!(
        "no component of this server has run {run_id} (to cancel a run before it starts, name \
         its component: bgrun cancel agents/echo {run_id})"
    )
}

/// `bgrun status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    run: RunRef,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

/// `bgrun watch`.
#[derive(clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    run: RunRef,
    /// Start after this event index (default: from the run's first event).
    #[arg(long, value_name = "INDEX")]
    after: Option<u64>,
    /// Print the events as JSON lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

/// `bgrun cancel`.
#[derive(clap::Args)]
pub struct CancelArgs {
    /// (A run that does not exist yet needs its component named: a run started later with
    /// this id is cancelled.)
    #[command(flatten)]
    run: RunRef,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

/// `bgrun runs`.
#[derive(clap::Args)]
pub struct RunsArgs {
    /// The component, e.g. agents/echo.
    target: Target,
    /// Only runs with this status (PENDING, RUNNING, PAUSED, COMPLETED, ERROR, CANCELLED).
    #[arg(long)]
    status: Option<String>,
    /// Only runs of this session.
    #[arg(long)]
    session_id: Option<String>,
    /// Runs per page, 1..=100.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    limit: Option<u8>,
    /// The page after this cursor (printed at the end of a page).
    #[arg(long)]
    cursor: Option<String>,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

fn parse_object(s: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("metadata must be a JSON object".to_owned()),
        Err(error) => Err(format!("metadata is not JSON: {error}")),
    }
}

/// `bgrun run`: starts a run; streams it, or prints its id.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.remote)?.idempotency_key(args.idempotency_key.clone());
    let mut body = Map::new();
    // Parameters first, so a parameter cannot replace a field of the request.
    for (name, value) in &args.params {
        body.insert(name.clone(), Value::String(value.clone()));
    }
    body.insert("message".into(), args.message.clone().into());
    body.insert("stream".into(), (!args.background).into());
    body.insert("background".into(), args.background.into());
    let optional = [
        ("run_id", &args.run_id),
        ("session_id", &args.session_id),
        ("user_id", &args.user_id),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            body.insert(name.into(), value.clone().into());
        }
    }
    if let Some(metadata) = &args.metadata {
        body.insert("metadata".into(), metadata.clone());
    }
    let body = Value::Object(body);
    let url = client.runs_url(&args.target, &[]);

    if args.background {
        let answer = client.json(Method::POST, url, Some(&body)).await?;
        if args.json {
            out!("{answer}");
        } else {
            out!("run_id: {}", text(&answer["run_id"]));
            out!("session_id: {}", text(&answer["session_id"]));
            out!("status: {}", text(&answer["status"]));
        }
        return Ok(ExitCode::SUCCESS);
    }

    let mut reader = client.stream(Method::POST, url, Some(&body)).await?;
    let mut render = Render::new(args.json, false);
    let mut run_id: Option<String> = None;
    while let Some(frame) = reader.next().await.context("the stream broke off")? {
        let Some(event) = data_event(&frame)? else {
            continue;
        };
        // The first event is the run's own `…Started`: its run_id is the run's.
        let own = run_id.get_or_insert_with(|| text(&event["run_id"]));
        render.event(&event);
        if render.output_closed {
            return Ok(End::OutputClosed.report(own));
        }
        if let Some(end) = terminal(&args.target, own, &event) {
            render.finish();
            return Ok(end.report(own));
        }
    }
    render.finish();
    match run_id {
        // A server stopping ends its streams; the run goes on (or is recovered) there.
        Some(run_id) => bail!(
            "the server ended the stream before run {run_id} ended (is it stopping?); \
             follow the run with: bgrun watch {} {run_id}",
            args.target
        ),
        None => bail!("the server ended the stream before the run started"),
    }
}

/// `bgrun status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.remote)?;
    let (target, run_id) = args.run.resolve(&client).await?;
    let run = client.get_run(&target, &run_id).await?;
    if args.json {
        out!("{run}");
        return Ok(ExitCode::SUCCESS);
    }
    for field in [
        "run_id",
        "status",
        "session_id",
        "user_id",
        "parent_run_id",
        "last_event_index",
        "created_at",
        "updated_at",
        "cancellation_stage",
        "error",
        "content",
    ] {
        if let Some(value) = run.get(field).filter(|value| !value.is_null()) {
            out!("{field}: {}", text(value));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bgrun cancel`.
pub async fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.remote)?;
    let (target, run_id) = args.run.resolve(&client).await?;
    let url = client.runs_url(&target, &[&run_id, "cancel"]);
    let answer = client.json(Method::POST, url, None).await?;
    if args.json {
        out!("{answer}");
    } else {
        out!(
            "{}: {} (cancelled: {})",
            text(&answer["run_id"]),
            text(&answer["status"]),
            answer["cancelled"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `bgrun runs`.
pub async fn runs(args: RunsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.remote)?;
    let mut url = client.runs_url(&args.target, &[]);
    {
        let mut query = url.query_pairs_mut();
        if let Some(status) = &args.status {
            query.append_pair("status", status);
        }
        if let Some(session_id) = &args.session_id {
            query.append_pair("session_id", session_id);
        }
        if let Some(limit) = args.limit {
            query.append_pair("limit", &limit.to_string());
        }
        if let Some(cursor) = &args.cursor {
            query.append_pair("cursor", cursor);
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    let page = client.json(Method::GET, url, None).await?;
    if args.json {
        out!("{page}");
        return Ok(ExitCode::SUCCESS);
    }
    let runs = page["data"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for run in runs {
        let content = text(&run["content"]);
        out!(
            "{}\t{}\t{}\t{}",
            text(&run["run_id"]),
            text(&run["status"]),
            text(&run["created_at"]),
            shorten(&content, 60)
        );
    }
    if let Some(cursor) = page["next_cursor"].as_str() {
        out!("next page: --cursor {cursor}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Reconnects after a connection dropped: the first wait, doubled per failed try, up to the most.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MOST: Duration = Duration::from_secs(5);
/// Tries in a row that may fail before `watch` gives up (about two minutes).
const RETRY_TRIES: u32 = 30;

/// `bgrun watch`: follows a run through `/resume` to its end, reconnecting from the last event
/// seen after a dropped connection.
pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.remote)?;
    let (target, run_id) = args.run.resolve(&client).await?;
    let run_ref = Followed {
        target: &target,
        run_id: &run_id,
    };
    let url = client.runs_url(&target, &[&run_id, "resume"]);
    let stdout_is_tty = std::io::stdout().is_terminal();
    // On a terminal the progress line shows the content; piped, the content streams to stdout.
    let mut render = Render::new(args.json, !args.json && stdout_is_tty);
    let mut last: Option<u64> = args.after;
    let mut failures = 0u32;
    let mut wait = RETRY_FIRST;
    loop {
        let body = match last {
            Some(index) => json!({ "last_event_index": index }),
            None => json!({}),
        };
        let attempt = follow_once(
            &client,
            &run_ref,
            url.clone(),
            &body,
            &mut last,
            &mut render,
        );
        match attempt.await {
            Ok(Some(end)) => {
                render.finish();
                if render.quiet_content {
                    let run = client.get_run(&target, &run_id).await?;
                    if let Some(content) = run["content"].as_str() {
                        out!("{content}");
                    }
                }
                return Ok(end.report(&run_id));
            }
            Ok(None) => {
                // The run is terminal and the replay ended: ask how it ended, and whether the
                // replay was whole (a server stopping ends it early).
                let run = client.get_run(&target, &run_id).await?;
                let stored_last = run["last_event_index"].as_u64();
                if stored_last.is_some() && stored_last > last {
                    failures += 1;
                    if failures > RETRY_TRIES {
                        render.finish();
                        anyhow::bail!("the replay kept ending before its last event; gave up after {RETRY_TRIES} tries");
                    }
                    render.note("reconnecting: the replay ended before its last event");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MOST);
                    continue;
                }
                render.finish();
                if render.quiet_content {
                    if let Some(content) = run["content"].as_str() {
                        out!("{content}");
                    }
                }
                let end = End::from_status(&text(&run["status"]), &run["error"]);
                return Ok(end.report(&run_id));
            }
            Err(Follow::Fatal(error)) => {
                render.finish();
                return Err(error);
            }
            Err(Follow::Transient { error, progressed }) => {
                if progressed {
                    failures = 0;
                    wait = RETRY_FIRST;
                }
                failures += 1;
                if failures > RETRY_TRIES {
                    render.finish();
                    return Err(error.context(format!("gave up after {RETRY_TRIES} tries")));
                }
                render.note(&format!("reconnecting: {error:#}"));
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MOST);
            }
        }
    }
}

/// Why one connection of `watch` ended without the run's end.
enum Follow {
    /// Worth another try; `progressed` when the connection gave events first.
    Transient {
        error: anyhow::Error,
        progressed: bool,
    },
    /// Not.
    Fatal(anyhow::Error),
}

/// The run `watch` follows.
struct Followed<'a> {
    target: &'a Target,
    run_id: &'a str,
}

/// One resume connection: `Some(end)` at the run's terminal event, `None` when the server
/// says the run is terminal and no event is left.
async fn follow_once(
    client: &Client,
    args: &Followed<'_>,
    url: reqwest::Url,
    body: &Value,
    last: &mut Option<u64>,
    render: &mut Render,
) -> Result<Option<End>, Follow> {
    let mut reader =
        client
            .stream(Method::POST, url, Some(body))
            .await
            .map_err(|error| match error {
                CallError::Transient(error) => Follow::Transient {
                    error,
                    progressed: false,
                },
                CallError::Fatal(error) => Follow::Fatal(error),
            })?;
    let mut progressed = false;
    let mut replaying = false;
    loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) if replaying => return Ok(None),
            Ok(None) => {
                return Err(Follow::Transient {
                    error: anyhow::anyhow!("the server closed the stream before the run ended"),
                    progressed,
                })
            }
            Err(error) => {
                return Err(Follow::Transient {
                    error: anyhow::Error::new(error).context("the stream broke off"),
                    progressed,
                })
            }
        };
        if frame.id.is_none() {
            // A meta frame.
            let meta: Value = serde_json::from_str(&frame.data).unwrap_or(Value::Null);
            match frame.event.as_deref() {
                Some("error") => {
                    let error = anyhow::anyhow!("run {}: {}", args.run_id, text(&meta["error"]));
                    // A run that does not exist stays so; a store that could not be read (a
                    // database failing over) is worth another try.
                    let missing = text(&meta["error"]) == format!("run {} not found", args.run_id);
                    return Err(if missing {
                        Follow::Fatal(error)
                    } else {
                        Follow::Transient { error, progressed }
                    });
                }
                Some("replay") => replaying = true,
                _ => {}
            }
            if let Some(status) = meta["status"].as_str() {
                render.status(status);
            }
            continue;
        }
        let event = data_event(&frame).map_err(Follow::Fatal)?;
        let Some(event) = event else { continue };
        let Some(index) = event["event_index"].as_u64() else {
            return Err(Follow::Fatal(anyhow::anyhow!(
                "an event without event_index: {event}"
            )));
        };
        if last.is_some_and(|last| index <= last) {
            continue; // already shown before a reconnect
        }
        *last = Some(index);
        progressed = true;
        render.event(&event);
        if render.output_closed {
            return Ok(Some(End::OutputClosed));
        }
        if let Some(end) = terminal(args.target, args.run_id, &event) {
            return Ok(Some(end));
        }
    }
}

/// The JSON of a data frame (`None` for a frame that is not an event).
fn data_event(frame: &Frame) -> anyhow::Result<Option<Value>> {
    if frame.id.is_none() {
        return Ok(None);
    }
    serde_json::from_str(&frame.data)
        .map(Some)
        .with_context(|| format!("an event that is not JSON: {}", frame.data))
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Completed,
    Error(String),
    Cancelled,
    /// The server reports a status that is not terminal: the stream ended early.
    Other(String),
    /// Whoever read the output went away (a closed pipe): nothing more to show.
    OutputClosed,
}

impl End {
    fn from_status(status: &str, error: &Value) -> Self {
        match status {
            "COMPLETED" => End::Completed,
            "ERROR" => End::Error(text(error)),
            "CANCELLED" => End::Cancelled,
            other => End::Other(other.to_owned()),
        }
    }

    /// Tells the user how the run ended, and the exit status that goes with it.
    fn report(&self, run_id: &str) -> ExitCode {
        match self {
            End::Completed => ExitCode::SUCCESS,
            End::Error(error) => {
                eprintln!("run {run_id} ended ERROR: {error}");
                ExitCode::FAILURE
            }
            End::Cancelled => {
                eprintln!("run {run_id} was cancelled");
                ExitCode::FAILURE
            }
            End::Other(status) => {
                eprintln!("run {run_id} is {status}, not finished");
                ExitCode::FAILURE
            }
            End::OutputClosed => ExitCode::SUCCESS,
        }
    }
}

/// The end an event marks, when it is `run_id`'s terminal event (events forwarded from member
/// runs carry their own run_id and end nothing here).
fn terminal(target: &Target, run_id: &str, event: &Value) -> Option<End> {
    if event["run_id"].as_str() != Some(run_id) {
        return None;
    }
    let kind = event["event"].as_str()?;
    match kind.strip_prefix(target.kind.terminal_prefix())? {
        "Completed" => Some(End::Completed),
        "Error" => {
            let error = event.get("error").filter(|e| !e.is_null());
            Some(End::Error(text(error.unwrap_or(&event["content"]))))
        }
        "Cancelled" => Some(End::Cancelled),
        _ => None,
    }
}

/// A JSON value as text: strings without quotes.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn shorten(s: &str, max: usize) -> String {
    let one_line = s.replace('\n', " ");
    match one_line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// How often the progress line is redrawn at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Prints a run's events: content to stdout (or JSON lines), a progress line on stderr.
struct Render {
    json: bool,
    /// Content goes into the progress line instead of stdout (stdout is the same terminal).
    quiet_content: bool,
    /// Whether a progress line is drawn (stderr is a terminal).
    progress: bool,
    drawn: Option<Instant>,
    status: String,
    events: u64,
    last_index: Option<u64>,
    last_content: String,
    wrote_content: bool,
    /// Stdout was closed by its reader.
    output_closed: bool,
}

impl Render {
    fn new(json: bool, progress_with_content: bool) -> Self {
        let progress = progress_with_content && std::io::stderr().is_terminal();
        Self {
            json,
            quiet_content: progress,
            progress,
            drawn: None,
            status: String::from("…"),
            events: 0,
            last_index: None,
            last_content: String::new(),
            wrote_content: false,
            output_closed: false,
        }
    }

    fn status(&mut self, status: &str) {
        status.clone_into(&mut self.status);
        self.draw(false);
    }

    fn event(&mut self, event: &Value) {
        self.events += 1;
        self.last_index = event["event_index"].as_u64();
        let kind = event["event"].as_str().unwrap_or_default();
        if kind.ends_with("Started") && self.status == "…" {
            self.status = String::from("RUNNING");
        }
        let mut stdout = std::io::stdout().lock();
        let written = if self.json {
            writeln!(stdout, "{event}")
        } else if let Some(content) = event["content"]
            .as_str()
            .filter(|_| kind.ends_with("Content"))
        {
            if self.quiet_content {
                content.clone_into(&mut self.last_content);
                Ok(())
            } else {
                self.wrote_content = true;
                stdout
                    .write_all(content.as_bytes())
                    .and_then(|()| stdout.flush())
            }
        } else {
            Ok(())
        };
        drop(stdout);
        if written.is_err_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe) {
            self.output_closed = true;
            self.wrote_content = false;
        }
        self.draw(false);
    }

    fn note(&mut self, note: &str) {
        if self.progress {
            self.clear();
            eprintln!("{note}");
            self.draw(true);
        } else {
            tracing::warn!("{note}");
        }
    }

    fn draw(&mut self, force: bool) {
        if !self.progress {
            return;
        }
        if !force && self.drawn.is_some_and(|at| at.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.drawn = Some(Instant::now());
        let index = self
            .last_index
            .map_or_else(|| String::from("-"), |i| i.to_string());
        let line = format!(
            "{} · {} events · last index {} · {}",
            self.status,
            self.events,
            index,
            shorten(&self.last_content, 40)
        );
        eprint!("\r\x1b[K{line}");
    }

    fn clear(&self) {
        if self.progress {
            eprint!("\r\x1b[K");
        }
    }

    fn finish(&mut self) {
        self.clear();
        if self.wrote_content {
            out!();
            self.wrote_content = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents() -> Target {
        "agents/echo".parse().unwrap()
    }

    #[test]
    fn only_the_runs_own_terminal_event_ends_it() {
        let own = json!({"event": "RunCompleted", "run_id": "r1", "event_index": 3});
        assert_eq!(terminal(&agents(), "r1", &own), Some(End::Completed));
        let member = json!({"event": "RunCompleted", "run_id": "child", "event_index": 3});
        assert_eq!(terminal(&agents(), "r1", &member), None);
        let error = json!({"event": "RunError", "run_id": "r1", "error": "interrupted"});
        assert_eq!(
            terminal(&agents(), "r1", &error),
            Some(End::Error("interrupted".into()))
        );
        let team: Target = "teams/pair".parse().unwrap();
        let cancelled = json!({"event": "TeamRunCancelled", "run_id": "t"});
        assert_eq!(terminal(&team, "t", &cancelled), Some(End::Cancelled));
        let content = json!({"event": "RunContent", "run_id": "r1"});
        assert_eq!(terminal(&agents(), "r1", &content), None);
    }

    #[test]
    fn params_are_name_value() {
        assert_eq!(
            parse_param("count=1=2").unwrap(),
            ("count".into(), "1=2".into())
        );
        assert!(parse_param("count").is_err());
        assert!(parse_param("=1").is_err());
    }

    #[test]
    fn shortens_by_characters() {
        assert_eq!(shorten("héllo wörld", 5), "héllo…");
        assert_eq!(shorten("a\nb", 5), "a b");
    }
}
