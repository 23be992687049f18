//! `GET /openapi.json`: an OpenAPI 3.1 document of every route, with the paths written out per
//! kind (`/agents/{agent_id}/runs`, ...).
//!
//! Built from the route table here rather than derived by a macro: the routes are generic over
//! the kind, while the document spells each kind out.

use axum::extract::State;
use axum::Json;
use bgrun_core::RunKind;
use serde_json::{json, Map, Value};

use crate::state::AppState;
use crate::view::component_key;

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn errors(codes: &[(&str, &str)]) -> Map<String, Value> {
    codes
        .iter()
        .map(|(code, description)| ((*code).to_owned(), error_response(description)))
        .collect()
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}, "description": description})
}

fn query_param(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description})
}

fn sse(description: &str) -> Value {
    json!({"description": description, "content": {"text/event-stream": {"schema": {"type": "string"}}}})
}

fn body(schema: &str, required: bool) -> Value {
    let reference = json!({"$ref": format!("#/components/schemas/{schema}")});
    json!({
        "required": required,
        "content": {
            "application/x-www-form-urlencoded": {"schema": reference},
            "multipart/form-data": {"schema": reference},
            "application/json": {"schema": reference},
        }
    })
}

fn with(mut base: Map<String, Value>, code: &str, response: Value) -> Value {
    base.insert(code.to_owned(), response);
    Value::Object(base)
}

fn kind_paths(kind: RunKind, paths: &mut Map<String, Value>) {
    let plural = kind.plural();
    let key = component_key(kind);
    let tag = [plural];
    let component = path_param(key, &format!("the {} id", kind.as_str()));
    let run = path_param("run_id", "the run id");
    let auth = [("401", "missing or wrong bearer token")];
    let common = errors(&[("401", auth[0].1), ("404", "unknown component or run")]);
    let post_errors = errors(&[
        ("401", auth[0].1),
        ("404", "unknown component"),
        ("413", "body larger than the limit"),
        ("415", "unsupported content type"),
        ("422", "invalid field"),
    ]);
    paths.insert(
        format!("/{plural}"),
        json!({"get": {
            "tags": tag, "operationId": format!("list_{plural}"),
            "summary": format!("The registered {plural}"),
            "responses": with(errors(&[("401", auth[0].1)]), "200", json!({"description": "the components",
                "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Component"}}}}})),
        }}),
    );
    let mut start_responses = post_errors.clone();
    start_responses.insert("409".into(), error_response("run_id already exists"));
    start_responses.insert(
        "202".into(),
        json!({"description": "background, not streamed: the run is PENDING",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}}),
    );
    start_responses.insert(
        "200".into(),
        json!({"description": "the finished run (stream=false) or its events (stream=true)",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Run"}},
                "text/event-stream": {"schema": {"type": "string"}}}}),
    );
    paths.insert(
        format!("/{plural}/{{{key}}}/runs"),
        json!({
            "post": {
                "tags": tag, "operationId": format!("start_{}_run", kind.as_str()),
                "summary": "Start a run",
                "parameters": [component, {"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string"}}],
                "requestBody": body("StartRun", true),
                "responses": start_responses,
            },
            "get": {
                "tags": tag, "operationId": format!("list_{}_runs", kind.as_str()),
                "summary": "List runs, newest first",
                "parameters": [component,
                    query_param("session_id", json!({"type": "string"}), "runs of this session"),
                    query_param("status", json!({"$ref": "#/components/schemas/Status"}), "runs in this status"),
                    query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": 100, "default": 20}), "page size"),
                    query_param("cursor", json!({"type": "string"}), "next_cursor of the previous page")],
                "responses": with(errors(&[("401", auth[0].1), ("404", "unknown component"), ("422", "bad limit, status or cursor")]), "200",
                    json!({"description": "a page of runs", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunPage"}}}})),
            }
        }),
    );
    paths.insert(
        format!("/{plural}/{{{key}}}/runs/{{run_id}}"),
        json!({"get": {
            "tags": tag, "operationId": format!("get_{}_run", kind.as_str()),
            "summary": "Get a run",
            "parameters": [component, run, query_param("session_id", json!({"type": "string"}), "the run's session")],
            "responses": with(common.clone(), "200", json!({"description": "the run",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Run"}}}})),
        }}),
    );
    paths.insert(
        format!("/{plural}/{{{key}}}/runs/{{run_id}}/cancel"),
        json!({"post": {
            "tags": tag, "operationId": format!("cancel_{}_run", kind.as_str()),
            "summary": "Cancel a run (also before it starts)",
            "parameters": [component, run],
            "requestBody": body("Empty", false),
            "responses": with(post_errors.clone(), "200", json!({"description": "what the cancel did",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CancelOutcome"}}}})),
        }}),
    );
    let last_event_index = query_param(
        "last_event_index",
        json!({"type": "integer", "minimum": 0}),
        "resume after this index",
    );
    let last_event_id = json!({"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "integer", "minimum": 0}});
    paths.insert(
        format!("/{plural}/{{{key}}}/runs/{{run_id}}/resume"),
        json!({
            "post": {
                "tags": tag, "operationId": format!("resume_{}_run", kind.as_str()),
                "summary": "Resume a run's event stream after an index",
                "parameters": [component, run, last_event_id],
                "requestBody": body("Resume", false),
                "responses": with(post_errors.clone(), "200", sse("meta frames, then the events after last_event_index")),
            },
            "get": {
                "tags": tag, "operationId": format!("resume_{}_run_get", kind.as_str()),
                "summary": "Resume a run's event stream after an index",
                "parameters": [component, run, last_event_index, last_event_id],
                "responses": with(errors(&[("401", auth[0].1), ("404", "unknown component"), ("422", "bad last_event_index")]), "200",
                    sse("meta frames, then the events after last_event_index")),
            }
        }),
    );
    paths.insert(
        format!("/{plural}/ws"),
        json!({"get": {
            "tags": tag, "operationId": format!("{}_websocket", kind.as_str()),
            "summary": "WebSocket: start, reconnect to and cancel runs with flat JSON frames",
            "responses": {"101": {"description": "switching protocols"}, "400": error_response("not a WebSocket upgrade")},
        }}),
    );
}

/// `errors` and then `answers`.
fn responses<const N: usize>(errors: &Map<String, Value>, answers: [(&str, Value); N]) -> Value {
    let mut all = errors.clone();
    for (code, answer) in answers {
        all.insert(code.to_owned(), answer);
    }
    Value::Object(all)
}

/// The Durable Streams routes (`/v1/stream`); their contract is the protocol's, so the
/// document names status codes and headers only in summaries.
fn stream_paths(paths: &mut Map<String, Value>) {
    let tag = ["streams"];
    let path = path_param("path", "the stream's path (may contain slashes)");
    let offset = query_param(
        "offset",
        json!({"type": "string"}),
        "`-1`, `now` or an offset the server gave",
    );
    let live = query_param(
        "live",
        json!({"type": "string", "enum": ["long-poll", "sse"]}),
        "live mode",
    );
    let cursor = query_param(
        "cursor",
        json!({"type": "string"}),
        "the last Stream-Cursor",
    );
    let bytes = |description: &str| json!({"description": description, "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}});
    let none = |description: &str| json!({"description": description});
    let errors = errors(&[
        ("400", "invalid header, offset or body"),
        ("401", "missing or wrong bearer token"),
        ("403", "stale producer epoch"),
        ("404", "no such stream"),
        (
            "409",
            "configuration, content type, sequence or closed-stream conflict",
        ),
        ("410", "deleted while forked"),
        ("413", "body larger than the limit"),
    ]);
    paths.insert(
        "/v1/stream/{path}".into(),
        json!({
            "put": {"tags": tag, "operationId": "create_stream", "summary": "Create (or fork) a stream; idempotent for the same configuration",
                "parameters": [path], "requestBody": {"required": false, "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": responses(&errors, [("201", none("created")), ("200", none("existed with the same configuration"))])},
            "post": {"tags": tag, "operationId": "append_stream", "summary": "Append a message, close the stream, or both",
                "parameters": [path], "requestBody": {"required": false, "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": responses(&errors, [("200", none("appended by an idempotent producer")), ("204", none("appended, closed, or a duplicate"))])},
            "get": {"tags": tag, "operationId": "read_stream", "summary": "Read: catch-up, long-poll or SSE",
                "parameters": [path, offset, live, cursor],
                "responses": responses(&errors, [
                    ("200", bytes("messages (a JSON stream's as one array), or SSE")),
                    ("204", none("long-poll timed out or the stream is closed")),
                    ("304", none("not modified (If-None-Match)")),
                ])},
            "head": {"tags": tag, "operationId": "stream_metadata", "summary": "The stream's metadata in headers",
                "parameters": [path], "responses": with(errors.clone(), "200", none("metadata"))},
            "delete": {"tags": tag, "operationId": "delete_stream", "summary": "Delete (soft-delete while forked)",
                "parameters": [path], "responses": with(errors.clone(), "204", none("deleted"))},
        }),
    );
    let run = path_param("run_id", "the run id");
    paths.insert(
        "/v1/stream/runs/{run_id}".into(),
        json!({
            "get": {"tags": tag, "operationId": "read_run_stream", "summary": "A run's events as a read-only JSON stream",
                "parameters": [run, offset, live, cursor],
                "responses": with(errors.clone(), "200", bytes("the events after the offset as a JSON array, or SSE"))},
            "head": {"tags": tag, "operationId": "run_stream_metadata", "summary": "A run's stream metadata in headers",
                "parameters": [run], "responses": with(errors, "200", none("metadata"))},
        }),
    );
}

fn schemas() -> Value {
    let nullable_string = json!({"type": ["string", "null"]});
    json!({
        "Error": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
        "Status": {"type": "string", "enum": ["PENDING", "RUNNING", "PAUSED", "COMPLETED", "ERROR", "CANCELLED"]},
        "Component": {"type": "object", "required": ["id", "name", "description"], "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "description": nullable_string}},
        "StartRun": {"type": "object", "required": ["message"], "additionalProperties": true, "properties": {
            "message": {"type": "string"},
            "stream": {"type": "boolean", "default": true},
            "background": {"type": "boolean", "default": false},
            "session_id": {"type": "string"},
            "user_id": {"type": "string"},
            "run_id": {"type": "string"},
            "metadata": {"type": "object", "description": "a JSON string in forms"}}},
        "Resume": {"type": "object", "properties": {
            "last_event_index": {"type": "integer", "minimum": 0}, "session_id": {"type": "string"}}},
        "Empty": {"type": "object"},
        "Accepted": {"type": "object", "required": ["run_id", "session_id", "status"], "properties": {
            "run_id": {"type": "string"}, "session_id": {"type": "string"}, "status": {"$ref": "#/components/schemas/Status"}}},
        "CancelOutcome": {"type": "object", "required": ["run_id", "status", "cancelled"], "properties": {
            "run_id": {"type": "string"}, "status": {"$ref": "#/components/schemas/Status"}, "cancelled": {"type": "boolean"}}},
        "Run": {"type": "object", "required": ["run_id", "session_id", "user_id", "status", "content", "error",
                "cancellation_stage", "parent_run_id", "metadata", "created_at", "updated_at", "last_event_index"],
            "description": "also agent_id, team_id or workflow_id, by kind",
            "properties": {
            "run_id": {"type": "string"}, "session_id": {"type": "string"}, "user_id": nullable_string,
            "agent_id": {"type": "string"}, "team_id": {"type": "string"}, "workflow_id": {"type": "string"},
            "status": {"$ref": "#/components/schemas/Status"}, "content": nullable_string, "error": nullable_string,
            "cancellation_stage": {"type": ["string", "null"], "enum": ["PENDING", "EXECUTING", null]},
            "parent_run_id": nullable_string, "metadata": {"type": ["object", "null"]},
            "created_at": {"type": "integer"}, "updated_at": {"type": "integer"},
            "last_event_index": {"type": ["integer", "null"]}}},
        "RunPage": {"type": "object", "required": ["data", "next_cursor"], "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}},
            "next_cursor": nullable_string}},
    })
}

/// The whole document.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    paths.insert(
        "/health".into(),
        json!({"get": {"operationId": "health", "summary": "Liveness", "security": [],
            "responses": {"200": {"description": "ready", "content": {"application/json": {"schema": {"type": "object"}}}}}}}),
    );
    paths.insert(
        "/metrics".into(),
        json!({"get": {"operationId": "metrics", "summary": "Prometheus metrics",
            "responses": {"200": {"description": "text exposition format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}),
    );
    paths.insert(
        "/openapi.json".into(),
        json!({"get": {"operationId": "openapi", "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}}),
    );
    for kind in RunKind::ALL {
        kind_paths(kind, &mut paths);
    }
    stream_paths(&mut paths);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "bgrun",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Durable, resumable background runs of agents, teams and workflows (the AgentOS runs API).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    })
}

/// `GET /openapi.json`.
pub(crate) async fn handler(State(_state): State<AppState>) -> Json<Value> {
    Json(document())
}
