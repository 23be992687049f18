//! HTTP benchmarks P4-P6 on SQLite, each beside a "raw" row measured in the same run: a bare
//! axum server (no engine) answering the same requests with bodies of the same shape, hit by
//! the same client at the same concurrency.
//!
//! The server runs in a child process (this binary re-executed with `--serve-bgrun DB STREAM_BYTES [FINISHED_TTL_MS]` or
//! `--serve-raw`: the engine with `bgrun serve`'s defaults behind [`bgrun_http::serve`], or the
//! bare axum server); this process is the client (hyper, one keep-alive HTTP/1.1 connection
//! per client), over loopback.
//!
//! - P4: `POST /agents/echo/runs` `background=true&stream=false` → 202, p50 and p99 latency
//!   with 20 concurrent clients.
//! - P5: runs started by 20 concurrent clients, each polled with GET until terminal: runs/s.
//!   Raw: the same number of POSTs and GETs.
//! - P6: a resume catch-up (SSE replay) of a finished 100,000-event `ticker` run, events/s,
//!   from memory and from the store (a server past the buffer's TTL). Raw: the same bytes,
//!   pre-rendered, streamed from memory in chunks of 2,048 frames; its reads alternate with
//!   bgrun's. Medians of 9 reads each.
//!
//! `cargo xtask bench` runs this; directly: `cargo bench -p bgrun-http --bench http --
//! [--quick] [--out FILE] [--only P4,P5,P6]`. Rows are printed and written as JSON.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark fails loudly

/// The allocator `bgrun serve` uses (see bgrun-cli): the bgrun and the raw server alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bgrun_testkit::bench::{median, percentile_us as percentile, row as store_row, BenchOptions};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

fn row(id: &str, metric: &str, value: f64, raw: f64) -> Value {
    store_row(id, "sqlite", metric, value, raw)
}
use tokio::net::{TcpListener, TcpStream};

/// Concurrent clients of P4 and P5.
const CLIENTS: usize = 20;
/// bgrun writes one SSE body chunk per batch of events it reads (up to 2,048 from memory, 4,096
/// from the store); the raw server sends the same bytes in chunks of 2,048 frames.
const CHUNK_FRAMES: usize = 2048;
/// The start form of P4 and P5.
const START_FORM: &str = "message=hello%20world&background=true&stream=false";
const FORM: &str = "application/x-www-form-urlencoded";
/// The memory P6's server lets one run's events hold.
const P6_STREAM_BYTES: usize = 256 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---------------------------------------------------------------------------------------------
// The servers (child processes)

/// Prints the port a child server listens on: the parent reads this line.
fn announce(listener: &TcpListener) {
    let port = listener.local_addr().expect("local addr").port();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "port {port}").expect("announce");
    stdout.flush().expect("flush");
}

/// The bgrun server as `bgrun serve` runs it on SQLite: its defaults, but the memory one run's
/// events may hold (`LogConfig::max_stream_bytes`, 0: the default).
fn serve_bgrun(db: &str, max_stream_bytes: usize, finished_ttl_ms: Option<u64>) {
    runtime().block_on(async {
        let store = bgrun_store_sqlite::SqliteStore::open(db)
            .await
            .expect("open store");
        let mut config = bgrun_exec::EngineConfig {
            exclusive_store: true,
            ..bgrun_exec::EngineConfig::default()
        };
        if max_stream_bytes > 0 {
            config.log.max_stream_bytes = max_stream_bytes;
        }
        if let Some(ttl) = finished_ttl_ms {
            config.log.finished_ttl = Duration::from_millis(ttl);
        }
        let engine =
            bgrun_exec::Engine::open(Arc::new(store), bgrun_exec::demo::registry(), config)
                .await
                .expect("open engine");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        announce(&listener);
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

/// A run as the raw server's GET answers it: the shape and size of bgrun's.
const RAW_RUN: &str = r#"{"run_id":"0197a6c4-5b1e-7c3a-9f0e-2d4b6a8c0e1f","session_id":"0197a6c4-5b1e-7c3a-9f0e-2d4b6a8c0e20","user_id":null,"agent_id":"echo","status":"COMPLETED","content":"hello world","error":null,"cancellation_stage":null,"parent_run_id":null,"metadata":null,"created_at":1750000000,"updated_at":1750000000,"last_event_index":3}"#;

#[derive(Clone, Default)]
struct RawState {
    next_id: Arc<AtomicU64>,
    /// Pre-rendered SSE frames, in chunks.
    frames: Arc<Mutex<Vec<Bytes>>>,
}

/// The bare axum server: the same routes, no engine.
fn serve_raw() {
    runtime().block_on(async {
        let app = Router::new()
            .route("/health", get(|| async { r#"{"status":"ok"}"# }))
            .route("/agents/echo/runs", post(raw_start))
            .route(
                "/agents/echo/runs/{run_id}",
                get(|| async { raw_json(RAW_RUN.to_owned()) }),
            )
            .route("/frames", post(raw_load))
            .route("/agents/ticker/runs/{run_id}/resume", get(raw_resume))
            .layer(DefaultBodyLimit::disable())
            .with_state(RawState::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        announce(&listener);
        axum::serve(listener, app).await.expect("serve");
    });
}

fn raw_json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn raw_start(
    axum::extract::State(state): axum::extract::State<RawState>,
    _body: Bytes,
) -> Response {
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let run_id = format!("0197a6c4-5b1e-7c3a-9f0e-{n:012x}");
    let body = json!({"run_id": run_id, "session_id": run_id, "status": "PENDING"}).to_string();
    (StatusCode::ACCEPTED, raw_json(body)).into_response()
}

/// Takes the SSE body to serve, split at frame ends every `CHUNK_FRAMES` frames.
async fn raw_load(
    axum::extract::State(state): axum::extract::State<RawState>,
    body: Bytes,
) -> StatusCode {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut frames = 0;
    let mut at = 0;
    while let Some(end) = find(&body[at..], b"\n\n") {
        at += end + 2;
        frames += 1;
        if frames == CHUNK_FRAMES {
            chunks.push(body.slice(start..at));
            start = at;
            frames = 0;
        }
    }
    if start < body.len() {
        chunks.push(body.slice(start..));
    }
    *state.frames.lock().unwrap() = chunks;
    StatusCode::NO_CONTENT
}

async fn raw_resume(axum::extract::State(state): axum::extract::State<RawState>) -> Response {
    let chunks = state.frames.lock().unwrap().clone();
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>));
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
    headers.insert(header::CACHE_CONTROL, "no-cache".parse().unwrap());
    response
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A server in a child process, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn spawn(args: &[&str]) -> Server {
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read port");
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("server did not announce its port: {line:?}"));
        Server { child, port }
    }

    fn bgrun(db: &Path, max_stream_bytes: usize) -> Server {
        Server::spawn(&[
            "--serve-bgrun",
            db.to_str().expect("utf-8 path"),
            &max_stream_bytes.to_string(),
        ])
    }

    /// bgrun whose finished runs leave memory as soon as the evictor sees them: the state of a
    /// server after the buffer's TTL.
    fn bgrun_past_ttl(db: &Path) -> Server {
        Server::spawn(&["--serve-bgrun", db.to_str().expect("utf-8 path"), "0", "0"])
    }

    fn raw() -> Server {
        Server::spawn(&["--serve-raw"])
    }

    /// Waits for `GET /health` 200.
    async fn ready(&self) {
        let began = Instant::now();
        loop {
            if let Ok(mut conn) = Conn::open(self.port).await {
                if let Ok((StatusCode::OK, _)) =
                    conn.try_request(Method::GET, "/health", None).await
                {
                    return;
                }
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "server not ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

impl Conn {
    async fn open(port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(Conn { sender })
    }

    fn build(method: Method, path: &str, form: Option<Bytes>) -> Request<Full<Bytes>> {
        let builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "127.0.0.1");
        match form {
            Some(form) => builder
                .header(header::CONTENT_TYPE, FORM)
                .body(Full::new(form)),
            None => builder.body(Full::new(Bytes::new())),
        }
        .expect("request")
    }

    async fn try_request(
        &mut self,
        method: Method,
        path: &str,
        form: Option<Bytes>,
    ) -> hyper::Result<(StatusCode, Bytes)> {
        self.sender.ready().await?;
        let response = self
            .sender
            .send_request(Conn::build(method, path, form))
            .await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        form: Option<Bytes>,
    ) -> (StatusCode, Bytes) {
        self.try_request(method, path, form).await.expect("request")
    }

    /// POSTs a start, expecting 202; the run's id.
    async fn start(&mut self, kind_id: &str, form: Bytes) -> String {
        let (status, body) = self
            .request(Method::POST, &format!("/{kind_id}/runs"), Some(form))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
        let answer: Value = serde_json::from_slice(&body).expect("json");
        answer["run_id"].as_str().expect("run_id").to_owned()
    }

    /// GETs a run; its status.
    async fn status(&mut self, kind_id: &str, run_id: &str) -> String {
        let (status, body) = self
            .request(Method::GET, &format!("/{kind_id}/runs/{run_id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        let run: Value = serde_json::from_slice(&body).expect("json");
        run["status"].as_str().expect("status").to_owned()
    }

    /// GETs a streamed body to its end; its bytes (kept only when `keep`) and length.
    async fn stream(&mut self, path: &str, keep: bool) -> (Vec<u8>, usize) {
        self.sender.ready().await.expect("ready");
        let response = self
            .sender
            .send_request(Conn::build(Method::GET, path, None))
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut kept = Vec::new();
        let mut len = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("body").into_data() {
                len += data.len();
                if keep {
                    kept.extend_from_slice(&data);
                }
            }
        }
        (kept, len)
    }
}

fn terminal(status: &str) -> bool {
    matches!(status, "COMPLETED" | "ERROR" | "CANCELLED")
}

/// `n` starts spread over `CLIENTS` connections; each start's latency.
async fn start_latencies(port: u16, n: usize) -> Vec<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let form = Bytes::from_static(START_FORM.as_bytes());
    let clients = (0..CLIENTS).map(|_| {
        let next = next.clone();
        let form = form.clone();
        tokio::spawn(async move {
            let mut conn = Conn::open(port).await.expect("connect");
            let mut samples = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let began = Instant::now();
                let run_id = conn.start("agents/echo", form.clone()).await;
                samples.push(began.elapsed());
                std::hint::black_box(run_id);
            }
            samples
        })
    });
    let mut samples = Vec::with_capacity(n);
    for client in futures::future::join_all(clients).await {
        samples.extend(client.expect("client"));
    }
    samples
}

/// P4: start latency at `CLIENTS` concurrent clients.
async fn p4(dir: &Path, n: usize) -> Vec<Value> {
    let warmup = n / 10;
    let raw = Server::raw();
    raw.ready().await;
    start_latencies(raw.port, warmup).await;
    let mut raw_samples = start_latencies(raw.port, n).await;
    drop(raw);

    let server = Server::bgrun(&dir.join("p4.db"), 0);
    server.ready().await;
    start_latencies(server.port, warmup).await;
    let mut samples = start_latencies(server.port, n).await;
    drop(server);
    vec![
        row(
            "P4",
            "p50_us",
            percentile(&mut samples, 0.50),
            percentile(&mut raw_samples, 0.50),
        ),
        row(
            "P4",
            "p99_us",
            percentile(&mut samples, 0.99),
            percentile(&mut raw_samples, 0.99),
        ),
    ]
}

/// What a P5 client does per run.
#[derive(Clone, Copy)]
enum Polling {
    /// GET until terminal (bgrun).
    UntilTerminal,
    /// This many GETs in all, spread evenly over the runs (raw: bgrun's count).
    Fixed(usize),
}

/// `n` runs started over `CLIENTS` connections, each polled: the time and the GETs made.
async fn runs_polled(port: u16, n: usize, polling: Polling) -> (Duration, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let gets = Arc::new(AtomicUsize::new(0));
    let form = Bytes::from_static(START_FORM.as_bytes());
    let began = Instant::now();
    let clients = (0..CLIENTS).map(|_| {
        let (next, gets, form) = (next.clone(), gets.clone(), form.clone());
        tokio::spawn(async move {
            let mut conn = Conn::open(port).await.expect("connect");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let run_id = conn.start("agents/echo", form.clone()).await;
                match polling {
                    Polling::UntilTerminal => loop {
                        gets.fetch_add(1, Ordering::Relaxed);
                        if terminal(&conn.status("agents/echo", &run_id).await) {
                            break;
                        }
                    },
                    Polling::Fixed(total) => {
                        let count = total / n + usize::from(i < total % n);
                        for _ in 0..count {
                            gets.fetch_add(1, Ordering::Relaxed);
                            std::hint::black_box(terminal(
                                &conn.status("agents/echo", &run_id).await,
                            ));
                        }
                    }
                }
            }
        })
    });
    for client in futures::future::join_all(clients).await {
        client.expect("client");
    }
    (began.elapsed(), gets.load(Ordering::Relaxed))
}

/// P5: background runs polled to completion, runs/s.
async fn p5(dir: &Path, n: usize) -> Vec<Value> {
    let server = Server::bgrun(&dir.join("p5.db"), 0);
    server.ready().await;
    runs_polled(server.port, n / 10, Polling::UntilTerminal).await;
    let (elapsed, gets) = runs_polled(server.port, n, Polling::UntilTerminal).await;
    drop(server);

    let raw = Server::raw();
    raw.ready().await;
    runs_polled(raw.port, n / 10, Polling::Fixed(gets / 10)).await;
    let (raw_elapsed, raw_gets) = runs_polled(raw.port, n, Polling::Fixed(gets)).await;
    assert_eq!(raw_gets, gets);
    drop(raw);
    println!(
        "P5: {n} runs, {gets} GETs ({:.2} per run)",
        gets as f64 / n as f64
    );
    vec![row(
        "P5",
        "runs_per_s",
        n as f64 / elapsed.as_secs_f64(),
        n as f64 / raw_elapsed.as_secs_f64(),
    )]
}

/// Events/s of one full resume of `path` on `port`, expecting `len` bytes.
async fn replay_rate(port: u16, path: &str, len: usize, events: u64) -> f64 {
    let mut conn = Conn::open(port).await.expect("connect");
    let began = Instant::now();
    let (_, got) = conn.stream(path, false).await;
    let elapsed = began.elapsed();
    assert_eq!(got, len, "a different body");
    events as f64 / elapsed.as_secs_f64()
}

/// P6: resume catch-up of a finished `count`-event ticker run, from memory and from the store.
async fn p6(dir: &Path, count: u64, reps: usize) -> Vec<Value> {
    let db = dir.join("p6.db");
    // The whole run in memory (with the default 16 MiB per run, a 100,000-event run's first
    // events would leave memory and be read from the store).
    let server = Server::bgrun(&db, P6_STREAM_BYTES);
    server.ready().await;
    let mut conn = Conn::open(server.port).await.expect("connect");
    let form = format!("message=go&count={count}&background=true&stream=false");
    let run_id = conn.start("agents/ticker", Bytes::from(form)).await;
    while !terminal(&conn.status("agents/ticker", &run_id).await) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let path = format!("/agents/ticker/runs/{run_id}/resume");
    let (body, len) = conn.stream(&path, true).await;
    let events = body
        .split(|&byte| byte == b'\n')
        .filter(|line| line.starts_with(b"id: "))
        .count() as u64;
    assert_eq!(events, count + 2, "RunStarted, the ticks, RunCompleted");
    assert!(body.starts_with(b"event: replay\n"));

    // Raw reads alternate with bgrun's, so that the machine's noise falls on both alike.
    let raw = Server::raw();
    raw.ready().await;
    let mut conn = Conn::open(raw.port).await.expect("connect");
    let (status, _) = conn
        .request(Method::POST, "/frames", Some(Bytes::from(body)))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut raw_rates = Vec::new();
    let mut memory = Vec::new();
    for _ in 0..reps {
        raw_rates.push(replay_rate(raw.port, &path, len, events).await);
        memory.push(replay_rate(server.port, &path, len, events).await);
    }
    drop(server);

    // From the store: a server past the buffer's TTL (its log keeps no finished run) reads
    // every replay from the store.
    let server = Server::bgrun_past_ttl(&db);
    server.ready().await;
    let mut store = Vec::new();
    for _ in 0..reps {
        raw_rates.push(replay_rate(raw.port, &path, len, events).await);
        store.push(replay_rate(server.port, &path, len, events).await);
    }
    drop((server, raw));
    println!(
        "P6: {events} events, {len} bytes of SSE; median of {reps} reads each, raw reads alternating"
    );
    let raw = median(raw_rates);
    vec![
        row("P6", "events_per_s_mem", median(memory), raw),
        row("P6", "events_per_s_db", median(store), raw),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == "--serve-raw") {
        serve_raw();
        return;
    }
    if let Some(at) = args.iter().position(|arg| arg == "--serve-bgrun") {
        let db = &args[at + 1];
        let max_stream_bytes = args[at + 2].parse().expect("max stream bytes");
        let finished_ttl_ms = args.get(at + 3).map(|ms| ms.parse().expect("finished TTL"));
        serve_bgrun(db, max_stream_bytes, finished_ttl_ms);
        return;
    }
    let options = BenchOptions::from_args();
    options.announce(&format!(
        "bgrun HTTP bench: sqlite, {CLIENTS} clients, loopback, server in a child process"
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let (p4_n, p5_n, p6_events, p6_reps) = if options.quick {
        (2_000, 1_000, 20_000, 3)
    } else {
        (20_000, 10_000, 100_000, 9)
    };
    let mut rows = Vec::new();
    runtime().block_on(async {
        if options.runs("P4") {
            rows.extend(p4(dir.path(), p4_n).await);
        }
        if options.runs("P5") {
            rows.extend(p5(dir.path(), p5_n).await);
        }
        if options.runs("P6") {
            rows.extend(p6(dir.path(), p6_events, p6_reps).await);
        }
    });
    options.write(&rows).expect("write bench rows");
}
