//! The in-process bus: the default [`Transport`] when no NATS server is configured.
//!
//! Publishing is synchronous under a read lock (no await, no lock held across one): the
//! subscription index finds the matching subscriptions and each gets the message through a
//! bounded channel with `try_send`. Requests do not subscribe per call; like NATS's muxed
//! inbox, each request registers a one-shot slot under a number and the reply inbox
//! `_INBOX.<bus token>.<number>` is routed straight to it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use super::trie::Routes;
use super::{
    check_headers, subscription_channel, BusError, BusMessage, BusState, Delivery, MailboxLimits,
    Sink, Subscription, Transport, DEFAULT_MAX_PAYLOAD, MAX_HEADERS,
};
use crate::subjects;

/// The in-process bus. Cloning is cheap and yields a handle to the same bus; callers that
/// want a trait object wrap it as `Arc<dyn Transport>`. When the last handle goes, every
/// subscription's [`Subscription::next`] returns `None`.
#[derive(Clone)]
pub struct EmbeddedBus {
    shared: Arc<Shared>,
}

struct Shared {
    routes: RwLock<Routes<Sink>>,
    next_sub: AtomicU64,
    dropped: AtomicU64,
    max_payload: usize,
    /// `_INBOX.<token>.`: replies to subjects under it go to `pending`.
    inbox_prefix: String,
    next_request: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<BusMessage>>>,
}

impl Default for EmbeddedBus {
    /// A bus with NATS's default payload limit.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl EmbeddedBus {
    /// A bus refusing payloads over `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        let token = uuid::Uuid::now_v7().simple().to_string();
        Self {
            shared: Arc::new(Shared {
                routes: RwLock::new(Routes::default()),
                next_sub: AtomicU64::new(1),
                dropped: AtomicU64::new(0),
                max_payload,
                inbox_prefix: format!("{}.", subjects::reply_inbox(&token)),
                next_request: AtomicU64::new(1),
                pending: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Live subscriptions; internal request routing adds none.
    pub fn subscription_count(&self) -> usize {
        self.shared.read_routes().len()
    }

    /// Publishes without the boxed future of [`Transport::publish`], for callers that hold
    /// the concrete bus on a hot path. Returns how many subscriptions (or waiting requests)
    /// the message reached, counting slow consumers that had to drop it.
    pub fn publish_now(&self, msg: BusMessage) -> Result<usize, BusError> {
        self.shared.check(&msg)?;
        Ok(self.shared.route(msg).unwrap_or(0))
    }

    #[cfg(test)]
    fn pending_requests(&self) -> usize {
        self.shared.lock_pending().len()
    }
}

impl Shared {
    fn read_routes(&self) -> std::sync::RwLockReadGuard<'_, Routes<Sink>> {
        // Nothing panics while holding the lock, but a poisoned index is still consistent.
        self.routes.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_routes(&self) -> std::sync::RwLockWriteGuard<'_, Routes<Sink>> {
        self.routes.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<BusMessage>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self, msg: &BusMessage) -> Result<(), BusError> {
        subjects::validate_subject(&msg.subject).map_err(BusError::InvalidSubject)?;
        if let Some(reply_to) = &msg.reply_to {
            subjects::validate_subject(reply_to).map_err(BusError::InvalidSubject)?;
        }
        // The same rules as a NATS server: headers count toward the payload limit, and only
        // headers it would carry are taken, so an agent behaves alike on both buses.
        let headers = msg.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let header_bytes = check_headers(headers, MAX_HEADERS).map_err(BusError::InvalidHeaders)?;
        let size = msg.payload.len().saturating_add(header_bytes);
        if size > self.max_payload {
            return Err(BusError::TooLarge {
                size,
                max: self.max_payload,
            });
        }
        Ok(())
    }

    /// Delivers `msg` to every match; gives it back when nothing matched, so a request can
    /// report NoResponders without having cloned the subject beforehand. The last recipient
    /// gets the message itself; only the others cost a clone.
    fn route(&self, msg: BusMessage) -> Result<usize, BusMessage> {
        let mut reached = 0;
        let mut closed: Vec<(u64, String)> = Vec::new();
        let waiting = self.take_pending(&msg.subject);
        {
            let routes = self.read_routes();
            let mut last: Option<(u64, &Sink)> = None;
            let mut send =
                |id: u64, sink: &Sink, m: BusMessage| match sink.deliver(m, &self.dropped) {
                    Delivery::Sent | Delivery::Dropped => reached += 1,
                    Delivery::Closed => closed.push((id, sink.pattern().to_string())),
                };
            routes.for_each_match(&msg.subject, |id, sink| {
                if let Some((prev_id, prev)) = last.replace((id, sink)) {
                    send(prev_id, prev, msg.clone());
                }
            });
            match (last, waiting) {
                (None, None) => return Err(msg),
                (Some((id, sink)), None) => send(id, sink, msg),
                (Some((id, sink)), Some(tx)) => {
                    send(id, sink, msg.clone());
                    let _ = tx.send(msg);
                    reached += 1;
                }
                (None, Some(tx)) => {
                    // A requester that gave up in the meantime loses nothing it still wants.
                    let _ = tx.send(msg);
                    reached += 1;
                }
            }
        }
        if !closed.is_empty() {
            self.remove_closed(&closed);
        }
        Ok(reached)
    }

    /// The slot of the request `subject` replies to, if it is one of ours and still waiting.
    /// A reply to a requester that gave up finds none and is dropped silently: that is not
    /// a slow consumer.
    fn take_pending(&self, subject: &str) -> Option<oneshot::Sender<BusMessage>> {
        let number = subject
            .strip_prefix(&self.inbox_prefix)?
            .parse::<u64>()
            .ok()?;
        self.lock_pending().remove(&number)
    }

    /// Removes subscriptions whose reader went away without unsubscribing.
    fn remove_closed(&self, closed: &[(u64, String)]) {
        let mut routes = self.write_routes();
        for (id, pattern) in closed {
            if routes.remove(pattern, *id) {
                tracing::debug!(pattern = %pattern, "removed a subscription whose reader is gone");
            }
        }
    }
}

/// Frees a request's slot however the request ends: reply, timeout, or the caller dropping
/// the future.
struct PendingSlot<'a> {
    shared: &'a Shared,
    number: u64,
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.shared.lock_pending().remove(&self.number);
    }
}

#[async_trait::async_trait]
impl Transport for EmbeddedBus {
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        self.publish_now(msg).map(drop)
    }

    async fn subscribe_with(
        &self,
        pattern: &str,
        limits: MailboxLimits,
    ) -> Result<Subscription, BusError> {
        subjects::validate_pattern(pattern).map_err(BusError::InvalidSubject)?;
        let id = self.shared.next_sub.fetch_add(1, Ordering::Relaxed);
        let (sink, sub) = subscription_channel(pattern, limits);
        self.shared.write_routes().insert(pattern, id, sink);
        let bus: Weak<Shared> = Arc::downgrade(&self.shared);
        let pattern = pattern.to_string();
        Ok(sub.on_drop(move || {
            if let Some(shared) = bus.upgrade() {
                shared.write_routes().remove(&pattern, id);
            }
        }))
    }

    async fn request(
        &self,
        mut msg: BusMessage,
        timeout: Duration,
    ) -> Result<BusMessage, BusError> {
        let shared = &*self.shared;
        let number = shared.next_request.fetch_add(1, Ordering::Relaxed);
        let mut inbox = String::with_capacity(shared.inbox_prefix.len() + 20);
        inbox.push_str(&shared.inbox_prefix);
        let _ = write!(inbox, "{number}");
        msg.reply_to = Some(inbox);
        shared.check(&msg)?;

        let (tx, rx) = oneshot::channel();
        shared.lock_pending().insert(number, tx);
        let _slot = PendingSlot { shared, number };
        if let Err(msg) = shared.route(msg) {
            return Err(BusError::NoResponders(msg.subject));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout),
        }
    }

    fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn max_payload(&self) -> usize {
        self.shared.max_payload
    }

    /// In process: always connected, to no server.
    fn state(&self) -> BusState {
        BusState {
            backend: "embedded".to_string(),
            connected: true,
            server_name: None,
            server_address: None,
            reconnects: 0,
            dropped: self.dropped(),
        }
    }
}

#[cfg(test)]
mod tests;
