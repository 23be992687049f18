//! Engine benchmarks P1-P3 on SQLite, each beside a "raw" row: plain rusqlite doing the same
//! writes with no engine around them, measured in the same run. With the `postgres` feature and
//! `BGRUN_BENCH_PG_URL` (or `BGRUN_TEST_PG_URL`) set, the same on PostgreSQL, the raw rows
//! written by tokio-postgres alone, in a fresh schema dropped afterwards.
//!
//! `cargo xtask bench` runs this; directly: `cargo bench -p bgrun [--features postgres] --bench
//! engine -- [--quick] [--out FILE] [--only P1,P2,P3]`. Rows are printed and written as JSON.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark fails loudly

use std::path::Path;
use std::time::{Duration, Instant};

use bgrun::{demo, Engine, EngineConfig, RunId, StartRequest};
use bgrun_testkit::bench::{percentile_us as percentile, row as store_row, BenchOptions};
use futures::StreamExt;
use rusqlite::{params, Connection};
use serde_json::Value;

fn row(id: &str, metric: &str, value: f64, raw: f64) -> Value {
    store_row(id, "sqlite", metric, value, raw)
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
    let options = BenchOptions::from_args();
    options.announce("bgrun engine bench: sqlite");
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
        if options.runs("P1") {
            rows.extend(p1(dir.path(), p1_n).await);
        }
        if options.runs("P2") {
            rows.extend(p2(dir.path(), p2_n).await);
        }
        if options.runs("P3") {
            rows.extend(p3(dir.path(), p3_n).await);
        }
        #[cfg(feature = "postgres")]
        match pg::url() {
            Some(url) => rows.extend(pg::all(&url, &options, p1_n, p2_n, p3_n).await),
            None => println!("postgres rows skipped: set BGRUN_BENCH_PG_URL or BGRUN_TEST_PG_URL"),
        }
    });
    options.write(&rows).expect("write bench rows");
}

/// The PostgreSQL rows.
#[cfg(feature = "postgres")]
mod pg {
    use std::time::{Duration, Instant};

    use bgrun::layers::postgres::PostgresConfig;
    use bgrun::{demo, Engine, EngineConfig, RunId, StartRequest};
    use futures::StreamExt;
    use serde_json::Value;
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::{ToSql, Type};
    use tokio_postgres::{Client, NoTls};

    use super::{event_json, percentile, store_row, BenchOptions};

    fn row(id: &str, metric: &str, value: f64, raw: f64) -> Value {
        store_row(id, "postgres", metric, value, raw)
    }

    /// `BGRUN_BENCH_PG_URL`, else `BGRUN_TEST_PG_URL`.
    pub fn url() -> Option<String> {
        ["BGRUN_BENCH_PG_URL", "BGRUN_TEST_PG_URL"]
            .into_iter()
            .filter_map(|var| std::env::var(var).ok())
            .find(|url| !url.trim().is_empty())
    }

    async fn connect(url: &str) -> Client {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// The bench's schemas (the engine's and the raw rows'), dropped when this is dropped.
    struct Schemas {
        url: String,
        engine: String,
        raw: String,
    }

    impl Drop for Schemas {
        fn drop(&mut self) {
            let (url, engine, raw) = (self.url.clone(), self.engine.clone(), self.raw.clone());
            // Drop may run inside the runtime, which cannot block: a thread with its own.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async {
                    connect(&url)
                        .await
                        .batch_execute(&format!(
                            "DROP SCHEMA IF EXISTS {engine} CASCADE; DROP SCHEMA IF EXISTS {raw} CASCADE"
                        ))
                        .await
                })
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!(
                    "could not drop the bench schemas {} and {}",
                    self.engine, self.raw
                );
            }
        }
    }

    async fn engine(url: &str, schema: &str) -> Engine {
        bgrun::open_postgres_with(
            PostgresConfig::new(url).with_schema(schema),
            demo::registry(),
            EngineConfig {
                max_concurrency: 1024,
                ..EngineConfig::default()
            },
        )
        .await
        .expect("open engine on PostgreSQL")
    }

    pub async fn all(
        url: &str,
        options: &BenchOptions,
        p1_n: usize,
        p2_n: usize,
        p3_n: u64,
    ) -> Vec<Value> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let name = format!("bench_{}_{nanos}", std::process::id());
        let schemas = Schemas {
            url: url.to_owned(),
            engine: name.clone(),
            raw: format!("{name}_raw"),
        };
        // The engine's schema is made by its migrations; the raw one copies its tables
        // (columns, keys, indexes), so both sides write the same rows into the same shapes.
        engine(url, &schemas.engine)
            .await
            .shutdown(Duration::from_secs(5))
            .await;
        let client = connect(url).await;
        let (e, r) = (&schemas.engine, &schemas.raw);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {r};
                 CREATE TABLE {r}.runs (LIKE {e}.runs INCLUDING ALL);
                 CREATE TABLE {r}.events (LIKE {e}.events INCLUDING ALL);
                 CREATE TABLE {r}.leases (LIKE {e}.leases INCLUDING ALL);"
            ))
            .await
            .expect("raw schema");
        let mut rows = Vec::new();
        if options.runs("P1") {
            rows.extend(p1(url, &schemas, &client, p1_n).await);
        }
        if options.runs("P2") {
            rows.extend(p2(url, &schemas, &client, p2_n).await);
        }
        if options.runs("P3") {
            rows.extend(p3(url, &schemas, &client, p3_n).await);
        }
        drop(schemas);
        rows
    }

    /// The raw row's start: the run inserted `RUNNING` with its lease and event 0, in one
    /// autocommit statement, as bgrun's create of a run it starts at once writes them.
    fn insert_started_run(r: &str) -> String {
        format!(
            "WITH created AS (INSERT INTO {r}.runs (run_id, session_id, kind, component_id, \
             status, input, params, created_at, updated_at, last_event_index) \
             VALUES ($1, $1, 'agent', 'ticker', 'RUNNING', 'x', '{{\"count\":0}}', $2, $2, 0) \
             RETURNING run_id), \
             leased AS (INSERT INTO {r}.leases (run_id, owner, expires_at) \
             SELECT run_id, 'raw', now() + interval '30 seconds' FROM created) \
             INSERT INTO {r}.events (run_id, event_index, event_type, json) \
             SELECT run_id, 0, 'RunContent', $3 FROM created"
        )
    }

    /// P1: `start` until the run is persisted, one after another (each run, `ticker` with no
    /// ticks, executes beside the next starts; bgrun stores it leased and `RUNNING` with its
    /// first event); raw: the same three rows in one autocommit statement, each run's end
    /// written beside the next inserts as bgrun's is ([`RawExecution`]).
    async fn p1(url: &str, schemas: &Schemas, client: &Client, n: usize) -> Vec<Value> {
        let engine = engine(url, &schemas.engine).await;
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

        let insert = client
            .prepare(&insert_started_run(&schemas.raw))
            .await
            .expect("prepare");
        let execution = RawExecution::new(url, &schemas.raw).await;
        let insert_run = |run_id: RunId| {
            let insert = &insert;
            async move {
                let id = run_id.as_str();
                let began = Instant::now();
                client
                    .execute(insert, &[&id, &0_i64, &event_json(id, 0)])
                    .await
                    .expect("insert run");
                began.elapsed()
            }
        };
        let mut executing = Vec::with_capacity(n);
        let mut raw = Vec::with_capacity(n);
        for _ in 0..n {
            let run_id = RunId::generate();
            raw.push(insert_run(run_id.clone()).await);
            executing.push(tokio::spawn(execution.clone().run(run_id)));
        }
        for run in futures::future::join_all(executing).await {
            run.expect("raw execution");
        }
        // For the record: the same INSERTs with nothing executing beside them.
        let mut alone = Vec::with_capacity(n);
        for _ in 0..n {
            alone.push(insert_run(RunId::generate()).await);
        }
        println!(
            "P1   postgres raw start with no run executing beside it: p50 {:.1} us, p99 {:.1} us",
            percentile(&mut alone, 0.50),
            percentile(&mut alone, 0.99)
        );
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

    /// The writes of a started run executing, in bare tokio-postgres: what bgrun's writers send
    /// for a `ticker` run without ticks once it is stored started (`COMPLETED`, the last event
    /// and the lease's release in one transaction, pipelined in one round trip), on one of four
    /// connections chosen by run (bgrun's writers).
    #[derive(Clone)]
    struct RawExecution {
        /// Each connection with its statements (prepared on it).
        connections: std::sync::Arc<Vec<RawConnection>>,
    }

    struct RawConnection {
        client: Client,
        ended: [tokio_postgres::Statement; 3],
    }

    impl RawExecution {
        async fn new(url: &str, r: &str) -> Self {
            let mut connections = Vec::new();
            for _ in 0..4 {
                let client = connect(url).await;
                let prepare = |sql: String| {
                    let client = &client;
                    async move { client.prepare(&sql).await.expect("prepare") }
                };
                let ended = [
                    prepare(format!(
                        "UPDATE {r}.runs SET status = 'COMPLETED', updated_at = 2, \
                         last_event_index = 1, content = '' \
                         WHERE run_id = $1 AND status = 'RUNNING'"
                    ))
                    .await,
                    prepare(format!(
                        "INSERT INTO {r}.events (run_id, event_index, event_type, json) \
                         VALUES ($1, $2, 'RunContent', $3)"
                    ))
                    .await,
                    prepare(format!(
                        "DELETE FROM {r}.leases WHERE run_id = $1 AND owner = 'raw'"
                    ))
                    .await,
                ];
                connections.push(RawConnection { client, ended });
            }
            Self {
                connections: std::sync::Arc::new(connections),
            }
        }

        async fn run(self, run_id: RunId) {
            let id = run_id.as_str();
            let connection = &self.connections
                [id.bytes().map(usize::from).sum::<usize>() % self.connections.len()];
            let client = &connection.client;
            let last = event_json(id, 1);
            let by_id: Params = &[&id];
            let [completed, event, release] = &connection.ended;
            transaction(
                client,
                [
                    (completed, by_id),
                    (event, &[&id, &1_i64, &last]),
                    (release, by_id),
                ],
            )
            .await;
        }
    }

    type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

    /// Three statements in one transaction, pipelined with `BEGIN` and `COMMIT` in one round
    /// trip (as bgrun's writers send a batch).
    async fn transaction(
        client: &Client,
        statements: [(&tokio_postgres::Statement, Params<'_>); 3],
    ) {
        let [(a, a_params), (b, b_params), (c, c_params)] = statements;
        let (begun, a, b, c, committed) = futures::join!(
            client.batch_execute("BEGIN"),
            client.execute(a, a_params),
            client.execute(b, b_params),
            client.execute(c, c_params),
            client.batch_execute("COMMIT"),
        );
        begun.expect("begin");
        a.and(b).and(c).expect("raw write");
        committed.expect("commit");
    }

    /// P2: `runs` runs of 10 events each, launched at once, until all are terminal; raw: the
    /// same rows (run, RUNNING, 12 events, COMPLETED) with unnest, 100 runs per transaction.
    async fn p2(url: &str, schemas: &Schemas, client: &Client, runs: usize) -> Vec<Value> {
        let engine = engine(url, &schemas.engine).await;
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

        let r = &schemas.raw;
        let insert_runs = format!(
            "INSERT INTO {r}.runs (run_id, session_id, kind, component_id, status, input, params, \
             created_at, updated_at) SELECT id, id, 'agent', 'ticker', 'PENDING', 'x', \
             '{{\"count\":10}}', 0, 0 FROM unnest($1::text[]) AS id"
        );
        let set_status = format!(
            "UPDATE {r}.runs SET status = $2, updated_at = 1, last_event_index = $3 \
             WHERE run_id = ANY($1) AND status = $4"
        );
        let insert_events = format!(
            "INSERT INTO {r}.events (run_id, event_index, event_type, json) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[])"
        );
        let began = Instant::now();
        let ids: Vec<String> = (0..runs)
            .map(|_| RunId::generate().as_str().to_owned())
            .collect();
        for chunk in ids.chunks(100) {
            let (mut run_ids, mut indices, mut types, mut jsons) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for id in chunk {
                for index in 0..12_u64 {
                    run_ids.push(id.as_str());
                    indices.push(index as i64);
                    types.push("RunContent");
                    jsons.push(event_json(id, index));
                }
            }
            client.batch_execute("BEGIN").await.expect("begin");
            client
                .execute(&insert_runs, &[&chunk])
                .await
                .expect("insert runs");
            client
                .execute(&set_status, &[&chunk, &"RUNNING", &0_i64, &"PENDING"])
                .await
                .expect("running");
            client
                .execute(&insert_events, &[&run_ids, &indices, &types, &jsons])
                .await
                .expect("insert events");
            client
                .execute(&set_status, &[&chunk, &"COMPLETED", &11_i64, &"RUNNING"])
                .await
                .expect("completed");
            client.batch_execute("COMMIT").await.expect("commit");
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
    /// durable; raw: the faster of a multi-row INSERT (unnest) and a binary COPY per 1,000
    /// rows, each its own transaction.
    async fn p3(url: &str, schemas: &Schemas, client: &Client, events: u64) -> Vec<Value> {
        let engine = engine(url, &schemas.engine).await;
        let began = Instant::now();
        let run = engine
            .start(StartRequest::agent("ticker", "x").param("count", events as i64))
            .await
            .expect("start")
            .run;
        let mut stream = engine.events(&run.run_id, None);
        let mut seen = 0u64;
        while let Some(event) = stream.next().await {
            event.expect("event");
            seen += 1;
        }
        let elapsed = began.elapsed();
        assert_eq!(seen, events + 2);
        engine.shutdown(Duration::from_secs(30)).await;

        let r = &schemas.raw;
        let insert = client
            .prepare(&format!(
                "INSERT INTO {r}.events (run_id, event_index, event_type, json) \
                 SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[])"
            ))
            .await
            .expect("prepare");
        let run_id = RunId::generate();
        let run_id = run_id.as_str();
        let began = Instant::now();
        let mut index = 0;
        while index < events {
            let end = (index + 1000).min(events);
            let indices: Vec<i64> = (index..end).map(|i| i as i64).collect();
            let types = vec!["RunContent"; indices.len()];
            let jsons: Vec<String> = (index..end).map(|i| event_json(run_id, i)).collect();
            client
                .execute(&insert, &[&run_id, &indices, &types, &jsons])
                .await
                .expect("insert events");
            index = end;
        }
        let multi_row = began.elapsed();

        let run_id = RunId::generate();
        let run_id = run_id.as_str();
        let copy = format!(
            "COPY {r}.events (run_id, event_index, event_type, json) FROM STDIN (FORMAT binary)"
        );
        let began = Instant::now();
        let mut index = 0;
        while index < events {
            let end = (index + 1000).min(events);
            let sink = client.copy_in(&copy).await.expect("copy in");
            let writer =
                BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT]);
            futures::pin_mut!(writer);
            for i in index..end {
                let json = event_json(run_id, i);
                writer
                    .as_mut()
                    .write(&[&run_id, &(i as i64), &"RunContent", &json])
                    .await
                    .expect("copy row");
            }
            writer.finish().await.expect("copy finish");
            index = end;
        }
        let copy = began.elapsed();
        println!(
            "P3   postgres raw: multi-row INSERT {:.0} events/s, binary COPY {:.0} events/s",
            events as f64 / multi_row.as_secs_f64(),
            events as f64 / copy.as_secs_f64()
        );
        let raw = multi_row.min(copy);
        vec![row(
            "P3",
            "events_per_s",
            (events + 2) as f64 / elapsed.as_secs_f64(),
            events as f64 / raw.as_secs_f64(),
        )]
    }
}
