//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).
//!
//! Written by hand: a handful of counters needs no metrics library.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// Counters of the HTTP layer.
#[derive(Debug, Default)]
pub(crate) struct HttpMetrics {
    /// Runs started through this server (HTTP and WebSocket), newly created.
    pub(crate) starts: AtomicU64,
    /// SSE streams opened.
    pub(crate) streams: AtomicU64,
    /// WebSocket connections opened.
    pub(crate) sockets: AtomicU64,
}

impl HttpMetrics {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn counter(out: &mut String, name: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Renders every metric.
pub(crate) fn render(state: &AppState) -> String {
    let engine = state.engine.metrics();
    let http = &state.metrics;
    let mut out = String::with_capacity(2048);
    counter(
        &mut out,
        "bgrun_runs_total",
        "Runs this process created (status=\"PENDING\"), started (status=\"RUNNING\") or ended, by status.",
        &[
            ("status=\"PENDING\"", engine.runs_created),
            ("status=\"RUNNING\"", engine.runs_started),
            ("status=\"COMPLETED\"", engine.runs_completed),
            ("status=\"ERROR\"", engine.runs_errored),
            ("status=\"CANCELLED\"", engine.runs_cancelled),
        ],
    );
    counter(
        &mut out,
        "bgrun_events_appended_total",
        "Run events this process stored.",
        &[("", engine.events_appended)],
    );
    counter(
        &mut out,
        "bgrun_events_read_total",
        "Run events this process read back from the store.",
        &[("", engine.events_read)],
    );
    let _ = writeln!(
        out,
        "# HELP bgrun_runs_active Runs executing or queued in this process."
    );
    let _ = writeln!(out, "# TYPE bgrun_runs_active gauge");
    let _ = writeln!(out, "bgrun_runs_active {}", state.engine.active_runs());
    let _ = writeln!(
        out,
        "# HELP bgrun_stream_readers_waiting Durable Streams reads waiting at a stream's tail."
    );
    let _ = writeln!(out, "# TYPE bgrun_stream_readers_waiting gauge");
    let _ = writeln!(
        out,
        "bgrun_stream_readers_waiting {}",
        state.engine.streams().waiting_readers()
    );
    counter(
        &mut out,
        "bgrun_stream_shared_reads_total",
        "Durable Streams store reads a reader shared with another reading the same at once.",
        &[("", state.engine.streams().shared_reads())],
    );
    counter(
        &mut out,
        "bgrun_http_starts_total",
        "Runs started through the HTTP and WebSocket API.",
        &[("", http.starts.load(Ordering::Relaxed))],
    );
    counter(
        &mut out,
        "bgrun_http_streams_total",
        "SSE streams opened.",
        &[("", http.streams.load(Ordering::Relaxed))],
    );
    counter(
        &mut out,
        "bgrun_http_websockets_total",
        "WebSocket connections opened.",
        &[("", http.sockets.load(Ordering::Relaxed))],
    );
    out
}

/// `GET /metrics`.
pub(crate) async fn handler(State(state): State<AppState>) -> Response {
    let mut response = render(&state).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
