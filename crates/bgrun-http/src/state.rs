//! What every handler shares.

use std::sync::Arc;

use bgrun_core::{RunKind, RunTarget};
use bgrun_exec::{ComponentInfo, Engine};
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;
use crate::error::{ApiError, ApiResult};
use crate::metrics::HttpMetrics;

/// The state of the router: cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) engine: Engine,
    pub(crate) config: Arc<HttpConfig>,
    /// Fired when the server starts shutting down: open streams end.
    pub(crate) shutdown: CancellationToken,
    pub(crate) metrics: Arc<HttpMetrics>,
}

impl AppState {
    /// The component a path names: `{kind}` plural (`agents`, `teams`, `workflows`) and `{id}`
    /// registered, else 404.
    pub(crate) fn component(&self, kind: &str, id: &str) -> ApiResult<&ComponentInfo> {
        let kind = parse_kind(kind)?;
        self.engine
            .registry()
            .info(kind, id)
            .ok_or_else(|| ApiError::not_found(format!("{} {id:?} not found", kind.as_str())))
    }

    /// `wait`'s output, or `None` once the server starts shutting down: a request that waits
    /// for something to happen (a long-poll) answers at once then, as if its wait had timed out,
    /// rather than holding the shutdown until its timeout and losing its answer.
    pub(crate) async fn unless_shutting_down<T>(
        &self,
        wait: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            output = wait => Some(output),
            () = self.shutdown.cancelled() => None,
        }
    }

    /// The target of a component path.
    pub(crate) fn target(&self, kind: &str, id: &str) -> ApiResult<RunTarget> {
        let info = self.component(kind, id)?;
        Ok(RunTarget::new(info.kind, info.id.clone()))
    }
}

/// Parses the plural kind of a path, else 404.
pub(crate) fn parse_kind(segment: &str) -> ApiResult<RunKind> {
    RunKind::ALL
        .into_iter()
        .find(|kind| kind.plural() == segment)
        .ok_or_else(|| ApiError::not_found("Not Found"))
}
