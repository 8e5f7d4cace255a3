//! What the runner does with a durable message: hand it to `handle` (the same supervised
//! path as a core message), tell the server it is still being worked on while `handle` runs,
//! and then ack (handled), nak with backoff (`handle` returned an error) or dead-letter
//! (`max_deliver` reached, or it trapped `max_traps_per_message` times).

use async_nats::jetstream::AckKind;

use super::{acknowledge, DurableInbox, DurableMessage};
use crate::agent::runner::Runner;
use crate::agent::supervisor::Outcome;

impl Runner {
    /// Delivers one durable message; false when the agent failed (the message is then left
    /// unacknowledged, so it is redelivered once the agent runs again).
    pub(in crate::agent) async fn deliver_durable(
        &mut self,
        inbox: &mut DurableInbox,
        d: DurableMessage,
    ) -> bool {
        let agent = self.parts.identity.name.clone();
        let seq = d.sequence.to_string();
        if inbox.done.contains(&seq) {
            // Handled already: an ack that did not reach the server, or the copy a second
            // consumer of this agent brought. Ack it again; do not handle it again.
            self.parts.metrics.duplicates.inc();
            acknowledge(&agent, &d.acker, AckKind::Ack).await;
            return true;
        }
        let misaddressed =
            crate::agent::inbox::misaddressed_durable(&self.parts.identity, &d.msg.subject);
        let Some(msg) = self.admit(d.msg, misaddressed).await else {
            // Turned away for good: a redelivery would be turned away again.
            acknowledge(&agent, &d.acker, AckKind::Term).await;
            inbox.done.first_time(&seq);
            return true;
        };
        let d = DurableMessage { msg, ..d };
        let s = inbox.settings.clone();
        if d.delivered > s.max_deliver {
            let why = format!(
                "delivered {} times without being acknowledged (each time the node stopped, or handle outlived ack_wait)",
                d.delivered - 1
            );
            self.dead_letter(d.msg, &why).await;
            acknowledge(&agent, &d.acker, AckKind::Term).await;
            inbox.done.first_time(&seq);
            return true;
        }
        // Kept only for the last allowed delivery, which dead-letters the message if it fails.
        let last_try = d.delivered >= s.max_deliver;
        let copy = last_try.then(|| d.msg.clone());
        let acker = d.acker.clone();
        let outcome =
            with_progress(s.progress_interval(), &acker, self.deliver_routed(d.msg)).await;
        match outcome {
            Outcome::Handled | Outcome::DeadLettered => {
                acknowledge(&agent, &d.acker, AckKind::Ack).await;
                inbox.done.first_time(&seq);
            }
            Outcome::Refused(error) if last_try => {
                let why = format!(
                    "handle failed on each of {} deliveries; last error: {error}",
                    d.delivered
                );
                let copy = copy.expect("kept for the last try");
                self.dead_letter(copy, &why).await;
                acknowledge(&agent, &d.acker, AckKind::Term).await;
                inbox.done.first_time(&seq);
            }
            Outcome::Refused(error) => {
                // Not done: it comes again after the backoff.
                let delay = s.retry_delay(d.delivered);
                tracing::info!(agent = %agent, attempt = d.delivered, "handle failed ({error}); redelivery in {delay:?}");
                acknowledge(&agent, &d.acker, AckKind::Nak(Some(delay))).await;
            }
            Outcome::AgentFailed => return false,
        }
        true
    }
}

/// Runs `deliver`, telling the server every `every` that the message is still being worked
/// on, so a long `handle` (an LLM call) is not redelivered behind its back. Most messages are
/// handled in the first poll: those arm no timer and spawn nothing.
async fn with_progress<F: std::future::Future>(
    every: std::time::Duration,
    acker: &async_nats::jetstream::message::Acker,
    deliver: F,
) -> F::Output {
    let mut deliver = std::pin::pin!(deliver);
    if let std::task::Poll::Ready(done) = futures::poll!(deliver.as_mut()) {
        return done;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut told = true;
    loop {
        tokio::select! {
            biased;
            done = &mut deliver => return done,
            _ = tick.tick(), if told => {
                // A server that cannot be told now will not be told later either; the
                // message is redelivered after ack_wait and recognised then.
                told = acker.ack_with(AckKind::Progress).await.is_ok();
            }
        }
    }
}
