//! The event envelope: what a run emits, stored and delivered as one compact JSON object.

use std::ops::Range;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::InvalidInput;
use crate::id::{RunId, SessionId};
use crate::run::Timestamp;

/// The envelope keys the engine sets on every event; a component's fields cannot override them.
pub const ENVELOPE_KEYS: [&str; 5] = ["event", "run_id", "session_id", "created_at", "event_index"];

/// One event of a run's log, rendered once.
///
/// Cloning is cheap (two reference counts), so one event fans out to any number of subscribers
/// without copying its JSON. Every delivery of an event is this exact JSON text.
#[derive(Clone)]
pub struct Event {
    index: u64,
    event_type: Arc<str>,
    json: SharedText,
}

/// A text, or a part of one shared by several events (a block of events a store read at once):
/// such events cost a reference count each, not an allocation and a copy of their JSON.
#[derive(Clone)]
struct SharedText {
    text: Arc<str>,
    /// Within `text`, on character boundaries (checked when made).
    range: Range<usize>,
}

impl SharedText {
    fn whole(text: Arc<str>) -> Self {
        let range = 0..text.len();
        Self { text, range }
    }

    fn as_str(&self) -> &str {
        // Never empty by mistake: the range was checked against this very text.
        self.text.get(self.range.clone()).unwrap_or_default()
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index
            && self.event_type == other.event_type
            && self.json() == other.json()
    }
}

impl Eq for Event {}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("index", &self.index)
            .field("event_type", &self.event_type)
            .field("json", &self.json())
            .finish()
    }
}

/// Who an event belongs to and when it was made: the envelope around a component's fields.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The run whose id the event carries.
    pub run_id: &'a RunId,
    /// That run's session.
    pub session_id: &'a SessionId,
    /// When it was emitted.
    pub created_at: Timestamp,
}

impl Event {
    /// An event as a store returns it: its index, type and JSON text, trusted as written.
    pub fn from_parts(
        index: u64,
        event_type: impl Into<Arc<str>>,
        json: impl Into<Arc<str>>,
    ) -> Self {
        Self {
            index,
            event_type: event_type.into(),
            json: SharedText::whole(json.into()),
        }
    }

    /// An event as a store returns it, whose JSON is the part `json` of `text`, a text several
    /// events share (a block of events read at once): the event holds a reference to `text`,
    /// not a copy, and keeps all of it alive as long as it lives.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use bgrun_core::Event;
    ///
    /// let block: Arc<str> = Arc::from(r#"{"event_index":0}{"event_index":1}"#);
    /// let second = Event::from_shared(1, "RunContent", &block, 17..34).unwrap();
    /// assert_eq!(second.json(), r#"{"event_index":1}"#);
    /// assert!(Event::from_shared(1, "RunContent", &block, 17..35).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// `json` is not a part of `text` (out of bounds, or not on character boundaries).
    pub fn from_shared(
        index: u64,
        event_type: impl Into<Arc<str>>,
        text: &Arc<str>,
        json: Range<usize>,
    ) -> Result<Self, InvalidInput> {
        if text.get(json.clone()).is_none() {
            return Err(InvalidInput::new(format!(
                "event {index}: bytes {json:?} are not a part of a text of {} bytes",
                text.len()
            )));
        }
        Ok(Self {
            index,
            event_type: event_type.into(),
            json: SharedText {
                text: text.clone(),
                range: json,
            },
        })
    }

    /// Renders an event: `{"event", "run_id", "session_id", "created_at", "event_index", ...fields}`.
    /// Fields named like an envelope key are left out.
    pub fn render(
        envelope: Envelope<'_>,
        index: u64,
        event_type: &str,
        fields: &Map<String, Value>,
    ) -> Self {
        // Written straight into one buffer: no intermediate string per key, value or number.
        let mut json = Vec::with_capacity(128 + event_type.len() + 32 * fields.len());
        json.extend_from_slice(b"{\"event\":");
        push_json(&mut json, event_type);
        json.extend_from_slice(b",\"run_id\":");
        push_json(&mut json, envelope.run_id.as_str());
        json.extend_from_slice(b",\"session_id\":");
        push_json(&mut json, envelope.session_id.as_str());
        json.extend_from_slice(b",\"created_at\":");
        push_json(&mut json, &envelope.created_at);
        json.extend_from_slice(b",\"event_index\":");
        push_json(&mut json, &index);
        for (key, value) in fields {
            if ENVELOPE_KEYS.contains(&key.as_str()) {
                continue;
            }
            json.push(b',');
            push_json(&mut json, key);
            json.push(b':');
            push_json(&mut json, value);
        }
        json.push(b'}');
        // serde_json writes UTF-8 only.
        let json = String::from_utf8(json)
            .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned());
        Self {
            index,
            event_type: event_type_arc(event_type),
            json: SharedText::whole(json.into()),
        }
    }

    /// The same event under another index (a child's event forwarded into its parent's log): its
    /// own `run_id` and fields are kept, `event_index` is replaced.
    pub fn reindexed(&self, index: u64) -> Result<Self, InvalidInput> {
        let mut object = self.fields()?;
        object.insert("event_index".into(), Value::from(index));
        Ok(Self {
            index,
            event_type: self.event_type.clone(),
            json: SharedText::whole(Value::Object(object).to_string().into()),
        })
    }

    /// Its `event_index`: 0 for a run's first event, then +1 for each next one.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Its type name (`RunStarted`, `RunContent`, ...).
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The whole event as compact JSON.
    pub fn json(&self) -> &str {
        self.json.as_str()
    }

    /// Parses the JSON into an object (envelope keys included).
    pub fn fields(&self) -> Result<Map<String, Value>, InvalidInput> {
        match serde_json::from_str::<Value>(self.json()) {
            Ok(Value::Object(object)) => Ok(object),
            Ok(_) => Err(InvalidInput::new("event JSON is not an object")),
            Err(error) => Err(InvalidInput::new(format!("event JSON is invalid: {error}"))),
        }
    }

    /// The `run_id` inside the JSON: a forwarded event carries its child's.
    pub fn run_id(&self) -> Result<RunId, InvalidInput> {
        match self.fields()?.remove("run_id") {
            Some(Value::String(id)) => RunId::parse(id),
            _ => Err(InvalidInput::new("event has no run_id")),
        }
    }
}

/// Appends `value` as compact JSON.
fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Strings, numbers and `Value`s always serialise, and a Vec takes every write.
    let _ = serde_json::to_writer(out, value);
}

/// The shared text of an event type: a run emits a handful of types many times each, so the
/// recent ones are kept per thread and an event costs a reference count, not an allocation.
fn event_type_arc(event_type: &str) -> Arc<str> {
    const KEPT: usize = 8;
    thread_local! {
        static RECENT: std::cell::RefCell<Vec<Arc<str>>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    RECENT.with(|recent| {
        let Ok(mut recent) = recent.try_borrow_mut() else {
            return Arc::from(event_type);
        };
        if let Some(found) = recent.iter().find(|kept| &***kept == event_type) {
            return found.clone();
        }
        let made: Arc<str> = Arc::from(event_type);
        if recent.len() == KEPT {
            recent.remove(0);
        }
        recent.push(made.clone());
        made
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_puts_envelope_first_and_ignores_reserved_fields() {
        let run_id = RunId::parse("r1").unwrap();
        let session_id = SessionId::parse("s\"1").unwrap();
        let mut fields = Map::new();
        fields.insert("content".into(), Value::from("hi \n"));
        fields.insert("event_index".into(), Value::from(99));
        let event = Event::render(
            Envelope {
                run_id: &run_id,
                session_id: &session_id,
                created_at: 7,
            },
            3,
            "RunContent",
            &fields,
        );
        assert_eq!(
            event.json(),
            r#"{"event":"RunContent","run_id":"r1","session_id":"s\"1","created_at":7,"event_index":3,"content":"hi \n"}"#
        );
        assert_eq!(event.fields().unwrap()["event_index"], 3);
        let moved = event.reindexed(12).unwrap();
        assert_eq!(moved.index(), 12);
        assert_eq!(moved.fields().unwrap()["event_index"], 12);
        assert_eq!(moved.run_id().unwrap(), run_id);
    }
}
