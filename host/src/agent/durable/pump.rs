//! The task between a durable agent's consumers and its runner: records core requests,
//! pairs each stream copy with its request, and hands stream copies over in arrival order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::SelectAll;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use super::{fingerprint, DurableMessage, FeedStream, PendingRequests};

/// Pairs core requests with their stream copies and hands stream copies to the runner.
///
/// Core copies are polled first (`biased`), and once more before a stream copy is matched:
/// the server writes a request's core copy to this connection before the stream's copy, and
/// the client hands them to their subscriptions in that order, so a request seen on the
/// socket before its stream copy is always recorded by then. In a cluster the stream copy
/// may come first: with `pairing_wait` > 0 an unclaimed stream copy is held that long for
/// its core copy. Held messages leave in arrival order, so a wait never reorders messages;
/// a backlog fetched at once waits once, not once per message.
pub(super) async fn pump(
    mut cores: SelectAll<async_nats::Subscriber>,
    mut feeds: SelectAll<FeedStream>,
    tx: mpsc::Sender<DurableMessage>,
    agent: String,
    held: Held,
    pairing_wait: Duration,
    max_held: usize,
) {
    let mut pending = PendingRequests::default();
    loop {
        // Hand over, in order, every message at the front that is claimed or waited enough.
        while held.front_ready(&mut pending) {
            let Some(permit) = reserve(&tx, &mut cores, &mut pending).await else {
                return;
            };
            let out = held
                .pop_front()
                .expect("only the pump takes from the front");
            permit.send(out);
        }
        let front_due = held.front_due();
        let m = tokio::select! {
            biased;
            Some(core) = cores.next() => {
                record(&mut pending, core);
                continue;
            }
            () = sleep_until(front_due) => continue,
            Some(m) = feeds.next(), if held.len() < max_held => m,
            else => {
                tracing::warn!(agent = %agent, "durable delivery: every consumer and subscription ended");
                return;
            }
        };
        while let Some(Some(core)) = cores.next().now_or_never() {
            record(&mut pending, core);
        }
        let (sequence, delivered) = match m.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
            Err(e) => {
                tracing::warn!(agent = %agent, "durable delivery: a message without JetStream metadata ({e}); skipped");
                continue;
            }
        };
        let (message, acker) = m.split();
        let mut msg = crate::bus::nats::from_nats(message);
        let key = fingerprint(&msg.subject, &msg.headers, &msg.payload);
        let now = Instant::now();
        msg.reply_to = pending.take(key, now);
        // `checked_add`: a wait too long for the clock means "until a request comes".
        let due = match msg.reply_to {
            Some(_) => now,
            None => now
                .checked_add(pairing_wait)
                .unwrap_or(now + Duration::from_secs(86_400)),
        };
        let out = DurableMessage {
            msg,
            acker: Arc::new(acker),
            sequence,
            delivered,
        };
        held.push_back(out, key, due);
    }
}

/// Stream copies the pump fetched and has not handed to the runner, in arrival order, each
/// with its fingerprint and when it leaves unclaimed. Shared with the inbox so that a stop
/// hands them back to the server (nak) instead of leaving them to come back after
/// `ack_wait`, behind newer messages. The lock is never held across an await.
#[derive(Clone, Default)]
pub(super) struct Held(Arc<std::sync::Mutex<VecDeque<(DurableMessage, u64, Instant)>>>);

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(DurableMessage, u64, Instant)>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push_back(&self, out: DurableMessage, key: u64, due: Instant) {
        self.lock().push_back((out, key, due));
    }

    /// Whether the front may go to the runner: a request claimed it (now or before), or it
    /// has waited `pairing_wait` for one.
    fn front_ready(&self, pending: &mut PendingRequests) -> bool {
        let mut held = self.lock();
        let Some((out, key, due)) = held.front_mut() else {
            return false;
        };
        if out.msg.reply_to.is_none() {
            out.msg.reply_to = pending.take(*key, Instant::now());
        }
        out.msg.reply_to.is_some() || *due <= Instant::now()
    }

    fn front_due(&self) -> Option<Instant> {
        self.lock().front().map(|(_, _, due)| *due)
    }

    fn pop_front(&self) -> Option<DurableMessage> {
        self.lock().pop_front().map(|(out, _, _)| out)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    pub(super) fn take_all(&self) -> Vec<DurableMessage> {
        self.lock().drain(..).map(|(out, _, _)| out).collect()
    }
}

/// Remembers a core copy that carries a reply subject, for its stream copy to take.
fn record(pending: &mut PendingRequests, m: async_nats::Message) {
    if let Some(reply) = m.reply.clone() {
        let m = crate::bus::nats::from_nats(m);
        let key = fingerprint(&m.subject, &m.headers, &m.payload);
        pending.record(key, reply.to_string(), Instant::now());
    }
}

/// Waits until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Waits for room in the runner's queue; `None` when the runner is gone. While the runner
/// is busy, keeps recording requests: a core subscription left unread would fill and drop
/// them (a slow consumer), and their replies with them.
async fn reserve<'a>(
    tx: &'a mpsc::Sender<DurableMessage>,
    cores: &mut SelectAll<async_nats::Subscriber>,
    pending: &mut PendingRequests,
) -> Option<mpsc::Permit<'a, DurableMessage>> {
    loop {
        tokio::select! {
            biased;
            Some(core) = cores.next() => record(pending, core),
            permit = tx.reserve() => return permit.ok(),
        }
    }
}
