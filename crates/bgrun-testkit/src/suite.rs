//! Running every check and collecting the verdicts.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bgrun_core::{RunFilter, Store};
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::checks::{self, Persistence};
use crate::report::{
    CheckFailure, ConformanceFailures, ConformanceReport, FailedCheck, SkippedCheck,
};
use crate::StoreHarness;

/// What one check came to, short of failing.
enum Verdict {
    Passed,
    Skipped(String),
}

/// Runs every check of the suite, each on a fresh store from `harness`, one after the other.
///
/// A check that panics fails with the panic's message; the others still run. Spawns tokio
/// tasks, so call it inside a tokio runtime (preferably multi-thread, so races race).
pub async fn conformance(
    harness: &dyn StoreHarness,
) -> Result<ConformanceReport, ConformanceFailures> {
    let suite: Vec<(&'static str, BoxFuture<'_, Result<Verdict, CheckFailure>>)> = vec![
        ("create_and_get", on_fresh(harness, checks::create_and_get)),
        (
            "duplicates_and_idempotency",
            on_fresh(harness, checks::duplicates_and_idempotency),
        ),
        (
            "create_and_start",
            on_fresh(harness, checks::create_and_start),
        ),
        (
            "create_and_start_leased",
            on_fresh(harness, checks::create_and_start_leased),
        ),
        ("transitions", on_fresh(harness, checks::transitions)),
        ("cas_races", on_fresh(harness, checks::cas_races)),
        (
            "append_and_read",
            on_fresh(harness, checks::append_and_read),
        ),
        (
            "append_rejections",
            on_fresh(harness, checks::append_rejections),
        ),
        ("large_log", on_fresh(harness, checks::large_log)),
        ("append_races", on_fresh(harness, checks::append_races)),
        (
            "concurrent_writers",
            on_fresh(harness, checks::concurrent_writers),
        ),
        ("cancel_intents", on_fresh(harness, checks::cancel_intents)),
        ("list_paging", on_fresh(harness, checks::list_paging)),
        ("leases", on_fresh(harness, checks::leases)),
        ("fencing", on_fresh(harness, checks::fencing)),
        (
            "leased_transitions",
            on_fresh(harness, checks::leased_transitions),
        ),
        (
            "streams_create",
            on_streams(harness, checks::streams_create),
        ),
        (
            "streams_append_and_read",
            on_streams(harness, checks::streams_append_and_read),
        ),
        (
            "streams_producers",
            on_streams(harness, checks::streams_producers),
        ),
        (
            "streams_stream_seq",
            on_streams(harness, checks::streams_stream_seq),
        ),
        ("streams_close", on_streams(harness, checks::streams_close)),
        ("streams_forks", on_streams(harness, checks::streams_forks)),
        (
            "streams_expiry",
            on_streams(harness, checks::streams_expiry),
        ),
        (
            "streams_expired_listing",
            on_streams(harness, checks::streams_expired_listing),
        ),
        (
            "streams_concurrency",
            on_streams(harness, checks::streams_concurrency),
        ),
        (
            "persistence",
            async move {
                Ok(match checks::persistence(harness).await? {
                    Persistence::Checked => Verdict::Passed,
                    Persistence::NotPersistent => {
                        Verdict::Skipped("the harness does not reopen stores".into())
                    }
                })
            }
            .boxed(),
        ),
        (
            "streams_persistence",
            async move {
                let store = harness.fresh().await;
                if !store.supports_streams() {
                    return Ok(Verdict::Skipped(checks::STREAMS_UNSUPPORTED.into()));
                }
                Ok(match checks::streams_persistence(harness, store).await? {
                    Persistence::Checked => Verdict::Passed,
                    Persistence::NotPersistent => {
                        Verdict::Skipped("the harness does not reopen stores".into())
                    }
                })
            }
            .boxed(),
        ),
    ];
    debug_assert_eq!(
        suite.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        checks::NAMES
    );

    let mut report = ConformanceReport::default();
    let mut failed = Vec::new();
    for (check, run) in suite {
        match AssertUnwindSafe(run).catch_unwind().await {
            Ok(Ok(Verdict::Passed)) => report.passed.push(check),
            Ok(Ok(Verdict::Skipped(reason))) => report.skipped.push(SkippedCheck { check, reason }),
            Ok(Err(failure)) => failed.push(FailedCheck { check, failure }),
            Err(panic) => failed.push(FailedCheck {
                check,
                failure: CheckFailure::new(format!("panicked: {}", panic_message(&*panic))),
            }),
        }
    }
    if failed.is_empty() {
        Ok(report)
    } else {
        Err(ConformanceFailures { failed, report })
    }
}

/// Runs [`conformance`] and panics with the list of failed checks, each saying what it expected
/// and what happened.
pub async fn assert_conformance(harness: &dyn StoreHarness) {
    match conformance(harness).await {
        Ok(report) => {
            if !report.skipped.is_empty() {
                eprintln!("bgrun store conformance: {report}");
            }
        }
        Err(failures) => panic!("{failures}"),
    }
}

/// A check on a fresh store, after making sure the store is empty.
fn on_fresh<'a, F, Fut>(
    harness: &'a dyn StoreHarness,
    check: F,
) -> BoxFuture<'a, Result<Verdict, CheckFailure>>
where
    F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'a,
    Fut: Future<Output = Result<(), CheckFailure>> + Send + 'a,
{
    async move {
        let store = harness.fresh().await;
        run_on_empty(store, check).await
    }
    .boxed()
}

/// A durable-stream check on a fresh, empty store; skipped when the store keeps no streams
/// (they are an optional part of the contract).
fn on_streams<'a, F, Fut>(
    harness: &'a dyn StoreHarness,
    check: F,
) -> BoxFuture<'a, Result<Verdict, CheckFailure>>
where
    F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'a,
    Fut: Future<Output = Result<(), CheckFailure>> + Send + 'a,
{
    async move {
        let store = harness.fresh().await;
        if !store.supports_streams() {
            return Ok(Verdict::Skipped(checks::STREAMS_UNSUPPORTED.into()));
        }
        run_on_empty(store, check).await
    }
    .boxed()
}

/// Runs `check` on `store` after making sure the store holds no runs.
async fn run_on_empty<F, Fut>(store: Arc<dyn Store>, check: F) -> Result<Verdict, CheckFailure>
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = Result<(), CheckFailure>>,
{
    let page = store
        .list_runs(&RunFilter::default(), 1, None)
        .await
        .map_err(|error| {
            CheckFailure::new(format!(
                "list_runs on a fresh store: expected an empty page, got error {error}"
            ))
        })?;
    if !page.runs.is_empty() {
        return Err(CheckFailure::new(format!(
            "StoreHarness::fresh must return an empty store, but it holds run {}",
            page.runs[0].run_id
        )));
    }
    check(store).await?;
    Ok(Verdict::Passed)
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "(a panic without a message)"
    }
}
