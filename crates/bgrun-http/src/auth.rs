//! Bearer auth: with a security key set, a request needs `Authorization: Bearer <key>`.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// Whether two secrets are equal, in time independent of where they differ.
pub(crate) fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Whether `headers` carry `Authorization: Bearer <key>`.
pub(crate) fn has_bearer(headers: &HeaderMap, key: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(scheme_end) = value.iter().position(|byte| *byte == b' ') else {
        return false;
    };
    let (scheme, token) = value.split_at(scheme_end);
    scheme.eq_ignore_ascii_case(b"bearer") && same_secret(token.trim_ascii(), key.as_bytes())
}

/// The middleware in front of every route but `/health` and the WebSocket upgrades.
pub(crate) async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = state.config.security_key.as_deref() {
        if !has_bearer(request.headers(), key) {
            return ApiError::unauthorized("Invalid or missing Authorization: Bearer token")
                .into_response();
        }
    }
    next.run(request).await
}

/// [`require_key`] for the Durable Streams routes: a CORS preflight (`OPTIONS`) carries no
/// credentials, so it passes (it reads and writes nothing).
pub(crate) async fn require_key_but_preflight(
    state: State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == axum::http::Method::OPTIONS {
        return next.run(request).await;
    }
    require_key(state, request, next).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_tokens_are_checked_exactly() {
        let mut headers = HeaderMap::new();
        assert!(!has_bearer(&headers, "k"));
        for (value, ok) in [
            ("Bearer k", true),
            ("bearer k", true),
            ("Bearer  k ", true),
            ("Bearer kk", false),
            ("Basic k", false),
            ("Bearer", false),
            ("k", false),
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(has_bearer(&headers, "k"), ok, "{value}");
        }
    }
}
