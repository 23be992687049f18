//! Durable Streams benchmarks D1-D3 on SQLite, each beside the same figure of the Node reference
//! server (`@durable-streams/server`, pinned, file-backed: `DurableStreamTestServer` with a
//! `dataDir`) measured in the same run by the same client. The "raw" column is the reference's.
//!
//! bgrun runs in a child process (this binary re-executed with `--serve-bgrun DB`: the engine
//! with `bgrun serve`'s defaults behind [`bgrun_http::serve`]); the reference runs as
//! `node ds-reference-server.mjs DATA_DIR`, installed with npm into `target/ds-bench/` (a
//! `package.json` written there pins it). This process is the client (hyper, one keep-alive
//! HTTP/1.1 connection per producer), over loopback. Every row gets a fresh JSON stream on each
//! server.
//!
//! - D1: 20 concurrent idempotent producers (`Producer-Id` its own, epoch 0, seq 0, 1, ...)
//!   appending 1-message POSTs (one 100-byte JSON object): appends/s, over a fixed window
//!   (5 s; `--quick` 1 s) after a few untimed POSTs each.
//! - D2: the same with 100-message POSTs (a JSON array of 100 such objects): messages/s
//!   (3 s; `--quick` 1 s).
//! - D3: a catch-up read of a 100,000-message stream (written first in 100-message POSTs, not
//!   timed) from offset -1, following `Stream-Next-Offset` until `Stream-Up-To-Date` with
//!   nothing left: body MB/s (10^6 bytes).
//!
//! Not the same durability: the reference `fdatasync`s every append (one at a time per
//! stream) before it answers; bgrun's SQLite store commits in WAL mode with `synchronous =
//! NORMAL` (no sync per commit). Its D1 and D2 figures move with the disk's sync latency.
//!
//! Every response's status is checked; after D1 and D2 (and before D3's timed reads) the
//! stream is read back, not timed, and every producer's messages must all be there, in order.
//!
//! `cargo xtask bench` runs this; directly: `cargo bench -p bgrun-http --bench streams --
//! [--quick] [--out FILE] [--only D1,D2,D3]`. Rows are printed and written as JSON. Needs
//! `node` and `npm` on PATH.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark fails loudly

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, Request, StatusCode};
use bgrun_testkit::bench::{median, row as store_row, BenchOptions};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

fn row(id: &str, metric: &str, value: f64, reference: f64) -> Value {
    store_row(id, "sqlite", metric, value, reference)
}

/// Concurrent producers of D1 and D2 (and of D3's untimed writes).
const PRODUCERS: usize = 20;
/// Messages per POST in D2 and D3's writes.
const BATCH: usize = 100;
/// The size of one message (a JSON object), in bytes.
const MESSAGE_BYTES: usize = 100;
/// The messages of D3's stream.
const D3_MESSAGES: usize = 100_000;
/// The reference server, pinned exactly.
const REFERENCE_PACKAGE: &str = "@durable-streams/server";
const REFERENCE_VERSION: &str = "0.3.7";
/// The script that starts it (copied next to its `node_modules`).
const REFERENCE_SCRIPT: &str = include_str!("ds-reference-server.mjs");
const REFERENCE_SCRIPT_NAME: &str = "ds-reference-server.mjs";
const JSON: &str = "application/json";
const PREFIX: &str = "/v1/stream";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---------------------------------------------------------------------------------------------
// The servers (child processes)

/// bgrun as `bgrun serve` runs it on SQLite, with its defaults; prints `port N` once bound.
fn serve_bgrun(db: &str) {
    runtime().block_on(async {
        let store = bgrun_store_sqlite::SqliteStore::open(db)
            .await
            .expect("open store");
        let config = bgrun_exec::EngineConfig {
            exclusive_store: true,
            ..bgrun_exec::EngineConfig::default()
        };
        let engine =
            bgrun_exec::Engine::open(Arc::new(store), bgrun_exec::demo::registry(), config)
                .await
                .expect("open engine");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let mut stdout = std::io::stdout();
        writeln!(stdout, "port {port}").expect("announce");
        stdout.flush().expect("flush");
        bgrun_http::serve(
            listener,
            engine,
            bgrun_http::HttpConfig::default(),
            std::future::pending(),
        )
        .await
        .expect("serve");
    });
}

/// `target/`: this binary is `target/<profile>/deps/streams-<hash>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .expect("the bench binary lives under target/<profile>/deps")
        .to_path_buf()
}

fn tool_version(tool: &str) -> Option<String> {
    let output = Command::new(tool).arg("--version").output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The installed reference server's version, if any.
fn installed_version(dir: &Path) -> Option<String> {
    let manifest = dir
        .join("node_modules")
        .join(REFERENCE_PACKAGE)
        .join("package.json");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(manifest).ok()?).ok()?;
    manifest["version"].as_str().map(str::to_owned)
}

/// Installs the pinned reference server into `target/ds-bench/` (npm, when not installed
/// yet) with the script that starts it; the directory. Fails clearly without node and npm.
fn install_reference() -> PathBuf {
    let (Some(node), Some(npm)) = (tool_version("node"), tool_version("npm")) else {
        panic!(
            "the streams bench compares bgrun with the Durable Streams reference server, which \
             needs `node` and `npm` on PATH (Node.js 18 or later): install them and run again"
        );
    };
    let dir = target_dir().join("ds-bench");
    std::fs::create_dir_all(&dir).expect("create target/ds-bench");
    let manifest = serde_json::json!({
        "name": "bgrun-ds-bench",
        "private": true,
        "description": "Written by bgrun-http's streams bench: the pinned Durable Streams reference server.",
        "dependencies": { REFERENCE_PACKAGE: REFERENCE_VERSION },
    });
    let manifest_path = dir.join("package.json");
    let text = serde_json::to_string_pretty(&manifest).unwrap() + "\n";
    if std::fs::read_to_string(&manifest_path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&manifest_path, text).expect("write package.json");
    }
    if installed_version(&dir).as_deref() != Some(REFERENCE_VERSION) {
        println!(
            "installing {REFERENCE_PACKAGE}@{REFERENCE_VERSION} into {}",
            dir.display()
        );
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .status()
            .expect("run npm install");
        assert!(status.success(), "npm install failed in {}", dir.display());
        let installed = installed_version(&dir);
        assert_eq!(
            installed.as_deref(),
            Some(REFERENCE_VERSION),
            "npm installed {REFERENCE_PACKAGE} {installed:?}, but {REFERENCE_VERSION} is pinned"
        );
    }
    std::fs::write(dir.join(REFERENCE_SCRIPT_NAME), REFERENCE_SCRIPT).expect("write script");
    println!(
        "reference: {REFERENCE_PACKAGE}@{REFERENCE_VERSION}, file-backed; node {node}, npm {npm}"
    );
    dir
}

/// A server in a child process that prints `port N` on stdout once it listens; killed when
/// dropped.
struct Server {
    name: &'static str,
    child: Child,
    /// Held open: the reference server stops when it closes.
    _stdin: Option<ChildStdin>,
    port: u16,
}

impl Server {
    fn spawn(name: &'static str, mut command: Command) -> Server {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start the {name} server: {error}"));
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut before = Vec::new();
        let port = loop {
            let mut line = String::new();
            let read = stdout
                .read_line(&mut line)
                .expect("read the server's stdout");
            if read == 0 {
                let _ = child.kill();
                panic!(
                    "the {name} server exited before announcing its port (its stderr is above); \
                     its stdout: {before:?}"
                );
            }
            if let Some(port) = line.trim().strip_prefix("port ") {
                break port.parse().expect("a port number");
            }
            before.push(line);
        };
        // The reference server logs to stdout: keep reading it so that it never blocks.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Server {
            name,
            child,
            _stdin: stdin,
            port,
        }
    }

    fn bgrun(db: &Path) -> Server {
        let mut command = Command::new(std::env::current_exe().expect("current exe"));
        command.args(["--serve-bgrun", db.to_str().expect("utf-8 path")]);
        Server::spawn("bgrun", command)
    }

    fn reference(install: &Path, data: &Path) -> Server {
        let mut command = Command::new("node");
        command
            .arg(REFERENCE_SCRIPT_NAME)
            .arg(data)
            .current_dir(install);
        Server::spawn("reference", command)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The client

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
}

/// A response: status, headers, whole body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

impl Conn {
    async fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Conn { sender }
    }

    async fn request(&mut self, request: Request<Full<Bytes>>) -> Answer {
        self.sender.ready().await.expect("connection ready");
        let response = self.sender.send_request(request).await.expect("request");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Creates the JSON stream `name`: 201.
    async fn create(&mut self, name: &str) {
        let request = Request::put(format!("{PREFIX}/{name}"))
            .header(header::HOST, "127.0.0.1")
            .header(header::CONTENT_TYPE, JSON)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let answer = self.request(request).await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "create {name}: {:?}",
            answer.body
        );
    }

    /// GETs `name` from `offset` (a catch-up read).
    async fn read(&mut self, name: &str, offset: &str) -> Answer {
        let request = Request::get(format!("{PREFIX}/{name}?offset={offset}"))
            .header(header::HOST, "127.0.0.1")
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.request(request).await
    }
}

/// One idempotent producer on its own connection.
struct Producer {
    conn: Conn,
    index: usize,
    id: String,
    /// The next `Producer-Seq`.
    seq: u64,
    /// The messages it has appended.
    sent: u64,
}

impl Producer {
    async fn open(port: u16, index: usize) -> Producer {
        Producer {
            conn: Conn::open(port).await,
            index,
            id: format!("bench-producer-{index:02}"),
            seq: 0,
            sent: 0,
        }
    }

    /// Appends `count` messages in one POST (one object, or an array of `count`): 200 or 204.
    async fn append(&mut self, name: &str, count: usize) {
        let body = if count == 1 {
            message(self.index, self.sent)
        } else {
            let mut body = String::with_capacity(count * (MESSAGE_BYTES + 1) + 2);
            body.push('[');
            for i in 0..count as u64 {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&message(self.index, self.sent + i));
            }
            body.push(']');
            body
        };
        let request = Request::post(format!("{PREFIX}/{name}"))
            .header(header::HOST, "127.0.0.1")
            .header(header::CONTENT_TYPE, JSON)
            .header("producer-id", &self.id)
            .header("producer-epoch", "0")
            .header("producer-seq", self.seq.to_string())
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let answer = self.conn.request(request).await;
        assert!(
            matches!(answer.status, StatusCode::OK | StatusCode::NO_CONTENT),
            "append by {} seq {}: {} {:?}",
            self.id,
            self.seq,
            answer.status,
            answer.body
        );
        self.seq += 1;
        self.sent += count as u64;
    }
}

/// Message `n` of producer `p`: a JSON object of exactly `MESSAGE_BYTES` bytes.
fn message(p: usize, n: u64) -> String {
    let head = format!(r#"{{"p":{p},"n":{n},"kind":"bench","pad":""#);
    let pad = MESSAGE_BYTES - head.len() - 2;
    let message = format!("{head}{}\"}}", "x".repeat(pad));
    debug_assert_eq!(message.len(), MESSAGE_BYTES);
    message
}

/// The fields of a message that a read-back checks.
#[derive(serde::Deserialize)]
struct Sent {
    p: usize,
    n: u64,
}

/// Each producer appends `posts` POSTs of `count` messages, all at once, or fewer where
/// `until` passes first (checked before each POST); they come back.
async fn append_all(
    producers: Vec<Producer>,
    name: &str,
    posts: usize,
    count: usize,
    until: Option<Instant>,
) -> Vec<Producer> {
    let tasks = producers.into_iter().map(|mut producer| {
        let name = name.to_owned();
        tokio::spawn(async move {
            for _ in 0..posts {
                if until.is_some_and(|until| Instant::now() >= until) {
                    break;
                }
                producer.append(&name, count).await;
            }
            producer
        })
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|task| task.expect("producer"))
        .collect()
}

/// A catch-up read of `name` from `-1`, following `Stream-Next-Offset` until a response that
/// is up to date carries no message: the bodies and their bytes.
async fn catch_up(conn: &mut Conn, name: &str) -> (Vec<Bytes>, usize) {
    let mut offset = String::from("-1");
    let mut bodies = Vec::new();
    let mut bytes = 0;
    for _ in 0..1_000_000 {
        let answer = conn.read(name, &offset).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "read {name} at {offset}: {:?}",
            answer.body
        );
        let next = answer
            .header("stream-next-offset")
            .expect("Stream-Next-Offset")
            .to_owned();
        let up_to_date = answer.header("stream-up-to-date") == Some("true");
        let empty = answer.body.trim_ascii() == b"[]";
        bytes += answer.body.len();
        if up_to_date && empty {
            assert!(offset == "-1" || next == offset, "an empty read moved on");
            return (bodies, bytes);
        }
        assert!(up_to_date || !empty, "an empty read short of the tail");
        bodies.push(answer.body);
        offset = next;
    }
    panic!("the read of {name} did not end");
}

/// Reads `name` back (not timed) and checks that producer `p` appended `sent[p]` messages,
/// numbered in order; the message count.
async fn check(port: u16, name: &str, sent: &[u64]) -> u64 {
    let mut conn = Conn::open(port).await;
    let (bodies, _) = catch_up(&mut conn, name).await;
    let mut next: HashMap<usize, u64> = HashMap::new();
    let mut total = 0;
    for body in bodies {
        let values: Vec<&RawValue> = serde_json::from_slice(&body).expect("a JSON array");
        for value in values {
            let seen: Sent = serde_json::from_str(value.get()).expect("a bench message");
            let expected = next.entry(seen.p).or_default();
            assert_eq!(
                seen.n, *expected,
                "producer {} out of order in {name}",
                seen.p
            );
            *expected += 1;
            total += 1;
        }
    }
    for (p, &count) in sent.iter().enumerate() {
        assert_eq!(
            next.get(&p).copied().unwrap_or(0),
            count,
            "producer {p}'s messages in {name}"
        );
    }
    assert_eq!(next.len(), sent.len(), "messages of unknown producers");
    total
}

/// The figures of one server.
#[derive(Default)]
struct Figures {
    d1: f64,
    d2: f64,
    d3: f64,
}

/// How long each row measures (the same on both servers: their rates differ too much for
/// one count of requests to suit both).
struct Sizes {
    /// D1 and D2: POSTs per producer before the timed window.
    warmup: usize,
    d1_window: Duration,
    d2_window: Duration,
    /// D3: reads until this has passed, at least `d3_min_reads`.
    d3_window: Duration,
    d3_min_reads: usize,
}

/// The most messages one producer appends in a timed window: a bound on the stream's size.
const MAX_PRODUCER_MESSAGES: usize = 200_000;

/// A fresh stream with `PRODUCERS` producers connected and warmed up by `warmup` POSTs of
/// `count` messages each; then more each for `window` (the POSTs begun within it), timed:
/// messages/s.
async fn producers_rate(
    server: &Server,
    id: &str,
    warmup: usize,
    window: Duration,
    count: usize,
) -> f64 {
    let name = &format!("{}-{}", id.to_lowercase(), server.name);
    let mut conn = Conn::open(server.port).await;
    conn.create(name).await;
    let mut producers = Vec::with_capacity(PRODUCERS);
    for index in 0..PRODUCERS {
        producers.push(Producer::open(server.port, index).await);
    }
    let producers = append_all(producers, name, warmup, count, None).await;
    let before: u64 = producers.iter().map(|producer| producer.sent).sum();
    let began = Instant::now();
    let max_posts = MAX_PRODUCER_MESSAGES / count;
    let producers = append_all(producers, name, max_posts, count, Some(began + window)).await;
    let elapsed = began.elapsed();
    let sent: Vec<u64> = producers.iter().map(|producer| producer.sent).collect();
    let total: u64 = sent.iter().sum();
    assert_eq!(check(server.port, name, &sent).await, total);
    let timed = total - before;
    let rate = timed as f64 / elapsed.as_secs_f64();
    println!(
        "  {:<9} {id}: {rate:>10.1} messages/s: {timed} in {:.2} s ({} POSTs of {count}); \
         {total} read back in order",
        server.name,
        elapsed.as_secs_f64(),
        timed / count as u64
    );
    rate
}

/// D3: `D3_MESSAGES` written in `BATCH`-message POSTs, then read at least `min_reads` times and
/// until `window` has passed: MB/s (median).
async fn catch_up_rate(server: &Server, name: &str, min_reads: usize, window: Duration) -> f64 {
    let mut conn = Conn::open(server.port).await;
    conn.create(name).await;
    let posts = D3_MESSAGES / BATCH / PRODUCERS;
    assert_eq!(posts * BATCH * PRODUCERS, D3_MESSAGES);
    let mut producers = Vec::with_capacity(PRODUCERS);
    for index in 0..PRODUCERS {
        producers.push(Producer::open(server.port, index).await);
    }
    let producers = append_all(producers, name, posts, BATCH, None).await;
    let sent: Vec<u64> = producers.iter().map(|producer| producer.sent).collect();
    assert_eq!(check(server.port, name, &sent).await, D3_MESSAGES as u64);

    let mut rates = Vec::new();
    let mut shape = (0, 0);
    let began = Instant::now();
    while rates.len() < min_reads || (began.elapsed() < window && rates.len() < 1000) {
        let mut conn = Conn::open(server.port).await;
        let began = Instant::now();
        let (bodies, bytes) = catch_up(&mut conn, name).await;
        let elapsed = began.elapsed();
        let count: usize = bodies
            .iter()
            .map(|body| {
                serde_json::from_slice::<Vec<&RawValue>>(body)
                    .expect("a JSON array")
                    .len()
            })
            .sum();
        assert_eq!(count, D3_MESSAGES, "a catch-up read of {name}");
        shape = (bodies.len() + 1, bytes);
        rates.push(bytes as f64 / 1e6 / elapsed.as_secs_f64());
    }
    let rate = median(rates.clone());
    println!(
        "  {:<9} D3: {rate:>10.2} MB/s: {D3_MESSAGES} messages in {} GETs, {} body bytes; \
         median of {} reads ({:.2} to {:.2})",
        server.name,
        shape.0,
        shape.1,
        rates.len(),
        rates.iter().copied().fold(f64::INFINITY, f64::min),
        rates.iter().copied().fold(0.0, f64::max),
    );
    rate
}

/// The selected rows against `server`.
async fn measure(server: &Server, options: &BenchOptions, sizes: &Sizes) -> Figures {
    let mut figures = Figures::default();
    if options.runs("D1") {
        figures.d1 = producers_rate(server, "D1", sizes.warmup, sizes.d1_window, 1).await;
    }
    if options.runs("D2") {
        figures.d2 = producers_rate(server, "D2", sizes.warmup, sizes.d2_window, BATCH).await;
    }
    if options.runs("D3") {
        figures.d3 = catch_up_rate(
            server,
            &format!("d3-{}", server.name),
            sizes.d3_min_reads,
            sizes.d3_window,
        )
        .await;
    }
    figures
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|arg| arg == "--serve-bgrun") {
        serve_bgrun(&args[at + 1]);
        return;
    }
    let options = BenchOptions::from_args();
    options.announce(&format!(
        "bgrun Durable Streams bench: sqlite vs the Node reference server (file-backed), \
         {PRODUCERS} producers, loopback, servers in child processes"
    ));
    let install = install_reference();
    let sizes = if options.quick {
        Sizes {
            warmup: 3,
            d1_window: Duration::from_secs(1),
            d2_window: Duration::from_secs(1),
            d3_window: Duration::from_secs(1),
            d3_min_reads: 3,
        }
    } else {
        Sizes {
            warmup: 5,
            d1_window: Duration::from_secs(5),
            d2_window: Duration::from_secs(3),
            d3_window: Duration::from_secs(3),
            d3_min_reads: 5,
        }
    };
    println!(
        "D1: 1-message POSTs for {:?}; D2: {BATCH}-message POSTs for {:?}; messages of \
         {MESSAGE_BYTES} bytes; D3: {D3_MESSAGES} messages read for {:?}, at least {} times",
        sizes.d1_window, sizes.d2_window, sizes.d3_window, sizes.d3_min_reads
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (bgrun, reference) = runtime().block_on(async {
        let server = Server::bgrun(&dir.path().join("streams.db"));
        let bgrun = measure(&server, &options, &sizes).await;
        drop(server);
        let data = dir.path().join("reference");
        std::fs::create_dir_all(&data).expect("reference data dir");
        let server = Server::reference(&install, &data);
        let reference = measure(&server, &options, &sizes).await;
        drop(server);
        (bgrun, reference)
    });
    let mut rows = Vec::new();
    if options.runs("D1") {
        rows.push(row("D1", "appends_per_s", bgrun.d1, reference.d1));
    }
    if options.runs("D2") {
        rows.push(row("D2", "messages_per_s", bgrun.d2, reference.d2));
    }
    if options.runs("D3") {
        rows.push(row("D3", "read_MB_per_s", bgrun.d3, reference.d3));
    }
    options.write(&rows).expect("write bench rows");
}
