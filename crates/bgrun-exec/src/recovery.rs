//! Taking over what a dead process left: its `RUNNING` runs end `ERROR` "interrupted" (or run
//! again when retryable), its `PENDING` ones are queued again. Also the engine's background
//! tasks: eviction, the sweep of expired durable streams, lease renewal, and the search for
//! lapsed leases.

use std::sync::Arc;

use bgrun_core::{
    LeaseGrant, Outcome, RunFilter, RunId, RunRecord, RunStatus, Transition, TransitionOutcome,
};
use serde_json::{Map, Value};

use crate::engine::Engine;
use crate::error::EngineResult;
use crate::runner::{self, Launch};

/// How many runs one recovery round looks at.
const RECOVERY_BATCH: usize = 100;

/// At open: recovers every orphaned run, then queues every `PENDING` run in creation order.
pub(crate) async fn recover_at_open(engine: &Engine) -> EngineResult<()> {
    if engine.inner.config.exclusive_store {
        // Nobody else can be executing these: this process holds the store alone.
        for status in [RunStatus::Running, RunStatus::Paused] {
            for run in all_runs(engine, status).await? {
                recover_run(engine, run).await?;
            }
        }
    } else {
        recover_orphans(engine).await?;
    }
    let mut pending = all_runs(engine, RunStatus::Pending).await?;
    pending.reverse();
    queue_pending(engine, pending).await
}

/// Queues `PENDING` runs this engine does not hold, oldest first. Another engine may queue the
/// same run: the lease and the `PENDING -> RUNNING` compare-and-set let exactly one execute it.
async fn queue_pending(engine: &Engine, runs: Vec<RunRecord>) -> EngineResult<()> {
    for run in runs {
        if engine.inner.active(&run.run_id).is_some() {
            continue;
        }
        let Ok(component) = engine.inner.component(&run.target).cloned() else {
            tracing::warn!(run_id = %run.run_id, target = %run.target, "queued run of an unknown component left PENDING");
            continue;
        };
        let cancel_requested = engine.inner.store.cancel_requested(&run.run_id).await?;
        runner::launch(
            &engine.inner,
            Launch::queued(run, component, cancel_requested, None),
        )
        .await?;
    }
    Ok(())
}

/// Adopts `PENDING` runs that waited longer than a lease period without starting: runs queued
/// by an engine that died (or one too busy to start them soon).
pub(crate) async fn adopt_stale_pending(engine: &Engine) -> EngineResult<()> {
    let stale_before = bgrun_core::now() - engine.inner.config.lease_ttl.as_secs() as i64;
    let mut stale: Vec<RunRecord> = all_runs(engine, RunStatus::Pending)
        .await?
        .into_iter()
        .filter(|run| run.created_at < stale_before && run.parent_run_id.is_none())
        .collect();
    // Listed newest first: adopt the oldest, a batch at a time.
    stale.reverse();
    stale.truncate(RECOVERY_BATCH);
    queue_pending(engine, stale).await
}

async fn all_runs(engine: &Engine, status: RunStatus) -> EngineResult<Vec<RunRecord>> {
    let filter = RunFilter {
        status: Some(status),
        ..RunFilter::default()
    };
    let mut runs = Vec::new();
    let mut cursor = None;
    loop {
        let page = engine
            .inner
            .store
            .list_runs(&filter, bgrun_core::MAX_PAGE_SIZE, cursor.as_deref())
            .await?;
        runs.extend(page.runs);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(runs),
        }
    }
}

/// Recovers runs whose lease lapsed; returns how many.
pub(crate) async fn recover_orphans(engine: &Engine) -> EngineResult<usize> {
    let mut recovered = 0;
    loop {
        let orphans = engine.inner.store.orphaned_runs(RECOVERY_BATCH).await?;
        let found = orphans.len();
        let mut taken = 0;
        for run in orphans {
            if engine.inner.holds_or_starts(&run.run_id) {
                continue;
            }
            if recover_run(engine, run).await? {
                taken += 1;
            }
        }
        recovered += taken;
        if found < RECOVERY_BATCH || taken == 0 {
            return Ok(recovered);
        }
    }
}

/// Takes one orphaned run: leases it, then runs it again or ends it "interrupted". False when
/// another engine got it first (or it ended meanwhile).
async fn recover_run(engine: &Engine, listed: RunRecord) -> EngineResult<bool> {
    let inner = &engine.inner;
    let owner = &inner.config.owner;
    let leased = !inner.config.exclusive_store;
    if leased
        && inner
            .store
            .acquire_lease(&listed.run_id, owner, inner.config.lease_ttl)
            .await?
            != LeaseGrant::Granted
    {
        return Ok(false);
    }
    let recovered = recover_leased(engine, &listed.run_id).await;
    // A run launched again keeps the lease (its runner renews it, and releases it at the end);
    // whatever else happened, the lease goes, or it would be renewed for good and the run
    // never be seen orphaned again.
    if leased && !matches!(recovered, Ok(Recovered::Launched)) {
        if let Err(error) = inner.store.release_lease(&listed.run_id, owner).await {
            tracing::warn!(run_id = %listed.run_id, %error, "cannot release a recovery lease; it lapses");
        }
    }
    Ok(!matches!(recovered?, Recovered::Left))
}

/// What recovery did with a run it holds the lease of.
enum Recovered {
    Launched,
    Ended,
    /// Ended or gone by the time the lease was taken, or ended by someone else meanwhile.
    Left,
}

/// [`recover_run`] once the lease is held: reads the run afresh (its previous engine may have
/// written until its lease was taken, or ended it).
async fn recover_leased(engine: &Engine, run_id: &RunId) -> EngineResult<Recovered> {
    let inner = &engine.inner;
    let Some(run) = inner.store.get_run(run_id).await? else {
        return Ok(Recovered::Left);
    };
    if !matches!(run.status, RunStatus::Running | RunStatus::Paused) {
        return Ok(Recovered::Left);
    }
    let component = inner.component(&run.target).ok().cloned();
    if let Some(component) = component.filter(|component| component.info.retryable) {
        tracing::info!(run_id = %run.run_id, "running an interrupted run again");
        runner::launch(inner, Launch::queued(run, component, false, None)).await?;
        return Ok(Recovered::Launched);
    }
    let content = crate::content::stored_content(engine, &run).await?;
    let content = if content.is_empty() {
        "interrupted".to_owned()
    } else {
        content
    };
    // The run's content once terminal is its terminal event's: the same text in both.
    let mut fields = Map::new();
    fields.insert("content".into(), Value::String(content.clone()));
    fields.insert("error".into(), Value::String("interrupted".into()));
    let terminal = runner::terminal_event(&run, Outcome::Error, &fields);
    let transition = Transition {
        content: Some(content),
        error: Some("interrupted".into()),
        ..Transition::new(run.status, RunStatus::Error)
    };
    let outcome = inner
        .transition(&run.run_id, &transition, std::slice::from_ref(&terminal))
        .await?;
    if let TransitionOutcome::Applied(_) = outcome {
        tracing::info!(run_id = %run.run_id, "interrupted run ended ERROR");
        return Ok(Recovered::Ended);
    }
    Ok(Recovered::Left)
}

/// Spawns eviction, the expired-stream sweep, lease renewal and orphan recovery; all stop at
/// shutdown.
pub(crate) fn spawn_background(engine: &Engine) {
    let inner = &engine.inner;
    inner.tracker.spawn(
        inner
            .log
            .clone()
            .run_evictor(inner.config.eviction_period, inner.closing.clone()),
    );
    // On every store that keeps streams, exclusive or not: expired streams are data either way.
    // Zero turns it off (a zero-period interval would panic).
    if inner.store.supports_streams() && !inner.config.stream_sweep_every.is_zero() {
        inner.tracker.spawn(crate::streams::sweep::run(
            inner.streams.clone(),
            inner.config.stream_sweep_every,
            inner.closing.clone(),
        ));
    }
    if inner.config.exclusive_store {
        // Nobody else executes runs on this store: no leases to renew. A run is orphaned only
        // when this engine gave up storing its end (the store failing for a while): found and
        // ended here, not at the next open only.
        let engine = engine.clone();
        inner.tracker.spawn(async move {
            let inner = &engine.inner;
            let mut ticks = Ticks::new(inner.config.lease_renew_every).await;
            while ticks.next(&inner.closing).await {
                if let Err(error) = recover_orphans(&engine).await {
                    tracing::warn!(%error, "cannot recover runs left running");
                }
            }
        });
        return;
    }
    // Renewals have a task of their own: the checks below can take long (many runs, a
    // backlog of orphans), and a lease must not lapse behind them.
    let renewing = Arc::clone(&engine.inner);
    inner.tracker.spawn(async move {
        let inner = &renewing;
        let mut ticks = Ticks::new(inner.config.lease_renew_every).await;
        while ticks.next(&inner.closing).await {
            if let Err(error) = inner
                .store
                .renew_leases(&inner.config.owner, inner.config.lease_ttl)
                .await
            {
                tracing::warn!(%error, "cannot renew leases");
            }
        }
    });
    let engine = engine.clone();
    inner.tracker.spawn(async move {
        let inner = &engine.inner;
        let mut ticks = Ticks::new(inner.config.lease_renew_every).await;
        while ticks.next(&inner.closing).await {
            crate::remote::check_cancel_intents(&engine).await;
            if let Err(error) = recover_orphans(&engine).await {
                tracing::warn!(%error, "cannot recover orphaned runs");
            }
            if let Err(error) = adopt_stale_pending(&engine).await {
                tracing::warn!(%error, "cannot adopt waiting runs");
            }
        }
    });
}

/// A background loop's period: the first tick is one period after the start, and a late tick
/// is delayed rather than followed by a burst.
struct Ticks(tokio::time::Interval);

impl Ticks {
    async fn new(period: std::time::Duration) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        Self(interval)
    }

    /// Waits for the next tick; false once the engine closes.
    async fn next(&mut self, closing: &tokio_util::sync::CancellationToken) -> bool {
        tokio::select! {
            _ = closing.cancelled() => false,
            _ = self.0.tick() => true,
        }
    }
}
