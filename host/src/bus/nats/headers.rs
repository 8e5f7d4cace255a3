//! Headers between the host and the NATS client: the host's `(name, value)` list to the
//! client's `HeaderMap` for every message it sends, and a received message back.

use async_nats::{HeaderMap, HeaderName, HeaderValue};

use crate::bus::{BusError, BusMessage};
use crate::subjects;

/// Up to this many headers, [`to_nats_headers`] looks for repeated names (a pairwise check).
const FEW_HEADERS: usize = 8;

/// The sender stamp's name, made once: a static name is neither copied nor checked.
const SENDER_NAME: HeaderName = HeaderName::from_static(subjects::SENDER_HEADER);

/// Host headers to NATS headers, with `sender`'s stamp after them when given. Refuses what
/// would break the NATS text protocol (CR or LF anywhere, ':' or whitespace in a name),
/// which the embedded bus has no reason to check.
pub(super) fn to_nats_headers(
    headers: Vec<(String, String)>,
    sender: Option<&str>,
) -> Result<HeaderMap, BusError> {
    let mut map = HeaderMap::new();
    if let Some(sender) = sender {
        if has_line_break(sender) {
            return Err(BusError::InvalidHeaders(format!(
                "the sender stamp {sender:?} has a line break, which NATS cannot carry"
            )));
        }
    }
    // Each name once (the usual case: no header but the stamp): one hash per header with
    // `insert` instead of two with `append`. Names equal but for case count as repeats; the
    // capability drops an agent's own sender header, so none repeats the stamp's name.
    // The check compares every pair, so it is made only for a few headers: an agent may
    // send up to max_payload of them, and `append` is right for any number.
    let names_unique = headers.len() <= FEW_HEADERS
        && headers.iter().enumerate().all(|(i, (key, _))| {
            !headers[..i]
                .iter()
                .any(|(earlier, _)| earlier.eq_ignore_ascii_case(key))
        });
    for (key, value) in headers {
        // The client's own rule for names (printable ASCII, no ':'), so the conversion
        // below cannot fail; and no line break in a value, which its conversion panics on.
        // Folds without early exit, so each scan takes many bytes per instruction.
        let bad_key = key.is_empty()
            || key
                .bytes()
                .fold(false, |bad, b| bad | !b.is_ascii_graphic() | (b == b':'));
        if bad_key {
            return Err(BusError::InvalidHeaders(format!(
                "header name {key:?} is not allowed on NATS: names are non-empty, printable ASCII, without ':' or whitespace"
            )));
        }
        if has_line_break(&value) {
            return Err(BusError::InvalidHeaders(format!(
                "header {key:?} has a line break in its value, which NATS cannot carry"
            )));
        }
        // Moved, not copied: the name's bytes become the client's, the value is a String.
        let name = HeaderName::try_from(key).map_err(|e| {
            BusError::InvalidHeaders(format!("header name not allowed on NATS: {e}"))
        })?;
        let value = checked_header_value(value);
        if names_unique {
            map.insert(name, value);
        } else {
            map.append(name, value);
        }
    }
    if let Some(sender) = sender {
        let stamp = checked_header_value(sender.to_owned());
        if names_unique {
            map.insert(SENDER_NAME, stamp);
        } else {
            map.append(SENDER_NAME, stamp);
        }
    }
    Ok(map)
}

/// Whether `value` has a CR or LF. Folds without early exit, so the scan takes many bytes
/// per instruction.
fn has_line_break(value: &str) -> bool {
    value
        .bytes()
        .fold(false, |bad, b| bad | (b == b'\r') | (b == b'\n'))
}

/// A header value already checked for line breaks, moved into the client's type as it is.
/// `HeaderValue::from(String)` searches it for them again, char by char: ~1,100 instructions
/// per reply for the stamped `Agent-Ref` (callgrind, the NATS bench), a tenth of the host's
/// own share of a request. The type's `Deserialize` is `transparent` over its `String`, so
/// deserializing from the owned `String` wraps it without a copy or a second scan.
fn checked_header_value(value: String) -> HeaderValue {
    use serde::de::value::{Error, StringDeserializer};
    use serde::de::IntoDeserializer;
    use serde::Deserialize;
    let owned: StringDeserializer<Error> = value.into_deserializer();
    HeaderValue::deserialize(owned).expect("a HeaderValue deserializes from any String")
}

/// The bytes headers take on the wire (`NATS/1.0\r\n`, `k: v\r\n` each, `\r\n`), with
/// `sender`'s stamp when given, which count against the server's max_payload.
pub(super) fn encoded_header_len(headers: &[(String, String)], sender: Option<&str>) -> usize {
    let line = |k: &str, v: &str| k.len() + 2 + v.len() + 2;
    let stamp = sender.map_or(0, |s| line(subjects::SENDER_HEADER, s));
    if headers.is_empty() && stamp == 0 {
        return 0;
    }
    12 + stamp + headers.iter().map(|(k, v)| line(k, v)).sum::<usize>()
}

/// A NATS message as a host message. NATS keeps repeated values of a header in order but
/// not the order between different names, so headers come out grouped by name.
pub(crate) fn from_nats(m: async_nats::Message) -> BusMessage {
    let mut headers = Vec::new();
    if let Some(map) = &m.headers {
        for (name, values) in map.iter() {
            for value in values {
                headers.push((name.to_string(), value.as_str().to_owned()));
            }
        }
    }
    // `as_str().to_owned()`, not `to_string()`: no formatting machinery per message.
    BusMessage {
        subject: m.subject.as_str().to_owned(),
        reply_to: m.reply.map(|r| r.as_str().to_owned()),
        headers,
        payload: m.payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `map` as the host gets it back from the client: through a received message.
    fn received(map: HeaderMap) -> BusMessage {
        from_nats(async_nats::Message {
            subject: "a.b".into(),
            reply: None,
            payload: "x".into(),
            headers: Some(map),
            status: None,
            description: None,
            length: 0,
        })
    }

    #[test]
    fn headers_round_trip_keeping_repeats_in_order() {
        let headers = vec![
            ("Agent-Ref".to_string(), "c.n.1".to_string()),
            ("X-Tag".to_string(), "a".to_string()),
            ("X-Tag".to_string(), "b".to_string()),
        ];
        let map = to_nats_headers(headers, None).unwrap();
        let back = received(map);
        let msg = BusMessage {
            headers: back.headers.clone(),
            ..BusMessage::new("a.b", "x")
        };
        assert_eq!(msg.header("agent-ref"), Some("c.n.1"));
        let tags: Vec<_> = back.header_values("X-Tag").collect();
        assert_eq!(tags, ["a", "b"]);
    }

    #[test]
    fn a_checked_value_becomes_the_same_header_value_the_clients_own_conversion_gives() {
        for value in [
            "default.echo.01936f11-4ea2-7000-8000-000000000001",
            "",
            "a: b, c",
        ] {
            assert_eq!(
                checked_header_value(value.to_string()),
                HeaderValue::from(value.to_string())
            );
        }
        // Names repeated in any case keep every value.
        let map = to_nats_headers(
            vec![
                ("X-Tag".to_string(), "a".to_string()),
                ("x-tag".to_string(), "b".to_string()),
            ],
            None,
        )
        .unwrap();
        let back = received(map);
        let mut values: Vec<_> = back.headers.iter().map(|(_, v)| v.as_str()).collect();
        values.sort();
        assert_eq!(values, ["a", "b"], "{:?}", back.headers);
    }

    #[test]
    fn many_headers_keep_every_value_repeated_names_included() {
        let headers: Vec<(String, String)> = (0..200)
            .map(|i| (format!("X-{}", i % 50), i.to_string()))
            .collect();
        let back = received(to_nats_headers(headers, None).unwrap());
        assert_eq!(back.headers.len(), 200);
        let of_x7: Vec<_> = back.header_values("X-7").collect();
        assert_eq!(of_x7, ["7", "57", "107", "157"], "repeats keep their order");
    }

    #[test]
    fn headers_that_would_break_the_protocol_are_refused_with_the_reason() {
        for (key, value, why) in [
            ("Bad Name", "v", "without ':' or whitespace"),
            ("Bad:Name", "v", "without ':' or whitespace"),
            ("", "v", "non-empty"),
            ("Grüße", "v", "printable ASCII"),
            ("X", "line\r\nPUB evil 1", "line break"),
            ("X", "a\rb", "line break"),
        ] {
            let err =
                to_nats_headers(vec![(key.to_string(), value.to_string())], None).unwrap_err();
            assert!(err.to_string().contains(why), "{key:?}: {err}");
        }
    }

    #[test]
    fn header_bytes_count_toward_the_payload_limit() {
        assert_eq!(encoded_header_len(&[], None), 0);
        // "NATS/1.0\r\n" + "Ab: c\r\n" + "\r\n"
        assert_eq!(
            encoded_header_len(&[("Ab".into(), "c".into())], None),
            12 + 7
        );
        // The stamp counts like any header: "Agent-Ref: c.n.1\r\n" is 18 bytes.
        assert_eq!(encoded_header_len(&[], Some("c.n.1")), 12 + 18);
        assert_eq!(
            encoded_header_len(&[("Ab".into(), "c".into())], Some("c.n.1")),
            12 + 7 + 18
        );
    }

    /// The stamp a transport adds reaches the receiver as the `Agent-Ref` header, after the
    /// agent's own headers, whether or not it sent any.
    #[test]
    fn the_sender_stamp_arrives_as_the_agent_ref_header() {
        let back = received(to_nats_headers(Vec::new(), Some("c.n.1")).unwrap());
        assert_eq!(
            back.headers,
            [(subjects::SENDER_HEADER.to_string(), "c.n.1".to_string())]
        );
        let tagged = vec![
            ("X-Tag".to_string(), "a".to_string()),
            ("X-Tag".to_string(), "b".to_string()),
        ];
        let back = received(to_nats_headers(tagged, Some("c.n.1")).unwrap());
        assert_eq!(back.header(subjects::SENDER_HEADER), Some("c.n.1"));
        let tags: Vec<_> = back.header_values("X-Tag").collect();
        assert_eq!(tags, ["a", "b"]);
        let forged = to_nats_headers(Vec::new(), Some("c.n.1\r\nPUB evil 1")).unwrap_err();
        assert!(forged.to_string().contains("line break"), "{forged}");
    }
}
