//! Headers between the host and the NATS client: the host's `(name, value)` list to the
//! client's `HeaderMap` for every message it sends, and a received message back.

use async_nats::{HeaderMap, HeaderName, HeaderValue};

use crate::bus::{BusError, BusMessage};

/// Up to this many headers, [`to_nats_headers`] looks for repeated names (a pairwise check).
const FEW_HEADERS: usize = 8;

/// Host headers to NATS headers. Refuses what would break the NATS text protocol (CR or LF
/// anywhere, ':' or whitespace in a name), which the embedded bus has no reason to check.
pub(super) fn to_nats_headers(headers: Vec<(String, String)>) -> Result<HeaderMap, BusError> {
    let mut map = HeaderMap::new();
    // Each name once (the usual case, e.g. only the stamped Agent-Ref): one hash per header
    // with `insert` instead of two with `append`. Names equal but for case count as repeats.
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
            return Err(BusError::InvalidSubject(format!(
                "header name {key:?} is not allowed on NATS: names are non-empty, printable ASCII, without ':' or whitespace"
            )));
        }
        if value
            .bytes()
            .fold(false, |bad, b| bad | (b == b'\r') | (b == b'\n'))
        {
            return Err(BusError::InvalidSubject(format!(
                "header {key:?} has a line break in its value, which NATS cannot carry"
            )));
        }
        // Moved, not copied: the name's bytes become the client's, the value is a String.
        let name = HeaderName::try_from(key).map_err(|e| {
            BusError::InvalidSubject(format!("header name not allowed on NATS: {e}"))
        })?;
        let value = checked_header_value(value);
        if names_unique {
            map.insert(name, value);
        } else {
            map.append(name, value);
        }
    }
    Ok(map)
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

/// The bytes headers take on the wire (`NATS/1.0\r\n`, `k: v\r\n` each, `\r\n`), which
/// count against the server's max_payload.
pub(super) fn encoded_header_len(headers: &[(String, String)]) -> usize {
    if headers.is_empty() {
        return 0;
    }
    12 + headers
        .iter()
        .map(|(k, v)| k.len() + 2 + v.len() + 2)
        .sum::<usize>()
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
        let map = to_nats_headers(headers).unwrap();
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
        let map = to_nats_headers(vec![
            ("X-Tag".to_string(), "a".to_string()),
            ("x-tag".to_string(), "b".to_string()),
        ])
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
        let back = received(to_nats_headers(headers).unwrap());
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
            let err = to_nats_headers(vec![(key.to_string(), value.to_string())]).unwrap_err();
            assert!(err.to_string().contains(why), "{key:?}: {err}");
        }
    }

    #[test]
    fn header_bytes_count_toward_the_payload_limit() {
        assert_eq!(encoded_header_len(&[]), 0);
        // "NATS/1.0\r\n" + "Ab: c\r\n" + "\r\n"
        assert_eq!(encoded_header_len(&[("Ab".into(), "c".into())]), 12 + 7);
    }
}
