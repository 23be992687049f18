//! A small Server-Sent Events reader: the frames of a `text/event-stream` body.
//!
//! bgrun's streams use three fields (`id`, `event`, `data`) and `: keepalive` comments, so a
//! line parser of a few dozen lines does; it follows the HTML spec's parsing rules for them
//! (`\n`, `\r\n` or `\r` line ends, one optional space after the colon, several `data` lines
//! joined by `\n`, comments ignored), which keeps a dependency out of the binary.

use std::collections::VecDeque;

/// One dispatched SSE frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// The `id` field, when the frame had one.
    pub id: Option<String>,
    /// The `event` field, when the frame had one.
    pub event: Option<String>,
    /// The `data` lines, joined by `\n`.
    pub data: String,
}

/// Turns bytes, in chunks of any size, into frames.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of a line not finished yet.
    line: Vec<u8>,
    /// The last byte seen was a `\r`: a `\n` right after it ends nothing more.
    after_cr: bool,
    /// The frame being built.
    frame: Frame,
    /// Whether the frame being built has a `data` field.
    has_data: bool,
    /// Frames ready to hand out.
    ready: VecDeque<Frame>,
}

impl Parser {
    /// Feeds a chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&String::from_utf8_lossy(&line));
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(byte);
                }
            }
        }
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Option<Frame> {
        self.ready.pop_front()
    }

    fn line_done(&mut self, line: &str) {
        if line.is_empty() {
            // A frame with neither data nor event carries nothing (e.g. an id alone).
            if self.has_data || self.frame.event.is_some() {
                self.ready.push_back(std::mem::take(&mut self.frame));
            } else {
                self.frame = Frame::default();
            }
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return; // a comment: `: keepalive`
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => self.frame.id = Some(value.to_owned()),
            "event" => self.frame.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.frame.data.push('\n');
                }
                self.frame.data.push_str(value);
                self.has_data = true;
            }
            _ => {} // `retry` and unknown fields
        }
    }
}

/// The frames of a streaming HTTP answer.
#[derive(Debug)]
pub struct Reader {
    response: reqwest::Response,
    parser: Parser,
}

impl Reader {
    /// Reads `response`'s body as SSE.
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            parser: Parser::default(),
        }
    }

    /// The next frame; `None` once the body ended (a frame cut off by the end is dropped).
    pub async fn next(&mut self) -> reqwest::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.parser.next_frame() {
                return Ok(Some(frame));
            }
            match self.response.chunk().await? {
                Some(chunk) => self.parser.push(&chunk),
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut parser = Parser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk);
            while let Some(frame) = parser.next_frame() {
                out.push(frame);
            }
        }
        out
    }

    #[test]
    fn reads_bgrun_frames_split_anywhere() {
        let body = b"event: catch_up\ndata: {\"n\":1}\n\n: keepalive\n\nid: 0\nevent: RunStarted\ndata: {\"event_index\":0}\n\n";
        let expected = vec![
            Frame {
                id: None,
                event: Some("catch_up".into()),
                data: "{\"n\":1}".into(),
            },
            Frame {
                id: Some("0".into()),
                event: Some("RunStarted".into()),
                data: "{\"event_index\":0}".into(),
            },
        ];
        assert_eq!(frames(&[body]), expected);
        // Byte by byte gives the same frames.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(frames(&bytes), expected);
    }

    #[test]
    fn follows_the_spec_on_line_ends_and_fields() {
        let got = frames(&[b"data:a\r\ndata: b\r", b"\nretry: 5\r\rid\n\n"]);
        assert_eq!(
            got,
            vec![Frame {
                id: None,
                event: None,
                data: "a\nb".into()
            }]
        );
    }

    #[test]
    fn an_unfinished_frame_stays_pending() {
        let mut parser = Parser::default();
        parser.push(b"id: 3\nevent: RunContent\ndata: {}\n");
        assert_eq!(parser.next_frame(), None);
        parser.push(b"\n");
        assert_eq!(parser.next_frame().unwrap().id.as_deref(), Some("3"));
    }
}
