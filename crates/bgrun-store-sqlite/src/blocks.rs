//! Event blocks: a few consecutive events of a run in one row.
//!
//! A replay reads rows, and SQLite steps through a few million rows a second at best; one row per
//! block turns a 100,000-event replay into a few hundred rows. The events of a block are
//! consecutive: the row keeps its first and last index, and the index of each event is its
//! position. An append is cut into blocks of at most [`MAX_BLOCK_BYTES`] of events, each stored
//! in one of two ways (the `codec` column, [`Codec`]):
//!
//! - LZ4-compressed text, when compression makes the block smaller (nearly always: a run's
//!   events repeat its ids and field names; a 100,000-event `ticker` run's 20.7 MB of events
//!   take 1.1 MB). The text is each event's type and JSON, each preceded by its length in bytes
//!   in decimal and a colon:
//!
//!   ```text
//!   10:RunStarted123:{"event":"RunStarted",...}10:RunContent...
//!   ```
//!
//!   A block's text is checked as UTF-8 once, and the events read from it share it
//!   ([`Event::from_shared`]): no allocation or copy per event.
//! - Plain bytes otherwise (and in every block written before migration 5): each part preceded
//!   by its length as a 4-byte big-endian integer (which migration 4 writes in plain SQL:
//!   `unhex(printf('%08X', n))`):
//!
//!   ```text
//!   [0 0 0 10] RunStarted [0 0 0 123] {"event":"RunStarted",...} [0 0 0 10] RunContent ...
//!   ```

use std::ops::Range;
use std::sync::Arc;

use bgrun_core::{Event, StoreError, StoreResult};

/// The most bytes of encoded events a block holds, unless one event alone is larger. A read
/// that starts inside a block steps over the block's earlier events, so blocks stay small; LZ4
/// finds most of the repeats of a run's events within this much.
pub(crate) const MAX_BLOCK_BYTES: usize = 32 * 1024;

/// How a block's body is stored: the `codec` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// The encoded events as they are (every block written before migration 5).
    Plain,
    /// The events as text ([`encode_text`]) compressed as one LZ4 block, its length first (4
    /// bytes, little-endian: `lz4_flex::block::compress_prepend_size`).
    Lz4,
}

impl Codec {
    /// The column's value.
    pub(crate) fn to_sql(self) -> i64 {
        match self {
            Self::Plain => 0,
            Self::Lz4 => 1,
        }
    }

    /// The codec a column's value names.
    pub(crate) fn from_sql(value: i64) -> StoreResult<Self> {
        match value {
            0 => Ok(Self::Plain),
            1 => Ok(Self::Lz4),
            other => Err(StoreError::backend(
                "reading events",
                format!("a stored block has the unknown codec {other} (written by a newer bgrun?)"),
            )),
        }
    }
}

/// A block as stored: the indexes of its first and last event, and its body.
#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) first_index: u64,
    pub(crate) last_index: u64,
    pub(crate) codec: Codec,
    pub(crate) body: Vec<u8>,
}

/// The blocks holding `events` (consecutive): each at most [`MAX_BLOCK_BYTES`] of encoded
/// events, or one event, compressed when that makes it smaller.
pub(crate) fn blocks(events: &[Event]) -> StoreResult<Vec<Block>> {
    let mut blocks = Vec::new();
    let mut rest = events;
    while let Some(first) = rest.first() {
        let mut size = 0;
        let len = rest
            .iter()
            .position(|event| {
                size += encoded_len(event);
                size > MAX_BLOCK_BYTES
            })
            .unwrap_or(rest.len())
            .max(1);
        let (these, after) = rest.split_at(len);
        rest = after;
        let compressed = lz4_flex::block::compress_prepend_size(encode_text(these).as_bytes());
        let plain = encode(these)?;
        let (codec, body) = if compressed.len() < plain.len() {
            (Codec::Lz4, compressed)
        } else {
            (Codec::Plain, plain)
        };
        blocks.push(Block {
            first_index: first.index(),
            last_index: first.index() + these.len() as u64 - 1,
            codec,
            body,
        });
    }
    Ok(blocks)
}

fn encoded_len(event: &Event) -> usize {
    event.event_type().len() + event.json().len() + 8
}

/// The encoded bytes of `events`, uncompressed.
pub(crate) fn encode(events: &[Event]) -> StoreResult<Vec<u8>> {
    let size = events.iter().map(encoded_len).sum();
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

/// The text of `events`, uncompressed: each part preceded by its length and a colon.
pub(crate) fn encode_text(events: &[Event]) -> String {
    let size = events.iter().map(|event| encoded_len(event) + 4).sum();
    let mut text = String::with_capacity(size);
    for event in events {
        for part in [event.event_type(), event.json()] {
            text.push_str(itoa::Buffer::new().format(part.len()));
            text.push(':');
            text.push_str(part);
        }
    }
    text
}

/// Reads stored blocks; keeps the buffer that compressed ones are expanded into from one block
/// to the next.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    expanded: Vec<u8>,
}

impl Decoder {
    /// Reads the events of a block that starts at `first_index`, appending to `out` those after
    /// `after` until `out` holds `limit`.
    pub(crate) fn decode(
        &mut self,
        first_index: u64,
        codec: Codec,
        body: &[u8],
        after: Option<u64>,
        limit: usize,
        out: &mut Vec<Event>,
    ) -> StoreResult<()> {
        match codec {
            Codec::Plain => decode(first_index, body, after, limit, out),
            Codec::Lz4 => {
                self.expand(first_index, body)?;
                let text =
                    std::str::from_utf8(&self.expanded).map_err(|_| malformed(first_index))?;
                decode_text(first_index, &Arc::from(text), after, limit, out)
            }
        }
    }

    fn expand(&mut self, first_index: u64, body: &[u8]) -> StoreResult<()> {
        let (len, compressed) =
            lz4_flex::block::uncompressed_size(body).map_err(|_| malformed(first_index))?;
        // LZ4 expands at most 255 to 1: a larger length is a damaged block, not one to
        // allocate for.
        if len > compressed.len().saturating_mul(255).saturating_add(16) {
            return Err(malformed(first_index));
        }
        self.expanded.clear();
        self.expanded.resize(len, 0);
        match lz4_flex::block::decompress_into(compressed, &mut self.expanded) {
            Ok(written) if written == len => Ok(()),
            _ => Err(malformed(first_index)),
        }
    }
}

/// Reads the events of an uncompressed block that starts at `first_index`, appending to `out`
/// those after `after` until `out` holds `limit`.
fn decode(
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

/// Reads the events of a block's text ([`encode_text`]) that starts at `first_index`,
/// appending to `out` those after `after` until `out` holds `limit`; they share `text`.
fn decode_text(
    first_index: u64,
    text: &Arc<str>,
    after: Option<u64>,
    limit: usize,
    out: &mut Vec<Event>,
) -> StoreResult<()> {
    let mut at = 0;
    let mut index = first_index;
    let mut last_type: Option<Arc<str>> = None;
    while at < text.len() && out.len() < limit {
        let type_range = text_part(text, &mut at, index)?;
        let json_range = text_part(text, &mut at, index)?;
        // Events at or before `after` are stepped over unread.
        if after.is_none_or(|after| index > after) {
            let event_type = text.get(type_range).ok_or_else(|| malformed(index))?;
            let event_type = match &last_type {
                Some(last) if **last == *event_type => last.clone(),
                _ => Arc::<str>::from(event_type),
            };
            last_type = Some(event_type.clone());
            let event = Event::from_shared(index, event_type, text, json_range)
                .map_err(|_| malformed(index))?;
            out.push(event);
        }
        index += 1;
    }
    Ok(())
}

/// The range of the part at `at` in a block's text (its decimal length and a colon, then
/// itself), moving `at` past it.
fn text_part(text: &str, at: &mut usize, index: u64) -> StoreResult<Range<usize>> {
    let rest = text.as_bytes().get(*at..).ok_or_else(|| malformed(index))?;
    // No length has more than 20 digits (u64::MAX).
    let colon = rest
        .iter()
        .take(21)
        .position(|&byte| byte == b':')
        .filter(|&colon| colon > 0)
        .ok_or_else(|| malformed(index))?;
    let len = rest[..colon].iter().try_fold(0_usize, |len, &digit| {
        if !digit.is_ascii_digit() {
            return None;
        }
        len.checked_mul(10)?.checked_add(usize::from(digit - b'0'))
    });
    let start = *at + colon + 1;
    let end = len
        .and_then(|len| start.checked_add(len))
        .filter(|&end| end <= text.len())
        .ok_or_else(|| malformed(index))?;
    *at = end;
    Ok(start..end)
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

    /// Reads back every block of `blocks` after `after`, up to `limit` events.
    fn read(blocks: &[Block], after: Option<u64>, limit: usize) -> StoreResult<Vec<Event>> {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        for block in blocks {
            if after.is_some_and(|after| block.last_index <= after) {
                continue;
            }
            decoder.decode(
                block.first_index,
                block.codec,
                &block.body,
                after,
                limit,
                &mut out,
            )?;
        }
        Ok(out)
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

        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        decoder
            .decode(7, Codec::Plain, &body, None, 100, &mut out)
            .unwrap();
        assert_eq!(out, events);

        let mut out = Vec::new();
        decoder
            .decode(7, Codec::Plain, &body, Some(7), 1, &mut out)
            .unwrap();
        assert_eq!(out, events[1..2]);

        let mut out = vec![events[0].clone()];
        decoder
            .decode(7, Codec::Plain, &body, Some(8), 100, &mut out)
            .unwrap();
        assert_eq!(out, [events[0].clone(), events[2].clone()]);
    }

    #[test]
    fn an_append_is_cut_into_compressed_blocks_that_read_back_the_same() {
        let events: Vec<Event> = (0..2_000)
            .map(|index| {
                let json = format!(
                    r#"{{"event":"RunContent","event_index":{index},"content":"tick {index}"}}"#
                );
                event(index, "RunContent", &json)
            })
            .collect();
        let blocks = blocks(&events).unwrap();
        assert!(blocks.len() > 1, "{} blocks", blocks.len());
        let mut next = 0;
        for block in &blocks {
            assert_eq!(block.first_index, next);
            assert_eq!(block.codec, Codec::Lz4);
            let these = &events[block.first_index as usize..=block.last_index as usize];
            assert!(encode(these).unwrap().len() <= MAX_BLOCK_BYTES);
            assert!(block.body.len() < encode(these).unwrap().len() / 2);
            next = block.last_index + 1;
        }
        assert_eq!(next, 2_000);

        assert_eq!(read(&blocks, None, usize::MAX).unwrap(), events);
        assert_eq!(read(&blocks, Some(1_234), 3).unwrap(), events[1_235..1_238]);
    }

    #[test]
    fn an_event_larger_than_a_block_has_a_block_of_its_own() {
        let large = format!("\"{}\"", "x".repeat(MAX_BLOCK_BYTES * 2));
        let events = vec![
            event(0, "RunStarted", "{}"),
            event(1, "RunContent", &large),
            event(2, "RunCompleted", "{}"),
        ];
        let blocks = blocks(&events).unwrap();
        let spans: Vec<(u64, u64)> = blocks
            .iter()
            .map(|block| (block.first_index, block.last_index))
            .collect();
        assert_eq!(spans, [(0, 0), (1, 1), (2, 2)]);
        assert_eq!(read(&blocks, None, 10).unwrap(), events);
    }

    #[test]
    fn a_block_that_compression_does_not_shrink_is_stored_as_it_is() {
        let events = [event(0, "A", "{}")];
        let blocks = blocks(&events).unwrap();
        assert_eq!(blocks[0].codec, Codec::Plain);
        assert_eq!(blocks[0].body, encode(&events).unwrap());
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
            let error = Decoder::default()
                .decode(0, Codec::Plain, broken, None, 10, &mut out)
                .unwrap_err();
            assert!(error.to_string().contains("malformed"), "{error}");
        }

        let events: Vec<Event> = (0..100)
            .map(|index| event(index, "RunContent", r#"{"content":"tick"}"#))
            .collect();
        let compressed = blocks(&events).unwrap().remove(0).body;
        let mut claims_more = compressed.clone();
        claims_more[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut claims_less = compressed.clone();
        claims_less[..4].copy_from_slice(&10_u32.to_le_bytes());
        for broken in [
            &compressed[..compressed.len() - 1],
            &compressed[..2],
            &claims_more[..],
            &claims_less[..],
        ] {
            let mut out = Vec::new();
            let error = Decoder::default()
                .decode(0, Codec::Lz4, broken, None, 1_000, &mut out)
                .unwrap_err();
            assert!(error.to_string().contains("malformed"), "{error}");
        }
    }

    #[test]
    fn a_malformed_block_text_is_an_error() {
        let good = encode_text(&[event(0, "RunStarted", "{\"a\":\"é\"}")]);
        assert_eq!(good, "10:RunStarted10:{\"a\":\"é\"}");
        for broken in [
            "10:RunStarted",
            "10:RunStarted11:{\"a\":\"é\"}",
            "10:RunStarted9:{\"a\":\"é\"}",
            "10:RunStarted:{}",
            "1x:RunStarted2:{}",
            "99999999999999999999999:RunStarted2:{}",
            "RunStarted2:{}",
        ] {
            let body = lz4_flex::block::compress_prepend_size(broken.as_bytes());
            let mut out = Vec::new();
            let error = Decoder::default()
                .decode(0, Codec::Lz4, &body, None, 10, &mut out)
                .unwrap_err();
            assert!(error.to_string().contains("malformed"), "{broken}: {error}");
        }
        let not_utf8 = lz4_flex::block::compress_prepend_size(b"1:A2:\xff}");
        let mut out = Vec::new();
        let error = Decoder::default()
            .decode(0, Codec::Lz4, &not_utf8, None, 10, &mut out)
            .unwrap_err();
        assert!(error.to_string().contains("malformed"), "{error}");
    }

    #[test]
    fn an_unknown_codec_is_an_error() {
        assert_eq!(Codec::from_sql(Codec::Lz4.to_sql()).unwrap(), Codec::Lz4);
        assert_eq!(
            Codec::from_sql(Codec::Plain.to_sql()).unwrap(),
            Codec::Plain
        );
        let error = Codec::from_sql(7).unwrap_err();
        assert!(error.to_string().contains("unknown codec 7"), "{error}");
    }
}
