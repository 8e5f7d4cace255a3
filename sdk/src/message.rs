//! Conveniences on [`Message`]: read the payload as text or JSON, reply, read headers.

use std::cell::RefCell;

use serde::{de::DeserializeOwned, Serialize};

use crate::{AgentError, Header, Message, Result};

thread_local! {
    /// The reply subject of the message being handled, in a buffer that outlives the message:
    /// set per message by copying, so a stream of requests costs the agent no allocation here
    /// (a clone per message was two calls into the guest's allocator).
    static CURRENT_REPLY_TO: RefCell<ReplyTo> = const {
        RefCell::new(ReplyTo { present: false, subject: String::new() })
    };
}

struct ReplyTo {
    present: bool,
    subject: String,
}

pub(crate) fn set_current_reply_to(reply_to: Option<&str>) {
    CURRENT_REPLY_TO.with(|c| {
        let mut current = c.borrow_mut();
        current.subject.clear();
        current.present = reply_to.is_some();
        current.subject.push_str(reply_to.unwrap_or_default());
    });
}

impl Message {
    /// The payload as UTF-8 text.
    pub fn text(&self) -> Result<&str> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| AgentError::new(format!("payload is not UTF-8 text: {e}")))
    }

    /// The payload parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| AgentError::new(format!("payload is not the expected JSON: {e}")))
    }

    /// The first header named `key` (case-insensitive, as in NATS).
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .map(|h| h.value.as_str())
    }

    /// The command this message carries: the subject's tail after `command.` (agent-ref
    /// subjects) or after `agent.to.{name}.` (legacy inbox), else the last token.
    pub fn command(&self) -> &str {
        let s = self.subject.as_str();
        if let Some(pos) = s.find(".command.") {
            return &s[pos + ".command.".len()..];
        }
        if let Some(rest) = s.strip_prefix("agent.to.") {
            if let Some((_, cmd)) = rest.split_once('.') {
                return cmd;
            }
        }
        s.rsplit('.').next().unwrap_or(s)
    }

    /// Replies to the sender (no-op when the message asked for no reply). The payload is
    /// borrowed: `msg.reply(&msg.payload)` copies nothing inside the agent.
    pub fn reply(&self, payload: impl AsRef<[u8]>) -> Result<()> {
        self.reply_with_headers(&[], payload)
    }

    /// Replies with `value` as JSON.
    pub fn reply_json<T: Serialize>(&self, value: &T) -> Result<()> {
        self.reply(serde_json::to_vec(value)?)
    }

    /// Replies with headers (no-op when the message asked for no reply).
    pub fn reply_with_headers(&self, headers: &[Header], payload: impl AsRef<[u8]>) -> Result<()> {
        let Some(to) = &self.reply_to else {
            return Ok(());
        };
        crate::messaging::publish_with_headers(to, headers, payload)
    }
}

/// The reply-to subject of the message being handled, if any.
pub fn current_reply_to() -> Option<String> {
    CURRENT_REPLY_TO.with(|c| {
        let current = c.borrow();
        current.present.then(|| current.subject.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_reply_subject_is_the_one_of_the_message_being_handled() {
        set_current_reply_to(Some("_INBOX.a.long.first.subject"));
        assert_eq!(
            current_reply_to().as_deref(),
            Some("_INBOX.a.long.first.subject")
        );
        // A message asking for no reply leaves none behind from the one before.
        set_current_reply_to(None);
        assert_eq!(current_reply_to(), None);
        // A shorter subject in the reused buffer keeps nothing of the longer one.
        set_current_reply_to(Some("_INBOX.b"));
        assert_eq!(current_reply_to().as_deref(), Some("_INBOX.b"));
    }
}
