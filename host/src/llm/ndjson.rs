//! Reading Ollama's streamed answers (newline-delimited JSON) correctly.
//!
//! HTTP chunks do not respect lines: one JSON line can arrive in several chunks and one
//! chunk can carry several lines. ollama-rs's stream helpers parse each chunk's complete
//! lines only as UTF-8 chunks and skip what fails to parse, and they swallow an `{"error":
//! ...}` line; so the host reassembles lines itself, treats an error line as the failure it
//! is, and requires the final `"done": true` line (a stream that ends without it was cut
//! off).

/// Collects bytes and hands out complete lines (without the newline).
#[derive(Default)]
pub struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// Adds a chunk; returns the lines it completed, in order, skipping blank ones.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for &byte in chunk {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.pending);
                if line.iter().any(|b| !b.is_ascii_whitespace()) {
                    out.push(line);
                }
            } else {
                self.pending.push(byte);
            }
        }
        out
    }

    /// What is left after the last newline: a final line without one, if not blank.
    pub fn finish(self) -> Option<Vec<u8>> {
        self.pending
            .iter()
            .any(|b| !b.is_ascii_whitespace())
            .then_some(self.pending)
    }
}

/// One parsed line of an Ollama stream.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A piece of the answer.
    Token(String),
    /// The last line: the counts of the whole call.
    Done {
        model: String,
        prompt_tokens: u64,
        completion_tokens: u64,
        /// A last piece of text some servers put on the final line.
        text: String,
    },
    /// Ollama reported a failure in the middle of the stream.
    Error(String),
}

/// Parses one line of `/api/chat` (`message.content`) or `/api/generate` (`response`).
pub fn parse(line: &[u8]) -> Result<Event, String> {
    let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        format!(
            "a line of the stream is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&line[..line.len().min(200)])
        )
    })?;
    if let Some(error) = v.get("error") {
        return Ok(Event::Error(
            error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_string),
        ));
    }
    let text = v
        .get("message")
        .and_then(|m| m.get("content"))
        .or_else(|| v.get("response"))
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_string();
    if v.get("done").and_then(|d| d.as_bool()) == Some(true) {
        let count = |k: &str| v.get(k).and_then(|n| n.as_u64()).unwrap_or(0);
        return Ok(Event::Done {
            model: v
                .get("model")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_string(),
            prompt_tokens: count("prompt_eval_count"),
            completion_tokens: count("eval_count"),
            text,
        });
    }
    Ok(Event::Token(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_are_reassembled() {
        let stream = b"{\"message\":{\"content\":\"caf\xc3\xa9\"},\"done\":false}\n\n{\"done\":true,\"model\":\"m\",\"eval_count\":1}\n";
        let mut lines = Lines::default();
        let mut got = Vec::new();
        // Three bytes at a time: lines and even a UTF-8 character span chunks.
        for chunk in stream.chunks(3) {
            got.extend(lines.push(chunk));
        }
        assert!(lines.finish().is_none());
        assert_eq!(got.len(), 2);
        assert_eq!(parse(&got[0]).unwrap(), Event::Token("café".into()));
        assert!(matches!(
            parse(&got[1]).unwrap(),
            Event::Done {
                completion_tokens: 1,
                ..
            }
        ));
    }

    #[test]
    fn a_last_line_without_newline_is_kept() {
        let mut lines = Lines::default();
        assert!(lines.push(b"{\"done\":tr").is_empty());
        assert!(lines.push(b"ue}").is_empty());
        assert_eq!(lines.finish().unwrap(), b"{\"done\":true}".to_vec());
    }

    #[test]
    fn error_lines_and_garbage_are_not_skipped() {
        assert_eq!(
            parse(b"{\"error\":\"runner died\"}").unwrap(),
            Event::Error("runner died".into())
        );
        assert!(parse(b"<html>").unwrap_err().contains("not JSON"));
    }
}
