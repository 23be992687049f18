//! Request bodies: the three accepted encodings (urlencoded form, multipart form, JSON object)
//! read into one map of fields, within the body limit, and the typed reading of those fields.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bgrun_core::{parse_bool, parse_int, RunId, SessionId};
use bgrun_exec::StartRequest;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

/// Whether a route takes an empty body with no content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmptyBody {
    /// Start: a body is required.
    Refused,
    /// Cancel and resume: an empty body (any or no content type) is no fields.
    Allowed,
}

/// The fields a client sent, by name.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    map: Map<String, Value>,
    /// Sent as a form: every value is a string, and an empty one means "not sent".
    form: bool,
}

/// The encodings a body can have.
enum Encoding {
    Urlencoded,
    Multipart(String),
    Json,
}

fn encoding(headers: &HeaderMap) -> ApiResult<Option<Encoding>> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::unsupported_media_type("the content type is not readable"))?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-www-form-urlencoded" => Ok(Some(Encoding::Urlencoded)),
        "application/json" => Ok(Some(Encoding::Json)),
        "multipart/form-data" => multer::parse_boundary(text)
            .map(|boundary| Some(Encoding::Multipart(boundary)))
            .map_err(|_| {
                ApiError::unsupported_media_type("multipart/form-data needs its boundary")
            }),
        _ => Err(unsupported(text)),
    }
}

fn unsupported(content_type: &str) -> ApiError {
    ApiError::unsupported_media_type(format!(
        "unsupported content type {content_type:?}: send application/x-www-form-urlencoded, multipart/form-data or application/json"
    ))
}

/// How much more of a refused body is still read (and dropped) before the 413 goes out, and for
/// how long: a client still sending it (one that writes its whole request before reading, as
/// most do) then reads the answer instead of a reset connection. A larger body, or a slower one,
/// gets the 413 at once and the connection is closed on it.
const DRAIN_BYTES: u64 = 16 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub(crate) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> ApiResult<Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(length) = declared.filter(|length| *length > limit as u64) {
        if length <= DRAIN_BYTES {
            drain(body.into_data_stream()).await;
        }
        return Err(ApiError::too_large(limit));
    }
    let mut stream = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut buffer: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                format!("reading the body failed: {error}"),
            )
        })?;
        total += chunk.len();
        if total > limit {
            drain(stream).await;
            return Err(ApiError::too_large(limit));
        }
        match first.take() {
            None if buffer.is_empty() => first = Some(chunk),
            None => buffer.extend_from_slice(&chunk),
            Some(earlier) => {
                buffer.extend_from_slice(&earlier);
                buffer.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(buffer)))
}

/// Reads and drops what is left of a refused body, within [`DRAIN_BYTES`] and [`DRAIN_TIME`].
async fn drain(mut stream: axum::body::BodyDataStream) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut drained = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            drained += chunk.len() as u64;
            if drained > DRAIN_BYTES {
                return;
            }
        }
    })
    .await;
}

/// Reads a body in one of the three encodings into fields.
pub(crate) async fn read_fields(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    empty: EmptyBody,
) -> ApiResult<Fields> {
    let bytes = read_limited(headers, body, limit).await?;
    let encoding = encoding(headers);
    if bytes.is_empty() && empty == EmptyBody::Allowed {
        // An empty body is no fields, whatever it claims to be.
        return Ok(Fields::default());
    }
    let Some(encoding) = encoding? else {
        return Err(ApiError::unsupported_media_type(
            "a content type is required: send application/x-www-form-urlencoded, multipart/form-data or application/json",
        ));
    };
    match encoding {
        Encoding::Urlencoded => parse_urlencoded(&bytes),
        Encoding::Json => parse_json(&bytes),
        Encoding::Multipart(boundary) => parse_multipart(bytes, boundary).await,
    }
}

/// Parses a query string or urlencoded body into form fields.
pub(crate) fn parse_urlencoded(bytes: &[u8]) -> ApiResult<Fields> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes)
        .map_err(|error| ApiError::invalid(format!("invalid form: {error}")))?;
    Ok(Fields::from_pairs(pairs))
}

fn parse_json(bytes: &[u8]) -> ApiResult<Fields> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(Fields { map, form: false }),
        Ok(_) => Err(ApiError::invalid("the JSON body must be an object")),
        Err(error) => Err(ApiError::invalid(format!("invalid JSON body: {error}"))),
    }
}

async fn parse_multipart(bytes: Bytes, boundary: String) -> ApiResult<Fields> {
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(bytes) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut pairs = Vec::new();
    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|error| ApiError::invalid(format!("invalid multipart body: {error}")))?;
        let Some(field) = field else {
            break;
        };
        let name = field.name().map(str::to_owned);
        let text = field
            .text()
            .await
            .map_err(|error| ApiError::invalid(format!("invalid multipart field: {error}")))?;
        if let Some(name) = name {
            pairs.push((name, text));
        }
    }
    Ok(Fields::from_pairs(pairs))
}

impl Fields {
    /// Form fields; a repeated name keeps its last value.
    pub(crate) fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        let map = pairs
            .into_iter()
            .map(|(name, value)| (name, Value::String(value)))
            .collect();
        Self { map, form: true }
    }

    /// Fields of a JSON object (a WebSocket action).
    pub(crate) fn from_json(map: Map<String, Value>) -> Self {
        Self { map, form: false }
    }

    /// Takes a field out; JSON `null` and an empty form value count as not sent.
    fn take(&mut self, name: &str) -> Option<Value> {
        match self.map.remove(name)? {
            Value::Null => None,
            Value::String(text) if self.form && text.is_empty() => None,
            value => Some(value),
        }
    }

    /// A string field.
    pub(crate) fn string(&mut self, name: &str) -> ApiResult<Option<String>> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(ApiError::invalid(format!("{name} must be a string"))),
        }
    }

    /// A boolean field: JSON booleans, or `true`/`false`/`1`/`0` in any case.
    pub(crate) fn boolean(&mut self, name: &str, default: bool) -> ApiResult<bool> {
        match self.take(name) {
            None => Ok(default),
            Some(value) => parse_bool(&value).ok_or_else(|| {
                ApiError::invalid(format!("{name} must be a boolean (true/false/1/0)"))
            }),
        }
    }

    /// A non-negative integer field (an event index).
    pub(crate) fn index(&mut self, name: &str) -> ApiResult<Option<u64>> {
        match self.take(name) {
            None => Ok(None),
            Some(value) => parse_index(name, &value).map(Some),
        }
    }

    /// A JSON object field (sent as a JSON string in forms).
    pub(crate) fn object(&mut self, name: &str) -> ApiResult<Option<Value>> {
        let value = match self.take(name) {
            None => return Ok(None),
            Some(Value::String(text)) => serde_json::from_str::<Value>(&text)
                .map_err(|_| ApiError::invalid(format!("{name} must be a JSON object")))?,
            Some(value) => value,
        };
        match value {
            Value::Object(_) => Ok(Some(value)),
            Value::Null => Ok(None),
            _ => Err(ApiError::invalid(format!("{name} must be a JSON object"))),
        }
    }

    /// Whatever fields are left, as sent.
    pub(crate) fn into_rest(self) -> Map<String, Value> {
        self.map
    }
}

/// Parses an event index sent as a JSON integer or a base-10 string: negative or not an
/// integer is 422.
pub(crate) fn parse_index(name: &str, value: &Value) -> ApiResult<u64> {
    if let Some(index) = parse_int(value) {
        return u64::try_from(index)
            .map_err(|_| ApiError::invalid(format!("{name} must not be negative")));
    }
    // An integer past i64 is past every run's last event (a replay with no data frames), not a
    // bad request; it is taken as i64::MAX, the largest index a meta frame can repeat.
    let digits = match value {
        Value::Number(number) => number.as_u64().map(|index| index.to_string()),
        Value::String(text) => Some(text.clone()),
        _ => None,
    };
    match digits.filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())) {
        Some(_) => Ok(i64::MAX as u64),
        None => Err(ApiError::invalid(format!("{name} must be an integer"))),
    }
}

/// The fields of a start, read and checked.
#[derive(Debug)]
pub(crate) struct StartFields {
    /// Answer with an SSE stream.
    pub(crate) stream: bool,
    /// Run detached from the request.
    pub(crate) background: bool,
    /// The request for the engine (target and idempotency key still to set).
    pub(crate) request: StartRequest,
}

/// Fields that are not component parameters.
const RESERVED: [&str; 7] = [
    "message",
    "stream",
    "background",
    "session_id",
    "user_id",
    "run_id",
    "metadata",
];

impl StartFields {
    /// Reads a start's fields; the rest are the component's parameters.
    pub(crate) fn parse(
        mut fields: Fields,
        target: bgrun_core::RunTarget,
        stream_default: bool,
    ) -> ApiResult<Self> {
        let message = match fields.map.remove("message") {
            Some(Value::String(text)) => text,
            None | Some(Value::Null) => return Err(ApiError::invalid("message is required")),
            Some(_) => return Err(ApiError::invalid("message must be a string")),
        };
        let stream = fields.boolean("stream", stream_default)?;
        let background = fields.boolean("background", false)?;
        let session_id = fields
            .string("session_id")?
            .map(SessionId::parse)
            .transpose()?;
        let user_id = fields.string("user_id")?;
        let run_id = fields.string("run_id")?.map(RunId::parse).transpose()?;
        let metadata = fields.object("metadata")?;
        let mut params = fields.into_rest();
        for name in RESERVED {
            params.remove(name);
        }
        let mut request = StartRequest::new(target, message);
        request.params = params;
        request.session_id = session_id;
        request.user_id = user_id;
        request.run_id = run_id;
        request.metadata = metadata;
        Ok(Self {
            stream,
            background,
            request,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bgrun_core::{RunKind, RunTarget};

    fn target() -> RunTarget {
        RunTarget::new(RunKind::Agent, "echo")
    }

    #[test]
    fn form_fields_are_strings_and_empty_means_absent() {
        let fields = parse_urlencoded(b"message=hi+there&stream=FALSE&background=1&session_id=&delay_ms=5&metadata=%7B%22a%22%3A1%7D").unwrap();
        let start = StartFields::parse(fields, target(), true).unwrap();
        assert!(!start.stream);
        assert!(start.background);
        assert_eq!(start.request.input, "hi there");
        assert_eq!(start.request.session_id, None);
        assert_eq!(start.request.params["delay_ms"], "5");
        assert_eq!(start.request.metadata, Some(serde_json::json!({"a": 1})));
    }

    #[test]
    fn bad_fields_are_422() {
        for body in [
            &b"stream=true"[..],
            b"message=x&stream=yes",
            b"message=x&background=2",
            b"message=x&metadata=%5B1%5D",
            b"message=x&metadata=nope",
        ] {
            let fields = parse_urlencoded(body).unwrap();
            let error = StartFields::parse(fields, target(), true).unwrap_err();
            assert_eq!(error.status, 422, "{}", String::from_utf8_lossy(body));
        }
        let fields = Fields::from_json(
            serde_json::json!({"message": 1})
                .as_object()
                .cloned()
                .unwrap(),
        );
        assert!(StartFields::parse(fields, target(), true).is_err());
    }

    #[test]
    fn indexes_must_be_non_negative_integers() {
        assert_eq!(parse_index("i", &Value::from("7")).unwrap(), 7);
        assert_eq!(parse_index("i", &Value::from(0)).unwrap(), 0);
        // Past i64: past every run's end, not an error.
        for huge in [
            Value::from(u64::MAX),
            Value::from("99999999999999999999999"),
        ] {
            assert_eq!(parse_index("i", &huge).unwrap(), i64::MAX as u64);
        }
        for bad in [
            Value::from("-1"),
            Value::from(-1),
            Value::from("1.5"),
            Value::from("x"),
            Value::Bool(true),
        ] {
            assert_eq!(parse_index("i", &bad).unwrap_err().status, 422);
        }
    }
}
