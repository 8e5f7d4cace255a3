//! The subscriptions the host holds for an agent, and the precedence that drops the second
//! copy of a message one publish delivered through two of them.

use crate::bus::{BusMessage, MailboxLimits, Subscription};
use crate::subjects;

use super::durable::DurableInbox;
use super::Identity;

/// Why a durable manifest cannot load on the embedded bus, and what to do.
pub const DURABLE_NEEDS_NATS: &str = "field subscriptions.durable: durable delivery needs NATS JetStream, and this node runs on the embedded bus (which keeps no messages); set [nats] url in the node config or NATS_URL, or set durable = false";

/// Which of the agent's subscriptions a message came through, highest precedence first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    Legacy,
    AgentRef,
    Broadcast,
}

/// What the runner does with a message one of the agent's subscriptions brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Hand it to `handle`.
    Deliver,
    /// A subscription of higher precedence brings (or brought) the same publish: drop this
    /// copy silently.
    Duplicate,
    /// It came only through the agent-ref pattern `agent.*.*.{id}.command.>`, and its subject
    /// names another cluster or agent than this one: a forged or stale reference, dropped
    /// and counted (`misaddressed_dropped`), so a reference built from one agent's name and
    /// another's id reaches neither.
    Misaddressed,
}

/// Whether an agent-ref command subject `agent.{cluster}.{name}.{id}.command.…` names `me`
/// by cluster and name (the id already matched the subscription).
pub fn names_me(me: &Identity, subject: &str) -> bool {
    let mut tokens = subject.split('.').skip(1);
    tokens.next() == Some(me.cluster.as_str()) && tokens.next() == Some(me.name.as_str())
}

/// For a durable agent, whose consumers bring each stored message once per pattern: whether
/// `subject` reached it only through its agent-ref pattern while naming another agent.
pub fn misaddressed_durable(me: &Identity, subject: &str) -> bool {
    subjects::matches(&subjects::agent_ref_commands(&me.id), subject)
        && !subjects::matches(&subjects::legacy_inbox(&me.name), subject)
        && !subjects::matches(&subjects::broadcast(), subject)
        && !names_me(me, subject)
}

/// The agent's subscriptions (each may be turned off in the manifest), or for a durable
/// agent its JetStream consumers.
pub struct Inbox {
    /// Whose inbox this is: agent-ref commands must name it.
    me: Identity,
    pub legacy: Option<Subscription>,
    pub agent_ref: Option<Subscription>,
    pub broadcast: Option<Subscription>,
    pub durable: Option<DurableInbox>,
    /// Which core subscription [`Inbox::try_next`] looks at first, turn by turn, so a busy
    /// one does not starve the others.
    first: usize,
}

impl Inbox {
    /// Core subscriptions, or with `[subscriptions] durable = true` the agent's consumers
    /// (refused on the embedded bus, which keeps nothing).
    pub async fn open(
        parts: &super::runner::RunnerParts,
        subs: &crate::manifest::Subscriptions,
        mailbox: MailboxLimits,
    ) -> anyhow::Result<(Inbox, Vec<String>)> {
        if !subs.durable {
            return Inbox::subscribe(parts, subs, mailbox)
                .await
                .map_err(|e| anyhow::anyhow!("cannot subscribe: {e}"));
        }
        let durable = parts
            .durable
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("{}", DURABLE_NEEDS_NATS))?;
        let (inbox, patterns) = durable
            .open(
                &parts.identity,
                subs,
                parts.dedup_window,
                parts.metrics.clone(),
            )
            .await?;
        let inbox = Inbox {
            me: parts.identity.clone(),
            legacy: None,
            agent_ref: None,
            broadcast: None,
            durable: Some(inbox),
            first: 0,
        };
        Ok((inbox, patterns))
    }

    /// Subscribes the patterns the manifest turns on; returns them for the startup log too.
    /// Each holds up to `mailbox.messages` messages, and all of them together share the
    /// mailbox's byte budget. Each drops into the agent's `mailbox_dropped` as well as the
    /// bus-wide count.
    async fn subscribe(
        parts: &super::runner::RunnerParts,
        subs: &crate::manifest::Subscriptions,
        mailbox: MailboxLimits,
    ) -> Result<(Inbox, Vec<String>), crate::bus::BusError> {
        let identity = &parts.identity;
        let mut patterns = Vec::new();
        let mut one = async |on: bool, pattern: String| {
            if !on {
                return Ok(None);
            }
            let sub = parts.bus.subscribe_with(&pattern, mailbox.clone()).await?;
            let dropped = parts.metrics.dropped.clone();
            sub.report_drops_to(move || {
                dropped.inc();
            });
            patterns.push(pattern);
            Ok::<_, crate::bus::BusError>(Some(sub))
        };
        let legacy = one(subs.legacy, subjects::legacy_inbox(&identity.name)).await?;
        let agent_ref = one(subs.agent_ref, subjects::agent_ref_commands(&identity.id)).await?;
        let broadcast = one(subs.broadcast, subjects::broadcast()).await?;
        let inbox = Inbox {
            me: identity.clone(),
            legacy,
            agent_ref,
            broadcast,
            durable: None,
            first: 0,
        };
        Ok((inbox, patterns))
    }

    /// A message one of the core subscriptions already holds, without waiting; the
    /// subscription looked at first changes with every call.
    pub fn try_next(&mut self) -> Option<(BusMessage, Via)> {
        const ORDER: [Via; 3] = [Via::Legacy, Via::AgentRef, Via::Broadcast];
        for turn in 0..ORDER.len() {
            let via = ORDER[(self.first + turn) % ORDER.len()];
            let sub = match via {
                Via::Legacy => &mut self.legacy,
                Via::AgentRef => &mut self.agent_ref,
                Via::Broadcast => &mut self.broadcast,
            };
            if let Some(msg) = sub.as_mut().and_then(Subscription::try_next) {
                self.first = (self.first + 1) % ORDER.len();
                return Some((msg, via));
            }
        }
        None
    }

    /// What to do with a message that came through `via`: a copy that a subscription of
    /// higher precedence also brings (one publish matching two patterns) is a duplicate; an
    /// agent-ref command naming another agent is misaddressed.
    pub fn claim(&self, via: Via, subject: &str) -> Claim {
        let matches = |s: &Option<Subscription>| {
            s.as_ref()
                .is_some_and(|s| subjects::matches(s.pattern(), subject))
        };
        // A broadcast whose subject also has this agent's id in the agent-ref position is a
        // broadcast still: the agent-ref copy delivers it, the broadcast copy is dropped.
        let agent_ref_takes = || names_me(&self.me, subject) || matches(&self.broadcast);
        match via {
            Via::Legacy => Claim::Deliver,
            Via::AgentRef if matches(&self.legacy) => Claim::Duplicate,
            Via::AgentRef if !agent_ref_takes() => Claim::Misaddressed,
            Via::AgentRef => Claim::Deliver,
            Via::Broadcast if matches(&self.legacy) => Claim::Duplicate,
            Via::Broadcast if matches(&self.agent_ref) && agent_ref_takes() => Claim::Duplicate,
            Via::Broadcast => Claim::Deliver,
        }
    }
}

pub async fn next_from(sub: &mut Option<Subscription>) -> Option<BusMessage> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity::new("ops", "victim-u", "01936f11-4ea2-7000-8000-000000000001")
    }

    #[test]
    fn an_agent_ref_command_must_name_the_cluster_and_agent_that_own_the_id() {
        let me = me();
        let id = &me.id;
        assert!(names_me(&me, &format!("agent.ops.victim-u.{id}.command.x")));
        assert!(!names_me(&me, &format!("agent.ops.admin-u.{id}.command.x")));
        assert!(!names_me(
            &me,
            &format!("agent.other.victim-u.{id}.command.x")
        ));
        assert!(!names_me(&me, "agent"));
    }

    #[test]
    fn a_durable_message_is_misaddressed_only_when_nothing_but_the_forged_reference_brought_it() {
        let me = me();
        let id = &me.id;
        let forged = format!("agent.ops.admin-u.{id}.command.x");
        assert!(misaddressed_durable(&me, &forged));
        for fine in [
            format!("agent.ops.victim-u.{id}.command.x"),
            format!("agent.to.victim-u.{id}.command.x"),
            format!("agent.broadcast.x.{id}.command.x"),
            "agent.to.victim-u.hello".to_string(),
        ] {
            assert!(!misaddressed_durable(&me, &fine), "{fine}");
        }
    }
}
