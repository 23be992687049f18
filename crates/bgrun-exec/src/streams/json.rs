//! JSON-mode streams: an append's body is one JSON value or an array of them (flattened one
//! level); a message keeps the values of one append, as sent, comma-separated; a read answers
//! them all as one array.

use bytes::Bytes;
use serde_json::value::RawValue;

use super::StreamError;

/// The media type of JSON-mode streams.
pub const JSON: &str = "application/json";

/// Bodies up to this size are parsed where they arrive; larger ones (up to the HTTP layer's
/// limit, 16 MiB by default: tens of milliseconds of parsing) on a blocking thread, so that
/// they do not hold up the runtime's other tasks.
const PARSE_INLINE_BYTES: usize = 256 << 10;

/// [`message`], off the async runtime for a large body.
pub(crate) async fn parse(body: &Bytes, allow_empty: bool) -> Result<Option<Bytes>, StreamError> {
    if body.len() <= PARSE_INLINE_BYTES {
        return message(body, allow_empty);
    }
    let body = body.clone();
    tokio::task::spawn_blocking(move || message(&body, allow_empty))
        .await
        .map_err(|error| {
            StreamError::Store(bgrun_core::StoreError::backend(
                "parsing a JSON body",
                error,
            ))
        })?
}

/// The message an append of `body` to a JSON stream stores: `None` for an empty array, which
/// only a create may send (`allow_empty`). Values keep their text as sent (no re-encoding).
pub(crate) fn message(body: &[u8], allow_empty: bool) -> Result<Option<Bytes>, StreamError> {
    let value: &RawValue = serde_json::from_slice(body)
        .map_err(|error| StreamError::InvalidJson(error.to_string()))?;
    let text = value.get();
    if !text.starts_with('[') {
        return Ok(Some(Bytes::copy_from_slice(text.as_bytes())));
    }
    let values: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|error| StreamError::InvalidJson(error.to_string()))?;
    if values.is_empty() {
        return if allow_empty {
            Ok(None)
        } else {
            Err(StreamError::EmptyJsonArray)
        };
    }
    Ok(Some(join(&values)))
}

/// [`prefix`], off the async runtime for a large message (as [`parse`]).
pub(crate) async fn prefix_of(message: &Bytes, count: u64) -> Result<Option<Bytes>, StreamError> {
    if message.len() <= PARSE_INLINE_BYTES {
        return Ok(prefix(message, count));
    }
    let message = message.clone();
    tokio::task::spawn_blocking(move || prefix(&message, count))
        .await
        .map_err(|error| {
            StreamError::Store(bgrun_core::StoreError::backend(
                "reading a JSON message",
                error,
            ))
        })
}

/// The first `count` values of a stored message, as a message; `None` when it has fewer.
pub(crate) fn prefix(message: &[u8], count: u64) -> Option<Bytes> {
    let text = std::str::from_utf8(message).ok()?;
    let array = format!("[{text}]");
    let values: Vec<&RawValue> = serde_json::from_str(&array).ok()?;
    let count = usize::try_from(count).ok()?;
    (count <= values.len()).then(|| join(&values[..count]))
}

fn join(values: &[&RawValue]) -> Bytes {
    let len = values.iter().map(|v| v.get().len() + 1).sum();
    let mut out = Vec::with_capacity(len);
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(value.get().as_bytes());
    }
    Bytes::from(out)
}

/// Messages as the JSON array a read answers.
pub fn array<'a>(messages: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(b'[');
    for message in messages {
        if message.is_empty() {
            continue;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(message);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_flatten_one_level_and_values_keep_their_text() {
        let one = message(br#" {"a": 1} "#, false).unwrap().unwrap();
        assert_eq!(&one[..], br#"{"a": 1}"#);
        let many = message(br#"[1, [2, 3], "x"]"#, false).unwrap().unwrap();
        assert_eq!(&many[..], br#"1,[2, 3],"x""#);
        assert_eq!(array([&one[..], &many[..]]), br#"[{"a": 1},1,[2, 3],"x"]"#);
        assert_eq!(array([]), b"[]");
    }

    #[test]
    fn empty_arrays_and_bad_json_are_refused() {
        assert!(matches!(
            message(b"[]", false),
            Err(StreamError::EmptyJsonArray)
        ));
        assert!(matches!(message(b"[]", true), Ok(None)));
        assert!(matches!(
            message(b"{", false),
            Err(StreamError::InvalidJson(_))
        ));
        assert!(matches!(
            message(b"1 2", false),
            Err(StreamError::InvalidJson(_))
        ));
    }

    #[test]
    fn a_prefix_takes_whole_values() {
        assert_eq!(
            prefix(br#"1,{"b":[2,3]},4"#, 2).unwrap(),
            &br#"1,{"b":[2,3]}"#[..]
        );
        assert_eq!(prefix(b"1,2", 2).unwrap(), &b"1,2"[..]);
        assert!(prefix(b"1,2", 3).is_none());
    }
}
