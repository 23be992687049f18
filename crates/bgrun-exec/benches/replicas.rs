//! R1: the live tail across replicas on PostgreSQL. Two engines on one schema; a component on A
//! emits an event when told, B follows the run through `Engine::events`; the latency is B's
//! delivery minus A's emit (A's store write, the notification, B's read of the store). Beside
//! it, the "raw" row: PostgreSQL's bare LISTEN/NOTIFY round trip with tokio-postgres (NOTIFY on
//! one connection, received on another), measured in the same run.
//!
//! `cargo xtask bench` runs this; directly (with `BGRUN_TEST_PG_URL` set):
//! `cargo bench -p bgrun-exec --bench replicas -- [--quick] [--out FILE]`. Rows are printed and
//! written as JSON, in the format of the engine bench: {id, store, metric, value, raw, ratio}.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark fails loudly

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bgrun_core::RunKind;
use bgrun_exec::{
    ComponentInfo, Engine, EngineConfig, RunContext, RunFailure, RunOutput, Runnable, StartRequest,
};
use bgrun_store_postgres::testing::TestSchema;
use bgrun_testkit::bench::{percentile_us as percentile, row as store_row, BenchOptions};
use futures::StreamExt;
use serde_json::Value;

fn row(id: &str, metric: &str, value: f64, raw: f64) -> Value {
    store_row(id, "postgres", metric, value, raw)
}
use tokio::sync::mpsc;

/// Agent `pulse`: one `RunContent` per message on its channel, noting when it emitted it; ends
/// when the channel closes.
#[derive(Clone)]
struct Pulse {
    told: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>>,
    emitted: Arc<Mutex<Vec<Instant>>>,
}

#[bgrun_core::async_trait]
impl Runnable for Pulse {
    fn info(&self) -> ComponentInfo {
        ComponentInfo::new(RunKind::Agent, "pulse")
    }

    async fn run(&self, ctx: RunContext) -> Result<RunOutput, RunFailure> {
        let mut told = self.told.lock().await;
        while told.recv().await.is_some() {
            self.emitted.lock().unwrap().push(Instant::now());
            ctx.emit_content("p").await?;
        }
        Ok(RunOutput::default())
    }
}

/// The engine's samples: `warmup + n` events emitted one at a time on A, each awaited on B.
async fn engine_tail(schema: &TestSchema, warmup: usize, n: usize) -> Vec<Duration> {
    let (tell, told) = mpsc::unbounded_channel();
    let pulse = Pulse {
        told: Arc::new(tokio::sync::Mutex::new(told)),
        emitted: Arc::default(),
    };
    let mut engines = Vec::new();
    for _ in 0..2 {
        let store = Arc::new(schema.store().await.expect("store"));
        let registry = bgrun_exec::demo::registry().with(pulse.clone());
        engines.push(
            Engine::open(store, registry, EngineConfig::default())
                .await
                .expect("engine"),
        );
    }
    let (a, b) = (&engines[0], &engines[1]);
    let run = a
        .start(StartRequest::agent("pulse", ""))
        .await
        .expect("start")
        .run;
    let mut on_b = b.events(&run.run_id, None);
    let started = on_b.next().await.expect("RunStarted").expect("event");
    assert_eq!(started.event_type(), "RunStarted");
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        tell.send(()).expect("pulse");
        let event = on_b.next().await.expect("an event").expect("event");
        let delivered = Instant::now();
        assert_eq!(event.index(), i as u64 + 1, "B delivers in order, gapless");
        let emitted = pulse.emitted.lock().unwrap()[i];
        if i >= warmup {
            samples.push(delivered - emitted);
        }
    }
    drop(tell);
    let end = on_b
        .next()
        .await
        .expect("the terminal event")
        .expect("event");
    assert_eq!(end.event_type(), "RunCompleted");
    for engine in &engines {
        engine.shutdown(Duration::from_secs(10)).await;
    }
    samples
}

/// The raw samples: `NOTIFY` on one connection until the `LISTEN`ing one receives it.
async fn raw_notify(url: &str, channel: &str, warmup: usize, n: usize) -> Vec<Duration> {
    let (listener, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let (heard, mut hear) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(note) = message {
                let _ = heard.send((Instant::now(), note.payload().to_owned()));
            }
        }
    });
    listener
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await
        .expect("listen");
    let (notifier, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let sent = Instant::now();
        notifier
            .batch_execute(&format!("NOTIFY \"{channel}\", '{i}'"))
            .await
            .expect("notify");
        let (received, payload) = hear.recv().await.expect("a notification");
        assert_eq!(payload, i.to_string());
        if i >= warmup {
            samples.push(received - sent);
        }
    }
    samples
}

fn main() {
    let options = BenchOptions::from_args();
    options.announce("bgrun replicas bench: postgres");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (warmup, n) = if options.quick {
        (20, 200)
    } else {
        (100, 2000)
    };
    let schema = TestSchema::new();
    let rows = runtime.block_on(async {
        let mut engine = engine_tail(&schema, warmup, n).await;
        let mut raw = raw_notify(schema.url(), schema.name(), warmup, n).await;
        vec![
            row(
                "R1",
                "tail_p50_us",
                percentile(&mut engine, 0.50),
                percentile(&mut raw, 0.50),
            ),
            row(
                "R1",
                "tail_p99_us",
                percentile(&mut engine, 0.99),
                percentile(&mut raw, 0.99),
            ),
        ]
    });
    drop(schema);
    options.write(&rows).expect("write bench rows");
}
