//! Messages between the bus's form ([`BusMessage`]) and the guest's (the WIT `message`), in
//! one place for the capabilities that hand messages to agents and the runner that delivers
//! them, so neither depends on the other for it.

use bytes::Bytes;

use crate::bindings::{Header, Message};
use crate::bus::BusMessage;
use crate::subjects;

/// A unique id for a message that came without `Nats-Msg-Id`: a per-process UUID v7 (so
/// ids differ across restarts and nodes) and a counter, without a syscall per message.
pub fn host_message_id() -> String {
    let mut id = String::new();
    write_host_message_id(&mut id);
    id
}

/// [`host_message_id`] appended to `id`.
fn write_host_message_id(id: &mut String) {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| format!("{}-", uuid::Uuid::now_v7().simple()));
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Not `format!`: its machinery was a visible share of the message path.
    let mut digits = itoa::Buffer::new();
    id.push_str(prefix);
    id.push_str(digits.format(n));
}

/// Payloads up to this size are copied into the buffer a runner reuses for every message
/// ([`fill_wit_message`]); a larger one gets its own, so one big message does not keep its
/// size allocated for the agent's lifetime.
const REUSED_PAYLOAD_MAX: usize = 64 * 1024;

/// Converts a bus message for the guest; its id is the `Nats-Msg-Id` header when present.
pub fn to_wit_message(msg: BusMessage) -> Message {
    let mut out = empty_wit_message();
    fill_wit_message(&mut out, msg);
    out
}

/// A message with nothing in it, whose buffers [`fill_wit_message`] fills.
pub fn empty_wit_message() -> Message {
    Message {
        id: String::new(),
        subject: String::new(),
        reply_to: None,
        headers: Vec::new(),
        payload: Vec::new(),
    }
}

/// [`to_wit_message`] into `dst`, reusing its id, header list and payload buffers: a
/// runner keeps one message for all it hands to `handle`, which spares two allocations
/// (the id and the payload's copy) per message.
pub fn fill_wit_message(dst: &mut Message, msg: BusMessage) {
    dst.id.clear();
    match msg.header(subjects::MSG_ID_HEADER) {
        Some(id) => dst.id.push_str(id),
        None => write_host_message_id(&mut dst.id),
    }
    dst.subject = msg.subject;
    dst.reply_to = msg.reply_to;
    dst.headers.clear();
    dst.headers.extend(
        msg.headers
            .into_iter()
            .map(|(key, value)| Header { key, value }),
    );
    if msg.payload.len() > REUSED_PAYLOAD_MAX || dst.payload.capacity() > REUSED_PAYLOAD_MAX {
        dst.payload = msg.payload.to_vec();
    } else {
        dst.payload.clear();
        dst.payload.extend_from_slice(&msg.payload);
    }
}

/// A copy of a guest message as a bus message (to dead-letter it): made only when needed,
/// so the message path does not copy every message in case it traps.
pub fn from_wit_message(msg: &Message) -> BusMessage {
    BusMessage {
        subject: msg.subject.clone(),
        reply_to: msg.reply_to.clone(),
        headers: msg
            .headers
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect(),
        payload: Bytes::from(msg.payload.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runner hands every message to `handle` in one reused message: nothing of the
    /// one before (its headers, reply subject, id or a longer payload) may show through.
    #[test]
    fn a_reused_message_holds_exactly_the_next_message() {
        let mut reused = empty_wit_message();
        let first = BusMessage {
            subject: "agent.to.a.first".into(),
            reply_to: Some("_INBOX.1".into()),
            headers: vec![
                ("Nats-Msg-Id".into(), "m-1".into()),
                ("X-Tag".into(), "a".into()),
            ],
            payload: Bytes::from(vec![7u8; 100_000]),
        };
        fill_wit_message(&mut reused, first);
        assert_eq!(reused.id, "m-1", "the sender's Nats-Msg-Id is the id");
        assert_eq!(reused.payload.len(), 100_000);
        assert_eq!(reused.headers.len(), 2);

        fill_wit_message(&mut reused, BusMessage::new("agent.to.a.second", "hi"));
        let expected = Message {
            id: reused.id.clone(),
            subject: "agent.to.a.second".into(),
            reply_to: None,
            headers: Vec::new(),
            payload: b"hi".to_vec(),
        };
        assert_eq!(format!("{reused:?}"), format!("{expected:?}"));
        assert_ne!(
            reused.id, "m-1",
            "a message without Nats-Msg-Id gets the host's id"
        );
        assert!(
            reused.payload.capacity() <= REUSED_PAYLOAD_MAX,
            "a large payload's buffer is not kept for the next messages"
        );

        fill_wit_message(&mut reused, BusMessage::new("agent.to.a.third", "x"));
        assert_eq!(reused.payload, b"x");
        assert!(reused
            .id
            .starts_with(host_message_id().split('-').next().unwrap()));
    }

    #[test]
    fn host_message_ids_are_the_process_prefix_and_a_rising_counter() {
        let (a, b) = (host_message_id(), host_message_id());
        let (prefix_a, n_a) = a.rsplit_once('-').unwrap();
        let (prefix_b, n_b) = b.rsplit_once('-').unwrap();
        assert_eq!(prefix_a, prefix_b);
        assert_eq!(prefix_a.len(), 32, "a simple UUID v7: {a}");
        let (n_a, n_b): (u64, u64) = (n_a.parse().unwrap(), n_b.parse().unwrap());
        assert!(n_b > n_a, "{a} then {b}");
        assert_eq!(format!("{prefix_a}-{n_a}"), a, "no leading zeros");
    }
}
