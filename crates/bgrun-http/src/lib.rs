//! bgrun's HTTP server: the runs API of Agno's AgentOS over a [`bgrun_exec::Engine`], with
//! SSE and WebSocket streaming, resume from any event index, bearer auth, OpenAPI and
//! Prometheus metrics. The contract it keeps is `API.md`; every error is
//! `{"detail": "..."}` with a 4xx status.
//!
//! [`router`] gives the routes as an [`axum::Router`] to embed or test; [`serve`] runs them on
//! a listener until a shutdown signal, ending open streams promptly.
//!
//! ```
//! use axum::body::Body;
//! use axum::http::{Request, StatusCode};
//! use bgrun_exec::{demo, Engine, EngineConfig};
//! use bgrun_http::{router, HttpConfig};
//! use tower::ServiceExt;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let store = bgrun_store_sqlite::SqliteStore::open(dir.path().join("runs.db")).await?;
//! let engine = Engine::open(
//!     std::sync::Arc::new(store),
//!     demo::registry(),
//!     EngineConfig { exclusive_store: true, ..EngineConfig::default() },
//! ).await?;
//!
//! let app = router(engine.clone(), HttpConfig::default());
//! let response = app
//!     .oneshot(Request::get("/health").body(Body::empty())?)
//!     .await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! let body = axum::body::to_bytes(response.into_body(), 1024).await?;
//! assert_eq!(&body[..], br#"{"status":"ok"}"#);
//! engine.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod auth;
mod config;
mod durable;
mod error;
mod forms;
mod metrics;
mod openapi;
mod routes;
mod serve;
mod sse;
mod state;
mod view;
mod ws;

pub use config::HttpConfig;
pub use error::{ApiError, ApiResult};
pub use serve::{router, serve};
