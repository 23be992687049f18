//! Engine benchmarks P1-P3 on SQLite, each beside a "raw" row: plain rusqlite doing the same
//! writes with no engine around them, measured in the same run.
//!
//! `cargo xtask bench` runs this; directly: `cargo bench -p bgrun --bench engine -- [--quick]
//! [--out FILE]`. Rows are printed and written as JSON.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark fails loudly

use std::path::Path;
use std::time::{Duration, Instant};

use bgrun::{demo, Engine, EngineConfig, RunId, StartRequest};
use futures::StreamExt;
use rusqlite::{params, Connection};
use serde_json::{json, Value};

struct Options {
    quick: bool,
    out: Option<String>,
}

fn options() -> Options {
    let mut options = Options {
        quick: false,
        out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--out" => options.out = args.next(),
            _ => {} // cargo bench passes --bench
        }
    }
    options
}

fn row(id: &str, metric: &str, value: f64, raw: f64) -> Value {
    let ratio = if raw == 0.0 { 0.0 } else { value / raw };
    println!(
        "{id:<4} sqlite  {metric:<14} bgrun {value:>14.1}   raw {raw:>14.1}   ratio {ratio:>6.2}"
    );
    json!({"id": id, "store": "sqlite", "metric": metric, "value": round(value), "raw": round(raw), "ratio": round(ratio)})
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank].as_secs_f64() * 1e6
}

/// The connection settings the SQLite store uses, so raw rows do the same durable work.
fn raw_connection(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open raw db");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("sync");
    conn.execute_batch(
        "CREATE TABLE runs (seq INTEGER PRIMARY KEY, run_id TEXT UNIQUE NOT NULL, session_id TEXT NOT NULL,
            kind TEXT NOT NULL, component_id TEXT NOT NULL, status TEXT NOT NULL, input TEXT NOT NULL,
            params TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
            last_event_index INTEGER);
         CREATE TABLE events (run_id TEXT NOT NULL, event_index INTEGER NOT NULL, event_type TEXT NOT NULL,
            json TEXT NOT NULL, PRIMARY KEY (run_id, event_index)) WITHOUT ROWID;",
    )
    .expect("schema");
    conn
}

fn insert_run(conn: &Connection, run_id: &str) {
    conn.prepare_cached(
        "INSERT INTO runs (run_id, session_id, kind, component_id, status, input, params, created_at, updated_at)
         VALUES (?1, ?2, 'agent', 'echo', 'PENDING', 'x', '{\"delay_ms\":0}', 0, 0)",
    )
    .expect("prepare")
    .execute(params![run_id, run_id])
    .expect("insert run");
}

fn event_json(run_id: &str, index: u64) -> String {
    format!(
        r#"{{"event":"RunContent","run_id":"{run_id}","session_id":"{run_id}","created_at":0,"event_index":{index},"content":"tick {index}"}}"#
    )
}

fn insert_event(conn: &Connection, run_id: &str, index: u64) {
    conn.prepare_cached(
        "INSERT INTO events (run_id, event_index, event_type, json) VALUES (?1, ?2, ?3, ?4)",
    )
    .expect("prepare")
    .execute(params![
        run_id,
        index as i64,
        "RunContent",
        event_json(run_id, index)
    ])
    .expect("insert event");
}

fn set_status(conn: &Connection, run_id: &str, from: &str, to: &str, last: Option<u64>) {
    conn.prepare_cached(
        "UPDATE runs SET status = ?1, updated_at = 1, last_event_index = ?2 WHERE run_id = ?3 AND status = ?4",
    )
    .expect("prepare")
    .execute(params![to, last.map(|l| l as i64), run_id, from])
    .expect("update");
}

async fn engine(dir: &Path, name: &str) -> Engine {
    bgrun::open_sqlite_with(
        dir.join(name),
        demo::registry(),
        EngineConfig {
            max_concurrency: 1024,
            ..EngineConfig::default()
        },
    )
    .await
    .expect("open engine")
}

/// P1: `start` until PENDING is persisted, one after another.
async fn p1(dir: &Path, n: usize) -> Vec<Value> {
    let engine = engine(dir, "p1.db").await;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let began = Instant::now();
        let started = engine
            .start(StartRequest::agent("ticker", "x").param("count", 0))
            .await
            .expect("start");
        samples.push(began.elapsed());
        std::hint::black_box(started);
    }
    engine.shutdown(Duration::from_secs(30)).await;
    let conn = raw_connection(&dir.join("p1-raw.db"));
    let mut raw = Vec::with_capacity(n);
    for _ in 0..n {
        let run_id = RunId::generate();
        let began = Instant::now();
        insert_run(&conn, run_id.as_str());
        raw.push(began.elapsed());
    }
    vec![
        row(
            "P1",
            "p50_us",
            percentile(&mut samples, 0.50),
            percentile(&mut raw, 0.50),
        ),
        row(
            "P1",
            "p99_us",
            percentile(&mut samples, 0.99),
            percentile(&mut raw, 0.99),
        ),
    ]
}

/// P2: `runs` runs of 10 events each, launched at once, until all are terminal.
async fn p2(dir: &Path, runs: usize) -> Vec<Value> {
    let engine = engine(dir, "p2.db").await;
    let began = Instant::now();
    let starts =
        (0..runs).map(|_| engine.start(StartRequest::agent("ticker", "x").param("count", 10)));
    let started = futures::future::join_all(starts).await;
    let waits = started.into_iter().map(|started| {
        let engine = engine.clone();
        async move {
            engine
                .wait(&started.expect("start").run.run_id)
                .await
                .expect("wait")
        }
    });
    futures::future::join_all(waits).await;
    let elapsed = began.elapsed();
    engine.shutdown(Duration::from_secs(30)).await;

    // Raw: the same rows (run, RUNNING, 12 events, COMPLETED) in batched transactions.
    let mut conn = raw_connection(&dir.join("p2-raw.db"));
    let began = Instant::now();
    let ids: Vec<RunId> = (0..runs).map(|_| RunId::generate()).collect();
    for chunk in ids.chunks(100) {
        let tx = conn.transaction().expect("tx");
        for id in chunk {
            insert_run(&tx, id.as_str());
        }
        for id in chunk {
            set_status(&tx, id.as_str(), "PENDING", "RUNNING", Some(0));
            for index in 0..12 {
                insert_event(&tx, id.as_str(), index);
            }
            set_status(&tx, id.as_str(), "RUNNING", "COMPLETED", Some(11));
        }
        tx.commit().expect("commit");
    }
    let raw = began.elapsed();
    vec![row(
        "P2",
        "runs_per_s",
        runs as f64 / elapsed.as_secs_f64(),
        runs as f64 / raw.as_secs_f64(),
    )]
}

/// P3: one detached run of `events` events, read by a subscriber that sees each only once
/// durable.
async fn p3(dir: &Path, events: u64) -> Vec<Value> {
    let engine = engine(dir, "p3.db").await;
    let began = Instant::now();
    let run = engine
        .start(StartRequest::agent("ticker", "x").param("count", events as i64))
        .await
        .expect("start")
        .run;
    let mut stream = engine.events(&run.run_id, None);
    let mut seen = 0u64;
    while let Some(batch) = stream.next().await {
        batch.expect("event");
        seen += 1;
    }
    let elapsed = began.elapsed();
    assert_eq!(seen, events + 2);
    engine.shutdown(Duration::from_secs(30)).await;

    let mut conn = raw_connection(&dir.join("p3-raw.db"));
    let run_id = RunId::generate();
    insert_run(&conn, run_id.as_str());
    let began = Instant::now();
    let mut index = 0;
    while index < events {
        let tx = conn.transaction().expect("tx");
        for _ in 0..1000.min(events - index) {
            insert_event(&tx, run_id.as_str(), index);
            index += 1;
        }
        tx.commit().expect("commit");
    }
    let raw = began.elapsed();
    vec![row(
        "P3",
        "events_per_s",
        (events + 2) as f64 / elapsed.as_secs_f64(),
        events as f64 / raw.as_secs_f64(),
    )]
}

fn main() {
    let options = options();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "bgrun engine bench: sqlite, {cores} cores{}",
        if options.quick { ", quick" } else { "" }
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (p1_n, p2_n, p3_n) = if options.quick {
        (300, 1000, 100_000)
    } else {
        (3000, 1000, 1_000_000)
    };
    let mut rows = Vec::new();
    runtime.block_on(async {
        rows.extend(p1(dir.path(), p1_n).await);
        rows.extend(p2(dir.path(), p2_n).await);
        rows.extend(p3(dir.path(), p3_n).await);
    });
    if let Some(out) = options.out {
        let text = serde_json::to_string_pretty(&rows).expect("json");
        std::fs::write(&out, text).expect("write bench rows");
    }
}
