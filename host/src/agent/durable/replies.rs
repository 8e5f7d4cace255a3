//! Request/reply for durable agents.
//!
//! JetStream does not store a message's reply subject, so a core `request` to a durable
//! agent's subject reaches the agent through its consumer without one. The host therefore
//! also core-subscribes the agent's patterns, only to record requests: each core copy that
//! carries a reply subject is remembered under a fingerprint of its subject, headers and
//! payload, and the stream copy with the same fingerprint takes that reply subject when it
//! comes through the consumer. Equal fingerprints pair first-in first-out.
//!
//! The map is bounded in size and age: a recorded request whose stream copy never comes
//! (the stream dropped it as a duplicate `Nats-Msg-Id`, or it arrived first, see the README)
//! is forgotten after [`PENDING_TTL`].

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

/// How long a recorded request waits for its stream copy.
pub const PENDING_TTL: Duration = Duration::from_secs(60);
/// Requests recorded per agent at most; the oldest is forgotten beyond it.
pub const MAX_PENDING: usize = 10_000;

/// A fingerprint of what JetStream keeps of a message: subject, headers (in any order) and
/// payload.
pub fn fingerprint(subject: &str, headers: &[(String, String)], payload: &[u8]) -> u64 {
    let mut sorted: Vec<_> = headers.iter().collect();
    sorted.sort();
    let mut h = DefaultHasher::new();
    subject.hash(&mut h);
    sorted.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

/// Core requests waiting for their stream copies, by fingerprint.
#[derive(Default)]
pub struct PendingRequests {
    by_key: HashMap<u64, VecDeque<String>>,
    /// Arrival order, for expiry and the size bound.
    order: VecDeque<(Instant, u64)>,
}

impl PendingRequests {
    /// Remembers that a request with fingerprint `key` wants its reply on `reply_to`.
    pub fn record(&mut self, key: u64, reply_to: String, now: Instant) {
        self.expire(now);
        if self.order.len() >= MAX_PENDING {
            self.forget_oldest();
        }
        self.by_key.entry(key).or_default().push_back(reply_to);
        self.order.push_back((now, key));
    }

    /// The reply subject of the oldest recorded request with fingerprint `key`, if any.
    pub fn take(&mut self, key: u64, now: Instant) -> Option<String> {
        self.expire(now);
        let queue = self.by_key.get_mut(&key)?;
        let reply = queue.pop_front();
        if queue.is_empty() {
            self.by_key.remove(&key);
        }
        if reply.is_some() {
            if let Some(at) = self.order.iter().position(|(_, k)| *k == key) {
                self.order.remove(at);
            }
        }
        reply
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < PENDING_TTL {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            if let Some(queue) = self.by_key.get_mut(&key) {
                queue.pop_front();
                if queue.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn the_fingerprint_ignores_header_order_but_not_content() {
        let a = fingerprint("s", &[h("A", "1"), h("B", "2")], b"x");
        assert_eq!(a, fingerprint("s", &[h("B", "2"), h("A", "1")], b"x"));
        assert_ne!(a, fingerprint("s", &[h("A", "1")], b"x"));
        assert_ne!(a, fingerprint("t", &[h("A", "1"), h("B", "2")], b"x"));
        assert_ne!(a, fingerprint("s", &[h("A", "1"), h("B", "2")], b"y"));
    }

    #[test]
    fn equal_requests_pair_first_in_first_out() {
        let now = Instant::now();
        let mut p = PendingRequests::default();
        p.record(7, "_INBOX.a".into(), now);
        p.record(7, "_INBOX.b".into(), now);
        p.record(8, "_INBOX.c".into(), now);
        assert_eq!(p.take(7, now).as_deref(), Some("_INBOX.a"));
        assert_eq!(p.take(8, now).as_deref(), Some("_INBOX.c"));
        assert_eq!(p.take(7, now).as_deref(), Some("_INBOX.b"));
        assert_eq!(p.take(7, now), None);
        assert!(p.is_empty());
    }

    #[test]
    fn a_request_whose_stream_copy_never_comes_is_forgotten() {
        let now = Instant::now();
        let mut p = PendingRequests::default();
        p.record(1, "_INBOX.old".into(), now);
        let later = now + PENDING_TTL;
        p.record(2, "_INBOX.new".into(), later);
        assert_eq!(p.take(1, later), None);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn the_map_never_holds_more_than_its_bound() {
        let now = Instant::now();
        let mut p = PendingRequests::default();
        for i in 0..(MAX_PENDING as u64 + 5) {
            p.record(i, format!("_INBOX.{i}"), now);
        }
        assert_eq!(p.len(), MAX_PENDING);
        assert_eq!(p.take(0, now), None, "the oldest went first");
        assert!(p.take(MAX_PENDING as u64 + 4, now).is_some());
    }
}
