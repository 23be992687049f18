//! What users of Agno's background execution do in Python, in Rust: fire-and-forget with
//! polling, resumable streaming, cancelling a running run, cancelling before start, and replaying
//! a finished run from the database after a restart.
//!
//! `cargo run -p bgrun --example background`

use std::time::Duration;

use bgrun::{demo, Engine, RunId, RunStatus, StartRequest};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bgrun.db");
    let engine = bgrun::open_sqlite(&path, demo::registry()).await?;

    // 1. Fire and forget: PENDING at once, then poll until has_completed().
    let started = engine
        .start(StartRequest::agent("echo", "write a haiku about rust").param("delay_ms", 20))
        .await?;
    println!("started {} -> {}", started.run.run_id, started.run.status);
    let run_id = started.run.run_id;
    let mut polls = 0;
    let run = loop {
        let run = engine.get_run(&run_id).await?.ok_or("run vanished")?;
        if run.has_completed() {
            break run;
        }
        polls += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    println!("after {polls} polls: {} {:?}", run.status, run.content);

    // 2. Background + stream: read a few events, lose the connection, resume from the last index.
    let run_id = engine
        .start(
            StartRequest::agent("ticker", "")
                .param("count", 20)
                .param("delay_ms", 5),
        )
        .await?
        .run
        .run_id;
    let mut stream = engine.events(&run_id, None);
    let mut last_index = None;
    for _ in 0..5 {
        let event = stream.next().await.ok_or("stream ended early")??;
        println!("  live   #{} {}", event.index(), event.event_type());
        last_index = Some(event.index());
    }
    drop(stream); // the client went away; the run goes on
    let resume = engine.resume(&run_id, last_index).await?;
    for frame in &resume.meta {
        println!("  meta   {}", frame.to_json());
    }
    let rest: Vec<_> = resume.events.collect().await;
    let first = rest
        .first()
        .ok_or("nothing resumed")?
        .as_ref()
        .map_err(|e| e.to_string())?;
    println!(
        "  resumed {} events from #{} to the terminal one, no gap, no duplicate",
        rest.len(),
        first.index()
    );

    // 3. Cancel a running run: it stops at its next await point and keeps its partial content.
    let run_id = engine
        .start(
            StartRequest::agent("ticker", "")
                .param("count", 1000)
                .param("delay_ms", 10),
        )
        .await?
        .run
        .run_id;
    let mut stream = engine.events(&run_id, None);
    for _ in 0..3 {
        stream.next().await.ok_or("stream ended early")??;
    }
    drop(stream);
    let outcome = engine.cancel(&run_id).await?;
    let run = engine.wait(&run_id).await?;
    println!(
        "cancelled running run: {} (cancelled: {}), stage {:?}, partial content {:?}",
        outcome.status, outcome.cancelled, run.cancellation_stage, run.content
    );

    // 4. Cancel before start, with a run_id chosen up front.
    let run_id = RunId::parse("my-pre-chosen-run")?;
    let outcome = engine.cancel(&run_id).await?;
    println!(
        "cancel before start: {} {}",
        outcome.status, outcome.cancelled
    );
    let started = engine
        .start(StartRequest::agent("echo", "never runs").run_id(run_id.clone()))
        .await?;
    let run = engine.wait(&run_id).await?;
    println!(
        "  started as {}, ended {} at stage {:?}",
        started.run.status, run.status, run.cancellation_stage
    );
    assert_eq!(run.status, RunStatus::Cancelled);

    // 5. Restart: a fresh engine on the same file replays a finished run from the store.
    let finished = engine
        .start(StartRequest::agent("echo", "survives a restart"))
        .await?
        .run
        .run_id;
    let before: Vec<_> = engine.events(&finished, None).collect().await;
    // Every handle on the engine (it holds the store, which holds the file's lock) goes first.
    engine.shutdown(Duration::from_secs(5)).await;
    drop(engine);
    let engine: Engine = bgrun::open_sqlite(&path, demo::registry()).await?;
    let resume = engine.resume(&finished, None).await?;
    println!("after restart: {}", resume.meta[0].to_json());
    let after: Vec<_> = resume.events.collect().await;
    let same = before.len() == after.len()
        && before.iter().zip(&after).all(|(a, b)| match (a, b) {
            (Ok(a), Ok(b)) => a.json() == b.json(),
            _ => false,
        });
    println!(
        "  replayed {} events, identical to the live ones: {same}",
        after.len()
    );
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
