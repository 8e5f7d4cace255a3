//! The subscription index: which subscriptions a subject reaches.
//!
//! Publishing asks this index once per message, so matching must not scale with the number
//! of subscriptions. Literal patterns (reply inboxes, exact subjects) sit in one hash map and
//! cost a single lookup; wildcard patterns sit in a token trie whose walk costs one lookup
//! per subject token, however many agents have subscribed. Semantics are NATS's: `*` matches
//! exactly one token, `>` one or more trailing tokens.

use std::collections::HashMap;

/// Subscriptions of type `T` keyed by pattern, each with a caller-chosen unique id.
///
/// Public so the fuzz targets (host/fuzz) can check it against [`crate::subjects::matches`].
#[derive(Debug)]
pub struct Routes<T> {
    /// Patterns without wildcards, keyed by the whole subject: the fast path.
    exact: HashMap<Box<str>, Vec<(u64, T)>>,
    /// Patterns with `*` or `>`.
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    literal: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    /// Subscriptions whose pattern ends at this node.
    here: Vec<(u64, T)>,
    /// Subscriptions whose pattern is this node's path followed by `>`.
    tail: Vec<(u64, T)>,
}

impl<T> Default for Routes<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            literal: HashMap::new(),
            star: None,
            here: Vec::new(),
            tail: Vec::new(),
        }
    }
}

/// Splits off the first token: `("a", Some("b.c"))` for `"a.b.c"`.
fn split(s: &str) -> (&str, Option<&str>) {
    match s.split_once('.') {
        Some((token, rest)) => (token, Some(rest)),
        None => (s, None),
    }
}

fn has_wildcard(pattern: &str) -> bool {
    pattern.split('.').any(|t| t == "*" || t == ">")
}

/// Removes the entry with `id`; order among subscriptions of one pattern does not matter.
fn take<T>(entries: &mut Vec<(u64, T)>, id: u64) -> bool {
    match entries.iter().position(|(i, _)| *i == id) {
        Some(at) => {
            entries.swap_remove(at);
            true
        }
        None => false,
    }
}

impl<T> Routes<T> {
    /// Adds a subscription; `pattern` must be valid (see `subjects::validate_pattern`).
    pub fn insert(&mut self, pattern: &str, id: u64, value: T) {
        if has_wildcard(pattern) {
            self.root.insert(pattern, id, value);
        } else {
            self.exact
                .entry(pattern.into())
                .or_default()
                .push((id, value));
        }
        self.len += 1;
    }

    /// Removes the subscription `id` made with `pattern`, pruning emptied trie nodes so a
    /// churn of agents does not leave the index growing. Returns whether it was there.
    pub fn remove(&mut self, pattern: &str, id: u64) -> bool {
        let removed = if has_wildcard(pattern) {
            self.root.remove(pattern, id)
        } else {
            match self.exact.get_mut(pattern) {
                Some(entries) => {
                    let removed = take(entries, id);
                    if entries.is_empty() {
                        self.exact.remove(pattern);
                    }
                    removed
                }
                None => false,
            }
        };
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` once for every subscription whose pattern matches `subject` (a valid,
    /// wildcard-free subject). Allocates nothing.
    pub fn for_each_match<'a>(&'a self, subject: &str, mut f: impl FnMut(u64, &'a T)) {
        if let Some(entries) = self.exact.get(subject) {
            entries.iter().for_each(|(id, v)| f(*id, v));
        }
        if !self.root.is_empty() {
            self.root.visit(subject, &mut f);
        }
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds nothing at all, not even empty trie nodes.
    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.exact.is_empty() && self.root.is_empty()
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.tail.is_empty()
    }

    fn insert(&mut self, pattern: &str, id: u64, value: T) {
        let (token, rest) = split(pattern);
        if token == ">" {
            self.tail.push((id, value));
            return;
        }
        let child = if token == "*" {
            self.star.get_or_insert_with(Default::default)
        } else {
            self.literal.entry(token.into()).or_default()
        };
        match rest {
            None => child.here.push((id, value)),
            Some(rest) => child.insert(rest, id, value),
        }
    }

    fn remove(&mut self, pattern: &str, id: u64) -> bool {
        let (token, rest) = split(pattern);
        if token == ">" {
            return take(&mut self.tail, id);
        }
        let child = if token == "*" {
            self.star.as_deref_mut()
        } else {
            self.literal.get_mut(token)
        };
        let Some(child) = child else { return false };
        let removed = match rest {
            None => take(&mut child.here, id),
            Some(rest) => child.remove(rest, id),
        };
        if removed && child.is_empty() {
            if token == "*" {
                self.star = None;
            } else {
                self.literal.remove(token);
            }
        }
        removed
    }

    /// Visits matches of `subject`, which holds at least one token (the one below this node).
    fn visit<'a>(&'a self, subject: &str, f: &mut impl FnMut(u64, &'a T)) {
        // `>` here matches whatever remains, and at least one token does.
        self.tail.iter().for_each(|(id, v)| f(*id, v));
        let (token, rest) = split(subject);
        if let Some(child) = self.literal.get(token) {
            child.visit_below(rest, f);
        }
        if let Some(child) = self.star.as_deref() {
            child.visit_below(rest, f);
        }
    }

    fn visit_below<'a>(&'a self, rest: Option<&str>, f: &mut impl FnMut(u64, &'a T)) {
        match rest {
            None => self.here.iter().for_each(|(id, v)| f(*id, v)),
            Some(rest) => self.visit(rest, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subjects;

    fn matched(routes: &Routes<&'static str>, subject: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        routes.for_each_match(subject, |_, p| out.push(*p));
        out.sort();
        out
    }

    const PATTERNS: [&str; 12] = [
        ">",
        "agent.>",
        "agent.*",
        "agent.to.*.>",
        "agent.to.echo.>",
        "agent.to.echo.hi",
        "agent.*.*.id1.command.>",
        "agent.*.echo",
        "*.to.*",
        "*",
        "_INBOX.abc.1",
        "agent.to.echo",
    ];

    const SUBJECTS: [&str; 10] = [
        "agent",
        "agent.to",
        "agent.to.echo",
        "agent.to.echo.hi",
        "agent.to.echo.a.b",
        "agent.x.echo",
        "agent.orch.sage.id1.command.plan",
        "agent.orch.sage.id2.command.plan",
        "_INBOX.abc.1",
        "other.to.x",
    ];

    #[test]
    fn the_index_agrees_with_subjects_matches_on_every_pair() {
        let mut routes = Routes::default();
        for (id, p) in PATTERNS.iter().enumerate() {
            routes.insert(p, id as u64, *p);
        }
        for s in SUBJECTS {
            let mut expected: Vec<_> = PATTERNS
                .iter()
                .copied()
                .filter(|p| subjects::matches(p, s))
                .collect();
            expected.sort();
            assert_eq!(matched(&routes, s), expected, "subject {s}");
        }
    }

    #[test]
    fn the_same_pattern_twice_is_two_subscriptions() {
        let mut routes = Routes::default();
        routes.insert("a.*", 1, "first");
        routes.insert("a.*", 2, "second");
        assert_eq!(routes.len(), 2);
        assert_eq!(matched(&routes, "a.b"), ["first", "second"]);
        assert!(routes.remove("a.*", 1));
        assert_eq!(matched(&routes, "a.b"), ["second"]);
    }

    #[test]
    fn removing_every_subscription_prunes_the_trie_to_nothing() {
        let mut routes = Routes::default();
        for (id, p) in PATTERNS.iter().enumerate() {
            routes.insert(p, id as u64, *p);
        }
        for (id, p) in PATTERNS.iter().enumerate() {
            assert!(routes.remove(p, id as u64), "{p}");
        }
        assert!(routes.is_empty());
    }

    #[test]
    fn removing_an_unknown_id_or_pattern_changes_nothing() {
        let mut routes = Routes::default();
        routes.insert("a.>", 1, "a");
        assert!(!routes.remove("a.>", 2));
        assert!(!routes.remove("b.>", 1));
        assert!(!routes.remove("a.b", 1));
        assert_eq!(routes.len(), 1);
    }

    #[test]
    fn literal_patterns_use_the_exact_map_not_the_trie() {
        let mut routes = Routes::default();
        routes.insert("_INBOX.abc.1", 1, "inbox");
        assert!(routes.root.is_empty());
        assert_eq!(matched(&routes, "_INBOX.abc.1"), ["inbox"]);
        assert!(matched(&routes, "_INBOX.abc.2").is_empty());
    }
}
