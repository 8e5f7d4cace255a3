//! Which version of a canary serves a message: the conversation key (see the canary module
//! docs for its order) and a stable bucket of it, compared with the step's share.

use crate::bus::BusMessage;
use crate::subjects;

/// The key whose hash picks a conversation's version (see the module docs for the order).
pub fn conversation_key<'a>(msg: &'a BusMessage, header: &str) -> &'a str {
    if let Some(key) = msg
        .header(header)
        .or_else(|| msg.header(subjects::SENDER_HEADER))
    {
        return key;
    }
    match msg.reply_to.as_deref() {
        Some(reply) => reply.rsplit_once('.').map_or(reply, |(inbox, _)| inbox),
        None => &msg.subject,
    }
}

/// A stable bucket in 0..100 for `key` (FNV-1a: the same on every node and release, which
/// `std`'s hasher does not promise).
pub fn share_bucket(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash % 100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(headers: &[(&str, &str)], reply: Option<&str>) -> BusMessage {
        BusMessage {
            subject: "agent.to.counter.cmd".into(),
            reply_to: reply.map(str::to_string),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            payload: Default::default(),
        }
    }

    #[test]
    fn the_conversation_header_wins_then_the_sender_then_the_client_inbox() {
        let both = msg(
            &[("conversation-id", "c-1"), ("Agent-Ref", "a.b.c")],
            Some("_INBOX.x.1"),
        );
        assert_eq!(conversation_key(&both, "Conversation-Id"), "c-1");
        let sender = msg(&[("Agent-Ref", "a.b.c")], Some("_INBOX.x.1"));
        assert_eq!(conversation_key(&sender, "Conversation-Id"), "a.b.c");
        let client = msg(&[], Some("_INBOX.client7.42"));
        assert_eq!(
            conversation_key(&client, "Conversation-Id"),
            "_INBOX.client7"
        );
        assert_eq!(
            conversation_key(&msg(&[], None), "Conversation-Id"),
            "agent.to.counter.cmd"
        );
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(
            share_bucket("conversation-1"),
            share_bucket("conversation-1")
        );
        let green = (0..1000)
            .filter(|i| share_bucket(&format!("c-{i}")) < 25)
            .count();
        assert!((180..320).contains(&green), "{green} of 1000 under 25%");
    }
}
