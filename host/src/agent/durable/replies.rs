//! Request/reply for durable agents.
//!
//! JetStream does not store a message's reply subject, so a core `request` to a durable
//! agent's subject reaches the agent through its consumer without one. The host therefore
//! also core-subscribes the agent's patterns and records every core copy under a
//! fingerprint of its subject, headers and payload: a request with its reply subject, a
//! plain publish as a bare mark. The stream copy with the same fingerprint claims the
//! record when it comes through the consumer: a request's takes its reply subject, a
//! publish's learns that no request is coming and need not wait for one. Equal
//! fingerprints pair first-in first-out.
//!
//! Records are bounded in number and age: a request waits up to [`PENDING_TTL`] for its
//! stream copy (the stream may have dropped it as a duplicate `Nats-Msg-Id`, or a consumer
//! may be far behind); a publish's mark is only worth keeping while its stream copy could
//! still be held for a request ([`CoreCopies::new`]). A mark is a count per fingerprint,
//! so a burst of publishes far ahead of the consumer costs a few bytes per message.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

/// How long a recorded request waits for its stream copy.
pub const PENDING_TTL: Duration = Duration::from_secs(60);
/// Requests recorded per agent at most; the oldest is forgotten beyond it.
pub const MAX_PENDING: usize = 10_000;
/// Publishes marked per agent at most. A mark forgotten while its stream copy is fresh
/// makes that copy wait, so this must cover what a consumer can fall behind within the
/// pairing wait: 65,536 marks is 130,000 msg/s for 500 ms.
pub const MAX_MARKS: usize = 65_536;

/// A fingerprint of what JetStream keeps of a message: subject, headers (`(name, value)`
/// pairs, in any order) and payload.
pub fn fingerprint<'a>(
    subject: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    payload: &[u8],
) -> u64 {
    let mut sorted: Vec<(&str, &str)> = headers.into_iter().collect();
    sorted.sort_unstable();
    let mut h = DefaultHasher::new();
    subject.hash(&mut h);
    sorted.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

/// The fingerprint of a message as the host holds it.
pub fn fingerprint_of(msg: &crate::bus::BusMessage) -> u64 {
    let headers = msg.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    fingerprint(&msg.subject, headers, &msg.payload)
}

/// The fingerprint of a message as the NATS client received it, without copying it: the
/// same as [`fingerprint_of`] the message converted.
pub fn fingerprint_of_nats(m: &async_nats::Message) -> u64 {
    let headers = m.headers.iter().flat_map(|map| {
        map.iter().flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values.iter().map(move |v| (name, v.as_str()))
        })
    });
    fingerprint(m.subject.as_str(), headers, &m.payload)
}

/// What the core copy of a message said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreCopy {
    /// A request: its reply goes to this subject.
    Request(String),
    /// A plain publish: nobody waits for a reply.
    Publish,
}

/// The core copies whose stream copies have not come yet, by fingerprint.
pub struct CoreCopies {
    requests: Records<String>,
    marks: Records<()>,
}

impl CoreCopies {
    /// Marks of plain publishes are kept for `publish_ttl`: a stream copy that comes later
    /// than that is not held for a request anyway (see the pump), so only requests are worth
    /// remembering longer.
    pub fn new(publish_ttl: Duration) -> CoreCopies {
        CoreCopies {
            requests: Records::new(PENDING_TTL, MAX_PENDING),
            marks: Records::new(publish_ttl, MAX_MARKS),
        }
    }

    /// Records a core copy with fingerprint `key`.
    pub fn record(&mut self, key: u64, copy: CoreCopy, now: Instant) {
        match copy {
            CoreCopy::Request(reply) => self.requests.record(key, reply, now),
            CoreCopy::Publish => self.marks.record(key, (), now),
        }
    }

    /// The oldest recorded core copy with fingerprint `key`, if any, which it no longer is.
    /// A request goes before a publish with the same fingerprint: the two messages are
    /// equal, so either stream copy may answer the requester.
    pub fn take(&mut self, key: u64, now: Instant) -> Option<CoreCopy> {
        if let Some(reply) = self.requests.take(key, now) {
            return Some(CoreCopy::Request(reply));
        }
        self.marks.take(key, now).map(|()| CoreCopy::Publish)
    }

    /// Requests recorded and not claimed yet.
    #[cfg(test)]
    fn requests(&self) -> usize {
        self.requests.live
    }

    /// Publishes marked and not claimed yet.
    #[cfg(test)]
    fn publishes(&self) -> usize {
        self.marks.live
    }
}

/// Records of one kind by fingerprint, first in first out: each kept for `ttl`, and at
/// most `cap` of them unclaimed (the oldest is forgotten beyond that). `order` holds when
/// each was made, oldest first, claimed ones included until they age out. A claim takes the
/// oldest unclaimed record of its fingerprint, and records age out oldest first, so the one
/// that ages out is a claimed one while its fingerprint has claimed ones left.
struct Records<V> {
    ttl: Duration,
    cap: usize,
    by_key: HashMap<u64, Fingerprinted<V>>,
    order: VecDeque<(Instant, u64)>,
    live: usize,
}

/// The records of one fingerprint: the unclaimed ones, oldest first, and how many claimed
/// ones still have a place in `order`.
struct Fingerprinted<V> {
    unclaimed: VecDeque<V>,
    claimed: u32,
}

impl<V> Records<V> {
    fn new(ttl: Duration, cap: usize) -> Records<V> {
        Records {
            ttl,
            cap,
            by_key: HashMap::new(),
            order: VecDeque::new(),
            live: 0,
        }
    }

    fn record(&mut self, key: u64, value: V, now: Instant) {
        self.expire(now);
        while self.live >= self.cap && !self.order.is_empty() {
            self.age_out_oldest();
        }
        self.by_key
            .entry(key)
            .or_insert_with(|| Fingerprinted {
                unclaimed: VecDeque::new(),
                claimed: 0,
            })
            .unclaimed
            .push_back(value);
        self.order.push_back((now, key));
        self.live += 1;
    }

    fn take(&mut self, key: u64, now: Instant) -> Option<V> {
        self.expire(now);
        let records = self.by_key.get_mut(&key)?;
        let value = records.unclaimed.pop_front()?;
        records.claimed += 1;
        self.live -= 1;
        // Claimed out of order, records keep places in `order` until they age out.
        if self.order.len() > 2 * self.live + 64 {
            self.compact();
        }
        Some(value)
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.order.front() {
            if now.duration_since(at) < self.ttl {
                break;
            }
            self.age_out_oldest();
        }
    }

    /// Removes the oldest place in `order`, and its record if that was unclaimed.
    fn age_out_oldest(&mut self) {
        let Some((_, key)) = self.order.pop_front() else {
            return;
        };
        let Some(records) = self.by_key.get_mut(&key) else {
            return;
        };
        if records.claimed > 0 {
            records.claimed -= 1;
        } else {
            records.unclaimed.pop_front();
            self.live -= 1;
        }
        if records.claimed == 0 && records.unclaimed.is_empty() {
            self.by_key.remove(&key);
        }
    }

    /// Drops the places of claimed records from `order`: each fingerprint's oldest ones.
    fn compact(&mut self) {
        let by_key = &mut self.by_key;
        self.order.retain(|(_, key)| match by_key.get_mut(key) {
            Some(records) if records.claimed > 0 => {
                records.claimed -= 1;
                false
            }
            _ => true,
        });
        by_key.retain(|_, records| !records.unclaimed.is_empty());
    }
}

/// The reply subjects of requests handed to the agent, by stream sequence, so that a
/// redelivery (`handle` failed or trapped the first time) still answers its requester, if it
/// waits that long. Bounded like the records: [`MAX_PENDING`], each for [`PENDING_TTL`].
#[derive(Default)]
pub struct ReplySubjects {
    by_sequence: HashMap<u64, String>,
    order: VecDeque<(Instant, u64)>,
}

impl ReplySubjects {
    pub fn remember(&mut self, sequence: u64, reply: String, now: Instant) {
        self.expire(now);
        if self.order.len() >= MAX_PENDING {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.by_sequence.remove(&oldest);
            }
        }
        if self.by_sequence.insert(sequence, reply).is_none() {
            self.order.push_back((now, sequence));
        }
    }

    /// The reply subject stream copy `sequence` had when it was first delivered.
    pub fn get(&mut self, sequence: u64, now: Instant) -> Option<String> {
        self.expire(now);
        self.by_sequence.get(&sequence).cloned()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, sequence)) = self.order.front() {
            if now.duration_since(at) < PENDING_TTL {
                break;
            }
            self.order.pop_front();
            self.by_sequence.remove(&sequence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(k: &'a str, v: &'a str) -> (&'a str, &'a str) {
        (k, v)
    }

    fn request(reply: &str) -> CoreCopy {
        CoreCopy::Request(reply.to_string())
    }

    const MARK_TTL: Duration = Duration::from_secs(1);

    #[test]
    fn the_fingerprint_ignores_header_order_but_not_content() {
        let a = fingerprint("s", [h("A", "1"), h("B", "2")], b"x");
        assert_eq!(a, fingerprint("s", [h("B", "2"), h("A", "1")], b"x"));
        assert_ne!(a, fingerprint("s", [h("A", "1")], b"x"));
        assert_ne!(a, fingerprint("t", [h("A", "1"), h("B", "2")], b"x"));
        assert_ne!(a, fingerprint("s", [h("A", "1"), h("B", "2")], b"y"));
    }

    #[test]
    fn a_core_copy_and_its_stream_copy_have_one_fingerprint() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "m-1");
        headers.append("X-Tag", "b");
        headers.append("X-Tag", "a");
        let received = async_nats::Message {
            subject: "agent.to.echo.x".into(),
            reply: Some("_INBOX.1".into()),
            payload: "hello".into(),
            headers: Some(headers),
            status: None,
            description: None,
            length: 0,
        };
        let key = fingerprint_of_nats(&received);
        assert_eq!(key, fingerprint_of(&crate::bus::nats::from_nats(received)));
    }

    #[test]
    fn equal_messages_pair_first_in_first_out_and_requests_before_publishes() {
        let now = Instant::now();
        let mut p = CoreCopies::new(MARK_TTL);
        p.record(7, CoreCopy::Publish, now);
        p.record(7, request("_INBOX.a"), now);
        p.record(7, request("_INBOX.b"), now);
        p.record(8, request("_INBOX.c"), now);
        assert_eq!(p.take(7, now), Some(request("_INBOX.a")));
        assert_eq!(p.take(8, now), Some(request("_INBOX.c")));
        assert_eq!(p.take(7, now), Some(request("_INBOX.b")));
        assert_eq!(p.take(7, now), Some(CoreCopy::Publish));
        assert_eq!(p.take(7, now), None);
        assert_eq!((p.requests(), p.publishes()), (0, 0));
    }

    #[test]
    fn a_request_whose_stream_copy_never_comes_is_forgotten() {
        let now = Instant::now();
        let mut p = CoreCopies::new(MARK_TTL);
        p.record(1, request("_INBOX.old"), now);
        let later = now + PENDING_TTL;
        p.record(2, request("_INBOX.new"), later);
        assert_eq!(p.take(1, later), None);
        assert_eq!(p.requests(), 1);
    }

    #[test]
    fn a_publish_is_remembered_only_for_its_own_short_time_and_a_request_longer() {
        let now = Instant::now();
        let mut p = CoreCopies::new(MARK_TTL);
        p.record(1, request("_INBOX.a"), now);
        p.record(1, CoreCopy::Publish, now);
        p.record(2, CoreCopy::Publish, now);
        // The mark behind the request goes, the request before it stays.
        let later = now + MARK_TTL;
        assert_eq!(p.take(2, later), None);
        assert_eq!((p.requests(), p.publishes()), (1, 0));
        assert_eq!(p.take(1, later), Some(request("_INBOX.a")));
        assert_eq!(p.take(1, later), None);
    }

    #[test]
    fn each_kind_never_holds_more_than_its_bound() {
        let now = Instant::now();
        let mut p = CoreCopies::new(MARK_TTL);
        for i in 0..(MAX_PENDING as u64 + 5) {
            p.record(i, request(&format!("_INBOX.{i}")), now);
        }
        for i in 0..(MAX_MARKS as u64 + 5) {
            p.record(i + 1_000_000, CoreCopy::Publish, now);
        }
        assert_eq!((p.requests(), p.publishes()), (MAX_PENDING, MAX_MARKS));
        assert_eq!(p.take(0, now), None, "the oldest request went first");
        assert_eq!(p.take(1_000_000, now), None, "and the oldest publish");
        assert!(p.take(MAX_PENDING as u64 + 4, now).is_some());
        assert_eq!(p.take(1_000_000 + 5, now), Some(CoreCopy::Publish));
    }

    #[test]
    fn the_bound_forgets_the_oldest_unclaimed_record_past_claimed_ones() {
        let now = Instant::now();
        let mut r = Records::new(PENDING_TTL, 2);
        r.record(1, "a", now);
        assert_eq!(r.take(1, now), Some("a"));
        r.record(2, "b", now);
        r.record(3, "c", now);
        r.record(4, "d", now);
        assert_eq!(r.live, 2);
        assert_eq!(
            r.take(2, now),
            None,
            "b, the oldest unclaimed, was forgotten"
        );
        assert_eq!((r.take(3, now), r.take(4, now)), (Some("c"), Some("d")));
    }

    #[test]
    fn a_claimed_mark_ages_out_in_place_of_a_newer_one() {
        let now = Instant::now();
        let mut p = CoreCopies::new(MARK_TTL);
        p.record(3, CoreCopy::Publish, now);
        assert_eq!(p.take(3, now), Some(CoreCopy::Publish));
        let later = now + MARK_TTL / 2;
        p.record(3, CoreCopy::Publish, later);
        // The first mark's time is up; the second's is not, and it is still there.
        assert_eq!(p.take(3, now + MARK_TTL), Some(CoreCopy::Publish));
        assert_eq!(p.take(3, now + MARK_TTL), None);
        assert_eq!(p.publishes(), 0);
    }

    #[test]
    fn records_claimed_out_of_order_do_not_pile_up() {
        let now = Instant::now();
        let mut p = CoreCopies::new(MARK_TTL);
        // One old record that is never claimed keeps every later one from being the oldest.
        p.record(u64::MAX, request("_INBOX.never"), now);
        for i in 0..100_000u64 {
            p.record(i, request("_INBOX.x"), now);
            assert!(p.take(i, now).is_some());
        }
        assert_eq!(p.requests(), 1);
        assert!(p.requests.order.len() <= 2 * p.requests.live + 65);
        // Compaction kept the one live record findable.
        assert_eq!(p.take(u64::MAX, now), Some(request("_INBOX.never")));
    }

    #[test]
    fn a_redelivery_finds_the_reply_subject_of_its_first_delivery_for_a_while() {
        let now = Instant::now();
        let mut r = ReplySubjects::default();
        r.remember(41, "_INBOX.a".into(), now);
        assert_eq!(r.get(41, now).as_deref(), Some("_INBOX.a"));
        assert_eq!(r.get(42, now), None);
        assert_eq!(r.get(41, now + PENDING_TTL), None);
        for i in 0..(MAX_PENDING as u64 + 1) {
            r.remember(i, format!("_INBOX.{i}"), now);
        }
        assert_eq!(r.get(0, now), None, "the oldest went first");
        assert_eq!(r.by_sequence.len(), MAX_PENDING);
    }
}
