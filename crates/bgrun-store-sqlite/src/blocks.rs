//! Event blocks: the events of one append in one row.
//!
//! A replay reads rows, and SQLite steps through a few million rows a second at best; one row per
//! append turns a 100,000-event replay into a few hundred rows. A block is its events' type and
//! JSON, each preceded by its length in bytes as a 4-byte big-endian integer (which migration 4
//! writes in plain SQL: `unhex(printf('%08X', n))`):
//!
//! ```text
//! [0 0 0 10] RunStarted [0 0 0 123] {"event":"RunStarted",...} [0 0 0 10] RunContent ...
//! ```
//!
//! The events of a block are consecutive: the row keeps its first and last index, and the index
//! of each event is its position.

use std::sync::Arc;

use bgrun_core::{Event, StoreError, StoreResult};

/// The bytes of a block holding `events`.
pub(crate) fn encode(events: &[Event]) -> StoreResult<Vec<u8>> {
    let size = events
        .iter()
        .map(|event| event.event_type().len() + event.json().len() + 8)
        .sum();
    let mut body = Vec::with_capacity(size);
    for event in events {
        for part in [event.event_type(), event.json()] {
            let len = u32::try_from(part.len()).map_err(|_| {
                StoreError::backend(
                    "storing an event",
                    format!("event {} is larger than 4 GiB", event.index()),
                )
            })?;
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(part.as_bytes());
        }
    }
    Ok(body)
}

/// Reads the events of a block that starts at `first_index`, appending to `out` those after
/// `after` until `out` holds `limit`.
pub(crate) fn decode(
    first_index: u64,
    body: &[u8],
    after: Option<u64>,
    limit: usize,
    out: &mut Vec<Event>,
) -> StoreResult<()> {
    let mut rest = body;
    let mut index = first_index;
    // A log repeats few type names: consecutive events share one allocation of theirs.
    let mut last_type: Option<Arc<str>> = None;
    while !rest.is_empty() && out.len() < limit {
        let (event_type, after_type) = part(rest, index)?;
        let (json, after_json) = part(after_type, index)?;
        rest = after_json;
        // Events at or before `after` are stepped over unread.
        if after.is_none_or(|after| index > after) {
            let (event_type, json) = (text(event_type, index)?, text(json, index)?);
            let event_type = match &last_type {
                Some(last) if **last == *event_type => last.clone(),
                _ => Arc::<str>::from(event_type),
            };
            last_type = Some(event_type.clone());
            out.push(Event::from_parts(index, event_type, json));
        }
        index += 1;
    }
    Ok(())
}

fn malformed(index: u64) -> StoreError {
    StoreError::backend(
        "reading events",
        format!("the stored block holding event {index} is malformed"),
    )
}

fn text(bytes: &[u8], index: u64) -> StoreResult<&str> {
    std::str::from_utf8(bytes).map_err(|_| malformed(index))
}

/// One length-prefixed part at the start of `bytes`, and what follows it.
fn part(bytes: &[u8], index: u64) -> StoreResult<(&[u8], &[u8])> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| malformed(index))?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| malformed(index))?;
    match rest.split_at_checked(len) {
        Some(split) => Ok(split),
        None => Err(malformed(index)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(index: u64, event_type: &str, json: &str) -> Event {
        Event::from_parts(index, event_type, json)
    }

    #[test]
    fn a_block_gives_back_its_events_after_an_index_up_to_a_limit() {
        let events = vec![
            event(7, "RunStarted", "{\"a\":\"é:1\"}"),
            event(8, "RunContent", "{}"),
            event(9, "RunContent", "{\"b\":2}"),
        ];
        let body = encode(&events).unwrap();
        assert!(body.starts_with(b"\0\0\0\x0aRunStarted\0\0\0\x0c{\"a\":\"\xc3\xa9:1\"}"));

        let mut out = Vec::new();
        decode(7, &body, None, 100, &mut out).unwrap();
        assert_eq!(out, events);

        let mut out = Vec::new();
        decode(7, &body, Some(7), 1, &mut out).unwrap();
        assert_eq!(out, events[1..2]);

        let mut out = vec![events[0].clone()];
        decode(7, &body, Some(8), 100, &mut out).unwrap();
        assert_eq!(out, [events[0].clone(), events[2].clone()]);
    }

    #[test]
    fn a_malformed_block_is_an_error() {
        let body = encode(&[event(0, "RunStarted", "{}")]).unwrap();
        for broken in [
            &body[..body.len() - 1],
            &body[..3],
            b"\0\0\0\x0aRunStarted\0\0\0\x03{}".as_slice(),
            b"\xff\xff\xff\xffa".as_slice(),
            b"\0\0\0\x01\xff\0\0\0\x02{}".as_slice(),
        ] {
            let mut out = Vec::new();
            let error = decode(0, broken, None, 10, &mut out).unwrap_err();
            assert!(error.to_string().contains("malformed"), "{error}");
        }
    }
}
