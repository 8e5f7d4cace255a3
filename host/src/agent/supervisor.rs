//! The supervisor half of an agent's runner: a trap kills only the instance, which is
//! re-created from the last snapshot with exponential backoff; a message that traps
//! `max_traps_per_message` times goes to `agent.dlq.{name}` with the error; an agent that
//! keeps trapping without handling a message is marked failed and left alone.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::limits::LimitHit;
use super::runner::Runner;
use super::status::AgentState;
use crate::bindings::Message;
use crate::bus::BusMessage;
use crate::convert::{empty_wit_message, fill_wit_message, from_wit_message};
use crate::subjects;

/// Restarts in a row without a successful message before an agent is marked failed.
pub const MAX_CONSECUTIVE_RESTARTS: u32 = 8;
/// Backoff before the second restart in a row; it doubles with each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The backoff stops doubling here (10 ms << 8 = 2.56 s).
const MAX_BACKOFF_DOUBLINGS: u32 = 8;

/// What became of a message [`Runner::deliver`] handed to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// `handle` returned Ok.
    Handled,
    /// `handle` returned this error (a core message is done then; a durable one is retried).
    Refused(String),
    /// It trapped `max_traps_per_message` times and went to the dead-letter subject.
    DeadLettered,
    /// The agent is marked failed and handles nothing more.
    AgentFailed,
}

impl Runner {
    /// Hands one message to `handle`, retrying after traps.
    pub(super) async fn deliver(&mut self, msg: BusMessage) -> Outcome {
        let mut wit_msg = std::mem::replace(&mut self.wit_message, empty_wit_message());
        fill_wit_message(&mut wit_msg, msg);
        let outcome = self.deliver_wit(&wit_msg).await;
        self.wit_message = wit_msg;
        outcome
    }

    /// [`Self::deliver`] of the message as the guest gets it.
    async fn deliver_wit(&mut self, wit_msg: &Message) -> Outcome {
        let mut traps = 0u32;
        let outcome = loop {
            match self.handle_once(wit_msg).await {
                Ok(None) => break Outcome::Handled,
                Ok(Some(error)) => break Outcome::Refused(error),
                Err(text) => {
                    traps += 1;
                    tracing::error!(agent = %self.parts.identity.name, message = %wit_msg.id, attempt = traps, "trapped: {text}");
                    self.parts.status.set_error(format!("trap: {text}"));
                    // Boxed, in a statement of its own so that its future is not kept in
                    // this one's: re-instantiating is the largest future of a delivery, and
                    // every message would carry (and copy) its size for the rare trap.
                    let restarted = Box::pin(self.restart());
                    if !restarted.await {
                        return Outcome::AgentFailed;
                    }
                    if traps >= self.parts.max_traps_per_message {
                        let why = format!("trapped {traps} times: {text}");
                        self.dead_letter(from_wit_message(wit_msg), &why).await;
                        break Outcome::DeadLettered;
                    }
                }
            }
        };
        self.since_snapshot += 1;
        if self.parts.snapshot_every > 0 && self.since_snapshot >= self.parts.snapshot_every {
            // Boxed like the restart above: a snapshot may restart the instance too.
            let snapshot = Box::pin(self.snapshot_to_store());
            snapshot.await;
        }
        outcome
    }

    /// One `handle` call: Ok(None) when it returned Ok, Ok(Some(error)) when it returned an
    /// error, Err only for a trap (the instance is then gone), with its cause.
    async fn handle_once(&mut self, msg: &Message) -> Result<Option<String>, String> {
        let p = &self.parts;
        let live = self
            .live
            .as_mut()
            .expect("a live instance between restarts");
        live.begin_turn(msg.reply_to.as_deref(), p.limits.cpu_per_message);
        let result = live.call_handle(msg).await;
        let took = live.since_call_start();
        p.metrics.latency.observe(took.as_secs_f64());
        match result {
            Ok(Ok(())) => {
                p.metrics.handled.inc();
                self.consecutive_restarts = 0;
                Ok(None)
            }
            Ok(Err(e)) => {
                p.metrics.errors.inc();
                tracing::debug!(agent = %p.identity.name, message = %msg.id, "handle returned an error: {e}");
                p.status.set_error(format!("handle {}: {e}", msg.subject));
                self.consecutive_restarts = 0;
                Ok(Some(e))
            }
            Err(trap) => {
                let text = self.instance_trapped(&trap);
                Err(text)
            }
        }
    }

    /// Counts a trap of the live instance, drops the instance and says what happened.
    pub(super) fn instance_trapped(&mut self, trap: &wasmtime::Error) -> String {
        let p = &self.parts;
        p.metrics.traps.inc();
        let (text, hit) = match &self.live {
            Some(live) => live.describe_trap(trap),
            None => (format!("{trap:#}"), None),
        };
        let counter = match hit {
            Some(LimitHit::Cpu) => Some(&p.metrics.limits.cpu),
            Some(LimitHit::Stack) => Some(&p.metrics.limits.stack),
            Some(LimitHit::HostCall) => Some(&p.metrics.limits.host_call),
            Some(LimitHit::Lifecycle) => Some(&p.metrics.limits.lifecycle),
            None => None,
        };
        if let Some(counter) = counter {
            counter.inc();
        }
        tracing::debug!(agent = %p.identity.name, "trap in detail: {trap:?}");
        self.live = None;
        text
    }

    /// Re-creates the instance from the last snapshot, backing off when it keeps failing.
    /// False when the agent is marked failed (it then handles nothing more).
    pub(super) async fn restart(&mut self) -> bool {
        self.parts.status.set_state(AgentState::Restarting);
        loop {
            self.consecutive_restarts += 1;
            if self.consecutive_restarts > MAX_CONSECUTIVE_RESTARTS {
                self.mark_failed();
                return false;
            }
            self.parts.status.restarts.fetch_add(1, Ordering::Relaxed);
            if self.consecutive_restarts > 1 {
                let doublings = (self.consecutive_restarts - 2).min(MAX_BACKOFF_DOUBLINGS);
                tokio::time::sleep(FIRST_BACKOFF * (1 << doublings)).await;
            }
            match self.fresh_instance().await {
                Ok(live) => {
                    self.live = Some(live);
                    self.parts.status.set_state(AgentState::Running);
                    return true;
                }
                Err(e) => {
                    tracing::error!(agent = %self.parts.identity.name, "restart failed: {e:#}");
                    self.parts.status.set_error(format!("restart: {e:#}"));
                }
            }
        }
    }

    fn mark_failed(&mut self) {
        let p = &self.parts;
        let why = p
            .status
            .last_error
            .lock()
            .expect("status lock")
            .clone()
            .unwrap_or_default();
        p.status.set_state(AgentState::Failed);
        p.status.record(
            &p.identity.name,
            format!(
                "marked failed: restarted {MAX_CONSECUTIVE_RESTARTS} times in a row without handling a message (last: {why}); it is not restarted again: fix it and `host unload` + `host load` it"
            ),
        );
        tracing::error!(agent = %p.identity.name, "Agent '{}' failed: {MAX_CONSECUTIVE_RESTARTS} restarts in a row without handling a message; it stops here, the node carries on", p.identity.name);
    }

    /// Publishes `msg` to `agent.dlq.{name}` with `error` in the Agent-Error header.
    pub(super) async fn dead_letter(&mut self, msg: BusMessage, error: &str) {
        let p = &self.parts;
        p.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
        let mut headers = msg.headers.clone();
        headers.push((
            subjects::ERROR_HEADER.to_string(),
            error.replace(['\r', '\n'], " "),
        ));
        headers.push(("Agent-Original-Subject".to_string(), msg.subject.clone()));
        let dlq = subjects::dead_letter(&p.identity.name);
        let out = BusMessage {
            subject: dlq.clone(),
            reply_to: None,
            headers,
            payload: msg.payload,
        };
        tracing::warn!(agent = %p.identity.name, subject = %msg.subject, "message sent to {dlq}: {error}");
        if let Err(e) = p.bus.publish(out).await {
            tracing::error!(agent = %p.identity.name, "cannot publish to {dlq}: {e}");
        }
    }
}
