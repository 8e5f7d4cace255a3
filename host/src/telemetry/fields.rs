//! How the node's log writes an event's fields: like tracing-subscriber's default, but with
//! every control character of every value and message escaped (see [`crate::escape`]).
//!
//! Agents put their own text into the log — `runtime.log` lines, stdout and stderr, handle
//! errors, trap texts, versions, subjects they were denied — and so can anyone who sends
//! them a message (message ids, subjects). Escaping here, where every event is written,
//! instead of at each call site, means no event can start a new line (one event is one
//! line, so a newline cannot forge a log line) or carry a terminal escape to whoever reads
//! the log in a terminal, whichever code logged it.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{FormatFields, Writer};

use crate::escape::LineEscaper;

/// The field formatter of [`super::init_logging`]: `message` as it is, other fields as
/// `name=value`, separated by spaces, every value escaped for one line.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    /// Writes one field: the message bare, any other field `name=`; `value` escaped.
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // Metadata of events from the `log` crate, already shown by the event formatter.
        if name.starts_with("log.") {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(' ')?;
            }
            if name != "message" {
                self.writer
                    .write_str(name.strip_prefix("r#").unwrap_or(name))?;
                self.writer.write_char('=')?;
            }
            LineEscaper::new(&mut self.writer).write_fmt(value)
        })();
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, format_args!("{value}"));
        } else {
            self.write(field, format_args!("{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut chain = String::new();
        let mut source = value.source();
        while let Some(e) = source {
            let _ = write!(chain, ": {e}");
            source = e.source();
        }
        self.write(field, format_args!("{value}{chain}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

/// What `emit` logs, written by the node's formatter setup into memory (for tests of what
/// the node logs).
#[cfg(test)]
pub(crate) fn log_of(emit: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .fmt_fields(EscapedFields)
        .with_target(false)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, emit);
    let bytes = captured.0.lock().expect("log lock").clone();
    String::from_utf8(bytes).expect("the log is UTF-8")
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn agent_text_in_a_message_cannot_start_a_line_or_reach_a_terminal() {
        let text = "hello\n2026-01-01T00:00:00.000000Z  INFO agent=other: forged\r\x1b[2J\u{9b}";
        let log = log_of(|| tracing::info!(agent = %"hostile", "{text}"));
        assert_eq!(log.lines().count(), 1, "one event, one line: {log:?}");
        assert!(log.ends_with('\n'));
        assert!(!log
            .trim_end_matches('\n')
            .chars()
            .any(crate::escape::is_hazard));
        assert!(
            log.contains(
                "INFO hello\\n2026-01-01T00:00:00.000000Z  INFO agent=other: forged\\r\\u{1b}[2J\\u{9b} agent=hostile"
            ),
            "{log}"
        );
    }

    #[test]
    fn every_kind_of_field_value_is_escaped_too() {
        let error = io::Error::other("bad\nerror\x1b");
        let log = log_of(|| {
            tracing::warn!(
                shown = %"a\nb",
                debugged = ?"c\u{2028}d",
                plain = "e\u{202e}f",
                number = 7,
                error = &error as &(dyn std::error::Error + 'static),
                "message \u{7f}"
            )
        });
        assert_eq!(log.lines().count(), 1, "{log:?}");
        assert!(
            log.contains(
                r#"WARN message \u{7f} shown=a\nb debugged="c\u{2028}d" plain="e\u{202e}f" number=7 error=bad\nerror\u{1b}"#
            ),
            "{log}"
        );
    }

    #[test]
    fn clean_events_read_as_the_default_formatter_writes_them() {
        let log = log_of(|| tracing::info!(agent = %"echo", stream = "stdout", "ready"));
        assert!(
            log.trim_end()
                .ends_with(r#"INFO ready agent=echo stream="stdout""#),
            "{log}"
        );
    }
}
