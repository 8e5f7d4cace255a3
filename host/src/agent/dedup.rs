//! Drops a message delivered twice: once by id (`Nats-Msg-Id`) within a window, and once
//! by subject precedence when one publish matched two of the agent's patterns.

use std::collections::{HashSet, VecDeque};

/// The last `window` message ids an agent saw.
pub struct SeenIds {
    order: VecDeque<String>,
    set: HashSet<String>,
    window: usize,
}

impl SeenIds {
    pub fn new(window: usize) -> SeenIds {
        // Grown on demand: most agents never see enough ids to fill a window, and thousands
        // of idle agents should not each hold one allocated up front.
        SeenIds {
            order: VecDeque::new(),
            set: HashSet::new(),
            window,
        }
    }

    /// Whether `id` is in the window, without recording it.
    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    /// Records `id`; false when it was already seen (a duplicate).
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.window == 0 {
            return true;
        }
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.window {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(id.to_string());
        self.set.insert(id.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_seen_within_the_window_is_a_duplicate() {
        let mut seen = SeenIds::new(2);
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        assert!(seen.first_time("b"));
        assert!(seen.first_time("c"));
        assert!(seen.first_time("a"), "a fell out of the window of 2");
    }
}
