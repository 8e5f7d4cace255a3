//! An agent's stdout and stderr, line by line, into the host's log tagged with the agent,
//! within its `[limits] log_lines_per_second` (shared with `runtime.log`; see
//! [`crate::capabilities::log_rate`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::capabilities::log_rate::LogRate;

/// Longest line kept before it is flushed anyway.
const MAX_LINE: usize = 16 * 1024;

#[derive(Clone)]
pub struct LogStream {
    rate: Arc<LogRate>,
    stream: &'static str,
}

impl LogStream {
    /// The agent's `stream` ("stdout" or "stderr"), its lines taken from `rate`.
    pub fn new(rate: &Arc<LogRate>, stream: &'static str) -> LogStream {
        LogStream {
            rate: rate.clone(),
            stream,
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            target: self.clone(),
            buf: Vec::new(),
        })
    }
}

struct LineWriter {
    target: LogStream,
    buf: Vec<u8>,
}

impl LineWriter {
    fn emit(&self, line: &[u8]) {
        if !self.target.rate.admit() {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        let agent = self.target.rate.agent();
        if self.target.stream == "stderr" {
            tracing::warn!(agent = %agent, stream = "stderr", "{text}");
        } else {
            tracing::info!(agent = %agent, stream = "stdout", "{text}");
        }
    }

    fn flush_lines(&mut self) {
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            self.emit(&line[..line.len() - 1]);
        }
        if self.buf.len() > MAX_LINE {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.buf.extend_from_slice(data);
        self.flush_lines();
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
    }
}
