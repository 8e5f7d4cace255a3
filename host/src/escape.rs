//! Escaping text an agent controls before it reaches a log line or the operator's terminal.
//!
//! An agent writes log text, error texts, its version and reply payloads. Raw, a newline in
//! them forges a whole log line, and an ESC (or an 8-bit CSI, U+009B) drives the terminal
//! that shows them: clear the screen, retitle the window, hide what follows. Bidi controls
//! reorder what is shown (Trojan Source). So every such character is spelled out instead:
//! `\n`, `\r`, `\t`, and `\u{1b}` (Rust's notation) for the others.
//!
//! Escaped: C0 controls (U+0000–U+001F, including `\n`, `\r`, `\t` and ESC), DEL (U+007F),
//! C1 controls (U+0080–U+009F), the line and paragraph separators U+2028/U+2029, and the
//! bidi controls U+202A–U+202E and U+2066–U+2069. A backslash is not escaped: text that
//! already spells `\n` looks the same as an escaped newline, but it cannot start a line.
//!
//! Every function returns the text itself (no allocation) when there is nothing to escape.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// Whether `\n` and `\t` may stay as they are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Nothing: the text must stay on one line.
    Nothing,
    /// `\n` and `\t`: the text may span lines, but not overwrite them (`\r`) or drive the
    /// terminal.
    NewlineAndTab,
}

/// Whether `c` is a character that must not reach a log line or a terminal raw.
pub fn is_hazard(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

fn must_escape(c: char, keep: Keep) -> bool {
    is_hazard(c) && !(keep == Keep::NewlineAndTab && matches!(c, '\n' | '\t'))
}

/// Writes `c` spelled out: `\n`, `\r`, `\t`, else `\u{hex}`.
fn spell(c: char, out: &mut impl fmt::Write) -> fmt::Result {
    match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        c => write!(out, "\\u{{{:x}}}", u32::from(c)),
    }
}

/// Writes `text` to `out` with the characters `keep` does not keep spelled out.
fn write_escaped(text: &str, keep: Keep, out: &mut impl fmt::Write) -> fmt::Result {
    let mut clean_from = 0;
    for (i, c) in text.char_indices() {
        if must_escape(c, keep) {
            out.write_str(&text[clean_from..i])?;
            spell(c, out)?;
            clean_from = i + c.len_utf8();
        }
    }
    out.write_str(&text[clean_from..])
}

fn escape(text: &str, keep: Keep) -> Cow<'_, str> {
    if !text.chars().any(|c| must_escape(c, keep)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    write_escaped(text, keep, &mut out).expect("writing to a String cannot fail");
    Cow::Owned(out)
}

/// Text that must stay on one line — a log field, a table cell, a status line, a version:
/// every control character spelled out, `\n` and `\t` included.
pub fn for_line(text: &str) -> Cow<'_, str> {
    escape(text, Keep::Nothing)
}

/// Text of several lines for a terminal (a reply payload, an error message): `\n` and `\t`
/// kept, every other control character (`\r`, ESC, C1, bidi controls ...) spelled out.
pub fn for_block(text: &str) -> Cow<'_, str> {
    escape(text, Keep::NewlineAndTab)
}

/// JSON text (as serde_json writes it) for a terminal: DEL, C1, the line and paragraph
/// separators and bidi controls inside strings become `\u007f`-style escapes. serde_json
/// already escapes C0 inside strings, and outside strings JSON has only ASCII, so the
/// result is still valid JSON with the same values.
pub fn for_json(json: &str) -> Cow<'_, str> {
    let raw = |c: char| is_hazard(c) && c > '\u{1f}';
    if !json.chars().any(raw) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if raw(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A [`fmt::Write`] that escapes like [`for_line`] as text streams through it, so a log
/// formatter can write a field's `Display` or `Debug` output without first building it in a
/// `String`.
pub struct LineEscaper<W> {
    inner: W,
}

impl<W: fmt::Write> LineEscaper<W> {
    pub fn new(inner: W) -> LineEscaper<W> {
        LineEscaper { inner }
    }
}

impl<W: fmt::Write> fmt::Write for LineEscaper<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_escaped(s, Keep::Nothing, &mut self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each kind that must be escaped, with how it is spelled.
    const HAZARDS: [(char, &str); 12] = [
        ('\n', "\\n"),
        ('\r', "\\r"),
        ('\t', "\\t"),
        ('\u{0}', "\\u{0}"),
        ('\u{7}', "\\u{7}"),
        ('\u{1b}', "\\u{1b}"),
        ('\u{7f}', "\\u{7f}"),
        ('\u{85}', "\\u{85}"),
        ('\u{9b}', "\\u{9b}"),
        ('\u{2028}', "\\u{2028}"),
        ('\u{202e}', "\\u{202e}"),
        ('\u{2066}', "\\u{2066}"),
    ];

    #[test]
    fn clean_text_is_returned_as_it_is_without_allocating() {
        for text in [
            "",
            "plain ascii",
            "naïve café – ünïcödé 日本 🦀",
            "back\\slash \\n",
        ] {
            assert!(matches!(for_line(text), Cow::Borrowed(t) if t == text));
            assert!(matches!(for_block(text), Cow::Borrowed(t) if t == text));
            assert!(matches!(for_json(text), Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn every_control_character_is_spelled_out_on_a_line() {
        for (c, spelled) in HAZARDS {
            assert!(is_hazard(c), "{c:?}");
            let text = format!("a{c}b");
            assert_eq!(for_line(&text), format!("a{spelled}b"), "{c:?}");
        }
        let escaped = for_line("ok\n2026-01-01T00:00:00Z  INFO forged\x1b[2J");
        assert_eq!(escaped, "ok\\n2026-01-01T00:00:00Z  INFO forged\\u{1b}[2J");
        assert!(!escaped.chars().any(is_hazard));
    }

    #[test]
    fn the_edges_of_each_escaped_range_are_exact() {
        for c in [
            '\u{1f}', '\u{80}', '\u{9f}', '\u{2029}', '\u{202a}', '\u{2069}',
        ] {
            assert!(is_hazard(c), "{c:?}");
        }
        for c in [
            ' ', '~', '\u{a0}', '\u{2027}', '\u{202f}', '\u{2065}', '\u{206a}',
        ] {
            assert!(!is_hazard(c), "{c:?}");
        }
    }

    #[test]
    fn a_block_keeps_newlines_and_tabs_and_escapes_the_rest() {
        assert!(matches!(for_block("a\n\tb"), Cow::Borrowed(_)));
        assert_eq!(
            for_block("line 1\n\tline 2\r\x1b]0;title\x07\u{9b}31m\u{202e}"),
            "line 1\n\tline 2\\r\\u{1b}]0;title\\u{7}\\u{9b}31m\\u{202e}"
        );
    }

    #[test]
    fn json_keeps_its_values_and_loses_its_raw_terminal_controls() {
        let value = serde_json::json!({"last_error": "x\u{1b}[2J\u{9b}1m\u{7f}\u{202e}\u{2028}y"});
        let json = serde_json::to_string_pretty(&value).unwrap();
        let escaped = for_json(&json);
        assert!(
            !escaped.chars().any(|c| is_hazard(c) && c != '\n'),
            "{escaped}"
        );
        assert!(
            escaped.contains(r#""x\u001b[2J\u009b1m\u007f\u202e\u2028y""#),
            "{escaped}"
        );
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back, value, "still valid JSON with the same values");
    }

    #[test]
    fn the_streaming_escaper_escapes_like_for_line_across_writes() {
        let mut out = String::new();
        let mut w = LineEscaper::new(&mut out);
        for piece in ["fake\n", "\x1b[31m", "red", "\u{2066}"] {
            w.write_str(piece).unwrap();
        }
        write!(w, "{:?}", "quoted\u{9b}").unwrap();
        assert_eq!(
            out,
            format!(
                "{}\"quoted\\u{{9b}}\"",
                for_line("fake\n\x1b[31mred\u{2066}")
            )
        );
    }
}
