//! Listing runs: filters, order and cursor paging.

use std::sync::Arc;

use bgrun_core::{
    RunFilter, RunId, RunKind, RunRecord, RunStatus, RunTarget, Store, StoreError, Transition,
};

use crate::support::{
    apply, create, ensure, expect_eq, fail, get, new_run, session_id, transition, CheckResult,
    Succeeds, T0,
};

/// How many runs [`list_paging`] lists.
const RUNS: usize = 30;

/// The ids of `runs`, for messages.
fn ids(runs: &[RunRecord]) -> Vec<&str> {
    runs.iter().map(|run| run.run_id.as_str()).collect()
}

/// Walks every page of `filter` with `limit`, checking each page against `expected`.
async fn check_pages(
    store: &dyn Store,
    filter: &RunFilter,
    limit: usize,
    expected: &[RunRecord],
) -> CheckResult {
    let what = format!("list_runs({filter:?}) in pages of {limit}");
    let mut listed: Vec<RunRecord> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_runs(filter, limit, cursor.as_deref())
            .await
            .succeeds(format!("{what}, cursor {cursor:?}"))?;
        ensure!(
            page.runs.len() <= limit,
            "{what}: a page holds {} runs, more than the limit",
            page.runs.len()
        );
        let page_was_empty = page.runs.is_empty();
        listed.extend(page.runs);
        let complete = listed.len() >= expected.len();
        match page.next_cursor {
            Some(next) => {
                ensure!(
                    !page_was_empty,
                    "{what}: an empty page with next_cursor {next:?} (after runs {:?})",
                    ids(&listed)
                );
                ensure!(
                    !complete,
                    "{what}: the page that ends the list (runs {:?}) still has next_cursor {next:?}; expected None on the last page",
                    ids(&listed)
                );
                cursor = Some(next);
            }
            None => break,
        }
    }
    ensure!(
        ids(&listed) == ids(expected),
        "{what}: expected runs {:?} (newest first by created_at, ties newest insertion first), got {:?}",
        ids(expected),
        ids(&listed)
    );
    expect_eq(
        format!("{what}: the listed records"),
        &listed,
        &expected.to_vec(),
    )
}

/// `list_runs` over 30 runs across sessions, statuses, targets and parents, with every filter
/// (and combination) and page sizes 1, 3 and 100: each listing is exactly the matching runs,
/// newest first by `created_at` with ties in reverse insertion order (never by `run_id`: the
/// ids sort neither way), no run twice or missing across pages, the last page without a cursor.
/// A cursor keeps its place when a newer run is created meanwhile. A cursor the store did not
/// hand out is `InvalidCursor`.
pub async fn list_paging(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    let sessions = ["session-a", "session-b", "session-c"];
    let targets = [
        RunTarget::new(RunKind::Agent, "agent-1"),
        RunTarget::new(RunKind::Team, "team-1"),
        RunTarget::new(RunKind::Workflow, "workflow-1"),
    ];
    let statuses = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Cancelled,
        RunStatus::Error,
        RunStatus::Paused,
    ];
    let mut parent: Option<RunId> = None;
    let mut runs: Vec<RunId> = Vec::new();
    for i in 0..RUNS {
        // Ids are a permutation of the insertion order, so they sort neither with nor against it.
        let id = format!("run-{:02}", (i * 7) % RUNS);
        // Groups of four share a second; every ninth run is older than all, created late.
        let created_at = if i % 9 == 8 {
            T0 - i as i64
        } else {
            T0 + (i / 4) as i64
        };
        let mut new = new_run(&id, sessions[i % 3], created_at);
        new.target = targets[(i / 2) % 3].clone();
        if (12..17).contains(&i) {
            new.parent_run_id = parent.clone();
        }
        let run = create(store, new).await?;
        parent.get_or_insert(run.run_id.clone());
        let status = statuses[(i + i / 6) % statuses.len()];
        let steps: &[(RunStatus, RunStatus)] = match status {
            RunStatus::Pending => &[],
            RunStatus::Running => &[(RunStatus::Pending, RunStatus::Running)],
            RunStatus::Completed => &[
                (RunStatus::Pending, RunStatus::Running),
                (RunStatus::Running, RunStatus::Completed),
            ],
            RunStatus::Paused => &[
                (RunStatus::Pending, RunStatus::Running),
                (RunStatus::Running, RunStatus::Paused),
            ],
            RunStatus::Cancelled => &[(RunStatus::Pending, RunStatus::Cancelled)],
            RunStatus::Error => &[(RunStatus::Pending, RunStatus::Error)],
        };
        for &(from, to) in steps {
            let step = Transition {
                at: created_at + 60,
                ..transition(from, to)
            };
            apply(store, &run.run_id, &step, &[]).await?;
        }
        runs.push(run.run_id);
    }

    // The expected order: newest created_at first, then newest insertion first.
    let mut newest_first: Vec<(usize, RunRecord)> = Vec::new();
    for (insertion, id) in runs.iter().enumerate() {
        newest_first.push((insertion, get(store, id).await?));
    }
    newest_first.sort_by_key(|(insertion, run)| std::cmp::Reverse((run.created_at, *insertion)));
    let newest_first: Vec<RunRecord> = newest_first.into_iter().map(|(_, run)| run).collect();

    let mut filters = vec![RunFilter::default()];
    let session_filters: Vec<Option<&str>> = vec![
        None,
        Some("session-a"),
        Some("session-b"),
        Some("session-c"),
    ];
    let status_filters: Vec<Option<RunStatus>> = std::iter::once(None)
        .chain(RunStatus::ALL.map(Some))
        .collect();
    for session in &session_filters {
        for status in &status_filters {
            for target in std::iter::once(None).chain(targets.iter().cloned().map(Some)) {
                filters.push(RunFilter {
                    session_id: session.map(session_id),
                    status: *status,
                    target,
                    parent_run_id: None,
                });
            }
        }
    }
    filters.push(RunFilter {
        parent_run_id: parent.clone(),
        ..RunFilter::default()
    });
    filters.push(RunFilter {
        parent_run_id: parent.clone(),
        session_id: Some(session_id("session-a")),
        ..RunFilter::default()
    });
    filters.push(RunFilter {
        parent_run_id: Some(runs[1].clone()),
        ..RunFilter::default()
    });
    filters.push(RunFilter {
        session_id: Some(session_id("session-none")),
        ..RunFilter::default()
    });
    let matches = |filter: &RunFilter, run: &RunRecord| {
        filter
            .session_id
            .as_ref()
            .is_none_or(|s| *s == run.session_id)
            && filter.status.is_none_or(|s| s == run.status)
            && filter.target.as_ref().is_none_or(|t| *t == run.target)
            && filter
                .parent_run_id
                .as_ref()
                .is_none_or(|p| run.parent_run_id.as_ref() == Some(p))
    };
    for filter in &filters {
        let expected: Vec<RunRecord> = newest_first
            .iter()
            .filter(|run| matches(filter, run))
            .cloned()
            .collect();
        for limit in [1, 3, 100] {
            check_pages(store, filter, limit, &expected).await?;
        }
    }

    // A cursor keeps its place while newer runs arrive.
    let all = RunFilter::default();
    let first = store
        .list_runs(&all, 3, None)
        .await
        .succeeds("list_runs(all, 3)")?;
    let Some(cursor) = first.next_cursor else {
        fail!("list_runs(all, 3) of {RUNS} runs: expected a next_cursor, got None");
    };
    create(store, new_run("run-newest", "session-a", T0 + 1_000)).await?;
    let mut rest: Vec<RunRecord> = Vec::new();
    let mut next = Some(cursor);
    while let Some(cursor) = next {
        let page = store
            .list_runs(&all, 5, Some(&cursor))
            .await
            .succeeds(format!("list_runs(all, 5, {cursor:?})"))?;
        ensure!(
            !page.runs.is_empty() || page.next_cursor.is_none(),
            "list_runs(all, 5, {cursor:?}): an empty page with a next_cursor"
        );
        rest.extend(page.runs);
        next = page.next_cursor;
        ensure!(
            rest.len() <= 2 * RUNS,
            "list_runs(all): the cursors never end"
        );
    }
    ensure!(
        ids(&first.runs) == ids(&newest_first[..3]) && ids(&rest) == ids(&newest_first[3..]),
        "listing all runs in pages while run-newest is created after the first page: expected {:?} then {:?}, got {:?} then {:?}",
        ids(&newest_first[..3]),
        ids(&newest_first[3..]),
        ids(&first.runs),
        ids(&rest)
    );
    let first = store
        .list_runs(&all, 1, None)
        .await
        .succeeds("list_runs(all, 1)")?;
    expect_eq(
        "the newest run listed first",
        &ids(&first.runs),
        &vec!["run-newest"],
    )?;

    for garbage in ["not a cursor ✗", "%%%"] {
        match store.list_runs(&all, 3, Some(garbage)).await {
            Err(StoreError::InvalidCursor(_)) => {}
            other => fail!(
                "list_runs with cursor {garbage:?}, which the store never handed out: expected Err(InvalidCursor), got {other:?}"
            ),
        }
    }
    Ok(())
}
