//! How much a subscriber may have queued: a count (the channel's capacity) and bytes
//! ([`ByteBudget`]). An agent's subscriptions share one budget (its mailbox), and every
//! agent's budget draws on the node's, so neither one busy receiver nor many of them can
//! queue the node's memory away: a message that does not fit is dropped and counted like
//! one that finds the buffer full.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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

    /// A budget of `max` bytes that also draws on `parent` (an agent's, inside the node's).
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
    pub fn try_take(&self, bytes: usize) -> bool {
        if !self.take_here(bytes) {
            return false;
        }
        match &self.parent {
            Some(parent) if !parent.try_take(bytes) => {
                self.used.fetch_sub(bytes, Ordering::Relaxed);
                false
            }
            _ => true,
        }
    }

    fn take_here(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before < self.max {
            return true;
        }
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        false
    }

    /// Gives back what [`ByteBudget::try_take`] took, here and in the parent.
    pub fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        if let Some(parent) = &self.parent {
            parent.give_back(bytes);
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most this budget gives (it may be passed by the one message that crosses it).
    pub fn max(&self) -> usize {
        self.max
    }
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

    #[test]
    fn an_agent_budget_and_the_node_budget_both_bound_what_is_queued() {
        let node = ByteBudget::new(300);
        let a = ByteBudget::within(&node, 200);
        let b = ByteBudget::within(&node, 200);
        assert!(a.try_take(150));
        assert!(
            a.try_take(150),
            "a crosses its 200 with the one message that does"
        );
        assert!(!a.try_take(1), "then a is spent");
        assert_eq!((a.used(), node.used()), (300, 300));
        assert!(!b.try_take(10), "the node is spent: b gets nothing");
        assert_eq!(b.used(), 0, "a refusal by the node takes nothing from b");
        a.give_back(150);
        assert!(b.try_take(10));
        assert_eq!((a.used(), b.used(), node.used()), (150, 10, 160));
    }
}
