//! The subscriptions the host holds for an agent, and the precedence that drops the second
//! copy of a message one publish delivered through two of them.

use crate::bus::{BusMessage, Subscription};
use crate::subjects;

use super::durable::DurableInbox;

/// Why a durable manifest cannot load on the embedded bus, and what to do.
pub const DURABLE_NEEDS_NATS: &str = "field subscriptions.durable: durable delivery needs NATS JetStream, and this node runs on the embedded bus (which keeps no messages); set [nats] url in the node config or NATS_URL, or set durable = false";

/// Which of the agent's subscriptions a message came through, highest precedence first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    Legacy,
    AgentRef,
    Broadcast,
}

/// The agent's subscriptions (each may be turned off in the manifest), or for a durable
/// agent its JetStream consumers.
pub struct Inbox {
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
        capacity: usize,
    ) -> anyhow::Result<(Inbox, Vec<String>)> {
        if !subs.durable {
            return Inbox::subscribe(parts, subs, capacity)
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
            legacy: None,
            agent_ref: None,
            broadcast: None,
            durable: Some(inbox),
            first: 0,
        };
        Ok((inbox, patterns))
    }

    /// Subscribes the patterns the manifest turns on; returns them for the startup log too.
    /// Each drops into the agent's `mailbox_dropped` as well as the bus-wide count.
    async fn subscribe(
        parts: &super::runner::RunnerParts,
        subs: &crate::manifest::Subscriptions,
        capacity: usize,
    ) -> Result<(Inbox, Vec<String>), crate::bus::BusError> {
        let identity = &parts.identity;
        let mut patterns = Vec::new();
        let mut one = async |on: bool, pattern: String| {
            if !on {
                return Ok(None);
            }
            let sub = parts.bus.subscribe(&pattern, capacity).await?;
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

    /// Whether a message that came through `via` will also come through a subscription of
    /// higher precedence (one publish matching two patterns): then this copy is dropped.
    pub fn delivered_earlier(&self, via: Via, subject: &str) -> bool {
        let matches = |s: &Option<Subscription>| {
            s.as_ref()
                .is_some_and(|s| subjects::matches(s.pattern(), subject))
        };
        match via {
            Via::Legacy => false,
            Via::AgentRef => matches(&self.legacy),
            Via::Broadcast => matches(&self.legacy) || matches(&self.agent_ref),
        }
    }
}

pub async fn next_from(sub: &mut Option<Subscription>) -> Option<BusMessage> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}
