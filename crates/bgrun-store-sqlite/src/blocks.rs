//! Event blocks: a few consecutive events of a run in one row.
//!
//! A replay reads rows, and SQLite steps through a few million rows a second at best; one row per
//! block turns a 100,000-event replay into a few hundred rows. The events of a block are
//! consecutive: the row keeps its first and last index, and the index of each event is its
//! position. An append is cut into blocks of at most [`MAX_BLOCK_BYTES`] of events, each stored
//! in one of three ways (the `codec` column, [`Codec`]):
//!
//! - Frames, when the events' frames are lines (`Event::frames_as_lines`: every event the
//!   engine makes): the events' server-sent-event frames, exactly as a stream sends them
//!   (`Event::push_frame`), LZ4-compressed when the block holds at least
//!   [`COMPRESS_FROM_BYTES`] of them and compression makes it smaller (nearly always: a run's
//!   events repeat its ids and field names):
//!
//!   ```text
//!   id: 0\nevent: RunStarted\ndata: {"event":"RunStarted",...}\n\nid: 1\nevent: ...
//!   ```
//!
//!   A replay sends a block's frames as they are ([`push_frames`]), with no event decoded.
//!   Read as events, a block's text is checked as UTF-8 once and its events share it
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
use bytes::Bytes;

/// The most bytes of encoded events a block holds, unless one event alone is larger. A read
/// that starts inside a block steps over the block's earlier events, so blocks stay small; LZ4
/// finds most of the repeats of a run's events within this much.
pub(crate) const MAX_BLOCK_BYTES: usize = 32 * 1024;

/// The fewest bytes of frames a block is compressed from. LZ4 zeroes a hash table of 8 KiB or
/// more for every block it compresses: for the few events of a short run's append that cost
/// more than the whole rest of encoding the block (15 % of the writer's instructions in a
/// run's create and end, counted with callgrind), for a few hundred bytes saved.
pub(crate) const COMPRESS_FROM_BYTES: usize = 1024;

/// How a block's body is stored: the `codec` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// The encoded events as they are (every block written before migration 5).
    Plain,
    /// The events' frames ([`encode_frames`]) compressed as one LZ4 block, their length first
    /// (4 bytes, little-endian: `lz4_flex::block::compress_prepend_size`).
    Lz4,
    /// The events' frames ([`encode_frames`]) as they are (since migration 6).
    Frames,
}

impl Codec {
    /// The column's value.
    pub(crate) fn to_sql(self) -> i64 {
        match self {
            Self::Plain => 0,
            Self::Lz4 => 1,
            Self::Frames => 2,
        }
    }

    /// The codec a column's value names.
    pub(crate) fn from_sql(value: i64) -> StoreResult<Self> {
        match value {
            0 => Ok(Self::Plain),
            1 => Ok(Self::Lz4),
            2 => Ok(Self::Frames),
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
        let (codec, body) = match encode_frames(these) {
            Some(frames) if frames.len() < COMPRESS_FROM_BYTES => (Codec::Frames, frames),
            Some(frames) => {
                let compressed = lz4_flex::block::compress_prepend_size(&frames);
                if compressed.len() < frames.len() {
                    (Codec::Lz4, compressed)
                } else {
                    (Codec::Frames, frames)
                }
            }
            None => (Codec::Plain, encode(these)?),
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

/// The frames of `events`, uncompressed; `None` if one's frame is not lines.
pub(crate) fn encode_frames(events: &[Event]) -> Option<Vec<u8>> {
    if !events.iter().all(Event::frames_as_lines) {
        return None;
    }
    let mut frames = Vec::with_capacity(events.iter().map(Event::frame_len).sum());
    for event in events {
        event.push_frame(&mut frames);
    }
    Some(frames)
}

/// Reads the events of a stored block that starts at `first_index`, appending to `out` those
/// after `after` until `out` holds `limit`.
pub(crate) fn decode(
    first_index: u64,
    codec: Codec,
    body: &[u8],
    after: Option<u64>,
    limit: usize,
    out: &mut Vec<Event>,
) -> StoreResult<()> {
    match codec {
        Codec::Plain => decode_plain(first_index, body, after, limit, out),
        Codec::Lz4 => {
            let text = String::from_utf8(expand(first_index, body)?)
                .map_err(|_| malformed(first_index))?;
            decode_frames(first_index, &Arc::from(text), after, limit, out)
        }
        Codec::Frames => {
            let text = std::str::from_utf8(body).map_err(|_| malformed(first_index))?;
            decode_frames(first_index, &Arc::from(text), after, limit, out)
        }
    }
}

/// How many events of a stored block (`first_index..=last_index`) a read after `after` steps
/// over, how many it could take, and how many it takes (at most `limit`).
fn span(
    (first_index, last_index): (u64, u64),
    after: Option<u64>,
    limit: usize,
) -> StoreResult<(u64, u64, u64)> {
    let skip = after.map_or(0, |after| {
        after.saturating_add(1).saturating_sub(first_index)
    });
    let left = last_index
        .checked_sub(first_index)
        .and_then(|span| span.checked_add(1))
        .and_then(|count| count.checked_sub(skip))
        .ok_or_else(|| malformed(first_index))?;
    Ok((skip, left, left.min(limit as u64)))
}

/// Appends to `page` the frames of the events of a stored block (`first_index..=last_index`)
/// after `after`, at most `limit` of them; returns how many. A block of frames is copied (an LZ4
/// one expanded) into `page` and looked through only where the events asked for start or stop
/// inside it: no event is decoded.
pub(crate) fn push_frames(
    page: &mut Vec<u8>,
    block: (u64, u64),
    codec: Codec,
    body: &[u8],
    after: Option<u64>,
    limit: usize,
) -> StoreResult<usize> {
    let first_index = block.0;
    match codec {
        Codec::Plain => {
            let mut events = Vec::new();
            decode_plain(first_index, body, after, limit, &mut events)?;
            for event in &events {
                event.push_frame(page);
            }
            Ok(events.len())
        }
        Codec::Frames => {
            let (skip, left, take) = span(block, after, limit)?;
            let (start, end) =
                frames_in(body, block, skip, take, left).map_err(|()| malformed(first_index))?;
            page.extend_from_slice(body.get(start..end).unwrap_or_default());
            Ok(take as usize)
        }
        Codec::Lz4 => {
            let (frames, count) = lz4_frames(block, body, after, limit)?;
            page.extend_from_slice(&frames);
            Ok(count)
        }
    }
}

/// The frames of the events of an LZ4 block (`first_index..=last_index`) after `after`, at most
/// `limit` of them, and how many: the block expanded into a buffer of its own (no copy into a
/// page), sliced where the events asked for start or stop inside it.
pub(crate) fn lz4_frames(
    block: (u64, u64),
    body: &[u8],
    after: Option<u64>,
    limit: usize,
) -> StoreResult<(Bytes, usize)> {
    let first_index = block.0;
    let (skip, left, take) = span(block, after, limit)?;
    let text = expand(first_index, body)?;
    let (start, end) =
        frames_in(&text, block, skip, take, left).map_err(|()| malformed(first_index))?;
    Ok((Bytes::from(text).slice(start..end), take as usize))
}

/// Where, in the text of a block of frames, the `take` frames after the first `skip` start
/// and end; checks the text is UTF-8 and holds the block's own frames (its first and last
/// ones are `block`'s first and last index's, and it ends a frame).
fn frames_in(
    text: &[u8],
    (first_index, last_index): (u64, u64),
    skip: u64,
    take: u64,
    left: u64,
) -> Result<(usize, usize), ()> {
    std::str::from_utf8(text).map_err(|_| ())?;
    let last_start =
        match memchr::memmem::rfind(text.get(..text.len().saturating_sub(2)).ok_or(())?, b"\n\n") {
            Some(end) => end + 2,
            None => 0,
        };
    let own = text.starts_with(format!("id: {first_index}\n").as_bytes())
        && text.ends_with(b"\n\n")
        && text
            .get(last_start..)
            .is_some_and(|last| last.starts_with(format!("id: {last_index}\n").as_bytes()));
    if !own {
        return Err(());
    }
    // Only a block a page starts or stops inside is looked through.
    let start = match skip {
        0 => 0,
        _ => frame_ends(text, 0, skip).ok_or(())?,
    };
    let end = if take < left {
        frame_ends(text, start, take).ok_or(())?
    } else {
        text.len()
    };
    Ok((start, end))
}

/// The text of an LZ4 block, expanded into a buffer that is not zeroed first.
fn expand(first_index: u64, body: &[u8]) -> StoreResult<Vec<u8>> {
    let (len, compressed) =
        lz4_flex::block::uncompressed_size(body).map_err(|_| malformed(first_index))?;
    // LZ4 expands at most 255 to 1: a larger length is a damaged block, not one to allocate
    // for.
    if len > compressed.len().saturating_mul(255).saturating_add(16) {
        return Err(malformed(first_index));
    }
    // Refuses to write past `len` (the decoder's bounds checks).
    match lz4_flex::block::decompress(compressed, len) {
        Ok(text) if text.len() == len => Ok(text),
        _ => Err(malformed(first_index)),
    }
}

/// Reads the events of an uncompressed block that starts at `first_index`, appending to `out`
/// those after `after` until `out` holds `limit`.
fn decode_plain(
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

/// Where the `count`th frame from `from` ends in a text of frames; `None` if it has fewer.
///
/// Each frame's lines hold no line break of their own, so each frame ends at its one `\n\n`.
fn frame_ends(text: &[u8], from: usize, count: u64) -> Option<usize> {
    let Some(nth) = count.checked_sub(1) else {
        return Some(from);
    };
    let rest = text.get(from..)?;
    let nth = usize::try_from(nth).ok()?;
    let end = memchr::memmem::find_iter(rest, b"\n\n").nth(nth)?;
    Some(from + end + 2)
}

/// Reads the events of a block's frames ([`encode_frames`]) that start at `first_index`,
/// appending to `out` those after `after` until `out` holds `limit`; they share `text`.
fn decode_frames(
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
        let id = line(text, &mut at, "id: ", index)?;
        if text.get(id) != Some(itoa::Buffer::new().format(index)) {
            return Err(malformed(index));
        }
        let type_range = line(text, &mut at, "event: ", index)?;
        let json_range = line(text, &mut at, "data: ", index)?;
        // The blank line that ends the frame.
        let blank = line(text, &mut at, "", index)?;
        if !blank.is_empty() {
            return Err(malformed(index));
        }
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

/// The range of the value of the line at `at` that starts with `name` (up to its `\n`), moving
/// `at` to the next line.
fn line(text: &str, at: &mut usize, name: &str, index: u64) -> StoreResult<Range<usize>> {
    let rest = text.get(*at..).ok_or_else(|| malformed(index))?;
    if !rest.starts_with(name) {
        return Err(malformed(index));
    }
    let len = rest.find('\n').ok_or_else(|| malformed(index))?;
    let (start, end) = (*at + name.len(), *at + len);
    if end < start {
        return Err(malformed(index));
    }
    *at = end + 1;
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
    use bgrun_core::Frames;

    fn event(index: u64, event_type: &str, json: &str) -> Event {
        Event::from_parts(index, event_type, json)
    }

    /// Reads back every block of `blocks` after `after`, up to `limit` events.
    fn read(blocks: &[Block], after: Option<u64>, limit: usize) -> StoreResult<Vec<Event>> {
        let mut out = Vec::new();
        for block in blocks {
            if after.is_some_and(|after| block.last_index <= after) {
                continue;
            }
            decode(
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

        let mut out = Vec::new();
        decode(7, Codec::Plain, &body, None, 100, &mut out).unwrap();
        assert_eq!(out, events);

        let mut out = Vec::new();
        decode(7, Codec::Plain, &body, Some(7), 1, &mut out).unwrap();
        assert_eq!(out, events[1..2]);

        let mut out = vec![events[0].clone()];
        decode(7, Codec::Plain, &body, Some(8), 100, &mut out).unwrap();
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
    fn a_small_block_or_one_compression_does_not_shrink_is_stored_as_frames() {
        // Under `COMPRESS_FROM_BYTES`: not compressed at all.
        let small = vec![
            event(0, "RunStarted", r#"{"content":"tick"}"#),
            event(1, "RunContent", r#"{"content":"tick"}"#),
        ];
        // Larger, but with no repeat for LZ4 to find.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: String = (0..COMPRESS_FROM_BYTES)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b"0123456789abcdefghijklmnopqrstuvwxyz"[(state % 36) as usize])
            })
            .collect();
        let noisy = vec![event(0, "RunContent", &format!(r#"{{"n":"{noise}"}}"#))];
        for events in [small, noisy] {
            let blocks = blocks(&events).unwrap();
            assert_eq!(blocks.len(), 1);
            assert_eq!(blocks[0].codec, Codec::Frames);
            assert_eq!(blocks[0].body, Frames::of(&events).to_vec());
            assert_eq!(read(&blocks, None, 10).unwrap(), events);
            assert_eq!(read(&blocks, Some(0), 10).unwrap(), events[1..]);
            assert_eq!(frames_of(&blocks, None, 10).0, Frames::of(&events).to_vec());
            assert_eq!(
                frames_of(&blocks, Some(0), 10).0,
                Frames::of(&events[1..]).to_vec()
            );
        }
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
            let error = decode(0, Codec::Plain, broken, None, 10, &mut out).unwrap_err();
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
            let error = decode(0, Codec::Lz4, broken, None, 1_000, &mut out).unwrap_err();
            assert!(error.to_string().contains("malformed"), "{error}");
        }
    }

    /// The frames of the blocks' events after `after`, at most `limit`, as a read gives them.
    fn frames_of(blocks: &[Block], after: Option<u64>, limit: usize) -> (Vec<u8>, usize) {
        let (mut out, mut count) = (Vec::new(), 0);
        for block in blocks {
            if after.is_some_and(|after| block.last_index <= after) || count == limit {
                continue;
            }
            count += push_frames(
                &mut out,
                (block.first_index, block.last_index),
                block.codec,
                &block.body,
                after,
                limit - count,
            )
            .unwrap();
        }
        (out, count)
    }

    #[test]
    fn a_block_gives_the_frames_of_its_events_as_they_are_sent() {
        let events: Vec<Event> = (0..2_000)
            .map(|index| {
                let json = format!(r#"{{"event":"RunContent","event_index":{index}}}"#);
                event(index, "RunContent", &json)
            })
            .collect();
        let blocks = blocks(&events).unwrap();
        assert!(blocks.len() > 2);
        assert!(blocks.iter().all(|block| block.codec == Codec::Lz4));
        for (after, limit) in [
            (None, usize::MAX),
            (None, 1),
            (Some(0), 3),
            (Some(700), 900),
        ] {
            let first = after.map_or(0, |after| after as usize + 1);
            let expected = &events[first..first.saturating_add(limit).min(events.len())];
            let (got, count) = frames_of(&blocks, after, limit);
            assert_eq!(count, expected.len());
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(Frames::of(expected).to_vec()).unwrap()
            );
        }
    }

    #[test]
    fn events_whose_frames_are_not_lines_are_stored_plain_and_framed_when_read() {
        let events = vec![
            event(0, "RunStarted", "{\"a\":\n1}"),
            event(1, "RunContent", "{}"),
        ];
        let blocks = blocks(&events).unwrap();
        assert_eq!(blocks[0].codec, Codec::Plain);
        assert_eq!(read(&blocks, None, 10).unwrap(), events);
        assert_eq!(
            frames_of(&blocks, Some(0), 10).0,
            Frames::of(&events[1..]).to_vec()
        );
    }

    /// A block's body holding `text` as `codec` stores it.
    fn stored(codec: Codec, text: &[u8]) -> Vec<u8> {
        match codec {
            Codec::Lz4 => lz4_flex::block::compress_prepend_size(text),
            Codec::Frames | Codec::Plain => text.to_vec(),
        }
    }

    #[test]
    fn a_malformed_block_of_frames_is_an_error() {
        let good = encode_frames(&[event(0, "RunStarted", "{\"a\":\"é\"}")]).unwrap();
        assert_eq!(
            good,
            "id: 0\nevent: RunStarted\ndata: {\"a\":\"é\"}\n\n".as_bytes()
        );
        for codec in [Codec::Lz4, Codec::Frames] {
            for broken in [
                "id: 0\nevent: RunStarted\ndata: {}\n",
                "id: 0\nevent: RunStarted\ndata: {}",
                "id: 1\nevent: RunStarted\ndata: {}\n\n",
                "id: 0\ndata: {}\n\n",
                "id: 0\nevent: RunStarted\ndata: {}\nx\n",
                "event: RunStarted\ndata: {}\n\n",
            ] {
                let body = stored(codec, broken.as_bytes());
                let mut out = Vec::new();
                let error = decode(0, codec, &body, None, 10, &mut out).unwrap_err();
                assert!(
                    error.to_string().contains("malformed"),
                    "{codec:?} {broken:?}: {error}"
                );
            }
            let not_utf8 = stored(codec, b"id: 0\nevent: A\ndata: \xff\n\n");
            let mut out = Vec::new();
            let error = decode(0, codec, &not_utf8, None, 10, &mut out).unwrap_err();
            assert!(error.to_string().contains("malformed"), "{error}");
            let error =
                push_frames(&mut Vec::new(), (0, 0), codec, &not_utf8, None, 10).unwrap_err();
            assert!(error.to_string().contains("malformed"), "{error}");
            // Frames of a block whose text does not start with its first event's.
            let shifted = stored(codec, &good);
            let error =
                push_frames(&mut Vec::new(), (5, 5), codec, &shifted, None, 10).unwrap_err();
            assert!(error.to_string().contains("malformed"), "{error}");
            // A block claiming fewer events than its text holds; what was in the page stays.
            let two = encode_frames(&[event(0, "A", "{}"), event(1, "B", "{}")]).unwrap();
            let two = stored(codec, &two);
            let mut page = b"kept".to_vec();
            let error = push_frames(&mut page, (0, 0), codec, &two, None, 10).unwrap_err();
            assert!(error.to_string().contains("malformed"), "{error}");
            assert_eq!(page, b"kept");
            push_frames(&mut page, (0, 1), codec, &two, None, 10).unwrap();
            assert_eq!(
                page,
                b"keptid: 0\nevent: A\ndata: {}\n\nid: 1\nevent: B\ndata: {}\n\n"
            );
            // A block claiming more events than its text holds.
            let error =
                push_frames(&mut Vec::new(), (0, 3), codec, &shifted, Some(1), 1).unwrap_err();
            assert!(error.to_string().contains("malformed"), "{error}");
        }
    }

    #[test]
    fn an_unknown_codec_is_an_error() {
        assert_eq!(Codec::from_sql(Codec::Lz4.to_sql()).unwrap(), Codec::Lz4);
        assert_eq!(
            Codec::from_sql(Codec::Frames.to_sql()).unwrap(),
            Codec::Frames
        );
        assert_eq!(
            Codec::from_sql(Codec::Plain.to_sql()).unwrap(),
            Codec::Plain
        );
        let error = Codec::from_sql(7).unwrap_err();
        assert!(error.to_string().contains("unknown codec 7"), "{error}");
    }
}
