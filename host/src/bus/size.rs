//! What a message weighs, headers included, by one rule for every transport and limit: the
//! bytes it takes on the NATS wire. A header costs its name, its value and four bytes of
//! framing (`name: value\r\n`), and a message with headers twelve more (`NATS/1.0\r\n` and
//! the blank line), so a header with an empty name and value is not free: two million of
//! them weigh 8 MB, not zero.

use super::BusMessage;

/// Most headers one message may carry. Receivers lower every header into the agent's
/// memory (a name and a value string each), so the count is bounded apart from the bytes;
/// real messages carry a handful.
pub const MAX_HEADERS: usize = 128;

/// Framing of a message that has headers: `NATS/1.0\r\n` before them, `\r\n` after.
const HEADER_BLOCK_FRAMING: usize = 12;
/// Framing of one header: `: ` between name and value, `\r\n` after.
const PER_HEADER_FRAMING: usize = 4;

/// The wire bytes of a header block holding `headers` (0 for none).
pub fn header_bytes<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> usize {
    let mut any = false;
    let sum = headers.into_iter().fold(0usize, |sum, (k, v)| {
        any = true;
        sum.saturating_add(k.len() + v.len() + PER_HEADER_FRAMING)
    });
    if any {
        sum.saturating_add(HEADER_BLOCK_FRAMING)
    } else {
        0
    }
}

/// The bytes `msg` weighs: payload and header block. What mailboxes and payload limits count.
pub fn message_bytes(msg: &BusMessage) -> usize {
    let headers = msg.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    msg.payload.len().saturating_add(header_bytes(headers))
}

/// What a header list weighs on the wire ([`header_bytes`]), checked on the way: an error
/// says why it cannot go on the bus: more than `max` headers, or one that no NATS
/// server would carry (an empty or non-printable name, a name with ':' or whitespace, a line
/// break in a value, which would forge more headers on the wire).
pub fn check_headers<'a>(
    headers: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    max: usize,
) -> Result<usize, String> {
    if headers.len() == 0 {
        return Ok(0);
    }
    if headers.len() > max {
        return Err(format!(
            "the message has {} headers; at most {max} are allowed per message",
            headers.len()
        ));
    }
    let mut bytes = HEADER_BLOCK_FRAMING;
    for (key, value) in headers {
        bytes = bytes.saturating_add(key.len() + value.len() + PER_HEADER_FRAMING);
        let bad_key = key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if bad_key {
            return Err(format!(
                "header name {key:?} is not allowed: names are non-empty, printable ASCII, without ':' or whitespace"
            ));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(format!(
                "header {key:?} has a line break in its value; header values are one line"
            ));
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_weighs_its_framing_even_when_empty() {
        assert_eq!(header_bytes([]), 0);
        assert_eq!(header_bytes([("Ab", "c")]), 12 + 7);
        let empty = std::iter::repeat_n(("", ""), 2_000_000);
        assert_eq!(header_bytes(empty), 12 + 8_000_000);
        let msg = BusMessage::new("a.b", "xyz").with_header("K", "v");
        assert_eq!(message_bytes(&msg), 3 + 12 + 6);
    }

    #[test]
    fn too_many_headers_and_headers_that_would_break_the_wire_are_refused() {
        let many = vec![("X", ""); MAX_HEADERS + 1];
        let err = check_headers(many.iter().copied(), MAX_HEADERS).unwrap_err();
        assert!(err.contains("has 129 headers; at most 128"), "{err}");
        let weight = check_headers(vec![("X", ""); MAX_HEADERS].into_iter(), MAX_HEADERS);
        assert_eq!(weight, Ok(header_bytes(vec![("X", ""); MAX_HEADERS])));
        assert_eq!(check_headers(std::iter::empty(), 0), Ok(0));
        for (key, value, why) in [
            ("", "v", "non-empty"),
            ("Bad Name", "v", "without ':' or whitespace"),
            ("Bad:Name", "v", "without ':' or whitespace"),
            ("Grüße", "v", "printable ASCII"),
            ("X", "a\r\nAgent-Ref: forged", "line break"),
        ] {
            let err = check_headers([(key, value)].into_iter(), MAX_HEADERS).unwrap_err();
            assert!(err.contains(why), "{key:?}: {err}");
        }
    }
}
