//! The router: every route of the contract, its auth, its JSON errors.

use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

mod cancel;
mod components;
mod resume;
mod runs;
mod start;

pub(crate) use resume::open as open_resume;
pub(crate) use start::start_run;

/// Every route, with `state`.
pub(crate) fn build(state: AppState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(crate::metrics::handler))
        .route("/openapi.json", get(crate::openapi::handler))
        .route("/{kind}", get(components::list))
        .route("/{kind}/{id}/runs", post(start::handler).get(runs::list))
        .route("/{kind}/{id}/runs/{run_id}", get(runs::get))
        .route("/{kind}/{id}/runs/{run_id}/cancel", post(cancel::handler))
        .route(
            "/{kind}/{id}/runs/{run_id}/resume",
            post(resume::post).get(resume::get),
        );
    // With no key set there is nothing to check: no middleware in every request's path.
    let protected = match state.config.security_key {
        Some(_) => protected.route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_key,
        )),
        None => protected,
    };
    Router::new()
        .route("/health", get(health))
        .route("/{kind}/ws", get(crate::ws::handler))
        .merge(protected)
        .merge(crate::durable::routes(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::map_response(crate::error::json_errors))
        .with_state(state)
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn not_found() -> ApiError {
    ApiError::not_found("Not Found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed",
    )
}
