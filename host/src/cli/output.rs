//! What the client verbs print, escaped for the operator's terminal.
//!
//! The node's answers carry text agents control — versions, last errors, events, canary
//! readings, wave texts, init errors, reply payloads. Printed raw, an ESC in them would
//! drive the operator's terminal (clear it, retitle it, hide lines) and a newline or `\r`
//! would fake output. So every line is written through [`crate::escape`]: one line of
//! output stays one line, and no control character reaches the terminal raw.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use crate::escape;

/// Appends one line of output to `out` with every control character escaped.
pub(super) fn push_line(out: &mut String, text: fmt::Arguments<'_>) {
    let _ = escape::LineEscaper::new(&mut *out).write_fmt(text);
    out.push('\n');
}

/// Prints one line to stdout with every control character escaped.
pub(super) fn print_line(text: fmt::Arguments<'_>) {
    let mut out = String::new();
    push_line(&mut out, text);
    print!("{out}");
}

/// Prints `value` as pretty JSON with DEL, C1 and bidi controls escaped too (serde_json
/// escapes the C0 ones), so the output is still JSON with the same values.
pub(super) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    println!("{}", escape::for_json(&json));
    Ok(())
}

/// Prints a reply payload and a newline: raw bytes when stdout is a pipe or a file
/// (scripts read the payload as it was sent), else as text with every control character
/// but `\n` and `\t` escaped.
pub(super) fn print_payload(payload: &[u8]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    write_payload(&mut stdout, payload, std::io::stdout().is_terminal())
}

fn write_payload(
    out: &mut impl std::io::Write,
    payload: &[u8],
    terminal: bool,
) -> std::io::Result<()> {
    if terminal {
        let text = String::from_utf8_lossy(payload);
        out.write_all(escape::for_block(&text).as_bytes())?;
    } else {
        out.write_all(payload)?;
    }
    out.write_all(b"\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_of_output_stays_one_line_without_raw_controls() {
        let mut out = String::new();
        push_line(
            &mut out,
            format_args!("version    {}  (sha256 {})", "1.0\x1b[2J\nfake", "ab"),
        );
        assert_eq!(out, "version    1.0\\u{1b}[2J\\nfake  (sha256 ab)\n");
    }

    #[test]
    fn a_payload_is_raw_through_a_pipe_and_escaped_on_a_terminal() {
        let payload = b"two\n\tlines\x1b[31m red\r\xff";
        let mut piped = Vec::new();
        write_payload(&mut piped, payload, false).unwrap();
        assert_eq!(piped, [&payload[..], b"\n"].concat(), "byte for byte");
        let mut shown = Vec::new();
        write_payload(&mut shown, payload, true).unwrap();
        assert_eq!(
            String::from_utf8(shown).unwrap(),
            "two\n\tlines\\u{1b}[31m red\\r\u{fffd}\n"
        );
    }
}
