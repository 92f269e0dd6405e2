//! Splits a server-sent-events byte stream into the payloads of its `data:` lines.

/// What one line of the stream carried.
#[derive(Debug, PartialEq, Eq)]
pub enum SseEvent {
    /// The text after `data:`.
    Data(String),
    /// `data: [DONE]`, OpenAI's end of stream.
    Done,
}

/// Buffers bytes until whole lines arrive; chunk boundaries may fall anywhere, even
/// inside a UTF-8 character.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
}

impl SseDecoder {
    /// Adds bytes and returns the events of the lines they completed. Comments (`:`),
    /// blank lines and other fields (`event:`, `id:`) carry nothing a chat completion needs.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(data) = line.strip_prefix("data:") {
                let data = data.strip_prefix(' ').unwrap_or(data);
                events.push(if data.trim() == "[DONE]" {
                    SseEvent::Done
                } else {
                    SseEvent::Data(data.to_string())
                });
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_anywhere_are_joined() {
        let mut decoder = SseDecoder::default();
        let text =
            "data: {\"a\":\"é\"}\r\n\r\n: keep-alive\n\nevent: x\ndata:{\"b\":1}\n\ndata: [DONE]\n";
        let mut events = Vec::new();
        for chunk in text.as_bytes().chunks(3) {
            events.extend(decoder.push(chunk));
        }
        assert_eq!(
            events,
            vec![
                SseEvent::Data("{\"a\":\"é\"}".into()),
                SseEvent::Data("{\"b\":1}".into()),
                SseEvent::Done,
            ]
        );
    }

    #[test]
    fn an_unfinished_line_waits() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.push(b"data: {\"x\"").is_empty());
        assert_eq!(
            decoder.push(b":1}\n"),
            vec![SseEvent::Data("{\"x\":1}".into())]
        );
    }
}
