//! The end-to-end harness: the real `bgrun serve` on a free port over a temporary SQLite file
//! (or a database URL the test gives, e.g. PostgreSQL), killed when dropped, and a strict reader
//! of its SSE framing.
#![allow(dead_code)] // each test file uses part of it

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `bgrun` binary cargo built for these tests.
pub const BGRUN: &str = env!("CARGO_BIN_EXE_bgrun");

/// A safety net against a hang, not a timing assertion: a test that waits longer has failed.
const HEALTH_DEADLINE: Duration = Duration::from_secs(60);
/// The longest a stream may stay silent before a test calls it a hang (a guard, not a timing
/// assertion: the server sends `: keepalive` every 15 s).
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `BGRUN_SECURITY_KEY`.
    pub security_key: Option<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// `BGRUN_DATABASE_URL`; `None`: a SQLite file in the server's temporary directory.
    pub database_url: Option<String>,
    /// Arguments after `serve`.
    pub args: Vec<String>,
}

impl Options {
    /// A server on the database at `url`, with `args` after `serve`.
    pub fn database(url: &str, args: &[&str]) -> Options {
        Options {
            database_url: Some(url.to_owned()),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            ..Options::default()
        }
    }

    /// The same, with the environment variable `name` set to `value`.
    pub fn with_env(mut self, name: &str, value: &str) -> Options {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A running `bgrun serve`; SIGKILLed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// Its address, `http://127.0.0.1:PORT`.
    pub base: String,
    pub port: u16,
    /// Holds the database and the logs.
    pub dir: PathBuf,
    pub db: PathBuf,
    /// One client (one connection pool) for the test's requests.
    pub http: reqwest::Client,
    options: Options,
    log: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
}

/// A port nobody listened on a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Server {
    /// A server on a new database.
    pub async fn start() -> Server {
        Self::start_with(Options::default()).await
    }

    /// A server on a new database, with options.
    pub async fn start_with(options: Options) -> Server {
        let tempdir = tempfile::tempdir().unwrap();
        let dir = tempdir.path().to_path_buf();
        let db = dir.join("bgrun.db");
        let mut server = Self::launch(&dir, &db, options).await;
        server._tempdir = Some(tempdir);
        server
    }

    /// Starts on `db` (a free port each try; a port someone took in between is tried again).
    async fn launch(dir: &Path, db: &Path, options: Options) -> Server {
        Self::launch_on(dir, db, options, None).await
    }

    /// Starts on `db` and `port` (a free one when `None`).
    async fn launch_on(dir: &Path, db: &Path, options: Options, fixed: Option<u16>) -> Server {
        for attempt in 0..5 {
            let port = fixed.unwrap_or_else(free_port);
            let log = dir.join(format!("server-{port}-{attempt}.log"));
            let mut server = Server {
                child: None,
                base: format!("http://127.0.0.1:{port}"),
                port,
                dir: dir.to_path_buf(),
                db: db.to_path_buf(),
                http: reqwest::Client::new(),
                options: options.clone(),
                log,
                _tempdir: None,
            };
            server.child = Some(server.command().spawn().unwrap());
            match server.wait_healthy().await {
                Ok(()) => return server,
                Err(log) if log.contains("in use") && fixed.is_none() => continue,
                Err(log) => panic!("bgrun serve did not start:\n{log}"),
            }
        }
        panic!("no free port after 5 tries");
    }

    /// `bgrun serve` as this server runs it.
    fn command(&self) -> Command {
        let log = File::create(&self.log).unwrap();
        let database_url = self
            .options
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.db.display()));
        let mut command = Command::new(BGRUN);
        command
            .arg("serve")
            .args(&self.options.args)
            .env_remove("BGRUN_SECURITY_KEY")
            .env_remove("BGRUN_MAX_CONCURRENCY")
            .env_remove("BGRUN_BUFFER_TTL_SECS")
            .env_remove("BGRUN_PG_SCHEMA")
            .env_remove("BGRUN_LEASE_TTL_SECS")
            .env_remove("BGRUN_LEASE_RENEW_SECS")
            .env_remove("BGRUN_SHUTDOWN_GRACE_SECS")
            .env("BGRUN_BIND", format!("127.0.0.1:{}", self.port))
            .env("BGRUN_DATABASE_URL", database_url)
            .env("BGRUN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(key) = &self.options.security_key {
            command.env("BGRUN_SECURITY_KEY", key);
        }
        for (name, value) in &self.options.env {
            command.env(name, value);
        }
        command
    }

    /// Waits until `/health` answers 200; the log when the process died first.
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("exited with {status}\n{}", self.log()));
            }
            if let Ok(response) = client.get(self.url("/health")).send().await {
                if response.status() == 200 {
                    return Ok(());
                }
            }
            if started.elapsed() > HEALTH_DEADLINE {
                return Err(format!("/health never answered 200\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the server wrote on stdout and stderr.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `INT`, `STOP`, `CONT`), to this server's process
    /// alone.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit (the wait is bounded by the harness' deadline).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < HEALTH_DEADLINE,
                "bgrun did not exit\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the server and starts a new one on the same database (and a new port).
    pub async fn kill_and_restart(mut self) -> Server {
        self.signal("KILL");
        self.wait_exit().await;
        self.start_again().await
    }

    /// Stops (SIGTERM) and starts again on the same database.
    pub async fn stop_and_restart(mut self) -> Server {
        self.signal("TERM");
        let status = self.wait_exit().await;
        assert!(status.success(), "{status}\n{}", self.log());
        self.start_again().await
    }

    /// SIGKILLs the server and starts a new one on the same database and the same port.
    pub async fn kill_and_restart_same_port(mut self) -> Server {
        self.signal("KILL");
        self.wait_exit().await;
        let tempdir = self._tempdir.take();
        let mut next =
            Self::launch_on(&self.dir, &self.db, self.options.clone(), Some(self.port)).await;
        next._tempdir = tempdir;
        next
    }

    /// Starts a new server on the same database, once this one has exited.
    pub async fn start_again(mut self) -> Server {
        let tempdir = self._tempdir.take();
        let mut next = Self::launch(&self.dir, &self.db, self.options.clone()).await;
        next._tempdir = tempdir;
        next
    }

    /// The process' resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    // ---- HTTP helpers ----

    /// `POST /{kind}/{id}/runs` with a JSON body.
    pub async fn start_run(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Starts a background run (202) and returns its run_id.
    pub async fn start_background(&self, path: &str, mut body: Value) -> String {
        body["stream"] = Value::Bool(false);
        body["background"] = Value::Bool(true);
        let response = self.start_run(path, body).await;
        assert_eq!(response.status(), 202, "{path}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "PENDING");
        answer["run_id"].as_str().unwrap().to_owned()
    }

    /// `GET` a JSON answer, asserting 200.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// `POST .../resume` with `last_event_index` (absent when `None`).
    pub async fn resume(&self, run_path: &str, last: Option<i64>) -> Sse {
        let body = match last {
            Some(index) => serde_json::json!({ "last_event_index": index }),
            None => serde_json::json!({}),
        };
        let response = self
            .http
            .post(self.url(&format!("{run_path}/resume")))
            .json(&body)
            .send()
            .await
            .unwrap();
        Sse::new(response)
    }

    /// The value of one sample of `GET /metrics`, e.g. `bgrun_runs_active` or
    /// `bgrun_runs_total{status="ERROR"}`.
    pub async fn metric(&self, sample: &str) -> u64 {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET /metrics");
        let text = response.text().await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{text}"))
            .parse()
            .unwrap()
    }

    /// Polls `GET path` until `done` holds for its JSON, which it returns (bounded by the
    /// harness' deadline: a guard against a hang, not a timing assertion).
    pub async fn poll_json(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let value = self.get_json(path).await;
            if done(&value) {
                return value;
            }
            assert!(
                started.elapsed() < HANG_GUARD,
                "GET {path} never got there: {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Follows a run until it is terminal, through resume (waits on events, not on time).
    pub async fn wait_terminal(&self, run_path: &str) -> Value {
        let mut sse = self.resume(run_path, None).await;
        sse.read_to_end().await;
        self.get_json(run_path).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One SSE frame, checked against API.md's framing.
#[derive(Debug, Clone)]
pub enum Frame {
    /// `id:`, `event:`, `data:` in that order.
    Data {
        id: u64,
        event: String,
        data: Value,
        raw: String,
    },
    /// `event:` and `data:`, no `id:`: resume's meta frames.
    Meta { event: String, data: Value },
}

impl Frame {
    pub fn is_data(&self) -> bool {
        matches!(self, Frame::Data { .. })
    }
    pub fn data(&self) -> &Value {
        match self {
            Frame::Data { data, .. } | Frame::Meta { data, .. } => data,
        }
    }
}

/// A strict SSE reader: any frame that is not exactly API.md's framing fails the test.
#[derive(Debug)]
pub struct Sse {
    pub response: reqwest::Response,
    buffer: Vec<u8>,
    lines: Vec<String>,
    pub ended: bool,
}

impl Sse {
    pub fn new(response: reqwest::Response) -> Sse {
        let status = response.status();
        assert_eq!(status, 200, "an SSE answer must be 200");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content-type {content_type}"
        );
        Sse {
            response,
            buffer: Vec::new(),
            lines: Vec::new(),
            ended: false,
        }
    }

    /// The next frame; `None` at the end of the body.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            while let Some(newline) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=newline).collect();
                let line = String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
                if line.is_empty() {
                    if let Some(frame) = self.frame() {
                        return Some(frame);
                    }
                } else {
                    self.lines.push(line);
                }
            }
            let chunk = tokio::time::timeout(HANG_GUARD, self.response.chunk())
                .await
                .expect("the stream stayed silent for a long while: the server hangs");
            match chunk {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => {
                    assert!(
                        self.buffer.is_empty() && self.lines.is_empty(),
                        "the stream ended inside a frame: {:?}",
                        self.lines
                    );
                    self.ended = true;
                    return None;
                }
                Err(error) => panic!("the stream broke: {error}"),
            }
        }
    }

    /// Turns the lines gathered into a frame; `None` for a comment block.
    fn frame(&mut self) -> Option<Frame> {
        let lines = std::mem::take(&mut self.lines);
        if lines.iter().all(|line| line.starts_with(':')) {
            for line in &lines {
                assert_eq!(line, ": keepalive", "the only comment is `: keepalive`");
            }
            return None;
        }
        match lines.as_slice() {
            [id, event, data] if id.starts_with("id: ") => {
                let id: u64 = id["id: ".len()..].parse().unwrap();
                let event = event.strip_prefix("event: ").unwrap().to_owned();
                let raw = data.strip_prefix("data: ").unwrap().to_owned();
                let data: Value = serde_json::from_str(&raw).unwrap();
                assert_eq!(data["event_index"], id, "id: is the event_index");
                assert_eq!(data["event"], event.as_str(), "event: is the event type");
                Some(Frame::Data {
                    id,
                    event,
                    data,
                    raw,
                })
            }
            [event, data] => {
                let event = event
                    .strip_prefix("event: ")
                    .unwrap_or_else(|| panic!("bad meta frame {lines:?}"))
                    .to_owned();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["event"], event.as_str(), "a meta frame names itself");
                Some(Frame::Meta { event, data })
            }
            other => panic!("a frame that is not API.md's framing: {other:?}"),
        }
    }

    /// The next data frame's event JSON, skipping nothing: a meta frame here fails the test.
    pub async fn next_event(&mut self) -> Option<Value> {
        match self.next().await? {
            Frame::Data { data, .. } => Some(data),
            Frame::Meta { event, data } => panic!("meta frame {event} among events: {data}"),
        }
    }

    /// The next data frame's event JSON, past any meta frame.
    pub async fn next_event_skip_meta(&mut self) -> Option<Value> {
        loop {
            match self.next().await? {
                Frame::Data { data, .. } => return Some(data),
                Frame::Meta { .. } => {}
            }
        }
    }

    /// Reads meta frames up to the first data frame (or the end): (metas, first event).
    pub async fn metas(&mut self) -> (Vec<(String, Value)>, Option<Value>) {
        let mut metas = Vec::new();
        loop {
            match self.next().await {
                Some(Frame::Meta { event, data }) => metas.push((event, data)),
                Some(Frame::Data { data, .. }) => return (metas, Some(data)),
                None => return (metas, None),
            }
        }
    }

    /// Every frame to the end of the stream.
    pub async fn read_to_end(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await {
            frames.push(frame);
        }
        frames
    }
}

/// The event JSONs of data frames.
pub fn events(frames: &[Frame]) -> Vec<Value> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            Frame::Data { data, .. } => Some(data.clone()),
            Frame::Meta { .. } => None,
        })
        .collect()
}

/// Asserts the events are exactly indexes `from..=to` in order, and the last one terminal.
pub fn assert_gapless(events: &[Value], from: u64, to: u64) {
    let indexes: Vec<u64> = events
        .iter()
        .map(|e| e["event_index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        indexes.len() as u64,
        to + 1 - from,
        "events {from}..={to}, got {} events (first {:?}, last {:?})",
        indexes.len(),
        indexes.first(),
        indexes.last()
    );
    for (offset, index) in indexes.iter().enumerate() {
        assert_eq!(*index, from + offset as u64, "gapless, in order");
    }
}

/// Counts of each event type.
pub fn tally(events: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for event in events {
        *counts
            .entry(event["event"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}
