//! The task between a durable agent's consumers and its runner: records core copies, pairs
//! each stream copy with its core copy (a request's gives it its reply subject), and hands
//! stream copies over in arrival order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::SelectAll;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use super::replies::{fingerprint_of, fingerprint_of_nats};
use super::replies::{CoreCopies, CoreCopy, ReplySubjects};
use super::{DurableMessage, FeedStream};
use crate::bus::BusMessage;
use crate::telemetry::AgentMetrics;

/// Pairs core copies with their stream copies and hands stream copies to the runner.
///
/// Core copies are polled first (`biased`), and once more before a stream copy is matched:
/// the server writes a message's core copy to this connection before the stream's copy, and
/// the client hands them to their subscriptions in that order, so on one server every
/// stream copy finds its core copy recorded. In a cluster the stream copy may come first:
/// with `pairing_wait` > 0 a fresh stream copy that found no core copy is held until it is
/// `pairing_wait` old (by its JetStream timestamp), or until its core copy comes. A stream
/// copy whose core copy was a plain publish, a redelivery, or a message older than the wait
/// (a backlog) is never held. Held messages leave in arrival order, so a wait never
/// reorders messages.
pub(super) async fn pump(
    sources: Sources,
    agent: String,
    held: Held,
    pairing_wait: Duration,
    max_held: usize,
    metrics: Arc<AgentMetrics>,
) {
    let Sources {
        mut cores,
        mut feeds,
        tx,
    } = sources;
    // A publish's mark matters while its stream copy could be held; twice the wait covers
    // a server clock that runs behind the node's by up to the wait.
    let mut pairing = Pairing {
        copies: CoreCopies::new(pairing_wait.saturating_mul(2)),
        replies: ReplySubjects::default(),
        mark_publishes: !pairing_wait.is_zero(),
    };
    loop {
        // Hand over, in order, every message at the front that is claimed or waited enough.
        while held.front_ready(&mut pairing, &metrics) {
            let Some(permit) = reserve(&tx, &mut cores, &mut pairing).await else {
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
                pairing.record(core);
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
            pairing.record(core);
        }
        let (sequence, delivered, published) = match m.info() {
            Ok(info) => (
                info.stream_sequence,
                info.delivered.max(1) as u32,
                info.published.unix_timestamp_nanos(),
            ),
            Err(e) => {
                tracing::warn!(agent = %agent, "durable delivery: a message without JetStream metadata ({e}); skipped");
                continue;
            }
        };
        let (message, acker) = m.split();
        let mut msg = crate::bus::nats::from_nats(message);
        let key = fingerprint_of(&msg);
        let now = Instant::now();
        let mut due = now;
        let mut waits = false;
        let claimed = if delivered > 1 {
            // Its core copy was claimed on the first delivery (or never came): the reply
            // subject, if it had one, is kept by sequence.
            msg.reply_to = pairing.replies.get(sequence, now);
            true
        } else if pairing.claim(key, sequence, &mut msg, now) {
            true
        } else {
            let wait = unclaimed_wait(pairing_wait, published, unix_nanos_now());
            waits = !wait.is_zero();
            // `checked_add`: a wait too long for the clock means "until its core copy comes".
            due = now
                .checked_add(wait)
                .unwrap_or(now + Duration::from_secs(86_400));
            false
        };
        let out = DurableMessage {
            msg,
            acker: Arc::new(acker),
            sequence,
            delivered,
        };
        held.push_back(HeldCopy {
            out,
            key,
            due,
            claimed,
            waits,
        });
    }
}

/// The pump's record of core copies, and of the reply subjects it handed out.
struct Pairing {
    copies: CoreCopies,
    replies: ReplySubjects,
    /// Whether plain publishes are recorded: only a pairing wait makes their mark useful.
    mark_publishes: bool,
}

impl Pairing {
    /// Remembers a core copy, for its stream copy to claim.
    fn record(&mut self, m: async_nats::Message) {
        if m.reply.is_none() && !self.mark_publishes {
            return;
        }
        let key = fingerprint_of_nats(&m);
        let copy = match m.reply {
            Some(reply) => CoreCopy::Request(reply.as_str().to_owned()),
            None => CoreCopy::Publish,
        };
        self.copies.record(key, copy, Instant::now());
    }

    /// Claims the core copy of stream copy `sequence` (fingerprint `key`), giving `msg` its
    /// reply subject if it was a request; false when no core copy is recorded.
    fn claim(&mut self, key: u64, sequence: u64, msg: &mut BusMessage, now: Instant) -> bool {
        match self.copies.take(key, now) {
            Some(CoreCopy::Request(reply)) => {
                self.replies.remember(sequence, reply.clone(), now);
                msg.reply_to = Some(reply);
                true
            }
            Some(CoreCopy::Publish) => true,
            None => false,
        }
    }
}

/// How long a fresh stream copy that found no core copy is held for one: until it is
/// `pairing_wait` old by the stream's timestamp (`published`, ns since the Unix epoch), so a
/// backlog published long ago is not held at all. A server clock ahead of the node's
/// (a negative age) counts as new; the wait never exceeds `pairing_wait`.
pub(super) fn unclaimed_wait(pairing_wait: Duration, published: i128, now: i128) -> Duration {
    let age = now.saturating_sub(published).clamp(0, i128::from(u64::MAX)) as u64;
    pairing_wait.saturating_sub(Duration::from_nanos(age))
}

fn unix_nanos_now() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// A stream copy the pump fetched and has not handed to the runner.
pub(super) struct HeldCopy {
    out: DurableMessage,
    /// Its fingerprint.
    key: u64,
    /// When it leaves without a core copy.
    due: Instant,
    /// Whether its core copy was found (or need not be looked for).
    claimed: bool,
    /// Whether it arrived fresh and unclaimed, to be held for its core copy.
    waits: bool,
}

/// Where the pump reads from and writes to.
pub(super) struct Sources {
    /// The core subscriptions to the agent's patterns.
    pub cores: SelectAll<async_nats::Subscriber>,
    /// The agent's consumers.
    pub feeds: SelectAll<FeedStream>,
    /// The runner's side.
    pub tx: mpsc::Sender<DurableMessage>,
}

/// Stream copies the pump fetched and has not handed to the runner, in arrival order.
/// Shared with the inbox so that a stop hands them back to the server (nak) instead of
/// leaving them to come back after `ack_wait`, behind newer messages. The lock is never held
/// across an await.
#[derive(Clone, Default)]
pub(super) struct Held(Arc<std::sync::Mutex<VecDeque<HeldCopy>>>);

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<HeldCopy>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push_back(&self, copy: HeldCopy) {
        self.lock().push_back(copy);
    }

    /// Whether the front may go to the runner: its core copy was found (now or before), or
    /// it has waited long enough for one.
    /// Counts the copies that waited: paired late, or not at all.
    fn front_ready(&self, pairing: &mut Pairing, metrics: &AgentMetrics) -> bool {
        let mut held = self.lock();
        let Some(front) = held.front_mut() else {
            return false;
        };
        let now = Instant::now();
        if !front.claimed {
            let (key, sequence) = (front.key, front.out.sequence);
            front.claimed = pairing.claim(key, sequence, &mut front.out.msg, now);
            if front.claimed && front.waits {
                metrics.durable_paired_late.inc();
            }
            if !front.claimed && front.waits && front.due <= now {
                metrics.durable_unpaired.inc();
            }
        }
        front.claimed || front.due <= now
    }

    fn front_due(&self) -> Option<Instant> {
        self.lock().front().map(|copy| copy.due)
    }

    fn pop_front(&self) -> Option<DurableMessage> {
        self.lock().pop_front().map(|copy| copy.out)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    pub(super) fn take_all(&self) -> Vec<DurableMessage> {
        self.lock().drain(..).map(|copy| copy.out).collect()
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
    pairing: &mut Pairing,
) -> Option<mpsc::Permit<'a, DurableMessage>> {
    loop {
        tokio::select! {
            biased;
            Some(core) = cores.next() => pairing.record(core),
            permit = tx.reserve() => return permit.ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(200);
    const MS: i128 = 1_000_000;

    #[test]
    fn an_unclaimed_stream_copy_waits_only_until_it_is_as_old_as_the_wait() {
        let published = 1_000_000 * MS;
        assert_eq!(unclaimed_wait(WAIT, published, published), WAIT);
        assert_eq!(
            unclaimed_wait(WAIT, published, published + 150 * MS),
            Duration::from_millis(50)
        );
        // A backlog stored long ago is not held at all.
        assert_eq!(
            unclaimed_wait(WAIT, published, published + 60_000 * MS),
            Duration::ZERO
        );
        // A server clock ahead of the node's: new, but never more than the wait.
        assert_eq!(
            unclaimed_wait(WAIT, published, published - 5_000 * MS),
            WAIT
        );
        assert_eq!(
            unclaimed_wait(Duration::ZERO, published, published),
            Duration::ZERO
        );
    }
}
