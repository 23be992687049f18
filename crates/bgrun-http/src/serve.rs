//! Building the router and serving it until shutdown.

use std::future::{Future, IntoFuture};
use std::sync::Arc;

use axum::Router;
use bgrun_exec::Engine;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;
use crate::state::AppState;

fn build(engine: Engine, config: HttpConfig, shutdown: CancellationToken) -> Router {
    crate::routes::build(AppState {
        engine,
        config: Arc::new(config),
        shutdown,
        metrics: Arc::default(),
    })
}

/// Every route of the API over `engine`.
pub fn router(engine: Engine, config: HttpConfig) -> Router {
    build(engine, config, CancellationToken::new())
}

/// Serves the API on `listener` until `shutdown` completes; then stops accepting, ends open
/// SSE streams and WebSocket sessions (runs go on: resumable), answers waiting long-polls as
/// if their wait had timed out, lets requests in flight finish for up to
/// [`HttpConfig::shutdown_timeout`], and returns. The caller then shuts the engine
/// down with [`Engine::shutdown`].
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = CancellationToken::new();
    let timeout = config.shutdown_timeout;
    let app = build(engine, config, token.clone());
    let signal_token = token.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down the HTTP server");
        signal_token.cancel();
    };
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .into_future();
    tokio::select! {
        result = server => result,
        _ = async {
            token.cancelled().await;
            tokio::time::sleep(timeout).await;
        } => {
            tracing::warn!("requests still open after the shutdown timeout; stopping anyway");
            Ok(())
        }
    }
}
