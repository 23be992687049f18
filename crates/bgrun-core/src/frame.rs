//! Events as server-sent-event frames: the text a run's events are streamed as, and a form in
//! which a store may keep them, so that a replay sends them without decoding an event.
//!
//! ```text
//! id: <event_index>
//! event: <event type>
//! data: <the event's JSON>
//!
//! ```
//!
//! ```
//! use bgrun_core::Event;
//!
//! let event = Event::from_parts(7, "RunContent", r#"{"content":"hi"}"#);
//! let mut out = Vec::new();
//! event.push_frame(&mut out);
//! assert_eq!(out, b"id: 7\nevent: RunContent\ndata: {\"content\":\"hi\"}\n\n");
//! assert_eq!(out.len(), event.frame_len());
//! ```

use bytes::Bytes;

use crate::event::Event;

impl Event {
    /// Appends its frame.
    pub fn push_frame(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(itoa::Buffer::new().format(self.index()).as_bytes());
        out.extend_from_slice(b"\nevent: ");
        out.extend_from_slice(self.event_type().as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(self.json().as_bytes());
        out.extend_from_slice(b"\n\n");
    }

    /// The length of its frame in bytes.
    pub fn frame_len(&self) -> usize {
        // The digits of the index, counted rather than written.
        let digits = self
            .index()
            .checked_ilog10()
            .map_or(1, |log| log as usize + 1);
        FRAME_OVERHEAD + digits + self.event_type().len() + self.json().len()
    }

    /// Whether its frame is one `id:`, one `event:` and one `data:` line: neither its type nor
    /// its JSON holds a line break (compact JSON never does, nor any event `Event::render`
    /// makes). Only such events' frames can be told apart in a text of frames.
    pub fn frames_as_lines(&self) -> bool {
        let breaks = |text: &str| memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_some();
        !breaks(self.event_type()) && !breaks(self.json())
    }
}

/// `id: `, `\nevent: `, `\ndata: ` and `\n\n`.
const FRAME_OVERHEAD: usize = 4 + 8 + 7 + 2;

/// Consecutive events of a run as their frames, as a store read them
/// ([`Store::read_event_frames`](crate::Store::read_event_frames)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frames {
    /// The index of the first event.
    pub first_index: u64,
    /// How many events.
    pub count: u64,
    /// Their frames: the chunks one after the other are exactly the events' frames, in order.
    pub chunks: Vec<Bytes>,
}

impl Frames {
    /// The frames of `events` (consecutive, in order), in one chunk.
    pub fn of(events: &[Event]) -> Self {
        let mut out = Vec::with_capacity(events.iter().map(Event::frame_len).sum());
        for event in events {
            event.push_frame(&mut out);
        }
        Self {
            first_index: events.first().map_or(0, Event::index),
            count: events.len() as u64,
            chunks: vec![Bytes::from(out)],
        }
    }

    /// Whether it holds no event.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The index of its last event.
    pub fn last_index(&self) -> Option<u64> {
        self.count
            .checked_sub(1)
            .map(|last| self.first_index.saturating_add(last))
    }

    /// All its bytes, in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_events_are_their_frames_in_order() {
        let events = [
            Event::from_parts(3, "RunStarted", "{}"),
            Event::from_parts(4, "RunContent", r#"{"content":"é"}"#),
        ];
        let frames = Frames::of(&events);
        assert_eq!(
            frames.to_vec(),
            "id: 3\nevent: RunStarted\ndata: {}\n\nid: 4\nevent: RunContent\ndata: {\"content\":\"é\"}\n\n"
                .as_bytes()
        );
        assert_eq!((frames.first_index, frames.count), (3, 2));
        assert_eq!(frames.last_index(), Some(4));
        for index in [0, 9, 10, 99, 100, 12_345, u64::MAX] {
            let event = Event::from_parts(index, "A", "{}");
            let mut out = Vec::new();
            event.push_frame(&mut out);
            assert_eq!(event.frame_len(), out.len(), "{index}");
        }
        assert!(Frames::default().is_empty());
        assert_eq!(Frames::default().last_index(), None);
        assert!(events[1].frames_as_lines());
        assert!(!Event::from_parts(0, "A", "{\"a\":\n1}").frames_as_lines());
        assert!(!Event::from_parts(0, "A\r", "{}").frames_as_lines());
    }
}
