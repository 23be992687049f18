//! Measures the two ways to store a batch of events: one multi-row `INSERT ... SELECT FROM
//! unnest(...)` against binary `COPY`, each committing 1,000-row batches (and 10-row ones,
//! the usual group-commit size) into a scratch table shaped like `events`.
//!
//! ```text
//! BGRUN_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run -p bgrun-store-postgres --example insert_vs_copy
//! ```
//! Measured on the development machine (2 cores shared with other builds, PostgreSQL 15 on
//! localhost, debug build), median of 100 batches, three runs:
//! ```text
//!  1000-row batches: multi-row INSERT (unnest) 2.37-2.62 ms, binary COPY 3.55-4.56 ms
//!    10-row batches: multi-row INSERT (unnest)  159-293 µs, binary COPY  216-461 µs
//! ```
//! The store uses the INSERT (`src/events.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: fail loudly

use std::time::{Duration, Instant};

use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Statement};

const ROUNDS: usize = 100;

struct Batch {
    run_id: String,
    indices: Vec<i64>,
    types: Vec<String>,
    jsons: Vec<String>,
}

fn batch(run: usize, size: usize) -> Batch {
    let run_id = format!("run-{run}");
    let indices: Vec<i64> = (0..size as i64).collect();
    let types = vec!["RunContent".to_string(); size];
    let jsons = indices
        .iter()
        .map(|i| {
            format!(
                r#"{{"event":"RunContent","run_id":"{run_id}","session_id":"s","created_at":1700000000,"event_index":{i},"content":"token number {i} of the reply"}}"#
            )
        })
        .collect();
    Batch {
        run_id,
        indices,
        types,
        jsons,
    }
}

/// The store prepares its statement once per connection (`prepare_cached`): so does this.
async fn insert(client: &mut Client, statement: &Statement, batch: &Batch) {
    let tx = client.transaction().await.unwrap();
    tx.execute(
        statement,
        &[&batch.run_id, &batch.indices, &batch.types, &batch.jsons],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

async fn copy(client: &mut Client, batch: &Batch) {
    let tx = client.transaction().await.unwrap();
    let sink = tx
        .copy_in("COPY bench_events (run_id, event_index, event_type, json) FROM STDIN BINARY")
        .await
        .unwrap();
    let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT]);
    pin_mut!(writer);
    for ((index, event_type), json) in batch.indices.iter().zip(&batch.types).zip(&batch.jsons) {
        writer
            .as_mut()
            .write(&[&batch.run_id, index, event_type, json])
            .await
            .unwrap();
    }
    writer.finish().await.unwrap();
    tx.commit().await.unwrap();
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::var("BGRUN_TEST_PG_URL").expect("set BGRUN_TEST_PG_URL");
    let (mut client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TEMP TABLE bench_events (run_id TEXT NOT NULL, event_index BIGINT NOT NULL, \
             event_type TEXT NOT NULL, json TEXT NOT NULL, PRIMARY KEY (run_id, event_index))",
        )
        .await
        .unwrap();
    let statement = client
        .prepare(
            "INSERT INTO bench_events (run_id, event_index, event_type, json) \
             SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[])",
        )
        .await
        .unwrap();
    let mut run = 0;
    for size in [1000, 10] {
        let (mut by_insert, mut by_copy) = (Vec::new(), Vec::new());
        // Alternate, so that both see the same table size and cache state; round 0 warms up.
        for round in 0..=ROUNDS {
            run += 1;
            let b = batch(run, size);
            let started = Instant::now();
            insert(&mut client, &statement, &b).await;
            let insert_time = started.elapsed();
            run += 1;
            let b = batch(run, size);
            let started = Instant::now();
            copy(&mut client, &b).await;
            let copy_time = started.elapsed();
            if round > 0 {
                by_insert.push(insert_time);
                by_copy.push(copy_time);
            }
        }
        println!(
            "{size:>5}-row batches, median of {ROUNDS}: multi-row INSERT (unnest) {:?}, binary COPY {:?}",
            median(by_insert),
            median(by_copy)
        );
    }
}
