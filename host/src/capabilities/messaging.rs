//! `agent:host/messaging`: publish, send to agents, request, request-many.
//!
//! Grants: `[messaging] publish` (subject patterns for publish and request) and
//! `[messaging] send` (agent names for send and agent-addressed requests). Replying to the
//! message being handled needs no grant. Every message the agent originates is charged to
//! its publish rate (`[limits] publish_per_second`, see [`super::rate`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::component::{HasData, Linker};

use super::rate::PublishRate;
use super::{deny, HostResult};
use crate::agent::{AgentStore, Identity, Turn};
use crate::bindings::agent::host::messaging::{self, AgentTarget, Destination, OutgoingRequest};
use crate::bindings::{Header, Message, WitError};
use crate::bus::{BusError, BusMessage, Transport, MAX_HEADERS};
use crate::convert::to_wit_message;
use crate::manifest::MessagingGrants;
use crate::subjects;
use crate::telemetry::AgentMetrics;

/// Headers an agent may set on one message: the bus carries [`MAX_HEADERS`], and the host
/// adds the sender's `Agent-Ref`.
pub const MAX_AGENT_HEADERS: usize = MAX_HEADERS - 1;

/// Most requests one `request-many` call may fan out.
pub const MAX_FAN_OUT: usize = 256;

/// Resolves agent names to references for the agent-ref subject scheme, and references
/// back to the agents they name, so a `send` by reference cannot reach an agent other than
/// the one it names.
pub trait Directory: Send + Sync {
    /// `(cluster, id)` of the agent named `name`, if this node knows it.
    fn lookup(&self, name: &str) -> Option<(String, String)>;
    /// `(cluster, name)` of the agent with id `id`, if this node knows it.
    fn lookup_id(&self, id: &str) -> Option<(String, String)>;
}

/// What the messaging import of one agent needs; shared by all its instances.
pub struct MessagingCtx {
    pub identity: Identity,
    pub grants: MessagingGrants,
    pub bus: Arc<dyn Transport>,
    pub directory: Arc<dyn Directory>,
    pub unified_subjects: bool,
    pub max_message_bytes: usize,
    pub max_timeout: Duration,
    pub metrics: Arc<AgentMetrics>,
    /// `[limits] publish_per_second`: every message the agent originates takes a token.
    pub publish_rate: PublishRate,
}

impl MessagingCtx {
    // ---- manifest checks -------------------------------------------------------------

    fn check_publish(&self, subject: &str, turn: &Turn) -> Result<(), WitError> {
        // The reply subject of the message being handled came in through the bus, which
        // carries only valid subjects (the transport checks again before sending).
        if turn.reply_to() == Some(subject) {
            return Ok(());
        }
        subjects::validate_subject(subject).map_err(WitError::Invalid)?;
        if self.grants.allows_publish(subject) {
            return Ok(());
        }
        Err(deny(
            &self.identity,
            &self.metrics,
            format!(
                "agent '{}' may not publish to '{subject}': add a matching pattern to [messaging] publish in its manifest, e.g. publish = [\"{subject}\"]",
                self.identity.name
            ),
        ))
    }

    fn check_send(&self, to_name: &str) -> Result<(), WitError> {
        if self.grants.allows_send_to(to_name) {
            return Ok(());
        }
        Err(deny(
            &self.identity,
            &self.metrics,
            format!(
                "agent '{}' may not send to agent '{to_name}': add \"{to_name}\" to [messaging] send in its manifest",
                self.identity.name
            ),
        ))
    }

    /// Bounds what one message carries, headers included: the bytes the host copied out
    /// of the agent for it are forwarded to the bus only when they fit. Headers are counted
    /// (at most [`MAX_AGENT_HEADERS`]) and weigh what they take on the wire, framing
    /// included (see [`crate::bus::header_bytes`]), so many empty headers are not free.
    fn check_size(&self, headers: &[Header], payload: &[u8]) -> Result<(), WitError> {
        let pairs = headers.iter().map(|h| (h.key.as_str(), h.value.as_str()));
        let header_bytes = crate::bus::check_headers(pairs, MAX_AGENT_HEADERS).map_err(|e| {
            WitError::Invalid(format!(
                "{e} (the host adds one more, the sender's {})",
                subjects::SENDER_HEADER
            ))
        })?;
        if payload.len().saturating_add(header_bytes) > self.max_message_bytes {
            let headers = if header_bytes > 0 {
                format!(" and its headers {header_bytes} bytes")
            } else {
                String::new()
            };
            return Err(WitError::Invalid(format!(
                "payload is {} bytes{headers}; at most {} allowed ([limits] max_message_bytes)",
                payload.len(),
                self.max_message_bytes
            )));
        }
        Ok(())
    }

    /// Charges one message to the publish rate, except the first reply of the turn.
    fn charge(&self, subject: &str, turn: &mut Turn) -> Result<(), WitError> {
        if !turn.replied && turn.reply_to() == Some(subject) {
            turn.replied = true;
            return Ok(());
        }
        self.publish_rate.take()
    }

    // ---- subjects --------------------------------------------------------------------

    /// The subject of `command` for `to`, on the scheme `unified_subjects` selects.
    ///
    /// Every token the agent supplies is checked to be one subject token of its kind, and a
    /// reference must name the granted agent: a known name with another agent's id (or an
    /// id known under another name) is refused, so no reference built from a granted name
    /// reaches an agent the grant does not cover. A reference to an agent this node does not
    /// know goes out as given; the receiving node drops it unless its cluster and name are
    /// those of the agent that owns the id (see `agent::inbox::Claim::Misaddressed`).
    fn command_subject(&self, to: &AgentTarget, command: &str) -> Result<String, WitError> {
        subjects::validate_command(command).map_err(WitError::Invalid)?;
        let (name, cluster_id) = match to {
            AgentTarget::Name(name) => (name.as_str(), None),
            AgentTarget::Agent(r) => (r.name.as_str(), Some((r.cluster.as_str(), r.id.as_str()))),
        };
        subjects::validate_name(name).map_err(|e| WitError::Invalid(format!("agent name: {e}")))?;
        if let Some((cluster, id)) = cluster_id {
            check_reference_tokens(cluster, id)?;
        }
        self.check_send(name)?;
        if let Some((cluster, id)) = cluster_id {
            self.check_reference_resolves(cluster, name, id)?;
        }
        if !self.unified_subjects {
            return Ok(subjects::legacy_command(name, command));
        }
        let known = || self.directory.lookup(name);
        match cluster_id
            .map(|(c, i)| (c.to_string(), i.to_string()))
            .or_else(known)
        {
            Some((cluster, id)) => Ok(subjects::agent_ref_command(&cluster, name, &id, command)),
            // An agent this node does not know yet: the legacy inbox still reaches it.
            None => Ok(subjects::legacy_command(name, command)),
        }
    }

    /// A reference `{cluster}.{name}.{id}` must be the one agent this node knows by that
    /// name and by that id: otherwise it is refused as `denied` (the id belongs to an agent
    /// the grant does not cover) or `invalid` (a granted agent, under a wrong reference).
    fn check_reference_resolves(
        &self,
        cluster: &str,
        name: &str,
        id: &str,
    ) -> Result<(), WitError> {
        let given = subjects::agent_ref_string(cluster, name, id);
        if let Some((owner_cluster, owner_name)) = self.directory.lookup_id(id) {
            if owner_name != name {
                let why = format!(
                    "agent '{}' may not send to {given}: id {id} is agent '{owner_cluster}.{owner_name}', not '{name}'; a reference must name the agent it reaches",
                    self.identity.name
                );
                return Err(match self.grants.allows_send_to(&owner_name) {
                    true => WitError::Invalid(why),
                    false => deny(&self.identity, &self.metrics, why),
                });
            }
        }
        match self.directory.lookup(name) {
            Some((c, i)) if c != cluster || i != id => Err(WitError::Invalid(format!(
                "{given} does not reach agent '{name}', which runs as {}; use runtime::self of that agent or send by name",
                subjects::agent_ref_string(&c, name, &i)
            ))),
            _ => Ok(()),
        }
    }

    fn destination_subject(&self, to: &Destination, turn: &Turn) -> Result<String, WitError> {
        match to {
            Destination::Subject(subject) => {
                self.check_publish(subject, turn)?;
                Ok(subject.clone())
            }
            Destination::Agent(cmd) => self.command_subject(&cmd.to, &cmd.command),
        }
    }

    /// A bus message from this agent, without the sender stamp: the transport adds it
    /// ([`Transport::publish_stamped`]), and a sender header the agent set is dropped.
    ///
    /// A `Nats-Msg-Id` the agent sets is the host's to own: it goes out as
    /// `{sender agent-ref}:{id}` (see [`owned_message_id`]), and only its first one. Receivers
    /// and JetStream drop a message whose id they saw within their window, so an id taken as
    /// given would let an agent publish a client's or another agent's id first and have
    /// that later message dropped everywhere; in the sender's own space it can only mark its
    /// own messages as copies of each other (a retry, or one command on both subject schemes).
    fn outgoing(&self, subject: String, headers: Vec<Header>, payload: Vec<u8>) -> BusMessage {
        let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
        let mut has_id = false;
        for h in headers {
            if h.key.eq_ignore_ascii_case(subjects::MSG_ID_HEADER) {
                if !std::mem::replace(&mut has_id, true) {
                    let id = owned_message_id(&self.identity.agent_ref, &h.value);
                    out.push((subjects::MSG_ID_HEADER.to_string(), id));
                }
            } else if !h.key.eq_ignore_ascii_case(subjects::SENDER_HEADER) {
                out.push((h.key, h.value));
            } else if h.value != self.identity.agent_ref {
                // The message still goes out, as this agent: report the forgery, refuse it.
                deny(
                    &self.identity,
                    &self.metrics,
                    format!(
                        "agent '{}' may not set the {} header (it gave {:?}); the host stamps it with the sender's own reference",
                        self.identity.name,
                        subjects::SENDER_HEADER,
                        h.value
                    ),
                );
            }
        }
        BusMessage {
            subject,
            reply_to: None,
            headers: out,
            payload: Bytes::from(payload),
        }
    }

    /// Publishes as this agent. `reply_to` is the reply subject of the message being
    /// handled: when that is where this goes, the error text takes the subject from it
    /// rather than from a copy made for every reply in case it fails.
    async fn publish_stamped(
        &self,
        subject: String,
        headers: Vec<Header>,
        payload: Vec<u8>,
        reply_to: Option<&str>,
    ) -> Result<(), WitError> {
        let copy = (reply_to != Some(subject.as_str())).then(|| subject.clone());
        let msg = self.outgoing(subject, headers, payload);
        let sent = self.bus.publish_stamped(msg, &self.identity.agent_ref);
        let result = super::within(self.max_timeout, sent).await;
        let subject = copy.as_deref().or(reply_to).unwrap_or_default();
        match result {
            Some(r) => r.map_err(|e| bus_error(e, subject)),
            None => Err(super::timed_out(
                &self.identity.name,
                &format!("a publish to '{subject}' ([defaults] host_call_timeout_ms)"),
                self.max_timeout,
            )),
        }
    }

    async fn request_one(
        &self,
        subject: String,
        headers: Vec<Header>,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Message, WitError> {
        self.check_size(&headers, &payload)?;
        let msg = self.outgoing(subject.clone(), headers, payload);
        // The transport times requests out itself (its error becomes `timeout`); the outer
        // bound, 50 ms later, holds only if the transport hangs. It stays inside the margin
        // (≥ 1 s) the host-call watch allows past host_call_timeout_ms, which caps
        // `timeout`, so the agent gets `timeout` before its instance would be abandoned.
        let hung = timeout + Duration::from_millis(50);
        let sent = self
            .bus
            .request_stamped(msg, &self.identity.agent_ref, timeout);
        match super::within(hung, sent).await {
            Some(Ok(reply)) => Ok(to_wit_message(reply)),
            Some(Err(e)) => Err(bus_error(e, &subject)),
            None => Err(super::timed_out(
                &self.identity.name,
                &format!("a request to '{subject}' (the bus did not time it out itself)"),
                hung,
            )),
        }
    }

    fn timeout(&self, timeout_ms: u32) -> Duration {
        Duration::from_millis(u64::from(timeout_ms)).min(self.max_timeout)
    }
}

/// The cluster and id of a reference an agent gave: each one subject token of its kind, so
/// the subject built from them has exactly the shape of an agent-ref command.
fn check_reference_tokens(cluster: &str, id: &str) -> Result<(), WitError> {
    subjects::validate_name(cluster)
        .map_err(|e| WitError::Invalid(format!("agent reference cluster: {e}")))?;
    if subjects::RESERVED_CLUSTERS.contains(&cluster) {
        return Err(WitError::Invalid(format!(
            "agent reference cluster: {cluster:?} is reserved (no agent runs in it); use the cluster from the agent's reference"
        )));
    }
    subjects::validate_agent_id(id)
        .map_err(|e| WitError::Invalid(format!("agent reference id: {e}")))
}

/// The `Nats-Msg-Id` a message from agent `sender` carries when the agent set `id`:
/// `{sender}:{id}`. An agent's ids live in its own space, so no agent can make a receiver
/// (or JetStream's duplicate window) drop a message of a client or of another agent.
fn owned_message_id(sender: &str, id: &str) -> String {
    let mut owned = String::with_capacity(sender.len() + 1 + id.len());
    owned.push_str(sender);
    owned.push(':');
    owned.push_str(id);
    owned
}

/// Maps a bus failure to the error the agent sees.
pub fn bus_error(e: BusError, subject: &str) -> WitError {
    match e {
        BusError::Timeout => WitError::Timeout,
        BusError::NoResponders(_) => {
            WitError::Unavailable(format!("nothing subscribes to '{subject}' (no responders)"))
        }
        BusError::InvalidSubject(why) | BusError::InvalidHeaders(why) => WitError::Invalid(why),
        BusError::TooLarge { size, max } => WitError::Invalid(format!(
            "message is {size} bytes; the bus accepts at most {max}"
        )),
        BusError::Unavailable(why) => WitError::Unavailable(why),
        BusError::Closed => WitError::Unavailable("the bus is shutting down".into()),
    }
}

/// The messaging import as seen from one call: the agent's context and its current turn.
pub struct MessagingView<'a> {
    ctx: &'a MessagingCtx,
    turn: &'a mut Turn,
}

impl<'a> MessagingView<'a> {
    /// The view a call from `store`'s agent sees (also used by native baseline handlers).
    pub fn of(store: &'a mut AgentStore) -> MessagingView<'a> {
        let AgentStore { caps, turn, .. } = store;
        MessagingView {
            ctx: &caps.messaging,
            turn,
        }
    }
}

struct MessagingData;

impl HasData for MessagingData {
    type Data<'a> = MessagingView<'a>;
}

pub fn add_to_linker(linker: &mut Linker<AgentStore>) -> wasmtime::Result<()> {
    messaging::add_to_linker::<AgentStore, MessagingData>(linker, |s| MessagingView::of(s))
}

impl messaging::Host for MessagingView<'_> {
    async fn publish(
        &mut self,
        subject: String,
        headers: Vec<Header>,
        payload: Vec<u8>,
    ) -> HostResult<()> {
        let ctx = self.ctx;
        if let Err(e) = ctx
            .check_publish(&subject, self.turn)
            .and_then(|_| ctx.check_size(&headers, &payload))
            .and_then(|_| ctx.charge(&subject, self.turn))
        {
            return Ok(Err(e));
        }
        let reply_to = self.turn.reply_to();
        Ok(ctx
            .publish_stamped(subject, headers, payload, reply_to)
            .await)
    }

    async fn send(
        &mut self,
        to: AgentTarget,
        command: String,
        headers: Vec<Header>,
        payload: Vec<u8>,
    ) -> HostResult<()> {
        let ctx = self.ctx;
        let subject = match ctx
            .command_subject(&to, &command)
            .and_then(|s| ctx.check_size(&headers, &payload).map(|_| s))
            .and_then(|s| ctx.publish_rate.take().map(|_| s))
        {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        Ok(ctx.publish_stamped(subject, headers, payload, None).await)
    }

    async fn request(
        &mut self,
        to: Destination,
        headers: Vec<Header>,
        payload: Vec<u8>,
        timeout_ms: u32,
    ) -> HostResult<Message> {
        let ctx = self.ctx;
        let subject = match ctx
            .destination_subject(&to, self.turn)
            .and_then(|s| ctx.publish_rate.take().map(|_| s))
        {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let result = ctx
            .request_one(subject, headers, payload, ctx.timeout(timeout_ms))
            .await;
        Ok(result)
    }

    async fn request_many(
        &mut self,
        requests: Vec<OutgoingRequest>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Vec<Result<Message, WitError>>> {
        let ctx = self.ctx;
        if requests.len() > MAX_FAN_OUT {
            let why = format!(
                "request-many got {} requests; at most {MAX_FAN_OUT} per call",
                requests.len()
            );
            return Ok(requests
                .iter()
                .map(|_| Err(WitError::Invalid(why.clone())))
                .collect());
        }
        let timeout = ctx.timeout(timeout_ms);
        let turn: &Turn = self.turn;
        let calls = requests.into_iter().map(|r| {
            let subject = ctx
                .destination_subject(&r.to, turn)
                .and_then(|s| ctx.publish_rate.take().map(|_| s));
            async move {
                match subject {
                    Ok(subject) => {
                        ctx.request_one(subject, r.headers, r.payload, timeout)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
        });
        let results = futures::future::join_all(calls).await;
        Ok(results)
    }
}
