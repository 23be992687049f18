//! The HTTP side of the client commands: one bgrun server, its routes, its errors.

use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::sse;
use crate::target::Target;

/// How long a read from the server may wait for a byte.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Where the server is and how to authenticate; shared by every client command.
#[derive(clap::Args)]
pub struct Remote {
    /// The bgrun server.
    #[arg(long, env = "BGRUN_URL", default_value = "http://127.0.0.1:7777")]
    pub url: String,
    /// Sent as `Authorization: Bearer <key>` (when the server has `BGRUN_SECURITY_KEY` set).
    #[arg(long, env = "BGRUN_SECURITY_KEY", hide_env_values = true)]
    pub security_key: Option<String>,
}

/// A failure worth a retry (the server unreachable, a dropped connection, a 5xx) or not.
#[derive(Debug)]
pub enum CallError {
    /// Worth a retry: the connection failed or the server answered 5xx.
    Transient(anyhow::Error),
    /// Not: the server refused the request (4xx) or the answer makes no sense.
    Fatal(anyhow::Error),
}

impl From<CallError> for anyhow::Error {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Transient(error) | CallError::Fatal(error) => error,
        }
    }
}

/// A client of one bgrun server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: Option<String>,
    idempotency_key: Option<String>,
}

impl Client {
    /// A client of the server `remote` names.
    pub fn new(remote: &Remote) -> anyhow::Result<Self> {
        let base = Url::parse(&remote.url)
            .with_context(|| format!("--url {:?} is not a URL", remote.url))?;
        if base.scheme() != "http" {
            bail!(
                "--url {:?}: only http:// is supported (put a TLS-terminating proxy in front for https)",
                remote.url
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // An event stream sends a keepalive every 15 s: a minute of silence is a connection
            // that died without a word (a NAT's, a sleeping laptop's), to drop and reconnect.
            .read_timeout(READ_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base,
            key: remote.security_key.clone().filter(|key| !key.is_empty()),
            idempotency_key: None,
        })
    }

    /// Sends `Idempotency-Key: <key>` with every request.
    pub fn idempotency_key(mut self, key: Option<String>) -> Self {
        self.idempotency_key = key;
        self
    }

    /// The URL of `segments` under the server's base URL, each segment escaped.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `/{kind}/{id}/runs` and what follows it.
    pub fn runs_url(&self, target: &Target, rest: &[&str]) -> Url {
        let mut segments = vec![target.kind.segment(), target.id.as_str(), "runs"];
        segments.extend_from_slice(rest);
        self.url(&segments)
    }

    /// Sends a request; a 2xx answer is returned, anything else becomes an error carrying the
    /// server's `detail`.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, CallError> {
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(key) = &self.idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|error| {
            CallError::Transient(anyhow::Error::new(error).context(format!(
                "cannot reach bgrun at {} (is `bgrun serve` running there?)",
                self.base
            )))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let detail = match response.json::<Value>().await {
            Ok(body) => match body.get("detail") {
                Some(Value::String(detail)) => detail.clone(),
                Some(detail) => detail.to_string(),
                None => body.to_string(),
            },
            Err(_) => String::from("(no JSON detail)"),
        };
        let error = anyhow::anyhow!("{method} {} answered {status}: {detail}", url.path());
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Err(CallError::Transient(error))
        } else {
            Err(CallError::Fatal(hint(status, error)))
        }
    }

    /// Sends a request and reads its JSON answer.
    pub async fn json(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let response = self.send(method, url, body).await?;
        response
            .json()
            .await
            .context("the server's answer is not JSON")
    }

    /// Sends a request whose answer is an SSE stream.
    pub async fn stream(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<sse::Reader, CallError> {
        let response = self.send(method, url, body).await?;
        let is_sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        if !is_sse {
            return Err(CallError::Fatal(anyhow::anyhow!(
                "expected an event stream, the server answered {:?}",
                response.headers().get(reqwest::header::CONTENT_TYPE)
            )));
        }
        Ok(sse::Reader::new(response))
    }

    /// `GET /{kind}/{id}/runs/{run_id}`.
    pub async fn get_run(&self, target: &Target, run_id: &str) -> anyhow::Result<Value> {
        self.json(Method::GET, self.runs_url(target, &[run_id]), None)
            .await
    }
}

/// Adds what to do about a 401.
fn hint(status: StatusCode, error: anyhow::Error) -> anyhow::Error {
    if status == StatusCode::UNAUTHORIZED {
        error.context("the server wants a key: set BGRUN_SECURITY_KEY or pass --security-key")
    } else {
        error
    }
}
