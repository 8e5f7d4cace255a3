//! Durable delivery (`[subscriptions] durable = true`; docs/design.md, Subjects): a durable
//! agent reads its messages from JetStream instead of core subscriptions, so a message published while the
//! agent (or its node) is down or busy waits for it, and a message is only done once the
//! agent's `handle` returned Ok.
//!
//! - One stream (`[nats] stream_name`, env `STREAM_NAME`, default `AGENT_MESSAGES`) over
//!   `agent.>`, with `no_ack` so that a core request to a core agent still gets that agent's
//!   reply rather than the stream's publish ack, and a duplicate window for `Nats-Msg-Id`.
//!   The node creates it (or adds what it lacks to an existing one) when it loads its first
//!   durable agent.
//! - Per durable agent and per enabled pattern one durable pull consumer named after the
//!   agent id (NATS refuses one consumer whose filters overlap, and the agent-ref pattern
//!   overlaps the others on paper). Explicit acks; new consumers start with new messages.
//! - Requests keep working: see `replies.rs`. Acks, progress acks, naks and the dead-letter
//!   path: see `deliver.rs`.
//!
//! The embedded bus keeps nothing, so a durable manifest there is refused at load.

mod deliver;
mod pulling;
mod pump;
mod replies;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream::Stream as JsStream, AckKind};
use futures::stream::SelectAll;
use futures::Stream;
use pulling::{PullError, PullFeed, PullSettings};
use tokio::sync::{mpsc, OnceCell};

use super::dedup::SeenIds;
use super::inbox::Via;
use super::Identity;
use crate::bus::BusMessage;
use crate::config::NatsSection;
use crate::manifest::Subscriptions;
use crate::subjects;
use crate::telemetry::AgentMetrics;

use pump::{pump, Held, Sources};

/// The subjects the stream covers.
const STREAM_SUBJECTS: &str = "agent.>";
/// Idle heartbeat of a consumer's pull requests: a pull request the server no longer holds
/// (a server that went away or restarted) is noticed within ~2 of these. A server that
/// holds a pull sends one per interval while it has nothing to deliver: one small message a
/// second per idle consumer.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the check of a consumer's state after a missed heartbeat may take.
const CONSUMER_INFO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one pull request stays open on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Wait before re-creating a consumer that went away.
const REOPEN_DELAY: Duration = Duration::from_millis(500);
/// Longest a load waits for the server to confirm the request subscriptions (one round trip
/// on a healthy connection).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest delay before a redelivery after `handle` returned an error.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// The node-wide settings of durable delivery, from `[nats]`.
#[derive(Debug, Clone)]
pub struct DurableSettings {
    pub stream: String,
    pub ack_wait: Duration,
    pub max_deliver: u32,
    pub retry_backoff: Duration,
    pub duplicate_window: Duration,
    pub max_ack_pending: u32,
    pub max_age: Duration,
    /// Copies of the stream when this node creates it (`[nats] stream_replicas`).
    pub replicas: usize,
    /// How old a stream copy may get while it waits for its core copy (`[nats]
    /// request_pairing_wait_ms`).
    pub pairing_wait: Duration,
}

impl DurableSettings {
    pub fn from_config(nats: &NatsSection) -> DurableSettings {
        DurableSettings {
            stream: nats.stream_name.clone(),
            ack_wait: Duration::from_millis(nats.ack_wait_ms),
            max_deliver: nats.max_deliver.max(1),
            retry_backoff: Duration::from_millis(nats.retry_backoff_ms),
            duplicate_window: Duration::from_secs(nats.duplicate_window_secs),
            max_ack_pending: nats.max_ack_pending.max(1),
            max_age: Duration::from_secs(nats.stream_max_age_secs),
            replicas: nats.stream_replicas.max(1) as usize,
            pairing_wait: Duration::from_millis(nats.request_pairing_wait_ms),
        }
    }

    /// The delay before redelivering a message whose `delivered`-th handling failed.
    pub fn retry_delay(&self, delivered: u32) -> Duration {
        let doublings = delivered.saturating_sub(1).min(16);
        (self.retry_backoff * (1u32 << doublings)).min(MAX_RETRY_DELAY)
    }

    /// How often a running `handle` tells the server it is still at it.
    pub fn progress_interval(&self) -> Duration {
        (self.ack_wait / 3).max(Duration::from_millis(50))
    }
}

/// JetStream for the node's durable agents: one per node on NATS, shared by its agents.
pub struct DurableDelivery {
    client: async_nats::Client,
    js: jetstream::Context,
    url: String,
    settings: Arc<DurableSettings>,
    stream: OnceCell<JsStream>,
}

/// A message from a durable agent's consumer, with what is needed to acknowledge it.
pub struct DurableMessage {
    /// With the reply subject of the core request it pairs with, if any.
    pub msg: BusMessage,
    pub acker: Arc<jetstream::message::Acker>,
    /// The stream sequence: one number per stored message, whichever consumer delivers it.
    pub sequence: u64,
    /// How many times the server has delivered it (1 the first time).
    pub delivered: u32,
}

/// A durable agent's source of messages: its consumers and request recorder, fed by one task
/// that lives as long as this (so across hot swaps, which keep the runner's inbox).
pub struct DurableInbox {
    rx: mpsc::Receiver<DurableMessage>,
    pump: Option<tokio::task::JoinHandle<()>>,
    /// What the pump fetched and has not handed to the runner yet (see [`Held`]).
    held: Held,
    client: async_nats::Client,
    agent: String,
    /// Stream sequences handled and acked: a redelivery of one (a lost ack, or the copy a
    /// second pattern's consumer brings) is acked again, not handled again.
    done: SeenIds,
    settings: Arc<DurableSettings>,
}

impl Drop for DurableInbox {
    fn drop(&mut self) {
        if let Some(pump) = &self.pump {
            pump.abort();
        }
    }
}

impl DurableInbox {
    /// Stops reading, for an agent that stops (unload, node shutdown). Messages already
    /// taken from the server but not handled are nak'ed so they come back at once rather
    /// than after `ack_wait`, and the consumers' pull subscriptions are gone on the server
    /// before this returns, so nothing published afterwards is delivered into them (it
    /// waits in the stream for the agent's next load, in order).
    pub async fn close(mut self) {
        if let Some(pump) = self.pump.take() {
            pump.abort();
            let _ = pump.await;
        }
        self.rx.close();
        let mut fetched = Vec::new();
        while let Ok(d) = self.rx.try_recv() {
            fetched.push(d);
        }
        fetched.extend(self.held.take_all());
        for d in fetched {
            acknowledge(&self.agent, &d.acker, AckKind::Nak(None)).await;
        }
        // The server handles one connection's commands in order: once it has answered this
        // request, it has processed the UNSUBs queued before it.
        let probe = format!("_HOST.sync.{}", uuid::Uuid::now_v7().simple());
        let request = async_nats::Request::new().timeout(Some(Duration::from_secs(2)));
        let _ = self.client.send_request(probe, request).await;
    }

    /// The next message; `None` once the feeding task ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<DurableMessage> {
        self.rx.recv().await
    }
}

/// Waits on the durable inbox, or forever for an agent without one.
pub async fn next_durable(inbox: &mut Option<DurableInbox>) -> Option<DurableMessage> {
    match inbox {
        Some(d) => d.next().await,
        None => std::future::pending().await,
    }
}

impl DurableDelivery {
    pub fn new(client: async_nats::Client, url: &str, settings: DurableSettings) -> Self {
        DurableDelivery {
            js: jetstream::new(client.clone()),
            client,
            url: url.to_string(),
            settings: Arc::new(settings),
            stream: OnceCell::new(),
        }
    }

    pub fn settings(&self) -> &DurableSettings {
        &self.settings
    }

    /// Creates the stream, or adds to an existing one what durable delivery needs (`agent.>`
    /// among its subjects, `no_ack`, a duplicate window at least as long as configured);
    /// other settings of an existing stream (storage, limits, replicas) are the operator's.
    pub async fn ensure_stream(&self) -> anyhow::Result<JsStream> {
        let stream = self
            .stream
            .get_or_try_init(|| async {
                self.warn_of_unpaired_requests();
                self.create_or_adapt_stream().await
            })
            .await?;
        Ok(stream.clone())
    }

    /// Logs [`unpaired_requests_warning`] once, if it applies.
    fn warn_of_unpaired_requests(&self) {
        let info = self.client.server_info();
        if let Some(text) =
            unpaired_requests_warning(self.settings.pairing_wait, info.cluster.as_deref())
        {
            tracing::warn!(url = %self.url, "{text}");
        }
    }

    async fn create_or_adapt_stream(&self) -> anyhow::Result<JsStream> {
        let s = &self.settings;
        let name = &s.stream;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "durable delivery: cannot {what} the JetStream stream '{name}' on NATS at {}: {e}; \
                 check that the server runs with JetStream (nats-server -js) and that no other stream \
                 covers {STREAM_SUBJECTS} ([nats] stream_name / STREAM_NAME names the one to use)",
                self.url
            )
        };
        match self.js.get_stream(name).await {
            Ok(mut stream) => {
                let mut config = stream
                    .info()
                    .await
                    .map_err(|e| fail("read", &e))?
                    .config
                    .clone();
                let mut changes = Vec::new();
                if !config
                    .subjects
                    .iter()
                    .any(|x| x == ">" || x == STREAM_SUBJECTS)
                {
                    config.subjects.push(STREAM_SUBJECTS.to_string());
                    changes.push(format!("subjects += {STREAM_SUBJECTS}"));
                }
                if !config.no_ack {
                    config.no_ack = true;
                    changes.push("no_ack = true".to_string());
                }
                if config.duplicate_window < s.duplicate_window {
                    config.duplicate_window = s.duplicate_window;
                    changes.push(format!("duplicate_window = {:?}", s.duplicate_window));
                }
                if config.num_replicas < s.replicas {
                    tracing::warn!(
                        stream = %name,
                        "durable delivery: the existing stream keeps {} cop{} where [nats] stream_replicas asks for {}; \
                         replicas of an existing stream are left to its operator (`nats stream edit {name} --replicas {}`)",
                        config.num_replicas,
                        if config.num_replicas == 1 { "y" } else { "ies" },
                        s.replicas,
                        s.replicas
                    );
                }
                if !changes.is_empty() {
                    self.js
                        .update_stream(config)
                        .await
                        .map_err(|e| fail("update", &e))?;
                    tracing::warn!(stream = %name, "durable delivery: updated the existing stream: {}", changes.join(", "));
                }
                tracing::info!(stream = %name, "durable delivery on the existing JetStream stream '{name}'");
                Ok(stream)
            }
            Err(_) => {
                let stream = self
                    .js
                    .create_stream(jetstream::stream::Config {
                        name: name.clone(),
                        subjects: vec![STREAM_SUBJECTS.to_string()],
                        no_ack: true,
                        duplicate_window: s.duplicate_window,
                        max_age: s.max_age,
                        num_replicas: s.replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| fail("create", &e))?;
                tracing::info!(stream = %name, "durable delivery: created the JetStream stream '{name}' over {STREAM_SUBJECTS}");
                Ok(stream)
            }
        }
    }

    /// Opens agent `identity`'s consumers (one per pattern `subs` turns on) and its request
    /// recorder; returns the inbox and the patterns, for the startup log.
    pub async fn open(
        &self,
        identity: &Identity,
        subs: &Subscriptions,
        dedup_window: usize,
        metrics: Arc<AgentMetrics>,
    ) -> anyhow::Result<(DurableInbox, Vec<String>)> {
        let stream = self.ensure_stream().await?;
        let s = self.settings.clone();
        let mut cores = SelectAll::new();
        let mut feeds = SelectAll::new();
        let mut patterns = Vec::new();
        for (via, on, pattern) in [
            (
                Via::Legacy,
                subs.legacy,
                subjects::legacy_inbox(&identity.name),
            ),
            (
                Via::AgentRef,
                subs.agent_ref,
                subjects::agent_ref_commands(&identity.id),
            ),
            (Via::Broadcast, subs.broadcast, subjects::broadcast()),
        ] {
            let consumer = subjects::durable_consumer(&identity.id, via_tag(via));
            if !on {
                // A pattern the manifest turned off since the last load: its backlog goes too.
                let _ = stream.delete_consumer(&consumer).await;
                continue;
            }
            let config = pull::Config {
                durable_name: Some(consumer.clone()),
                description: Some(format!("agent '{}' ({pattern})", identity.name)),
                filter_subject: pattern.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: s.ack_wait,
                // The host counts deliveries itself and dead-letters past max_deliver, so the
                // server never drops a message silently.
                max_deliver: -1,
                max_ack_pending: i64::from(s.max_ack_pending),
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                ..Default::default()
            };
            let feed = Feed {
                via,
                agent: identity.name.clone(),
                js: self.js.clone(),
                stream: stream.clone(),
                config,
                batch: s.max_ack_pending as usize,
                current: None,
                repull_now: false,
            };
            // Open once here so a bad setup fails the load instead of retrying forever.
            let feed = feed.opened().await?;
            feeds.push(feed.into_stream());
            let core = self.client.subscribe(pattern.clone()).await.map_err(|e| {
                anyhow::anyhow!("durable delivery: cannot subscribe to '{pattern}' on NATS at {} for requests: {e}", self.url)
            })?;
            cores.push(core);
            patterns.push(format!("{pattern} (durable: {} / {consumer})", s.stream));
        }
        // The server has the subscriptions before the agent is reported ready: a request
        // published right after the load must reach the request recorder, or its stream
        // copy finds no request to reply to (seen: the first of 100 concurrent requests got
        // no reply when only a flush stood here).
        crate::bus::nats::confirm_processed(
            &self.client,
            CONFIRM_TIMEOUT,
            &self.url,
            &format!("durable request subscriptions of agent '{}'", identity.name),
        )
        .await;
        let (tx, rx) = mpsc::channel(s.max_ack_pending as usize);
        let held = Held::default();
        let pump = tokio::spawn(pump(
            Sources { cores, feeds, tx },
            identity.name.clone(),
            held.clone(),
            s.pairing_wait,
            s.max_ack_pending as usize,
            metrics,
        ));
        let window = dedup_window.max(4 * s.max_ack_pending as usize);
        Ok((
            DurableInbox {
                rx,
                pump: Some(pump),
                held,
                client: self.client.clone(),
                agent: identity.name.clone(),
                done: SeenIds::new(window),
                settings: s,
            },
            patterns,
        ))
    }
}

/// On a server that is part of a cluster (`cluster`, from its INFO), a request's stream
/// copy can reach the node before its core copy; with the pairing wait turned off the agent
/// then handles it without a reply subject and the requester times out (seen: 6 of 100
/// concurrent requests, on a busy 2-core machine). What to tell the operator, if anything.
fn unpaired_requests_warning(pairing_wait: Duration, cluster: Option<&str>) -> Option<String> {
    let cluster = cluster.filter(|_| pairing_wait.is_zero())?;
    Some(format!(
        "durable delivery: the NATS server is part of cluster '{cluster}' and [nats] request_pairing_wait_ms is 0: a request to a durable agent from a client on another server can go unanswered when the stream's copy of it arrives first; remove the setting (default 500) if such requests must be answered"
    ))
}

fn via_tag(via: Via) -> &'static str {
    match via {
        Via::Legacy => "legacy",
        Via::AgentRef => "agent-ref",
        Via::Broadcast => "broadcast",
    }
}

type FeedStream = Pin<Box<dyn Stream<Item = jetstream::Message> + Send>>;

/// One consumer's messages, re-created when the consumer or its pull stream goes away (an
/// operator deleted it, or the server lost it), so the agent keeps reading without help.
struct Feed {
    via: Via,
    agent: String,
    js: jetstream::Context,
    stream: JsStream,
    config: pull::Config,
    batch: usize,
    current: Option<PullFeed>,
    /// Pull afresh without waiting: the last stream was dropped because the server holds
    /// no pull request of ours, not because the server went away.
    repull_now: bool,
}

impl Feed {
    async fn opened(mut self) -> anyhow::Result<Feed> {
        self.open().await?;
        Ok(self)
    }

    async fn open(&mut self) -> anyhow::Result<()> {
        let consumer = self.stream.create_consumer(self.config.clone()).await.map_err(|e| {
            anyhow::anyhow!(
                "durable delivery: cannot create the consumer '{}' of agent '{}' ({:?} pattern {}): {e}",
                self.config.durable_name.as_deref().unwrap_or_default(),
                self.agent,
                self.via,
                self.config.filter_subject
            )
        })?;
        let settings = PullSettings {
            batch: self.batch,
            expires: PULL_EXPIRES,
            heartbeat: PULL_HEARTBEAT,
        };
        let messages = PullFeed::open(&self.js, consumer, settings)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "durable delivery: cannot pull from the consumer of agent '{}': {e}",
                    self.agent
                )
            })?;
        self.current = Some(messages);
        Ok(())
    }

    fn into_stream(self) -> FeedStream {
        Box::pin(futures::stream::unfold(self, |mut feed| async move {
            loop {
                let Some(current) = feed.current.as_mut() else {
                    if !std::mem::take(&mut feed.repull_now) {
                        tokio::time::sleep(REOPEN_DELAY).await;
                    }
                    if let Err(e) = feed.open().await {
                        tracing::warn!("{e:#}; retrying");
                    }
                    continue;
                };
                match current.next().await {
                    Ok(m) => return Some((m, feed)),
                    Err(PullError::MissedHeartbeat(silence)) => {
                        // The server holds no pull request of ours (a lost server, a lost
                        // request): pull afresh. Unless it does hold one and simply had
                        // nothing to send, heartbeats included, for a while.
                        match current
                            .server_holds_a_pull(&feed.agent, CONSUMER_INFO_TIMEOUT)
                            .await
                        {
                            Some(true) => {
                                tracing::debug!(agent = %feed.agent, "durable consumer: nothing for {silence:?}, yet the server holds our pull request");
                            }
                            Some(false) => {
                                feed.current = None;
                                feed.repull_now = true;
                            }
                            None => {
                                tracing::warn!(agent = %feed.agent, "durable consumer: nothing for {silence:?}, and the server does not answer; pulling afresh");
                                feed.current = None;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(agent = %feed.agent, "durable consumer: {e}; pulling afresh");
                        feed.current = None;
                    }
                }
            }
        }))
    }
}

/// Acknowledges `kind`, logging (not failing) when the server cannot be told: the message is
/// then redelivered after ack_wait, and the handled-sequence set catches that.
async fn acknowledge(agent: &str, acker: &jetstream::message::Acker, kind: AckKind) {
    if let Err(e) = acker.ack_with(kind).await {
        tracing::warn!(agent = %agent, "durable delivery: cannot send {kind:?} to NATS: {e}; the message will be redelivered and recognised");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clustered_server_without_a_pairing_wait_is_warned_about() {
        let text = unpaired_requests_warning(Duration::ZERO, Some("east")).expect("a warning");
        assert!(text.contains("cluster 'east'"), "{text}");
        assert!(text.contains("request_pairing_wait_ms is 0"), "{text}");
        assert!(text.contains("remove the setting"), "{text}");
        assert_eq!(unpaired_requests_warning(Duration::ZERO, None), None);
        let wait = Duration::from_millis(500);
        assert_eq!(unpaired_requests_warning(wait, Some("east")), None);
    }
}
