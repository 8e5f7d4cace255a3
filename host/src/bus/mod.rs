//! The message bus agents talk through (docs/design.md, Subjects and Backends).
//!
//! [`Transport`] is what the rest of the host uses; [`EmbeddedBus`] implements it in process
//! (the default) and a NATS implementation follows the same contract, so an agent behaves
//! the same on both. The contract is NATS's: dot-separated subjects, `*` matching one token
//! and `>` one or more trailing tokens, one copy per matching subscription, request/reply
//! over a reply inbox, and slow consumers losing messages — counted and logged, never
//! silently.

mod embedded;
mod mailbox;
pub mod nats;
mod size;
mod trie;

pub use embedded::EmbeddedBus;
pub use mailbox::{ByteBudget, MailboxLimits};
pub use nats::{NatsBus, NatsOptions};
pub use size::{check_headers, header_bytes, message_bytes, MAX_HEADERS};
pub use trie::Routes;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::log_sample::LogSample;

/// The payload limit NATS servers use by default (1 MiB); the embedded bus uses it too so
/// an agent that works embedded does not fail on a default NATS cluster.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// A message on the bus. Headers keep order and allow repeated keys (NATS headers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BusMessage {
    pub subject: String,
    pub reply_to: Option<String>,
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

impl BusMessage {
    /// A message without reply subject or headers.
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            reply_to: None,
            headers: Vec::new(),
            payload: payload.into(),
        }
    }

    /// Appends a header, keeping any earlier one of the same name (NATS allows repeats).
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// The first value of header `key`, compared case-insensitively as NATS (and HTTP)
    /// header names are.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.header_values(key).next()
    }

    /// Every value of header `key` in order (NATS keeps repeats), names compared as in
    /// [`Self::header`].
    pub fn header_values<'a, 'k>(
        &'a self,
        key: &'k str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'k> {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a bus operation failed; the same variants for every [`Transport`].
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum BusError {
    #[error("invalid subject: {0}")]
    InvalidSubject(String),
    #[error("invalid headers: {0}")]
    InvalidHeaders(String),
    #[error("no responders: nothing subscribes to '{0}'")]
    NoResponders(String),
    #[error("no reply arrived before the timeout")]
    Timeout,
    #[error("payload is {size} bytes; the bus accepts at most {max}")]
    TooLarge { size: usize, max: usize },
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("the bus is closed")]
    Closed,
}

/// A message bus: the embedded one or NATS. Callers hold it as `Arc<dyn Transport>`.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Delivers `msg` to every subscription matching its subject, without waiting for any
    /// of them (a full subscriber loses the message; see [`Subscription`]).
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError>;

    /// Subscribes; messages arrive on the returned Subscription. `capacity` bounds its
    /// buffer: when full, new messages for it are dropped and counted.
    async fn subscribe(&self, pattern: &str, capacity: usize) -> Result<Subscription, BusError> {
        self.subscribe_with(pattern, MailboxLimits::messages(capacity))
            .await
    }

    /// [`Transport::subscribe`] with its buffer bounded by `limits`: a count and, when
    /// given, a byte budget (shared by an agent's subscriptions and drawn from the node's);
    /// a message that does not fit either is dropped and counted.
    async fn subscribe_with(
        &self,
        pattern: &str,
        limits: MailboxLimits,
    ) -> Result<Subscription, BusError>;

    /// Publishes with a fresh reply inbox and waits for the first reply. NoResponders at
    /// once when nothing subscribes to the subject (NATS does this too), Timeout after
    /// `timeout`.
    async fn request(&self, msg: BusMessage, timeout: Duration) -> Result<BusMessage, BusError>;

    /// [`Transport::publish`] of a message an agent sends, stamped with its sender's
    /// agent-ref in the `Agent-Ref` header (docs/design.md, Subjects), after the headers it
    /// already has.
    /// A transport may encode the stamp itself rather than as one more header in the list:
    /// NATS does, since it is on every reply and its name never changes.
    async fn publish_stamped(&self, mut msg: BusMessage, sender: &str) -> Result<(), BusError> {
        stamp(&mut msg, sender);
        self.publish(msg).await
    }

    /// [`Transport::request`] stamped like [`Transport::publish_stamped`].
    async fn request_stamped(
        &self,
        mut msg: BusMessage,
        sender: &str,
        timeout: Duration,
    ) -> Result<BusMessage, BusError> {
        stamp(&mut msg, sender);
        self.request(msg, timeout).await
    }

    /// Messages dropped because a subscriber's buffer was full, since start.
    fn dropped(&self) -> u64;

    /// Max payload size accepted by publish (TooLarge beyond it).
    fn max_payload(&self) -> usize;

    /// Whether the bus is up and where it is attached, for `/health` and the metrics: an
    /// operator of a NATS cluster needs to see which server a node is on and whether it
    /// is cut off from all of them.
    fn state(&self) -> BusState;
}

/// Appends the sender stamp to `msg`'s headers: what [`Transport::publish_stamped`] does on a
/// transport that keeps headers as a list.
fn stamp(msg: &mut BusMessage, sender: &str) {
    msg.headers.push((
        crate::subjects::SENDER_HEADER.to_string(),
        sender.to_string(),
    ));
}

/// Where a node's bus stands right now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BusState {
    /// `embedded` or `nats`.
    pub backend: String,
    /// False while a NATS connection is lost (the client keeps reconnecting meanwhile).
    pub connected: bool,
    /// The NATS server this node is connected to, by its `server_name`.
    pub server_name: Option<String>,
    /// That server's client address (`host:port`), one of the URLs in `[nats] url`.
    pub server_address: Option<String>,
    /// Reconnects since start; the first connection does not count.
    pub reconnects: u64,
    /// Messages dropped for slow subscribers since start (see [`Transport::dropped`]).
    pub dropped: u64,
}

/// A stream of the messages matching one pattern.
///
/// Its buffer is bounded: a subscriber that does not keep up loses new messages (NATS calls
/// this a slow consumer), which [`Subscription::dropped`] counts. Dropping the
/// Subscription unsubscribes: the bus stops routing to it and frees its entry.
pub struct Subscription {
    rx: mpsc::Receiver<BusMessage>,
    stats: Arc<SinkStats>,
    unsubscribe: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    /// The next message; `None` once the bus has shut down. Cancel-safe, so it can sit in a
    /// `select!` without losing messages.
    pub async fn next(&mut self) -> Option<BusMessage> {
        let msg = self.rx.recv().await;
        self.taken(msg)
    }

    /// A message already buffered, if any, without waiting.
    pub fn try_next(&mut self) -> Option<BusMessage> {
        let msg = self.rx.try_recv().ok();
        self.taken(msg)
    }

    /// Gives a message's bytes back to the budget it was queued under.
    fn taken(&self, msg: Option<BusMessage>) -> Option<BusMessage> {
        if let (Some(budget), Some(m)) = (&self.stats.bytes, &msg) {
            budget.give_back(message_bytes(m));
        }
        msg
    }

    /// Bytes this subscription's budget holds now (with the others sharing it), if it has one.
    pub fn queued_bytes(&self) -> Option<usize> {
        self.stats.bytes.as_ref().map(|b| b.used())
    }

    /// Also reports each message this subscription loses to `on_drop` (an agent's
    /// `mailbox_dropped` counter), so a drop shows on the agent that lost it, not only in
    /// the bus-wide count. Called once per subscription (a second call is ignored).
    pub fn report_drops_to(&self, on_drop: impl Fn() + Send + Sync + 'static) {
        let first = self.stats.also_report.set(Box::new(on_drop)).is_ok();
        debug_assert!(
            first,
            "report_drops_to called twice on '{}'",
            self.stats.pattern
        );
    }

    /// The pattern this subscription was made with.
    pub fn pattern(&self) -> &str {
        &self.stats.pattern
    }

    /// Messages this subscription lost because its buffer was full.
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    /// Runs `unsubscribe` when the Subscription is dropped, before its buffer is freed.
    pub(crate) fn on_drop(mut self, unsubscribe: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.unsubscribe = Some(Box::new(unsubscribe));
        self
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(unsubscribe) = self.unsubscribe.take() {
            unsubscribe();
        }
        // What is still queued gives its bytes back; later deliveries find it closed.
        self.rx.close();
        while let Ok(m) = self.rx.try_recv() {
            self.taken(Some(m));
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.stats.pattern)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// A pair of a [`Sink`] the transport delivers into and the [`Subscription`] the subscriber
/// reads from; every transport builds its subscriptions this way so slow-consumer
/// accounting is the same on all of them. A capacity of 0 messages is taken as 1.
pub(crate) fn subscription_channel(pattern: &str, limits: MailboxLimits) -> (Sink, Subscription) {
    let (tx, rx) = mpsc::channel(limits.messages.max(1));
    let stats = Arc::new(SinkStats {
        pattern: pattern.to_string(),
        dropped: AtomicU64::new(0),
        warnings: LogSample::new(),
        also_report: OnceLock::new(),
        bytes: limits.bytes,
    });
    let sink = Sink {
        tx,
        stats: stats.clone(),
    };
    (
        sink,
        Subscription {
            rx,
            stats,
            unsubscribe: None,
        },
    )
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Sent,
    /// The buffer was full; the drop was counted.
    Dropped,
    /// The subscriber is gone; its entry should be removed.
    Closed,
}

/// The sending half of a subscription, held by the transport.
#[derive(Debug)]
pub(crate) struct Sink {
    tx: mpsc::Sender<BusMessage>,
    stats: Arc<SinkStats>,
}

impl Sink {
    /// Hands `msg` over without waiting. A full buffer, or a spent byte budget, drops it and
    /// counts the drop here and in `global` (the transport-wide count behind
    /// [`Transport::dropped`]).
    pub(crate) fn deliver(&self, msg: BusMessage, global: &AtomicU64) -> Delivery {
        let Some(budget) = &self.stats.bytes else {
            return match self.tx.try_send(msg) {
                Ok(()) => Delivery::Sent,
                Err(mpsc::error::TrySendError::Full(_)) => self.drop_one(global),
                Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
            };
        };
        let bytes = message_bytes(&msg);
        if !budget.try_take(bytes) {
            return self.drop_one(global);
        }
        match self.tx.try_send(msg) {
            Ok(()) => Delivery::Sent,
            Err(mpsc::error::TrySendError::Full(_)) => {
                budget.give_back(bytes);
                self.drop_one(global)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                budget.give_back(bytes);
                Delivery::Closed
            }
        }
    }

    fn drop_one(&self, global: &AtomicU64) -> Delivery {
        global.fetch_add(1, Ordering::Relaxed);
        self.stats.note_drop();
        Delivery::Dropped
    }

    pub(crate) fn pattern(&self) -> &str {
        &self.stats.pattern
    }
}

/// Per-subscription counters shared by its [`Sink`] and [`Subscription`].
struct SinkStats {
    pattern: String,
    dropped: AtomicU64,
    /// Drops are logged as a sample: the first, then one line a second.
    warnings: LogSample,
    /// Where else a drop is reported (see [`Subscription::report_drops_to`]).
    also_report: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// The byte budget queued messages draw on, if any.
    bytes: Option<Arc<ByteBudget>>,
}

impl fmt::Debug for SinkStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkStats")
            .field("pattern", &self.pattern)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl SinkStats {
    fn note_drop(&self) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(report) = self.also_report.get() {
            report();
        }
        if self.warnings.due() {
            tracing::warn!(
                pattern = %self.pattern,
                dropped = total,
                "slow consumer: subscription buffer full, dropping messages"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_looked_up_case_insensitively_and_the_first_repeat_wins() {
        let msg = BusMessage::new("a.b", "x")
            .with_header("Agent-Ref", "c.n.1")
            .with_header("agent-ref", "c.n.2");
        assert_eq!(msg.header("AGENT-REF"), Some("c.n.1"));
        assert_eq!(msg.headers.len(), 2);
        assert_eq!(msg.header("missing"), None);
    }

    #[test]
    fn a_drop_is_also_reported_to_the_agent_that_lost_it() {
        let global = AtomicU64::new(0);
        let (sink, sub) = subscription_channel("a.>", MailboxLimits::messages(1));
        let agent = Arc::new(AtomicU64::new(0));
        let counted = agent.clone();
        sub.report_drops_to(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        for n in 0..5 {
            sink.deliver(BusMessage::new(format!("a.{n}"), ""), &global);
        }
        let all = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!((sub.dropped(), all(&global), all(&agent)), (4, 4, 4));
    }

    #[test]
    fn a_full_buffer_drops_and_counts_and_a_gone_reader_is_reported_closed() {
        let global = AtomicU64::new(0);
        let (sink, sub) = subscription_channel("a.>", MailboxLimits::messages(0));
        assert_eq!(
            sink.deliver(BusMessage::new("a.1", ""), &global),
            Delivery::Sent
        );
        assert_eq!(
            sink.deliver(BusMessage::new("a.2", ""), &global),
            Delivery::Dropped
        );
        assert_eq!((sub.dropped(), global.load(Ordering::Relaxed)), (1, 1));
        drop(sub);
        assert_eq!(
            sink.deliver(BusMessage::new("a.3", ""), &global),
            Delivery::Closed
        );
    }
}
