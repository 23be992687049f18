//! WebSocket endpoints `/{kind}/ws`: flat JSON text frames both ways.
//!
//! The server greets with `{"event":"connected","requires_auth":bool}`; clients send actions
//! (`authenticate`, `ping`, `start-<kind>`, `reconnect`, `cancel`). Runs stream as their events'
//! JSON, resumes as the meta frames then the events, each in its own task so that one socket
//! carries several runs and still answers `ping` at once. A malformed frame gets
//! `{"event":"error","error":"..."}` and the socket stays open.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bgrun_core::{RunId, RunKind, RunTarget};
use bgrun_exec::{EventStream, MetaFrame};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::auth::{has_bearer, same_secret};
use crate::error::{ApiError, ApiResult};
use crate::forms::{parse_index, Fields, StartFields};
use crate::metrics::HttpMetrics;
use crate::state::{parse_kind, AppState};
use crate::view::component_key;

/// Frames waiting for the socket, per connection.
const OUTBOX: usize = 1024;

/// `GET /{kind}/ws`: the upgrade needs no auth header; one that carries a valid one starts
/// authenticated.
pub(crate) async fn handler(
    State(state): State<AppState>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let kind = parse_kind(&kind)?;
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let authenticated = match state.config.security_key.as_deref() {
        None => true,
        Some(key) => has_bearer(&headers, key),
    };
    HttpMetrics::count(&state.metrics.sockets);
    let limit = state.config.body_limit;
    Ok(upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            Session {
                state,
                kind,
                authenticated,
                tasks: JoinSet::new(),
            }
            .run(socket)
        }))
}

struct Session {
    state: AppState,
    kind: RunKind,
    authenticated: bool,
    tasks: JoinSet<()>,
}

fn error(detail: impl Into<String>) -> String {
    json!({"event": "error", "error": detail.into()}).to_string()
}

fn auth_error(detail: &str) -> String {
    json!({"event": "auth_error", "error": detail}).to_string()
}

/// A field an action requires, as a string.
fn required_str(fields: &mut Map<String, Value>, name: &str) -> Result<String, String> {
    match fields.remove(name) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text),
        Some(Value::String(_)) => Err(format!("{name} must not be empty")),
        None | Some(Value::Null) => Err(format!("missing field {name}")),
        Some(_) => Err(format!("{name} must be a string")),
    }
}

impl Session {
    async fn run(mut self, mut socket: WebSocket) {
        let (outbox, mut pending) = mpsc::channel::<String>(OUTBOX);
        let hello = json!({"event": "connected", "requires_auth": !self.authenticated});
        if socket
            .send(Message::Text(hello.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
        let shutdown = self.state.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
                // The client's frames first: a run streaming fast keeps `pending` full, and a
                // cancel or ping behind it must not wait for the stream to drain.
                message = socket.recv() => {
                    let reply = match message {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                        Some(Ok(Message::Text(text))) => self.act(text.as_str(), &outbox).await,
                        Some(Ok(Message::Binary(_))) => Some(error("frames must be JSON text frames")),
                        Some(Ok(_)) => None,
                    };
                    if let Some(reply) = reply {
                        if socket.send(Message::Text(reply.into())).await.is_err() {
                            break;
                        }
                    }
                }
                Some(frame) = pending.recv() => {
                    if socket.send(Message::Text(frame.into())).await.is_err() {
                        break;
                    }
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
        }
        self.tasks.abort_all();
    }

    /// Handles one frame; returns the immediate reply, if any.
    async fn act(&mut self, text: &str, outbox: &mpsc::Sender<String>) -> Option<String> {
        let mut fields = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => return Some(error("a frame must be a JSON object")),
            Err(parse) => return Some(error(format!("a frame must be JSON: {parse}"))),
        };
        let action = match fields.remove("action") {
            Some(Value::String(action)) => action,
            _ => return Some(error("a frame needs a string field action")),
        };
        let start_kind = action
            .strip_prefix("start-")
            .and_then(|kind| RunKind::ALL.into_iter().find(|k| k.as_str() == kind));
        match action.as_str() {
            "ping" => return Some(json!({"event": "pong"}).to_string()),
            "authenticate" => return Some(self.authenticate(&mut fields)),
            "reconnect" | "cancel" => {}
            _ if start_kind.is_some() => {}
            _ => return Some(error(format!("unknown action {action:?}"))),
        }
        if !self.authenticated {
            return Some(auth_error("authenticate first"));
        }
        let result = match (action.as_str(), start_kind) {
            ("cancel", _) => self.cancel(fields, outbox),
            ("reconnect", _) => self.reconnect(fields, outbox).await,
            (_, Some(action_kind)) => {
                // `start-workflow` with `agent_id` on the agents socket (the AgentOS form) and
                // `start-agent` alike: the id field present names the kind, the socket's first.
                let kind = [self.kind, action_kind]
                    .into_iter()
                    .chain(RunKind::ALL)
                    .find(|kind| fields.contains_key(component_key(*kind)))
                    .unwrap_or(self.kind);
                self.start(kind, fields, outbox).await
            }
            _ => Err(format!("unknown action {action:?}")),
        };
        result.err().map(error)
    }

    fn authenticate(&mut self, fields: &mut Map<String, Value>) -> String {
        let token = match required_str(fields, "token") {
            Ok(token) => token,
            Err(detail) => return error(detail),
        };
        let valid = match self.state.config.security_key.as_deref() {
            None => true,
            Some(key) => same_secret(token.as_bytes(), key.as_bytes()),
        };
        if valid {
            self.authenticated = true;
            json!({"event": "authenticated"}).to_string()
        } else {
            auth_error("invalid token")
        }
    }

    async fn start(
        &mut self,
        kind: RunKind,
        mut fields: Map<String, Value>,
        outbox: &mpsc::Sender<String>,
    ) -> Result<(), String> {
        let id = required_str(&mut fields, component_key(kind))?;
        let target = self
            .state
            .target(kind.plural(), &id)
            .map_err(|error| error.detail)?;
        let StartFields { request, .. } =
            StartFields::parse(Fields::from_json(fields), target, true)
                .map_err(|error| error.detail)?;
        let started = crate::routes::start_run(&self.state, request)
            .await
            .map_err(|error| error.detail)?;
        let events = self.state.engine.events(&started.run.run_id, None);
        self.tasks.spawn(forward(
            Vec::new(),
            Some(events),
            started.run.run_id,
            outbox.clone(),
        ));
        Ok(())
    }

    async fn reconnect(
        &mut self,
        mut fields: Map<String, Value>,
        outbox: &mpsc::Sender<String>,
    ) -> Result<(), String> {
        let run_id = RunId::parse(required_str(&mut fields, "run_id")?)
            .map_err(|error| error.message().to_owned())?;
        let index = match fields.remove("last_event_index") {
            None | Some(Value::Null) => None,
            Some(value) => {
                Some(parse_index("last_event_index", &value).map_err(|error| error.detail)?)
            }
        };
        let target = match fields.remove(component_key(self.kind)) {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(
                self.state
                    .target(self.kind.plural(), &id)
                    .map_err(|error| error.detail)?,
            ),
            Some(_) => return Err(format!("{} must be a string", component_key(self.kind))),
        };
        let (meta, events) = open(&self.state, target.as_ref(), &run_id, index)
            .await
            .map_err(|error| error.detail)?;
        self.tasks
            .spawn(forward(meta, events, run_id, outbox.clone()));
        Ok(())
    }

    fn cancel(
        &mut self,
        mut fields: Map<String, Value>,
        outbox: &mpsc::Sender<String>,
    ) -> Result<(), String> {
        let run_id = RunId::parse(required_str(&mut fields, "run_id")?)
            .map_err(|error| error.message().to_owned())?;
        let engine = self.state.engine.clone();
        let outbox = outbox.clone();
        // A cancel may wait for the run to stop: answer from a task, keeping the socket live.
        self.tasks.spawn(async move {
            let frame = match engine.cancel(&run_id).await {
                Ok(outcome) => json!({"event": "cancel", "run_id": outcome.run_id,
                    "status": outcome.status, "cancelled": outcome.cancelled})
                .to_string(),
                Err(failure) => error(failure.to_string()),
            };
            let _ = outbox.send(frame).await;
        });
        Ok(())
    }
}

async fn open(
    state: &AppState,
    target: Option<&RunTarget>,
    run_id: &RunId,
    index: Option<u64>,
) -> ApiResult<(Vec<MetaFrame>, Option<EventStream>)> {
    match target {
        Some(target) => crate::routes::open_resume(state, target, run_id, index).await,
        None => {
            let resume = state
                .engine
                .resume(run_id, index)
                .await
                .map_err(ApiError::from)?;
            Ok((resume.meta, Some(resume.events)))
        }
    }
}

/// Sends meta frames, then each event's JSON, until the run's stream ends or the socket goes.
async fn forward(
    meta: Vec<MetaFrame>,
    events: Option<EventStream>,
    run_id: RunId,
    outbox: mpsc::Sender<String>,
) {
    for frame in meta {
        if outbox.send(frame.to_json().to_string()).await.is_err() {
            return;
        }
    }
    let Some(mut events) = events else {
        return;
    };
    while let Some(event) = events.next().await {
        let frame = match event {
            Ok(event) => event.json().to_owned(),
            Err(failure) => {
                let _ = outbox
                    .send(
                        json!({"event": "error", "run_id": run_id, "error": failure.to_string()})
                            .to_string(),
                    )
                    .await;
                return;
            }
        };
        if outbox.send(frame).await.is_err() {
            return;
        }
    }
}
