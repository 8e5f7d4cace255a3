//! How much a subscriber may have queued: a count (the channel's capacity) and bytes
//! ([`ByteBudget`]). An agent's subscriptions share one budget (its mailbox), and every
//! agent's budget draws on the node's, so neither one busy receiver nor many of them can
//! queue the node's memory away: a message that does not fit is dropped and counted like
//! one that finds the buffer full.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How an agent's budget draws on the node's: in whole steps of this many bytes, so the
/// node's counter, shared by every agent on every thread, moves once per step of an agent's
/// traffic rather than twice per message. The node thereby sees each agent's queued bytes
/// rounded down to a step: its bound holds to within one step per agent.
pub const NODE_STEP: usize = 16 * 1024;

/// Bytes that queued messages may hold, optionally inside a larger budget they also draw on.
#[derive(Debug)]
pub struct ByteBudget {
    used: AtomicUsize,
    max: usize,
    parent: Option<Arc<ByteBudget>>,
}

impl ByteBudget {
    /// A budget of `max` bytes on its own (the node's).
    pub fn new(max: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            used: AtomicUsize::new(0),
            max,
            parent: None,
        })
    }

    /// A budget of `max` bytes that also draws on `parent` (an agent's, inside the node's),
    /// in steps of [`NODE_STEP`].
    pub fn within(parent: &Arc<ByteBudget>, max: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            used: AtomicUsize::new(0),
            max,
            parent: Some(parent.clone()),
        })
    }

    /// Takes `bytes` from this budget and its parent, or nothing when either is spent. A
    /// budget gives while it holds less than its maximum, so the one message that crosses it
    /// gets in (a message larger than a whole mailbox is not refused forever) and the budget
    /// is exceeded by at most one message.
    ///
    /// The parent is charged the steps this take crosses. Atomic updates of one counter are
    /// totally ordered, so the steps every take and give-back crosses add up to exactly the
    /// steps `used` holds: the parent always holds `⌊used / NODE_STEP⌋` steps for this
    /// budget, whatever the interleaving. A refused take is undone like a give-back, which
    /// returns whatever steps the undo crosses.
    pub fn try_take(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        let mut fits = before < self.max;
        if let Some(parent) = &self.parent {
            let steps = steps(before + bytes) - steps(before);
            if steps > 0 {
                fits &= parent.add_checked(steps * NODE_STEP);
            }
        }
        if !fits {
            self.give_back(bytes);
        }
        fits
    }

    /// Adds `bytes` whether or not they fit; whether this budget held less than its
    /// maximum before (the caller undoes the add when not).
    fn add_checked(&self, bytes: usize) -> bool {
        self.used.fetch_add(bytes, Ordering::Relaxed) < self.max
    }

    /// Gives back what [`ByteBudget::try_take`] took, here and (in steps) in the parent.
    pub fn give_back(&self, bytes: usize) {
        let before = self.used.fetch_sub(bytes, Ordering::Relaxed);
        if let Some(parent) = &self.parent {
            let steps = steps(before) - steps(before - bytes);
            if steps > 0 {
                parent.give_back(steps * NODE_STEP);
            }
        }
    }

    /// Bytes held now (for a parent: its children's bytes in whole steps).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most this budget gives (it may be passed by the one message that crosses it).
    pub fn max(&self) -> usize {
        self.max
    }
}

/// How many whole [`NODE_STEP`]s `bytes` hold.
fn steps(bytes: usize) -> usize {
    bytes / NODE_STEP
}

/// What one subscription may queue.
#[derive(Clone, Debug)]
pub struct MailboxLimits {
    /// Messages; at least 1.
    pub messages: usize,
    /// Bytes (payload and headers, see [`super::message_bytes`]), shared with whatever else
    /// holds the same budget; `None`: bounded by count only.
    pub bytes: Option<Arc<ByteBudget>>,
}

impl MailboxLimits {
    /// At most `messages` messages, any size.
    pub fn messages(messages: usize) -> MailboxLimits {
        MailboxLimits {
            messages,
            bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: usize = NODE_STEP;

    #[test]
    fn an_agent_budget_and_the_node_budget_both_bound_what_is_queued() {
        let node = ByteBudget::new(3 * STEP);
        let a = ByteBudget::within(&node, 2 * STEP);
        let b = ByteBudget::within(&node, 2 * STEP);
        assert!(a.try_take(STEP + STEP / 2));
        assert!(
            a.try_take(STEP + STEP / 2),
            "a crosses its bound with the one message that does"
        );
        assert!(!a.try_take(1), "then a is spent");
        assert_eq!((a.used(), node.used()), (3 * STEP, 3 * STEP));
        assert!(!b.try_take(STEP), "the node is spent: b gets nothing");
        assert_eq!(
            (b.used(), node.used()),
            (0, 3 * STEP),
            "a refusal takes nothing"
        );
        a.give_back(STEP + STEP / 2);
        assert!(b.try_take(STEP));
        assert_eq!(
            (a.used(), b.used(), node.used()),
            (STEP + STEP / 2, STEP, 2 * STEP)
        );
    }

    #[test]
    fn small_messages_move_the_node_counter_once_per_step_and_it_always_matches() {
        let node = ByteBudget::new(usize::MAX);
        let a = ByteBudget::within(&node, usize::MAX);
        for _ in 0..1000 {
            assert!(a.try_take(100));
        }
        assert_eq!(
            node.used(),
            (100_000 / STEP) * STEP,
            "the node sees whole steps"
        );
        for _ in 0..1000 {
            a.give_back(100);
        }
        assert_eq!((a.used(), node.used()), (0, 0), "everything comes back");
    }

    #[test]
    fn concurrent_takes_and_give_backs_leave_the_node_exactly_in_step() {
        let node = ByteBudget::new(usize::MAX);
        let a = ByteBudget::within(&node, usize::MAX);
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let a = a.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        let n = 37 + (i * 7919 + w * 104_729) % 5_000;
                        assert!(a.try_take(n));
                        a.give_back(n);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!((a.used(), node.used()), (0, 0));
    }
}
